"""The candidate panel: the next token's top candidates, with probabilities as numbers and bars.

One Static holding one Rich Text, its columns padded by hand: it is repainted while play runs, and
a DataTable (or a Rich Table) rebuilt every frame cost the model's thread a tenth of its speed
(the UI and the model's thread share the GIL).
"""

from __future__ import annotations

from rich.cells import cell_len
from rich.text import Text
from textual import events
from textual.geometry import Region
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Static

from decoding.core.state import BeamSnapshot, Candidate, Distribution, PathToken, Snapshot
from decoding.core.tokens import escape_controls, token_label

BAR_WIDTH = 10
REMOVED_STYLE = "dim strike"
SPECIAL_STYLE = "magenta"
SERVER_STYLE = "yellow"  # the server's own chain, beside tokenstep's
# The same model without the steering vector, beside the steered one (a colour of the xterm cube:
# the theme leaves it as it is)
UNSTEERED_STYLE = "#5fafff"
NOTHING_LEFT_STYLE = "bold yellow"  # every candidate ruled out: the strategy cannot choose
CHOSEN_STYLE = "bold blue"  # a control token (<|im_end|>), unlike the same characters typed as text
HEADER_LINES = 1
TOKEN_WIDTH = 18
PERCENT_WIDTH = len("100.00%")
LOGPROB_WIDTH = len("-10.000")
ENDED_NOTES = {"eos": "end of sequence: ⌫ takes it back", "context limit": "the context is full: ⌫ takes a token back"}


def bar(prob: float, width: int = BAR_WIDTH) -> str:
    """A horizontal bar in eighths of a cell, so small differences still show."""
    eighths = max(round(prob * width * 8), 1 if prob > 0 else 0)  # a possible token never looks impossible
    full, part = divmod(eighths, 8)
    return ("█" * full + (" ▏▎▍▌▋▊▉"[part] if part else "")).ljust(width)


class CandidatePanel(Static):
    """Rows are candidates best first; row N is force-picked by key N+1, the highlighted one by enter."""

    COMPONENT_CLASSES = {"candidate-panel--highlight"}

    class RowSelected(Message):
        """A row was clicked."""

        def __init__(self, row: int) -> None:
            super().__init__()
            self.row = row

    shown: Distribution | None = None
    note = ""
    chat = False
    chosen: PathToken | None = None  # at a past step: the token that was chosen there
    cursor_row = 0
    _drawn_size: tuple[int, int] | None = None  # the table's lines and width when last shown (see move_cursor)

    def show(
        self, distribution: Distribution | None, note: str = "", chat: bool = False, chosen: PathToken | None = None
    ) -> None:
        """Show these candidates, keeping the highlighted row number; with none, `note` says why. At
        a past step, `chosen` is marked and `note` says which step it is."""
        if (distribution, note, chat, chosen) == (self.shown, self.note, self.chat, self.chosen):
            return  # nothing new to paint
        self.shown, self.note, self.chat, self.chosen = distribution, note, chat, chosen
        self.move_cursor(self.cursor_row)

    def show_snapshot(self, snapshot: Snapshot) -> None:
        """The next token's candidates, or those on offer at the step looked at, its choice marked."""
        if snapshot.cursor is not None:
            chosen = snapshot.path[snapshot.cursor]
            note = f"step {snapshot.cursor + 1} of {len(snapshot.path)}: a digit branches here, esc goes back"
            self.show(snapshot.panels[snapshot.cursor], note, snapshot.chat, chosen=chosen)
            return
        note = ENDED_NOTES.get(snapshot.finished or "", "")
        if snapshot.chat and snapshot.finished == "eos":
            note = "the reply has ended: send the next message (ctrl+s), or ⌫ takes it back"
        self.show(snapshot.distribution, note, snapshot.chat)

    def show_beam(self, beam: BeamSnapshot, rank: int) -> None:
        """The candidates of the beam ranked `rank`."""
        candidates = beam.candidates[rank] if beam.candidates else None
        self.show(candidates, "the beam search has ended: ⌫ takes a step back")

    def move_cursor(self, row: int) -> None:
        rows = len(self.shown.candidates) if self.shown else 1
        self.cursor_row = max(0, min(row, rows - 1))
        # The screen is laid out again only when the table's size changes (more lines, or wider
        # columns: a strategy that reshapes the distribution adds two), not at every frame of play.
        table = self._table() if self.shown else self._empty()
        lines = table.plain.split("\n")
        size = (len(lines), max(cell_len(line) for line in lines))
        self.update(table, layout=size != self._drawn_size)
        self._drawn_size = size
        if self.shown:  # a long list scrolls with the highlight, so enter never picks a row not shown
            self.call_after_refresh(self._keep_cursor_in_view)

    def _keep_cursor_in_view(self) -> None:
        """The panel sits in a scrolling container (the side column); scroll it to the highlighted row."""
        row = Region(0, self.virtual_region.y + HEADER_LINES + self.cursor_row, 1, 1)
        if isinstance(self.parent, Widget) and self.parent.allow_vertical_scroll:
            self.parent.scroll_to_region(row, animate=False, immediate=True)

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)  # None on the border
        row = offset.y - HEADER_LINES if offset else -1
        if self.shown and 0 <= row < len(self.shown.candidates):
            self.post_message(self.RowSelected(row))

    def _table(self) -> Text:
        shown = self.shown
        assert shown is not None
        reshaped = shown.processed_entropy is not None
        served = reshaped and any(candidate.server_prob is not None for candidate in shown.candidates)
        steered = any(candidate.unsteered_prob is not None for candidate in shown.candidates)
        rows = [_cells(candidate, reshaped, served, steered) for candidate in shown.candidates]
        header = [Text(title, style="bold") for title in _headers(reshaped, served, steered)]
        # Fixed column widths: the panel keeps its width from step to step, so the text beside it never reflows.
        widths = [
            max([width, *(cell.cell_len for cell in column)])
            for width, column in zip(_widths(reshaped, len(rows), served, steered), zip(header, *rows))
        ]
        lines = [_line(header, widths)]
        highlight = self.get_component_rich_style("candidate-panel--highlight")
        chosen_id = self.chosen.token_id if self.chosen is not None else None
        for index, row in enumerate(rows):
            line = _line(row, widths)
            if shown.candidates[index].token_id == chosen_id:
                line.append(" ◀ chosen" + (" (forced)" if self.chosen and self.chosen.forced else ""), style=CHOSEN_STYLE)
            if index == self.cursor_row:
                line.stylize(highlight)
            lines.append(line)
        if self.chosen is not None:
            lines.append(Text(self.note, style=CHOSEN_STYLE))
            if all(candidate.token_id != chosen_id for candidate in shown.candidates):
                rank = "beyond the known" if self.chosen.rank is None else f"rank {self.chosen.rank + 1}"
                lines.append(
                    Text(f"chosen: {token_label(self.chosen.text)} ({rank}, {100 * self.chosen.prob:.2f}%)", style=CHOSEN_STYLE)
                )
        if shown.kept is not None:
            lines.append(chain_strip(shown))
        if shown.server:
            lines.append(Text(f"server: {escape_controls(shown.server)}", style=SERVER_STYLE if served else "dim"))
        if shown.nothing_left:
            lines.append(Text(shown.nothing_left, style=NOTHING_LEFT_STYLE))
        if shown.candidates and shown.candidates[0].ends:
            ends = "the reply" if self.chat else "the generation"
            lines.append(Text(f"row 1, {shown.candidates[0].label}, would end {ends}", style=SPECIAL_STYLE))
        if not shown.complete:
            lines.append(
                Text(
                    f"the engine returned its top {shown.known}: {100 * shown.covered:.1f}% of the probability",
                    style="dim",
                )
            )
        return Text("\n").join(lines)

    def _empty(self) -> Text:
        """The note, in a panel as wide as the candidates were (the text beside it keeps its width)."""
        width = sum(_widths(False, 10)) + len(_widths(False, 10)) - 1
        return Text(self.note.ljust(width), style="dim")


def chain_strip(shown: Distribution) -> Text:
    """What the chain kept of the vocabulary, and which distribution each column is."""
    of = f"{shown.vocab_size:,}" if shown.complete else f"the {shown.known} returned"
    line = Text()
    line.append("kept ", style="dim")
    line.append(f"{shown.kept:,}", style="bold magenta")
    line.append(f" of {of} ({shown.kept_mass:.2f} of the mass)", style="dim")
    line.append("\nmodel: as it is · strategy: after the chain", style="dim")
    if not shown.complete:  # the chain ran here on the top N: what lies beyond them it never saw
        line.append(f"\napproximate: the chain ran on the {shown.known} tokens the server returned", style="yellow")
    return line


def _widths(reshaped: bool, rows: int, served: bool = False, steered: bool = False) -> list[int]:
    rank = len(str(rows))
    unsteered = [len("unsteered")] if steered else []
    if reshaped:
        server = [PERCENT_WIDTH] if served else []
        return [rank, TOKEN_WIDTH, PERCENT_WIDTH, BAR_WIDTH, PERCENT_WIDTH, BAR_WIDTH, *server, *unsteered, LOGPROB_WIDTH]
    return [rank, TOKEN_WIDTH, PERCENT_WIDTH, BAR_WIDTH, *unsteered, LOGPROB_WIDTH]


def _headers(reshaped: bool, served: bool = False, steered: bool = False) -> list[str]:
    """The model's column is "steered" while steering, the same model without the vector beside it."""
    unsteered = ["unsteered"] if steered else []
    if reshaped:
        return [
            "#",
            "token",
            "steered" if steered else "model",
            "",
            "strategy",
            "",
            *(["served"] if served else []),
            *unsteered,
            "logprob",
        ]
    return ["#", "token", "steered" if steered else "prob", "", *unsteered, "logprob"]


def _line(cells: list[Text], widths: list[int]) -> Text:
    """Cells padded to their column's width; the token column (index 1) on the left, numbers on the right."""
    line = Text()
    for index, (cell, width) in enumerate(zip(cells, widths)):
        padding = " " * (width - cell.cell_len)
        line.append_text(cell + padding if index in (1, 3, 5) else Text(padding) + cell)
        line.append(" ")
    line.rstrip()
    return line


def _cells(candidate: Candidate, reshaped: bool, served: bool = False, steered: bool = False) -> list[Text]:
    style = REMOVED_STYLE if candidate.removed else ""
    cells = [
        Text(str(candidate.rank + 1), style="dim"),
        Text(_fit(candidate.label), style=style or (SPECIAL_STYLE if candidate.special else "bold")),
        Text(f"{100 * candidate.prob:.2f}%", style=style),
        Text(bar(candidate.prob), style=style or "cyan"),
    ]
    if reshaped:
        after = f"{100 * (candidate.processed_prob or 0.0):.2f}%"
        if candidate.removed:
            after = f"✗ {candidate.removed_by}" if candidate.removed_by else "removed"
        cells += [Text(after, style=style), Text(bar(candidate.processed_prob or 0), style=style or "magenta")]
        if served:
            server = "…" if candidate.server_prob is None else f"{100 * candidate.server_prob:.2f}%"
            cells.append(Text(server, style=style or SERVER_STYLE))
    if steered:
        unsteered = "…" if candidate.unsteered_prob is None else f"{100 * candidate.unsteered_prob:.2f}%"
        cells.append(Text(unsteered, style=style or UNSTEERED_STYLE))
    cells.append(Text(f"{candidate.logprob:.3f}", style=style or "dim"))
    return cells


def _fit(label: str) -> str:
    return label if cell_len(label) <= TOKEN_WIDTH else label[: TOKEN_WIDTH - 1] + "…"
