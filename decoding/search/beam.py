"""Beam search one step at a time, with the bookkeeping of transformers' `generate(num_beams=B)`
(`GenerationMixin._beam_search`), so that run to the end it returns the same sequence and score.

Each step adds every live beam's next-token log-probabilities (log-softmax, then the strategy's
processors, as generate() applies them) to the beam's score. Of all (beam, token) pairs the 2B best are
kept (room for end-of-sequence); those among the top B that end (EOS, or the max_new_tokens limit) are
filed as finished hypotheses scored `score / length ** length_penalty`, and the B best that go on are the
next live beams. The search ends when no live beam can still beat the finished ones (generate()'s
`early_stopping` rules). Scores stay float32 tensors, so ties and roundings fall as in generate().
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, cast

import torch
from transformers import LogitsProcessorList

from decoding.core.distribution import summarize, top_ids
from decoding.core.engine import Engine, RunsSideBySide, decode_continuation
from decoding.core.errors import SessionError, SettingsError
from decoding.core.processors import Stage, processors_with
from decoding.core.scores import Scores, nothing_left_line
from decoding.core.settings import Strategy
from decoding.core.state import Beam, BeamSnapshot, Distribution
from decoding.core.tokens import TokenTexts

if TYPE_CHECKING:
    from decoding.core.grammar import GrammarRows

IMPOSSIBLE = -1.0e9  # generate()'s score for "cannot be chosen"
# The last few steps keep their beams' full next-token scores (undo there is exact and instant); older
# ones let them go (B vocabulary-sized rows a step), and undoing to them runs the live beams again.
FULL_STEPS_KEPT = 4


@dataclass(frozen=True)
class _Hypothesis:
    ids: tuple[int, ...]  # generated after the prefix
    score: float  # sum of processed log-probabilities (float32 arithmetic, as generate())
    logprob: float  # sum of raw-model log-probabilities
    forced: int = 0


@dataclass(frozen=True)
class _State:
    """Everything between two steps; kept per step, so undo is exact."""

    running: tuple[_Hypothesis, ...]  # B live beams, best first (at the start: B copies of the prefix)
    running_scores: torch.Tensor  # [B] float32
    finished: tuple[_Hypothesis | None, ...]  # generate()'s B finished slots
    finished_scores: torch.Tensor  # [B] float32, length-penalised; IMPOSSIBLE in an empty slot
    finished_flags: tuple[bool, ...]
    improvable: bool  # generate()'s early-stop heuristic: can a live beam still beat the finished ones?
    scores: Scores | None  # [B, vocab] next-token scores of the live beams; None once ended (or released)
    ended: str | None
    released: bool = False  # `scores` were let go (an old step): undo computes them again


class BeamSearch:
    """A beam search from `prefix_ids` that a person steps, undoes and steers (`force`)."""

    def __init__(
        self,
        engine: Engine,
        strategy: Strategy,
        prefix_ids: list[int],
        *,
        max_new_tokens: int,
        choices: int = 10,
        constraint_start: int | None = None,
    ) -> None:
        """`constraint_start`: where the strategy's constraint starts in `prefix_ids` (the prompt's
        end; default: the whole prefix is prompt)."""
        if not strategy.is_beam:
            raise SettingsError(f"beam search needs the beam strategy (got {strategy.kind!r}).")
        if not isinstance(engine, RunsSideBySide):
            raise SettingsError(
                f"The {engine.name} engine cannot run beam search: it runs one sequence at a time. "
                "Use --engine transformers for beam search."
            )
        if not prefix_ids:
            raise SessionError("There is no prompt yet: set one first.")
        room = engine.context_limit - len(prefix_ids)
        if room < 1:
            raise SessionError(f"The prompt fills the model's context ({engine.context_limit} tokens): no room to search.")
        self.engine, self.strategy, self.choices = engine, strategy, choices
        self.prefix_ids = list(prefix_ids)
        self.prefix_text = engine.decode(self.prefix_ids)
        self._token_text = TokenTexts.of(engine)
        self.max_new_tokens = min(max_new_tokens, room)
        self._beams = strategy.num_beams
        self._grammar = self._grammar_rows(constraint_start if constraint_start is not None else len(prefix_ids))
        self._processors = LogitsProcessorList(
            processor for _, processor in processors_with(strategy, self._grammar, self._token_text)
        )
        self._runner = engine.side_by_side()
        first = self._runner.start([self.prefix_ids] * self._beams)  # generate() runs B copies too
        self._check_enough_known(first)
        device = first.values.device
        running_scores = torch.full((self._beams,), IMPOSSIBLE, device=device)
        running_scores[0] = 0.0  # only the first copy may grow, or the B beams would all pick the same tokens
        self._state = _State(
            running=(_Hypothesis((), 0.0, 0.0),) * self._beams,
            running_scores=running_scores,
            finished=(None,) * self._beams,
            finished_scores=torch.full((self._beams,), IMPOSSIBLE, device=device),
            finished_flags=(False,) * self._beams,
            improvable=True,
            scores=first,
            ended=None,
        )
        self._history: list[_State] = []
        self._cache_fits = True  # False after undo or a failed step: rebuilt before the next forward
        self._scored: tuple[torch.Tensor, torch.Tensor] | None = None  # (raw, processed) log-probs of _state

    # --- commands --------------------------------------------------------------------------------

    def step(self) -> None:
        """Advance every live beam by one token, as one iteration of generate()'s beam loop."""
        self._advance(None)

    def force(self, beam: int, token_id: int) -> int | None:
        """A step in which live beam `beam` (0 = best) continues with `token_id`: that pair is kept as a
        live beam (in place of the weakest) even if the search would have dropped it. Returns its rank
        among the live beams after the step (None if it ended, as a finished hypothesis)."""
        live = self._live()
        if not isinstance(beam, int) or not 0 <= beam < len(live):
            raise SessionError(f"There is no live beam {beam!r}: there are {len(live)}.")
        if not isinstance(token_id, int) or not 0 <= token_id < self.engine.vocab_size:
            raise SessionError(f"token id {token_id!r} is not in the vocabulary (0 to {self.engine.vocab_size - 1}).")
        forced = self._state.running[live[beam]].ids + (token_id,)
        if self._grammar is not None and not self._grammar.allows(live[beam], self.prefix_ids + list(forced[:-1]), token_id):
            raise SessionError(f"The grammar cannot continue beam {beam + 1} with {self._token_text(token_id)!r}.")
        self._advance((live[beam], token_id))
        ranks = [rank for rank, row in enumerate(self._live()) if self._state.running[row].ids == forced]
        return ranks[0] if ranks else None

    def candidate_ids(self, beam: int) -> list[int]:
        """The token ids of live beam `beam`'s candidate rows, best first (as its panel lists them)."""
        if self._state.scores is None:
            return []
        values = self._state.scores.values[self._live()[beam]]
        return top_ids(values, min(self.choices, int(torch.isfinite(values).sum())))

    def undo(self) -> None:
        """Take back a whole beam step: every beam, score and finished hypothesis is as it was."""
        if not self._history:
            raise SessionError("Nothing to undo: the beam search is back at its start.")
        self._state = self._history.pop()
        self._scored = None
        self._cache_fits = False
        if self._state.released:  # the live beams run again from the prefix: within rounding of the first run
            self._state = replace(self._state, scores=self._rebuild_cache(), released=False)

    @property
    def steps(self) -> int:
        return len(self._history)

    @property
    def ended(self) -> str | None:
        return self._state.ended

    def steps_so_far(self) -> list[tuple[tuple[Beam, ...], tuple[Beam, ...]]]:
        """(live beams, finished hypotheses) after each step taken, as the snapshot showed them."""
        return [self._beams_of(state) for state in [*self._history[1:], self._state][: self.steps]]

    def _beams_of(self, state: _State) -> tuple[tuple[Beam, ...], tuple[Beam, ...]]:
        live = self._live(state)
        beams = tuple(self._view(state.running[row]) for row in live)
        finished = tuple(
            self._view(hypothesis, score)
            for hypothesis, score, flag in zip(state.finished, state.finished_scores.tolist(), state.finished_flags)
            if flag and hypothesis is not None
        )
        return beams, tuple(sorted(finished, key=lambda beam: -beam.penalised))

    def snapshot(self) -> BeamSnapshot:
        state = self._state
        live = self._live()
        candidates: tuple[Distribution, ...] = ()
        if state.scores is not None:
            raw, processed = self._log_probs()
            values, complete = state.scores.values, state.scores.complete
            candidates = tuple(
                summarize(
                    values[row],
                    raw[row],
                    Stage.of("chain", processed[row]) if self._processors else None,
                    self.choices,
                    self._token_text,
                    None if complete else int(torch.isfinite(values[row]).sum()),
                )
                for row in live
            )
        beams, finished = self._beams_of(state)
        return BeamSnapshot(
            prefix=self.prefix_text,
            beams=beams,
            candidates=candidates,
            finished=finished,
            steps=self.steps,
            ended=state.ended,
            strategy=self.strategy,
            max_new_tokens=self.max_new_tokens,
        )

    # --- one step ----------------------------------------------------------------------------------

    def _advance(self, forced: tuple[int, int] | None) -> None:
        state = self._state
        if state.ended:
            raise SessionError(f"The beam search has ended ({state.ended}). Undo to go on, or start again.")
        self._rebuild_cache()
        raw, processed = self._log_probs()
        if not bool(torch.isfinite(processed).any()):  # every beam's every token ruled out
            removers = [*self.strategy.active_processors(), *(["grammar"] if self.strategy.constraint else [])]
            raise SessionError(nothing_left_line(self.strategy, removers))
        beams, vocab = self._beams, raw.shape[-1]
        totals = (processed + state.running_scores[:, None]).reshape(1, -1)
        keep = max(2, 1 + len(self.engine.eos_token_ids)) * beams
        top_scores, top_index = (t[0] for t in torch.topk(totals, k=keep))
        flat = top_index.tolist()
        forced_at = None
        if forced is not None:
            pair = forced[0] * vocab + forced[1]
            if pair not in flat:  # in place of the weakest kept pair
                flat[-1], top_scores = pair, torch.cat((top_scores[:-1], totals[0, pair : pair + 1]))
            forced_at = flat.index(pair)
        length = len(state.running[0].ids) + 1
        candidates = [
            self._extend(
                state.running[index // vocab],
                index % vocab,
                float(top_scores[k]),
                float(raw[index // vocab, index % vocab]),
                k == forced_at,
            )
            for k, index in enumerate(flat)
        ]
        ends = torch.tensor(
            [h.ids[-1] in self.engine.eos_token_ids or length >= self.max_new_tokens for h in candidates], device=raw.device
        )
        chosen, go_on = self._next_live(top_scores, ends, forced_at)
        finished, finished_scores, finished_flags = self._file_finished(state, candidates, top_scores, ends, length, forced_at)
        running_scores = go_on[chosen]
        improvable = state.improvable and self._can_improve(running_scores, finished_scores, finished_flags, length)
        ended = self._why_ended(improvable, finished_flags, bool(ends.all()), length)
        running = tuple(candidates[k] for k in chosen)
        scores = None
        if ended is None:
            self._cache_fits = False  # until the forward below has run
            self._runner.reorder([flat[k] // vocab for k in chosen])
            scores = self._runner.feed([h.ids[-1] for h in running])
            self._check_enough_known(scores)
            self._cache_fits = True
        self._history.append(state)
        self._state = _State(running, running_scores, finished, finished_scores, finished_flags, improvable, scores, ended)
        self._scored = None
        self._release(len(self._history) - FULL_STEPS_KEPT - 1)

    def _release(self, index: int) -> None:
        """Let an old step's full scores go (its beams and finished hypotheses stay)."""
        if index >= 0 and (old := self._history[index]).scores is not None:
            self._history[index] = replace(old, scores=None, released=True)

    def _extend(self, parent: _Hypothesis, token_id: int, score: float, logprob: float, forced: bool) -> _Hypothesis:
        return _Hypothesis(parent.ids + (token_id,), score, parent.logprob + logprob, parent.forced + forced)

    def _next_live(self, top_scores: torch.Tensor, ends: torch.Tensor, forced_at: int | None) -> tuple[list[int], torch.Tensor]:
        """The B best kept pairs that did not end (generate()'s `_get_running_beams_for_next_iteration`)."""
        go_on = top_scores + ends.to(torch.float32) * IMPOSSIBLE
        chosen = torch.topk(go_on[None], k=self._beams)[1][0].tolist()
        if forced_at is not None and not bool(ends[forced_at]) and forced_at not in chosen:
            chosen[-1] = forced_at
            chosen.sort(key=lambda k: -float(go_on[k]))
        return chosen, go_on

    def _file_finished(
        self,
        state: _State,
        candidates: list[_Hypothesis],
        top_scores: torch.Tensor,
        ends: torch.Tensor,
        length: int,
        forced_at: int | None,
    ):
        """Pairs among the top B that ended join the finished slots if they beat one
        (generate()'s `_update_finished_beams`, with its -1e9 masks)."""
        strategy = self.strategy
        among_top = torch.arange(len(candidates), device=ends.device) < self._beams
        if forced_at is not None:
            among_top[forced_at] = True
        just_ended = ends & among_top
        penalised = top_scores / (length**strategy.length_penalty)
        if all(state.finished_flags) and strategy.early_stopping is True:
            penalised = penalised + IMPOSSIBLE
        if not state.improvable:
            penalised = penalised + IMPOSSIBLE
        penalised = penalised + (~just_ended).to(torch.float32) * IMPOSSIBLE
        merged = torch.cat((state.finished_scores, penalised))
        slots = torch.topk(merged[None], k=self._beams)[1][0].tolist()
        pool = state.finished + tuple(candidates)
        flags = state.finished_flags + tuple(just_ended.tolist())
        return tuple(pool[i] for i in slots), merged[slots], tuple(flags[i] for i in slots)

    def _can_improve(
        self, running_scores: torch.Tensor, finished_scores: torch.Tensor, flags: tuple[bool, ...], length: int
    ) -> bool:
        """generate()'s `_check_early_stop_heuristic`: could the best live beam still beat the worst finished one?"""
        strategy = self.strategy
        longest = self.max_new_tokens if strategy.early_stopping == "never" and strategy.length_penalty > 0 else length
        best_possible = running_scores[:1] / (longest**strategy.length_penalty)
        finished = torch.tensor(flags, device=finished_scores.device)
        worst_finished = torch.where(finished, finished_scores.min(), IMPOSSIBLE)
        return bool(torch.any(best_possible > worst_finished))

    def _why_ended(self, improvable: bool, flags: tuple[bool, ...], every_pair_ended: bool, length: int) -> str | None:
        if not improvable:
            return "no live beam can beat the finished hypotheses"
        if all(flags) and self.strategy.early_stopping is True:
            return f"{self._beams} hypotheses finished (early_stopping)"
        if every_pair_ended:
            return (
                f"max_new_tokens={self.max_new_tokens} reached"
                if length >= self.max_new_tokens
                else "every kept continuation ended"
            )
        return None

    # --- helpers ------------------------------------------------------------------------------------

    def _grammar_rows(self, start: int) -> GrammarRows | None:
        """One grammar matcher per beam row, each following its own beam, when the strategy has a constraint."""
        if self.strategy.constraint is None:
            return None
        from decoding.core.grammar import GrammarRows, grammar_for

        stop = sorted(self.engine.eos_token_ids)
        return GrammarRows([grammar_for(self.engine, self.strategy.constraint, start, stop) for _ in range(self._beams)])

    def _check_enough_known(self, scores: Scores) -> None:
        """On partial scores the search is exact only if each beam's top 2B tokens are known: generate()
        keeps the 2B best (beam, token) pairs, and they all come from the beams' own top 2B."""
        if not scores.complete:
            known = int(torch.isfinite(scores.values).sum(dim=-1).min())
            if known < 2 * self._beams:
                raise SettingsError(
                    f"Beam search with {self._beams} beams needs each beam's top {2 * self._beams} tokens; the "
                    f"{self.engine.name} engine returned {known}. Use fewer beams or ask the engine for more."
                )

    def _log_probs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw, processed) next-token log-probabilities of the live beams, once per state."""
        if self._scored is None:
            state = self._state
            assert state.scores is not None, "an ended search has no next tokens"
            raw = state.scores.logprobs
            processed = raw
            if self._processors:
                ids = cast(
                    torch.LongTensor, torch.tensor([self.prefix_ids + list(h.ids) for h in state.running], device=raw.device)
                )
                processed = self._processors(ids, cast(torch.FloatTensor, raw.clone()))  # some processors write in place
            self._scored = (raw, processed)
        return self._scored

    def _rebuild_cache(self) -> Scores | None:
        """After undo (or a failed step) the cache holds other beams: run the live ones again (their
        next-token scores come back; None when the cache already fits)."""
        if self._cache_fits:
            return None
        scores = self._runner.start([self.prefix_ids + list(h.ids) for h in self._state.running])
        self._cache_fits = True
        return scores

    def _live(self, state: _State | None = None) -> list[int]:
        """Rows that hold a real beam (at the start only the first of the B copies)."""
        scores = (state or self._state).running_scores.tolist()
        return [row for row, score in enumerate(scores) if score > IMPOSSIBLE / 2]

    def _view(self, hypothesis: _Hypothesis, penalised: float | None = None) -> Beam:
        """A live beam's penalised score is what it would get if it ended now."""
        if penalised is None:
            penalised = hypothesis.score / max(len(hypothesis.ids), 1) ** self.strategy.length_penalty
        return Beam(
            token_ids=hypothesis.ids,
            text=decode_continuation(self.engine, self.prefix_ids, hypothesis.ids, self.prefix_text),
            logprob=hypothesis.logprob,
            score=hypothesis.score,
            penalised=penalised,
            forced=hypothesis.forced,
        )
