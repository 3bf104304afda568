"""How often play's frames come: up to four a second, as long as painting them takes at most 3 % of
one core.

While the model plays on the CPU, the screen's work (layout, rendering: ~30 ms a frame on a 2-core
machine) takes a core from the model's threads, and the threads of a forward pass wait for each
other: four frames a second slowed play by a sixth to a quarter there. The cost is measured on the screen's
own thread (its CPU time from one frame to the next), so a fast machine, or a GPU box whose cores
are free, keeps four frames a second and a small shared machine gets fewer.
"""

from __future__ import annotations

import time

FASTEST = 0.25  # seconds between frames
SLOWEST = 1.0
SHARE = 0.03  # of one core, for painting while playing
# The model thread gives up the GIL for every torch kernel and must take it back after; while the UI
# thread paints, that wait is up to the switch interval (5 ms by default) each time. 1 ms kept play at
# 0.93-0.99 of the session's own loop where 5 ms gave 0.82-0.88 (`python benchmarks/run.py app_play`).
SWITCH_INTERVAL_SECONDS = 0.001


class FramePacer:
    """Told each time a frame is painted (on the screen's thread); `seconds` is read by the model's."""

    def __init__(self) -> None:
        self.seconds = FASTEST
        self._cost = 0.0  # CPU seconds a frame takes, smoothed
        self._last: float | None = None  # the screen thread's CPU time at the last frame

    def restart(self) -> None:
        """A play begins: what the screen did since the last one is not a frame's cost."""
        self._last = None

    def painted(self) -> None:
        now = time.thread_time()
        if self._last is not None:
            self._cost = (self._cost + (now - self._last)) / 2 if self._cost else now - self._last
            self.seconds = min(SLOWEST, max(FASTEST, self._cost / SHARE))
        self._last = now
