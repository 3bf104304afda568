"""The compare view (key `c`): the chapter's strategies, each for the same N tokens from the current text.

The comparison runs in the model's worker; this screen shows its progress, then the table. Escape
cancels a comparison still running (between two steps) and closes the view.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, ProgressBar, Static

from decoding.core.tokens import escape_controls, one_line
from decoding.explorer.commands import Compare
from decoding.records.compare import COMPARE_NEW_TOKENS, cut_short_notes
from tui.messages import ComparisonDone, ComparisonFailed, ComparisonProgress


def comparison_table(record: dict[str, Any]) -> Table:
    table = Table(expand=True, show_edge=False)
    table.add_column("strategy", no_wrap=True)
    table.add_column("logprob", justify="right")
    table.add_column("mean", justify="right")
    table.add_column(f"repeated {record['ngram']}-grams", justify="right")
    table.add_column("continuation", ratio=1)
    best = max(r["sequence_logprob"] for r in record["results"])
    for r in record["results"]:
        style = "bold green" if r["sequence_logprob"] == best else ""
        table.add_row(
            Text(r["strategy"], style=style),
            Text(f"{r['sequence_logprob']:.2f}", style=style),
            Text(f"{r['mean_logprob']:.3f}"),
            Text(str(r["repeated_ngrams"])),
            Text(one_line(r["generated_text"])),  # Text, never markup: the model's words are shown as written
        )
    return table


class CompareScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape", "close", "Cancel / close", id="compare.close"),
        Binding("q", "app.quit", "Quit", id="compare.quit"),
    ]

    def __init__(self, new_tokens: int = COMPARE_NEW_TOKENS) -> None:
        super().__init__()
        self.new_tokens = new_tokens
        self.record: dict[str, Any] | None = None

    def command(self) -> Compare:
        """The comparison for the model thread, telling this screen how it goes."""
        return Compare(
            progress=lambda done, total: self.post_message(ComparisonProgress(done, total)),
            done=lambda record: self.post_message(ComparisonDone(record)),
            failed=lambda text: self.post_message(ComparisonFailed(text)),
        )

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="compare-dialog"):
            yield Label(
                f"Strategies side by side: each writes {self.new_tokens} tokens from the current text (same seed)",
                id="compare-title",
            )
            yield Label("waiting for the model…", id="compare-progress")
            yield ProgressBar(show_eta=False, id="compare-bar")
            yield Static(id="compare-table")
            yield Label("escape cancels", id="compare-hint", classes="dim")

    @on(ComparisonProgress)
    def _progress(self, message: ComparisonProgress) -> None:
        self.query_one(ProgressBar).update(total=message.total, progress=message.done)
        self.query_one("#compare-progress", Label).update(f"compared {message.done} of {message.total} strategies…")

    @on(ComparisonDone)
    def _done(self, message: ComparisonDone) -> None:
        self.record = message.record
        self.query_one("#compare-progress", Label).update(
            f"log-probabilities under the raw model, over {message.record['new_tokens']} tokens; the highest in green"
        )
        self.query_one(ProgressBar).display = False
        self.query_one("#compare-table", Static).update(comparison_table(message.record))
        notes = "\n".join(f"Note: {note}" for note in cut_short_notes(message.record))
        self.query_one("#compare-hint", Label).update(Text(escape_controls(notes + ("\n" if notes else "") + "escape closes")))

    @on(ComparisonFailed)
    def _failed(self, message: ComparisonFailed) -> None:
        self.query_one("#compare-progress", Label).update(Text(message.text, style="bold red"))
        self.query_one(ProgressBar).display = False
        self.query_one("#compare-hint", Label).update("escape closes")

    def action_close(self) -> None:
        """Close; a comparison still running is cancelled by the app (the callback of this screen)."""
        self.dismiss(None)
