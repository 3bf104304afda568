"""The futures view (key `F`): N continuations sampled from the cursor (or the end), side by side, as
they grow; then the outcomes they came to, as a bar chart of the sampled shares beside the model's
own probability where a short prefix decided the outcome.

The batch runs on the model thread; this screen hears how it grows. Escape cancels a batch still
running (the futures end where they were, and are kept as branches) and then closes the view; enter
on a future walks into it (the screen closes, the path follows that branch, and stepping goes on
from there).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Label, Static
from textual_plotext import PlotextPlot

from decoding.core.errors import TokenstepError
from decoding.core.tokens import one_line
from tui.messages import FuturesDone, FuturesFailed, FuturesGrown

if TYPE_CHECKING:
    from decoding.records.futures import FuturesRun

DEFAULT_FUTURES, DEFAULT_TOKENS = 12, 16
OUTCOMES_CHARTED = 8
LABEL_CHARACTERS = 12  # of an outcome, under its bars
SHARE_COLOUR, PROBABILITY_COLOUR = "cyan", "magenta"  # as the panel's model and strategy bars


def outcome_table(run: FuturesRun) -> Table:
    table = Table(expand=True, show_edge=False, title=f"outcome: {run.rule.name}", title_justify="left")
    table.add_column("outcome", ratio=1, no_wrap=True, overflow="ellipsis")
    for name in ("count", "share", "95% interval", "probability"):
        table.add_column(name, justify="right", no_wrap=True)
    for outcome in run.outcomes:
        low, high = outcome.interval
        table.add_row(
            Text(outcome.text),  # Text, never markup: the model's words as written
            str(outcome.count),
            Text(f"{outcome.share:.3f}", style=SHARE_COLOUR),
            f"{low:.3f}–{high:.3f}",
            Text("" if outcome.probability is None else f"{outcome.probability:.3f}", style=PROBABILITY_COLOUR),
        )
    return table


class OutcomeChart(PlotextPlot):
    """The outcomes' sampled shares, and the model's probability of each where a prefix decided it."""

    def show(self, run: FuturesRun) -> None:
        plt = self.plt
        plt.clear_figure()
        shown = run.outcomes[:OUTCOMES_CHARTED]
        if not shown:
            plt.title("no futures yet")
            self.refresh()
            return
        labels = [one_line(outcome.text)[:LABEL_CHARACTERS] for outcome in shown]
        shares = [outcome.share for outcome in shown]
        probabilities = [outcome.probability or 0.0 for outcome in shown]
        # plotext takes a label and a colour per series here (textual-plotext's stub says one of each)
        cast(Any, plt).multiple_bar(
            labels,
            [shares, probabilities],
            labels=["sampled share", "model's probability"],
            color=[SHARE_COLOUR, PROBABILITY_COLOUR],
        )
        plt.ylim(0, 1)
        plt.title(f"outcomes of {len(run.futures)} futures")
        self.refresh()


class FuturesScreen(ModalScreen[int | None]):
    """Dismissed with the tree node of the future to walk into, or None."""

    BINDINGS = [Binding("escape", "close", "Cancel / close", id="futures.close")]

    def __init__(self, start: Callable[[int, int, str | None], object], cancel: Callable[[], object], where: str) -> None:
        super().__init__()
        self.start, self.cancel, self.where = start, cancel, where
        self.shown: FuturesRun | None = None
        self.running = False

    def compose(self) -> ComposeResult:
        with Vertical(id="futures-dialog"):
            yield Label(f"Futures from {self.where}, under the current strategy (future i with seed + i)", id="futures-title")
            with Horizontal(id="futures-form"):
                yield Label("how many")
                yield Input(str(DEFAULT_FUTURES), type="integer", id="futures-n")
                yield Label("tokens each")
                yield Input(str(DEFAULT_TOKENS), type="integer", id="futures-tokens")
                yield Label("outcome")
                yield Input(placeholder="a regular expression; default: the first line", id="futures-outcome")
            yield Label("enter samples them", id="futures-progress")
            yield DataTable(id="futures-table", cursor_type="row", zebra_stripes=True)
            with Horizontal(id="futures-results"):
                yield OutcomeChart(id="futures-chart")
                yield Static(id="futures-outcomes")
            yield Label("enter on a future walks into it · escape cancels, then closes", id="futures-hint", classes="dim")

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns("#", "seed", "logprob", "tokens", "ended", "text")
        self.query_one("#futures-n", Input).focus()

    @on(Input.Submitted)
    def _submitted(self, _: Input.Submitted) -> None:
        if self.running:
            return
        n, tokens = self.query_one("#futures-n", Input).value, self.query_one("#futures-tokens", Input).value
        outcome = self.query_one("#futures-outcome", Input).value or None
        try:
            from decoding.search.futures import check_request
            from decoding.search.outcomes import OutcomeRule

            check_request(int(n or 0), int(tokens or 0))
            if outcome is not None:
                OutcomeRule(outcome)
        except (TokenstepError, ValueError) as error:
            self._say(Text(str(error), style="bold red"))
            return
        self.running = True
        self._say(f"sampling {n} futures of up to {tokens} tokens…")
        self.start(int(n), int(tokens), outcome)

    @on(FuturesGrown)
    def _grown(self, message: FuturesGrown) -> None:
        self._show(message.run)
        longest = max((len(future.tokens) for future in message.run.futures), default=0)
        self._say(f"grown to {longest} of {message.run.new_tokens} tokens…")

    @on(FuturesDone)
    def _done(self, message: FuturesDone) -> None:
        self.running = False
        self._show(message.run)
        ended = "cancelled: each future ends where it was; " if message.run.cancelled else ""
        self._say(f"{ended}{len(message.run.futures)} futures, kept as branches of the tree")
        self.query_one(DataTable).focus()

    @on(FuturesFailed)
    def _failed(self, message: FuturesFailed) -> None:
        self.running = False
        self._say(Text(message.text, style="bold red"))

    @on(DataTable.RowSelected)
    def _walk_into(self, message: DataTable.RowSelected) -> None:
        if self.shown is None or self.running:
            return
        future = self.shown.futures[message.cursor_row]
        if future.node is not None:
            self.dismiss(future.node)

    def _show(self, run: FuturesRun) -> None:
        self.shown = run
        table = self.query_one(DataTable)
        row = table.cursor_row
        table.clear()
        for future in run.futures:
            table.add_row(
                str(future.index + 1),
                str(future.seed),
                f"{future.logprob:.3f}",
                str(len(future.tokens)),
                future.finished or "",
                Text(one_line(future.text)),
            )
        table.move_cursor(row=min(row, max(0, len(run.futures) - 1)))
        self.query_one(OutcomeChart).show(run)
        self.query_one("#futures-outcomes", Static).update(outcome_table(run))

    def _say(self, text: str | Text) -> None:
        self.query_one("#futures-progress", Label).update(text)

    def action_close(self) -> None:
        """Escape: cancel a batch still running (it ends between two tokens), else close."""
        if self.running:
            self.cancel()
            self._say("cancelling…")
            return
        self.dismiss(None)
