"""The beam view, the compare view and the processor view, driven with Pilot on the tiny model."""

from decoding.core.settings import Strategy
from decoding.search.beam import BeamSearch
from tests.test_app import SIZE, make_app, panel_ids, settle
from tui.widgets.beams import BeamPanel

BEAM = Strategy(kind="beam", num_beams=3)


def beam_text(app) -> str:
    panel = app.query_one(BeamPanel)
    return "\n".join(line.text for line in panel.render_lines(panel.region.reset_offset))


def fresh_search(app, steps: int) -> BeamSearch:
    """The same search run directly on the core, for comparison with what the app shows."""
    session = app.session
    search = BeamSearch(session.engine, BEAM, session.prompt_ids, max_new_tokens=app.max_new_tokens, choices=session.choices)
    for _ in range(steps):
        search.step()
    return search


async def test_the_beam_view_steps_all_beams_and_undoes_a_whole_step(tiny_model_dir):
    app = make_app(tiny_model_dir, strategy=BEAM)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.query_one(BeamPanel).display and not app.query_one("#text").display
        await pilot.press("space", "space")
        await settle(pilot)
        expected = fresh_search(app, 2).snapshot()
        assert app.beam_view.beams == expected.beams and len(expected.beams) == 3
        shown = beam_text(app)
        assert all(f"{beam.score:9.3f}" in shown for beam in expected.beams)
        assert "beam step 2" in str(app.query_one("#status").content)
        await pilot.press("backspace")
        await settle(pilot)
        assert app.beam_view == fresh_search(app, 1).snapshot()


async def test_j_highlights_a_beam_and_a_digit_forces_its_candidate_onto_it(tiny_model_dir):
    app = make_app(tiny_model_dir, strategy=BEAM)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("space")
        await settle(pilot)
        await pilot.press("j", "j")
        await pilot.pause()
        assert app.highlighted_beam == 2
        third = app.beam_view.beams[2]
        assert panel_ids(app) == [c.token_id for c in app.beam_view.candidates[2].candidates]
        ninth = panel_ids(app)[8]
        await pilot.press("9")
        await settle(pilot)
        forced = [beam for beam in app.beam_view.beams if beam.token_ids == third.token_ids + (ninth,)]
        assert len(forced) == 1 and forced[0].forced == 1
        assert app.beam_view.beams[app.highlighted_beam] == forced[0]  # the highlight followed it
        await pilot.press("k", "k", "k")
        assert app.highlighted_beam == 0


async def test_play_runs_the_search_to_its_end_and_switching_back_keeps_the_path(tiny_model_dir):
    app = make_app(tiny_model_dir, max_new_tokens=6)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("space")
        await settle(pilot)
        path = app.snapshot.path
        app.action_switch("beam")
        await settle(pilot)
        assert app.beam_view is not None and app.beam_view.prefix == app.session.text
        await pilot.press("p")
        await settle(pilot)
        assert app.beam_view.ended and app.beam_view.best is not None
        assert "finished hypotheses" in beam_text(app) and "ended:" in beam_text(app)
        await pilot.press("space")
        await settle(pilot)
        assert app.beam_view.ended  # refused with a notice, nothing changed
        app.action_switch("greedy")
        await settle(pilot)
        assert app.beam_view is None and app.snapshot.path == path and app.query_one("#text").display


async def test_beam_settings_come_from_the_settings_screen(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("s")
        await pilot.pause()
        app.screen.query_one("#kind").value = "beam"
        app.screen.query_one("#num_beams").value = "2"
        app.screen.query_one("#length_penalty").value = "0.5"
        app.screen.query_one("#early_stopping").value = "never"
        await pilot.click("#apply")
        await settle(pilot)
        assert app.snapshot.strategy == Strategy(kind="beam", num_beams=2, length_penalty=0.5, early_stopping="never")
        await pilot.press("space")
        await settle(pilot)
        assert len(app.beam_view.beams) == 2


async def wait_for(pilot, condition, rounds=600):
    for _ in range(rounds):
        if condition():
            return
        await pilot.pause(0.02)
    raise AssertionError("never happened")


async def test_c_compares_the_chapters_strategies_from_the_current_text(tiny_model_dir):
    from decoding.core.settings import CHAPTER_STRATEGIES, parse_strategies
    from decoding.records.compare import compare
    from tui.compare_screen import CompareScreen

    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("space", "2")
        await settle(pilot)
        path, next_panel = app.snapshot.path, app.snapshot.distribution
        await pilot.press("c")
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        await wait_for(pilot, lambda: screen.record is not None)
        results = screen.record["results"]
        expected = compare(app.session.engine.fork(), app.session.ids, parse_strategies(CHAPTER_STRATEGIES), 32)
        assert [r["generated_ids"] for r in results] == [list(e.token_ids) for e in expected]

        def shown() -> str:
            table = screen.query_one("#compare-table")
            return "\n".join(line.text for line in table.render_lines(table.region.reset_offset))

        await wait_for(pilot, lambda: "beam B=5 no-repeat-2gram" in shown())  # once laid out and painted
        assert "sample top-k=50 top-p=0.9" in shown()
        await pilot.press("escape")
        await settle(pilot)
        assert app.screen is not screen
        assert app.snapshot.path == path and app.snapshot.distribution == next_panel  # the path's own cache untouched


async def test_escape_cancels_a_comparison_and_the_explorer_goes_on(tiny_model_dir, monkeypatch):
    import time

    import decoding.records.compare
    from tui.compare_screen import CompareScreen

    started = []
    real_path = decoding.records.compare._path

    def slow_path(*args):  # the tiny model is fast: make each strategy take a while
        started.append(True)
        time.sleep(0.3)
        return real_path(*args)

    monkeypatch.setattr(decoding.records.compare, "_path", slow_path)
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("c")
        screen = app.screen
        await wait_for(pilot, lambda: started)
        await pilot.press("escape")
        await settle(pilot)
        assert not isinstance(app.screen, CompareScreen) and screen.record is None
        assert len(started) < 8  # stopped before the end
        await pilot.press("space")
        await settle(pilot)
        assert len(app.snapshot.path) == 1


def with_basic_engine(monkeypatch, tiny_engine):
    """The app loads the tiny model as an engine that can do only the basics (no second cache, no beams)."""
    import decoding.engines.registry
    from tests.engines import Basic

    monkeypatch.setattr(decoding.engines.registry, "load_engine", lambda *args, **kwargs: Basic(tiny_engine))


async def test_a_comparison_that_cannot_run_says_why_in_the_view(tiny_model_dir, tiny_engine, monkeypatch):
    from tui.compare_screen import CompareScreen

    with_basic_engine(monkeypatch, tiny_engine)
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("c")
        screen = app.screen
        await settle(pilot)
        assert isinstance(app.screen, CompareScreen) and screen.record is None
        assert "needs a second cache" in str(screen.query_one("#compare-progress").content)
        await pilot.press("escape")
        await pilot.pause()
        assert not isinstance(app.screen, CompareScreen)


async def test_an_engine_without_beam_search_refuses_it_and_keeps_the_strategy(tiny_model_dir, tiny_engine, monkeypatch):
    with_basic_engine(monkeypatch, tiny_engine)
    app = make_app(tiny_model_dir)
    notes = []
    app.notify = lambda message, **kwargs: notes.append(message)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.action_switch("beam")
        await settle(pilot)
        assert any("cannot run beam search" in note for note in notes)
        assert app.snapshot.strategy == Strategy() and app.beam_view is None
        await pilot.press("space")
        await settle(pilot)
        assert len(app.snapshot.path) == 1
