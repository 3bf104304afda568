"""The exploration's area of the main screen: the text (or the beams, or a main panel) beside the
candidates and the side panels. Hidden until a model is loaded."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll

from tui.panels import PANELS
from tui.widgets.beams import BeamPanel
from tui.widgets.candidates import CandidatePanel
from tui.widgets.draft_strip import DraftStrip
from tui.widgets.text_view import TextView


class ExplorationArea(Horizontal):
    def compose(self) -> ComposeResult:
        yield TextView(id="text")
        yield BeamPanel(id="beams")
        yield from (spec.widget(id=spec.name) for spec in PANELS if spec.place == "main")
        with Vertical(id="side"):
            yield DraftStrip(id="draft-strip")
            with VerticalScroll(id="candidates-scroll"):
                yield CandidatePanel(id="candidates")
            yield from (spec.widget(id=spec.name) for spec in PANELS if spec.place == "side")

    def on_mount(self) -> None:
        self.display = False
        self.query_one(BeamPanel).display = False
        self.query_one(DraftStrip).display = False
