"""Side panels' values, by registration: each panel is one function of the explorer returning a frozen
value, computed on the model's thread only while the panel is open. A view registers a widget for
the same name (tui/panels.py); adding a panel touches no other panel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from decoding.state import ProcessorReport
from decoding.tree import Branch

if TYPE_CHECKING:
    from decoding.explorer import Explorer


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


@dataclass(frozen=True)
class LensLayer:
    top: tuple[tuple[int, str, float], ...]  # (token id, text, probability), best first
    ranks: tuple[int, ...]  # each tracked token's 0-based rank at this layer
    probs: tuple[float, ...]  # and its probability


@dataclass(frozen=True)
class Lens:
    """Per layer (row 0: the embeddings) the top tokens, and the tracked tokens' probability and rank:
    the chosen token first (the strategy's choice, or the token chosen at a past step), then the
    candidates of the panel, in the panel's order."""

    step: int | None  # the past step looked at (0-based), None: the next token
    tracked: tuple[tuple[int, str], ...]  # (token id, text)
    layers: tuple[LensLayer, ...]
    settles_at: int | None  # the first layer from which the final top-1 stays top-1
    note: str = ""  # why there is no lens
    pending: bool = False  # to be computed once the step's panel is out (a view keeps the last one)


def processors_panel(explorer: Explorer) -> ProcessorReport | None:
    """What each processor did to the candidates of the step looked at, or of the next token (None: no
    processors, or beam search, which applies them to each beam)."""
    return None if explorer.beam is not None else explorer.session.processor_report(explorer.cursor)


def timeline_panel(explorer: Explorer) -> Timeline:
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


def lens_panel(explorer: Explorer) -> Lens:
    """The lens computed for where the explorer stands, or a pending one: the lens runs the head over
    every layer (as long as a third of a step here), so it is computed after the step's panel is out
    (`Explorer.catch_up`), never before."""
    return explorer.lens or Lens(explorer.cursor, (), (), None, pending=True)


def tree_panel(explorer: Explorer) -> TreeRows:
    foreign, model = explorer.keeper.foreign
    return TreeRows(tuple(explorer.session.tree.branches()), foreign, model)


PANELS: dict[str, Callable[[Explorer], object]] = {
    "processors": processors_panel,
    "tree": tree_panel,
    "timeline": timeline_panel,
    "lens": lens_panel,
}
