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

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from decoding.core.errors import LoadError
from decoding.core.scores import Scores
from decoding.core.state import ServerChain
from decoding.engines.server import chain, reply
from decoding.engines.server.http import Http, ServerError, said, server_address
from decoding.engines.tokenizer import END_OF_TURN_TEXTS, byte_decoder_of, special_ids_of, token_bytes_of

__all__ = ["ServerEngine", "ServerError"]

DEFAULT_TOP = 20  # vLLM's default --max-logprobs
PIECES_PER_REQUEST = 16384  # ids whose bytes one /tokenize asks for (~0.5 MB of answer)
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
        address = server_address(url, api_key)
        self.url = address.base
        self.http = Http(address)
        self.dialect = _detect(self.http)
        self.top = top
        info = self._model_info()
        self.served_model = info["model"]  # as the server names it in requests
        self.model_id = reply.shown_name(self.served_model)
        self.context_limit = info["context"]
        self.device = f"{self.dialect.name} {reply.shown_name(self.dialect.version)} at {self.http.base}".replace("  ", " ")
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
        if len(ids) > 1 and self.evaluates_alone:
            scores = self._scores([*self.held, *ids])
        self.held += list(ids)
        return scores

    @property
    def evaluates_alone(self) -> bool:
        """llama-server's numbers for a token evaluated inside a batch (a prompt's last) differ from
        those of the same token evaluated alone (by up to 0.03 in probability on the embedded Q4_1
        model), and a request repeated for the same ids evaluates its last token alone: so after
        several new ids the scores are asked for twice, and every panel is one made as a step's
        (undo, the server's own chain beside it and llama.cpp's engine give the same numbers)."""
        return self.dialect.name == "llama.cpp"

    def crop(self, length: int) -> None:
        del self.held[max(length, 0) :]  # the server's prefix cache serves the shorter prefix

    # --- what else it can do -------------------------------------------------------------------------

    def logprob_of(self, token_id: int) -> float:
        """One token's log-probability after the held ids: one more request."""
        logprob = self._dialect_call("logprob_of", list(self.held), token_id)
        if logprob is None:
            raise ServerError(f"{self.url} did not return the log-probability of token {token_id}.")
        return logprob

    def chain_probs(self, ids: Sequence[int], strategy: Any) -> ServerChain | str | None:
        """The server's own sampler chain for `strategy` after `ids`: the probabilities after it, or one
        line saying why it cannot run it as tokenstep does; None for a server that cannot say (only
        llama-server returns probabilities after its chain)."""
        if self.dialect.name != "llama.cpp":
            return None
        fields = chain.request_fields(strategy, len(ids))
        if isinstance(fields, str):
            return fields
        return _LLAMA().after_chain(self, list(ids), fields)

    def interrupt(self) -> None:
        """Cut the requests in flight short (from any thread): each fails at once, saying so."""
        self.http.interrupt()

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
        if self.engine.evaluates_alone:  # see ServerEngine.evaluates_alone
            self._all()
        return self._all()

    def feed(self, token_ids: list[int]) -> Scores:
        return self.extend([[token_id] for token_id in token_ids])

    def extend(self, rows: list[list[int]]) -> Scores:
        for row, new in zip(self.rows, rows):
            row.extend(new)
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
            "model": model["id"],
            "context": model.get("max_model_len") or 2048,
            "local_tokenizer": _local_folder(root),
            "max_logprobs": _vllm_max_logprobs(engine, model["id"]),
        }

    def request(self, engine: ServerEngine, ids: list[int], **extra: Any) -> Any:
        body = {
            "model": engine.served_model,
            "prompt": ids,
            "max_tokens": 1,
            "temperature": 0,
            "return_tokens_as_token_ids": True,
            **extra,
        }
        return engine.http.post("/v1/completions", body)

    def top(self, engine: ServerEngine, ids: list[int], n: int) -> tuple[list[int], list[float]]:
        return reply.vllm_top(self.request(engine, ids, logprobs=n), engine.vocab_size, n, f"{engine.url}/v1/completions")

    def logprob_of(self, engine: ServerEngine, ids: list[int], token_id: int) -> float | None:
        answer = self.request(engine, ids, logprobs=1, logprob_token_ids=[token_id])
        found = dict(zip(*reply.vllm_top(answer, engine.vocab_size, engine.vocab_size, f"{engine.url}/v1/completions")))
        return found.get(token_id)


class _SGLANG:
    def info(self, engine: ServerEngine) -> dict[str, Any]:
        model = _first_model(engine.http)
        details = engine.http.get("/model_info").value
        path = reply.checked(details, reply.SGLANG_INFO, f"{engine.http.base}/model_info").get("model_path") or model["id"]
        return {"model": model["id"], "context": model.get("max_model_len") or 2048, "local_tokenizer": _local_folder(path)}

    def request(self, engine: ServerEngine, ids: list[int], **extra: Any) -> Any:
        body = {"input_ids": ids, "sampling_params": {"max_new_tokens": 1, "temperature": 0}, "return_logprob": True, **extra}
        return engine.http.post("/generate", body)

    def top(self, engine: ServerEngine, ids: list[int], n: int) -> tuple[list[int], list[float]]:
        answer = self.request(engine, ids, top_logprobs_num=n)
        return reply.sglang_top(answer, engine.vocab_size, n, f"{engine.url}/generate")

    def logprob_of(self, engine: ServerEngine, ids: list[int], token_id: int) -> float | None:
        answer = self.request(engine, ids, token_ids_logprob=[token_id])
        found = dict(zip(*reply.sglang_top(answer, engine.vocab_size, 1, f"{engine.url}/generate", forced=True)))
        return found.get(token_id)


class _LLAMA:
    def info(self, engine: ServerEngine) -> dict[str, Any]:
        props = reply.checked(engine.http.get("/props").value, reply.LLAMA_PROPS, f"{engine.http.base}/props")
        path = props.get("model_path") or "llama-server"
        return {"model": Path(path).name or path, "context": props["default_generation_settings"].get("n_ctx") or 2048}

    def request(self, engine: ServerEngine, ids: list[int], n_probs: int, bias: int) -> Any:
        """One token, with the raw top `n_probs`. The token sampled is `bias`, forced with a logit bias:
        the raw probabilities do not depend on it, and llama-server leaves them out of its answer
        when the sampled token ends in an unfinished UTF-8 character."""
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
        answer = self.request(engine, ids, n, engine.vocabulary.plain_id)
        top_ids, logprobs, _ = reply.llama_top(answer, engine.vocab_size, n, f"{engine.url}/completion")
        return top_ids, logprobs

    def after_chain(self, engine: ServerEngine, ids: list[int], fields: dict[str, Any]) -> ServerChain | str:
        """The top N after the server's own chain (post_sampling_probs). The server leaves a token's
        probabilities out when the token it drew ends in a partial character: it draws again under the
        next seed, a few times."""
        where = f"{engine.url}/completion"
        for attempt in range(chain.HELD_BACK_TRIES):
            body = {
                "prompt": ids,
                "n_predict": 1,
                "n_probs": engine.top,
                "post_sampling_probs": True,
                "cache_prompt": True,
                "response_fields": ["completion_probabilities"],
                **fields,
                "seed": (fields["seed"] + attempt) % chain.SEEDS,
            }
            probs = reply.llama_after_chain(engine.http.post("/completion", body), engine.vocab_size, engine.top, where)
            if probs is not None:
                return ServerChain(probs, complete=len(probs) < engine.top)
        return "llama-server held its answer back (the tokens it drew end in a partial character)"

    def logprob_of(self, engine: ServerEngine, ids: list[int], token_id: int) -> float | None:
        where = f"{engine.url}/completion"
        if not _held_back(engine.token_bytes(token_id)):
            return reply.llama_forced(self.request(engine, ids, 1, token_id), engine.vocab_size, token_id, where)
        # Forced, it would be held back with its log-probability: the whole distribution tells it.
        answer = self.request(engine, ids, engine.vocab_size, engine.vocabulary.plain_id)
        top_ids, logprobs, _ = reply.llama_top(answer, engine.vocab_size, engine.vocab_size, where)
        return dict(zip(top_ids, logprobs)).get(token_id)


def _held_back(raw: bytes) -> bool:
    """Whether llama-server holds a token's text back, as its validate_utf8 decides: the text ends
    in the first bytes of a multi-byte character."""
    for back in range(1, min(len(raw), 4) + 1):
        byte = raw[-back]
        needs = 2 if byte & 0xE0 == 0xC0 else 3 if byte & 0xF0 == 0xE0 else 4 if byte & 0xF8 == 0xF0 else 0
        if back < needs:
            return True
    return False


class DialectCalls(Protocol):
    """How one kind of server is asked for what a step needs."""

    def info(self, engine: ServerEngine) -> dict[str, Any]: ...

    def top(self, engine: ServerEngine, ids: list[int], n: int) -> tuple[list[int], list[float]]: ...

    def logprob_of(self, engine: ServerEngine, ids: list[int], token_id: int) -> float | None: ...


DIALECTS: dict[str, DialectCalls] = {"vLLM": _VLLM(), "SGLang": _SGLANG(), "llama.cpp": _LLAMA()}


# --- finding the server, its model and its vocabulary ---------------------------------------------------


def _detect(http: Http) -> Dialect:
    """llama.cpp answers /props, vLLM /version, SGLang /model_info; anything else is refused."""
    props = http.get("/props")
    if props.status == 200 and isinstance(props.value, dict) and "default_generation_settings" in props.value:
        version = reply.checked(props.value, reply.LLAMA_PROPS, f"{http.base}/props").get("build_info", "")
        return Dialect("llama.cpp", version)
    version = http.get("/version")
    if version.status == 200 and isinstance(version.value, dict) and "version" in version.value:
        return Dialect("vLLM", reply.checked(version.value, reply.VLLM_VERSION, f"{http.base}/version")["version"])
    info = http.get("/model_info")
    if info.status == 200 and isinstance(info.value, dict) and "is_generation" in info.value:
        return Dialect("SGLang", "")
    if info.status in (401, 403):
        raise LoadError(f"{http.base} refused the request ({info.status}): give its key with --api-key or TOKENSTEP_API_KEY.")
    raise LoadError(
        f"{http.base} answers, but not as vLLM, SGLang or llama.cpp's llama-server do (no /props, /version or /model_info)."
    )


def _first_model(http: Http) -> dict[str, Any]:
    models = http.get("/v1/models")
    if models.status != 200:
        raise LoadError(f"{http.base}/v1/models did not name a model ({models.status}: {said(models.text)}).")
    data = reply.checked(models.value, reply.MODELS, f"{http.base}/v1/models")["data"]
    return reply.first(data, f"{http.base}/v1/models", "data")


def _vllm_max_logprobs(engine: ServerEngine, model: str) -> int:
    """What --max-logprobs allows: a request for more is refused with the limit in its message."""
    answer = engine.http.ask("POST", "/v1/completions", {"model": model, "prompt": [0], "max_tokens": 1, "logprobs": 10**6})
    limit = reply.number_said(answer.text, "max allowed:", reply.Whole(1, 10**6))
    return DEFAULT_TOP if limit is None else limit


def _local_folder(path: str) -> str | None:
    """`path` if it names a folder on this machine (a served model's, holding its tokenizer)."""
    try:
        return path if Path(path).is_dir() else None
    except (OSError, ValueError):  # a name too long, a NUL: no folder
        return None


def _vocabulary(engine: ServerEngine, tokenizer: str | None) -> Vocabulary:
    if tokenizer:
        return LocalVocabulary(engine, tokenizer)
    return PiecesVocabulary(engine) if engine.dialect.name == "llama.cpp" else ServerVocabulary(engine)


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


def known_ends(encode: Callable[[str], list[int]]) -> frozenset[int]:
    """Control tokens that end text or a turn, found by their well-known names (one token each)."""
    found = set()
    for text in END_TEXTS:
        ids = encode(text)
        if len(ids) == 1:
            found.add(ids[0])
    return frozenset(found)


def plain_id(vocabulary: Vocabulary) -> int:
    """A token that is a whole character: "a"'s."""
    ids = vocabulary.encode("a", special=False)
    if not ids:
        raise ServerError('The server tokenizes "a" as no token at all: its vocabulary cannot be used.')
    return ids[-1]


class ServerVocabulary:
    """Through the server's own /tokenize and /detokenize (vLLM, SGLang)."""

    def __init__(self, engine: ServerEngine) -> None:
        self.engine = engine
        self._bytes: dict[int, bytes] = {}
        self._lock = threading.Lock()
        self.size = self._find_size()
        self.end_ids = known_ends(lambda text: self.encode(text, special=True))
        self.eos_ids = self.special_ids = self.end_ids
        self.plain_id = plain_id(self)

    def encode(self, text: str, special: bool) -> list[int]:
        body = {"model": self.engine.served_model, "prompt": text, "add_special_tokens": special}
        return reply.token_ids(self.engine.http.post("/tokenize", body), self.size, f"{self.engine.url}/tokenize")

    def decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        answer = self.engine.http.post("/detokenize", {"model": self.engine.served_model, "tokens": ids})
        return reply.text(answer, reply.OPENAI_TEXT, f"{self.engine.url}/detokenize")

    def token_bytes(self, token_id: int) -> bytes:
        with self._lock:
            known = self._bytes.get(token_id)
        if known is None:
            known = self.decode([token_id]).encode("utf-8")
            with self._lock:
                self._bytes[token_id] = known
        return known

    def _find_size(self) -> int:
        """The vocabulary's size: vLLM names it when refusing an id beyond it; else the first id the
        server cannot detokenize (a binary search)."""
        http, model = self.engine.http, self.engine.served_model
        if self.engine.dialect.name == "vLLM":
            body = {"model": model, "prompt": [0], "max_tokens": 1, "logprobs": 1, "logprob_token_ids": [1 << 30]}
            size = reply.number_said(http.ask("POST", "/v1/completions", body).text, "Vocabulary size:", reply.VOCABULARY)
            if size is not None:
                return size
        low, high = 1, reply.MAX_VOCABULARY
        while low < high:
            middle = (low + high + 1) // 2
            known = http.ask("POST", "/detokenize", {"model": model, "tokens": [middle - 1]}).status == 200
            low, high = (middle, high) if known else (low, middle - 1)
        return low


class PiecesVocabulary:
    """llama.cpp's: every token's exact bytes read once (/tokenize of the ids, with their pieces: its
    /detokenize writes a partial UTF-8 character as U+FFFD), so that decoding asks nothing more."""

    def __init__(self, engine: ServerEngine) -> None:
        self.engine = engine
        self.size = self._find_size()
        self._pieces = self._all_pieces()
        self.end_ids = known_ends(lambda text: self.encode(text, special=True))
        self.eos_ids = self.special_ids = self.end_ids
        self.plain_id = plain_id(self)

    def encode(self, text: str, special: bool) -> list[int]:
        body = {"content": text, "add_special": special, "parse_special": special}
        return reply.token_ids(self.engine.http.post("/tokenize", body), self.size, f"{self.engine.url}/tokenize")

    def decode(self, ids: list[int]) -> str:
        return b"".join(self._pieces[token_id] for token_id in ids).decode("utf-8", "replace")

    def token_bytes(self, token_id: int) -> bytes:
        return self._pieces[token_id]

    def _find_size(self) -> int:
        models = self.engine.http.get("/v1/models")
        where = f"{self.engine.url}/v1/models"
        data = reply.checked(models.value, reply.LLAMA_MODELS, where)["data"] if models.status == 200 else []
        meta = (data[0].get("meta") or {}) if data else {}
        if "n_vocab" not in meta:
            raise LoadError(f"{where} does not say the vocabulary's size (data[0].meta.n_vocab): is this llama-server?")
        return int(meta["n_vocab"])

    def _all_pieces(self) -> list[bytes]:
        pieces: list[bytes] = []
        for start in range(0, self.size, PIECES_PER_REQUEST):
            ids = list(range(start, min(start + PIECES_PER_REQUEST, self.size)))
            answer = self.engine.http.post("/tokenize", {"content": ids, "with_pieces": True})
            pieces += reply.pieces(answer, self.size, ids, f"{self.engine.url}/tokenize")
        return pieces


class LocalVocabulary:
    """A local copy of the served model's tokenizer (--tokenizer, or the folder a server on this machine
    serves): exact bytes for every token, no requests."""

    def __init__(self, engine: ServerEngine, name: str) -> None:
        from transformers import AutoTokenizer, GenerationConfig

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(name)
        except Exception as error:
            raise LoadError(f"--tokenizer {name}: no tokenizer could be loaded ({said(error)}).") from None
        self._token_bytes = token_bytes_of(self.tokenizer, byte_decoder_of(self.tokenizer))
        self.special_ids = special_ids_of(self.tokenizer)
        self.end_ids = frozenset(i for i in self.special_ids if self.tokenizer.convert_ids_to_tokens(i) in END_OF_TURN_TEXTS)
        eos: set[int] = {self.tokenizer.eos_token_id} if self.tokenizer.eos_token_id is not None else set()
        try:
            configured = GenerationConfig.from_pretrained(name).eos_token_id
            eos.update([configured] if isinstance(configured, int) else configured or [])
        except Exception:
            pass
        self.eos_ids = frozenset(eos)
        self.size = max(len(self.tokenizer), engine_vocab_size(name, len(self.tokenizer)))
        self.plain_id = plain_id(self)

    def encode(self, text: str, special: bool) -> list[int]:
        if special:
            return list(self.tokenizer(text)["input_ids"])
        return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids))

    def token_bytes(self, token_id: int) -> bytes:
        return self._token_bytes(token_id)


def engine_vocab_size(name: str, fallback: int) -> int:
    """The model's own vocabulary size (its config), which may exceed the tokenizer's."""
    try:
        from transformers import AutoConfig

        return int(getattr(AutoConfig.from_pretrained(name), "vocab_size", fallback) or fallback)
    except Exception:
        return fallback
