"""Every reply a server sends, checked before anything uses it: the one validation step for servers,
as `decoding/core/schema.py` is for files (its specs describe the shapes here too).

Shapes and types, finite numbers, log-probabilities at most 0, ids within the vocabulary, sizes within
reason: a reply that does not fit is one `ServerError` naming the server, the endpoint and the field
(`http://127.0.0.1:8080/completion answered what tokenstep cannot use: reply.completion_probabilities[0]
.top_logprobs[2].logprob: expected a number <= 0.001, found nan`). Nothing has changed when it is
raised: the path is kept and the step can be tried again.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from decoding.core.schema import Number, ShapeError, Whole, check
from decoding.core.tokens import escape_controls
from decoding.engines.server.http import ServerError

MAX_VOCABULARY = 1 << 22  # 4,194,304 ids; the largest vocabularies in use hold ~262,000
MAX_CONTEXT = 1 << 24  # 16,777,216 tokens
MAX_SHOWN_NAME = 200  # characters of a model's name or a server's version shown (longer ones are cut, marked …)
LOGPROB_SLACK = 1e-3  # a log-probability may round a little above 0, never more
LOWEST_LOGPROB = -1e4  # llama.cpp writes an impossible token's log-probability as the lowest float
PROBABILITY_SLACK = 1e-3  # how far above 1 the top N's probabilities may add up (rounding)

LOGPROB = Number(high=LOGPROB_SLACK)
PROBABILITY_VALUE = Number(0.0, 1.0 + PROBABILITY_SLACK)
CONTEXT = Whole(1, MAX_CONTEXT)
VOCABULARY = Whole(1, MAX_VOCABULARY)
BYTES = [Whole(0, 255)]

# --- what a server says of itself -------------------------------------------------------------------

LLAMA_PROPS = {"default_generation_settings": {"n_ctx?": CONTEXT}, "model_path?": str, "build_info?": str}
MODELS = {"data": [{"id": str, "max_model_len?": (CONTEXT, None), "root?": (str, None)}]}
LLAMA_MODELS = {"data": [{"meta?": {"n_vocab?": VOCABULARY}}]}
VLLM_VERSION = {"version": str}
SGLANG_INFO = {"model_path?": (str, None)}
LLAMA_TEXT = {"content": str}
OPENAI_TEXT = ({"prompt": str}, {"text": str})


@dataclass(frozen=True)
class Specs:
    """The shapes whose ids the vocabulary's size bounds."""

    token: Any
    tokens: Any
    pieces: Any
    llama_top: Any
    llama_forced: Any
    llama_after_chain: Any
    vllm_top: Any
    sglang_top: Any
    sglang_forced: Any


@lru_cache(maxsize=8)  # specs are compiled once each (schema.py keeps them by identity)
def specs(vocab_size: int) -> Specs:
    token = Whole(0, vocab_size - 1)
    entry = {"id": token, "logprob": LOGPROB, "bytes?": BYTES}
    return Specs(
        token=token,
        tokens={"tokens": [token]},
        pieces={"tokens": [{"id": token, "piece": (str, BYTES)}]},
        llama_top={"completion_probabilities": [{"top_logprobs": [entry]}]},
        llama_forced={"completion_probabilities": [{"id": token, "logprob": (LOGPROB, None), "bytes?": BYTES}]},
        llama_after_chain={"completion_probabilities": [{"top_probs": [{"id": token, "prob": PROBABILITY_VALUE}]}]},
        vllm_top={"choices": [{"logprobs": {"top_logprobs": [dict]}}]},
        sglang_top={"meta_info": {"output_top_logprobs": [[list]]}},
        sglang_forced={"meta_info": {"output_token_ids_logprobs": [[list]]}},
    )


def checked(value: Any, spec: Any, where: str, field: str = "reply") -> Any:
    """`value` if it fits `spec`; a ServerError naming `where` (the endpoint) and the field if not."""
    try:
        check(value, spec, field)
    except ShapeError as error:
        raise unusable(where, str(error)) from None
    return value


def unusable(where: str, what: str) -> ServerError:
    return ServerError(f"{where} answered what tokenstep cannot use: {what}")


def first(items: list[Any], where: str, field: str) -> Any:
    """The first item of a list the spec has checked; an empty one says so."""
    if not items:
        raise unusable(where, f"reply.{field}: expected at least one entry, found []")
    return items[0]


def shown_name(text: str) -> str:
    """A name the server gives (its model, its version) as it may be shown: controls escaped, cut short."""
    shown = escape_controls(text)
    return shown if len(shown) <= MAX_SHOWN_NAME else shown[: MAX_SHOWN_NAME - 1] + "…"


def number_said(text: str, before: str, valid: Whole) -> int | None:
    """A whole number a server writes in an error message after `before` (vLLM names its limits so),
    if it is there and within `valid`."""
    match = re.search(re.escape(before) + r"\s*([0-9]{1,12})\b", text)
    if match is None:
        return None
    number = int(match[1])
    assert valid.low is not None and valid.high is not None
    return number if valid.low <= number <= valid.high else None


# --- the top N and one token's log-probability -------------------------------------------------------


def top_scores(pairs: list[tuple[int, float]], n: int, where: str) -> tuple[list[int], list[float]]:
    """The best `n` of (id, log-probability) pairs checked by a spec, best first. None of them twice,
    their probabilities adding up to at most 1; the lowest float stands for an impossible token."""
    if not pairs:
        raise unusable(where, "the top log-probabilities are an empty list")
    counts = Counter(token for token, _ in pairs)
    if len(counts) < len(pairs):
        twice = next(token for token, count in counts.items() if count > 1)
        raise unusable(where, f"the top log-probabilities name token {twice} more than once")
    total = math.fsum(math.exp(min(logprob, 0.0)) for _, logprob in pairs)
    if total > 1 + PROBABILITY_SLACK:
        raise unusable(where, f"the top log-probabilities add up to a probability of {total:.4g}, more than 1")
    best = sorted(pairs, key=lambda pair: -pair[1])[:n]
    return [token for token, _ in best], [_clamped(logprob) for _, logprob in best]


def _clamped(logprob: float) -> float:
    return min(max(logprob, LOWEST_LOGPROB), 0.0)


def llama_top(answer: Any, vocab_size: int, n: int, where: str) -> tuple[list[int], list[float], dict[int, bytes]]:
    """llama.cpp's /completion: the top N, and the bytes it gives of each."""
    checked(answer, specs(vocab_size).llama_top, where)
    entries = first(answer["completion_probabilities"], where, "completion_probabilities")["top_logprobs"]
    ids, logprobs = top_scores([(e["id"], float(e["logprob"])) for e in entries], n, where)
    return ids, logprobs, {e["id"]: bytes(e["bytes"]) for e in entries if e.get("bytes")}


def llama_after_chain(answer: Any, vocab_size: int, n: int, where: str) -> dict[int, float] | None:
    """llama.cpp's /completion with post_sampling_probs: each listed token's probability after its
    sampler chain; None when it held the step back (the token it drew ends in a partial character)."""
    checked(answer, specs(vocab_size).llama_after_chain, where)
    if not answer["completion_probabilities"]:
        return None
    pairs = [(e["id"], min(float(e["prob"]), 1.0)) for e in answer["completion_probabilities"][0]["top_probs"]]
    kept = set(top_scores([(token, math.log(p) if p > 0 else LOWEST_LOGPROB) for token, p in pairs], n, where)[0])
    return {token: p for token, p in pairs if token in kept}


def llama_forced(answer: Any, vocab_size: int, token_id: int, where: str) -> float | None:
    """llama.cpp's /completion with one token forced: that token's log-probability (None: not given)."""
    checked(answer, specs(vocab_size).llama_forced, where)
    entry = first(answer["completion_probabilities"], where, "completion_probabilities")
    if entry["id"] != token_id:
        raise unusable(where, f"reply.completion_probabilities[0].id: expected {token_id}, the token forced, found {entry['id']}")
    return None if entry["logprob"] is None else _clamped(float(entry["logprob"]))


_KEY = re.compile(r"token_id:([0-9]{1,12})")


def vllm_top(answer: Any, vocab_size: int, n: int, where: str) -> tuple[list[int], list[float]]:
    """vLLM's {"token_id:123": logprob} (return_tokens_as_token_ids), best first."""
    checked(answer, specs(vocab_size).vllm_top, where)
    choice = first(answer["choices"], where, "choices")
    entries = first(choice["logprobs"]["top_logprobs"], where, "choices[0].logprobs.top_logprobs")
    pairs = []
    for key, value in entries.items():
        field = f"reply.choices[0].logprobs.top_logprobs[0][{key[:40]!r}]"
        match = _KEY.fullmatch(key)
        if match is None or int(match[1]) >= vocab_size:
            raise unusable(where, f"{field}: expected a key token_id:N with N below {vocab_size}")
        checked(value, LOGPROB, where, field)
        pairs.append((int(match[1]), float(value)))
    return top_scores(pairs, n, where)


def sglang_top(answer: Any, vocab_size: int, n: int, where: str, forced: bool = False) -> tuple[list[int], list[float]]:
    """SGLang's [[logprob, id, text], ...] of the first new token (`forced`: those of the ids asked for)."""
    spec, key = (
        (specs(vocab_size).sglang_forced, "output_token_ids_logprobs")
        if forced
        else (specs(vocab_size).sglang_top, "output_top_logprobs")
    )
    checked(answer, spec, where)
    entries = first(answer["meta_info"][key], where, f"meta_info.{key}")
    pairs = []
    for index, entry in enumerate(entries):
        field = f"reply.meta_info.{key}[0][{index}]"
        if len(entry) < 2:
            raise unusable(where, f"{field}: expected [logprob, id, ...], found {entry!r:.40}")
        checked(entry[0], LOGPROB, where, f"{field}[0]")
        checked(entry[1], specs(vocab_size).token, where, f"{field}[1]")
        pairs.append((entry[1], float(entry[0])))
    return top_scores(pairs, n, where) if not forced else ([t for t, _ in pairs], [_clamped(v) for _, v in pairs])


# --- tokenizing ------------------------------------------------------------------------------------


def token_ids(answer: Any, vocab_size: int, where: str) -> list[int]:
    """/tokenize: {"tokens": [ids]}, each within the vocabulary."""
    return list(checked(answer, specs(vocab_size).tokens, where)["tokens"])


def pieces(answer: Any, vocab_size: int, asked: list[int], where: str) -> list[bytes]:
    """llama.cpp's /tokenize of ids with_pieces: each id's bytes, in the order asked."""
    tokens = checked(answer, specs(vocab_size).pieces, where)["tokens"]
    if [token["id"] for token in tokens] != asked:
        raise unusable(where, f"reply.tokens: expected the {len(asked)} ids asked for, in order")
    return [piece.encode("utf-8") if isinstance(piece, str) else bytes(piece) for piece in (t["piece"] for t in tokens)]


def text(answer: Any, spec: Any, where: str) -> str:
    """/detokenize: the text, a string."""
    value = checked(answer, spec, where)
    return str(value.get("content", value.get("prompt", value.get("text"))))
