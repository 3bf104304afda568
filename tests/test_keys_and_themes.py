"""Your own keys (a keymap file, through Textual's set_keymap: the footer and the palette show them)
and colours (Textual's themes by name, heat colours from the theme, a colour-blind-safe palette)."""

from __future__ import annotations

import pytest
from rich.color import Color, ColorSystem

from tests.test_app import SIZE, make_app, settle
from tests.test_app_drawn import footer, legend_colours
from tests.test_hostile import run_cli
from tui.app import known_bindings
from tui.heat_colours import COLOUR_BLIND_TINTS
from tui.keys import read_keymap


async def test_a_keymap_file_remaps_step_and_the_footer_and_palette_show_it(tiny_model_dir, tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text('step = "n"\n')
    app = make_app(tiny_model_dir, keymap=read_keymap(keys, known_bindings()))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert "n Step" in footer(app) and "space Step" not in footer(app)
        await pilot.press("n")
        await settle(pilot)
        assert len(app.snapshot.path) == 1
        await pilot.press("space")  # no longer step
        await settle(pilot)
        assert len(app.snapshot.path) == 1
        from tui.actions import ACTIONS
        from tui.palette import ActionCommands

        step = next(action for action in ACTIONS if action.id == "step")
        assert ActionCommands(app.screen)._help(step).endswith("key: n")


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ('stepp = "n"\n', "no binding is called 'stepp'"),
        ('step = "p"\n', "'p' is bound twice: to step and to play"),
        ("step = [n\n", "not TOML"),
        ("step = 3\n", "step = 3 is not keys"),
        ('step = "n n"\n', "is not keys"),
    ],
)
def test_a_bad_keymap_is_one_line_naming_the_place_and_the_app_does_not_start(tmp_path, content, said):
    keys = tmp_path / "keys.toml"
    keys.write_text(content)
    code, out, err = run_cli("--keys", str(keys))
    assert code == 2 and said in err and str(keys) in err and len(err.strip().splitlines()) == 1


def test_a_key_may_be_bound_on_a_screen_and_in_the_app_alike(tmp_path):
    keys = tmp_path / "keys.toml"
    keys.write_text('"compare.close" = "x"\n')  # the tree panel's delete is x too, but not on the compare view
    assert read_keymap(keys, known_bindings()) == {"compare.close": "x"}


def test_an_unknown_theme_is_one_line(tmp_path):
    code, _, err = run_cli("--theme", "no-such-theme")
    assert code == 2 and "--theme: no theme is called 'no-such-theme'" in err and "nord" in err


async def test_a_theme_by_name_and_the_heat_in_its_colours(tiny_model_dir):
    app = make_app(tiny_model_dir, theme="nord", heat_colours="theme")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.theme == "nord"
        theme = app.current_theme
        shown = legend_colours(app, "probability")
        assert [shown[0], shown[1], shown[3]] == [
            Color.parse(theme.success),
            Color.parse(theme.warning),
            Color.parse(theme.error),
        ]
        app.theme = "gruvbox"  # as the palette's theme switcher sets it: the heat follows
        await pilot.pause()
        await settle(pilot)
        assert legend_colours(app, "probability")[0] == Color.parse(app.current_theme.success)


async def test_the_colour_blind_palette_is_drawn_and_its_steps_stay_apart(tiny_model_dir):
    app = make_app(tiny_model_dir, heat_colours="colour-blind")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        shown = legend_colours(app, "probability")
        assert shown == [Color.parse(tint) for tint in COLOUR_BLIND_TINTS]
        for system in (ColorSystem.TRUECOLOR, ColorSystem.EIGHT_BIT, ColorSystem.STANDARD):
            assert len({colour.downgrade(system) for colour in shown}) == 4, system.name
