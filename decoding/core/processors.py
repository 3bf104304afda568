"""Build a strategy's processors from transformers' own classes, in the order `generate()` applies them."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import cast

import torch
from transformers import LogitsProcessor, LogitsProcessorList, SuppressTokensLogitsProcessor

from decoding.core.samplers import SAMPLERS
from decoding.core.settings import Strategy
from decoding.core.state import ProcessorEffect, ProcessorReport
from decoding.core.tokens import TokenTexts

# What a processor is called as: transformers' LogitsProcessors, and a grammar's matcher.
Processor = Callable[[torch.LongTensor, torch.FloatTensor], torch.FloatTensor]


@functools.lru_cache(maxsize=32)
def build_processors(strategy: Strategy, texts: TokenTexts | None = None) -> LogitsProcessorList:
    """The list `GenerationMixin._get_logits_processor` builds for these settings (one sequence), or
    the chain given (`samplers`). Built once per strategy and vocabulary: a processor that follows the
    path (mirostat) keys what it keeps by the context, so a step computed again comes out the same."""
    return LogitsProcessorList(_build(name, strategy, texts) for name in strategy.active_processors())


def _build(name: str, strategy: Strategy, texts: TokenTexts | None) -> LogitsProcessor:
    if name == "suppress_tokens":
        return SuppressTokensLogitsProcessor(list(strategy.suppress_tokens))
    build = SAMPLERS[name].build
    assert build is not None  # active_processors names stages only
    return build(getattr(strategy, name), strategy, texts)


def processors_with(
    strategy: Strategy, grammar: Processor | None, texts: TokenTexts | None = None
) -> list[tuple[str, Processor]]:
    """The strategy's processors by name, with a grammar where generate() puts a processor passed to it
    (`logits_processor=[...]`): after its own processors, before the warpers; first in a chain given."""
    named = list(zip(strategy.active_processors(), build_processors(strategy, texts)))
    if grammar is None:
        return named
    at = (
        0
        if strategy.samplers
        else next((i for i, (name, _) in enumerate(named) if name in SAMPLERS and SAMPLERS[name].sampling_only), len(named))
    )
    return [*named[:at], ("grammar", grammar), *named[at:]]


Stages = list[tuple[str, torch.Tensor]]  # each processor's name and the scores it gave, in order


def run_processors(
    strategy: Strategy, grammar: Processor | None, context: Sequence[int], scores: torch.Tensor, texts: TokenTexts | None = None
) -> Stages:
    """Apply the strategy's processors to one position's scores, in generate()'s order, keeping what
    each gave: the last is what the strategy chooses from, the others explain it (see `explain_stages`)."""
    ids = cast(torch.LongTensor, torch.tensor([list(context)], dtype=torch.long, device=scores.device))
    stages, current = [], scores[None]
    for name, processor in processors_with(strategy, grammar, texts):
        sampler = SAMPLERS.get(name)
        current = (
            _on_those_left(processor, ids, current)
            if sampler and sampler.position_free
            else processor(ids, cast(torch.FloatTensor, current.clone()))
        )
        stages.append((name, current))
    return [(name, after[0]) for name, after in stages]


def _on_those_left(processor: Processor, ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
    """A processor that reads only the scores in play, run on those alone when an earlier stage left
    few (each sort-based warper otherwise sorts the whole vocabulary: 4.5 ms a step here). The same
    result: a token already ruled out adds nothing to any sum or sort."""
    left = torch.isfinite(scores[0]).nonzero()[:, 0]
    if left.numel() * COMPACT_BELOW > scores.shape[-1]:
        return processor(ids, cast(torch.FloatTensor, scores.clone()))  # on a copy: some write in place
    out = torch.full_like(scores, float("-inf"))
    out[:, left] = processor(ids, cast(torch.FloatTensor, scores[:, left]))  # indexing copies
    return out


COMPACT_BELOW = 4  # run on those left when fewer than a quarter of the vocabulary are


def explain_stages(stages: Stages, raw: torch.Tensor, token_ids: list[int]) -> ProcessorReport:
    """What each processor did to the candidates `token_ids`, read from its stage: the probability of
    each going in and coming out, what it ruled out among them and in all, and the mass ruled out.
    Every stage at once, as rows of one matrix: this runs at every step."""
    scores = torch.stack([raw, *(after for _, after in stages)])
    probs, out = torch.softmax(scores, dim=-1), scores == float("-inf")
    ruled_out = out[1:] & ~out[:-1]  # by each stage
    masses, counts = torch.where(ruled_out, probs[:-1], 0.0).sum(dim=-1).tolist(), ruled_out.sum(dim=-1).tolist()
    kept = (~out[1:]).sum(dim=-1).tolist()
    kept_masses = torch.where(out[1:], 0.0, probs[0]).sum(dim=-1).tolist()  # the model's probability of those left
    shown = torch.tensor(token_ids, dtype=torch.long, device=raw.device)
    shown_probs, shown_scores, shown_out = probs[:, shown].tolist(), scores[:, shown].tolist(), out[:, shown].tolist()
    effects = []
    for i, (name, _) in enumerate(stages):
        removed = [t for t, was, now in zip(token_ids, shown_out[i], shown_out[i + 1]) if now and not was]
        effects.append(
            ProcessorEffect(
                mass_removed=masses[i],
                name=name,
                before=tuple(shown_probs[i]),
                after=tuple(shown_probs[i + 1]),
                removed=tuple(removed),
                changed=tuple(
                    t
                    for t, before, after, now in zip(token_ids, shown_scores[i], shown_scores[i + 1], shown_out[i + 1])
                    if before != after and not now
                ),
                removed_in_all=counts[i],
                kept=kept[i],
                kept_mass=kept_masses[i],
            )
        )
    return ProcessorReport(tuple(token_ids), tuple(effects))
