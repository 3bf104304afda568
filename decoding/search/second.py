"""A second model along the same path: it reads the very ids the first one reads (prompt, chosen
tokens, chat turns) and scores each token as well, so the two can be set side by side token for
token: a base model and its fine-tune, float32 and a quantized copy, a small model and a big one.

It follows incrementally on a cache of its own: the prompt in one pass where its engine can, then
one forward per new token; a change of path crops it back to what the two paths share.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from itertools import zip_longest

from decoding.core.engine import Engine, ScoresAnyToken, ScoresPositions
from decoding.core.errors import SessionError, TokenstepError
from decoding.core.scores import NextToken, Scores
from decoding.core.state import PairScore, SecondView, TokenScore
from decoding.search.positions import pair_score, position_rows, score_row
from decoding.search.session import Session, Step


def check_same_tokenizer(first: Engine, second: Engine, first_name: str, second_name: str) -> None:
    """The comparison is token for token: both must give every id the same bytes."""
    if first.vocab_size != second.vocab_size:
        raise SessionError(
            f"{second_name} has a vocabulary of {second.vocab_size} tokens and {first_name} one of {first.vocab_size}: "
            "the comparison is token for token, so both models must share one tokenizer."
        )
    for token_id in range(first.vocab_size):
        if first.token_bytes(token_id) != second.token_bytes(token_id):
            raise SessionError(
                f"{second_name} reads token {token_id} as {second.token_bytes(token_id)!r} and {first_name} as "
                f"{first.token_bytes(token_id)!r}: the comparison is token for token, so both models must share one tokenizer."
            )


class SecondModel:
    def __init__(self, engine: Engine, name: str) -> None:
        self.engine, self.name = engine, name
        self._fed: list[int] = []  # the ids its cache holds
        self._next: Scores | None = None  # its scores after them
        self._prompt_ids: tuple[int, ...] | None = None
        self._prompt: tuple[PairScore | None, ...] = ()
        self._steps: list[tuple[tuple[int, ...], PairScore | None]] = []  # per session step: its ids and score
        self.note = ""

    def view(self, session: Session) -> SecondView:
        """What it has scored of the session's path so far (no model work)."""
        path = [pair for (ids, pair), step in zip(self._steps, session.steps) if step.token is not None and ids == step.ids]
        return SecondView(self.name, self._prompt, tuple(path), self.note)

    def follow(self, session: Session, should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Score what the session's path added since last time; False when there was nothing to do.
        A failure (its context is shorter, its server went away) stops it with a note: the first
        model's exploration never depends on the second."""
        if self.note or not session.prompt.ids:
            return False
        try:
            return self._follow(session, should_stop)
        except TokenstepError as error:
            self.note = f"{self.name} stopped following: {error}"
        except Exception as error:
            self.note = f"{self.name} stopped following: {type(error).__name__}: {error}"
        return True

    def _follow(self, session: Session, should_stop: Callable[[], bool]) -> bool:
        changed = False
        if self._prompt_ids != session.prompt.ids:
            self._read_prompt(session)
            changed = True
        steps = session.steps
        kept = 0
        while kept < min(len(steps), len(self._steps)) and self._steps[kept][0] == steps[kept].ids:
            kept += 1
        if kept < len(self._steps):
            del self._steps[kept:]
            self._rewind(session.prompt_ids + [i for step in steps[:kept] for i in step.ids])
            changed = True
        before = session.prompt_ids + [i for step in steps[:kept] for i in step.ids]
        for index in range(kept, len(steps)):
            if should_stop():
                break
            self._catch_up_to(before)  # an ending token the session never fed, before a chat's next turn
            ended = index == len(steps) - 1 and session.finished is not None
            self._steps.append((steps[index].ids, self._score_step(steps[index], session.offered_at(index), ended)))
            before += steps[index].ids
            changed = True
        session.keep_scores_from = len(self._steps)  # what it has yet to read stays whole in the session
        return changed

    def _catch_up_to(self, ids: list[int]) -> None:
        if len(self._fed) < len(ids):
            missing = ids[len(self._fed) :]
            self._check_fits(len(ids))
            self._next = self.engine.feed(missing)
            self._fed += missing

    def _read_prompt(self, session: Session) -> None:
        ids = session.prompt_ids
        self._check_fits(len(ids))
        first_rows: Iterator[Scores | None] = iter(())
        if isinstance(session.engine, ScoresPositions):
            first_rows = position_rows(session.engine, ids)  # the first's cache is left as it is
        pairs: list[PairScore | None] = [None]
        for index, (second_row, first_row) in enumerate(zip_longest(self._rows(ids), first_rows)):
            if index + 1 >= len(ids):
                continue  # the distribution after the prompt: the first step's, scored with it
            token_id = ids[index + 1]
            if first_row is None or second_row is None:
                pairs.append(None)
            else:
                pairs.append(pair_score(score_row(first_row, token_id), first_row, second_row, token_id))
        self._fed = list(ids)
        self._prompt_ids, self._prompt, self._steps = tuple(ids), tuple(pairs), []

    def _rows(self, ids: Sequence[int]) -> Iterator[Scores]:
        """Its rows for every position of `ids`, leaving its cache holding them and `_next` the scores
        after them, taken as every later step's are (so one model against itself differs by nothing)."""
        engine = self.engine
        if isinstance(engine, ScoresPositions):
            engine.crop(0)
            self._next = engine.feed(list(ids))  # keeps what scoring each position needs: no second pass
            yield from position_rows(engine, ids)
            return
        for row in position_rows(engine, ids):  # fed one at a time
            self._next = row
            yield row

    def _score_step(self, step: Step, offered: NextToken, ended: bool) -> PairScore | None:
        assert self._next is not None, "the prompt was read"
        pair = None
        if step.token is not None:
            token = step.token
            first = TokenScore(
                token.logprob, token.rank, offered.distribution.entropy, offered.distribution.candidates[0].token_id
            )
            pair = pair_score(first, offered.scores, self._next, token.token_id, self._logprob_beyond(token.token_id))
        if not ended:  # an ending token is never fed, by either model
            self._check_fits(len(self._fed) + len(step.ids))
            self._next = self.engine.feed(list(step.ids))
            self._fed += step.ids
        return pair

    def _logprob_beyond(self, token_id: int) -> float | None:
        """On partial scores, a token outside the returned N, if the engine can tell it."""
        assert self._next is not None
        if self._next.complete or self._next.values[token_id] != float("-inf"):
            return None
        return self.engine.logprob_of(token_id) if isinstance(self.engine, ScoresAnyToken) else None

    def _rewind(self, ids: list[int]) -> None:
        """Crop its cache back to `ids` (a prefix of what it holds) and take the scores after them again."""
        self.engine.crop(len(ids) - 1)
        self._next = self.engine.feed(ids[-1:])
        self._fed = list(ids)

    def _check_fits(self, length: int) -> None:
        if length >= self.engine.context_limit:
            raise SessionError(f"its context holds {self.engine.context_limit} tokens")
