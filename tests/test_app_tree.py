"""The tree panel, sibling keys, jumps, exports and reopened sessions, driven with Pilot."""

import json
import subprocess
import sys

from decoding.records import session_file
from tests.test_app import SIZE, make_app, settle
from tui.widgets.tree_view import TreePanel


async def branch_twice(pilot):
    """Two steps, back one, a different pick: a fork with two branches."""
    await settle(pilot)
    await pilot.press("space", "space", "backspace", "4")
    await settle(pilot)


async def test_t_shows_the_branches_and_enter_jumps_to_one(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await branch_twice(pilot)
        forced_path = app.snapshot.path
        await pilot.press("t")
        await settle(pilot)
        panel = app.query_one(TreePanel)
        assert panel.display and panel.has_focus and not app.query_one("#text").display
        assert [row.level for row in panel.rows] == [0, 1, 2, 2] and panel.rows[3].current
        assert panel.cursor == 3
        await pilot.press("up", "enter")  # the first branch, made by greedy steps
        await settle(pilot)
        assert [t.forced for t in app.snapshot.path] == [False, False]
        assert app.snapshot.path[0] == forced_path[0] and app.snapshot.distribution == app.session.distribution
        assert app.query_one(TreePanel).rows[2].current
        await pilot.press("t")
        await pilot.pause()
        assert not panel.display and app.query_one("#text").display


async def test_brackets_move_between_sibling_branches(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await branch_twice(pilot)
        forced = app.snapshot.path[-1].token_id
        await pilot.press("left_square_bracket")
        await settle(pilot)
        greedy = app.snapshot.path[-1]
        assert not greedy.forced and greedy.token_id != forced
        await pilot.press("right_square_bracket")
        await settle(pilot)
        assert app.snapshot.path[-1].token_id == forced


async def test_a_new_prompt_keeps_the_old_root_reachable(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await branch_twice(pilot)
        prompt = app.query_one("#prompt")
        prompt.value = "Something else"
        await pilot.press("tab", "enter")
        await settle(pilot)
        await pilot.press("escape", "t")
        await settle(pilot)
        rows = app.query_one(TreePanel).rows
        assert [row.text for row in rows if row.level == 0] == ["The quick brown", "Something else"]
        await pilot.press("up", "up", "enter")  # the last branch of the first prompt
        await settle(pilot)
        assert app.snapshot.prompt == "The quick brown" and len(app.snapshot.path) == 2


async def test_e_exports_the_path_in_three_formats_and_E_the_whole_tree(tiny_model_dir, tmp_path):
    app = make_app(tiny_model_dir, export_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await branch_twice(pilot)
        await pilot.press("e", "E")
        await settle(pilot)
    names = sorted(path.suffix for path in tmp_path.iterdir())
    assert names == [".csv", ".json", ".json", ".md"]
    trace = json.loads(next(tmp_path.glob("tokenstep-trace-*.json")).read_text())
    assert len(trace["steps"]) == 2 and trace["steps"][1]["chosen"]["forced"]
    assert next(tmp_path.glob("tokenstep-trace-*.md")).read_text().startswith("| Input |")
    tree = session_file.load(next(tmp_path.glob("tokenstep-tree-*.json"))).tree
    assert len(tree.nodes) == 4 and len(tree.branches()) == 4


async def test_every_change_is_saved_and_a_reopened_session_is_where_it_was(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENSTEP_DATA", str(tmp_path / "data"))
    path = tmp_path / "explore.json"
    app = make_app(tiny_model_dir, session_path=path)
    async with app.run_test(size=SIZE) as pilot:
        await branch_twice(pilot)
        path_then, panel_then = app.snapshot.path, app.snapshot.distribution
        saved = session_file.load(path)  # already saved, before quitting
        assert len(saved.tree.nodes) == 4 and saved.tree.current == app.session.tree.current
    assert session_file.last_session() == path.resolve()
    reopened = make_app(tiny_model_dir, prompt="ignored", session_path=path, saved=session_file.load(path))
    async with reopened.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert reopened.snapshot.path == path_then  # read in one pass: the panel within rounding
        now = reopened.snapshot.distribution
        assert [c.token_id for c in now.candidates] == [c.token_id for c in panel_then.candidates]
        assert all(abs(a.logprob - b.logprob) < 1e-4 for a, b in zip(now.candidates, panel_then.candidates))
        assert reopened.query_one("#prompt").value == "The quick brown"


async def test_a_session_from_another_model_is_shown_read_only(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENSTEP_DATA", str(tmp_path / "data"))
    path = tmp_path / "other.json"
    app = make_app(tiny_model_dir, session_path=path)
    async with app.run_test(size=SIZE) as pilot:
        await branch_twice(pilot)
    record = session_file.read_record(path)
    record["model"]["fingerprint"] = "0" * 16
    path.write_text(json.dumps(record))
    before = path.read_bytes()
    notes = []
    other = make_app(tiny_model_dir, session_path=path, saved=session_file.load(path))
    other.notify = lambda message, **kwargs: notes.append(message)
    async with other.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert other.snapshot.path == () and any("read-only" in note for note in notes)
        await pilot.press("t")
        await settle(pilot)
        panel = other.query_one(TreePanel)
        assert len(panel.foreign) == 4
        await pilot.press("down", "down", "enter")
        await pilot.press("space")
        await settle(pilot)
        assert other.runner.explorer.keeper.path != path
    assert path.read_bytes() == before


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "tui.cli", *args], capture_output=True, text=True, timeout=120, env=env)


def test_a_damaged_session_file_stops_the_app_with_one_line_and_is_left_alone(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"format": "tokenstep-session", "version": 1, "tree": {"nodes": [')
    result = run_cli("--session", str(path))
    assert result.returncode == 2 and "damaged" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert path.read_text().endswith("[")


def test_resume_without_a_last_session_says_so(tmp_path):
    import os

    result = run_cli("--resume", env={**os.environ, "TOKENSTEP_DATA": str(tmp_path)})
    assert result.returncode == 2 and "no session to resume" in result.stderr


async def test_x_in_the_tree_deletes_a_branch_but_not_the_one_in_use(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await branch_twice(pilot)
        await pilot.press("t")
        await settle(pilot)
        await pilot.press("x", "x")  # the highlighted row is where the session stands: refused
        await settle(pilot)
        assert len(app.query_one(TreePanel).rows) == 4
        await pilot.press("up", "x")  # one x only asks
        await settle(pilot)
        assert len(app.query_one(TreePanel).rows) == 4 and "x again deletes" in str(app.query_one(TreePanel).content)
        await pilot.press("down", "up", "x")  # another key in between: it asks again
        await settle(pilot)
        assert len(app.query_one(TreePanel).rows) == 4
        await pilot.press("x")
        await settle(pilot)
        rows = app.query_one(TreePanel).rows
        assert len(rows) == 2 and rows[-1].current and len(app.snapshot.path) == 2  # no fork left: one run


def test_the_command_opens_the_named_or_last_session_with_its_settings(tiny_model_dir, tmp_path, monkeypatch):
    from decoding.core.settings import Strategy
    from tui import cli
    from tui.app import TokenstepApp

    monkeypatch.setenv("TOKENSTEP_DATA", str(tmp_path / "data"))
    opened = []
    monkeypatch.setattr(TokenstepApp, "run", lambda self: opened.append(self))
    model = ["--model", str(tiny_model_dir), "--device", "cpu"]
    assert cli.main(model) == 0  # no --session: a new file in the data folder
    assert opened[-1].session_path.parent == tmp_path / "data" / "sessions" and opened[-1].saved is None

    path = tmp_path / "s.json"
    from decoding.engines.registry import LoadOptions, load_engine
    from decoding.records import session_file
    from decoding.search.session import Session

    engine = load_engine(LoadOptions(model=str(tiny_model_dir), device="cpu"))
    session = Session(engine, Strategy(kind="sample", top_p=0.5), choices=7)
    session.reset("saved prompt")
    session.step()
    session_file.save(path, session.tree, engine, session.strategy, 7)
    session_file.remember_last(path)
    assert cli.main([*model, "--resume"]) == 0
    app = opened[-1]
    assert app.session_path == path.resolve() and app.strategy == Strategy(kind="sample", top_p=0.5) and app.choices == 7
    assert cli.main(["--session", str(path)]) == 0  # the saved model is used
    assert opened[-1].load_options.model == str(tiny_model_dir)
