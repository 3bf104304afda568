"""Speculative decoding, one decision at a time: a draft model proposes K tokens, the target scores
them all in one pass, and the path keeps the longest accepted prefix, then a token of the target's.

A round: the token the path takes now (the target's choice, or the correction of the last round's
rejection) and the draft's K proposals after it are fed to the target in one pass; the scores after
each are set aside, one cache entry per token, and the session takes them one step at a time with no
more model work. Each proposal is judged when the path reaches it, against the target's distribution
there as the session offers it (after the strategy's processors, as the draft's was):

- greedy: accepted while it is the target's own choice, so the path is the target's greedy path;
- sampling: accepted with probability min(1, p/q), else the path takes a draw from the normalised
  residual max(0, p - q) (Leviathan et al. 2023, Chen et al. 2023): the target's distribution kept.

Draws use tokenstep's seeded generator, the strategy's seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from decoding.core.engine import Engine, FeedsEach, SetsAside
from decoding.core.errors import SessionError
from decoding.core.scores import NextToken, Scores
from decoding.core.settings import Strategy
from decoding.core.state import DraftMark, DraftView
from decoding.search.follower import Follower
from decoding.search.session import Session

MAX_DRAFT_TOKENS = 16


def check_speculation(target: Engine, strategy: Strategy, k: int) -> None:
    """One line where a draft cannot run here."""
    if not 1 <= k <= MAX_DRAFT_TOKENS:
        raise SessionError(f"--draft-tokens must be from 1 to {MAX_DRAFT_TOKENS} (got {k}).")
    if not (isinstance(target, FeedsEach) and isinstance(target, SetsAside)):
        raise SessionError(
            f"Speculative decoding checks a draft in one pass of the target, which the {target.name} engine cannot give: "
            "run the target on --engine transformers (the draft may be on any engine)."
        )
    if strategy.is_beam:
        raise SessionError("Speculative decoding proposes one path: use greedy or sampling, not beam search.")
    if strategy.mirostat or strategy.constraint is not None:
        raise SessionError(
            "Speculative decoding runs the strategy on the draft too, which mirostat (its running mu) and grammars "
            "(their state) cannot share: turn them off to use a draft."
        )


@dataclass
class Proposal:
    """One draft token of a round, waiting for its judgement."""

    token_id: int
    q: torch.Tensor  # the draft's distribution where it was proposed (after the strategy's processors)
    scores_after: Scores  # the target's, after it
    entry: object  # its cache entry in the target


@dataclass
class Round:
    """A round in progress: the proposals the path has still to judge, from `at` (its length in ids)."""

    at: int
    proposals: list[Proposal]
    shown: list[list]  # per proposal: [label, state, p, q] (see DraftView.proposals)


class Speculator:
    def __init__(self, draft: Engine, tokens: int, name: str) -> None:
        self.follower, self.tokens, self.name = Follower(draft), tokens, name
        self._generator: torch.Generator | None = None
        self._seed: int | None = None
        self.round: Round | None = None
        self.correction: tuple[int, int, DraftMark] | None = None  # (at, token, mark) after a rejection
        self.passes = self.taken = self.accepted = self.judged = 0
        self._marks: dict[tuple[int, int], DraftMark] = {}  # (hash of the ids before, token) -> its judgement

    def step(self, session: Session) -> None:
        """One token onto the session's path: the round's next proposal, judged, or a new round's first."""
        check_speculation(session.engine, session.strategy, self.tokens)
        if self.round is not None and self.round.at == len(session.ids) and self.round.proposals:
            self._judge_next(session)
        else:
            self._start_round(session)

    def _start_round(self, session: Session) -> None:
        offered = session.next
        if offered is None:
            session.step()  # which says why nothing can be chosen
            return
        at, mark = len(session.ids), None
        if self.correction is not None and self.correction[0] == at:
            _, token, mark = self.correction
        else:
            token = offered.choose(self._draws(session.strategy))
        self.correction = None
        self._keep(session, token, mark)
        if session.ending_after(token, at):
            self.round = None
            session.take(token)
            return
        context = [*session.ids, token]
        proposed = self._propose(session, context)
        engine = session.engine
        assert isinstance(engine, FeedsEach) and isinstance(engine, SetsAside)
        scores = engine.feed_each([token, *(t for t, _ in proposed)])
        self.passes += 1
        entries = [engine.detach_last(1) for _ in scores][::-1]
        proposals = [Proposal(t, q, after, entry) for (t, q), after, entry in zip(proposed, scores[1:], entries[1:])]
        shown = [[session.token_text(t), "pending", None, None] for t, _ in proposed]
        self.round = Round(at + 1, proposals, shown)
        self.taken += 1
        session.take(token, scores[0], entries[0])

    def _propose(self, session: Session, context: list[int]) -> list[tuple[int, torch.Tensor]]:
        """Up to K draft tokens after `context`, each drawn as the strategy draws, from the draft's own
        distribution; none that would end the path (the target takes those itself)."""
        generator = self._draws(session.strategy)
        proposed: list[tuple[int, torch.Tensor]] = []
        for _ in range(self.tokens):
            scores = self.follower.scores_after(context)
            offered = NextToken(scores, session.strategy, session.choices, session.token_text, context)
            if offered.nothing_left:
                break
            q = torch.softmax(offered.strategy_scores, dim=-1)
            token = int(torch.multinomial(q, 1, generator=generator)) if session.strategy.do_sample else int(torch.argmax(q))
            if session.ending_after(token, len(context)):
                break
            proposed.append((token, q))
            context = [*context, token]
        return proposed

    def _judge_next(self, session: Session) -> None:
        """The round's next proposal against the target's distribution the session offers now."""
        assert self.round is not None and session.next is not None
        proposal = self.round.proposals.pop(0)
        p = torch.softmax(session.next.strategy_scores, dim=-1)
        token = proposal.token_id
        p_target, q_draft = float(p[token]), float(proposal.q[token])
        if session.strategy.do_sample:
            ratio = min(1.0, p_target / q_draft) if q_draft > 0 else 0.0
            accepted = float(torch.rand(1, generator=self._draws(session.strategy))) < ratio
        else:
            accepted = token == int(torch.argmax(p))
        shown = self.round.shown[len(self.round.shown) - len(self.round.proposals) - 1]
        shown[1:] = ["accepted" if accepted else "rejected", p_target, q_draft]
        self.judged += 1
        mark = DraftMark(token, accepted, p_target, q_draft)
        if accepted:
            self.accepted += 1
            self.taken += 1
            self._keep(session, token, mark)
            self.round.at += 1
            session.take(token, proposal.scores_after, proposal.entry)
            return
        for later in self.round.shown[len(self.round.shown) - len(self.round.proposals) :]:
            later[1] = "dropped"  # drafted after a token the path does not take
        self.round.proposals = []
        generator = self._draws(session.strategy)
        correction = _residual_draw(p, proposal.q, generator) if session.strategy.do_sample else int(torch.argmax(p))
        self.correction = (len(session.ids), correction, mark)
        shown_before = self.round.shown
        self._start_round(session)
        if self.round is None:  # the correction ended the path: the strip still shows the rejection
            self.round = Round(len(session.ids), [], shown_before)

    def _keep(self, session: Session, token: int, mark: DraftMark | None) -> None:
        if mark is not None:
            self._marks[(hash(tuple(session.ids)), token)] = mark

    def _draws(self, strategy: Strategy) -> torch.Generator:
        if self._generator is None or self._seed != strategy.seed:
            self._generator, self._seed = torch.Generator(), strategy.seed
            self._generator.manual_seed(strategy.seed)
        return self._generator

    def view(self, session: Session) -> DraftView:
        """What a view shows of the draft: its last round, and each path token's judgement."""
        marks = tuple(
            self._marks.get((hash(tuple(session.ids_before(index))), token.token_id)) for index, token in enumerate(session.path)
        )
        shown = tuple((label, state, p, q) for label, state, p, q in (self.round.shown if self.round else []))
        return DraftView(self.name, self.tokens, shown, marks, self.accepted, self.judged, self.passes, self.taken)


def _residual_draw(p: torch.Tensor, q: torch.Tensor, generator: torch.Generator) -> int:
    """A draw from max(0, p - q), normalised (from p itself where the two are equal)."""
    residual = torch.clamp(p - q, min=0.0)
    total = float(residual.sum())
    return int(torch.multinomial(residual / total if total > 0 else p, 1, generator=generator))
