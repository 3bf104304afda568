"""The chain view (key `w`): what each stage of the strategy's chain did to this step's candidates.

Columns are the model's distribution, then each stage in the chain's order (generate()'s, or the one
`--samplers` gives). The first rows say how many tokens of the vocabulary survive each stage and the
model's probability of them; then a row per candidate of the panel, its probability after each stage. A candidate a processor ruled out shows which one (✗ top_k); one whose
score it changed otherwise (a repetition penalty) is marked ↓ or ↑.
"""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

from rich.text import Text
from textual.widgets import Static

from decoding.core.samplers import SAMPLERS
from decoding.core.state import Distribution, ProcessorReport

if TYPE_CHECKING:
    from decoding.explorer.explorer import View


def short_name(processor: str) -> str:
    """A processor's name as a column shows it: a sampler's own short name, else its name."""
    sampler = SAMPLERS.get(processor)
    return sampler.short if sampler else {"suppress_tokens": "suppress"}.get(processor, processor)


COLUMN = 10
NOTE_WIDTH = 48  # the narrowest a note is wrapped to: as wide as the candidate panel


def _cell(text: str, style: str = "") -> Text:
    return Text(text.rjust(COLUMN), style=style)


def _chain_row(label: str, whole: float, cells: list[str]) -> Text:
    """How much survives each stage: the chain view's first rows."""
    line = Text(f"{label:<14}", style="dim")
    line.append_text(_cell(f"{whole:,}" if isinstance(whole, int) else f"{whole:.3f}", "dim"))
    for cell in cells:
        line.append_text(_cell(cell, "bold"))
    return line


def processor_table(report: ProcessorReport, distribution: Distribution) -> Text:
    labels = {c.token_id: c.label for c in distribution.candidates}
    header = Text(f"{'token':<14}" + "model".rjust(COLUMN), style="bold")
    for effect in report.effects:
        header.append(short_name(effect.name)[:COLUMN].rjust(COLUMN))
    lines = [header, _chain_row("kept", distribution.vocab_size, [f"{e.kept:,}" for e in report.effects])]
    lines.append(_chain_row("of the mass", 1.0, [f"{e.kept_mass:.3f}" for e in report.effects]))
    for row, token_id in enumerate(report.token_ids):
        line = Text(f"{labels.get(token_id, str(token_id))[:13]:<14}")
        line.append_text(_cell(f"{100 * report.effects[0].before[row]:.2f}%" if report.effects else ""))
        removed_by = None
        for effect in report.effects:
            if removed_by:
                line.append_text(_cell(""))
            elif token_id in effect.removed:
                removed_by = effect.name
                line.append_text(_cell(f"✗ {short_name(effect.name)}", "red"))
            else:
                mark = ""
                if token_id in effect.changed:
                    mark = "↓" if effect.after[row] < effect.before[row] else "↑"
                line.append_text(_cell(f"{mark}{100 * effect.after[row]:.2f}%", "magenta" if mark else ""))
        lines.append(line)
    ruled_out = ", ".join(
        f"{short_name(e.name)} {e.removed_in_all} ({100 * e.mass_removed:.1f}% of the probability)" for e in report.effects
    )
    notes = [f"ruled out in the whole vocabulary: {ruled_out}"]
    homes = {e.by for e in report.effects if e.by}
    for home in sorted(homes):
        own = ", ".join(short_name(e.name) for e in report.effects if e.by == home)
        others = [short_name(e.name) for e in report.effects if e.by != home]
        notes.append(
            f"{home}'s own samplers ran {own} (the engine's numbers)" + (f"; tokenstep ran {', '.join(others)}" if others else "")
        )
    if not distribution.complete:  # a server's top N: the processors ran here, on them
        notes.append(f"ran here, on the top {distribution.known} tokens the engine returned")
    return Text("\n").join([*lines, *(note(text, header.cell_len) for text in notes)])


def note(text: str, width: int = NOTE_WIDTH) -> Text:
    """A dim note wrapped to the table's width: a long line would widen the side column and squeeze
    the text beside it."""
    return Text("\n".join(textwrap.wrap(text, max(width, NOTE_WIDTH))), style="dim")


class ProcessorPanel(Static):
    def show(self, report: ProcessorReport | None, view: View) -> None:
        distribution = view.snapshot.distribution
        if view.beam is not None:
            self.update(note("Beam search applies the processors to each beam; this view follows a single path."))
        elif report is None or distribution is None:
            self.update(note("No processors: the strategy takes the model's distribution as it is."))
        else:
            self.update(processor_table(report, distribution))
