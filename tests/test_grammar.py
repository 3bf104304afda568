"""Grammar constraints (xgrammar): greedy under a constraint equals generate() with xgrammar's own
transformers processor, the output validates, undo and reopened sessions keep the matcher exact, and
bad constraints are one clear line."""

import json
import subprocess
import sys

import jsonschema
import pytest
import torch

from decoding.core.errors import SessionError
from decoding.core.grammar import compile_constraint
from decoding.core.settings import Constraint, Strategy
from decoding.records import session_file
from decoding.search.session import Session

FLAT = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}
NESTED = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 30},
        "genre": {"enum": ["fiction", "science", "history"]},
        "author": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 20}, "born": {"type": "integer"}},
            "required": ["name", "born"],
        },
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
    },
    "required": ["title", "genre", "author", "tags"],
}
MAX_STEPS = 120


def run_greedy(session: Session, limit: int = MAX_STEPS) -> list[int]:
    while not session.finished and len(session.path) < limit:
        session.step()
    return [token.token_id for token in session.path]


def generate_with_xgrammar(engine, prompt_ids, constraint):
    """The reference: transformers' generate() with xgrammar's own LogitsProcessor."""
    from xgrammar.contrib.hf import LogitsProcessor

    ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        out = engine.model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=MAX_STEPS,
            do_sample=False,
            logits_processor=[LogitsProcessor(compile_constraint(engine, constraint))],
            eos_token_id=sorted(engine.eos_token_ids),
            pad_token_id=sorted(engine.eos_token_ids)[0],
        )
    return out[0, ids.shape[1] :].tolist()


@pytest.mark.embedded
@pytest.mark.parametrize(
    ("prompt", "constraint", "schema"),
    [
        ("A person as JSON:", Constraint("json_schema", json.dumps(FLAT)), FLAT),
        ("A book as JSON:", Constraint("json_schema", json.dumps(NESTED)), NESTED),
        ("Today's date:", Constraint("regex", r"\d{4}-\d{2}-\d{2}"), None),
    ],
    ids=["flat object", "nested object with an array and an enum", "ISO date regex"],
)
def test_greedy_under_a_constraint_equals_generate_with_xgrammars_processor(embedded_engine, prompt, constraint, schema):
    session = Session(embedded_engine, Strategy(constraint=constraint))
    session.reset(prompt)
    ours = run_greedy(session)
    assert session.finished == "eos" and session.snapshot().constraint == "complete"
    assert ours == generate_with_xgrammar(embedded_engine, session.prompt_ids, constraint)
    text = embedded_engine.decode(ours[:-1])  # without the end-of-sequence token
    if schema is not None:
        jsonschema.validate(json.loads(text), schema)
    else:
        assert len(text) == 10 and text[4] == text[7] == "-" and text.replace("-", "").isdigit()


@pytest.mark.embedded
def test_step_undo_step_and_a_reopened_session_keep_the_constraint_exact(embedded_engine, tmp_path):
    strategy = Strategy(constraint=Constraint("json_schema", json.dumps(FLAT)))
    session = Session(embedded_engine, strategy)
    session.reset("A person as JSON:")
    whole = run_greedy(session)
    for back in (1, 4, len(whole)):  # the end-of-sequence token, mid-object, the whole reply
        for _ in range(back):
            session.undo()
        assert session.snapshot().constraint != "complete"
        assert run_greedy(session) == whole
    for _ in range(len(whole) // 2):  # mid-object: saved, reopened on a fresh session, continued
        session.undo()
    path = tmp_path / "session.json"
    session_file.save(path, session.tree, embedded_engine, strategy, session.choices)
    saved = session_file.load(path)
    assert saved.strategy == strategy
    reopened = Session(embedded_engine, saved.strategy, saved.choices)
    reopened.adopt(saved.tree)
    assert reopened.snapshot().constraint == "in progress"
    assert run_greedy(reopened) == whole


@pytest.mark.embedded
def test_forcing_a_token_the_grammar_forbids_is_refused_and_the_path_stays(embedded_engine):
    session = Session(embedded_engine, Strategy(constraint=Constraint("json_schema", json.dumps(FLAT))))
    session.reset("A person as JSON:")
    session.step()  # `{`
    forbidden = [c for c in session.distribution.candidates if c.removed_by == "grammar"]
    assert forbidden, "the panel marks what the grammar forbids"
    path = session.path
    with pytest.raises(SessionError, match="grammar cannot continue"):
        session.force(forbidden[0].token_id)
    assert session.path == path
    report = session.processor_report()
    grammar = report.effects[0]
    assert grammar.name == "grammar" and 0 < grammar.mass_removed <= 1
    assert grammar.removed_in_all > embedded_engine.vocab_size // 2


def cli(*args):
    return subprocess.run([sys.executable, "-m", "tui.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    ("content", "option", "message"),
    [
        ("{not json", "--json-schema", "The JSON schema is not valid JSON"),
        ('{"type": 5}', "--json-schema", "is not a valid schema"),
        ('root ::= "a" |', "--grammar", "grammar cannot be used: EBNF parser error"),
        ("root ::= foo", "--grammar", 'Rule "foo" is not defined'),
    ],
)
def test_a_bad_schema_or_grammar_is_one_line_and_exit_status_2(tiny_model_dir, tmp_path, content, option, message):
    path = tmp_path / "constraint.txt"
    path.write_text(content)
    result = cli("trace", "hi", "--model", str(tiny_model_dir), option, str(path))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_regex_that_does_not_compile_is_one_line(tiny_model_dir):
    result = cli("trace", "hi", "--model", str(tiny_model_dir), "--regex", "(a")
    assert result.returncode == 2 and "regex cannot be used: Regex parsing error" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_trace_records_the_constraint_and_replay_restores_it(tiny_model_dir, tmp_path):
    result = cli(
        "trace", "The quick", "--model", str(tiny_model_dir), "--regex", "[a-z]{3,5}", "--format", "json", "--steps", "8"
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["constraint"] == {"kind": "regex", "source": "[a-z]{3,5}"}
    assert record["steps"][0]["processors"][0]["name"] == "grammar"
    text = record["generated_text"].removesuffix("<|endoftext|>")
    assert 3 <= len(text) <= 5 and text.isalpha()
    path = tmp_path / "trace.json"
    path.write_text(result.stdout)
    replayed = cli("replay", str(path))
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr


async def test_the_panel_strikes_out_what_the_grammar_forbids_and_the_status_says_its_state(tiny_model_dir):
    from tests.test_app import SIZE, make_app, panel_text, settle
    from tui.widgets.status import StatusLine

    app = make_app(tiny_model_dir, strategy=Strategy(constraint=Constraint("regex", "[a-z]+")))
    notes = []
    app.notify = lambda message, **kwargs: notes.append(message)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        candidates = app.snapshot.distribution.candidates
        forbidden = [row for row, c in enumerate(candidates) if c.removed_by == "grammar"]
        allowed = [row for row, c in enumerate(candidates) if not c.removed]
        assert forbidden and allowed
        lines = panel_text(app).splitlines()
        assert all("✗ grammar" in lines[row + 1] for row in forbidden)
        assert "grammar: in progress" in str(app.query_one(StatusLine).content)
        await pilot.press(str(forbidden[0] + 1))  # forcing a forbidden row is refused
        await settle(pilot)
        assert not app.snapshot.path and any("grammar cannot continue" in note for note in notes)
        await pilot.press(str(allowed[0] + 1))
        await settle(pilot)
        assert app.snapshot.path[0].token_id == candidates[allowed[0]].token_id
        assert "grammar: may end here" in str(app.query_one(StatusLine).content)


async def test_the_settings_screen_sets_a_constraint_and_refuses_a_bad_one_beside_it(tiny_model_dir):
    from tests.test_app import SIZE, make_app, settle

    app = make_app(tiny_model_dir)
    notes = []
    app.notify = lambda message, **kwargs: notes.append(message)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("space")
        await settle(pilot)
        await pilot.press("s")
        await pilot.pause()
        screen = app.screen
        screen.query_one("#constraint_kind").value = "json_schema"
        screen.query_one("#constraint_source").value = '{"type": 5}'
        screen.query_one("#constraint_source").focus()
        await pilot.press("enter")
        await pilot.pause()
        assert app.screen is screen and "not a valid schema" in str(screen.query_one("#constraint-error").content)
        screen.query_one("#constraint_kind").value = "regex"
        screen.query_one("#constraint_source").value = "(a"  # compiles on the model's thread: refused there
        await pilot.press("enter")
        await settle(pilot)
        assert app.snapshot.strategy.constraint is None and any("Regex parsing error" in note for note in notes)
        assert len(app.snapshot.path) == 1
        await pilot.press("s")
        await pilot.pause()
        app.screen.query_one("#constraint_kind").value = "regex"
        app.screen.query_one("#constraint_source").value = "[a-z ]+"
        app.screen.query_one("#constraint_source").focus()
        await pilot.press("enter")
        await settle(pilot)
        assert app.snapshot.strategy.constraint == Constraint("regex", "[a-z ]+")
        assert app.snapshot.constraint in ("in progress", "may end here")


@pytest.mark.embedded
def test_beam_search_under_a_schema_finishes_only_valid_json(embedded_engine):
    from decoding.explorer.explorer import Explorer

    strategy = Strategy(kind="beam", num_beams=3, constraint=Constraint("json_schema", json.dumps(FLAT)))
    explorer = Explorer(embedded_engine, strategy, max_new_tokens=40)
    explorer.new_prompt("A person as JSON:")
    while explorer.can_play_on():
        explorer.step()
    finished = explorer.beam.snapshot().finished
    assert len(finished) == 3
    for beam in finished:
        assert beam.text.endswith("<|im_end|>")
        jsonschema.validate(json.loads(beam.text.removesuffix("<|im_end|>")), FLAT)


def test_compare_under_a_regex_ends_each_strategy_where_the_grammar_ends(tiny_model_dir):
    args = ("compare", "The quick", "--model", str(tiny_model_dir), "--regex", "[a-z]{2,4}", "--format", "json")
    result = cli(*args, "--new-tokens", "12", "--strategies", "greedy,beam:num_beams=2,sample:temperature=0.7")
    assert result.returncode == 0, result.stderr
    for continuation in json.loads(result.stdout)["results"]:
        text = continuation["generated_text"].removesuffix("<|endoftext|>")
        assert 2 <= len(text) <= 4 and text.isalpha()
        assert continuation["cut_short"] == "the grammar's end"


def test_a_constraint_set_mid_path_masks_the_next_token_at_once(tiny_engine):
    session = Session(tiny_engine, Strategy(), choices=5)
    session.reset("The quick")
    session.set_strategy(Strategy(constraint=Constraint("regex", "[0-9]+")))
    assert all(c.removed_by == "grammar" for c in session.distribution.candidates if not c.text.isdigit())
    assert tiny_engine.token_bytes(session.strategy_choice()).isdigit()
    session.step()  # the grammar's own choice: the next position follows it
    assert session.snapshot().constraint == "may end here"


def panel_lines(app):
    from tui.widgets.candidates import CandidatePanel

    panel = app.query_one(CandidatePanel)
    return list(panel.render_lines(panel.region.reset_offset))


async def test_the_app_says_no_token_is_left_in_the_panel_and_at_a_step_and_goes_on(tiny_model_dir):
    from decoding.explorer import commands
    from tests.test_app import SIZE, make_app, settle
    from tui.widgets.status import StatusLine

    app = make_app(tiny_model_dir, strategy=Strategy(suppress_tokens=tuple(range(400))))
    notes = []
    app.notify = lambda message, **kwargs: notes.append(message)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.session.engine.vocab_size <= 400
        lines = panel_lines(app)
        said = [line for line in lines if "No token is left to choose here" in line.text]
        assert len(said) == 1 and "suppress_tokens rules out every one" in said[0].text
        rows = lines[1 : 1 + len(app.snapshot.distribution.candidates)]
        body = {s.style.color for row in rows for s in row if s.text.strip() and s.style.color}
        warning = [s.style for s in said[0] if s.text.strip()]
        assert warning and all(style.bold and style.color not in body for style in warning)  # set apart, in bold
        assert all("removed" in row.text and any(s.style and s.style.strike for s in row) for row in rows)
        status = str(app.query_one(StatusLine).content)
        assert "nan" not in status and "H=" in status
        await pilot.press("space")
        await settle(pilot)
        assert app.return_code is None and app.snapshot.path == ()
        assert any(note.startswith("No token is left to choose here") for note in notes)
        app.enqueue(commands.ApplySettings(Strategy(), 10))  # the setting changed back
        await settle(pilot)
        await pilot.press("space")
        await settle(pilot)
        assert len(app.snapshot.path) == 1
        assert not any("No token is left" in line.text for line in panel_lines(app))


async def test_a_grammar_that_matches_nothing_is_a_notice_and_the_app_stays_open(tiny_model_dir):
    from decoding.explorer import commands
    from tests.test_app import SIZE, make_app, settle

    app = make_app(tiny_model_dir, strategy=Strategy(constraint=Constraint("regex", r"[^\s\S]")))
    notes = []
    app.notify = lambda message, **kwargs: notes.append(message)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.return_code is None and app.query_one("#main").display
        assert any("The regex cannot be used: it matches nothing this model can write" in note for note in notes)
        app.enqueue(commands.ApplySettings(Strategy(), 10))
        app.enqueue(commands.NewPrompt("The quick"))
        await settle(pilot)
        await pilot.press("space")
        await settle(pilot)
        assert len(app.snapshot.path) == 1
