"""The whole text at a glance, driven with Pilot on the tiny model: heat views, the cursor over past
steps, branching from one, the timeline and a second model along the same path."""

import pytest

from decoding.engines.registry import LoadOptions
from tests.test_app import SIZE, make_app, panel_ids, panel_text, settle
from tui.widgets.status import StatusLine
from tui.widgets.text_view import TextView
from tui.widgets.timeline import TimelinePanel


def legend(app) -> str:
    return str(app.query_one(TextView).query_one("#legend").content)


def status(app) -> str:
    return str(app.query_one(StatusLine).content)


async def three_steps(pilot):
    await settle(pilot)
    await pilot.press("space", "space", "space")
    await settle(pilot)


async def test_h_cycles_the_heat_views_and_the_legend_names_each(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await three_steps(pilot)
        seen = []
        for _ in range(5):
            seen.append(app.heat)
            assert f"heat: {app.heat}" in legend(app)
            await pilot.press("h")
            await pilot.pause()
        assert seen == ["probability", "entropy", "rank", "off", "attribution"] and app.heat == "probability"


async def test_the_prompt_is_scored_and_tinted_once_the_model_is_idle(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        scores = app.snapshot.prompt_scores
        assert scores is not None and scores[0] is None and len(scores) == len(app.snapshot.prompt_pieces)
        assert all(score.logprob < 0 and score.entropy > 0 for score in scores[1:])


async def test_the_cursor_reopens_a_past_step_with_its_stored_panel_and_the_chosen_token_marked(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        first_panel = panel_ids(app)
        await pilot.press("space", "2", "space")  # the second step forced to the second candidate
        await settle(pilot)
        path = app.snapshot.path
        await pilot.press("comma", "comma")
        await settle(pilot)
        assert app.snapshot.cursor == 1 and app.snapshot.path == path  # nothing undone
        assert panel_ids(app) == [c.token_id for c in app.snapshot.panels[1].candidates]
        assert "◀ chosen (forced)" in panel_text(app).splitlines()[2]  # the header, then candidates 1 and 2
        assert "looking at step 2 of 3" in status(app)
        await pilot.press("comma")
        await settle(pilot)
        assert panel_ids(app) == first_panel and "◀ chosen" in panel_text(app).splitlines()[1]
        await pilot.press("escape")
        await settle(pilot)
        assert app.snapshot.cursor is None and panel_ids(app) == [c.token_id for c in app.session.distribution.candidates]


async def test_a_click_on_a_past_token_looks_at_it(tiny_model_dir):
    app = make_app(tiny_model_dir, prompt="The")
    async with app.run_test(size=SIZE) as pilot:
        await three_steps(pilot)
        view = app.query_one("#running-text")
        first_token = app.snapshot.path[0]
        # the first generated token starts just after the prompt, on the text's first line
        assert await pilot.click(view, offset=(len("The") + len(first_token.text) // 2, 0))
        await settle(pilot)
        assert app.snapshot.cursor == 0


async def test_a_digit_at_the_cursor_branches_there_and_the_tree_keeps_the_old_path(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await three_steps(pilot)
        old = app.snapshot.path
        await pilot.press("comma", "comma", "3")  # at step 2, pick the third candidate
        await settle(pilot)
        path = app.snapshot.path
        assert app.snapshot.cursor is None and len(path) == 2
        assert path[0] == old[0] and path[1].forced and path[1].rank == 2
        assert path[1].token_id == app.snapshot.panels[1].candidates[2].token_id
        tree = app.runner.explorer.session.tree
        texts = [branch.text for branch in tree.branches()]
        assert old[1].text + old[2].text in texts  # the old steps 2 and 3, a branch of their own


async def test_the_timeline_plots_the_sessions_own_values(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("g")
        await pilot.press("space", "4", "space")
        await settle(pilot)
        timeline = app.query_one(TimelinePanel)
        assert timeline.display
        session = app.runner.explorer.session
        assert timeline.value.probabilities == tuple(token.prob for token in session.path)
        assert timeline.value.entropies == tuple(panel.entropy for panel in session.panels)
        assert timeline.value.forced == (1,) and timeline.value.cursor is None
        await pilot.press("comma")
        await settle(pilot)
        assert timeline.value.cursor == 2


async def test_a_second_model_scores_the_same_path(tiny_model_dir):
    app = make_app(tiny_model_dir, second_options=LoadOptions(model=str(tiny_model_dir), device="cpu"))
    async with app.run_test(size=SIZE) as pilot:
        await three_steps(pilot)
        second = app.snapshot.second
        assert second is not None and len(second.path) == 3 and second.first_divergence is None
        assert all(pair.difference == 0.0 and pair.kl == 0.0 for pair in [*second.prompt[1:], *second.path])
        assert "Δlogp=+0.000" in status(app)
        await pilot.press("h", "h", "h", "h")
        await pilot.pause()
        assert app.heat == "disagreement" and "against" in legend(app)


@pytest.mark.embedded
async def test_a_second_model_with_another_tokenizer_is_said_and_the_first_goes_on(tiny_model_dir):
    app = make_app(tiny_model_dir, second_options=LoadOptions(device="cpu"))  # the embedded model
    notes = []
    app.notify = lambda message, **kwargs: notes.append(message)
    async with app.run_test(size=SIZE) as pilot:
        await three_steps(pilot)
        assert len(app.snapshot.path) == 3 and app.snapshot.second is None
        assert len(notes) == 1 and "second model is left out" in notes[0] and "tokenizer" in notes[0]


async def test_l_shows_the_logit_lens_of_the_next_token_and_of_a_past_step(tiny_model_dir):
    from tui.widgets.lens_view import LensPanel

    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await three_steps(pilot)
        await pilot.press("l")
        await settle(pilot)
        panel = app.query_one(LensPanel)
        assert panel.display and not app.query_one(TextView).display
        lens = panel.value
        assert lens.step is None and len(lens.layers) == 3  # embeddings and two layers
        assert lens.tracked[0][0] == panel_ids(app)[0]  # the top candidate first, then the panel's
        assert [token for token, _ in lens.tracked[1:]] == panel_ids(app)
        assert lens.layers[-1].probs[0] == pytest.approx(app.snapshot.distribution.candidates[0].prob, abs=1e-5)
        await pilot.press("comma")
        await settle(pilot)
        assert panel.value.step == 2 and panel.value.tracked[0][0] == app.snapshot.path[2].token_id
        await pilot.press("down")
        await pilot.pause()
        assert panel.highlighted == 1 and "highlighted" in str(panel.content.renderables[1].columns[2].header)
        await pilot.press("l")
        await pilot.pause()
        assert not panel.display and app.query_one(TextView).display
