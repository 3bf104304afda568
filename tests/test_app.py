"""The explorer driven from the keyboard with Textual's Pilot, on the tiny model."""

import itertools
import json
import threading

from decoding.core.settings import Strategy
from decoding.engines.registry import LoadOptions
from tui.app import TokenstepApp
from tui.palette import palette_actions
from tui.widgets.candidates import CandidatePanel

SIZE = (120, 36)


def fake_clock():
    """Every reading 50 ms after the last: timings on screen are the same on every machine."""
    ticks = itertools.count()
    return lambda: next(ticks) * 0.05


def make_app(model_dir, **kwargs):
    kwargs.setdefault("prompt", "The quick brown")
    kwargs.setdefault("clock", fake_clock())
    return TokenstepApp(LoadOptions(model=str(model_dir), device="cpu"), **kwargs)


async def settle(pilot, rounds=400):
    """Wait until the model is loaded (or failed) and no command is running or queued."""
    app = pilot.app
    for _ in range(rounds):
        await pilot.pause(0.01)
        if app.idle:
            await pilot.pause()
            return
    raise AssertionError("the app never settled")


def text_on_screen(app) -> str:
    return str(app.query_one("#running-text").content)


def panel_ids(app) -> list[int]:
    return [candidate.token_id for candidate in app.query_one(CandidatePanel).shown.candidates]


def panel_text(app) -> str:
    panel = app.query_one(CandidatePanel)
    return "\n".join(line.text for line in panel.render_lines(panel.region.reset_offset))


def assert_screen_matches_core(app):
    assert app.snapshot == app.session.snapshot()


async def test_space_and_right_step_by_the_strategy(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        top = panel_ids(app)[0]
        await pilot.press("space")
        await settle(pilot)
        assert [t.token_id for t in app.snapshot.path] == [top]
        await pilot.press("right")
        await settle(pilot)
        assert len(app.snapshot.path) == 2 and not any(t.forced for t in app.snapshot.path)
        assert text_on_screen(app) == app.session.text
        assert_screen_matches_core(app)


async def test_five_quick_presses_give_five_steps_in_order(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("space", "space", "2", "space", "space")
        await settle(pilot)
        path = app.snapshot.path
        assert len(path) == 5
        assert [t.forced for t in path] == [False, False, True, False, False]
        assert path[2].rank == 1
        assert_screen_matches_core(app)


async def test_digits_pick_rows_and_enter_picks_the_highlighted_row(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        second = panel_ids(app)[1]
        await pilot.press("2")
        await settle(pilot)
        assert (app.snapshot.path[-1].token_id, app.snapshot.path[-1].forced) == (second, True)
        third = panel_ids(app)[2]
        await pilot.press("down", "down", "enter")
        await settle(pilot)
        assert app.snapshot.path[-1].token_id == third
        await pilot.press("down", "down", "down", "down", "down", "down", "down", "down", "down", "down")  # row 10
        await settle(pilot)
        tenth = panel_ids(app)[9]
        await pilot.press("enter")
        await settle(pilot)
        assert app.snapshot.path[-1].token_id == tenth and app.snapshot.path[-1].rank == 9


async def test_backspace_and_left_undo_and_restore_the_panel(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        first_panel = panel_ids(app)
        await pilot.press("space", "3")
        await settle(pilot)
        await pilot.press("backspace", "left")
        await settle(pilot)
        assert app.snapshot.path == () and panel_ids(app) == first_panel
        assert text_on_screen(app) == "The quick brown"


async def test_play_runs_to_max_new_tokens(tiny_model_dir):
    app = make_app(tiny_model_dir, max_new_tokens=6)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("p")
        await settle(pilot)
        assert len(app.snapshot.path) == 6
        assert_screen_matches_core(app)


async def test_p_pauses_play_and_escape_drops_queued_steps(tiny_model_dir, monkeypatch):
    app = make_app(tiny_model_dir, max_new_tokens=50, look_ahead=0)  # only asked-for passes pass the gate
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        gate = threading.Semaphore(0)
        feed = app.session.engine.feed
        monkeypatch.setattr(app.session.engine, "feed", lambda ids: gate.acquire() and feed(ids))
        await pilot.press("p")
        for _ in range(3):
            gate.release()
        await pilot.pause(0.2)
        await pilot.press("p")  # pause
        for _ in range(5):
            gate.release()
        await settle(pilot)
        assert 3 <= len(app.snapshot.path) <= 4  # the step in flight when p was pressed may finish
        assert_screen_matches_core(app)
        taken = len(app.snapshot.path)
        while gate.acquire(blocking=False):  # no step may run until we say so
            pass
        await pilot.press("space", "space", "space", "escape")  # the first runs; the rest are dropped
        for _ in range(5):
            gate.release()
        await settle(pilot)
        assert len(app.snapshot.path) == taken + 1
        assert_screen_matches_core(app)


async def test_keys_pressed_while_loading_run_once_the_model_is_ready(tiny_model_dir, monkeypatch):
    import decoding.engines.registry

    loaded = threading.Event()
    real_load = decoding.engines.registry.load_engine
    monkeypatch.setattr(decoding.engines.registry, "load_engine", lambda *a: loaded.wait(10) and real_load(*a))
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert "Loading" in str(app.query_one("#loading-text").content)  # painted before the model
        assert not app.query_one("#main").display
        await pilot.press("space", "space")
        loaded.set()
        await settle(pilot)
        assert len(app.snapshot.path) == 2


async def test_settings_refuse_invalid_values_beside_the_field_and_keep_the_old_ones(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("s")
        await pilot.pause()
        screen = app.screen
        screen.query_one("#temperature").value = "0"
        screen.query_one("#top_k").value = "many"
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is screen
        assert "from 0.01 to 100" in str(screen.query_one("#temperature-error").content)
        assert "whole number" in str(screen.query_one("#top_k-error").content)
        await pilot.press("escape")
        await settle(pilot)
        assert app.snapshot.strategy == Strategy()


async def test_switching_strategy_recomputes_the_panel_and_keeps_the_path(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("space")
        await settle(pilot)
        path = app.snapshot.path
        await pilot.press("s")
        await pilot.pause()
        app.screen.query_one("#kind").value = "sample"
        app.screen.query_one("#top_k").value = "2"
        app.screen.query_one("#choices").value = "4"
        await pilot.click("#apply")
        await settle(pilot)
        assert app.snapshot.path == path
        assert app.snapshot.strategy == Strategy(kind="sample", top_k=2)
        candidates = app.snapshot.distribution.candidates
        assert [c.removed for c in candidates] == [False, False, True, True]
        header, *rows = panel_text(app).splitlines()
        assert "model" in header and "strategy" in header
        assert [("removed" in row) for row in rows[:4]] == [False, False, True, True]


async def test_a_new_prompt_starts_again(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("space", "space")
        await settle(pilot)
        await pilot.press("tab")
        app.query_one("#prompt").value = "Decoding"
        await pilot.press("enter")
        await settle(pilot)
        assert app.snapshot.prompt == "Decoding" and app.snapshot.path == ()
        await pilot.press("space")
        await settle(pilot)
        assert len(app.snapshot.path) == 1


async def test_an_empty_prompt_is_refused_and_the_path_kept(tiny_model_dir):
    app = make_app(tiny_model_dir)
    notes = []
    async with app.run_test(size=SIZE) as pilot:
        app.notify = lambda message, **kwargs: notes.append(message)
        await settle(pilot)
        await pilot.press("space")
        await settle(pilot)
        path = app.snapshot.path
        await pilot.press("tab")
        app.query_one("#prompt").value = ""
        await pilot.press("enter")
        await settle(pilot)
        assert app.snapshot.path == path
        assert any("prompt is empty" in note for note in notes)


async def test_markup_like_text_is_shown_literally(tiny_model_dir):
    prompt = "[bold]x[/] [link=https://example.com]y[/link] [red"
    app = make_app(tiny_model_dir, prompt=prompt)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("space")
        await settle(pilot)
        assert text_on_screen(app).startswith(prompt)
        screen = app.export_screenshot()
        assert "[bold]x[/]" in screen and "[link=https://example.com]y[/link]" in screen


async def test_a_failed_load_says_why_and_offers_another_model(tmp_path, tiny_model_dir):
    app = TokenstepApp(LoadOptions(model=str(tmp_path / "missing"), device="cpu"))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        message = str(app.query_one("#loading-text").content)
        assert "no such folder" in message and "m to try another model" in message
        await pilot.press("m")
        await pilot.pause()
        app.screen.query_one("#ask-input").value = str(tiny_model_dir)
        await pilot.press("enter")
        await settle(pilot)
        assert app.snapshot is not None and app.query_one("#main").display


async def test_an_error_inside_a_step_is_a_notification_and_the_path_stays(tiny_model_dir, monkeypatch):
    app = make_app(tiny_model_dir, look_ahead=0)  # the step itself must run the (failing) model
    notes = []
    async with app.run_test(size=SIZE) as pilot:
        app.notify = lambda message, **kwargs: notes.append(message)
        await settle(pilot)
        await pilot.press("space")
        await settle(pilot)
        path = app.snapshot.path

        def out_of_memory(*args, **kwargs):
            raise RuntimeError("CUDA out of memory")

        monkeypatch.setattr(app.session.engine.model, "forward", out_of_memory)
        await pilot.press("space")
        await settle(pilot)
        assert app.snapshot.path == path
        assert any("out of memory" in note for note in notes)


async def test_export_writes_the_trace_record_and_names_the_file(tiny_model_dir, tmp_path):
    app = make_app(tiny_model_dir, export_dir=tmp_path)
    notes = []
    async with app.run_test(size=SIZE) as pilot:
        app.notify = lambda message, **kwargs: notes.append(message)
        await settle(pilot)
        await pilot.press("space", "2", "e")
        await settle(pilot)
        [saved] = tmp_path.glob("tokenstep-trace-*.json")
        record = json.loads(saved.read_text())
        assert record["generated_ids"] == [t.token_id for t in app.snapshot.path]
        assert [s["chosen"]["forced"] for s in record["steps"]] == [False, True]
        assert any(str(saved) in note for note in notes)


async def test_visible_whitespace_toggle(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("v")
        await pilot.pause()
        assert text_on_screen(app).startswith("The␣quick␣brown")


async def test_bindings_have_ids_so_keys_can_be_remapped(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.set_keymap({"step": "n"})
        await pilot.press("n")
        await settle(pilot)
        assert len(app.snapshot.path) == 1


async def test_play_refuses_past_max_new_tokens_and_q_quits(tiny_model_dir):
    app = make_app(tiny_model_dir, max_new_tokens=2)
    notes = []
    async with app.run_test(size=SIZE) as pilot:
        app.notify = lambda message, **kwargs: notes.append(message)
        await settle(pilot)
        await pilot.press("p")
        await settle(pilot)
        await pilot.press("p")
        await settle(pilot)
        assert len(app.snapshot.path) == 2 and any("--max-new-tokens" in note for note in notes)
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running


async def test_command_palette_offers_the_actions(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        titles = [action.label for action in palette_actions()]
        for wanted in (
            "Step",
            "Undo",
            "Settings",
            "Set candidates shown (k)",
            "Switch to sampling",
            "Whitespace",
            "Export",
            "Tree",
            "Processors",
            "Compare",
            "Load another model",
        ):
            assert wanted in titles
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"sampling")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await settle(pilot)
        assert app.snapshot.strategy.kind == "sample"


async def test_while_the_person_reads_the_top_picks_are_computed_ahead(tiny_model_dir):
    app = make_app(tiny_model_dir, look_ahead=5)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        top5 = panel_ids(app)[:5]
        assert app.session.looked_ahead == frozenset(top5)
        app.runner.look_ahead = 0  # nothing more ahead: any model pass now would be the pick's own
        passes = []
        app.session.engine.feed = passes.append
        await pilot.press("3")
        await settle(pilot)
        assert app.snapshot.path[-1].token_id == top5[2] and passes == []


async def test_clicking_a_row_force_picks_it(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        third = panel_ids(app)[2]
        panel = app.query_one(CandidatePanel)
        await pilot.click(
            CandidatePanel, offset=(panel.content_region.x - panel.region.x + 3, panel.content_region.y - panel.region.y + 1 + 2)
        )
        await settle(pilot)
        assert app.snapshot.path[-1].token_id == third
