"""The app as a user runs it: `tokenstep` in a pseudo-terminal with its default panels, keys sent to
it and its screen read back as it is drawn.

- Play: `p`, then the time until the status line shows step 64, against the session's own loop doing
  the same 64 tokens in a fresh process (`app_play.py loop`), the two taking turns.
- Memory: play 1,000 steps; the app's resident memory when the screen first shows step 100 or more and
  at step 1,000, the growth a step against the KV cache a token (from the model's config). The app
  runs through peak_rss.py here, which hands back what loading left free once the model is loaded.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Callable
from pathlib import Path

from app_play import play_seconds
from command_runs import LIST_PROMPT, MODEL_OPTIONS, PEAK_RSS, command_env, kv_bytes_per_token, ms, tokenstep
from common import PROMPT, Result, load, table
from stepping import NEW_TOKENS

SIZE = (120, 36)  # columns, rows
STATUS_STEP = re.compile(rb"step (\d+) \xe2\x94\x82")  # the status line's "step N │" (UTF-8)
SETTLE_S = 1.5  # after the first candidates, the work ahead (5 candidates' next panels) ends first
REPEATS = 3
MEMORY_STEPS, MEMORY_FROM = 1000, 100


class AppInPty:
    """`tokenstep ARGS` in a pseudo-terminal of SIZE; the highest step its status line has shown.
    `command`: how tokenstep is started (peak_rss.py's, for memory)."""

    def __init__(self, args: list[str], command: list[str]) -> None:
        self.master, slave = os.openpty()
        columns, rows = SIZE
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        folder = Path(tempfile.mkdtemp(prefix="tokenstep-bench-app-"))
        self.process = subprocess.Popen(
            [*command, *args, "--session", str(folder / "session.json")],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=command_env(TERM="xterm-256color"),
            start_new_session=True,
        )
        os.close(slave)
        self.drawn = -1
        self._tail = b""

    def read(self, timeout: float) -> float | None:
        """Read what the screen got within `timeout` seconds; when it arrived (None: nothing came)."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return None
        try:
            chunk = os.read(self.master, 1 << 16)
        except OSError:  # EIO: the app has exited
            raise RuntimeError(f"tokenstep exited ({self.process.poll()}) before step {self.drawn + 1}") from None
        arrived = time.perf_counter()
        data = self._tail + chunk
        for match in STATUS_STEP.finditer(data):
            self.drawn = max(self.drawn, int(match.group(1)))
        self._tail = data[-24:]  # a status line cut between two reads
        return arrived

    def until_step(self, step: int, timeout: float, seen: Callable[[int], object] = lambda step: None) -> float:
        """When the screen first showed `step` (or beyond); `seen(step)` after each read that showed more."""
        deadline = time.perf_counter() + timeout
        while True:
            before = self.drawn
            arrived = self.read(max(0.0, deadline - time.perf_counter()))
            if arrived is None:
                raise TimeoutError(f"the app showed step {self.drawn}, not {step}, within {timeout:.0f} s")
            if self.drawn > before:
                seen(self.drawn)
            if self.drawn >= step:
                return arrived

    def drain(self, seconds: float) -> None:
        until = time.perf_counter() + seconds
        while (left := until - time.perf_counter()) > 0:
            self.read(left)

    def press(self, key: str) -> float:
        os.write(self.master, key.encode())
        return time.perf_counter()

    def resident_kib(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS in /proc/PID/status (this benchmark needs Linux)")

    def close(self) -> None:
        self.press("q")
        deadline = time.perf_counter() + 10
        while self.process.poll() is None and time.perf_counter() < deadline:
            try:
                self.read(0.1)
            except RuntimeError:
                break
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        os.close(self.master)


def started_app(args: list[str], command: list[str]) -> AppInPty:
    """The app, once it shows its first candidates and the work ahead of them is done."""
    app = AppInPty(args, command)
    try:
        app.until_step(0, timeout=120)
        app.drain(SETTLE_S)
    except BaseException:
        app.close()
        raise
    return app


def app_play_seconds(prompt: str = PROMPT, steps: int = NEW_TOKENS, options: tuple[str, ...] = ()) -> float:
    """Seconds from `p` to the screen showing the last of `steps` steps."""
    app = started_app([prompt, "--max-new-tokens", str(steps), *MODEL_OPTIONS, *options], tokenstep())
    try:
        pressed = app.press("p")
        return app.until_step(steps, timeout=120 + steps) - pressed
    finally:
        app.close()


def play_result() -> Result:
    loops, apps = [], []
    for _ in range(REPEATS):  # in turn, so that a slow spell of the machine hits both
        loops.append(play_seconds("loop", ""))
        apps.append(app_play_seconds())
    loop, in_app = min(loops) / NEW_TOKENS, min(apps) / NEW_TOKENS
    table(
        f"The app in a pseudo-terminal: play, {NEW_TOKENS} tokens, ms a step",
        ["app (p to the last step drawn)", "session loop", "ratio"],
        [[1000 * in_app, 1000 * loop, loop / in_app]],
    )
    return Result(
        "app_pty_play",
        loop / in_app,
        ">=",
        0.9,
        measured=f"`tokenstep` in a pseudo-terminal, default panels, `p` for {NEW_TOKENS} tokens: {ms(in_app)} a step",
        baseline=f"the session's own loop: {ms(loop)} a step",
    )


def memory_result(kv_per_token: int) -> Result:
    samples: list[tuple[int, int]] = []  # (step shown, resident KiB)
    # Through peak_rss.py: what loading left free is handed back first, or the first steps would reuse it unseen.
    app = started_app([LIST_PROMPT, "--max-new-tokens", str(MEMORY_STEPS), *MODEL_OPTIONS], [sys.executable, str(PEAK_RSS)])

    def sample(step: int) -> None:
        if step >= MEMORY_FROM and not samples:
            samples.append((step, app.resident_kib()))

    try:
        app.press("p")
        app.until_step(MEMORY_STEPS, timeout=600, seen=sample)
        samples.append((app.drawn, app.resident_kib()))
    finally:
        app.close()
    (first, first_kib), (last, last_kib) = samples
    per_step = 1024 * (last_kib - first_kib) / (last - first)
    ratio = per_step / kv_per_token
    table(
        f"The app's memory over {MEMORY_STEPS} steps of play (resident at steps {first} and {last})",
        ["KiB a step", "KV cache KiB a token", "ratio"],
        [[per_step / 1024, kv_per_token / 1024, ratio]],
    )
    return Result(
        "app_pty_memory_per_step_vs_kv_cache",
        ratio,
        "<=",
        1.5,
        measured=f"the app's resident memory, steps {first} to {last} of play: {per_step / 1024:.1f} KiB a step",
        baseline=f"the KV cache of a token (model config): {kv_per_token / 1024:.1f} KiB",
    )


def run() -> list[Result]:
    kv_per_token = kv_bytes_per_token(load(dtype="float32"))
    return [play_result(), memory_result(kv_per_token)]
