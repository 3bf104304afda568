"""What a constraint must be before it constrains anything: a schema whose `$ref`s stay inside it, text
of a size that compiles in seconds, nothing xgrammar would silently drop, a grammar some token can
begin; and a compile that runs past its deadline is stopped and said, never a hang or C++ noise."""

import json
import os
import re
import string
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from decoding.core import grammar
from decoding.core.errors import SessionError, SettingsError
from decoding.core.grammar import compile_constraint, grammar_for
from decoding.core.settings import MAX_CONSTRAINT_CHARS, Constraint, check_constraint, check_schema

LOCAL_REFS = ["#", "#/$defs/item", "#/properties/a", "#/definitions/x/items"]
OUTSIDE_REFS = [
    "http://example.com/schema.json",
    "https://example.com/s#/a",
    "file:///etc/passwd",
    "ftp://host/x",
    "other.json",
    "./other.json#/a",
    "urn:uuid:1234",
    "#item",  # an anchor: xgrammar follows none
    "",
    "//host/x",
]


def schema_with(ref: str, where: str) -> dict:
    """A valid schema holding `ref` at one of the places a subschema can be."""
    leaf = {"$ref": ref}
    places = {
        "root": {**leaf, "$defs": {"item": {"type": "integer"}}},
        "property": {"type": "object", "properties": {"a": leaf}},
        "items": {"type": "array", "items": leaf},
        "anyOf": {"anyOf": [{"type": "string"}, leaf]},
        "defs": {"$defs": {"item": leaf}, "type": "object"},
        "deep": {"type": "object", "properties": {"a": {"type": "array", "items": {"oneOf": [{"allOf": [leaf]}]}}}},
        "patternProperties": {"type": "object", "patternProperties": {"^x": leaf}},
        "additionalProperties": {"type": "object", "additionalProperties": leaf},
    }
    return places[where]


PLACES = ["root", "property", "items", "anyOf", "defs", "deep", "patternProperties", "additionalProperties"]


@given(ref=st.sampled_from(OUTSIDE_REFS) | st.text(string.printable, max_size=30).filter(lambda r: not r.startswith("#")))
@settings(max_examples=150, deadline=None)
def test_a_ref_outside_the_schema_is_refused_in_one_line_wherever_it_is(ref):
    for where in PLACES:
        with pytest.raises(SettingsError) as refused:
            check_schema(json.dumps(schema_with(ref, where)))
        said = str(refused.value)
        assert "points outside the schema" in said and "\n" not in said


@given(ref=st.sampled_from(LOCAL_REFS), where=st.sampled_from(PLACES))
@settings(max_examples=60, deadline=None)
def test_references_inside_the_schema_pass(ref, where):
    check_schema(json.dumps(schema_with(ref, where)))


def test_a_ref_that_is_data_or_a_property_name_is_not_a_reference():
    check_schema(json.dumps({"const": {"$ref": "http://example.com/x"}}))
    check_schema(json.dumps({"enum": [{"$ref": "file:///etc/passwd"}], "default": {"$ref": "x"}}))
    check_schema(json.dumps({"type": "object", "properties": {"$ref": {"type": "string"}}}))
    for keyword in ("$dynamicRef", "$recursiveRef"):
        with pytest.raises(SettingsError, match=re.escape(f"{keyword} is not supported")):
            check_schema(json.dumps({"type": "object", "properties": {"a": {keyword: "#"}}}))


@given(
    number=st.sampled_from(["1e400", "-1e400", "NaN", "Infinity", "-Infinity"]),
    where=st.sampled_from(
        [
            '{"type": "integer", "minimum": N}',
            '{"enum": [1, [N]]}',
            '{"const": {"a": N}}',
            '{"type": "object", "properties": {"x": {"maximum": N}}}',
            '{"default": N, "type": "number"}',
        ]
    ),
)
@settings(max_examples=50, deadline=None)
def test_a_number_that_is_not_finite_is_refused_in_one_line(number, where):
    with pytest.raises(SettingsError, match="which is not finite: give a finite one"):
        check_schema(where.replace("N", number))


@given(kind=st.sampled_from(["json_schema", "regex", "grammar"]), extra=st.integers(1, 10_000))
@settings(max_examples=20, deadline=None)
def test_a_constraint_beyond_the_size_limit_is_refused_at_once(kind, extra):
    constraint = Constraint(kind, "a" * (MAX_CONSTRAINT_CHARS + extra))
    started = time.monotonic()
    with pytest.raises(SettingsError, match=f"tokenstep compiles at most {MAX_CONSTRAINT_CHARS:,}"):
        check_constraint(constraint)
    assert time.monotonic() - started < 0.5


@given(text=st.text(), bad=st.sampled_from(["\0", "\ud800", "\udfff"]), kind=st.sampled_from(["regex", "grammar"]))
@settings(max_examples=40, deadline=None)
def test_a_nul_or_a_lone_surrogate_is_refused(text, bad, kind):
    with pytest.raises(SettingsError, match="NUL character or a lone surrogate"):
        check_constraint(Constraint(kind, text + bad))


def test_a_schema_nested_beyond_the_json_depth_limit_is_one_line():
    deep = '{"items": ' * 300 + "{}" + "}" * 300
    with pytest.raises(SettingsError, match="The JSON schema is nested more than 64 levels deep"):
        check_schema(deep)


# --- compiled for a vocabulary: in a child, under the deadline -------------------------------------


@pytest.mark.parametrize(
    ("schema", "said"),
    [
        ({"type": "string", "pattern": "(?=a)abc"}, "Lookahead assertion is not supported and is ignored in regex: (?=a)abc"),
        ({"type": "object", "patternProperties": {"(?!x)a": {"type": "integer"}}}, "(?!x)a"),
        ({"type": "object", "propertyNames": {"pattern": "(?=b)b"}}, "(?=b)b"),
        ({"type": "number", "multipleOf": 0.5}, "multipleOf is not supported"),
        ({"type": "string", "pattern": "[a-z]+", "minLength": 2}, "ignoring minLength/maxLength"),
    ],
    ids=["pattern lookahead", "patternProperties lookahead", "propertyNames lookahead", "multipleOf", "pattern and length"],
)
def test_a_schema_part_xgrammar_would_drop_is_refused_naming_it(tiny_engine, schema, said):
    with pytest.raises(SettingsError) as refused:
        compile_constraint(tiny_engine, Constraint("json_schema", json.dumps(schema)))
    message = str(refused.value)
    assert message.startswith("The JSON schema cannot be used: xgrammar would silently drop part of it: ")
    assert said in message and "\n" not in message and "/project/cpp" not in message


def test_a_lookahead_is_refused_in_a_schema_pattern_as_in_a_regex(tiny_engine):
    for constraint in (Constraint("regex", "(?=a)abc"), Constraint("json_schema", '{"type": "string", "pattern": "(?=a)abc"}')):
        with pytest.raises(SettingsError, match="ookahead"):
            compile_constraint(tiny_engine, constraint)


@pytest.mark.parametrize(
    "constraint",
    [Constraint("regex", r"[^\s\S]"), Constraint("grammar", "root ::= root"), Constraint("grammar", 'root ::= root "a"')],
    ids=["regex of nothing", "grammar of itself", "left recursion"],
)
def test_a_grammar_no_token_can_begin_is_refused_when_compiled(tiny_engine, constraint):
    with pytest.raises(SettingsError, match="it matches nothing this model can write: no token of its vocabulary can begin it"):
        compile_constraint(tiny_engine, constraint)


def test_a_compile_past_its_deadline_is_stopped_and_said_with_a_note_on_the_way(tiny_engine, monkeypatch):
    """5,000 optional properties take xgrammar minutes; the child is killed at the deadline and reaped."""
    monkeypatch.setattr(grammar, "COMPILE_SECONDS", 1.5)
    schema = {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 5} for i in range(5000)}}
    notes, noted_at = [], []

    def note(line):  # said a second into the compile: the deadline is half a second after
        notes.append(line)
        noted_at.append(time.monotonic())

    with grammar.compile_notes(note), pytest.raises(SettingsError) as refused:
        compile_constraint(tiny_engine, Constraint("json_schema", json.dumps(schema)))
    # Timed from the note, not from the call: the meta-schema check before the compile takes 2-4 s
    # of a loaded machine and is no part of the deadline.
    assert time.monotonic() - noted_at[0] < 0.5 + 2
    assert "compiling it for this model's vocabulary takes longer than 1.5 s" in str(refused.value)
    assert notes == ["compiling the JSON schema for the model's vocabulary (at most 1.5 s)"]
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # no child left running, none left unreaped


def test_a_constraint_that_passed_compiles_once_more_only_in_process(tiny_engine):
    constraint = Constraint("regex", "[a-z]{2,4}")
    compile_constraint(tiny_engine, constraint)
    assert constraint in grammar._TRIED[tiny_engine]
    started = time.monotonic()
    compile_constraint(tiny_engine, constraint)  # no second child: xgrammar's cache answers
    assert time.monotonic() - started < 0.5


def test_a_special_token_on_the_path_is_refused_without_a_word_on_stderr(tiny_engine, capfd):
    special = min(tiny_engine.special_ids)
    stop = next(i for i in range(tiny_engine.vocab_size) if i not in tiny_engine.special_ids)  # the special one does not stop it
    state = grammar_for(tiny_engine, Constraint("regex", "[a-z]+"), 0, [stop])
    capfd.readouterr()
    for token_id in (special, tiny_engine.vocab_size, -1):
        with pytest.raises(SessionError, match=f"token {token_id}, which the grammar does not allow"):
            state.follow([token_id])
    assert capfd.readouterr().err == ""  # xgrammar would have written a warning for each


# --- on the command line: one line, exit status 2, in seconds ---------------------------------------


def cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "tui.cli", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"type": "object", "properties": {"a": {"$ref": "http://example.com/x.json"}}}',
            "its $ref 'http://example.com/x.json'",
        ),
        ('{"$ref": "file:///etc/passwd"}', "its $ref 'file:///etc/passwd' points outside the schema"),
        ('{"type": "string", "pattern": "(?=a)abc"}', "ignored in regex: (?=a)abc"),
        (json.dumps({"enum": [f"value{i}" for i in range(100_000)]}), "characters long; tokenstep compiles at most"),
    ],
    ids=["remote ref", "file ref", "lookahead", "100,000-value enum"],
)
def test_a_schema_that_cannot_be_used_is_one_line_and_exit_status_2(tiny_model_dir, tmp_path, content, message):
    path = tmp_path / "schema.json"
    path.write_text(content)
    result = cli("trace", "hi", "--model", str(tiny_model_dir), "--json-schema", str(path))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1  # xgrammar's own warning lines never reach it


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--regex", r"[^\s\S]", "The regex cannot be used: it matches nothing"),
        ("--regex", "a^b", "'^' should be at the start of the regex"),
        ("--grammar", "root ::= root", "The grammar cannot be used: it matches nothing"),
    ],
)
def test_a_grammar_that_matches_nothing_is_one_line_and_exit_status_2(tiny_model_dir, tmp_path, option, value, message):
    if option == "--grammar":
        path = tmp_path / "grammar.gbnf"
        path.write_text(value)
        value = str(path)
    result = cli("trace", "hi", "--model", str(tiny_model_dir), option, value)
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_schema_that_compiles_for_minutes_is_refused_well_under_a_minute(tiny_model_dir, tmp_path):
    schema = {"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 5} for i in range(5000)}}
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    started = time.monotonic()
    result = cli("trace", "hi", "--model", str(tiny_model_dir), "--json-schema", str(path), timeout=60)
    assert time.monotonic() - started < 45
    assert result.returncode == 2 and f"takes longer than {grammar.COMPILE_SECONDS:g} s" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


PATTERN_PIECES = ["a", "[0-9]", "\\d", "(b|c)", "x?", "y*", "z+", "[a-z]{2,3}", "(?=a)", "(?!b)", "(?<=c)", "^", "$", "\\b"]
PATTERN_PIECES += ["(", ")", "\\1", "(?:d)", ".", "\\.", "[^x]", "{2}"]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from decoding.engines.registry import LoadOptions, load_engine

    return load_engine(LoadOptions(model=str(tiny_model_dir), device="cpu"))


@given(pieces=st.lists(st.sampled_from(PATTERN_PIECES), min_size=1, max_size=6))
@settings(max_examples=60, deadline=None)
def test_a_pattern_is_refused_in_a_schema_exactly_where_it_is_refused_as_a_regex(engine, pieces):
    pattern = "".join(pieces)
    refusals = []
    for constraint in (
        Constraint("regex", pattern),
        Constraint("json_schema", json.dumps({"type": "string", "pattern": pattern})),
    ):
        try:
            compile_constraint(engine, constraint)
            refusals.append(None)
        except SettingsError as error:
            assert "\n" not in str(error) and "/project/cpp" not in str(error)
            refusals.append(str(error))
    assert (refusals[0] is None) == (refusals[1] is None), (pattern, refusals)
