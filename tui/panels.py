"""The side panels, registered in one place: the core computes each one's value (decoding.explorer.panels) while
it is open, and its widget shows it with `show(value, view)`.

To add a panel: a function in `decoding.explorer.panels.PANELS`, a widget, and one line here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from textual.app import App
from textual.widget import Widget

from tui.widgets.lens_view import LensPanel
from tui.widgets.processors import ProcessorPanel
from tui.widgets.timeline import TimelinePanel
from tui.widgets.tree_view import TreePanel

if TYPE_CHECKING:
    from decoding.explorer.explorer import View


@dataclass(frozen=True)
class PanelSpec:
    name: str  # the core's panel (decoding.explorer.panels.PANELS) and the widget's id
    key: str  # toggles it
    label: str  # footer and palette
    help: str
    widget: type[Widget]  # has show(value, view)
    place: Literal["side", "main", "bottom"]  # beside the candidates, in place of the text (and focused), or below
    in_footer: bool = False


PANELS = [
    PanelSpec("processors", "w", "Processors", "What each processor did to the candidates", ProcessorPanel, "side"),
    PanelSpec("tree", "t", "Tree", "Every branch walked; enter jumps to one", TreePanel, "main", in_footer=True),
    PanelSpec("lens", "l", "Lens", "The logit lens: the prediction after each layer", LensPanel, "main"),
    PanelSpec("timeline", "g", "Timeline", "The chosen tokens' probability and entropy along the path", TimelinePanel, "bottom"),
]


def register(spec: PanelSpec) -> PanelSpec:
    """Add a panel (before the app is imported: its keys are bound as its class is made)."""
    if any(known.name == spec.name or known.key == spec.key for known in PANELS):
        raise ValueError(f"a panel named {spec.name} or bound to {spec.key} is registered already")
    PANELS.append(spec)
    return spec


def show_panels(app: App, open_panels: frozenset[str], view: View) -> str | None:
    """Show the open panels with their values in `view` and hide the others; one main panel at a
    time (the first open one), which is returned."""
    main_panel = next((spec.name for spec in PANELS if spec.place == "main" and spec.name in open_panels), None)
    for spec in PANELS:
        widget = app.query_one(f"#{spec.name}")
        widget.display = spec.name in open_panels and (spec.place != "main" or spec.name == main_panel)
        if widget.display and spec.name in view.panels:
            widget.show(view.panels[spec.name], view)  # type: ignore[attr-defined]  # every panel widget has show()
    return main_panel
