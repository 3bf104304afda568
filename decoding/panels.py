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


def processors_panel(explorer: Explorer) -> ProcessorReport | None:
    """What each processor did to the next token's candidates (None: no processors, or beam search,
    which applies them to each beam)."""
    return None if explorer.beam is not None else explorer.session.processor_report()


def tree_panel(explorer: Explorer) -> TreeRows:
    foreign, model = explorer.keeper.foreign
    return TreeRows(tuple(explorer.session.tree.branches()), foreign, model)


PANELS: dict[str, Callable[[Explorer], object]] = {
    "processors": processors_panel,
    "tree": tree_panel,
}
