"""The logit lens (key `l`): for the next token, or the past step under the cursor, what the model
would predict after each layer (embeddings first): the top tokens with their probabilities, and the
chosen token's and the highlighted candidate's probability and rank, tinted by probability."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from decoding.core.state import Lens
from decoding.core.tokens import token_label
from tui.heat_colours import TINTS
from tui.widgets.text_view import tint

if TYPE_CHECKING:
    from decoding.explorer.explorer import View


CELL_WIDTH = 14  # "100.00% #12345"


class LensPanel(Static):
    value: Lens | None = None
    highlighted = 0  # the candidate panel's highlighted row

    def show(self, value: Lens, view: View | None = None) -> None:
        if value.pending:  # computed once the step's panel is out: the last lens stays meanwhile
            self.border_title = "logit lens · updating…"
            self.value = None  # so the lens that follows is painted even if it is the same
            return
        if value != self.value:
            self.value = value
            self._paint()

    def highlight(self, row: int) -> None:
        if row != self.highlighted:
            self.highlighted = row
            self._paint()

    def _paint(self) -> None:
        lens = self.value
        if lens is None:
            return
        where = "the next token" if lens.step is None else f"step {lens.step + 1}"
        self.border_title = f"logit lens · {where}"
        if lens.note:
            self.update(Text(lens.note, style="dim"))
            return
        tints = getattr(self.app, "heat_tints", TINTS)  # the app's heat palette
        self.update(Group(Text(_summary(lens), style="dim"), _table(lens, self.highlighted, tints)))


def _table(lens: Lens, highlighted: int, tints: tuple[str, ...] = TINTS) -> Table:
    chosen = lens.tracked[0]
    row = min(highlighted + 1, len(lens.tracked) - 1)  # tracked: the chosen token, then the candidates
    other = lens.tracked[row] if row > 0 else None
    chosen_name = "chosen" if lens.step is not None else "top"
    table = Table(box=None, padding=(0, 1), expand=True)
    table.add_column("layer", justify="right", style="dim", no_wrap=True, min_width=5)
    table.add_column(f"{chosen_name}\n{token_label(chosen[1])}", justify="right", no_wrap=True, min_width=CELL_WIDTH)
    if other is not None:
        table.add_column(f"highlighted\n{token_label(other[1])}", justify="right", no_wrap=True, min_width=CELL_WIDTH)
    table.add_column("top tokens\nat this layer", no_wrap=True, overflow="ellipsis", ratio=1)
    for index, layer in enumerate(lens.layers):
        cells = [Text("emb" if index == 0 else str(index)), _cell(layer.probs[0], layer.ranks[0], tints)]
        if other is not None:
            cells.append(_cell(layer.probs[row], layer.ranks[row], tints))
        tops = Text()
        for token_id, text, prob in layer.top:
            tops.append(f"{token_label(text)} ", style="bold" if token_id == chosen[0] else "")
            tops.append(f"{100 * prob:.0f}%  ", style="dim")
        tops.rstrip()
        table.add_row(*cells, tops)
    return table


def _cell(prob: float, rank: int, tints: tuple[str, ...]) -> Text:
    return Text(f"{100 * prob:.2f}% #{rank + 1}", style=tint(prob, tints))


def _summary(lens: Lens) -> str:
    """Where the final prediction settles; the table's rows are layers, embeddings first."""
    if lens.settles_at is None:
        return ""
    final = lens.layers[-1].top[0][1]
    at = "the embeddings" if lens.settles_at == 0 else f"layer {lens.settles_at}"
    return f"the final top token {token_label(final)} is top from {at} on (of {len(lens.layers) - 1} layers)"
