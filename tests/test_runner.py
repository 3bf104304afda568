"""The model thread and its queue, driven headless: the rules the app relies on, without a screen."""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass
from typing import ClassVar

import pytest

from decoding.core.errors import SessionError
from decoding.explorer import commands
from decoding.explorer.runner import Runner

DEADLINE_S = 30


class Recorded:
    """A listener that keeps the runner's news, in the order told, for the test's thread."""

    def __init__(self) -> None:
        self.news: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()

    def updated(self, view, timing) -> None:
        self.news.put(("updated", view))

    def failed(self, text: str) -> None:
        self.news.put(("failed", text))

    def notice(self, text: str) -> None:
        self.news.put(("notice", text))

    def highlight_beam(self, rank: int) -> None:
        self.news.put(("beam", rank))

    def done(self) -> None:
        self.news.put(("done", None))


def run_until_idle(runner: Runner, listener: Recorded) -> list[tuple[str, object]]:
    """Answer each `done` as the app's thread does, until nothing runs or waits; the news told."""
    told, deadline = [], time.monotonic() + DEADLINE_S
    while not runner.idle:
        kind, value = listener.news.get(timeout=max(0.0, deadline - time.monotonic()))
        told.append((kind, value))
        if kind == "done":
            runner.command_done()
    return told


@dataclass(frozen=True)
class Refused(commands.Command):
    name: ClassVar[str] = "refused"

    def change(self, explorer, job) -> None:
        raise SessionError("Nothing to undo.")


@pytest.fixture
def started(tiny_engine):
    from decoding.explorer.explorer import Explorer

    listener = Recorded()
    runner = Runner(listener, time.perf_counter, look_ahead=3)
    runner.start()
    explorer = Explorer(tiny_engine.fork(), choices=5)
    explorer.new_prompt("The quick brown")
    yield runner, listener, explorer
    runner.close()
    runner.thread.join(DEADLINE_S)


def test_once_loaded_the_runner_works_ahead_and_a_step_then_runs_on_the_model_thread(started):
    runner, listener, explorer = started
    runner.loaded(explorer)
    run_until_idle(runner, listener)  # the prompt's scores, then the top picks' next panels
    top3 = [c.token_id for c in explorer.session.distribution.candidates[:3]]
    assert explorer.session.looked_ahead == frozenset(top3)
    runner.enqueue(commands.Step())
    told = run_until_idle(runner, listener)
    views = [value for kind, value in told if kind == "updated"]
    assert views and views[0].snapshot.path[-1].token_id == top3[0]  # the view of the step, sent once it ended


def test_a_persons_command_drops_queued_work_ahead(started):
    runner, listener, explorer = started
    runner.explorer = explorer  # loaded, with nothing queued yet
    runner.queue.extend([commands.LookAhead(3), commands.LookAhead(3)])
    runner.enqueue(commands.Step())
    assert all(not queued.work_ahead for queued in runner.queue)


def test_a_refused_command_is_said_in_one_line_and_the_next_one_still_runs(started):
    runner, listener, explorer = started
    runner.look_ahead = 0
    runner.loaded(explorer)
    run_until_idle(runner, listener)
    runner.enqueue(Refused())
    runner.enqueue(commands.Step())
    told = run_until_idle(runner, listener)
    assert ("failed", "Nothing to undo.") in told
    assert len(explorer.session.generated_ids) == 1
    assert [kind for kind, _ in told].count("done") == 2 + 1  # each command ends in done; then the catch-up
