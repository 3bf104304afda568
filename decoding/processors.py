"""Build a strategy's processors from transformers' own classes, in the order `generate()` applies them."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import cast

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from decoding.settings import Strategy
from decoding.state import ProcessorEffect, ProcessorReport

_BUILDERS: dict[str, Callable[[Strategy], LogitsProcessor]] = {
    "repetition_penalty": lambda s: RepetitionPenaltyLogitsProcessor(penalty=s.repetition_penalty),
    "no_repeat_ngram_size": lambda s: NoRepeatNGramLogitsProcessor(s.no_repeat_ngram_size),
    "suppress_tokens": lambda s: SuppressTokensLogitsProcessor(list(s.suppress_tokens)),
    "temperature": lambda s: TemperatureLogitsWarper(s.temperature),
    # min_tokens_to_keep=1 is what generate() uses for a single sequence.
    "top_k": lambda s: TopKLogitsWarper(top_k=s.top_k, min_tokens_to_keep=1),
    "top_p": lambda s: TopPLogitsWarper(top_p=s.top_p, min_tokens_to_keep=1),
}


WARPERS = ("temperature", "top_k", "top_p")  # generate() adds these after the processors passed to it


@functools.lru_cache(maxsize=32)
def build_processors(strategy: Strategy) -> LogitsProcessorList:
    """The list `GenerationMixin._get_logits_processor` builds for these settings (one sequence).
    Built once per strategy: these processors keep no state between calls."""
    return LogitsProcessorList(_BUILDERS[name](strategy) for name in strategy.active_processors())


def processors_with(strategy: Strategy, grammar: LogitsProcessor | None) -> list[tuple[str, LogitsProcessor]]:
    """The strategy's processors by name, with a grammar where generate() puts a processor passed to it
    (`logits_processor=[...]`): after its own processors, before the warpers."""
    named = list(zip(strategy.active_processors(), build_processors(strategy)))
    if grammar is None:
        return named
    at = next((i for i, (name, _) in enumerate(named) if name in WARPERS), len(named))
    return [*named[:at], ("grammar", grammar), *named[at:]]


def apply_processors(strategy: Strategy, grammar: LogitsProcessor | None, input_ids: torch.LongTensor, scores: torch.FloatTensor):
    for _, processor in processors_with(strategy, grammar):
        scores = processor(input_ids, scores)
    return scores


def explain(
    strategy: Strategy, input_ids: list[int], logits: torch.Tensor, token_ids: list[int], grammar: LogitsProcessor | None = None
) -> ProcessorReport:
    """Apply the strategy's processors one at a time to one position's logits and record, for the
    candidates `token_ids`, what each did: the same calls, in the same order, as `build_processors`."""
    ids = cast(torch.LongTensor, torch.tensor([input_ids], dtype=torch.long, device=logits.device))
    scores = logits.clone()[None]
    effects = []
    for name, processor in processors_with(strategy, grammar):
        after = processor(ids, cast(torch.FloatTensor, scores.clone()))
        effects.append(_effect(name, scores[0], after[0], token_ids))
        scores = after
    return ProcessorReport(tuple(token_ids), tuple(effects))


def _effect(name: str, before: torch.Tensor, after: torch.Tensor, token_ids: list[int]) -> ProcessorEffect:
    ruled_out = (after == float("-inf")) & (before != float("-inf"))
    changed = (after != before) & ~ruled_out
    probs_before = torch.softmax(before, dim=-1)
    return ProcessorEffect(
        mass_removed=float(probs_before[ruled_out].sum()),
        name=name,
        before=tuple(probs_before[token_ids].tolist()),
        after=tuple(torch.softmax(after, dim=-1)[token_ids].tolist()),
        removed=tuple(t for t in token_ids if ruled_out[t]),
        changed=tuple(t for t in token_ids if changed[t]),
        removed_in_all=int(ruled_out.sum()),
    )
