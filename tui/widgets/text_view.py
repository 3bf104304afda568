"""The running text: the prompt, then each generated token, all tinted by a heat: the probability the
model gave each token, the entropy it was drawn from, its rank (GLTR's buckets), how far a second
model disagrees, or how much each token made a candidate likely (an attribution).

In a chat the template's scaffolding (role markers, control tokens) is dimmed, the messages plain,
and control tokens the model chose (<|im_end|>) keep a style of their own, so they never read as the
same characters typed as text.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from rich.style import Style
from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from decoding.core.state import AttributionView, DraftMark, PairScore, Segment, Snapshot, TokenScore
from decoding.core.tokens import escape_controls
from tui.heat_colours import TINTS

T = TypeVar("T")
FORCED_STYLE = "underline reverse"
SCAFFOLD_STYLE = "dim italic"
CURSOR_STYLE = "bold on blue"
SPECIAL_STYLE = "bold #d787ff"
AGAINST_STYLE = "italic"  # an attribution below 0: the token made the target less likely
ATTRIBUTION_BANDS = (0.05, 0.2, 0.5)  # shares of the largest magnitude


@dataclass(frozen=True)
class Heat:
    """One way of tinting the whole text: a value per token and the bands it falls in (one per tint)."""

    name: str
    value: Callable[[TokenScore, PairScore | None], float | None]
    bands: tuple[float, ...]  # upper bounds of the first three tints (`rising`) or lower bounds (not)
    labels: tuple[str, ...]  # one per tint
    rising: bool = True  # a higher value is a warmer tint
    needs_second: bool = False
    needs_draft: bool = False
    tints: tuple[str, ...] = TINTS  # the palette in use (`heat_tints`)

    def style(self, score: TokenScore, pair: PairScore | None) -> str:
        value = self.value(score, pair)
        if value is None:
            return self.tints[-1] if self.name == "rank" else ""  # an unknown rank: beyond every bucket
        for bound, tint in zip(self.bands, self.tints):
            if (value < bound) if self.rising else (value >= bound):
                return tint
        return self.tints[-1]


HEATS = (
    Heat("probability", lambda s, p: s.prob, (0.5, 0.2, 0.05), ("≥50%", "≥20%", "≥5%", "<5%"), rising=False),
    Heat("entropy", lambda s, p: s.entropy, (1.0, 2.5, 4.0), ("<1 nat", "<2.5", "<4", "≥4 nats")),
    Heat("rank", lambda s, p: s.rank, (1, 10, 100), ("top 1", "top 10", "top 100", "beyond")),
    Heat("off", lambda s, p: None, (), ()),
    Heat(
        "disagreement",
        lambda s, p: None if p is None or p.difference is None else abs(p.difference),
        (0.05, 0.5, 2.0),
        ("|Δ logp| <0.05", "<0.5", "<2", "≥2"),
        needs_second=True,
    ),
    Heat("attribution", lambda s, p: None, ATTRIBUTION_BANDS, ("<5%", "<20%", "<50%", "≥50% of the largest")),
    Heat("draft agreement", lambda s, p: None, (), ("accepted", "the target's own", "", "rejected: corrected"), needs_draft=True),
)


def heat_named(name: str, tints: tuple[str, ...] = TINTS) -> Heat:
    return replace(next(heat for heat in HEATS if heat.name == name), tints=tints)


def next_heat(name: str, second: bool, draft: bool = False) -> str:
    """The heat after `name` in the cycle (disagreement only with a second model, draft agreement
    only with a draft)."""
    names = [heat.name for heat in HEATS if (second or not heat.needs_second) and (draft or not heat.needs_draft)]
    return names[(names.index(name) + 1) % len(names)] if name in names else names[0]


def tint(prob: float, tints: tuple[str, ...] = TINTS) -> str:
    """The probability heat's tint for a token of that probability."""
    return heat_named("probability", tints).style(TokenScore(math.log(prob) if prob > 0 else None, None, 0.0, 0), None)


def attribution_style(value: float | None, largest: float, tints: tuple[str, ...] = TINTS) -> str:
    """A token's tint by its share of the largest attribution (the warmest: the most); italic when
    it made the target less likely."""
    if value is None or largest <= 0:
        return ""
    share = abs(value) / largest
    tint = next((tint for bound, tint in zip(ATTRIBUTION_BANDS, tints) if share < bound), tints[-1])
    return f"{tint} {AGAINST_STYLE}" if value < 0 else tint


def draft_style(mark: DraftMark | None, tints: tuple[str, ...] = TINTS) -> str:
    """A token by how the draft fared there: accepted, the target's own (no proposal), or corrected."""
    if mark is None:
        return tints[1]
    return tints[0] if mark.accepted else tints[3]


def legend(heat: Heat = HEATS[0], second: str = "", attribution: AttributionView | None = None) -> Text:
    text = Text().append(f"heat: {heat.name} ", style="dim")  # the tints undimmed: as in the text
    if heat.name == "attribution":
        if attribution is None:
            return text.append("(none yet: a attributes the highlighted candidate)  · h: next heat", style="dim")
        gap = "" if attribution.completeness_gap is None else f", completeness gap {attribution.completeness_gap:.1%}"
        text.append(f"({attribution.method_label}{gap}) of {attribution.target} at step {attribution.step + 1}: ", style="dim")
    for label, style in zip(heat.labels, heat.tints):
        if label:
            text.append(f"{label} ", style=style)
    if heat.name == "attribution":
        text.append("against it ", style=AGAINST_STYLE)
    text.append("forced ", style=FORCED_STYLE).append("control token", style=SPECIAL_STYLE)
    if heat.needs_second:
        text.append(f"  (against {second})", style="dim")
    return text.append("  · h: next heat", style="dim")


def running_text(snapshot: Snapshot, visible_whitespace: bool = False, heat: Heat = HEATS[0], clickable: bool = False) -> Text:
    """Literal text (never markup): every token tinted by `heat`, the prompt's too once scored;
    forced tokens and the one under the cursor marked. Neighbours of one style share one span: the
    text is painted again several times a second while playing, and its cost grows with the number
    of spans. `clickable`: each path token is its own span, and a click looks at it."""
    text = Text()
    _append_prompt(text, snapshot, visible_whitespace, heat)
    turns = {turn.before: turn for turn in snapshot.turns}
    pairs = snapshot.second.path if snapshot.second is not None else ()
    attribution = snapshot.attribution if heat.name == "attribution" else None
    run = _Run(text)
    for index, (token, piece) in enumerate(zip(snapshot.path, snapshot.pieces)):
        if index in turns:
            run.flush()
            _append_segments(text, turns[index].segments, visible_whitespace)
        score = snapshot.path_score(index) if index < len(snapshot.panels) else None
        if token.special:
            style = SPECIAL_STYLE
        elif attribution is not None:
            style = attribution_style(_at(attribution.path, index), attribution.largest, heat.tints)
        elif heat.needs_draft:
            style = draft_style(_at(snapshot.draft.marks, index) if snapshot.draft else None, heat.tints)
        else:
            style = heat.style(score, _at(pairs, index)) if score else ""
        if token.forced:
            style = f"{style} {FORCED_STYLE}"
        if index == snapshot.cursor:
            style = f"{style} {CURSOR_STYLE}"
        if clickable:
            run.flush()
            text.append(
                _shown(piece, visible_whitespace),
                style=Style.parse(style or "none") + Style.from_meta({"@click": f"app.look({index})"}),
            )
        else:
            run.add(_shown(piece, visible_whitespace), style)
    run.flush()
    if len(snapshot.path) in turns:  # a turn sent, its reply not begun
        _append_segments(text, turns[len(snapshot.path)].segments, visible_whitespace)
    if snapshot.finished:
        text.append(f"  [{snapshot.finished}]", style="bold dim")
    return text


class _Run:
    """Pieces of one style gathered into one span."""

    def __init__(self, text: Text) -> None:
        self.text, self.style, self.pieces = text, "", []  # type: ignore[var-annotated]

    def add(self, piece: str, style: str) -> None:
        if style != self.style:
            self.flush()
        self.style = style
        self.pieces.append(piece)

    def flush(self) -> None:
        if self.pieces:
            self.text.append("".join(self.pieces), style=self.style)
        self.pieces = []


def _append_prompt(text: Text, snapshot: Snapshot, visible_whitespace: bool, heat: Heat) -> None:
    """The prompt token by token, tinted, once scored; before that (or with the heat off) as text,
    its chat scaffolding dimmed."""
    attribution = snapshot.attribution if heat.name == "attribution" else None
    if attribution is not None and len(attribution.prompt) == len(snapshot.prompt_pieces):
        run = _Run(text)
        for piece, value in zip(snapshot.prompt_pieces, attribution.prompt):
            run.add(_shown(piece, visible_whitespace), attribution_style(value, attribution.largest, heat.tints))
        run.flush()
        return
    scores = snapshot.prompt_scores
    if scores is None or heat.name in ("off", "attribution") or len(scores) != len(snapshot.prompt_pieces):
        _append_segments(text, snapshot.prompt_segments or (Segment(snapshot.prompt),), visible_whitespace)
        return
    pairs = snapshot.second.prompt if snapshot.second is not None else ()
    run = _Run(text)
    for index, (piece, score) in enumerate(zip(snapshot.prompt_pieces, scores)):
        run.add(_shown(piece, visible_whitespace), heat.style(score, _at(pairs, index)) if score else "")
    run.flush()


def _at(values: tuple[T | None, ...], index: int) -> T | None:
    return values[index] if index < len(values) else None


def _append_segments(text: Text, segments: tuple[Segment, ...], visible_whitespace: bool) -> None:
    for segment in segments:
        text.append(_shown(segment.text, visible_whitespace), style=SCAFFOLD_STYLE if segment.scaffold else "")


def _shown(text: str, visible_whitespace: bool) -> str:
    if visible_whitespace:
        text = text.replace(" ", "␣").replace("\t", "⇥").replace("\n", "↵\n")
    return escape_controls(text)


class TextView(VerticalScroll):
    can_focus = False
    _legend: object = None

    def compose(self):
        running_text = Static(id="running-text")
        running_text.set_reactive(Static.auto_links, False)  # a clickable token keeps its tint (no link colour)
        yield running_text
        yield Static(legend(), id="legend")

    def show(self, snapshot: Snapshot, visible_whitespace: bool, heat: Heat = HEATS[0], clickable: bool = False) -> None:
        self._show_text(running_text(snapshot, visible_whitespace, heat, clickable))
        shown_legend = legend(heat, snapshot.second.model if snapshot.second else "", snapshot.attribution)
        if shown_legend != self._legend:  # it rarely changes: no layout of the screen for nothing
            self._legend = shown_legend
            self.query_one("#legend", Static).update(shown_legend)
        if snapshot.cursor is None:
            self.scroll_end(animate=False)

    def _show_text(self, text: Text) -> None:
        """The screen is laid out again only when the text's height changes (a new line): a layout
        is the dearest part of a play frame (~7 of ~30 ms of the screen's thread on two cores)."""
        shown = self.query_one("#running-text", Static)
        shown.update(text, layout=False)
        size = shown.content_size
        if shown.get_content_height(size, size, size.width) != size.height:
            shown.refresh(layout=True)
