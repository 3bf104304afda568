"""The running text: the prompt, then each generated token tinted by how likely the model found it.

In a chat the template's scaffolding (role markers, control tokens) is dimmed, the messages plain,
and control tokens the model chose (<|im_end|>) keep a style of their own, so they never read as the
same characters typed as text.
"""

from __future__ import annotations

from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from decoding.state import Segment, Snapshot
from decoding.tokens import escape_controls

# (lowest probability, style): the first band a token's probability reaches gives its tint.
PROBABILITY_BANDS = [(0.5, "green"), (0.2, "yellow"), (0.05, "dark_orange"), (0.0, "red")]
FORCED_STYLE = "underline reverse"
SCAFFOLD_STYLE = "dim italic"
SPECIAL_STYLE = "bold magenta"


def tint(prob: float) -> str:
    return next(style for floor, style in PROBABILITY_BANDS if prob >= floor)


def legend() -> Text:
    text = Text("tint: ", style="dim")
    for (floor, style), (ceiling, _) in zip(PROBABILITY_BANDS, [(1.0, "")] + PROBABILITY_BANDS):
        text.append(f"≥{floor:.0%} " if floor else f"<{ceiling:.0%} ", style=style)
    text.append("forced ", style=FORCED_STYLE).append("control token", style=SPECIAL_STYLE)
    return text.append("  (prompt plain, chat template dim)", style="dim")


def running_text(snapshot: Snapshot, visible_whitespace: bool = False) -> Text:
    """Literal text (never markup): prompt plain, tokens tinted, forced tokens marked. Neighbours of
    one tint share one span: the text is painted again several times a second while playing, and
    its cost grows with the number of spans."""
    text = Text()
    _append_segments(text, snapshot.prompt_segments or (Segment(snapshot.prompt),), visible_whitespace)
    turns = {turn.before: turn for turn in snapshot.turns}
    run_style: str | None = None
    run: list[str] = []
    for index, (token, piece) in enumerate(zip(snapshot.path, snapshot.pieces)):
        if index in turns:
            text.append("".join(run), style=run_style or "")
            run, run_style = [], None
            _append_segments(text, turns[index].segments, visible_whitespace)
        style = SPECIAL_STYLE if token.special else tint(token.prob)
        if token.forced:
            style = f"{style} {FORCED_STYLE}"
        if style != run_style and run:
            text.append("".join(run), style=run_style or "")
            run = []
        run_style = style
        run.append(_shown(piece, visible_whitespace))
    if run:
        text.append("".join(run), style=run_style or "")
    if len(snapshot.path) in turns:  # a turn sent, its reply not begun
        _append_segments(text, turns[len(snapshot.path)].segments, visible_whitespace)
    if snapshot.finished:
        text.append(f"  [{snapshot.finished}]", style="bold dim")
    return text


def _append_segments(text: Text, segments: tuple[Segment, ...], visible_whitespace: bool) -> None:
    for segment in segments:
        text.append(_shown(segment.text, visible_whitespace), style=SCAFFOLD_STYLE if segment.scaffold else "")


def _shown(text: str, visible_whitespace: bool) -> str:
    if visible_whitespace:
        text = text.replace(" ", "␣").replace("\t", "⇥").replace("\n", "↵\n")
    return escape_controls(text)


class TextView(VerticalScroll):
    can_focus = False

    def compose(self):
        yield Static(id="running-text")
        yield Static(legend(), id="legend")

    def show(self, snapshot: Snapshot, visible_whitespace: bool) -> None:
        self.query_one("#running-text", Static).update(running_text(snapshot, visible_whitespace))
        self.scroll_end(animate=False)
