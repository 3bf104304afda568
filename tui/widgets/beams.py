"""The beam view: every live beam with its scores, best first, then the finished hypotheses.

One Rich Text, columns padded by hand (as the candidate panel: cheap to repaint while playing).
"""

from __future__ import annotations

from rich.style import Style
from rich.text import Text
from textual.widgets import Static

from decoding.core.state import Beam, BeamSnapshot
from decoding.core.tokens import one_line

NUMBERS_WIDTH = 4 + 3 * 10  # the rank column and three numbers


def _continuation(beam: Beam, width: int) -> str:
    """The beam's text since the prefix on one line, its end kept (where the search is)."""
    text = one_line(beam.text) + (f" ({beam.forced} forced)" if beam.forced else "")
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def _row(rank: str, beam: Beam, width: int, style: str = "") -> Text:
    line = Text(f"{rank:>3} ", style="dim")
    line.append(_continuation(beam, width).ljust(width), style=style or "bold")
    return line.append(f" {beam.logprob:9.3f} {beam.score:9.3f} {beam.penalised:9.3f}", style=style)


def beam_table(snapshot: BeamSnapshot, highlighted: int, width: int = 80, highlight: Style | str = "reverse") -> Text:
    """The table for a panel `width` cells wide: the continuation column takes what the numbers leave."""
    width = max(12, width - NUMBERS_WIDTH)
    header = Text(f"{'#':>3} {'continuation':<{width}} {'logprob':>9} {'score':>9} {'penalised':>9}", style="bold")
    lines = [Text(f"beam search from: {one_line(snapshot.prefix)[-60:]}", style="dim"), header]
    for rank, beam in enumerate(snapshot.beams):
        line = _row(str(rank + 1), beam, width)
        if rank == highlighted:
            line.stylize(highlight)
        lines.append(line)
    if not snapshot.beams:
        lines.append(Text("  (no live beams)", style="dim"))
    lines.append(Text(f"\nfinished hypotheses ({len(snapshot.finished)}), best penalised score first", style="bold"))
    lines += [
        _row("✓" if rank == 0 else "", beam, width, "green" if rank == 0 else "") for rank, beam in enumerate(snapshot.finished)
    ]
    if snapshot.ended:
        lines.append(Text(f"\nended: {snapshot.ended}", style="bold"))
    return Text("\n").join(lines)


class BeamPanel(Static):
    COMPONENT_CLASSES = {"beam-panel--highlight"}
    shown: tuple[BeamSnapshot, int] | None = None

    def show(self, snapshot: BeamSnapshot, highlighted: int) -> None:
        self.shown = (snapshot, highlighted)
        highlight = self.get_component_rich_style("beam-panel--highlight")
        self.update(beam_table(snapshot, highlighted, self.content_size.width or 80, highlight))

    def on_resize(self) -> None:
        if self.shown is not None:
            self.show(*self.shown)
