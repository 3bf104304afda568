"""The chain's stages as llama.cpp runs them, on `--engine llama`: each stage that llama.cpp has is its
own sampler (llama-cpp-python's low-level API), so the numbers the chain view shows are the engine's.

A stage gets the tokens still in play as llama.cpp's candidate array and gives back the ones the
sampler kept, with their logits. What llama.cpp keeps in a sampler is given from the path each call,
so a step computed again (an undo, a replay) comes out the same: the context the penalties and DRY
read (shown again only from where it changed), XTC's coin (tokenstep's, from the seed and the
context) and mirostat's mu (tokenstep's, from the path; llama.cpp starts a sampler at mu = 2 tau, so
each step's sampler is made with tau = mu / 2).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from typing import Any

import llama_cpp
import numpy as np
import torch

from decoding.core.finite import finite_ids
from decoding.core.llama_samplers import ExcludeTopChoices, MirostatV2

NEG_INF = float("-inf")
TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])  # llama_token_data
HOME = "llama.cpp"


def apply(sampler: Any, token_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """llama.cpp's `sampler` on the candidates `token_ids` (ascending) with these logits: their logits
    after it, -inf for the ones it dropped."""
    data = np.empty(token_ids.numel(), dtype=TOKEN_DATA)
    data["id"], data["logit"], data["p"] = token_ids.numpy(), scores.detach().float().numpy(), 0.0
    array = llama_cpp.llama_token_data_array(
        data=data.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data)), size=len(data), selected=-1, sorted=False
    )
    llama_cpp.llama_sampler_apply(sampler, ctypes.byref(array))
    out = torch.full_like(scores, NEG_INF)
    if array.size:  # XTC moves `data` past what it drops: read where the array now starts
        raw = ctypes.cast(array.data, ctypes.POINTER(ctypes.c_uint8))
        kept = np.ctypeslib.as_array(raw, shape=(array.size * TOKEN_DATA.itemsize,)).view(TOKEN_DATA)
        at = torch.searchsorted(token_ids, torch.from_numpy(kept["id"].astype(np.int64)))
        out[at] = torch.from_numpy(kept["logit"].copy()).to(scores.dtype)
    return out


class LlamaStage:
    """One llama.cpp sampler as a stage of the chain (a LogitsProcessor that can also run on the
    tokens in play alone). `window`: how many of the context's last tokens the sampler is shown
    (penalties, DRY); 0 for none."""

    by = HOME

    def __init__(self, make: Callable[[], Any], window: int = 0) -> None:
        self._sampler = make()
        if not self._sampler:
            raise RuntimeError("llama.cpp could not make the sampler")
        self.window = window
        self._shown: list[int] = []  # the tokens shown since the last reset

    def __del__(self) -> None:
        sampler = getattr(self, "_sampler", None)
        if sampler:
            llama_cpp.llama_sampler_free(sampler)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        live = finite_ids(scores[0])
        out = torch.full_like(scores, NEG_INF)
        out[0, live] = self.on_tokens(input_ids, scores[0, live], live)
        return out  # type: ignore[return-value]

    def on_tokens(self, input_ids: torch.Tensor, scores: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        if self.window:
            self._show(input_ids[0].tolist())
        return apply(self._sampler, token_ids, scores)

    def _show(self, context: list[int]) -> None:
        """Show the sampler the context (it keeps the last `window` tokens): only the new tokens when
        the context goes on from the one it was shown last, else the last `window` from a reset."""
        before = self._shown
        if len(context) >= len(before) and context[: len(before)] == before:
            new = context[len(before) :]
        else:
            llama_cpp.llama_sampler_reset(self._sampler)
            new = context
        for token in new[-self.window :]:  # older ones would only be pushed out again
            llama_cpp.llama_sampler_accept(self._sampler, token)
        self._shown = context


class LlamaExcludeTopChoices(ExcludeTopChoices):
    """XTC: llama.cpp's sampler at probability 1 where tokenstep's coin fires, nothing where it does not."""

    by = HOME

    def __init__(self, probability: float, threshold: float, seed: int) -> None:
        super().__init__(probability, threshold, seed)
        self._always = LlamaStage(lambda: llama_cpp.llama_sampler_init_xtc(1.0, threshold, 1, seed))

    def on_tokens(self, input_ids: torch.Tensor, scores: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
        return self._always.on_tokens(input_ids, scores, token_ids) if self.fires(input_ids) else scores

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self._always(input_ids, scores) if self.fires(input_ids) else scores


class LlamaMirostatV2(MirostatV2):
    """Mirostat 2: llama.cpp's truncation at tokenstep's mu."""

    by = HOME

    def keep(self, scores: torch.Tensor, mu: float) -> torch.Tensor:
        make = lambda: llama_cpp.llama_sampler_init_mirostat_v2(0, mu / 2, self.eta)  # noqa: E731
        stage = LlamaStage(make)
        ids = torch.arange(scores.numel())
        return torch.isfinite(stage.on_tokens(torch.empty(1, 0), scores, ids))


class LlamaSamplers:
    """llama.cpp's samplers for one engine, as the sampler registry's entries build their stages
    (`Sampler.llama_cpp`). llama.cpp's -1 ("the whole context") is the context's size, which its
    own callers pass in."""

    def __init__(self, vocab: Any, vocab_size: int, context_limit: int) -> None:
        self.vocab, self.vocab_size, self.whole = vocab, vocab_size, context_limit

    def stage(self, name: str, *args: Any) -> LlamaStage:
        """`llama_sampler_init_<name>(*args)` as a stage."""
        return LlamaStage(lambda: getattr(llama_cpp, f"llama_sampler_init_{name}")(*args))

    def penalties(self, last_n: int, repeat: float, frequency: float, presence: float) -> LlamaStage:
        window = self.whole if last_n < 0 else last_n
        return LlamaStage(
            lambda: llama_cpp.llama_sampler_init_penalties(self.vocab_size, window, repeat, frequency, presence), window
        )

    def dry(self, multiplier: float, base: float, allowed: int, last_n: int, breakers: Sequence[str]) -> LlamaStage:
        window = self.whole if last_n < 0 else last_n
        words = [text.encode() for text in breakers]
        array = (ctypes.c_char_p * max(1, len(words)))(*words)
        return LlamaStage(
            lambda: llama_cpp.llama_sampler_init_dry(self.vocab, multiplier, base, allowed, window, array, len(words)), window
        )

    def xtc(self, probability: float, threshold: float, seed: int) -> LlamaExcludeTopChoices:
        return LlamaExcludeTopChoices(probability, threshold, seed)

    def mirostat(self, tau: float, eta: float) -> LlamaMirostatV2:
        return LlamaMirostatV2(tau, eta)
