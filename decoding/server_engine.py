"""The server engine: a model served by vLLM, SGLang or llama.cpp's llama-server, stepped over HTTP.

Each step sends the exact token ids held so far (never re-tokenized text) for one new token, and asks
for the top N raw log-probabilities: the server's prefix cache makes the shared prefix free, so a step
costs one token's work. What comes back is partial (`Scores.top`): the core says what that allows. A
token outside the N is scored with one more request (vLLM's `logprob_token_ids`, SGLang's
`token_ids_logprob`, llama.cpp's own log-probability of a token forced with a logit bias). Beams,
work ahead and forks are concurrent requests; undo is free (the held ids are cut; the cache serves
the shorter prefix).
"""

from __future__ import annotations

import http.client
import json
import math
import threading
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from decoding.errors import LoadError, TokenstepError
from decoding.scores import Scores

DEFAULT_TOP = 20  # vLLM's default --max-logprobs
CONNECT_SECONDS = 5.0
REPLY_SECONDS = 120.0  # a first request may wait for the server's warm-up
END_TEXTS = (
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|end_of_text|>",
    "<eos>",
    "<|eom_id|>",
)


class ServerError(TokenstepError):
    """The server could not be reached, answered with an error, or answered something unexpected."""


class Http:
    """JSON over HTTP/1.1 to one server, a kept-alive connection per thread (requests go out
    concurrently from several threads for beams and work ahead)."""

    def __init__(self, base: str, api_key: str | None) -> None:
        parsed = urllib.parse.urlsplit(base)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise LoadError(f"--url {base}: give the server's address, such as http://127.0.0.1:8000")
        self.base, self.scheme, self.host, self.port = base, parsed.scheme, parsed.hostname, parsed.port
        self.prefix = parsed.path.rstrip("/")
        self.headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
        self._local = threading.local()

    def get(self, path: str) -> tuple[int, Any]:
        return self._request("GET", path, None)

    def post(self, path: str, body: dict[str, Any]) -> Any:
        status, answer = self._request("POST", path, body)
        if status != 200:
            raise ServerError(f"{self.base}{path} answered {status}: {_said(answer)}")
        return answer

    def _request(self, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, Any]:
        payload = None if body is None else json.dumps(body).encode()
        for attempt in (0, 1):  # a kept-alive connection the server has closed is opened again, once
            connection = self._connection()
            try:
                connection.request(method, self.prefix + path, payload, self.headers)
                response = connection.getresponse()
                data = response.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError) as error:
                self._local.connection = None
                connection.close()
                if attempt or not isinstance(error, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
                    raise ServerError(f"{self.base} cannot be reached ({_said(error)}): is the server running?") from None
        try:
            return response.status, json.loads(data) if data.strip() else None
        except ValueError:
            return response.status, data[:200].decode("utf-8", "replace")

    def _connection(self) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            kind = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            connection = kind(self.host, self.port, timeout=REPLY_SECONDS)
            self._local.connection = connection
        return connection


@dataclass(frozen=True)
class Dialect:
    """What one kind of server is called and how its requests and answers look."""

    name: str
    version: str


class ServerEngine:
    """A served model. The `dialect` (vLLM, SGLang, llama.cpp) is found by asking the server."""

    name = "server"
    dtype = "served"

    def __init__(self, url: str, *, api_key: str | None = None, top: int = DEFAULT_TOP, tokenizer: str | None = None) -> None:
        self.url = _base_url(url)
        self.http = Http(self.url, api_key)
        self.dialect = _detect(self.http)
        self.top = top
        info = self._model_info()
        self.model_id = info["model"]
        self.context_limit = info["context"]
        self.device = f"{self.dialect.name} {self.dialect.version} at {self.http.base}".strip()
        self.vocabulary = _vocabulary(self, tokenizer or info.get("local_tokenizer"))
        self.vocab_size = self.vocabulary.size
        self.eos_token_ids, self.special_ids = self.vocabulary.eos_ids, self.vocabulary.special_ids
        self.end_of_turn_ids = self.vocabulary.end_ids
        self.weights_digest = f"{self.dialect.name}:{self.model_id}"  # the weights are the server's to know
        self.held: list[int] = []
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="tokenstep-http")
        if self.dialect.name == "vLLM" and top > info.get("max_logprobs", top):
            raise LoadError(f"--server-top {top}: this vLLM server returns at most {info['max_logprobs']} (its --max-logprobs).")

    # --- the Engine interface ------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return self.vocabulary.encode(text, special=True)

    def encode_piece(self, text: str) -> list[int]:
        return self.vocabulary.encode(text, special=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.vocabulary.decode(list(ids))

    def token_bytes(self, token_id: int) -> bytes:
        return self.vocabulary.token_bytes(token_id)

    @property
    def cached_length(self) -> int:
        return len(self.held)

    def feed(self, ids: Sequence[int]) -> Scores:
        scores = self._scores([*self.held, *ids])  # may raise: nothing held changes
        self.held += list(ids)
        return scores

    def crop(self, length: int) -> None:
        del self.held[max(length, 0) :]  # the server's prefix cache serves the shorter prefix

    # --- what else it can do -------------------------------------------------------------------------

    def logprob_of(self, token_id: int) -> float:
        """One token's log-probability after the held ids: one more request."""
        return self._dialect_call("logprob_of", list(self.held), token_id)

    def detach_last(self, count: int) -> list[int]:
        tail = self.held[-count:]
        del self.held[-count:]
        return tail

    def attach(self, tail: object) -> None:
        assert isinstance(tail, list)
        self.held += tail

    def feed_alternatives(self, token_ids: Sequence[int]) -> list[tuple[Scores, object]]:
        """The scores after each of `token_ids`, asked concurrently (the server batches them); each
        set aside as `detach_last` would."""
        futures = [self._pool.submit(self._scores, [*self.held, token_id]) for token_id in token_ids]
        return [(future.result(), [token_id]) for future, token_id in zip(futures, token_ids)]

    def fork(self) -> ServerEngine:
        twin = object.__new__(ServerEngine)
        twin.__dict__.update(self.__dict__)
        twin.held = []
        return twin

    def side_by_side(self) -> ServerRunner:
        return ServerRunner(self)

    # --- requests ------------------------------------------------------------------------------------

    def _scores(self, ids: list[int]) -> Scores:
        if len(ids) >= self.context_limit:
            raise ServerError(f"The sequence is {len(ids)} tokens long; the server's context holds {self.context_limit}.")
        top_ids, logprobs = self._dialect_call("top", ids, self.top)
        self.vocabulary.learn(top_ids)
        return Scores.top(self.vocab_size, top_ids, logprobs)

    def _dialect_call(self, what: str, ids: list[int], argument: int) -> Any:
        return getattr(DIALECTS[self.dialect.name], what)(self, ids, argument)

    def _model_info(self) -> dict[str, Any]:
        return DIALECTS[self.dialect.name].info(self)


class ServerRunner:
    """Beams side by side: each row's request goes out at once (the server batches them)."""

    def __init__(self, engine: ServerEngine) -> None:
        self.engine = engine
        self.rows: list[list[int]] = []

    def start(self, sequences: list[list[int]]) -> Scores:
        self.rows = [list(sequence) for sequence in sequences]
        return self._all()

    def feed(self, token_ids: list[int]) -> Scores:
        for row, token_id in zip(self.rows, token_ids):
            row.append(token_id)
        return self._all()

    def reorder(self, rows: list[int]) -> None:
        self.rows = [list(self.rows[row]) for row in rows]

    def _all(self) -> Scores:
        import torch

        unique = {tuple(row) for row in self.rows}  # at the start every beam is the same prefix
        futures = {key: self.engine._pool.submit(self.engine._scores, list(key)) for key in unique}
        values = torch.stack([futures[tuple(row)].result().values for row in self.rows])
        return Scores(values, complete=False)


# --- the dialects ---------------------------------------------------------------------------------------


class _VLLM:
    def info(self, engine: ServerEngine) -> dict[str, Any]:
        model = _first_model(engine.http)
        root = model.get("root") or model["id"]
        return {
            "model": str(model["id"]),
            "context": int(model.get("max_model_len") or 2048),
            "local_tokenizer": root if Path(str(root)).is_dir() else None,
            "max_logprobs": _vllm_max_logprobs(engine),
        }

    def request(self, engine: ServerEngine, ids: list[int], **extra: Any) -> dict[str, Any]:
        body = {
            "model": engine.model_id,
            "prompt": ids,
            "max_tokens": 1,
            "temperature": 0,
            "return_tokens_as_token_ids": True,
            **extra,
        }
        return engine.http.post("/v1/completions", body)

    def top(self, engine: ServerEngine, ids: list[int], n: int) -> tuple[list[int], list[float]]:
        answer = self.request(engine, ids, logprobs=n)
        return _keyed_by_id(_path(answer, "choices", 0, "logprobs", "top_logprobs", 0), n)

    def logprob_of(self, engine: ServerEngine, ids: list[int], token_id: int) -> float:
        answer = self.request(engine, ids, logprobs=1, logprob_token_ids=[token_id])
        found = dict(zip(*_keyed_by_id(_path(answer, "choices", 0, "logprobs", "top_logprobs", 0), 10**6)))
        return _finite(found.get(token_id), token_id)


class _SGLANG:
    def info(self, engine: ServerEngine) -> dict[str, Any]:
        model = _first_model(engine.http)
        _, details = engine.http.get("/model_info")
        path = (details or {}).get("model_path") or model["id"]
        return {
            "model": str(model["id"]),
            "context": int(model.get("max_model_len") or 2048),
            "local_tokenizer": path if Path(str(path)).is_dir() else None,
        }

    def request(self, engine: ServerEngine, ids: list[int], **extra: Any) -> dict[str, Any]:
        body = {"input_ids": ids, "sampling_params": {"max_new_tokens": 1, "temperature": 0}, "return_logprob": True, **extra}
        return engine.http.post("/generate", body)

    def top(self, engine: ServerEngine, ids: list[int], n: int) -> tuple[list[int], list[float]]:
        entries = _path(self.request(engine, ids, top_logprobs_num=n), "meta_info", "output_top_logprobs", 0)
        return [int(e[1]) for e in entries], [float(e[0]) for e in entries]

    def logprob_of(self, engine: ServerEngine, ids: list[int], token_id: int) -> float:
        entries = _path(self.request(engine, ids, token_ids_logprob=[token_id]), "meta_info", "output_token_ids_logprobs", 0)
        return _finite(next((float(e[0]) for e in entries if int(e[1]) == token_id), None), token_id)


class _LLAMA:
    def info(self, engine: ServerEngine) -> dict[str, Any]:
        _, props = engine.http.get("/props")
        settings = props.get("default_generation_settings", {}) if isinstance(props, dict) else {}
        path = str(props.get("model_path", "llama-server")) if isinstance(props, dict) else "llama-server"
        return {"model": Path(path).name or path, "context": int(settings.get("n_ctx") or 2048)}

    def request(self, engine: ServerEngine, ids: list[int], n_probs: int, bias: int) -> dict[str, Any]:
        """One token, with the raw top `n_probs`. The token sampled is `bias`, forced with a logit bias:
        the raw probabilities do not depend on it, and llama-server leaves them out of its answer
        when the sampled token is an unfinished UTF-8 character."""
        body = {
            "prompt": ids,
            "n_predict": 1,
            "n_probs": n_probs,
            "cache_prompt": True,
            "samplers": ["temperature"],
            "temperature": 0,
            "logit_bias": [[bias, 1e9]],
            "response_fields": ["completion_probabilities"],
        }
        return engine.http.post("/completion", body)

    def top(self, engine: ServerEngine, ids: list[int], n: int) -> tuple[list[int], list[float]]:
        entry = _path(self.request(engine, ids, n, engine.vocabulary.plain_id), "completion_probabilities", 0)
        entries = entry["top_logprobs"]
        for e in entries:
            engine.vocabulary.note_bytes(int(e["id"]), bytes(e.get("bytes", ())))
        return [int(e["id"]) for e in entries], [float(e["logprob"]) for e in entries]

    def logprob_of(self, engine: ServerEngine, ids: list[int], token_id: int) -> float:
        entry = _path(self.request(engine, ids, 1, token_id), "completion_probabilities", 0)
        return _finite(float(entry["logprob"]), token_id)


class DialectCalls(Protocol):
    """How one kind of server is asked for what a step needs."""

    def info(self, engine: ServerEngine) -> dict[str, Any]: ...

    def top(self, engine: ServerEngine, ids: list[int], n: int) -> tuple[list[int], list[float]]: ...

    def logprob_of(self, engine: ServerEngine, ids: list[int], token_id: int) -> float: ...


DIALECTS: dict[str, DialectCalls] = {"vLLM": _VLLM(), "SGLang": _SGLANG(), "llama.cpp": _LLAMA()}


# --- finding the server, its model and its vocabulary ---------------------------------------------------


def _base_url(url: str) -> str:
    base = url.strip().rstrip("/")
    return base[: -len("/v1")] if base.endswith("/v1") else base


def _detect(http: Http) -> Dialect:
    """llama.cpp answers /props, vLLM /version, SGLang /model_info; anything else is refused."""
    status, props = http.get("/props")
    if status == 200 and isinstance(props, dict) and "default_generation_settings" in props:
        return Dialect("llama.cpp", str(props.get("build_info", "")))
    status, version = http.get("/version")
    if status == 200 and isinstance(version, dict) and "version" in version:
        return Dialect("vLLM", str(version["version"]))
    status, info = http.get("/model_info")
    if status == 200 and isinstance(info, dict) and "is_generation" in info:
        return Dialect("SGLang", "")
    if status in (401, 403):
        raise LoadError(f"{http.base} refused the request ({status}): give its key with --api-key or TOKENSTEP_API_KEY.")
    raise LoadError(
        f"{http.base} answers, but not as vLLM, SGLang or llama.cpp's llama-server do (no /props, /version or /model_info)."
    )


def _first_model(http: Http) -> dict[str, Any]:
    status, models = http.get("/v1/models")
    data = models.get("data") if isinstance(models, dict) else None
    if status != 200 or not data or not isinstance(data[0], dict) or "id" not in data[0]:
        raise LoadError(f"{http.base}/v1/models did not name a model ({status}: {_said(models)}).")
    return data[0]


def _vllm_max_logprobs(engine: ServerEngine) -> int:
    """What --max-logprobs allows: a request for more is refused with the limit in its message."""
    model = _first_model(engine.http)
    status, answer = engine.http._request(
        "POST", "/v1/completions", {"model": model["id"], "prompt": [0], "max_tokens": 1, "logprobs": 10**6}
    )
    text = _said(answer)
    digits = text.rsplit("max allowed:", 1)[-1].strip().split()[0].strip(".,") if "max allowed:" in text else ""
    return int(digits) if digits.isdigit() else DEFAULT_TOP


def _keyed_by_id(entries: Any, n: int) -> tuple[list[int], list[float]]:
    """vLLM's {"token_id:123": logprob} (return_tokens_as_token_ids), best first."""
    if not isinstance(entries, dict):
        raise ServerError(f"the server's log-probabilities are not what vLLM sends ({_said(entries)}).")
    pairs = sorted(((int(key.split(":", 1)[1]), float(value)) for key, value in entries.items()), key=lambda pair: -pair[1])[:n]
    return [token for token, _ in pairs], [logprob for _, logprob in pairs]


def _path(value: Any, *keys: Any) -> Any:
    for key in keys:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            raise ServerError(f"the server's answer has no {'.'.join(str(k) for k in keys)} ({_said(value)}).") from None
    return value


def _finite(value: float | None, token_id: int) -> float:
    if value is None or math.isnan(value):
        raise ServerError(f"the server did not return the log-probability of token {token_id}.")
    return max(value, -1e4)  # llama.cpp writes an impossible token as the lowest float


def _said(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)[:300] if not isinstance(value, BaseException) else str(value)
    return text.splitlines()[0] if text else "nothing"


def _vocabulary(engine: ServerEngine, tokenizer: str | None) -> Vocabulary:
    return LocalVocabulary(engine, tokenizer) if tokenizer else ServerVocabulary(engine)


class Vocabulary(Protocol):
    """Tokenizing and detokenizing, the vocabulary's size, and which tokens end or are control tokens."""

    size: int
    eos_ids: frozenset[int]
    end_ids: frozenset[int]
    special_ids: frozenset[int]
    plain_id: int  # a token that is a whole character (llama.cpp's sampled token)

    def encode(self, text: str, special: bool) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def token_bytes(self, token_id: int) -> bytes: ...

    def learn(self, ids: Sequence[int]) -> None: ...

    def note_bytes(self, token_id: int, raw: bytes) -> None: ...


def known_ends(encode: Callable[[str], list[int]]) -> frozenset[int]:
    """Control tokens that end text or a turn, found by their well-known names (one token each)."""
    found = set()
    for text in END_TEXTS:
        ids = encode(text)
        if len(ids) == 1:
            found.add(ids[0])
    return frozenset(found)


class ServerVocabulary:
    """Through the server's own /tokenize and /detokenize (llama.cpp, vLLM, SGLang alike)."""

    def __init__(self, engine: ServerEngine) -> None:
        self.engine = engine
        self._bytes: dict[int, bytes] = {}
        self.end_ids = known_ends(lambda text: self.encode(text, special=True))
        self.eos_ids = self.special_ids = self.end_ids
        self.size = self._find_size()
        self.plain_id = self.encode("a", special=False)[-1]

    def encode(self, text: str, special: bool) -> list[int]:
        http, dialect = self.engine.http, self.engine.dialect.name
        if dialect == "llama.cpp":
            answer = http.post("/tokenize", {"content": text, "add_special": special, "parse_special": special})
            return [int(t) for t in _path(answer, "tokens")]
        answer = http.post("/tokenize", {"model": self.engine.model_id, "prompt": text, "add_special_tokens": special})
        return [int(t) for t in _path(answer, "tokens")]

    def decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        answer = self.engine.http.post("/detokenize", {"model": self.engine.model_id, "tokens": ids})
        return str(
            _path(answer, "content" if self.engine.dialect.name == "llama.cpp" else "prompt" if "prompt" in answer else "text")
        )

    def token_bytes(self, token_id: int) -> bytes:
        if token_id not in self._bytes:
            self._bytes[token_id] = self.decode([token_id]).encode("utf-8")
        return self._bytes[token_id]

    def learn(self, ids: Sequence[int]) -> None:
        pass

    def note_bytes(self, token_id: int, raw: bytes) -> None:
        if raw:
            self._bytes[token_id] = raw

    def _find_size(self) -> int:
        """The vocabulary's size: the first id the server cannot detokenize (a binary search)."""
        http = self.engine.http
        if self.engine.dialect.name == "llama.cpp":
            status, models = http.get("/v1/models")
            try:
                return int(models["data"][0]["meta"]["n_vocab"])
            except (KeyError, IndexError, TypeError, ValueError):
                pass
        if self.engine.dialect.name == "vLLM":  # it names the size when refusing an id beyond it
            body = {"model": self.engine.model_id, "prompt": [0], "max_tokens": 1, "logprobs": 1, "logprob_token_ids": [1 << 30]}
            said = _said(http._request("POST", "/v1/completions", body)[1])
            digits = said.split("Vocabulary size:", 1)[-1].split()[0].strip(".,(") if "Vocabulary size:" in said else ""
            if digits.isdigit():
                return int(digits)
        low, high = 1, 1 << 20
        while low < high:
            middle = (low + high + 1) // 2
            status, _ = self.engine.http._request("POST", "/detokenize", {"model": self.engine.model_id, "tokens": [middle - 1]})
            low, high = (middle, high) if status == 200 else (low, middle - 1)
        return low


class LocalVocabulary:
    """A local copy of the served model's tokenizer (--tokenizer, or the folder a server on this machine
    serves): exact bytes for every token, no requests."""

    def __init__(self, engine: ServerEngine, name: str) -> None:
        from transformers import AutoTokenizer, GenerationConfig

        from decoding.hf_engine import END_OF_TURN_TEXTS, _byte_decoder, _special_ids, token_bytes_of

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name)
        except Exception as error:
            raise LoadError(f"--tokenizer {name}: no tokenizer could be loaded ({_said(error)}).") from None
        self._token_bytes = token_bytes_of(self.tokenizer, _byte_decoder(self.tokenizer))
        self.special_ids = _special_ids(self.tokenizer)
        self.end_ids = frozenset(i for i in self.special_ids if self.tokenizer.convert_ids_to_tokens(i) in END_OF_TURN_TEXTS)
        eos: set[int] = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        try:
            configured = GenerationConfig.from_pretrained(name).eos_token_id
            eos.update([configured] if isinstance(configured, int) else configured or [])
        except Exception:
            pass
        self.eos_ids = frozenset(eos)
        self.size = max(len(self.tokenizer), engine_vocab_size(name, len(self.tokenizer)))
        self.plain_id = self.encode("a", special=False)[-1]

    def encode(self, text: str, special: bool) -> list[int]:
        if special:
            return list(self.tokenizer(text)["input_ids"])
        return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids))

    def token_bytes(self, token_id: int) -> bytes:
        return self._token_bytes(token_id)

    def learn(self, ids: Sequence[int]) -> None:
        pass

    def note_bytes(self, token_id: int, raw: bytes) -> None:
        pass


def engine_vocab_size(name: str, fallback: int) -> int:
    """The model's own vocabulary size (its config), which may exceed the tokenizer's."""
    try:
        from transformers import AutoConfig

        return int(getattr(AutoConfig.from_pretrained(name), "vocab_size", fallback) or fallback)
    except Exception:
        return fallback
