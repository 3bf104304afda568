"""5 and 8. The running app (headless): play's tokens/s against the session's own loop, and zero-wait picks.

The app plays with the entropy heat view and the timeline shown: every step repaints both.

Each side of the play comparison runs in a process of its own, as each does in real use: torch's
thread pools belong to the first thread that computes, and a second thread computing in the same
process ran ~20-50 % slower here, whichever side it was (an artefact of measuring both in one process).
Measured on the embedded model (~55 ms a step on this CPU) and on its first 12 layers (~30 ms a
step, as the whole model steps on a faster machine).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import PROMPT, Result, load, seconds, shallower_embedded_model, table
from stepping import NEW_TOKENS, play_loop

SIZE = (120, 36)
PLAY_RUNS = 5  # a shared 2-core machine varies by ±10 % from run to run: the best of five of each


def timed_app(model: str | None = None, **options):
    """The app, telling when play ends and when a pick's panel is painted (events, not polling:
    polling from the UI thread would itself slow the model's thread)."""
    from textual import on

    from decoding.engines.registry import LoadOptions
    from tui.app import TokenstepApp
    from tui.messages import CommandDone

    class TimedApp(TokenstepApp):
        def __init__(self) -> None:
            # Saving the session after every step, as `tokenstep` does, is part of the app's cost.
            folder = Path(tempfile.mkdtemp(prefix="tokenstep-bench-"))
            os.environ["TOKENSTEP_DATA"] = str(folder)  # not the user's "last session"
            path = folder / "session.json"
            super().__init__(LoadOptions(model=model, device="cpu"), prompt=PROMPT, session_path=path, **options)
            self.changed = asyncio.Event()
            self.picked_at = 0.0
            self.pick_latencies: list[float] = []

        def action_pick(self, row: int) -> None:
            self.picked_at = time.perf_counter()
            super().action_pick(row)

        def refresh_view(self) -> None:
            super().refresh_view()
            if self.picked_at:
                self.pick_latencies.append(time.perf_counter() - self.picked_at)
                self.picked_at = 0.0

        @on(CommandDone)
        def _timed_done(self) -> None:
            # Textual calls the base class's handler too (handlers run along the MRO): no super().
            self.done_at = time.perf_counter()
            self.changed.set()

    return TimedApp()


async def until_idle(app) -> None:
    """Wait for the next command to end, then until nothing runs (the last worker thread may still
    be returning when its message arrives, hence the short sleeps)."""
    while not (app.idle and app.snapshot is not None):
        try:
            await asyncio.wait_for(app.changed.wait(), 0.05)
        except TimeoutError:
            pass
        app.changed.clear()


async def app_play_seconds(model: str | None = None) -> float:
    """Play with the whole-text views on: the text tinted by entropy and the timeline open."""
    app = timed_app(max_new_tokens=NEW_TOKENS, look_ahead=0, model=model)
    async with app.run_test(size=SIZE) as pilot:
        await until_idle(app)
        await pilot.press("h", "g")
        assert app.heat == "entropy" and app.query_one("TimelinePanel").display
        start = time.perf_counter()
        await pilot.press("p")
        await until_idle(app)
        assert len(app.snapshot.path) == NEW_TOKENS
        return app.done_at - start


async def pick_latencies() -> list[float]:
    """Keypress to painted panel for picks among rows 1-5, each after the work ahead is done."""
    app = timed_app(look_ahead=5)
    async with app.run_test(size=SIZE) as pilot:
        for row in (1, 2, 3, 4, 5, 1, 2, 3, 4, 5):
            await until_idle(app)
            await pilot.press(str(row))
        await until_idle(app)
    return app.pick_latencies


SHALLOW_LAYERS = 12


def play_seconds(side: str, model: str) -> float:
    """Seconds for 64 tokens of play, in a fresh process: `loop` (the session's own) or `app`."""
    out = subprocess.run([sys.executable, __file__, side, model], capture_output=True, text=True, check=True).stdout
    return float(out.split()[-1])


def loop_seconds(model: str | None) -> float:
    from decoding.search.session import Session

    session = Session(load(model=model))
    play_loop(session, PROMPT, 4)  # warm-up, as the app's first panel warms it
    return seconds(lambda: play_loop(session, PROMPT))


def play_results() -> list[Result]:
    results = []
    models = {
        "app_play": ("embedded model", ""),
        "app_play_fast_steps": (f"its first {SHALLOW_LAYERS} layers", str(shallower_embedded_model(SHALLOW_LAYERS))),
    }
    for name, (label, model) in models.items():
        loops, in_apps = [], []
        for _ in range(PLAY_RUNS):  # in turn, so that drifts in machine speed hit both alike
            loops.append(play_seconds("loop", model))
            in_apps.append(play_seconds("app", model))
        loop, in_app = min(loops), min(in_apps)
        table(
            f"App overhead: play, 64 tokens, {label}",
            ["app tok/s", "session loop tok/s", "ratio", "ms a step"],
            [[NEW_TOKENS / in_app, NEW_TOKENS / loop, loop / in_app, 1000 * loop / NEW_TOKENS]],
        )
        results.append(
            Result(
                name,
                loop / in_app,
                ">=",
                0.9,
                measured=f"play in the app (headless), heat and timeline shown, {label}: {NEW_TOKENS / in_app:.1f} tok/s",
                baseline=f"the session's own loop: {NEW_TOKENS / loop:.1f} tok/s",
            )
        )
    return results


def run() -> list[Result]:
    from decoding.search.session import Session

    results = play_results()
    session = Session(load())

    session.reset(PROMPT)
    forward = statistics.median(seconds(lambda: session.engine.feed([260])) for _ in range(10))
    pick = statistics.median(asyncio.run(pick_latencies()))
    table(
        "Zero-wait picks (rows 1-5)",
        ["keypress to panel ms", "forward step ms", "ratio"],
        [[1000 * pick, 1000 * forward, pick / forward]],
    )
    return [
        *results,
        Result(
            "zero_wait_pick_ms",
            1000 * pick,
            "<",
            16,
            measured=f"a pick among rows 1-5, keypress to panel: {1000 * pick:.1f} ms",
            baseline=f"a forward step: {1000 * forward:.0f} ms",
        ),
    ]


if __name__ == "__main__":  # one side of the play comparison: python app_play.py loop|app MODEL ("": embedded)
    side, model = sys.argv[1], sys.argv[2] or None
    print(loop_seconds(model) if side == "loop" else asyncio.run(app_play_seconds(model)))
