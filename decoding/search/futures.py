"""Many futures at once: N continuations sampled from one point of the path, side by side.

Future i is sampled under the strategy with seed + i, from a sampler seeded there, so that it is
exactly what one seeded run from that point gives (`tokenstep trace --seed S+i` from the prompt),
and can be walked again alone. On an engine that runs sequences side by side (transformers: one
batched forward a token, the rows on a cache of their own; servers: concurrent requests) the futures
grow together, one token each per model pass; on any other (llama.cpp) one after the other on the
engine's own cache, which is set back to the path after. Each step of each future keeps what was on
offer (its panel), so the futures become branches of the tree like any path walked by hand.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch

from decoding.core.engine import Engine, Forks, RunsSideBySide, ScoresPositions
from decoding.core.errors import SessionError
from decoding.core.processors import step_work
from decoding.core.scores import NextToken, Scores
from decoding.core.settings import MAX_SEED, Strategy
from decoding.core.state import PathToken
from decoding.core.tokens import RunningText
from decoding.search.positions import position_rows
from decoding.search.session import Session

MAX_FUTURES = 256  # each is a row of every model pass and a branch of the tree
MAX_NEW_TOKENS = 4096


@dataclass(frozen=True)
class Future:
    """One continuation: its tokens (each with what the raw model and the strategy thought of it),
    its text, and why it stopped ("eos", "context limit"; None: it reached its length, or the batch
    was cancelled)."""

    index: int
    seed: int
    tokens: tuple[PathToken, ...]
    text: str
    finished: str | None
    node: int | None = None  # its last node in the tree (None: no token yet)
    decision: Decision | None = None  # where its first tokens decided its outcome, if they did

    @property
    def ids(self) -> tuple[int, ...]:
        return tuple(token.token_id for token in self.tokens)

    @property
    def logprob(self) -> float:
        """The raw model's log-probability of the whole continuation (the sum over its tokens)."""
        return math.fsum(token.logprob for token in self.tokens)


class Reads(Protocol):
    """How a future's text is read as an outcome (search.outcomes.OutcomeRule)."""

    def read(self, text: str, ended: bool) -> tuple[str | None, bool]:
        """The outcome of `text` (None: none), and whether more text could no longer change it."""
        ...


@dataclass(frozen=True)
class Decision:
    """A future's outcome decided by its first `tokens` tokens, and the strategy's probability, at the
    last of them, of every token that would have decided the same outcome there (so the outcome's
    probability is the prefix's times this, summed over the prefixes the futures took)."""

    tokens: int
    outcome: str | None
    deciding: float
    unread: float = 0.0  # the probability of the tokens not read there (a flat tail): the most `deciding` may miss


DECIDED_WITHIN = 8  # tokens: beyond, a prefix's probability is the product of many draws
TAIL = 1e-6  # the deciding tokens are looked for until the mass left is below this...
READ_AT_MOST = 2048  # ...among this many likeliest at most (each is read as text, with the GIL held)


def check_request(n: object, new_tokens: object) -> None:
    """How many futures of how many tokens: one line when either is out of range."""
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_FUTURES:
        raise SessionError(f"The number of futures must be a whole number from 1 to {MAX_FUTURES} (got {n!r}).")
    if not isinstance(new_tokens, int) or isinstance(new_tokens, bool) or not 1 <= new_tokens <= MAX_NEW_TOKENS:
        raise SessionError(f"A future's length must be a whole number of tokens from 1 to {MAX_NEW_TOKENS} (got {new_tokens!r}).")


def sample_futures(
    session: Session,
    n: int,
    new_tokens: int,
    *,
    steps: int | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    grown: Callable[[list[Future]], object] = lambda futures: None,
    reads: Reads | None = None,
) -> list[Future]:
    """`n` futures of up to `new_tokens` tokens each from after the first `steps` steps of the
    session's path (None: its end), under the session's strategy, future i with seed + i, each kept
    as a branch of the tree. `grown` is told the futures after each token; `should_stop` is read
    between tokens (the futures end where they are). `reads`: how outcomes are read, to note where
    each future's first tokens decided its outcome (see `Decision`)."""
    check_request(n, new_tokens)
    strategy = session.strategy
    if strategy.is_beam:
        raise SessionError("Futures are paths sampled one token at a time: switch from beam search to sample or greedy.")
    if strategy.seed + n - 1 > MAX_SEED:
        raise SessionError(f"The seeds {strategy.seed} to {strategy.seed + n - 1} go past the largest seed, {MAX_SEED}.")
    steps = len(session.steps) if steps is None else steps
    if not session.prompt.ids or not 0 <= steps <= len(session.steps):
        raise SessionError("There is no point of the path to sample futures from: set a prompt first.")
    context = session.ids_before_step(steps)
    room = session.engine.context_limit - len(context)
    if room < 1:
        raise SessionError(f"The context is full ({session.engine.context_limit} tokens): there is no room for a future.")
    start = session.tree.path(session.tree.here)[steps].id
    walks = [_Walk(session, strategy.with_changes(seed=strategy.seed + i), i, context, reads) for i in range(n)]
    try:
        engine = session.engine
        if isinstance(engine, RunsSideBySide):
            _grow(walks, _Batch(engine, context), min(new_tokens, room), should_stop, grown)
        else:
            with _lent(session, context) as feeder:
                for walk in walks:
                    _grow([walk], feeder, min(new_tokens, room), should_stop, lambda now: grown(_so_far(walks)))
    finally:
        _keep_in_tree(session, walks, start)
    return [walk.future() for walk in walks]


def _so_far(walks: list[_Walk]) -> list[Future]:
    return [walk.future() for walk in walks]


def _grow(
    walks: list[_Walk], feeder: _Feeder, new_tokens: int, should_stop: Callable[[], bool], grown: Callable[[list[Future]], object]
) -> None:
    """Grow the walks together, a token each per model pass, until each ends or has `new_tokens`."""
    first = feeder.begin(len(walks))
    for walk in walks:
        walk.offer(first)
    live = list(walks)
    with ThreadPoolExecutor(ROW_THREADS, thread_name_prefix="tokenstep-futures") as rows:
        for _ in range(new_tokens):
            if should_stop() or not live:
                break
            chosen = list(rows.map(_drawn, live))
            going = [row for row, (walk, token_id) in enumerate(zip(live, chosen)) if not walk.ends_with(token_id)]
            if len(going) < len(live):
                feeder.keep(going)
            scores = dict(zip(going, feeder.feed([chosen[row] for row in going]) if going else []))
            list(rows.map(_taken, live, chosen, [scores.get(row) for row in range(len(live))]))
            live = [live[row] for row in going]
            grown(_so_far(walks))


# Each row's draw and its panel are vector work of its own (a draw alone is 1.5 ms: torch's
# multinomial fills an exponential per token of the vocabulary), run on as many threads as cores,
# each on one thread of torch's (see step_work): 12 rows' work a step in half the time on 2 cores.
ROW_THREADS = max(1, min(4, os.cpu_count() or 1))


def _drawn(walk: _Walk) -> int:
    with step_work():
        return walk.draw()


def _taken(walk: _Walk, token_id: int, scores: Scores | None) -> None:
    with step_work():
        walk.take(token_id, scores)


class _Walk:
    """One future as it grows: its own strategy (seed + i), sampler, text and grammar matcher, and
    at each of its steps what was on offer."""

    def __init__(self, session: Session, strategy: Strategy, index: int, context: list[int], reads: Reads | None) -> None:
        self.session, self.strategy, self.index, self.reads = session, strategy, index, reads
        self.context = list(context)
        self.raw = b""  # the bytes written so far
        self.decision: Decision | None = None
        self.grammar = session.new_grammar(strategy)
        self.rng: torch.Generator | None = None  # made on the scores' device, as a session makes it
        self.text = RunningText()
        self.tokens: list[PathToken] = []
        self.offers: list[NextToken] = []
        self.states: list[bytes | None] = []  # the sampler's state after each token (None: greedy)
        self.finished: str | None = None
        self.node: int | None = None
        self._offered: NextToken | None = None

    def offer(self, scores: Scores) -> None:
        if self.rng is None:
            self.rng = torch.Generator(device=scores.values.device)
            self.rng.manual_seed(self.strategy.seed)
        session = self.session
        self._offered = NextToken(scores, self.strategy, session.choices, session.token_text, self.context, self.grammar)

    def draw(self) -> int:
        assert self._offered is not None and self.rng is not None, "offered before drawn"
        if self._offered.nothing_left:
            raise SessionError(self._offered.nothing_left)
        return self._offered.choose(self.rng)

    def ends_with(self, token_id: int) -> bool:
        return self.session.ending_after(token_id, len(self.context)) is not None

    def take(self, token_id: int, scores: Scores | None) -> None:
        """Append the drawn token; `scores`: the next position's (None: the token ends the future)."""
        offered, rng = self._offered, self.rng
        assert offered is not None and rng is not None, "drawn before taken"
        raw = self.session.engine.token_bytes(token_id)
        self.tokens.append(offered.path_token(token_id, False, raw, self.text.push(raw)))
        self.offers.append(offered)
        self.states.append(rng.get_state().numpy().tobytes() if self.strategy.do_sample else None)
        self.finished = self.session.ending_after(token_id, len(self.context))
        written = b"" if self._ends_unwritten(token_id) else raw  # an end-of-text token is no text
        self._note_decision(offered, written)
        self.raw += written
        self.context.append(token_id)
        offered.release()  # its panel and report stay; its vocabulary-sized tensors go
        self._offered = None
        if scores is not None:
            self.offer(scores)

    def _note_decision(self, offered: NextToken, raw: bytes) -> None:
        """If the token just taken decided the outcome (within DECIDED_WITHIN tokens), note it with
        the strategy's probability, there, of every token that would have decided the same outcome."""
        reads = self.reads
        if reads is None or self.decision is not None or len(self.tokens) > DECIDED_WITHIN:
            return
        outcome, decided = reads.read(_text(self.raw + raw), self.finished is not None)
        if not decided:
            return
        probs = torch.softmax(offered.strategy_scores.float(), dim=-1)
        session, deciding, seen, total = self.session, 0.0, 0.0, float(probs.double().sum())
        ends = session.token_text.end_ids
        for token_id, prob in _likeliest(probs, READ_AT_MOST):
            seen += prob
            text = _text(self.raw + (b"" if self._ends_unwritten(token_id) else session.engine.token_bytes(token_id)))
            if reads.read(text, token_id in ends) == (outcome, True):
                deciding += prob
            if seen > total - TAIL:
                break
        self.decision = Decision(len(self.tokens), outcome, deciding, max(0.0, total - seen))

    def _ends_unwritten(self, token_id: int) -> bool:
        """A control token that ends the future (<|endoftext|>, <|im_end|>): not part of its text."""
        return token_id in self.session.token_text.end_ids and token_id in self.session.engine.special_ids

    def future(self) -> Future:
        written = self.tokens[:-1] if self.tokens and self._ends_unwritten(self.tokens[-1].token_id) else self.tokens
        text = "".join(token.piece for token in written) + self.text.unfinished()
        return Future(self.index, self.strategy.seed, tuple(self.tokens), text, self.finished, self.node, self.decision)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="ignore")


def _likeliest(probs: torch.Tensor, most: int) -> Iterator[tuple[int, float]]:
    """(token id, probability) of the `most` likeliest tokens with any probability, likeliest first."""
    top = torch.topk(probs, min(most, probs.numel()))
    yield from ((token_id, prob) for token_id, prob in zip(top.indices.tolist(), top.values.tolist()) if prob > 0.0)


class _Feeder(Protocol):
    """Rows fed one token each per model pass."""

    def begin(self, rows: int) -> Scores:
        """The scores at the start point; `rows` rows go on from there side by side."""
        ...

    def feed(self, token_ids: list[int]) -> list[Scores]:
        """One token per row still going; each row's next scores."""
        ...

    def keep(self, rows: list[int]) -> None:
        """Only these rows (by their index among those going) go on."""
        ...


class _Batch:
    """Rows side by side on a runner of the engine's own (a cache of its own, or concurrent
    requests): the context read once, then copied into every row."""

    def __init__(self, engine: RunsSideBySide, context: list[int]) -> None:
        self.runner, self.context = engine.side_by_side(), context

    def begin(self, rows: int) -> Scores:
        first = self.runner.start([self.context])
        self.runner.reorder([0] * rows)
        return Scores(first.values[0], first.complete)

    def feed(self, token_ids: list[int]) -> list[Scores]:
        scores = self.runner.feed(token_ids)
        return [Scores(row, scores.complete) for row in scores.values]

    def keep(self, rows: list[int]) -> None:
        self.runner.reorder(rows)


class _OnTheEngine:
    """One row on the engine's own cache (an engine that runs one sequence at a time): each future
    starts from the context, the cache cut back to it."""

    def __init__(self, engine: Engine, context: list[int]) -> None:
        self.engine, self.context = engine, context

    def begin(self, rows: int) -> Scores:
        assert rows == 1, "one sequence at a time"
        self.engine.crop(len(self.context) - 1)
        return self.engine.feed(self.context[-1:])

    def feed(self, token_ids: list[int]) -> list[Scores]:
        return [self.engine.feed(token_ids)]

    def keep(self, rows: list[int]) -> None:
        pass


@contextmanager
def _lent(session: Session, context: list[int]) -> Iterator[_OnTheEngine]:
    """The engine's cache lent to the futures, then set back to the session's path."""
    engine, held = session.engine, session.engine.cached_length
    try:
        yield _OnTheEngine(engine, context)
    finally:
        engine.crop(len(context))
        rest = session.ids[len(context) : held]
        if rest:
            engine.feed(rest)


def _keep_in_tree(session: Session, walks: Sequence[_Walk], start: int) -> None:
    """Each future as a branch of the tree below node `start` (where it was sampled from); a token
    whose branch is already there walks into it (its record stays as it was made). The tree's
    current node stays where it was."""
    tree, here = session.tree, session.tree.current
    try:
        for walk in walks:
            tree.current = start
            for token, offered, state in zip(walk.tokens, walk.offers, walk.states):
                child = tree.child(tree.here, token.token_id)
                if child is None:
                    tree.advance(token, offered.distribution, walk.strategy.describe(), state)
                else:
                    tree.current = child
            walk.node = tree.current if walk.tokens else None
    finally:
        tree.current = here


def logprob_under(engine: Engine, context: Sequence[int], ids: Sequence[int]) -> float | None:
    """A continuation's log-probability under a model (a second one), teacher-forced: the context and
    the continuation read in one pass where the engine can, else on a cache of its own; None where the
    engine cannot read it without disturbing its cache, or did not score a token (beyond its top N)."""
    if not isinstance(engine, ScoresPositions):
        if not isinstance(engine, Forks):
            return None
        engine = engine.fork()
    total = []
    for position, scores in enumerate(position_rows(engine, [*context, *ids][:-1])):
        if position >= len(context) - 1:
            value = float(scores.logprobs[ids[position - len(context) + 1]])
            if not math.isfinite(value):
                return None
            total.append(value)
    return math.fsum(total)
