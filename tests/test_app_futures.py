"""The futures view (key F) driven from the keyboard: it samples, streams, charts the outcomes,
cancels with escape, walks into a future with enter, and leaves the screen answering keys."""

from __future__ import annotations

import asyncio
import time

from textual import events
from textual.widgets import DataTable, Input

from decoding.core.settings import Strategy
from tests.test_app import SIZE, make_app, settle
from tests.test_app_drawn import rows_of
from tui.futures_screen import FuturesScreen, OutcomeChart

SAMPLE = Strategy(kind="sample", seed=4, top_k=40)


async def open_futures(pilot, n: str, tokens: str, outcome: str = "") -> FuturesScreen:
    await pilot.press("F")
    await pilot.pause()
    screen = pilot.app.screen
    assert isinstance(screen, FuturesScreen)
    screen.query_one("#futures-n", Input).value = n
    screen.query_one("#futures-tokens", Input).value = tokens
    screen.query_one("#futures-outcome", Input).value = outcome
    return screen


async def test_f_samples_futures_charts_their_outcomes_and_enter_walks_into_one(tiny_model_dir):
    app = make_app(tiny_model_dir, strategy=SAMPLE)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        screen = await open_futures(pilot, "5", "6", r"(\w)")
        await pilot.press("enter")
        await settle(pilot)
        await pilot.pause()
        table = screen.query_one(DataTable)
        assert table.row_count == 5 and screen.shown is not None and not screen.running
        chart = rows_of(app, screen.query_one(OutcomeChart))
        assert any("outcomes of 5 futures" in row.text for row in chart), "\n".join(row.text for row in chart)
        bars = {style.color for row in chart for cell, style in zip(row.cells, row.styles) if cell in "█▄▀"}
        assert len(bars) == 2  # the sampled shares' colour, and the model's probabilities'
        assert "probability" in " ".join(row.text for row in rows_of(app, screen.query_one("#futures-outcomes")))
        futures = screen.shown.futures
        await pilot.press("down", "down", "enter")  # the third future
        await settle(pilot)
        assert not isinstance(app.screen, FuturesScreen)
        assert tuple(app.snapshot.path[i].token_id for i in range(len(futures[2].ids))) == futures[2].ids
        assert len(app.session.tree.nodes) > 5 * 6 // 2  # the others are branches too


async def test_escape_cancels_a_batch_between_tokens_and_keeps_what_grew(tiny_model_dir, monkeypatch):
    from decoding.search import futures

    feed = futures._Batch.feed
    monkeypatch.setattr(futures._Batch, "feed", lambda batch, ids: time.sleep(0.05) or feed(batch, ids))  # a slow model
    app = make_app(tiny_model_dir, strategy=SAMPLE)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        screen = await open_futures(pilot, "4", "50")
        await pilot.press("enter")
        for _ in range(400):  # until it has grown a little
            await pilot.pause(0.01)
            if screen.shown is not None:
                break
        await pilot.press("escape")
        await settle(pilot)
        assert screen.shown is not None and screen.shown.cancelled and not screen.running
        assert 0 < len(screen.shown.futures[0].tokens) < 50
        await pilot.press("escape")  # now it closes
        await pilot.pause()
        assert not isinstance(app.screen, FuturesScreen)


async def test_a_bad_request_is_said_in_the_screen_and_nothing_runs(tiny_model_dir):
    app = make_app(tiny_model_dir, strategy=SAMPLE)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        screen = await open_futures(pilot, "0", "4")
        await pilot.press("enter")
        await pilot.pause()
        assert "from 1 to 256" in str(screen.query_one("#futures-progress").content) and not screen.running
        screen.query_one("#futures-n", Input).value = "3"
        screen.query_one("#futures-outcome", Input).value = "(unclosed"
        await pilot.press("enter")
        await pilot.pause()
        assert "not a regular expression" in str(screen.query_one("#futures-progress").content)


async def test_keys_are_answered_within_100_ms_while_futures_run(embedded_engine):
    """On the embedded model (a batched pass of 12 rows takes ~0.1 s here): each key pressed while the
    batch runs is handled, and the screen updated, within 100 ms."""
    from decoding.engines.registry import LoadOptions
    from tui.app import TokenstepApp

    app = TokenstepApp(LoadOptions(), Strategy(kind="sample", seed=0), prompt="Once upon a time")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, rounds=6000)
        screen = await open_futures(pilot, "12", "400")
        await pilot.press("enter")
        for _ in range(2000):
            await pilot.pause(0.01)
            if screen.shown is not None:
                break
        field = screen.query_one("#futures-outcome", Input)
        field.focus()
        await pilot.pause()
        waits = []
        for key in "abcdefgh":  # as the terminal's driver delivers them (Pilot.press waits for the CPU to idle)
            started = time.perf_counter()
            app.post_message(events.Key(key, key))
            while not field.value.endswith(key):
                await asyncio.sleep(0.001)
            waits.append(time.perf_counter() - started)
            await asyncio.sleep(0.05)
        assert screen.running, str(screen.query_one("#futures-progress").content)
        assert field.value.endswith("abcdefgh")
        assert max(waits) < 0.1, f"keys waited {[round(w * 1000) for w in waits]} ms"
        await pilot.press("escape")
        await settle(pilot, rounds=6000)
