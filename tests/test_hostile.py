"""Every input is hostile until checked: escape sequences never reach the terminal, bad input gets one
line (exit status 2), and no failure leaves the app waiting or changes a file it only read.

Property-based (hypothesis) over the command line's options and over mutated trace and session files.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rich.console import Console

from tests.test_app import SIZE, make_app, settle
from tui.cli import main

# What may reach the terminal besides text: SGR colours and cursor positioning, written by Rich/Textual.
TERMINAL_OWN = re.compile(r"\x1b\[[0-9;]*[mHK]")
FORBIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # ESC, BEL, CR and the other C0/C1 controls
HOSTILE = "a\x1b]0;TITLE\x07 b\x1b[2J c\x9b31m d\u202e e"


def assert_terminal_safe(output: str) -> None:
    leftover = TERMINAL_OWN.sub("", output).replace("\n", "")
    found = FORBIDDEN.search(leftover)
    assert found is None, (
        f"a raw control character reached the terminal: {leftover[max(0, found.start() - 20) : found.end() + 20]!r}"
    )


def screen_bytes(app) -> str:
    """What the terminal would be sent for the whole screen (as Textual paints it)."""
    console = Console(
        width=app.size.width,
        height=app.size.height,
        file=io.StringIO(),
        force_terminal=True,
        color_system="truecolor",
        legacy_windows=False,
    )
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.file.getvalue()


def run_cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def cached_engine(tiny_engine, monkeypatch):
    """The command line's model loads answered by one tiny engine (each test runs many commands)."""
    import decoding.engines.registry

    monkeypatch.setattr(decoding.engines.registry, "load_engine", lambda options, progress=None: tiny_engine)
    return tiny_engine


# --- escapes never reach the terminal ------------------------------------------------------------


async def test_escape_sequences_in_prompt_model_and_files_are_shown_escaped_in_the_app(tiny_model_dir, tmp_path):
    """The prompt box, the text view, notifications, the tree, the status line and the loading label."""
    from decoding.records import session_file

    app = make_app(tiny_model_dir, prompt=HOSTILE, session_path=tmp_path / "s.json")
    notes = []
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("space", "2")
        await settle(pilot)
        app.notify(f"a note naming {HOSTILE}")  # every notification passes the same gate
        await pilot.press("t")
        await settle(pilot)
        assert_terminal_safe(screen_bytes(app))
        assert app.snapshot.prompt == HOSTILE  # the model read the prompt as given
        await pilot.press("t", "tab", "enter")  # the box sent unedited stands for the prompt itself
        await settle(pilot)
        assert app.snapshot.prompt == HOSTILE and app.snapshot.path == ()
        notes.append(screen_bytes(app))
    assert_terminal_safe(notes[0])

    record = session_file.read_record(tmp_path / "s.json")
    record["model"]["model_id"] = HOSTILE  # a file from "another model" whose name drives the terminal
    record["model"]["weights"] = "0" * 16
    for node in record["tree"]["nodes"]:
        node["made_by"] = HOSTILE
    (tmp_path / "s.json").write_text(json.dumps(record))
    saved = session_file.load(tmp_path / "s.json")
    app = make_app(tiny_model_dir, session_path=tmp_path / "s.json", saved=saved)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("t")
        await settle(pilot)
        assert app.runner.explorer.keeper.foreign[1].startswith(HOSTILE)
        assert_terminal_safe(screen_bytes(app))

    from decoding.engines.registry import LoadOptions
    from tui.app import TokenstepApp

    failed = TokenstepApp(LoadOptions(model=str(tmp_path / HOSTILE), device="cpu"))
    async with failed.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert "no such folder" in str(failed.query_one("#loading-text").content)
        assert_terminal_safe(screen_bytes(failed))


def test_escape_sequences_never_reach_the_terminal_from_the_command_line(cached_engine, tmp_path):
    code, out, err = run_cli("trace", HOSTILE, "--steps", "2")
    assert code == 0 and "TITLE" in out
    assert_terminal_safe(out + err)
    for fmt in ("json", "csv", "markdown"):
        code, out, err = run_cli("trace", HOSTILE, "--steps", "2", "--format", fmt)
        assert code == 0
        assert_terminal_safe(out + err)
    assert json.loads(run_cli("trace", HOSTILE, "--steps", "1", "--format", "json")[1])["prompt"] == HOSTILE

    trace = tmp_path / "t.json"
    record = json.loads(run_cli("trace", "hello", "--steps", "2", "--format", "json")[1])
    trace.write_text(json.dumps({**record, "model": HOSTILE, "prompt_ids": "nonsense"}))
    code, out, err = run_cli("replay", str(trace))
    assert code == 2 and "prompt_ids" in err
    assert_terminal_safe(out + err)


def test_a_model_name_with_escapes_is_named_escaped():
    code, out, err = run_cli("trace", "hi", "--model", f"./{HOSTILE}", "--device", "cpu")
    assert code == 2 and "no such folder" in err
    assert_terminal_safe(out + err)


# --- bad input gets one line ---------------------------------------------------------------------


def assert_one_line(code: int, err: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tokenstep: ") and "Traceback" not in err, err


@pytest.mark.parametrize(
    "args, message",
    [
        (["trace", "hi", "--bogus"], "unrecognized arguments: --bogus (see tokenstep trace --help)"),
        (["trace"], "A prompt is needed: give it as an argument or with --prompt-file"),
        (["compare", "hi", "--format", "xml"], "invalid choice"),
        (["trace", "hi", "--seed", "18446744073709551616"], "--seed must be a whole number from 0 to 18446744073709551615"),
        (["trace", "hi", "--strategy", "sample", "--temperature", "1e-40"], "--temperature must be a number from 0.01"),
        (["trace", "hi", "--repetition-penalty", "1e-40"], "--repetition-penalty must be a number from 0.01"),
        (["trace", "hi", "--strategy", "beam", "--length-penalty", "1100"], "--length-penalty must be a number from -10 to 10"),
        (["trace", "hi", "--strategy", "beam", "--length-penalty", "-5000"], "--length-penalty must be a number from -10 to 10"),
        (["trace", "hi", "--top-p", "nan"], "--top-p must be greater than 0"),
        (["trace", "hi", "--model", ""], "--model is empty"),
        (["replay", "x.json", "--tolerance", "nan"], "--tolerance must be a number"),
        (["trace", "caf\udcc3"], "not valid UTF-8"),
    ],
)
def test_bad_options_get_one_line_before_anything_loads(args, message, monkeypatch):
    import decoding.engines.registry

    monkeypatch.setattr(decoding.engines.registry, "load_engine", lambda *a, **k: pytest.fail("refused before loading"))
    code, _, err = run_cli(*args)
    assert_one_line(code, err)
    assert message in err


def test_a_bad_option_is_refused_before_torch_is_imported():
    code = "import sys; from tui.cli import main; rc = main(['trace', 'hi', '--steps', '0']); print(rc, 'torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["2", "False"]


def test_an_invalid_utf8_prompt_from_the_shell_is_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "tui.cli", "trace", b"caf\xc3".decode("utf-8", "surrogateescape")], capture_output=True, timeout=60
    )
    assert result.returncode == 2 and result.stderr.count(b"\n") == 1 and b"not valid UTF-8" in result.stderr


OPTION_VALUES = [
    "",
    "0",
    "1",
    "2",
    "-1",
    "0.5",
    "1e-40",
    "1e308",
    "nan",
    "inf",
    "-inf",
    "18446744073709551616",
    "abc",
    "\x1b[2J",
    "1,9",
]
OPTIONS = [
    "--steps",
    "--choices",
    "--temperature",
    "--top-k",
    "--top-p",
    "--seed",
    "--repetition-penalty",
    "--no-repeat-ngram-size",
    "--num-beams",
    "--length-penalty",
    "--strategy",
    "--format",
    "--picks",
    "--early-stopping",
    "--device",
    "--dtype",
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.tuples(st.sampled_from(OPTIONS), st.sampled_from(OPTION_VALUES + ["sample", "beam", "json", "cpu"])), max_size=4),
    st.text(max_size=12),
)
def test_any_trace_command_line_gives_a_result_or_one_line(cached_engine, options, prompt):
    args = ["trace", prompt, "--steps", "2", "--device", "cpu"] + [part for option in options for part in option]
    code, out, err = run_cli(*args)
    if code == 0:
        assert out.strip() and not err
    else:
        assert_one_line(code, err)
    assert_terminal_safe(out + err)


# --- mutated files: a result or one line, never a traceback, never a changed file ----------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def paths_in(value, path=()):
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths_in(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths_in(item, (*path, index))


def mutated(record, data):
    """The record with one place replaced by another JSON value, or removed."""
    record = json.loads(json.dumps(record))
    places = [path for path in paths_in(record) if path]
    path = data.draw(st.sampled_from(places))
    parent = record
    for key in path[:-1]:
        parent = parent[key]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(JSON_VALUES)
    return record


def write(path: Path, record) -> bytes:
    text = json.dumps(record, allow_nan=True).encode("utf-8", "surrogatepass")
    path.write_bytes(text)
    return text


@pytest.fixture
def trace_record(cached_engine):
    return json.loads(run_cli("trace", "The quick brown", "--steps", "3", "--format", "json", "--picks", "1")[1])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_replaying_a_mutated_trace_gives_a_verdict_or_one_line(trace_record, tmp_path, data):
    path = tmp_path / "trace.json"
    written = write(path, mutated(trace_record, data))
    code, out, err = run_cli("replay", str(path))
    assert code in (0, 1) or (assert_one_line(code, err) is None)
    assert_terminal_safe(out + err)
    assert path.read_bytes() == written


@pytest.fixture
def session_record(tiny_engine, tmp_path_factory):
    from decoding.core.settings import Strategy
    from decoding.records import session_file
    from decoding.search.session import Session

    session = Session(tiny_engine, Strategy(kind="sample", seed=3), choices=4)
    session.reset("hello world")
    session.step()
    session.step()
    session.undo()
    session.force(session.distribution.candidates[2].token_id)
    path = tmp_path_factory.mktemp("saved") / "s.json"
    session_file.save(path, session.tree, tiny_engine, session.strategy, 4)
    return session_file.read_record(path)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_reopening_a_mutated_session_file_opens_it_or_refuses_it_and_leaves_it_alone(session_record, tiny_engine, tmp_path, data):
    from decoding.core.errors import SessionError
    from decoding.records import session_file
    from decoding.records.keeper import SessionKeeper
    from decoding.search.session import Session

    path = tmp_path / "s.json"
    written = write(path, mutated(session_record, data))
    try:
        saved = session_file.load(path)
    except SessionError as error:
        assert "\n" not in str(error)
    else:
        notes = []
        session = Session(tiny_engine, choices=4)
        keeper = SessionKeeper(path, saved, notes.append)
        keeper.open(session, "a prompt")  # reopens it, or says why not and starts afresh: never raises
        keeper.start(session)
        assert session.distribution is not None or session.finished
        if keeper.path != path:  # refused or read-only: this exploration went to a new file
            assert notes and path.read_bytes() == written
            return
    assert path.read_bytes() == written or keeper.path == path


# --- files ---------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_the_fast_shape_check_accepts_exactly_what_the_walk_naming_places_accepts(session_record, trace_record, data):
    """Files are checked by the spec compiled into predicates, and walked again for the message only
    when that refuses: it must never let through what the walk would refuse, nor refuse what it accepts."""
    from decoding.core import schema
    from decoding.explorer import replay
    from decoding.records import session_file

    for record, spec in ((session_record, session_file.SESSION_SHAPE), (trace_record, replay.PATH_TRACE_SHAPE)):
        value = mutated(record, data)
        try:
            walked = schema._fits(value, spec, "file")
        except schema.ShapeError:
            walked = False
        assert schema._predicate(spec)(value) == walked


def test_session_paths_that_are_not_regular_files_are_refused_without_blocking(tmp_path, monkeypatch):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero"), tmp_path):
        code, _, err = run_cli("--session", str(path))
        assert_one_line(code, err)
        assert "not a regular file" in err or "Is a directory" in err
    monkeypatch.setenv("TOKENSTEP_DATA", str(tmp_path / "data"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "last-session").write_bytes(b"\xff\xfe")
    code, _, err = run_cli("--resume")
    assert_one_line(code, err)
    assert "not UTF-8" in err
    monkeypatch.setenv("TOKENSTEP_DATA", str(tmp_path / "a-file"))
    (tmp_path / "a-file").write_text("not a folder")
    code, _, err = run_cli()
    assert_one_line(code, err)
    assert "Cannot make the sessions folder" in err


@pytest.fixture
def session_with_changes(tiny_engine, tmp_path_factory):
    """A session file as the app leaves it: its first line, then a line for each save since."""
    from decoding.records import session_file
    from decoding.search.session import Session

    session = Session(tiny_engine, choices=4)
    session.reset("hello world")
    path = tmp_path_factory.mktemp("saved") / "s.json"
    writer = session_file.SessionWriter(path, tiny_engine)
    writer.save(session.tree, session.strategy, 4)
    session.step()
    writer.save(session.tree, session.strategy, 4)
    session.undo()
    session.force(session.distribution.candidates[1].token_id)
    writer.save(session.tree, session.strategy, 4)
    first, *changes = path.read_text().splitlines()
    return first, [json.loads(line) for line in changes]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_a_mutated_change_line_opens_or_is_refused_in_one_line_and_left_alone(session_with_changes, tmp_path, data):
    from decoding.core.errors import SessionError
    from decoding.records import session_file

    first, changes = session_with_changes
    which = data.draw(st.integers(0, len(changes) - 1))
    changes = [mutated(change, data) if index == which else change for index, change in enumerate(changes)]
    path = tmp_path / "s.json"
    text = "\n".join([first, *(json.dumps(change, allow_nan=True) for change in changes)]) + "\n"
    written = text.encode("utf-8", "surrogatepass")
    path.write_bytes(written)
    try:
        session_file.load(path)
    except SessionError as error:
        assert "\n" not in str(error)
    assert path.read_bytes() == written


def test_a_deeply_nested_session_file_is_refused_in_one_line(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text('{"format": "tokenstep-session", "version": 1, "model": ' + "[" * 100000 + "]" * 100000 + "}")
    code, _, err = run_cli("--session", str(path))
    assert_one_line(code, err)


def test_saving_through_a_symlink_writes_its_target(tiny_session, tmp_path):
    from decoding.core.settings import Strategy
    from decoding.records import session_file

    target = tmp_path / "real.json"
    link = tmp_path / "link.json"
    link.symlink_to(target)
    session_file.save(link, tiny_session.tree, tiny_session.engine, Strategy(), 10)
    assert link.is_symlink() and session_file.load(target).tree.current == tiny_session.tree.current


def test_a_parent_cycle_or_an_id_beyond_the_vocabulary_is_refused(session_record, tmp_path):
    from decoding.core.errors import SessionError
    from decoding.records import session_file

    path = tmp_path / "s.json"
    cyclic = json.loads(json.dumps(session_record))
    nodes = cyclic["tree"]["nodes"]
    nodes[1]["parent"], nodes[2]["parent"] = nodes[2]["id"], nodes[1]["id"]
    write(path, cyclic)
    with pytest.raises(SessionError, match="cycle"):
        session_file.load(path)
    beyond = json.loads(json.dumps(session_record))
    beyond["tree"]["nodes"][1]["token"]["token_id"] = beyond["model"]["vocab_size"]
    write(path, beyond)
    with pytest.raises(SessionError, match="beyond the vocabulary"):
        session_file.load(path)


# --- honest acceptance ---------------------------------------------------------------------------


def test_a_bert_folder_is_refused_before_loading(tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    from decoding.core.errors import LoadError
    from decoding.engines.registry import LoadOptions, load_engine

    BertForMaskedLM(
        BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, vocab_size=50)
    ).save_pretrained(tmp_path)
    with pytest.raises(LoadError, match="'bert' model, which is not a causal"):
        load_engine(LoadOptions(model=str(tmp_path), device="cpu"))


def test_replay_refuses_a_trace_with_no_steps_or_of_the_wrong_shape(cached_engine, tmp_path, trace_record):
    path = tmp_path / "t.json"
    for record, message in [
        ({**trace_record, "steps": []}, "holds no steps"),
        (5, "not an object"),
        (None, "not an object"),
        ({**trace_record, "steps": "x"}, "trace.steps: expected a list"),
    ]:
        write(path, record)
        code, _, err = run_cli("replay", str(path))
        assert_one_line(code, err)
        assert message in err


def test_compare_says_when_the_context_limit_cut_a_continuation_short(cached_engine):
    prompt = cached_engine.decode(cached_engine.encode("word " * 60)[:50])  # the tiny model reads 64 tokens
    code, out, err = run_cli("compare", prompt, "--new-tokens", "32", "--strategies", "greedy")
    assert code == 0 and re.search(r"Note: greedy wrote \d+ of 32 tokens: the context limit was reached", out)
    record = json.loads(run_cli("compare", prompt, "--new-tokens", "32", "--strategies", "greedy", "--format", "json")[1])
    assert record["results"][0]["cut_short"] == "the context limit"


def test_truncated_model_files_are_refused_in_one_line(tiny_model_dir, tmp_path, monkeypatch):
    import shutil

    from decoding.engines.embedded import embedded_gguf

    monkeypatch.setenv("TOKENSTEP_CACHE", str(tmp_path / "cache"))
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(embedded_gguf().read_bytes()[:200_000])
    folder = tmp_path / "cut-folder"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").write_bytes((tiny_model_dir / "model.safetensors").read_bytes()[:5_000])
    for model in (truncated, folder):
        code, _, err = run_cli("trace", "hi", "--model", str(model), "--device", "cpu")
        assert_one_line(code, err)
        assert "cannot be read" in err or "cannot read" in err


# --- hostile numbers, torn tails and deep JSON in files (issue 24) --------------------------------

# What a hostile file puts where a number or a list belongs.
HOSTILE_VALUES = st.sampled_from(
    [1e308, -1e308, math.nan, math.inf, -math.inf, -1, 2**64, 2**31, 10**400, 0.5, "7", "", [], [[]], {}, None, True]
)


def places_of_numbers_and_lists(value, path=()):
    if isinstance(value, (int, float, list)) and not isinstance(value, bool) and path:
        yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from places_of_numbers_and_lists(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from places_of_numbers_and_lists(item, (*path, index))


def with_hostile_numbers(record, data, times=2):
    """The record with a number or a list replaced by a hostile value, a few times over."""
    record = json.loads(json.dumps(record))
    for _ in range(data.draw(st.integers(1, times))):
        path = data.draw(st.sampled_from(list(places_of_numbers_and_lists(record))))
        parent = record
        for key in path[:-1]:
            parent = parent[key]
        # a copy: a later replacement may write inside a drawn list, which must not change the strategy's own
        parent[path[-1]] = copy.deepcopy(data.draw(HOSTILE_VALUES))
    return record


def stamp(path: Path) -> tuple[bytes, int]:
    """What a read must leave as it was: the bytes and the modification time."""
    return path.read_bytes(), path.stat().st_mtime_ns


def assert_in_range(saved) -> None:
    """Every number a view is given from a reopened session: finite (a log-probability may be -inf) and in range."""
    for node in saved.tree.nodes.values():
        if node.token is None:
            assert node.prompt_ids and all(0 <= i < saved.model["vocab_size"] for i in node.prompt_ids)
            continue
        token, panel = node.token, node.panel
        assert 0 <= token.prob <= 1 and -math.inf <= token.logprob <= 0 and panel is not None and panel.candidates
        assert 0 <= panel.entropy <= math.log(2**31) and 0 <= panel.covered <= 1
        for candidate in panel.candidates:
            assert 0 <= candidate.prob <= 1 and -math.inf <= candidate.logprob <= 0
            assert 0 <= candidate.token_id < saved.model["vocab_size"]
        math.exp(token.logprob)  # what the heat view computes
    assert 1 <= saved.choices <= 100


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_a_session_file_with_hostile_numbers_opens_in_range_or_is_refused_in_one_line_untouched(
    session_record, tiny_engine, tmp_path, data
):
    from decoding.core.errors import SessionError
    from decoding.explorer.explorer import Explorer
    from decoding.records import session_file
    from decoding.records.keeper import SessionKeeper

    path = tmp_path / "s.json"
    write(path, with_hostile_numbers(session_record, data))
    before = stamp(path)
    try:
        saved = session_file.load(path)
    except SessionError as error:
        assert "\n" not in str(error) and "Traceback" not in str(error)
    else:
        assert_in_range(saved)
        explorer = Explorer(tiny_engine.fork(), choices=4, keeper=SessionKeeper(path, saved, lambda note: None))
        explorer.keeper.open(explorer.session, "a prompt")  # reopened, or another start and a note: never raises
        explorer.view(("tree", "timeline", "processors"))
    assert stamp(path) == before


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_a_change_line_with_hostile_numbers_or_a_torn_tail_of_any_bytes_is_read_or_refused_untouched(
    session_with_changes, tmp_path, data
):
    """A torn tail (the bytes after the last newline, valid UTF-8 or not) is left out with a note;
    a whole line with a hostile number is refused in one line; the file is never changed."""
    from decoding.core.errors import SessionError
    from decoding.records import session_file

    first, changes = session_with_changes
    hostile = data.draw(st.booleans())
    if hostile:
        which = data.draw(st.integers(0, len(changes) - 1))
        changes = [with_hostile_numbers(change, data) if index == which else change for index, change in enumerate(changes)]
    tail = data.draw(st.binary(max_size=40).filter(lambda tail: b"\n" not in tail))
    whole = "\n".join([first, *(json.dumps(change, allow_nan=True) for change in changes)]) + "\n"
    path = tmp_path / "s.json"
    path.write_bytes(whole.encode("utf-8", "surrogatepass") + tail)
    before = stamp(path)
    try:
        saved = session_file.load(path)
    except SessionError as error:
        assert hostile and "\n" not in str(error)
    else:
        assert_in_range(saved)
        assert bool(saved.note) == bool(tail) and (not tail or f"its {len(tail):,} bytes" in saved.note)
        if not hostile:
            path.write_bytes(whole.encode())
            assert session_file.load(path).tree.nodes == saved.tree.nodes  # the tail, and only it, was left out
            return
    assert stamp(path) == before


@pytest.fixture
def chat_trace_and_engine(tiny_chat_model_dir, monkeypatch):
    """A two-turn chat's trace, and the command line's model loads answered by its tiny chat model."""
    import decoding.engines.registry
    from decoding.core.state import Message
    from decoding.explorer.explorer import Explorer

    engine = decoding.engines.registry.load_engine(
        decoding.engines.registry.LoadOptions(model=str(tiny_chat_model_dir), device="cpu")
    )
    explorer = Explorer(engine, choices=4)
    explorer.new_chat([Message("user", "hello")])
    explorer.step()
    explorer.force(explorer.session.distribution.candidates[1].token_id)
    explorer.say("and again")
    explorer.step()
    record = explorer.trace_record()
    assert [("turn" in step) for step in record["steps"]] == [False, False, True, False]
    record["model"] = str(tiny_chat_model_dir)
    monkeypatch.setattr(decoding.engines.registry, "load_engine", lambda options, progress=None: engine.fork())
    return record, engine


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_replay_and_diff_of_a_chat_trace_with_hostile_numbers_give_a_verdict_or_one_line_untouched(
    chat_trace_and_engine, tmp_path, data
):
    record, _ = chat_trace_and_engine
    path = tmp_path / "trace.json"
    write(path, with_hostile_numbers(record, data))
    before = stamp(path)
    for command in ("replay", "diff"):
        code, out, err = run_cli(command, str(path))
        assert code in (0, 1) or (assert_one_line(code, err) is None)
        assert "internal error" not in err
        assert_terminal_safe(out + err)
    assert stamp(path) == before


@pytest.mark.parametrize(
    "ids, message",
    [
        ([], "trace.steps[2].turn.ids: expected a list of at least 1 item, found []"),
        ([2**64], "trace.steps[2].turn.ids[0]: expected a whole number from 0 to 2147483647"),
        ("beyond", "The trace feeds token id {vocab} in its step 3, beyond this model's vocabulary of {vocab:,}."),
    ],
)
def test_a_turn_whose_ids_are_empty_or_beyond_the_vocabulary_is_one_line_before_the_model_reads_it(
    chat_trace_and_engine, tmp_path, ids, message
):
    """Once `RuntimeError: cannot reshape tensor of 0 elements`, IndexError and overflow from the model."""
    record, engine = chat_trace_and_engine
    record["steps"][2]["turn"]["ids"] = [engine.vocab_size] if ids == "beyond" else ids
    path = tmp_path / "trace.json"
    write(path, record)
    for command in ("replay", "diff"):
        code, _, err = run_cli(command, str(path))
        assert_one_line(code, err)
        assert message.format(vocab=engine.vocab_size) in err


def deep(levels: int, opening: str = "[", closing: str = "]") -> str:
    return opening * levels + closing * levels


@pytest.mark.parametrize("levels", [300, 100_000])
@pytest.mark.parametrize("opening, closing", [("[", "]"), ('{"a":', "}")])
def test_json_of_any_depth_is_refused_in_one_line_wherever_a_file_is_read(
    cached_engine, tmp_path, monkeypatch, levels, opening, closing
):
    """Traces (replay, diff), session files, JSON schemas and chat messages: a depth limit before
    parsing, not a RecursionError (or a parse that breaks whatever walks the value next)."""
    monkeypatch.setenv("TOKENSTEP_DATA", str(tmp_path / "data"))
    text = deep(levels, opening, closing)
    (tmp_path / "deep.json").write_text(text)
    schema = '{"type": "object", "properties": {"a": ' * levels + "{}" + "}}" * levels
    (tmp_path / "schema.json").write_text(schema)
    (tmp_path / "session.json").write_text('{"format": "tokenstep-session", "version": 2, "model": ' + text + "}\n")
    deep_file, schema_file, session = (str(tmp_path / name) for name in ("deep.json", "schema.json", "session.json"))
    for args in (
        ["replay", deep_file],
        ["diff", deep_file],
        ["trace", "hi", "--json-schema", schema_file],
        ["trace", "--chat", "--prompt-file", deep_file],
        ["--session", session],
    ):
        code, _, err = run_cli(*args)
        assert_one_line(code, err)
        too_large = "--json-schema" in args and "characters long" in err  # 100,000 levels: the size limit comes first
        assert "nested more than 64 levels deep" in err or too_large, err


def test_a_safetensors_header_nested_deeply_is_one_line(tiny_model_dir, tmp_path):
    import shutil

    folder = tmp_path / "deep-header"
    shutil.copytree(tiny_model_dir, folder)
    header = deep(100_000).encode()
    (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    for args in (["trace", "hi"], ["compare", "hi", "--new-tokens", "1", "--strategies", "greedy"]):
        code, _, err = run_cli(*args, "--model", str(folder), "--device", "cpu")
        assert_one_line(code, err)
        assert "its files cannot be read" in err and "RecursionError" not in err


def test_a_name_too_long_for_a_file_is_one_line_in_every_command(cached_engine, tmp_path, monkeypatch, trace_record):
    """Once "internal error: OSError: File name too long" from the first file system call on it."""
    monkeypatch.setenv("TOKENSTEP_DATA", str(tmp_path / "data"))
    long_name = "m" * 300
    path = tmp_path / "t.json"
    write(path, {**trace_record, "model": long_name})
    for args in (
        ["--model", long_name],
        ["trace", "hi", "--model", long_name],
        ["replay", str(path)],
        ["diff", str(path)],
        ["diff", str(path), "--model", long_name],
        ["--session", str(tmp_path / long_name)],
    ):
        code, _, err = run_cli(*args)
        assert_one_line(code, err)
        assert "300 bytes long, and a file name has at most 255" in err and len(err) < 400, err
    write(path, {**trace_record, "model": "a\u0000b"})
    code, _, err = run_cli("replay", str(path))
    assert_one_line(code, err)
    assert "holds a NUL character" in err


def test_resume_with_a_five_megabyte_name_in_last_session_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("TOKENSTEP_DATA", str(tmp_path))
    (tmp_path / "last-session").write_text("/" + "x" * 5_000_000)
    before = stamp(tmp_path / "last-session")
    code, _, err = run_cli("--resume")
    assert_one_line(code, err)
    assert "does not name the last session (its name is 5,000,001 bytes long" in err and len(err) < 400
    assert stamp(tmp_path / "last-session") == before


def test_a_file_that_reads_as_regular_but_gives_nothing_without_waiting_is_one_line(tmp_path, monkeypatch):
    """/proc/kmsg is a regular file to stat, yet a read that must not wait gets nothing from it (once
    "internal error: AttributeError"). A FIFO with a writer and nothing written reads the same way;
    stat is told to call it a regular file, as the kernel does /proc/kmsg (reading /proc/kmsg itself
    would take the kernel's messages from whoever reads them)."""
    import stat as stat_module

    import decoding.core.files

    fifo = tmp_path / "kmsg"
    os.mkfifo(fifo)
    writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a writer that never writes
    real_fstat = os.fstat

    def as_regular(descriptor):
        info = real_fstat(descriptor)
        return os.stat_result((stat_module.S_IFREG | 0o644, *tuple(info)[1:]))

    monkeypatch.setattr(decoding.core.files.os, "fstat", as_regular)
    try:
        for command in ("diff", "replay"):
            code, _, err = run_cli(command, str(fifo))
            assert_one_line(code, err)
            assert "gives nothing without waiting, so it cannot be a tokenstep JSON trace" in err
    finally:
        os.close(writer)
