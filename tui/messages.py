"""Every message the explorer's widgets and its model thread send, each a small dataclass.

The model thread only ever posts these (`post_message` is thread-safe); the app handles them on the
UI thread, where widgets may be touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual.app import App
from textual.message import Message

from decoding.core.state import Timing
from decoding.explorer.commands import Command

if TYPE_CHECKING:
    from decoding.explorer.explorer import Explorer, View
    from decoding.records.futures import FuturesRun


@dataclass
class LoadProgress(Message):
    """What the model's loading is doing now (importing, converting, loading)."""

    text: str


@dataclass
class Loaded(Message):
    """The model is loaded and the exploration open. The app keeps `explorer` only to hand it back to
    the model thread; it renders `view`."""

    explorer: Explorer
    view: View
    timing: Timing


@dataclass
class LoadFailed(Message):
    """No model could be loaded; `text` says why."""

    text: str


@dataclass
class Updated(Message):
    """The exploration changed. Comes in bursts while playing: only the newest needs painting."""

    view: View
    timing: Timing | None = None

    def can_replace(self, message: Message) -> bool:
        # Textual asks the older message whether the newer pending one may stand in for it; it may if
        # it carries its own timing (else the older timing would be lost).
        return isinstance(message, Updated) and message.timing is not None


@dataclass
class CommandFailed(Message):
    """A command was refused or failed; the exploration is as it was."""

    text: str


@dataclass
class CommandDone(Message):
    """The model thread finished a command: the next may run."""


@dataclass
class BeamHighlight(Message):
    """The beam a forced token went to now has this rank: the highlight follows it."""

    rank: int


@dataclass
class Notice(Message):
    """Something to tell the person (a file saved)."""

    text: str


@dataclass
class RunCommand(Message):
    """A widget asks for model work (the tree panel: jump to a branch, delete one)."""

    command: Command


@dataclass
class ComparisonProgress(Message):
    done: int
    total: int


@dataclass
class ComparisonDone(Message):
    record: dict[str, Any]


@dataclass
class ComparisonFailed(Message):
    text: str


@dataclass
class Written(Message):
    """Files an export wrote (offered as downloads when the app runs in a browser)."""

    paths: tuple[Path, ...]


@dataclass
class FuturesGrown(Message):
    """The futures so far, as they grow (a frame's worth at a time)."""

    run: FuturesRun


@dataclass
class FuturesDone(Message):
    run: FuturesRun


@dataclass
class FuturesFailed(Message):
    text: str


class RunnerNews:
    """The runner's news, told on the model thread, as messages to the app's own thread."""

    def __init__(self, app: App) -> None:
        self.post = app.post_message

    def updated(self, view: View, timing: Timing | None) -> None:
        self.post(Updated(view, timing))

    def failed(self, text: str) -> None:
        self.post(CommandFailed(text))

    def notice(self, text: str) -> None:
        self.post(Notice(text))

    def highlight_beam(self, rank: int) -> None:
        self.post(BeamHighlight(rank))

    def done(self) -> None:
        self.post(CommandDone())
