"""Build a strategy's processors from transformers' own classes, in the order `generate()` applies them."""

from __future__ import annotations

from typing import Callable

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

_BUILDERS: dict[str, Callable[[Strategy], LogitsProcessor]] = {
    "repetition_penalty": lambda s: RepetitionPenaltyLogitsProcessor(penalty=s.repetition_penalty),
    "no_repeat_ngram_size": lambda s: NoRepeatNGramLogitsProcessor(s.no_repeat_ngram_size),
    "suppress_tokens": lambda s: SuppressTokensLogitsProcessor(list(s.suppress_tokens)),
    "temperature": lambda s: TemperatureLogitsWarper(s.temperature),
    # min_tokens_to_keep=1 is what generate() uses for a single sequence.
    "top_k": lambda s: TopKLogitsWarper(top_k=s.top_k, min_tokens_to_keep=1),
    "top_p": lambda s: TopPLogitsWarper(top_p=s.top_p, min_tokens_to_keep=1),
}


def build_processors(strategy: Strategy) -> LogitsProcessorList:
    """The list `GenerationMixin._get_logits_processor` builds for these settings (one sequence)."""
    return LogitsProcessorList(_BUILDERS[name](strategy) for name in strategy.active_processors())
