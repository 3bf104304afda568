"""Rough edges a new user hit, each driven with Pilot as the user met it."""

from __future__ import annotations

import json

from decoding.core.settings import Strategy
from decoding.explorer.commands import Force
from tests.test_app import SIZE, make_app, panel_ids, settle
from tui.widgets.candidates import CandidatePanel
from tui.widgets.tree_view import TreePanel


def collect_notes(app) -> list[str]:
    notes: list[str] = []
    app.notify = lambda message, **kwargs: notes.append(message)
    return notes


async def test_a_long_candidate_list_scrolls_with_the_highlight(tiny_model_dir):
    app = make_app(tiny_model_dir, choices=40)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press(*["down"] * 30)
        await settle(pilot)
        panel = app.query_one(CandidatePanel)
        scroller = panel.parent
        row_y = panel.virtual_region.y + 1 + panel.cursor_row
        assert (
            panel.cursor_row == 30 and scroller.scroll_y <= row_y < scroller.scroll_y + scroller.scrollable_content_region.height
        )
        wanted = panel_ids(app)[30]
        await pilot.press("enter")
        await settle(pilot)
        assert app.snapshot.path[-1].token_id == wanted


async def test_the_candidate_panel_keeps_its_width_and_says_why_it_is_empty(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        widths = set()
        for _ in range(6):
            await pilot.press("space")
            await settle(pilot)
            widths.add(app.query_one("#candidates-scroll").size.width)
        eos = next(iter(app.session.engine.eos_token_ids))
        app.enqueue(Force(eos))
        await settle(pilot)
        panel = app.query_one(CandidatePanel)
        assert app.snapshot.finished == "eos" and "end of sequence" in str(panel.content)
        widths.add(app.query_one("#candidates-scroll").size.width)
        assert len(widths) == 1


async def test_q_quits_from_the_compare_view(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("c")
        await pilot.pause()
        await pilot.press("q")
        await pilot.pause()
        assert not app.is_running


async def test_the_tree_marks_where_you_stand_after_undoing_past_a_fork(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("space", "space", "backspace", "4", "space", "backspace", "backspace", "t")
        await settle(pilot)
        rows = app.query_one(TreePanel).rows
        assert sum(row.current for row in rows) == 1  # the row holding the current node, mid-run
        assert "●" in str(app.query_one(TreePanel).content)


async def test_a_branch_walked_again_by_force_is_labelled_forced(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("space", "backspace", "1", "t")  # the greedy token again, forced this time
        await settle(pilot)
        rows = app.query_one(TreePanel).rows
        assert app.snapshot.path[-1].forced and rows[-1].made_by == "forced"


async def test_brackets_without_a_sibling_say_so(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        notes = collect_notes(app)
        await settle(pilot)
        await pilot.press("space", "right_square_bracket")
        await settle(pilot)
        assert any("no other branch" in note for note in notes)


async def test_settings_errors_are_whole_sentences_beside_hyphenated_labels(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("s")
        await pilot.pause()
        screen = app.screen
        screen.query_one("#temperature").value = "0"
        screen.query_one("#repetition_penalty").value = "0.001"
        await pilot.press("enter")
        await pilot.pause()
        for name in ("temperature", "repetition_penalty"):
            error = screen.query_one(f"#{name}-error")
            text = str(error.content)
            assert text.startswith("must be a number from 0.01 to 100") and "_" not in text
            assert error.size.height >= 1 and error.content_size.width >= len("must be a number from 0.01 to 100")


async def test_e_in_the_beam_view_exports_the_search_so_far_and_replay_agrees(tiny_model_dir, tmp_path, capsys):
    from tui.cli import main

    app = make_app(tiny_model_dir, strategy=Strategy(kind="beam", num_beams=3), export_dir=tmp_path, max_new_tokens=8)
    async with app.run_test(size=SIZE) as pilot:
        notes = collect_notes(app)
        await settle(pilot)
        await pilot.press("e")
        await settle(pilot)
        assert any("Nothing to export yet" in note for note in notes)
        await pilot.press("space", "space", "e")
        await settle(pilot)
    [path] = tmp_path.glob("tokenstep-trace-*.json")
    record = json.loads(path.read_text())
    assert len(record["steps"]) == 2 and len(record["steps"][0]["beams"]) == 3 and record["finished"] is None
    record["model"] = str(tiny_model_dir)
    path.write_text(json.dumps(record))
    assert main(["replay", str(path), "--device", "cpu"]) == 0
    assert "all 2 steps agree" in capsys.readouterr().out


async def test_a_session_from_other_weights_with_the_same_tokenizer_opens_read_only(tiny_model_dir, tmp_path):
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from decoding.records import session_file

    other = tmp_path / "fine-tuned"
    shutil.copytree(tiny_model_dir, other)
    model = AutoModelForCausalLM.from_pretrained(other)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01)
    model.save_pretrained(other)
    path = tmp_path / "s.json"
    app = make_app(other, session_path=path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("space", "space")
        await settle(pilot)
    written = path.read_bytes()
    app = make_app(tiny_model_dir, session_path=path, saved=session_file.load(path))
    async with app.run_test(size=SIZE) as pilot:
        notes = collect_notes(app)
        await settle(pilot)
        assert app.snapshot.path == () and app.runner.explorer.keeper.path != path and app.runner.explorer.keeper.foreign[0]
    assert path.read_bytes() == written and any("read-only" in note for note in notes)


async def test_the_palette_screenshot_goes_where_exports_go(tiny_model_dir, tmp_path):
    app = make_app(tiny_model_dir, export_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.deliver_screenshot()
        for _ in range(50):
            await pilot.pause(0.05)
            if list(tmp_path.glob("*.svg")):
                break
    assert list(tmp_path.glob("*.svg"))


async def test_no_failure_while_opening_leaves_the_spinner_waiting(tiny_model_dir, monkeypatch):
    from decoding.search.session import Session

    def broken(self, *args, **kwargs):
        raise ValueError("something no one foresaw")

    monkeypatch.setattr(Session, "reset", broken)
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        notes = collect_notes(app)
        await settle(pilot)
        assert app.query_one("#main").display and any("something no one foresaw" in note for note in notes)

    monkeypatch.setattr(Session, "__init__", broken)
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert "something no one foresaw" in str(app.query_one("#loading-text").content)
        assert "m to try another model" in str(app.query_one("#loading-text").content)
