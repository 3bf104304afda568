"""Sizes checked before the work: what cannot fit the context, and panels too large to paint, are one
line (exit status 2) before the model does any of it."""

from __future__ import annotations

import json

import pytest

from tests.test_app import SIZE, make_app, settle
from tests.test_hostile import assert_one_line, run_cli, stamp, write


@pytest.fixture
def watched_engine(tiny_engine, monkeypatch):
    """The command line's model loads answered by the tiny engine, whose feeds and tokenizations are
    counted (the tokens fed, the characters tokenized)."""
    import decoding.engines.registry

    fed, tokenized = [], []
    feed, encode, encode_piece = tiny_engine.feed, tiny_engine.encode, tiny_engine.encode_piece
    tiny_engine.feed = lambda ids: fed.append(len(ids)) or feed(ids)
    tiny_engine.encode = lambda text: tokenized.append(len(text)) or encode(text)
    tiny_engine.encode_piece = lambda text: tokenized.append(len(text)) or encode_piece(text)
    monkeypatch.setattr(decoding.engines.registry, "load_engine", lambda options, progress=None: tiny_engine)
    return tiny_engine, fed, tokenized


def test_replay_and_diff_of_a_trace_beyond_the_context_are_refused_before_a_token_is_fed(watched_engine, tmp_path):
    """3,000 forced steps past the context: once each forced in turn up to the limit (> 240 s)."""
    engine, fed, _ = watched_engine
    code, out, _ = run_cli("trace", "The quick brown", "--steps", "3", "--format", "json", "--picks", "1")
    record = json.loads(out)
    record["steps"] = [record["steps"][0]] * 3000
    path = tmp_path / "long.json"
    write(path, record)
    before = stamp(path)
    fed.clear()
    for command in ("replay", "diff"):
        code, _, err = run_cli(command, str(path))
        assert_one_line(code, err)
        length = len(record["prompt_ids"]) + 3000
        assert f"The trace's path is {length:,} tokens long, and this model reads at most {engine.context_limit}" in err
    assert fed == [] and stamp(path) == before


def test_a_prefill_longer_than_the_context_is_refused_before_a_token_is_forced(watched_engine):
    engine, fed, _ = watched_engine
    code, _, err = run_cli("trace", "hi", "--prefill", "word " * 100, "--steps", "1")
    assert_one_line(code, err)
    assert f"The text is {len(engine.encode_piece('word ' * 100))} tokens, and after the" in err
    assert f"this model reads at most {engine.context_limit}. Shorten it." in err
    assert fed == [len(engine.encode("hi"))]  # the prompt only: nothing of the prefill


def test_forced_text_that_cannot_fit_leaves_the_path_as_it_was(tiny_engine):
    from decoding.core.errors import SessionError
    from decoding.explorer.explorer import Explorer

    explorer = Explorer(tiny_engine)
    explorer.new_prompt("The quick brown")
    explorer.step()
    path = explorer.session.path
    with pytest.raises(SessionError, match="this model reads at most 64"):
        explorer.force_text(" fox" * 80)
    assert explorer.session.path == path
    explorer.force_text(" fox")  # what fits is forced
    assert len(explorer.session.path) == len(path) + len(tiny_engine.encode_piece(" fox"))


def test_a_prompt_file_far_beyond_the_context_is_refused_without_tokenizing_all_of_it(watched_engine, tmp_path):
    """A 50 MB prompt file was tokenized in full (60-83 s) before it was found too long."""
    engine, fed, tokenized = watched_engine
    path = tmp_path / "big.txt"
    path.write_text("The quick brown fox jumps over the lazy dog. " * 110_000)  # 5 MB
    code, _, err = run_cli("trace", "--prompt-file", str(path), "--steps", "1")
    assert_one_line(code, err)
    assert "The prompt is 4,950,000 characters long, and its first" in err and "this model reads at most 64" in err
    assert max(tokenized) <= engine.context_limit * 16 and fed == []


def test_a_conversation_far_beyond_the_context_is_refused_without_rendering_it(tiny_chat_model_dir, tmp_path, monkeypatch):
    import decoding.engines.registry

    engine = decoding.engines.registry.load_engine(
        decoding.engines.registry.LoadOptions(model=str(tiny_chat_model_dir), device="cpu")
    )
    rendered = []
    render = engine.render_chat
    engine.render_chat = lambda messages, add_generation_prompt: (
        rendered.append(messages) or render(messages, add_generation_prompt)
    )
    monkeypatch.setattr(decoding.engines.registry, "load_engine", lambda options, progress=None: engine)
    path = tmp_path / "chat.json"
    path.write_text(json.dumps([{"role": "user", "content": "Say it again. " * 20_000}]))
    code, _, err = run_cli("trace", "--chat", "--prompt-file", str(path), "--steps", "1")
    assert_one_line(code, err)
    assert "The conversation is 280,000 characters long" in err and rendered == []


@pytest.mark.parametrize("command", [[], ["trace", "hi"]])
@pytest.mark.parametrize("choices", ["49152", "101"])
def test_choices_beyond_100_are_one_line_before_anything_loads(command, choices, monkeypatch, tmp_path):
    """--choices 49152 was accepted and froze the app (~15 s a step); 100 is taken (the tests below)."""
    import decoding.engines.registry

    monkeypatch.setenv("TOKENSTEP_DATA", str(tmp_path))
    monkeypatch.setattr(decoding.engines.registry, "load_engine", lambda *a, **k: pytest.fail("refused before loading"))
    code, _, err = run_cli(*command, "--choices", choices)
    assert_one_line(code, err)
    assert f"--choices must be at least 1 and at most 100 (got {choices})." in err


def test_the_session_and_its_file_keep_choices_to_100(tiny_session, tmp_path):
    from decoding.core.errors import SettingsError
    from decoding.records import session_file

    with pytest.raises(SettingsError, match="from 1 to 100"):
        tiny_session.set_choices(101)
    path = tmp_path / "s.json"
    session_file.save(path, tiny_session.tree, tiny_session.engine, tiny_session.strategy, 10)
    record = session_file.read_record(path)
    record["choices"] = 400  # a file from before the cap: a display setting, reopened at the most
    path.write_text(json.dumps(record))
    assert session_file.load(path).choices == 100


async def test_the_settings_screen_says_beside_the_field_that_choices_are_at_most_100(tiny_model_dir):
    app = make_app(tiny_model_dir)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("s")
        await pilot.pause()
        field = app.screen.query_one("#choices")
        field.focus()
        field.value = "49152"
        await pilot.press("enter")
        await pilot.pause()
        assert str(app.screen.query_one("#choices-error").content) == "must be at least 1 and at most 100"
        field.value = "100"
        await pilot.press("enter")
        await settle(pilot)
        assert app.snapshot.choices == 100 and len(app.snapshot.distribution.candidates) == 100
