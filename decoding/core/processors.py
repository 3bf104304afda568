"""Build a strategy's processors from transformers' own classes, in the order `generate()` applies them."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import torch
from transformers import LogitsProcessor, LogitsProcessorList, SuppressTokensLogitsProcessor

from decoding.core.finite import finite_count, finite_ids
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
    own = texts.own_stage(name, strategy) if texts is not None else None
    if own is not None:  # the engine's own sampler (llama.cpp's on --engine llama): its numbers are the engine's
        return cast(LogitsProcessor, own)
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


@dataclass(frozen=True)
class Stage:
    """The scores one stage of the chain gave: over the whole vocabulary, or, once a stage left few
    tokens in play, over those alone (`left`, ascending ids; every other token is out). The stages
    after top-k then cost a few hundred numbers each instead of the vocabulary."""

    name: str
    scores: torch.Tensor
    count: int  # how many tokens are still in
    left: torch.Tensor | None = None  # the ids `scores` are for; None: scores is the whole vocabulary
    by: str = ""  # whose code ran it where not tokenstep's or transformers' (an engine's own sampler)

    @classmethod
    def of(cls, name: str, scores: torch.Tensor, by: str = "") -> Stage:
        """A stage from scores over the whole vocabulary, made compact if few tokens are left."""
        count = finite_count(scores)
        if count * COMPACT_BELOW > scores.shape[-1]:
            return cls(name, scores, count, by=by)
        left = finite_ids(scores)
        return cls(name, scores[left], count, left, by)

    def full(self, size: int) -> torch.Tensor:
        """The scores over the whole vocabulary (-inf for the tokens out)."""
        if self.left is None:
            return self.scores
        whole = torch.full((size,), float("-inf"), dtype=self.scores.dtype, device=self.scores.device)
        whole[self.left] = self.scores
        return whole

    def at(self, token_ids: torch.Tensor) -> torch.Tensor:
        """The scores of `token_ids` (-inf for those out)."""
        if self.left is None:
            return self.scores[token_ids]
        if not self.left.numel():
            return torch.full(token_ids.shape, float("-inf"), dtype=self.scores.dtype, device=self.scores.device)
        where = torch.searchsorted(self.left, token_ids).clamp(max=self.left.numel() - 1)
        return torch.where(self.left[where] == token_ids, self.scores[where], float("-inf"))


COMPACT_BELOW = 4  # compact once fewer than a quarter of the vocabulary are left
Stages = list[Stage]  # each processor's stage, in order


@contextmanager
def step_work() -> Iterator[None]:
    """Run a step's vocabulary-sized work (the chain, its report, the panel) on this thread alone and
    in inference mode. Each operation on ~50,000 numbers is split across torch's threads, which wait
    passively between the model's passes (see decoding/__init__.py): waking them costs more than the
    work (on 2 cores a check and a sum of 49,152 numbers take 1.1 ms with two threads, 0.2 ms with one).
    Inference mode halves each small operation's overhead (the chain's stages on a few hundred
    numbers are made of them)."""
    threads = torch.get_num_threads()
    with torch.inference_mode():
        if threads == 1:
            yield
            return
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def run_processors(
    strategy: Strategy, grammar: Processor | None, context: Sequence[int], model: Stage, texts: TokenTexts | None = None
) -> Stages:
    """Apply the strategy's processors to one position's scores (`model`), in generate()'s order,
    keeping what each gave: the last is what the strategy chooses from, the others explain it (see
    `explain_stages`). A processor that reads only the scores in play (`Sampler.position_free`) runs on
    those alone once a stage left few: the same result, as a token ruled out adds nothing to any sum
    or sort, for a sort of 400 numbers instead of 49,152."""
    ids = cast(torch.LongTensor, torch.tensor([list(context)], dtype=torch.long, device=model.scores.device))
    size = model.scores.shape[-1]
    stages, current = [], model
    for name, processor in processors_with(strategy, grammar, texts):
        sampler = SAMPLERS.get(name)
        by = getattr(processor, "by", "")
        if current.left is not None and hasattr(processor, "on_tokens"):  # reads which tokens are left
            current = _shrunk(name, current.left, processor.on_tokens(ids, current.scores.clone(), current.left), by)
        elif current.left is not None and sampler is not None and sampler.position_free:
            current = _shrunk(name, current.left, processor(ids, cast(torch.FloatTensor, current.scores.clone()[None]))[0], by)
        else:  # on a copy: some processors write in place
            out = processor(ids, cast(torch.FloatTensor, current.full(size)[None].clone()))[0]
            current = Stage.of(name, out, by) if current.left is None else _shrunk(name, current.left, out[current.left], by)
        stages.append(current)
    return stages


def _shrunk(name: str, left: torch.Tensor, scores: torch.Tensor, by: str) -> Stage:
    """A compact stage without the tokens its processor has just ruled out."""
    alive = torch.isfinite(scores)
    if bool(alive.all()):
        return Stage(name, scores, int(left.numel()), left, by)
    return Stage(name, scores[alive], int(alive.sum()), left[alive], by)


def explain_stages(stages: Stages, model: Stage, token_ids: list[int]) -> ProcessorReport:
    """What each processor did to the candidates `token_ids`, read from its stage: the probability of
    each going in and coming out, what it ruled out among them and in all, and the mass ruled out.
    A stage only rules tokens out or rescores those left, so the compact stages (every one after the
    first that left few) are rows over the tokens that one left: a few matrix operations in all, as
    this runs at every step."""
    rows = [model, *stages]
    first_compact = next((i for i, row in enumerate(rows) if row.left is not None), len(rows))
    wide, narrow = _Rows.wide(rows[:first_compact]), _Rows.narrow(rows[first_compact:])
    shown = torch.tensor(token_ids, dtype=torch.long, device=model.scores.device)
    shown_scores = torch.cat([wide.at(shown), narrow.at(shown)])
    shown_probs = _probs(shown_scores, torch.cat([wide.totals, narrow.totals])).tolist()
    shown_out, shown_values = (shown_scores == float("-inf")).tolist(), shown_scores.tolist()
    kept = [row.count for row in rows]
    kept_mass = [1.0, *wide.mass_under(model, wide.totals[0], kept[0])[1:], *narrow.mass_under(model, wide.totals[0], kept[0])]
    held_before = [*wide.held_before(narrow), *narrow.held_before(None)]  # each stage's survivors, before it
    effects = []
    for i, stage in enumerate(stages):
        effects.append(
            ProcessorEffect(
                name=stage.name,
                before=tuple(shown_probs[i]),
                after=tuple(shown_probs[i + 1]),
                removed=tuple(t for t, was, now in zip(token_ids, shown_out[i], shown_out[i + 1]) if now and not was),
                changed=tuple(
                    t
                    for t, was, now, out in zip(token_ids, shown_values[i], shown_values[i + 1], shown_out[i + 1])
                    if was != now and not out
                ),
                removed_in_all=kept[i] - kept[i + 1],
                mass_removed=max(0.0, 1.0 - held_before[i]) if kept[i + 1] < kept[i] and kept[i] else 0.0,
                kept=kept[i + 1],
                kept_mass=kept_mass[i + 1],
                by=stage.by,
            )
        )
    return ProcessorReport(tuple(token_ids), tuple(effects))


@dataclass(frozen=True)
class _Rows:
    """Consecutive stages as one matrix: over the whole vocabulary (`columns` None), or over the
    tokens the first of them left (`columns`, ascending), -inf where a stage ruled a token out."""

    scores: torch.Tensor  # [stages, vocabulary or columns]
    counts: list[int]
    columns: torch.Tensor | None = None

    @classmethod
    def wide(cls, rows: list[Stage]) -> _Rows:
        return cls(torch.stack([row.scores for row in rows]), [row.count for row in rows])

    @classmethod
    def narrow(cls, rows: list[Stage]) -> _Rows:
        if not rows:
            return cls(torch.empty(0, 0), [], torch.empty(0, dtype=torch.long))
        columns = rows[0].left
        assert columns is not None
        scores = torch.full((len(rows), columns.numel()), float("-inf"), dtype=rows[0].scores.dtype, device=columns.device)
        for index, row in enumerate(rows):
            assert row.left is not None
            scores[index, torch.searchsorted(columns, row.left)] = row.scores
        return cls(scores, [row.count for row in rows], columns)

    @functools.cached_property
    def totals(self) -> torch.Tensor:
        """Each stage's logsumexp (-inf where a stage left nothing)."""
        return torch.logsumexp(self.scores, dim=-1) if self.scores.numel() else self.scores.new_empty(len(self.counts))

    @functools.cached_property
    def alive(self) -> torch.Tensor:
        return torch.isfinite(self.scores)

    def at(self, token_ids: torch.Tensor) -> torch.Tensor:
        """[stages, len(token_ids)]: the scores of `token_ids` (-inf for those out)."""
        if self.columns is None:
            return self.scores[:, token_ids]
        if not self.columns.numel():
            return self.scores.new_full((len(self.counts), token_ids.numel()), float("-inf"))
        where = torch.searchsorted(self.columns, token_ids).clamp(max=self.columns.numel() - 1)
        found = self.columns[where] == token_ids
        return torch.where(found, self.scores[:, where], float("-inf"))

    def mass_under(self, model: Stage, total: torch.Tensor, known: int) -> list[float]:
        """The model's probability of the tokens each stage left."""
        if self.columns is not None:
            probs = _probs(model.scores[self.columns], total)
            return (probs * self.alive).sum(dim=-1).tolist() if self.columns.numel() else [0.0] * len(self.counts)
        return [1.0 if count == known else self._held(model.scores, total, i) for i, count in enumerate(self.counts)]

    def held_before(self, following: _Rows | None) -> list[float]:
        """For each stage but the first, the probability under the stage before it of the tokens it
        left; for the last, of those the first of `following` left."""
        held = [
            1.0 if after == before else self._held(self.scores[i], self.totals[i], i + 1)
            for i, (before, after) in enumerate(zip(self.counts, self.counts[1:]))
        ]
        if following is not None and following.counts:
            assert following.columns is not None
            held.append(float(_probs(self.scores[-1, following.columns], self.totals[-1]).sum()))
        return held

    def _held(self, scores: torch.Tensor, total: torch.Tensor, row: int) -> float:
        """The probability, under `scores`, of the tokens stage `row` left."""
        left = self.columns[self.alive[row]] if self.columns is not None else finite_ids(self.scores[row])
        columns = left if self.columns is None else torch.searchsorted(self.columns, left)
        return float(_probs(scores[columns], total).sum())


def _probs(scores: torch.Tensor, totals: torch.Tensor) -> torch.Tensor:
    """Probabilities from scores and their logsumexp; 0 where a stage left nothing (-inf - -inf is NaN)."""
    if totals.dim() == 1 and scores.dim() == 2:
        totals = totals[:, None]
    return torch.where(torch.isfinite(totals), (scores - totals).exp(), 0.0)
