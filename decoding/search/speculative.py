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

Every draw is the session's own seeded sampler's, so a path comes out the same from the same seed
(replay), and undo sets it back as for any step. A round is the path's: any change under it (undo, a
pick, a jump, new settings or steering) drops what it had computed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from decoding.core.engine import Engine, FeedsEach, SetsAside
from decoding.core.errors import SessionError
from decoding.core.samplers import SAMPLERS
from decoding.core.scores import NextToken, Scores
from decoding.core.settings import Strategy
from decoding.core.state import DraftMark, DraftView
from decoding.core.tokens import one_line
from decoding.search.follower import Follower
from decoding.search.session import Session

MAX_DRAFT_TOKENS = 16


def speculation_problem(target: Engine, strategy: Strategy) -> str:
    """Why a draft cannot run with this target and strategy ('' when it can)."""
    if not (isinstance(target, FeedsEach) and isinstance(target, SetsAside)):
        return (
            f"Speculative decoding checks a draft in one pass of the target, which the {target.name} engine cannot "
            "give: run the target on --engine transformers (the draft may be on any engine)."
        )
    if strategy.is_beam:
        return "Speculative decoding proposes one path: use greedy or sampling, not beam search."
    stateful = [SAMPLERS[name].short for name, _ in strategy.on if SAMPLERS[name].stateful]
    if stateful or strategy.constraint is not None:
        held = ", ".join([*stateful, *(["a grammar"] if strategy.constraint is not None else [])])
        return (
            f"Speculative decoding runs the strategy on the draft too, which cannot share the state kept step to step "
            f"by {held}: turn it off to use a draft."
        )
    return ""


def check_speculation(target: Engine, strategy: Strategy, k: int) -> None:
    """One line where a draft cannot run here."""
    if not 1 <= k <= MAX_DRAFT_TOKENS:
        raise SessionError(f"--draft-tokens must be from 1 to {MAX_DRAFT_TOKENS} (got {k}).")
    if problem := speculation_problem(target, strategy):
        raise SessionError(problem)


@dataclass
class Proposal:
    """One draft token of a round, waiting for its judgement."""

    token_id: int
    q: torch.Tensor  # the draft's distribution where it was proposed (after the strategy's processors)
    scores_after: Scores | None  # the target's, after it (None: it would end the path, and was never fed)
    entry: object  # its cache entry in the target


@dataclass
class Round:
    """A round in progress: the proposals still to judge, valid while the path is `ids` under `under`."""

    ids: tuple[int, ...]
    under: tuple[object, ...]  # the strategy and the steering the round was computed under
    proposals: list[Proposal]
    shown: list[list]  # per proposal: [label, state, p, q] (see DraftView.proposals)


class Speculator:
    def __init__(self, draft: Engine, tokens: int, name: str) -> None:
        self.follower, self.tokens, self.name = Follower(draft), tokens, name
        self.round: Round | None = None
        self.shown: list[list] = []  # the last round's proposals, as the strip shows them
        self.correction: tuple[tuple[int, ...], int, DraftMark] | None = None  # after a rejection: (ids, token, mark)
        self.note = ""  # why the draft sits out (its own failure, or a strategy it cannot share)
        self._marks: dict[int, DraftMark] = {}  # node of the tree -> the judgement made for its token
        self._firsts: set[int] = set()  # nodes taken as a round's first token (one target pass each)

    def step(self, session: Session) -> None:
        """One token onto the session's path: the round's next proposal, judged, or a new round's first;
        under a strategy the draft cannot share, the session's own step."""
        self.note = speculation_problem(session.engine, session.strategy)
        if self.note:
            self.round = None
            session.step()
            return
        if (
            self.round is not None
            and self.round.proposals
            and self.round.ids == tuple(session.ids)
            and self.round.under == _under(session)
        ):
            self._judge_next(session)
        else:
            self._start_round(session)

    def _start_round(self, session: Session) -> None:
        self.round = None
        if session.next is None:
            session.step()  # which says why nothing can be chosen
            return
        ids = tuple(session.ids)
        correction = self.correction if self.correction is not None and self.correction[0] == ids else None
        token, mark = (correction[1], correction[2]) if correction else (session.choose_now(), None)
        if session.ending_after(token, len(ids)):
            session.take(token)
            self._keep(session, mark)
            self.correction = None
            return
        context = [*ids, token]
        proposed = self._propose(session, context)
        engine = session.engine
        assert isinstance(engine, FeedsEach) and isinstance(engine, SetsAside)
        fed = [token, *(t for t, _, ending in proposed if not ending)]
        scores = engine.feed_each(fed)
        entries = [engine.detach_last(1) for _ in scores][::-1]
        after = [*scores[1:], None]  # a proposal that would end the path is never fed
        proposals = [Proposal(t, q, s, e) for (t, q, _), s, e in zip(proposed, after, [*entries[1:], None])]
        session.take(token, scores[0], entries[0])
        self.correction = None
        self._keep(session, mark)
        self._firsts.add(session.tree.here)
        self.shown = [[session.token_text(t), "pending", None, None] for t, _, _ in proposed]
        self.round = Round(tuple(session.ids), _under(session), proposals, self.shown)

    def _propose(self, session: Session, context: list[int]) -> list[tuple[int, torch.Tensor, bool]]:
        """Up to K draft tokens after `context`, each drawn as the strategy draws, from the draft's own
        distribution: (token, the draft's distribution, whether it ends the path: then it is the last).
        A draft that fails sits the round out (the target goes on alone), and says why."""
        proposed: list[tuple[int, torch.Tensor, bool]] = []
        draft = self.follower.engine
        try:
            for _ in range(self.tokens):
                if len(context) >= draft.context_limit - 1:
                    break
                offered = NextToken(
                    self.follower.scores_after(context), session.strategy, session.choices, session.token_text, context
                )
                if offered.nothing_left:
                    break
                q = torch.softmax(offered.strategy_scores, dim=-1)
                token = session.draw(q) if session.strategy.do_sample else int(torch.argmax(q))
                ending = session.ending_after(token, len(context)) is not None
                proposed.append((token, q, ending))
                if ending:
                    break
                context = [*context, token]
        except Exception as error:  # noqa: BLE001 (the draft is a helper: whatever it raises, the target goes on)
            self.note = f"the draft sat this round out: {one_line(str(error))[:160]}"
            return []
        return proposed

    def _judge_next(self, session: Session) -> None:
        """The round's next proposal against the target's distribution the session offers now."""
        assert self.round is not None and session.next is not None
        proposal = self.round.proposals.pop(0)
        p = torch.softmax(session.next.strategy_scores, dim=-1)
        q = proposal.q.to(p.device)
        token = proposal.token_id
        p_target, q_draft = float(p[token]), float(q[token])
        if session.strategy.do_sample:
            ratio = min(1.0, p_target / q_draft) if q_draft > 0 else 0.0
            accepted = session.uniform() < ratio
        else:
            accepted = token == int(torch.argmax(p))
        shown = self.round.shown[len(self.round.shown) - len(self.round.proposals) - 1]
        shown[1:] = ["accepted" if accepted else "rejected", p_target, q_draft]
        mark = DraftMark(token, accepted, p_target, q_draft)
        if accepted:
            session.take(token, proposal.scores_after, proposal.entry)
            self._keep(session, mark)
            self.round.ids = tuple(session.ids)
            return
        for later in self.round.shown[len(self.round.shown) - len(self.round.proposals) :]:
            later[1] = "dropped"  # drafted after a token the path does not take
        correction = _residual_draw(session, p, q) if session.strategy.do_sample else int(torch.argmax(p))
        self.correction = (tuple(session.ids), correction, mark)
        shown = self.shown
        self._start_round(session)
        if self.round is None:  # the correction ended the path: the strip still shows the rejection
            self.shown = shown

    def _keep(self, session: Session, mark: DraftMark | None) -> None:
        """The judgement made for the token just taken, by its node of the tree (a branch keeps its own)."""
        if mark is not None:
            self._marks[session.tree.here] = mark

    def view(self, session: Session) -> DraftView:
        """What a view shows of the draft: its last round, and how it fared along the current path."""
        nodes = (
            [node.id for node in session.tree.path(session.tree.here)[1:] if node.token is not None]
            if session.tree.current is not None
            else []
        )
        marks = tuple(self._marks.get(node) for node in nodes)
        judged = [mark for mark in marks if mark is not None]
        passes = sum(node in self._firsts for node in nodes)
        taken = passes + sum(mark.accepted for mark in judged)
        shown = tuple((label, state, p, q) for label, state, p, q in self.shown)
        accepted = sum(mark.accepted for mark in judged)
        return DraftView(self.name, self.tokens, shown, marks, accepted, len(judged), passes, taken, self.note)


def _under(session: Session) -> tuple[object, ...]:
    return session.strategy, getattr(session.engine, "steering", None)


def _residual_draw(session: Session, p: torch.Tensor, q: torch.Tensor) -> int:
    """A draw from max(0, p - q), normalised (from p itself where the two are equal)."""
    residual = torch.clamp(p - q, min=0.0)
    total = float(residual.sum())
    return session.draw(residual / total if total > 0 else p)
