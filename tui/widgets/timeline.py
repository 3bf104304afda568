"""The timeline (key `g`): along the path, the chosen token's probability and the entropy it was drawn
from, step by step, a plotext plot; forced steps marked ×, the step looked at by a vertical line, and
with a second model its probability of the same tokens."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from textual.app import RenderResult
from textual.timer import Timer
from textual_plotext import PlotextPlot

from decoding.explorer.panels import Timeline

if TYPE_CHECKING:
    from decoding.explorer.explorer import View

# A plot costs ~40 ms of Python on the UI thread, which the model's thread waits on for the GIL: drawn at
# every play frame (4 a second) it slowed play by a quarter. While playing it is drawn every 2 seconds,
# and a drawn plot is kept until its value or size changes (plotext would rebuild it at every layout).
PLAYING_REDRAW_SECONDS = 2.0
TICK_SPACING = 8  # columns per step label, at least
NICE_SPACINGS = tuple(mantissa * 10**exponent for exponent in range(12) for mantissa in (1, 2, 5))


def whole_ticks(steps: int, most: int) -> list[int]:
    """Step numbers to label the axis with: whole numbers from 1 to `steps`, at most `most` of them
    (plotext's own ticks are fractions), 1, 2, 5, 10, 20, 50, ... apart."""
    spacing = next(spacing for spacing in NICE_SPACINGS if steps < spacing * max(most, 2))
    return [1, *range(spacing, steps + 1, spacing)] if spacing > 1 else list(range(1, steps + 1))


class TimelinePanel(PlotextPlot):
    value: Timeline | None = None
    _drawn_at = 0.0
    _draws = 0  # plots drawn: a new one invalidates the rendered plot
    _steps_drawn = 0  # in the plot drawn (while playing, the value shown may be ahead of it)
    _pending: Timer | None = None
    _rendered: tuple[object, RenderResult] | None = None  # (what it showed, the plot)

    def render(self) -> RenderResult:
        key = (self._draws, self.size, self.app.theme)
        if self._rendered is None or self._rendered[0] != key:
            if self._steps_drawn:  # as many labels as the width has room for
                ticks = whole_ticks(self._steps_drawn, self.size.width // TICK_SPACING)
                self.plt.xticks([float(tick) for tick in ticks], [str(tick) for tick in ticks])
            self._rendered = (key, super().render())
        return self._rendered[1]

    def show(self, value: Timeline, view: View | None = None) -> None:
        if value == self.value:
            return
        self.value = value
        wait = self._drawn_at + PLAYING_REDRAW_SECONDS - time.monotonic()
        if getattr(self.app, "playing", False) and wait > 0:
            if self._pending is None:
                self._pending = self.set_timer(wait, self._draw)
            return
        self._draw()

    def _draw(self) -> None:
        if self._pending is not None:
            self._pending.stop()
            self._pending = None
        self._drawn_at = time.monotonic()
        self._draws += 1
        value = self.value
        assert value is not None
        plt = self.plt
        plt.clear_figure()
        steps = list(range(1, len(value.probabilities) + 1))
        self._steps_drawn = len(steps)
        if not steps:
            plt.title("timeline: no steps yet")
            self.refresh()
            return
        plt.plot(steps, list(value.probabilities), label="p(chosen)", color="cyan", marker="braille")
        plt.plot(steps, list(value.entropies), label="entropy, nats (right)", color="magenta", marker="braille", yside="right")
        second = [(step, prob) for step, prob in zip(steps, value.second) if prob is not None]
        if second:
            plt.plot(
                [s for s, _ in second], [p for _, p in second], label="p(chosen), second model", color="yellow", marker="braille"
            )
        if value.forced:
            plt.scatter(
                [i + 1 for i in value.forced],
                [value.probabilities[i] for i in value.forced],
                label="forced",
                color="red",
                marker="x",
            )
        if value.cursor is not None:
            plt.vline(value.cursor + 1, "blue")
        plt.ylim(0, 1)
        plt.xlabel("step")
        self.refresh()
