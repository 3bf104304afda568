"""One position's next-token scores, as an engine returns them, and everything derived from them, once.

An engine returns either the whole vocabulary's logits, or (a server) only the top N log-probabilities.
`Scores` holds both alike as one vector with -inf where nothing is known; `NextToken` is the next
token at one position under one strategy: the raw and processed scores, the candidates shown, the
entropy. On partial scores each says what it can: the entropy is a lower bound, a token outside the
N has no rank, sampling and processors see only the N.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import torch

from decoding.core.distribution import rank_of, summarize
from decoding.core.errors import TokenstepError
from decoding.core.finite import finite_count
from decoding.core.processors import Stage, Stages, explain_stages, run_processors, step_work
from decoding.core.settings import Strategy
from decoding.core.state import Distribution, PathToken, ProcessorReport, ServerChain
from decoding.core.tokens import TokenTexts, bytes_to_text


class GrammarState(Protocol):
    """A grammar's matcher as scores use it (`core.grammar.GrammarState`): the processor that masks
    what the grammar forbids, and which tokens it allows after `context`."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor: ...

    def allowed(self, context: Sequence[int]) -> torch.Tensor: ...


@dataclass(frozen=True)
class Scores:
    """Raw next-token scores at one position.

    `values` is a float32 vector over the whole vocabulary: the model's logits when `complete`, else
    the log-probabilities of the tokens the engine returned and -inf for the rest. The processors run
    on `values` (logits, as generate() runs them; on partial scores, log-probabilities: the same for
    every processor but the repetition penalty, which scales raw scores).
    """

    values: torch.Tensor
    complete: bool = True

    @classmethod
    def top(cls, vocab_size: int, ids: Sequence[int], logprobs: Sequence[float], device: str | torch.device = "cpu") -> Scores:
        """Partial scores: the log-probabilities of `ids`, nothing known of the rest."""
        values = torch.full((vocab_size,), float("-inf"), dtype=torch.float32, device=device)
        values[torch.tensor(list(ids), dtype=torch.long, device=device)] = torch.tensor(
            list(logprobs), dtype=torch.float32, device=device
        )
        return cls(values, complete=False)

    @property
    def logprobs(self) -> torch.Tensor:
        """Log-probabilities under the raw model (-inf where unknown)."""
        return torch.log_softmax(self.values, dim=-1) if self.complete else self.values

    @property
    def known(self) -> int:
        """How many tokens' scores are known (the vocabulary's size when complete)."""
        return self.values.shape[-1] if self.complete else finite_count(self.values)


# What a released position holds instead of its scores: one value for all, as a small allocation kept
# by every step would pin the freed memory around it.
NO_SCORES = Scores(torch.empty(0))


class NextToken:
    """The next token at one position under one strategy, each part computed once on first use."""

    def __init__(
        self,
        scores: Scores,
        strategy: Strategy,
        choices: int,
        texts: TokenTexts,
        context: Sequence[int],
        grammar: GrammarState | None = None,
    ) -> None:
        self.scores, self.strategy, self.choices = scores, strategy, choices
        self._texts = texts
        self.grammar = grammar  # the session's grammar matcher, when its strategy has a constraint
        self._grammar_allows = grammar.allowed(context) if grammar is not None else None
        # The processors read the sequence (n-gram blocking, repetition penalty): run them now rather
        # than keep the sequence for later. What each gave is kept until the report is made from it,
        # so that a record never runs them again.
        self._stages: Stages | None = None
        if strategy.reshapes:
            with step_work():
                self._stages = run_processors(strategy, grammar, context, self._model_stage(), texts)
        self._beside = chain_beside(texts, context, strategy) if strategy.reshapes else None
        self._chosen_from: Stage | None = self._stages[-1] if self._stages else None
        self.processed: torch.Tensor | None = self._chosen_from.full(scores.values.shape[-1]) if self._chosen_from else None
        # Why the strategy has nothing to choose from ('' when it has): every token ruled out.
        self.nothing_left = ""
        if self._stages and self._stages[-1].count == 0:
            with step_work():
                effects = explain_stages(self._stages, self._model_stage(), []).effects
            self.nothing_left = nothing_left_line(strategy, [effect.name for effect in effects if effect.removed_in_all])
        self._logprobs: torch.Tensor | None = None
        self._distribution: Distribution | None = None
        self._report: ProcessorReport | None = None  # what the processors did, once asked for or released
        self.held = True  # the full-vocabulary tensors are here (see `release`)

    @classmethod
    def shown(
        cls, distribution: Distribution, strategy: Strategy, choices: int, texts: TokenTexts, grammar: GrammarState | None
    ) -> NextToken:
        """A past position known by its saved panel alone (a path read in one pass): released from
        the start, `rescored` once its scores are needed."""
        offered = cls.__new__(cls)
        offered.scores, offered.strategy, offered.choices = NO_SCORES, strategy, choices
        offered._texts, offered.grammar, offered._grammar_allows = texts, grammar, None
        offered.processed = offered._logprobs = offered._stages = offered._chosen_from = None
        offered._distribution, offered.held, offered.nothing_left = distribution, False, ""
        offered._report = offered._beside = None
        return offered

    def release(self) -> None:
        """Keep the panel (its candidates and entropy) and what the processors did to it, and let the
        full-vocabulary tensors go: a past step holds a few KB instead of several vocabulary-sized
        vectors, and a record of it needs no model work. `rescored` brings the tensors back."""
        self._distribution = self.distribution  # computed now, from the scores, and kept
        self._report = self.report()
        self.scores = NO_SCORES
        self.processed = self._logprobs = self._grammar_allows = self._stages = self._chosen_from = None
        self.held = False

    def rescored(self, scores: Scores, context: Sequence[int]) -> NextToken:
        """The same position from its scores computed again (`context`: the ids before it)."""
        return NextToken(scores, self.strategy, self.choices, self._texts, context, self.grammar)

    def under(self, strategy: Strategy, choices: int, context: Sequence[int], grammar: GrammarState | None) -> NextToken:
        """The same scores under another strategy or number of candidates (and its grammar's matcher)."""
        return NextToken(self.scores, strategy, choices, self._texts, context, grammar)

    @property
    def logprobs(self) -> torch.Tensor:
        if self._logprobs is None:
            self._logprobs = self.scores.logprobs
        return self._logprobs

    @property
    def strategy_scores(self) -> torch.Tensor:
        """What the strategy chooses from: the processed scores, or the raw ones when nothing reshapes them."""
        return self.processed if self.processed is not None else self.scores.values

    @property
    def distribution(self) -> Distribution:
        """The candidates shown (row 0 is the raw argmax) and the entropy."""
        if self._distribution is None:
            self._distribution = self._summarize()
        return self._distribution

    def logprob(self, token_id: int) -> float | None:
        """The raw model's log-probability of `token_id`; None when the engine did not return it."""
        value = float(self.logprobs[token_id])
        return value if math.isfinite(value) or self.scores.complete else None

    def rank(self, token_id: int) -> int | None:
        """0-based rank among the raw scores (ties by id); None for a token outside the known N."""
        shown = next((c for c in self.distribution.candidates if c.token_id == token_id), None)
        if shown is not None:
            return shown.rank
        if not self.scores.complete and not math.isfinite(float(self.scores.values[token_id])):
            return None
        return rank_of(self.scores.values, token_id)

    def processed_prob(self, token_id: int) -> float | None:
        """The probability under the strategy's processors, when they reshape the distribution."""
        if self.processed is None:
            return None
        shown = next((c for c in self.distribution.candidates if c.token_id == token_id), None)
        if shown is not None:
            return shown.processed_prob
        if self.nothing_left:
            return 0.0  # every token was ruled out (a softmax of nothing but -inf is NaN)
        return float(torch.softmax(self.processed, dim=-1)[token_id])

    def choose(self, rng: torch.Generator) -> int:
        """The token the strategy chooses here: greedy's argmax (row 0 of the panel when nothing
        reshapes), or a draw from the strategy's distribution with `rng` (as generate() draws)."""
        if self.strategy.do_sample:  # on one thread: the same draw, a third faster (see step_work)
            with step_work():
                return int(torch.multinomial(torch.softmax(self.strategy_scores, dim=-1), 1, generator=rng))
        if self.processed is None:
            return self.distribution.candidates[0].token_id  # the panel's row 0 is the argmax (ties by id)
        return int(torch.argmax(self.strategy_scores))

    def path_token(self, token_id: int, forced: bool, raw: bytes, piece: str, logprob: float | None = None) -> PathToken:
        """`token_id` chosen here, as the path keeps it: what the raw model and the strategy thought
        of it (`logprob`: the engine's answer, for a token beyond the N it returned)."""
        logprob = self.logprob(token_id) if logprob is None else logprob
        assert logprob is not None, "a token beyond the known N comes with its log-probability"
        return PathToken(
            token_id=token_id,
            text=bytes_to_text(raw),
            prob=math.exp(logprob),
            logprob=logprob,
            rank=self.rank(token_id),
            forced=forced,
            processed_prob=self.processed_prob(token_id),
            raw=raw,
            piece=piece,
            special=token_id in self._texts.special_ids,
        )

    @property
    def kept_report(self) -> ProcessorReport | None:
        """The processors' report if already made (None: not yet, or the strategy has no processors)."""
        return self._report

    def keep(self, report: ProcessorReport | None) -> None:
        """Keep a report made from this position's scores computed again (see Session.report_at)."""
        self._report = report

    def report(self) -> ProcessorReport | None:
        """What each processor did to the candidates (None when the strategy has none), made once from
        the processors' stages, which then go."""
        if not self.strategy.reshapes:
            return None
        if self._report is None:
            assert self._stages is not None, "a released position keeps its report"
            candidates = [c.token_id for c in self.distribution.candidates]
            with step_work():
                self._report, self._stages = explain_stages(self._stages, self._model_stage(), candidates), None
        return self._report

    def _model_stage(self) -> Stage:
        """The model's own scores, as the chain's first stage."""
        return Stage("model", self.scores.values, self.scores.known)

    def _summarize(self) -> Distribution:
        known = None if self.scores.complete else self.scores.known
        with step_work():
            summary = summarize(self.scores.values, self.logprobs, self._chosen_from, self.choices, self._texts, known)
        summary = beside(replace(summary, nothing_left=self.nothing_left), self._beside)
        if self._grammar_allows is None:
            return summary
        marked = tuple(
            c if bool(self._grammar_allows[c.token_id]) else replace(c, removed=True, removed_by="grammar")
            for c in summary.candidates
        )
        return replace(summary, candidates=marked)


def nothing_left_line(strategy: Strategy, removers: Sequence[str]) -> str:
    """The one line that says the strategy has no token left to choose, naming what ruled them out."""
    names = [f"the {strategy.constraint.describe()}" if name == "grammar" and strategy.constraint else name for name in removers]
    ruled = f"{' and '.join(names)} rule{'s' if len(names) == 1 else ''}" if names else "the strategy rules"
    return f"No token is left to choose here: {ruled} out every one. Undo, force a token, or change the settings."


def chain_beside(texts: TokenTexts, context: Sequence[int], strategy: Strategy) -> ServerChain | str | None:
    """A server's own chain for the same settings (see TokenTexts.chain_beside). A server that fails
    to answer it gets a line beside the panel, not a failed step: the step itself has its scores."""
    try:
        return texts.chain_beside(list(context), strategy)
    except TokenstepError as error:
        return f"the server did not say what its own chain gives: {error}"


def beside(summary: Distribution, chain: ServerChain | str | None) -> Distribution:
    """The panel with a server's own chain beside it: each candidate's probability after it (0 for
    one it ruled out, None beyond the top N it listed), or the line saying why there is none."""
    if chain is None:
        return summary
    if isinstance(chain, str):
        return replace(summary, server=chain)
    rows = tuple(replace(c, server_prob=chain.probs.get(c.token_id, 0.0 if chain.complete else None)) for c in summary.candidates)
    return replace(summary, candidates=rows, server="llama-server, after its own chain (post_sampling_probs)")
