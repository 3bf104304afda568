"""SVG snapshots of the explorer at a fixed size, so a layout regression shows in review.

Update them after an intended change with `make test PYTEST_ARGS="--snapshot-update"`, then look at the SVGs.
"""

from textual.widgets import Input

from decoding.engines.registry import LoadOptions
from tests.test_app import SIZE, make_app, settle
from tui.app import TokenstepApp


async def still(pilot):
    """No blinking cursor or animation, so the same screen gives the same picture."""
    pilot.app.animation_level = "none"
    await settle(pilot)
    for field in pilot.app.screen.query(Input):
        field.cursor_blink = False
    await pilot.pause()


def test_main_screen_after_steps_and_a_forced_pick(snap_compare, tiny_model_dir):
    async def run_before(pilot):
        await still(pilot)
        await pilot.press("space", "3", "space")
        await still(pilot)

    assert snap_compare(make_app(tiny_model_dir), terminal_size=SIZE, run_before=run_before)


def test_main_screen_under_top_k_sampling(snap_compare, tiny_model_dir):
    from decoding.core.settings import Strategy

    app = make_app(tiny_model_dir, strategy=Strategy(kind="sample", top_k=3, temperature=0.8))
    assert snap_compare(app, terminal_size=SIZE, run_before=still)


def test_settings_screen(snap_compare, tiny_model_dir):
    async def run_before(pilot):
        await still(pilot)
        await pilot.press("s")
        await still(pilot)

    assert snap_compare(make_app(tiny_model_dir), terminal_size=SIZE, run_before=run_before)


def test_failed_load_screen(snap_compare):
    app = TokenstepApp(LoadOptions(model="./no/such/model", device="cpu"))
    assert snap_compare(app, terminal_size=SIZE, run_before=still)


def test_beam_view_with_a_forced_token(snap_compare, tiny_model_dir):
    from decoding.core.settings import Strategy

    async def run_before(pilot):
        await still(pilot)
        await pilot.press("space", "space", "j", "4")
        await still(pilot)

    app = make_app(tiny_model_dir, strategy=Strategy(kind="beam", num_beams=3), max_new_tokens=6)
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_processor_view_under_a_reshaping_strategy(snap_compare, tiny_model_dir):
    from decoding.core.settings import Strategy

    async def run_before(pilot):
        await still(pilot)
        await pilot.press("space", "w")
        await still(pilot)

    strategy = Strategy(kind="sample", temperature=0.7, top_k=5, top_p=0.8, repetition_penalty=1.3)
    assert snap_compare(make_app(tiny_model_dir, strategy=strategy), terminal_size=SIZE, run_before=run_before)


def test_tree_panel_with_two_prompts_and_a_fork(snap_compare, tiny_model_dir):
    async def run_before(pilot):
        await still(pilot)
        await pilot.press("space", "space", "backspace", "4", "space")
        await still(pilot)
        pilot.app.query_one("#prompt").value = "Another prompt"
        await pilot.press("tab", "enter")
        await still(pilot)
        await pilot.press("escape", "space", "t")
        await still(pilot)

    assert snap_compare(make_app(tiny_model_dir), terminal_size=SIZE, run_before=run_before)


def test_chat_view_with_two_turns(snap_compare, tiny_chat_model_dir):
    from decoding.core.chat import PromptRequest

    async def run_before(pilot):
        await still(pilot)
        await pilot.press("tab", *"hello", "ctrl+s")
        await still(pilot)
        await pilot.press("space", "space", "space", "tab", *"again", "ctrl+s")
        await still(pilot)
        await pilot.press("escape", "space", "space")
        await still(pilot)

    app = make_app(tiny_chat_model_dir, prompt=PromptRequest("", chat=True))
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_heat_views_entropy_and_rank(snap_compare, tiny_model_dir):
    """The whole text, prompt included, tinted by the entropy, then by GLTR's rank buckets."""

    async def run_before(pilot):
        await still(pilot)
        await pilot.press("space", "space", "3", "space", "h")
        await still(pilot)

    assert snap_compare(make_app(tiny_model_dir), terminal_size=SIZE, run_before=run_before)

    async def rank_view(pilot):
        await run_before(pilot)
        await pilot.press("h")
        await still(pilot)

    assert snap_compare(make_app(tiny_model_dir), terminal_size=SIZE, run_before=rank_view)


def test_a_past_step_looked_at_with_the_timeline_open(snap_compare, tiny_model_dir):
    async def run_before(pilot):
        await still(pilot)
        await pilot.press("g", "space", "space", "3", "space", "space", "comma", "comma")
        await still(pilot)

    assert snap_compare(make_app(tiny_model_dir), terminal_size=SIZE, run_before=run_before)


def test_logit_lens_panel(snap_compare, tiny_model_dir):
    async def run_before(pilot):
        await still(pilot)
        await pilot.press("space", "space", "l", "down")
        await still(pilot)

    assert snap_compare(make_app(tiny_model_dir), terminal_size=SIZE, run_before=run_before)


def test_candidates_under_a_grammar(snap_compare, tiny_model_dir):
    from decoding.core.settings import Constraint, Strategy

    async def run_before(pilot):
        await still(pilot)
        await pilot.press("space", "w")
        await still(pilot)

    app = make_app(tiny_model_dir, strategy=Strategy(constraint=Constraint("regex", "[a-z]+( [a-z]+)*")))
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
