"""Side panels' values, by registration: each panel is one function of the explorer returning a frozen
value, computed on the model's thread only while the panel is open. A view registers a widget for
the same name (tui/panels.py); adding a panel touches no other panel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from decoding.core.state import Lens, ProcessorReport
from decoding.search.tree import Branch

if TYPE_CHECKING:  # views import the panels' values before torch loads
    from decoding.records.keeper import SessionKeeper
    from decoding.search.beam import BeamSearch
    from decoding.search.second import SecondModel
    from decoding.search.session import Session


class Explored(Protocol):
    """What the panels read of the explorer (`explorer.Explorer`)."""

    @property
    def session(self) -> Session: ...
    @property
    def beam(self) -> BeamSearch | None: ...
    @property
    def cursor(self) -> int | None: ...
    @property
    def second(self) -> SecondModel | None: ...
    @property
    def lens(self) -> Lens | None: ...
    @property
    def keeper(self) -> SessionKeeper: ...


@dataclass(frozen=True)
class TreeRows:
    """The tree panel: every branch walked, and a read-only tree from another model's session file."""

    rows: tuple[Branch, ...]
    foreign: tuple[Branch, ...] = ()
    foreign_model: str = ""


@dataclass(frozen=True)
class Timeline:
    """Along the path: the chosen token's probability and the entropy it was drawn from, per step."""

    probabilities: tuple[float, ...]
    entropies: tuple[float, ...]  # nats (lower bounds on partial scores)
    forced: tuple[int, ...]  # the steps a person forced (0-based)
    cursor: int | None  # the step looked at
    second: tuple[float | None, ...] = ()  # a second model's probability of the same tokens


def processors_panel(explorer: Explored) -> ProcessorReport | None:
    """What each processor did to the candidates of the step looked at, or of the next token (None: no
    processors, or beam search, which applies them to each beam)."""
    return None if explorer.beam is not None else explorer.session.processor_report(explorer.cursor)


def timeline_panel(explorer: Explored) -> Timeline:
    session = explorer.session
    path = session.path
    second = explorer.second.view(session).path if explorer.second is not None else ()
    return Timeline(
        probabilities=tuple(token.prob for token in path),
        entropies=tuple(panel.entropy for panel in session.panels),
        forced=tuple(index for index, token in enumerate(path) if token.forced),
        cursor=explorer.cursor,
        second=tuple(pair.second.prob if pair is not None else None for pair in second),
    )


def lens_panel(explorer: Explored) -> Lens:
    """The lens computed for where the explorer stands, or a pending one: the lens runs the head over
    every layer (as long as a third of a step here), so it is computed after the step's panel is out
    (`Explorer.catch_up`), never before."""
    return explorer.lens or Lens(explorer.cursor, (), (), None, pending=True)


def tree_panel(explorer: Explored) -> TreeRows:
    foreign, model = explorer.keeper.foreign
    return TreeRows(tuple(explorer.session.tree.branches()), foreign, model)


PANELS: dict[str, Callable[[Explored], object]] = {
    "processors": processors_panel,
    "tree": tree_panel,
    "timeline": timeline_panel,
    "lens": lens_panel,
}
