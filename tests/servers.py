"""Real inference servers on 127.0.0.1 for the tests and benchmarks: started here, stopped after.

`make test` builds llama.cpp's llama-server (`.ci/build-llama.sh server`) and a virtual environment
with vLLM for the CPU (`.ci/vllm-env.sh`) once, outside the repository, and names them in
$LLAMA_SERVER and $VLLM_PYTHON; without them the server tests are skipped.
"""

from __future__ import annotations

import http.server
import json
import math
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def running(
    command: list[str], url: str, log_name: str, startup_seconds: float, env: dict[str, str] | None = None
) -> Iterator[str]:
    """Start `command` in a process group of its own, wait until `url` answers /health, stop it after."""
    log = Path(tempfile.gettempdir()) / f"tokenstep-{log_name}-{os.getpid()}.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, **(env or {})}
        )
    try:
        deadline = time.monotonic() + startup_seconds
        while not _ready(url):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{command[0]} did not start (exit {process.poll()}); its log ends:\n{tail}")
            time.sleep(0.5)
        yield url
    finally:
        with _quietly():
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            with _quietly():
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def _quietly() -> Iterator[None]:
    try:
        yield
    except ProcessLookupError:
        pass


def llama_server_command(binary: str, gguf: Path, port: int, threads: int) -> list[str]:
    # One slot, so each request reuses the one cache (llama.cpp keeps a prompt cache per slot).
    # Flash attention off, as the in-process llama.cpp engine runs: on, it moved probabilities by ~0.015 here.
    return [
        binary,
        "-m",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-c",
        "4096",
        "-np",
        "1",
        "-t",
        str(threads),
        "-fa",
        "off",
    ]


def vllm_command(python: str, model: Path, port: int) -> list[str]:
    return [
        python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
        "--dtype", "float32", "--max-model-len", "2048", "--max-logprobs", "50", "--served-model-name", "smollm2",
        "--enforce-eager",  # no torch.compile: it took minutes to start on 2 cores
    ]  # fmt: skip


VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}  # 1 GiB of KV cache is plenty here


def post(url: str, path: str, body: dict) -> dict:
    request = urllib.request.Request(f"{url}{path}", json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


# --- servers that misbehave on purpose -------------------------------------------------------------

Answer = tuple[int, bytes]  # status and body


class ByteServer:
    """A real HTTP server on 127.0.0.1 that speaks llama-server's dialect for a model of its own: the
    vocabulary is the 256 bytes (id i is byte i) and <|im_end|> (256), and the next token after byte b
    is most likely b + 1. Each endpoint's answer can be replaced (`answers[path] = function(body)`),
    to send on purpose what a server must never send; `requests` counts what came in."""

    VOCAB = 257
    END = 256

    def __init__(self) -> None:
        self.answers: dict[str, Callable[[dict], Answer]] = {}
        self.requests: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # kept-alive connections, as real servers keep them

            def do_GET(self) -> None:  # noqa: N802  http.server's name
                self._answer({})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                self._answer(json.loads(self.rfile.read(length) or b"{}"))

            def _answer(self, body: dict) -> None:
                owner.requests.append(self.path)
                scripted = owner.answers.get(self.path)
                status, data = scripted(body) if scripted else owner.honest(self.path, body)
                with suppress(OSError):  # a client that stopped reading (as it should, at a cap)
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> ByteServer:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- what llama-server would answer ---------------------------------------------------------

    def honest(self, path: str, body: dict) -> Answer:
        if path == "/props":
            return _json({"default_generation_settings": {"n_ctx": 4096}, "model_path": "/models/bytes.gguf", "build_info": "b1"})
        if path == "/v1/models":
            return _json({"data": [{"id": "/models/bytes.gguf", "meta": {"n_vocab": self.VOCAB}}]})
        if path == "/tokenize":
            return _json({"tokens": self.tokenize(body)})
        if path == "/completion":
            return _json({"completion_probabilities": [self.completion(body)]})
        return 404, b'{"error": "no such endpoint"}'

    @classmethod
    def tokenize(cls, body: dict) -> list:
        content = body["content"]
        if isinstance(content, list):  # ids, with their pieces
            return [{"id": i, "piece": cls.piece(i)} for i in content]
        parts = content.split("<|im_end|>") if body.get("parse_special", True) else [content]
        ids: list[int] = list(parts[0].encode())
        for part in parts[1:]:
            ids += [cls.END, *part.encode()]
        return ids

    @classmethod
    def piece(cls, token_id: int) -> str | list[int]:
        raw = b"<|im_end|>" if token_id == cls.END else bytes([token_id])
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return list(raw)

    def logprobs(self, ids: list[int]) -> list[float]:
        """Every token's log-probability after `ids`: byte b + 1 most likely after b."""
        expected = (ids[-1] + 1) % self.VOCAB if ids else 0
        scores = [-0.5 * ((token - expected) % self.VOCAB) for token in range(self.VOCAB)]
        top = max(scores)
        total = math.log(sum(math.exp(score - top) for score in scores)) + top
        return [score - total for score in scores]

    def completion(self, body: dict) -> dict:
        logprobs = self.logprobs(body["prompt"])
        best = sorted(range(self.VOCAB), key=lambda token: -logprobs[token])[: body["n_probs"]]
        forced = int(body["logit_bias"][0][0])
        raw = lambda token: list(b"<|im_end|>" if token == self.END else bytes([token]))  # noqa: E731
        top = [{"id": t, "token": "", "bytes": raw(t), "logprob": logprobs[t]} for t in best]
        return {"id": forced, "token": "", "bytes": raw(forced), "logprob": logprobs[forced], "top_logprobs": top}


def _json(value: object) -> Answer:
    return 200, json.dumps(value).encode()


@contextmanager
def raw_server(behaviour: Callable[[socket.socket], None]) -> Iterator[str]:
    """A TCP server on 127.0.0.1 that runs `behaviour` on each connection it accepts (answering
    nothing, a byte at a time...), until the test ends."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=_quietly_run, args=(behaviour, connection, stop), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


def _quietly_run(behaviour: Callable[..., None], connection: socket.socket, stop: threading.Event) -> None:
    with connection, suppress(OSError):
        behaviour(connection, stop)


def silent(connection: socket.socket, stop: threading.Event) -> None:
    """Accept the connection and never answer."""
    stop.wait()


def trickling(seconds: float) -> Callable[[socket.socket, threading.Event], None]:
    """Answer the headers at once, then the body one byte every `seconds`."""

    def behaviour(connection: socket.socket, stop: threading.Event) -> None:
        connection.recv(65536)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
        while not stop.wait(seconds):
            connection.sendall(b" ")

    return behaviour
