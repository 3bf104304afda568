"""Attribution and steering in the app, read off what the terminal draws: the attribution heat tints
each token as its legend says (italic where the token made the target less likely), the steered and
unsteered columns hold the two models' numbers, the status line names the steering, and the session
file keeps it."""

from __future__ import annotations

import pytest
from rich.cells import cell_len
from rich.color import Color

from decoding.core.errors import SessionError
from decoding.core.steering import Steering
from decoding.engines.registry import LoadOptions, load_engine
from decoding.explorer import commands
from decoding.explorer.explorer import Explorer
from decoding.records import session_file
from decoding.records.keeper import SessionKeeper
from decoding.search.session import Session
from tests.test_app import make_app, settle
from tests.test_app_drawn import legend_colours, rows_of
from tests.test_attribution_and_steering import target_logprob
from tui.steering_screen import SteeringScreen
from tui.widgets.candidates import UNSTEERED_STYLE, CandidatePanel
from tui.widgets.status import StatusLine
from tui.widgets.text_view import ATTRIBUTION_BANDS, TextView

WIDE = (170, 40)  # the attribution legend on one row
STEERING = Steering(layer=1, scale=6.0, toward="The quick brown fox", away="Decoding picks one token")


async def until(pilot, condition, rounds=600):
    for _ in range(rounds):
        await pilot.pause(0.01)
        if condition():
            await pilot.pause()
            return
    raise AssertionError("it never came")


def band(value: float, largest: float) -> int:
    share = abs(value) / largest
    return next((i for i, bound in enumerate(ATTRIBUTION_BANDS) if share < bound), len(ATTRIBUTION_BANDS))


async def test_a_attributes_the_highlighted_candidate_drawn_in_the_legends_colours(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("space", "space", "space", "down", "a")
        await settle(pilot)
        await until(pilot, lambda: app.snapshot.attribution is not None)
        snapshot, attribution = app.snapshot, app.snapshot.attribution
        target = snapshot.distribution.candidates[1]
        assert app.heat == "attribution" and attribution.step == 3 and attribution.target == target.label
        # leave-one-out, as deleting each token of the context gives on the model itself
        model = load_engine(LoadOptions(model=str(tiny_model_dir), device="cpu"))
        ids = app.session.ids
        whole = target_logprob(model.model, ids, target.token_id)
        deleted = [whole - target_logprob(model.model, ids[:i] + ids[i + 1 :], target.token_id) for i in range(len(ids))]
        assert [*attribution.prompt, *attribution.path] == pytest.approx(deleted, abs=1e-3)
        legend_row = rows_of(app, app.query_one(TextView).query_one("#legend"))[0]
        assert f"(leave-one-out) of {target.label} at step 4" in legend_row.text
        tints = legend_colours(app, "attribution")
        assert len(set(tints)) == 4
        row = rows_of(app, app.query_one("#running-text"))[0]
        at = 0
        pieces = [*snapshot.prompt_pieces, *snapshot.pieces]
        for piece, value in zip(pieces, [*attribution.prompt, *attribution.path]):
            cells = row.styles[at : at + cell_len(piece)]
            assert {style.color for style in cells} == {tints[band(value, attribution.largest)]}, piece
            assert all(bool(style.italic) == (value < 0) for style in cells), f"{piece!r}: italic only against"
            at += cell_len(piece)


async def test_A_changes_the_method_and_attributes_again(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("space", "a")
        await until(pilot, lambda: app.snapshot.attribution is not None)
        await pilot.press("A")
        await until(pilot, lambda: app.snapshot.attribution.method == "grad_x_input")
        assert "(gradient × input)" in rows_of(app, app.query_one("#legend"))[0].text
        await pilot.press("h")  # the heat cycles on; the attribution stays for when it comes back
        assert app.heat == "probability" and app.snapshot.attribution is not None


def probs_of(model_dir, steering: Steering | None, text: str) -> dict[int, float]:
    engine = load_engine(LoadOptions(model=str(model_dir), device="cpu"))
    if steering is not None:
        engine.steer(steering)
    session = Session(engine)
    session.reset(text)
    return dict(enumerate(session.next.scores.logprobs.exp().tolist()))


def panel_rows(app) -> list[str]:
    return [row.text for row in rows_of(app, app.query_one(CandidatePanel))]


async def test_steered_and_unsteered_columns_hold_each_model_and_minus_nudges_the_scale(tiny_model_dir):
    app = make_app(tiny_model_dir, steering=STEERING)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await until(pilot, lambda: app.snapshot.distribution.candidates[0].unsteered_prob is not None)
        status = rows_of(app, app.query_one(StatusLine))[0].text
        assert "steer L1 ×6 toward 'The quick brown fox' away 'Decoding picks one token'" in status
        header = panel_rows(app)[0]
        assert "steered" in header and "unsteered" in header
        plain, steered = (
            probs_of(tiny_model_dir, None, "The quick brown"),
            probs_of(tiny_model_dir, STEERING, "The quick brown"),
        )
        rows = rows_of(app, app.query_one(CandidatePanel))
        for candidate, row in zip(app.snapshot.distribution.candidates, rows[1:]):
            assert candidate.prob == pytest.approx(steered[candidate.token_id], abs=1e-5)
            assert candidate.unsteered_prob == pytest.approx(plain[candidate.token_id], abs=1e-5)
            drawn = f"{100 * candidate.unsteered_prob:.2f}%"
            at = row.find(drawn, row.find(f"{100 * candidate.prob:.2f}%") + 1)
            if candidate is not app.snapshot.distribution.candidates[0]:  # (the highlighted row has the highlight's)
                assert row.colours(at, drawn) == {Color.parse(UNSTEERED_STYLE)}  # the unsteered column's own colour
        await pilot.press("minus")
        await settle(pilot)
        assert "steer L1 ×5 " in rows_of(app, app.query_one(StatusLine))[0].text
        five = probs_of(tiny_model_dir, STEERING.with_scale(5.0), "The quick brown")
        assert all(c.prob == pytest.approx(five[c.token_id], abs=1e-5) for c in app.snapshot.distribution.candidates)


async def test_the_steering_screen_applies_refuses_in_one_line_and_turns_it_off(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("S")
        await until(pilot, lambda: isinstance(app.screen, SteeringScreen))
        screen = app.screen
        screen.query_one("#steer-toward").value = "The quick brown fox"
        screen.query_one("#steer-away").value = "Decoding picks one token"
        screen.query_one("#steer-layer").value = "x"
        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, SteeringScreen)
        assert "--steer-layer must be a layer's number (got 'x')" in str(screen.query_one("#steering-error").render())
        screen.query_one("#steer-layer").value = "1"
        screen.query_one("#steer-scale").value = "6"
        await pilot.press("enter")
        await settle(pilot)
        assert app.view.steering == STEERING and "steer L1 ×6" in rows_of(app, app.query_one(StatusLine))[0].text
        await pilot.press("S")
        await until(pilot, lambda: isinstance(app.screen, SteeringScreen))
        assert app.screen.query_one("#steer-scale").value == "6"  # the screen opens on the steering in force
        await pilot.press("ctrl+o")
        await settle(pilot)
        assert app.view.steering is None and "steer" not in rows_of(app, app.query_one(StatusLine))[0].text
        assert "unsteered" not in panel_rows(app)[0]


async def test_a_layer_the_model_has_not_is_one_notice_and_nothing_changes(tiny_model_dir):
    app = make_app(tiny_model_dir)
    notes = []
    app.notify = lambda message, **kwargs: notes.append(message)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("space")
        await settle(pilot)
        before = app.snapshot
        app.runner.pause_then(commands.Steer(Steering(layer=7, scale=1.0, toward="a", away="b")))
        await settle(pilot)
        assert any("--steer-layer 7: the model has layers 0 to 1." in note for note in notes)
        assert app.snapshot.path == before.path and app.view.steering is None


def test_a_session_file_keeps_the_steering_and_reopens_steered(tiny_model_dir, tmp_path):
    path = tmp_path / "steered.json"
    engine = load_engine(LoadOptions(model=str(tiny_model_dir), device="cpu"))
    explorer = Explorer(engine, keeper=SessionKeeper(path, None, print))
    explorer.open("The quick brown")
    explorer.steer(STEERING)
    explorer.step()
    explorer.step()
    explorer.save()
    assert session_file.load(path).steering == STEERING
    reopened = Explorer(
        load_engine(LoadOptions(model=str(tiny_model_dir), device="cpu")),
        keeper=SessionKeeper(path, session_file.load(path), print),
    )
    reopened.open(None)
    assert reopened.steering == STEERING and reopened.session.path == explorer.session.path
    expected = explorer.session.distribution.candidates
    assert [c.prob for c in reopened.session.distribution.candidates] == pytest.approx([c.prob for c in expected], abs=1e-5)
    explorer.steer(None)
    explorer.step()
    explorer.save()
    assert session_file.load(path).steering is None  # a later line without it: steered no more


def test_a_session_files_steering_is_checked_like_any_other_field(tiny_model_dir, tmp_path):
    import json

    path = tmp_path / "steered.json"
    explorer = Explorer(
        load_engine(LoadOptions(model=str(tiny_model_dir), device="cpu")), keeper=SessionKeeper(path, None, print)
    )
    explorer.open("The quick brown")
    explorer.steer(STEERING)
    explorer.save()
    record = session_file.read_record(path)  # the first line, the steering's line applied
    record["steering"]["scale"] = 1e9
    path.write_text(json.dumps(record))
    before = path.read_bytes()
    with pytest.raises(SessionError, match="is damaged .*--steer-scale must be from -1000 to 1000"):
        session_file.load(path)
    assert path.read_bytes() == before


def test_a_saved_steering_whose_file_is_gone_reopens_unsteered_with_a_note(tiny_model_dir, tmp_path):
    import json

    path = tmp_path / "steered.json"
    explorer = Explorer(
        load_engine(LoadOptions(model=str(tiny_model_dir), device="cpu")), keeper=SessionKeeper(path, None, print)
    )
    explorer.open("The quick brown")
    explorer.step()
    explorer.save()
    record = session_file.read_record(path)
    record["steering"] = {"layer": 1, "scale": 2.0, "vector_file": str(tmp_path / "gone.safetensors")}
    path.write_text(json.dumps(record) + "\n")
    notes = []
    engine = load_engine(LoadOptions(model=str(tiny_model_dir), device="cpu"))
    reopened = Explorer(engine, keeper=SessionKeeper(path, session_file.load(path), notes.append))
    reopened.open(None)
    assert reopened.steering is None and reopened.session.path == explorer.session.path
    assert len(notes) == 1 and notes[0].startswith("The session's steering is left out: --steer-vector")


async def test_the_steering_screen_shows_what_was_typed_literally(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("S")
        await until(pilot, lambda: isinstance(app.screen, SteeringScreen))
        app.screen.query_one("#steer-layer").value = "[red]\x1b[31m"
        await pilot.press("enter")
        await pilot.pause()
        error = rows_of(app, app.screen.query_one("#steering-error"))[0]
        assert "(got '[red]\\x1b[31m')" in error.text  # markup and escapes as typed, never applied
