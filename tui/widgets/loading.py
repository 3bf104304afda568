"""The loading pane: a spinner and what loading is doing; after a failure, why, and what to do next."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label

from decoding.core.tokens import escape_controls
from tui.widgets.spinner import Spinner


class LoadingPane(Vertical):
    def __init__(self, text: str, *, id: str) -> None:
        super().__init__(id=id)
        self._first = text

    def compose(self) -> ComposeResult:
        yield Spinner()
        yield Label(self._saying(self._first), id="loading-text")

    def say(self, text: str) -> None:
        self.query_one(Label).update(self._saying(text))

    def start(self, text: str) -> None:
        self.display = True
        self.query_one(Spinner).start()
        self.say(text)

    def done(self) -> None:
        self.query_one(Spinner).stop()
        self.display = False

    def failed(self, text: str) -> None:
        self.query_one(Spinner).stop()
        self.query_one(Label).update(
            Text(escape_controls(text) + "\n\nPress m to try another model, or q to quit.", style="bold red")
        )

    @staticmethod
    def _saying(text: str) -> Text:
        return Text(escape_controls(text + "…"))  # model names and progress come from files and libraries
