"""The one model thread and its command queue, headless: what the app drives, and tests can drive
without a screen.

Every model command, loading included, runs on one thread for the runner's life, one at a time and
in the order asked. A command a person asks for drops queued work ahead and cuts the running work
ahead short; when nothing is queued, the runner queues the work a view can wait for (`CatchUp`), then
work ahead (`LookAhead`), once. What happens is told to a `Listener`, from the model thread: the app
turns each call into a message for its own thread, which calls `command_done` back.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Protocol

from decoding.core.errors import TokenstepError, said
from decoding.core.state import Timing
from decoding.explorer import commands

if TYPE_CHECKING:  # the app makes its runner before the first paint, and torch comes after it
    from decoding.explorer.explorer import Explorer, View


class Listener(Protocol):
    """Where the runner's news goes; every method is called on the model thread."""

    def updated(self, view: View, timing: Timing | None) -> None: ...
    def failed(self, text: str) -> None: ...
    def notice(self, text: str) -> None: ...
    def highlight_beam(self, rank: int) -> None: ...
    def done(self) -> None:
        """A command ended, however it ended: `command_done` is to be called on the runner's owner's thread."""


class Runner:
    def __init__(
        self,
        listener: Listener,
        clock: Callable[[], float],
        *,
        look_ahead: int = 5,
        open_panels: Callable[[], frozenset[str]] = frozenset,
        frame_seconds: Callable[[], float] = lambda: 0.25,
    ) -> None:
        self.listener, self.clock, self.look_ahead = listener, clock, look_ahead
        self.open_panels, self.frame_seconds = open_panels, frame_seconds
        self.explorer: Explorer | None = None  # set once loaded; used on the model thread only
        self.queue: deque[commands.Command] = deque()
        self.running: commands.Command | None = None
        self._job: commands.Job | None = None  # the running command's
        self._inbox: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        # A daemon of its own, not a Textual worker (the event loop's executor, which exiting waits for):
        # quitting never waits on a model command (see tui.cli.exit_without_waiting).
        self.thread = threading.Thread(target=self._serve, name="tokenstep-model", daemon=True)

    def _serve(self) -> None:
        """torch's thread pools and caches belong to the thread that calls it: a new thread per command
        ran play ~20 % slower (`python benchmarks/run.py app_play`)."""
        while (work := self._inbox.get()) is not None:
            try:
                work()
            except Exception as error:  # each piece of work says its own failures; this thread must outlive any
                self.listener.failed(f"The model thread: {said(error)}")

    def start(self) -> None:
        self.thread.start()

    def submit(self, work: Callable[[], None]) -> None:
        """Run `work` on the model thread after what is there (a model's load)."""
        self._inbox.put(work)

    def close(self) -> None:
        """Cancel the running command, cut a request in flight short; the thread ends after it."""
        self.pause()
        if self.explorer is not None:
            self.explorer.interrupt_waits(second_too=True)  # a request in flight ends now, not at its deadline
        self._inbox.put(None)

    @property
    def idle(self) -> bool:
        """No command running or waiting."""
        return self.running is None and not self.queue

    @property
    def playing(self) -> bool:
        return isinstance(self.running, commands.Play)

    def enqueue(self, command: commands.Command) -> None:
        if self.running is not None and self.running.work_ahead:
            self.pause()  # the person's command goes first; the pass in flight finishes
        self.queue = deque(queued for queued in self.queue if not queued.work_ahead)
        self.queue.append(command)
        self._pump()

    def pause(self) -> None:
        """Stop the running command between two model passes (the state it reached is shown)."""
        if self._job is not None:
            self._job.cancelled.set()

    def pause_then(self, command: commands.Command) -> None:
        """Pause a play, then run `command`."""
        if self.playing:
            self.pause()
        self.enqueue(command)

    def stop(self) -> None:
        """Drop what is queued and cancel the running work; a server's request in flight is cut short too."""
        self.queue.clear()
        self.pause()
        if self.explorer is not None and self.running is not None:
            self.explorer.interrupt_waits()

    def drop(self, command: commands.Command) -> None:
        """`command` is no longer wanted: taken off the queue, or cancelled if it runs."""
        if command in self.queue:
            self.queue.remove(command)
        elif self.running is command:
            self.pause()

    def loaded(self, explorer: Explorer) -> None:
        """The exploration commands run on from now; then the work a view can wait for."""
        self.explorer = explorer
        self._next(after_work_ahead=False)

    def command_done(self) -> None:
        finished, self.running, self._job = self.running, None, None
        if finished is not None:  # else a second delivery of the same news
            self._next(after_work_ahead=finished.work_ahead)

    def _next(self, after_work_ahead: bool) -> None:
        """Run what is queued; with nothing queued, the work a view can wait for (the prompt's scores,
        the second model's), then work ahead (once: not again after work ahead)."""
        if not self.queue and not after_work_ahead:
            self.queue.append(commands.CatchUp())
            if self.look_ahead:
                self.queue.append(commands.LookAhead(self.look_ahead))
        self._pump()

    def _pump(self) -> None:
        if self.running is None and self.queue and self.explorer is not None:
            self.running = self.queue.popleft()
            self._job = self._job_for(self.explorer)
            self._inbox.put(partial(self._run, self.explorer, self.running, self._job))

    def _job_for(self, explorer: Explorer) -> commands.Job:
        return commands.Job(
            clock=self.clock,
            frame=lambda timing: self.listener.updated(explorer.view(self.open_panels()), timing),
            frame_seconds=self.frame_seconds,
            notice=self.listener.notice,
            highlight_beam=self.listener.highlight_beam,
        )

    def _run(self, explorer: Explorer, command: commands.Command, job: commands.Job) -> None:
        """On the model thread: one command, then the news for the screen."""
        timing = None
        try:
            timing = command.run(explorer, job)
        except TokenstepError as error:
            self.listener.failed(str(error))
        except Exception as error:  # out of GPU memory and the like: the path is left as it was
            if not command.work_ahead:  # failed work ahead is simply not there when asked for
                self.listener.failed(f"{command.name} failed: {said(error)}")
        try:
            if not command.work_ahead:
                explorer.save()
                self.listener.updated(explorer.view(self.open_panels()), timing)
        except Exception as error:
            self.listener.failed(f"{command.name}: the screen could not be updated: {said(error)}")
        finally:
            self.listener.done()  # always: the next command must never wait forever
