"""The side panels, registered in one place: the core computes each one's value (decoding.explorer.panels) while
it is open, and its widget shows it with `show(value, view)`.

To add a panel: a function in `decoding.explorer.panels.PANELS`, a widget, and one line here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from textual.widget import Widget

from tui.widgets.lens_view import LensPanel
from tui.widgets.processors import ProcessorPanel
from tui.widgets.timeline import TimelinePanel
from tui.widgets.tree_view import TreePanel


@dataclass(frozen=True)
class PanelSpec:
    name: str  # the core's panel (decoding.explorer.panels.PANELS) and the widget's id
    key: str  # toggles it
    label: str  # footer and palette
    help: str
    widget: type[Widget]  # has show(value, view)
    place: Literal["side", "main", "bottom"]  # beside the candidates, in place of the text (and focused), or below
    in_footer: bool = False


PANELS = (
    PanelSpec("processors", "w", "Processors", "What each processor did to the candidates", ProcessorPanel, "side"),
    PanelSpec("tree", "t", "Tree", "Every branch walked; enter jumps to one", TreePanel, "main", in_footer=True),
    PanelSpec("lens", "l", "Lens", "The logit lens: the prediction after each layer", LensPanel, "main"),
    PanelSpec("timeline", "g", "Timeline", "The chosen tokens' probability and entropy along the path", TimelinePanel, "bottom"),
)
