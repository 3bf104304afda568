"""The commands a view queues for the model's thread: small frozen values, each one thing the explorer does.

A view builds a command from a key or a click and queues it; the model's thread runs `command.run(
explorer, job)` one at a time, in order. `job` says when to stop (a key pressed meanwhile) and takes
the news a long command sends before it ends (frames while playing, a comparison's progress).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from decoding.core.chat import conversation
from decoding.core.errors import TokenstepError
from decoding.core.settings import Strategy
from decoding.core.state import Message, Timing
from decoding.core.steering import Steering
from decoding.records.compare import Cancelled

if TYPE_CHECKING:  # a view imports the commands before torch is loaded; the explorer needs torch
    from decoding.explorer.explorer import Explorer
    from decoding.records.futures import FuturesRun


@dataclass(frozen=True)
class Job:
    """What a running command may use besides the explorer."""

    cancelled: threading.Event = field(default_factory=threading.Event)  # set: stop between two model passes
    clock: Callable[[], float] = lambda: 0.0
    frame: Callable[[Timing | None], object] = lambda timing: None  # show the state as it is now
    frame_seconds: Callable[[], float] = lambda: 0.25  # how often play's frames may come, as the view can afford
    notice: Callable[[str], object] = lambda text: None  # tell the person something (a file saved)
    highlight_beam: Callable[[int], object] = lambda rank: None  # the beam a view should highlight


@dataclass(frozen=True)
class Command:
    """One unit of model work. `run` may return the timing to show; the view is sent the new state
    once, when it ends (and saved first, unless it is work ahead)."""

    name: ClassVar[str] = "command"
    work_ahead: ClassVar[bool] = False  # speculative: cancelled by any command a person asks for

    def run(self, explorer: Explorer, job: Job) -> Timing | None:
        start = job.clock()
        self.change(explorer, job)
        return Timing(latency_ms=1000 * (job.clock() - start))

    def change(self, explorer: Explorer, job: Job) -> None:
        """What the command does (timed by `run`)."""


@dataclass(frozen=True)
class Step(Command):
    name: ClassVar[str] = "step"

    def change(self, explorer: Explorer, job: Job) -> None:
        explorer.step()


@dataclass(frozen=True)
class Pick(Command):
    """Force the candidate of panel row `row` (0-based), under beam search onto live beam `beam`."""

    name: ClassVar[str] = "pick"
    row: int
    beam: int = 0

    def change(self, explorer: Explorer, job: Job) -> None:
        rank = explorer.pick(self.row, self.beam)
        if rank is not None:
            job.highlight_beam(rank)  # the highlight follows the forced beam


@dataclass(frozen=True)
class Force(Command):
    """Force any token of the vocabulary onto the path."""

    name: ClassVar[str] = "force"
    token_id: int

    def change(self, explorer: Explorer, job: Job) -> None:
        explorer.force(self.token_id)


@dataclass(frozen=True)
class Undo(Command):
    name: ClassVar[str] = "undo"

    def change(self, explorer: Explorer, job: Job) -> None:
        explorer.undo()


@dataclass(frozen=True)
class Play(Command):
    """Step until the end, the limit or a key; a frame every `job.frame_seconds()` (painting every token
    would take the CPU and the lock the model's thread needs), the last one when the command ends."""

    name: ClassVar[str] = "play"

    def run(self, explorer: Explorer, job: Job) -> Timing | None:
        started = step_started = painted = job.clock()
        timing: Timing | None = None

        def after_step(steps: int) -> None:
            nonlocal step_started, painted, timing
            now = job.clock()
            timing = Timing(1000 * (now - step_started), steps / max(now - started, 1e-9))
            step_started = now
            if now - painted >= job.frame_seconds():
                job.frame(timing)
                painted = now

        explorer.play(job.cancelled.is_set, after_step)
        return timing


@dataclass(frozen=True)
class LookAhead(Command):
    """While the person reads: the next panels of the strategy's choice and the top `count` candidates."""

    name: ClassVar[str] = "look ahead"
    work_ahead: ClassVar[bool] = True
    count: int = 5

    def run(self, explorer: Explorer, job: Job) -> Timing | None:
        explorer.look_ahead(self.count, job.cancelled.is_set)
        return None


@dataclass(frozen=True)
class CatchUp(Command):
    """Once a view is out: the prompt's scores and the second model's, sent as a frame when new."""

    name: ClassVar[str] = "catch up"
    work_ahead: ClassVar[bool] = True

    def run(self, explorer: Explorer, job: Job) -> Timing | None:
        if explorer.catch_up(job.cancelled.is_set):
            job.frame(None)
        return None


@dataclass(frozen=True)
class Look(Command):
    """Look at past path token `index` (None: the live end): its stored panel, no model work."""

    name: ClassVar[str] = "look"
    index: int | None

    def run(self, explorer: Explorer, job: Job) -> Timing | None:
        explorer.look(self.index)
        return None


@dataclass(frozen=True)
class MoveCursor(Command):
    """Look `delta` tokens before or after the step looked at (past the last: the live end)."""

    name: ClassVar[str] = "move cursor"
    delta: int

    def run(self, explorer: Explorer, job: Job) -> Timing | None:
        explorer.move_cursor(self.delta)
        return None


@dataclass(frozen=True)
class PickAt(Command):
    """Branch at past path token `index`: force row `row` of the panel that was on offer there."""

    name: ClassVar[str] = "pick"
    index: int
    row: int

    def change(self, explorer: Explorer, job: Job) -> None:
        explorer.pick_at(self.index, self.row)


@dataclass(frozen=True)
class NewPrompt(Command):
    name: ClassVar[str] = "new prompt"
    text: str

    def change(self, explorer: Explorer, job: Job) -> None:
        explorer.new_prompt(self.text)


@dataclass(frozen=True)
class Say(Command):
    """The person's next chat message (a new conversation, after `system`, if none is under way)."""

    name: ClassVar[str] = "message"
    text: str
    system: str | None = None

    def change(self, explorer: Explorer, job: Job) -> None:
        explorer.say(self.text, self.system)


@dataclass(frozen=True)
class NewChat(Command):
    """A new conversation from its first message (after `system`)."""

    name: ClassVar[str] = "new conversation"
    text: str
    system: str | None = None

    def change(self, explorer: Explorer, job: Job) -> None:
        explorer.new_chat(conversation([Message("user", self.text)], self.system))


@dataclass(frozen=True)
class ForceText(Command):
    """Force the tokens of some text, one by one (a reply's start, say)."""

    name: ClassVar[str] = "force text"
    text: str

    def change(self, explorer: Explorer, job: Job) -> None:
        explorer.force_text(self.text)


@dataclass(frozen=True)
class ApplySettings(Command):
    name: ClassVar[str] = "settings"
    strategy: Strategy
    choices: int

    def change(self, explorer: Explorer, job: Job) -> None:
        from decoding.core.grammar import compile_notes

        with compile_notes(job.notice):  # a new constraint may take seconds to compile
            explorer.apply_settings(self.strategy, self.choices)


@dataclass(frozen=True)
class Switch(Command):
    """Another kind of strategy (greedy, sample, beam), the other settings kept."""

    name: ClassVar[str] = "switch"
    kind: str

    def change(self, explorer: Explorer, job: Job) -> None:
        explorer.switch(self.kind)


@dataclass(frozen=True)
class Jump(Command):
    name: ClassVar[str] = "jump"
    node_id: int

    def change(self, explorer: Explorer, job: Job) -> None:
        explorer.jump(self.node_id)


@dataclass(frozen=True)
class Sibling(Command):
    name: ClassVar[str] = "sibling"
    delta: int

    def change(self, explorer: Explorer, job: Job) -> None:
        explorer.sibling(self.delta)


@dataclass(frozen=True)
class DeleteBranch(Command):
    name: ClassVar[str] = "delete"
    node_id: int

    def change(self, explorer: Explorer, job: Job) -> None:
        explorer.delete(self.node_id)


@dataclass(frozen=True)
class Export(Command):
    """The path (or beam search) as trace files in `folder`; with `tree`, the whole tree as a session file."""

    name: ClassVar[str] = "export"
    folder: Path
    tree: bool = False
    written: Callable[[tuple[Path, ...]], object] = lambda paths: None  # the files, for a view to offer as downloads

    def change(self, explorer: Explorer, job: Job) -> None:
        said, paths = explorer.export_tree(self.folder) if self.tree else explorer.export(self.folder)
        job.notice(said)
        self.written(paths)


@dataclass(frozen=True)
class Compare(Command):
    """The chapter's strategies from the current text; `progress` and `done` carry the news to a view."""

    name: ClassVar[str] = "compare"
    progress: Callable[[int, int], object]
    done: Callable[[dict], object]
    failed: Callable[[str], object]

    def run(self, explorer: Explorer, job: Job) -> Timing | None:
        try:
            self.done(explorer.compare(job.cancelled.is_set, self.progress))
        except Cancelled:
            pass
        except TokenstepError as error:
            self.failed(str(error))
            raise
        return None


@dataclass(frozen=True)
class Futures(Command):
    """N futures from the cursor (or the end), each kept as a branch; `grown` hears how they grow
    (at most a frame's worth of news at a time), `done` the whole run (cancelled: where they were)."""

    name: ClassVar[str] = "futures"
    n: int
    new_tokens: int
    outcome: str | None
    grown: Callable[[FuturesRun], object]
    done: Callable[[FuturesRun], object]
    failed: Callable[[str], object]

    def run(self, explorer: Explorer, job: Job) -> Timing | None:
        told = [job.clock()]

        def grown(run: FuturesRun) -> None:
            if job.clock() - told[0] >= job.frame_seconds():
                told[0] = job.clock()
                self.grown(run)

        try:
            run = explorer.futures(self.n, self.new_tokens, self.outcome, should_stop=job.cancelled.is_set, grown=grown)
            explorer.save()  # kept as branches before the view says so (a kill after it loses none)
            self.done(run)
        except TokenstepError as error:
            self.failed(str(error))
            raise
        return None


@dataclass(frozen=True)
class Attribute(Command):
    """Attribute panel row `row`'s candidate (at the step looked at, or the next token) over its context."""

    name: ClassVar[str] = "attribute"
    method: str
    row: int

    def change(self, explorer: Explorer, job: Job) -> None:
        explorer.attribute(self.method, self.row, job.cancelled.is_set)


@dataclass(frozen=True)
class Steer(Command):
    """Steer the model from now on (None: no more)."""

    name: ClassVar[str] = "steer"
    steering: Steering | None

    def change(self, explorer: Explorer, job: Job) -> None:
        explorer.steer(self.steering)


@dataclass(frozen=True)
class NudgeSteering(Command):
    """Move the steering's scale by `delta`."""

    name: ClassVar[str] = "nudge steering"
    delta: float

    def change(self, explorer: Explorer, job: Job) -> None:
        explorer.nudge_steering(self.delta)


@dataclass(frozen=True)
class Refresh(Command):
    """No change: the view is sent again (with a panel just opened computed)."""

    name: ClassVar[str] = "refresh"

    def run(self, explorer: Explorer, job: Job) -> Timing | None:
        return None
