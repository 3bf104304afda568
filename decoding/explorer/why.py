"""What the explorer shows of "why this token, and what if": an attribution laid over the shown
tokens, and the unsteered probabilities set beside the steered ones, for the step a view shows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from decoding.core.engine import Engine, Forks, Steers
from decoding.core.errors import SessionError
from decoding.core.state import AttributionView, Distribution, Snapshot
from decoding.search.attribution import METHODS, attribute
from decoding.search.follower import Follower
from decoding.search.session import Session


@dataclass(frozen=True)
class Shown:
    """The step a view shows: the next token (`cursor` None) or a past path token's."""

    step: int  # the path token it offers candidates for
    context: tuple[int, ...]  # what the model had read before it
    distribution: Distribution


def shown_step(session: Session, cursor: int | None) -> Shown | None:
    if cursor is not None:
        return Shown(cursor, tuple(session.ids_before(cursor)), session.panels[cursor])
    distribution = session.distribution
    return Shown(len(session.path), tuple(session.ids), distribution) if distribution is not None else None


def context_at(session: Session, step: int) -> tuple[int, ...] | None:
    """What the model read before path token `step` (the live end: everything); None: no such step."""
    if step == len(session.path):
        return tuple(session.ids)
    return tuple(session.ids_before(step)) if step < len(session.path) else None


def attribution_of(
    session: Session, cursor: int | None, method: str, row: int, should_stop: Callable[[], bool]
) -> tuple[tuple[int, ...], AttributionView]:
    """`method`'s attribution of the candidate in row `row` of the shown step, over its context."""
    shown = shown_step(session, cursor)
    if shown is None:
        raise SessionError("There is no next token to attribute: set a prompt, or look at a past step (, and .).")
    candidates = shown.distribution.candidates
    if not 0 <= row < len(candidates):
        raise SessionError(f"There is no row {row + 1}: the panel shows {len(candidates)} candidates.")
    engine = session.engine
    held = session.ids[: engine.cached_length]
    found = attribute(engine, shown.context, candidates[row].token_id, method, held=held, should_stop=should_stop)
    prompt_length = len(session.prompt_ids)
    path: list[float | None] = []
    position = prompt_length
    for step in session.steps[: session.step_of(shown.step) if cursor is not None else len(session.steps)]:
        if step.token is not None:  # a chat's turn is read, not shown token by token
            path.append(found.values[position])
        position += len(step.ids)
    view = AttributionView(
        method,
        METHODS[method],
        candidates[row].label,
        shown.step,
        found.values[:prompt_length],
        tuple(path),
        found.completeness_gap,
    )
    return shown.context, view


class Unsteered:
    """While steering: the same model without the vector (a fork, on a cache of its own) reading the
    same context, and what it said of the last step shown."""

    def __init__(self, engine: Engine) -> None:
        assert isinstance(engine, Forks) and isinstance(engine, Steers)
        twin = engine.fork()
        assert isinstance(twin, Steers)
        twin.steer(None)  # its own cache emptied; the steered engine keeps its vector
        self._follower = Follower(twin)
        self._read: tuple[tuple[object, ...], Mapping[int, float]] | None = None  # (what was read, token -> prob)

    def read(self, shown: Shown | None) -> bool:
        """The unsteered probabilities of the shown candidates; False when known already."""
        if shown is None or (self._read is not None and self._read[0] == _key(shown)):
            return False
        token_ids = [candidate.token_id for candidate in shown.distribution.candidates]
        logprobs = self._follower.scores_after(shown.context).logprobs
        self._read = (_key(shown), dict(zip(token_ids, logprobs[token_ids].exp().tolist())))
        return True

    def beside(self, snapshot: Snapshot, shown: Shown | None) -> Snapshot:
        """The snapshot with the shown candidates' unsteered probabilities, once read."""
        if shown is None or self._read is None or self._read[0] != _key(shown):
            return snapshot
        probs = self._read[1]
        candidates = tuple(replace(c, unsteered_prob=probs.get(c.token_id)) for c in shown.distribution.candidates)
        distribution = replace(shown.distribution, candidates=candidates)
        if snapshot.cursor is None:
            return replace(snapshot, distribution=distribution)
        panels = list(snapshot.panels)
        panels[snapshot.cursor] = distribution
        return replace(snapshot, panels=tuple(panels))


def _key(shown: Shown) -> tuple[object, ...]:
    return shown.context, tuple(candidate.token_id for candidate in shown.distribution.candidates)
