"""A light progress indicator: four frames a second, so it costs the loading model next to nothing.

(Textual's LoadingIndicator animates at 16 frames a second; on two cores that slowed loading by ~0.15 s.)
"""

from __future__ import annotations

from textual.widgets import Static

FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class Spinner(Static):
    frame = 0

    def on_mount(self) -> None:
        self.update(FRAMES[0])
        self.timer = self.set_interval(0.25, self.advance)

    def advance(self) -> None:
        self.frame = (self.frame + 1) % len(FRAMES)
        self.update(FRAMES[self.frame], layout=False)  # one cell, always: no layout of the screen

    def start(self) -> None:
        self.display = True
        self.timer.resume()

    def stop(self) -> None:
        self.timer.pause()
        self.display = False
