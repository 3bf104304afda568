"""Play's frames: they come while the model plays, as often as the screen can afford."""

from __future__ import annotations

import pytest

from tests.test_app import SIZE, make_app, settle
from tui import pacing


@pytest.mark.parametrize(
    ("frame_cpu", "expected"),
    [(0.005, pacing.FASTEST), (0.015, 0.015 / pacing.SHARE), (0.2, pacing.SLOWEST)],
)
def test_frames_are_spaced_so_that_painting_takes_a_small_share_of_a_core(monkeypatch, frame_cpu, expected):
    cpu = iter(range(100))
    monkeypatch.setattr(pacing.time, "thread_time", lambda: next(cpu) * frame_cpu)
    pacer = pacing.FramePacer()
    for _ in range(5):
        pacer.painted()
    assert pacer.seconds == pytest.approx(expected)  # a 15 ms frame every 0.5 s: 3 % of a core


def test_the_screens_work_between_two_plays_is_not_a_frames_cost(monkeypatch):
    readings = iter([0.0, 0.005, 0.010, 50.0, 50.005])  # 50 s of CPU between the plays (a long beam search)
    monkeypatch.setattr(pacing.time, "thread_time", lambda: next(readings))
    pacer = pacing.FramePacer()
    for _ in range(3):
        pacer.painted()
    pacer.restart()
    pacer.painted()
    pacer.painted()
    assert pacer.seconds == pacing.FASTEST


async def test_the_text_grows_on_screen_while_play_runs(tiny_model_dir):
    app = make_app(tiny_model_dir, max_new_tokens=40, look_ahead=0)  # its clock: 50 ms a reading
    shown: list[int] = []
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        paint = app.refresh_view

        def recording() -> None:
            paint()
            if app.playing:
                shown.append(len(app.snapshot.path))

        app.refresh_view = recording  # type: ignore[method-assign]
        await pilot.press("p")
        await settle(pilot)
    assert len(app.snapshot.path) == 40
    assert any(0 < length < 40 for length in shown), shown
