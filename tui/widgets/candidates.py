"""The candidate panel: the next token's top candidates, with probabilities as numbers and bars."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import DataTable

from decoding.state import Candidate, Distribution

BAR_WIDTH = 12
REMOVED_STYLE = "dim strike"


def bar(prob: float, width: int = BAR_WIDTH) -> str:
    """A horizontal bar in eighths of a cell, so small differences still show."""
    eighths = max(round(prob * width * 8), 1 if prob > 0 else 0)  # a possible token never looks impossible
    full, part = divmod(eighths, 8)
    return ("█" * full + (" ▏▎▍▌▋▊▉"[part] if part else "")).ljust(width)


class CandidatePanel(DataTable):
    """Rows are candidates best first; row N is force-picked by key N+1 (the app moves the cursor)."""

    can_focus = False  # every key belongs to the app's bindings, so users can remap them all

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True

    shown: Distribution | None = None

    def show(self, distribution: Distribution | None) -> None:
        """Replace the rows, keeping the highlighted row number."""
        if distribution == self.shown and self.row_count:
            return  # rebuilding the same rows would only make the table flicker
        self.shown = distribution
        row = self.cursor_row
        self.clear(columns=True)
        if distribution is None:
            return
        reshaped = distribution.processed_entropy is not None
        self.add_columns(*self._headers(reshaped))
        for candidate in distribution.candidates:
            self.add_row(*self._cells(candidate, reshaped), key=str(candidate.token_id))
        self.move_cursor(row=min(row, len(distribution.candidates) - 1))

    @staticmethod
    def _headers(reshaped: bool) -> list[str]:
        if reshaped:
            return ["#", "token", "model", "", "strategy", "", "logprob"]
        return ["#", "token", "prob", "", "logprob"]

    @staticmethod
    def _cells(candidate: Candidate, reshaped: bool) -> list[Text]:
        style = REMOVED_STYLE if candidate.removed else ""
        cells = [
            Text(str(candidate.rank + 1), style="dim"),
            Text(candidate.label, style=style or "bold"),
            Text(f"{100 * candidate.prob:6.2f}%", justify="right", style=style),
            Text(bar(candidate.prob), style=style or "cyan"),
        ]
        if reshaped:
            after = "removed" if candidate.removed else f"{100 * candidate.processed_prob:6.2f}%"
            cells += [Text(after, justify="right", style=style), Text(bar(candidate.processed_prob or 0), style=style or "magenta")]
        cells.append(Text(f"{candidate.logprob:8.3f}", justify="right", style=style or "dim"))
        return cells
