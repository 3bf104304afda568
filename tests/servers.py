"""Real inference servers on 127.0.0.1 for the tests and benchmarks: started here, stopped after.

`make test` builds llama.cpp's llama-server (`.ci/build-llama.sh server`) and a virtual environment
with vLLM for the CPU (`.ci/vllm-env.sh`) once, outside the repository, and names them in
$LLAMA_SERVER and $VLLM_PYTHON; without them the server tests are skipped.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
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
