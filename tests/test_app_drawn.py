"""What the terminal is sent, read back cell by cell (characters and styles): the views must never lie
(issue 24's newcomer trial, at 120 and 80 columns, on the tiny model)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.cells import cell_len
from rich.color import Color, ColorSystem
from rich.style import Style
from textual import events
from textual.widget import Widget

from decoding.core.settings import Strategy
from decoding.engines.registry import LoadOptions
from tests.test_app import SIZE, make_app, settle
from tui.widgets.candidates import CandidatePanel
from tui.widgets.text_view import TextView, heat_named
from tui.widgets.timeline import whole_ticks

NARROW = (80, 24)


@dataclass(frozen=True)
class Row:
    """One row of the screen: a character and a style per cell (a wide character's second cell is "")."""

    cells: tuple[str, ...]
    styles: tuple[Style, ...]

    @property
    def text(self) -> str:
        return "".join(self.cells)

    def crop(self, start: int, end: int) -> Row:
        return Row(self.cells[start:end], self.styles[start:end])

    def find(self, text: str, start: int = 0) -> int:
        """The first cell of `text` at or after cell `start`."""
        for x in range(start, len(self.cells)):
            if "".join(self.cells[x:]).startswith(text):
                return x
        raise AssertionError(f"{text!r} is not drawn in {self.text!r}")

    def colours(self, start: int, text: str) -> set[Color | None]:
        """The foreground colours of `text`'s cells, drawn from cell `start`."""
        return {style.color for style in self.styles[start : start + cell_len(text)]}


def drawn(app) -> list[Row]:
    """The whole screen, as Textual paints it for the terminal."""
    rows = []
    for strip in app.screen._compositor.render_strips():
        cells: list[str] = []
        styles: list[Style] = []
        for text, style, _ in strip:
            for char in text:
                width = cell_len(char)
                cells += [char, *[""] * (width - 1)]
                styles += [style or Style()] * width
        rows.append(Row(tuple(cells), tuple(styles)))
    return rows


def rows_of(app, widget: Widget) -> list[Row]:
    """The rows drawn inside `widget`'s content (its border and padding left out)."""
    region = widget.content_region
    return [row.crop(region.x, region.right) for row in drawn(app)[region.y : region.bottom]]


def footer(app) -> str:
    return drawn(app)[-1].text


# --- the heat views: every token tinted as the legend says -------------------------------------

# Which legend step each value falls in, as the legend's labels read (≥50% ≥20% ≥5% <5% and so on).
STEP_OF = {
    "probability": lambda token, panel: next(i for i, bound in enumerate((0.5, 0.2, 0.05, 0.0)) if token.prob >= bound),
    "entropy": lambda token, panel: next(i for i, bound in enumerate((1.0, 2.5, 4.0, float("inf"))) if panel.entropy < bound),
    "rank": lambda token, panel: next(i for i, bound in enumerate((1, 10, 100, float("inf"))) if token.rank < bound),
}


def legend_colours(app, heat: str) -> list[Color | None]:
    """The colour each step's label is drawn in, read off the legend."""
    row = rows_of(app, app.query_one(TextView).query_one("#legend"))[0]
    colours, at = [], row.find(f"heat: {heat}")
    for label in heat_named(heat).labels:
        at = row.find(label, at)
        (colour,) = row.colours(at, label)
        colours.append(colour)
        at += cell_len(label)
    return colours


async def test_generated_tokens_are_drawn_in_the_legends_colour_for_their_value_under_every_heat(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("space", "space", "space")
        await settle(pilot)
        snapshot = app.snapshot
        generated = "".join(snapshot.pieces)
        first_line = rows_of(app, app.query_one("#running-text"))[0]
        assert first_line.text.startswith(snapshot.prompt + generated)  # printable tokens, on one line
        tints = legend_colours(app, "probability")
        assert len(set(tints)) == 4 and None not in tints
        for heat in ("probability", "entropy", "rank", "off"):
            assert app.heat == heat
            row = rows_of(app, app.query_one("#running-text"))[0]
            plain = row.colours(0, snapshot.prompt[0])  # the prompt's first token has no score: untinted
            at = cell_len(snapshot.prompt)
            for token, panel, piece in zip(snapshot.path, snapshot.panels, snapshot.pieces):
                expected = plain if heat == "off" else {legend_colours(app, heat)[STEP_OF[heat](token, panel)]}
                assert row.colours(at, piece) == expected, f"{piece!r} under the {heat} heat"
                assert not any(style.underline for style in row.styles[at : at + cell_len(piece)])  # none forced
                at += cell_len(piece)
            if heat == "off":
                assert not plain & set(tints)
            await pilot.press("h")
            await pilot.pause()


async def test_the_legends_steps_stay_apart_in_256_and_in_16_colours(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        row = rows_of(app, app.query_one(TextView).query_one("#legend"))[0]
        control = row.find("control token")
        text = rows_of(app, app.query_one("#running-text"))[0]
        shown = [*legend_colours(app, "probability"), *row.colours(control, "control token"), *text.colours(0, "T")]
        assert all(colour is not None for colour in shown) and len(shown) == 6
        for system in (ColorSystem.TRUECOLOR, ColorSystem.EIGHT_BIT, ColorSystem.STANDARD):
            downsampled = [colour.downgrade(system) for colour in shown if colour is not None]
            assert len(set(downsampled)) == len(shown), f"two legend steps look the same in {system.name}: {downsampled}"


# --- the candidate panel and the palette ------------------------------------------------------


async def palette(pilot, query: str) -> None:
    await pilot.press("ctrl+p")
    await pilot.pause()
    await pilot.press(*query)
    await pilot.pause(0.5)
    await pilot.press("enter")
    await settle(pilot)


def candidate_rows(app) -> list[str]:
    return [row.text.rstrip() for row in rows_of(app, app.query_one(CandidatePanel))]


async def test_switching_to_a_reshaping_strategy_from_the_palette_keeps_one_line_per_candidate(tiny_model_dir):
    app = make_app(tiny_model_dir, strategy=Strategy(temperature=1.5))  # greedy: the temperature waits
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await palette(pilot, "Switch to sampling")
        assert app.snapshot.strategy.kind == "sample"
        for size in (SIZE, (130, 36), SIZE):
            await pilot.resize_terminal(*size)
            await pilot.press("space")
            await settle(pilot)
            rows = candidate_rows(app)
            assert rows[0].split() == ["#", "token", "model", "strategy", "logprob"]
            ranks = [row.split()[0] for row in rows[1:11]]
            assert ranks == [str(rank) for rank in range(1, 11)]  # ten candidates, one line each
            assert all(row.endswith(f"{c.logprob:.3f}") for row, c in zip(rows[1:], app.snapshot.distribution.candidates))


async def test_the_palettes_set_candidates_shown_edits_the_candidates_field(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await palette(pilot, "Set candidates shown")
        assert app.screen.focused is not None and app.screen.focused.id == "choices"
        await pilot.press("backspace", "backspace", "4", "0", "enter")
        await settle(pilot)
        assert app.snapshot.choices == 40 and app.snapshot.strategy == Strategy()
        assert len(app.snapshot.distribution.candidates) == 40


async def test_keys_sent_in_one_burst_to_a_settings_field_act_in_the_order_sent(tiny_model_dir):
    app = make_app(tiny_model_dir, strategy=Strategy(kind="sample", temperature=1.5))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("s")
        await pilot.pause()
        field = app.screen.query_one("#temperature")
        assert app.screen.focused is field
        # As a terminal sends them when they come together (tmux send-keys BSpace 7, a paste of keys):
        # all at once, none waiting for the one before it to be handled.
        for key, character in [("backspace", "\x7f"), ("7", "7"), ("left", None), ("left", None), ("backspace", "\x7f")]:
            app._driver.send_message(events.Key(key, character))
        app._driver.send_message(events.Key("2", "2"))
        await pilot.pause(0.2)
        assert rows_of(app, field)[0].text.strip() == "2.7"
        await pilot.press("enter")
        await settle(pilot)
        assert app.snapshot.strategy.temperature == 2.7


# --- room for the text, the footer, ctrl+c ------------------------------------------------------


@pytest.mark.parametrize(("size", "keys"), [(SIZE, "w"), (NARROW, "w"), (NARROW, "lgw")])
async def test_the_processors_panel_leaves_the_text_room_for_words(tiny_model_dir, size, keys):
    app = make_app(tiny_model_dir, strategy=Strategy(kind="sample", temperature=1.5, top_k=20, top_p=0.9))
    async with app.run_test(size=size) as pilot:
        await settle(pilot)
        await pilot.press(*keys)
        await settle(pilot)
        left = app.query_one("#lens" if "l" in keys else "#text")
        assert left.display and left.region.width >= 28
        processors = app.query_one("#processors")
        assert processors.display and processors.region.x >= left.region.right
        if size == SIZE:  # wide enough for all of it: nothing is cut at the right
            assert processors.region.right <= size[0] and "ruled out" in "".join(r.text for r in rows_of(app, processors))


async def test_the_footer_shows_the_keys_most_needed_at_80_columns_and_every_key_at_120(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=NARROW) as pilot:
        await settle(pilot)
        for shown in ("space Step", "1-9 Pick", "⌫ Undo", "p Play", "s Settings", "h Heat", "q Quit", "esc Stop", "^p palette"):
            assert shown in footer(app)
        await pilot.resize_terminal(*SIZE)
        await pilot.pause(0.2)
        for shown in ("c Compare", "t Tree", ",/. Look back", "e Export", "^p palette"):
            assert shown in footer(app)
        assert footer(app).rstrip().endswith("^p palette")


async def test_ctrl_c_quits(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+c")
        await pilot.pause()
        assert not app.is_running


# --- the status line and the timeline ------------------------------------------------------------


async def test_a_second_model_gets_a_status_line_of_its_own_and_the_model_line_stays(tiny_model_dir):
    app = make_app(tiny_model_dir, second_options=LoadOptions(model=str(tiny_model_dir), device="cpu"))
    async with app.run_test(size=NARROW) as pilot:
        await settle(pilot)
        await pilot.press("space", "space")
        await settle(pilot)
        status = [row.text.strip() for row in rows_of(app, app.query_one("#status"))]
        assert len(status) == 3
        assert status[0].startswith("step 2 │ last p=") and "nats" in status[0]
        assert status[1].endswith("│ greedy") and app.view.model in status[1]
        assert status[2].startswith("second model Δlogp=+0.000 KL=0.000 │ greedy agree so far │ ")


async def test_the_timeline_numbers_its_steps_in_whole_numbers(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("g", "space", "space", "space")
        await settle(pilot)
        await pilot.pause(0.2)
        rows = [row.text for row in rows_of(app, app.query_one("#timeline"))]
        axis = next(index for index, row in enumerate(rows) if row.strip() == "step")
        assert rows[axis - 1].split() == ["1", "2", "3"]


@given(st.integers(1, 10**9), st.integers(2, 40))
def test_the_timelines_ticks_are_whole_steps_from_1_evenly_apart_within_the_room(steps, most):
    ticks = whole_ticks(steps, most)
    assert ticks[0] == 1 and ticks[-1] <= steps and len(ticks) <= most
    assert all(isinstance(tick, int) for tick in ticks)
    assert len({b - a for a, b in zip(ticks[1:], ticks[2:])}) <= 1  # evenly apart after the 1
    if most >= 3:  # room for three labels: the last is less than one spacing short of the last step
        spacing = ticks[-1] - ticks[-2] if len(ticks) > 2 else ticks[-1]
        assert steps - ticks[-1] < spacing
