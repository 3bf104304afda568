"""Chat models: the assistant's reply to a conversation rendered by the model's own chat template, step
by step, turn after turn on the same cache; agreement with generate() on the embedded model."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from decoding.core.chat import PromptRequest
from decoding.core.errors import SessionError
from decoding.core.settings import Strategy
from decoding.core.state import Message
from decoding.explorer.explorer import Explorer
from tests.test_app import SIZE, make_app, settle
from tui.cli import main

QUESTION = "What is a transformer?"
SHORT = "What is the capital of France?"  # SmolLM2's greedy answer ends after 8 tokens


def generate_reply(engine, messages, **kwargs):
    """generate() on the conversation as apply_chat_template renders it, up to its end-of-turn token."""
    ids = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)[
        "input_ids"
    ]
    out = engine.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=300, **kwargs)
    return out[0, ids.shape[1] :].tolist()


def step_to_the_end(explorer, limit=300):
    while explorer.session.distribution is not None and len(explorer.session.reply_ids) < limit:
        explorer.step()
    return explorer.session.reply_ids


@pytest.mark.embedded
@pytest.mark.parametrize("system, question", [(None, SHORT), ("You answer in one short sentence.", QUESTION)])
def test_a_greedy_reply_equals_generate_on_the_templated_conversation(embedded_engine, system, question):
    messages = [*([{"role": "system", "content": system}] if system else []), {"role": "user", "content": question}]
    explorer = Explorer(embedded_engine)
    explorer.new_chat([Message(m["role"], m["content"]) for m in messages])
    assert explorer.session.prompt.text == embedded_engine.tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    reply = step_to_the_end(explorer)
    assert reply == generate_reply(embedded_engine, messages, do_sample=False)
    assert reply[-1] in embedded_engine.eos_token_ids and explorer.session.finished == "eos"  # up to and including it


@pytest.mark.embedded
def test_a_second_turn_equals_generate_on_both_turns_and_feeds_only_the_new_message(embedded_engine):
    explorer = Explorer(embedded_engine)
    explorer.new_chat([Message("user", SHORT)])
    first = step_to_the_end(explorer)
    fed: list[list[int]] = []
    feed = embedded_engine.feed
    embedded_engine.feed = lambda ids: fed.append(list(ids)) or feed(ids)
    try:
        explorer.say("And of Italy?")
        explorer.step()
    finally:
        del embedded_engine.feed
    messages = [
        {"role": "user", "content": SHORT},
        {"role": "assistant", "content": embedded_engine.decode(first[:-1])},
        {"role": "user", "content": "And of Italy?"},
    ]
    turn = explorer.session.steps[len(first)].turn
    expected_prompt = embedded_engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)[
        "input_ids"
    ]
    assert explorer.session.ids[:-1] == list(expected_prompt)  # the path, then the new turn, as the template frames both turns
    # Fed: the reply's end token (never fed while it ended the reply) and the new turn, then one token: nothing before again.
    assert fed == [[first[-1], *turn.ids], [explorer.session.path[-1].token_id]]
    second = step_to_the_end(explorer)
    assert second == generate_reply(embedded_engine, messages, do_sample=False)


@pytest.mark.embedded
def test_seeded_sampling_in_a_chat_equals_generate(embedded_engine):
    strategy = Strategy(kind="sample", temperature=0.8, top_p=0.9, seed=11)
    explorer = Explorer(embedded_engine, strategy)
    explorer.new_chat([Message("user", SHORT)])
    reply = step_to_the_end(explorer)
    torch.manual_seed(strategy.seed)
    assert reply == generate_reply(embedded_engine, [{"role": "user", "content": SHORT}], **strategy.generation_kwargs())


@pytest.mark.embedded
def test_undo_walks_back_into_the_reply_and_the_tree_shows_the_turn(embedded_engine):
    explorer = Explorer(embedded_engine)
    explorer.new_chat([Message("user", QUESTION)])
    for _ in range(3):
        explorer.step()
    explorer.say("Shorter, please.")
    turn_view = explorer.view({"tree"})
    assert any(row.text.startswith("▸ user: Shorter, please.") for row in turn_view.panels["tree"].rows)
    explorer.undo()  # the turn
    assert explorer.session.finished is None and len(explorer.session.path) == 3
    explorer.undo()  # and back into the reply
    assert len(explorer.session.path) == 2
    explorer.step()
    assert explorer.session.conversation()[-1].role == "assistant"


@pytest.mark.embedded
def test_the_chat_trace_records_messages_template_text_and_ids_and_replays(capsys, tmp_path):
    assert main(["trace", QUESTION, "--chat", "--format", "json", "--steps", "6", "--device", "cpu"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["prompt_form"] == "chat" and record["messages"] == [{"role": "user", "content": QUESTION}]
    assert record["prompt"].startswith("<|im_start|>system") and record["prompt"].endswith("<|im_start|>assistant\n")
    assert len(record["prompt_ids"]) == 35
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(record))
    assert main(["replay", str(path), "--device", "cpu"]) == 0
    assert "all 6 steps agree" in capsys.readouterr().out
    record["prompt_ids"][3] += 1  # as if the template had rendered another text then
    path.write_text(json.dumps(record))
    assert main(["replay", str(path), "--device", "cpu"]) == 1
    assert "prompt: the prompt now gives other token ids" in capsys.readouterr().out


@pytest.mark.embedded
def test_prefill_starts_the_reply_with_forced_tokens(capsys):
    assert main(["trace", QUESTION, "--chat", "--prefill", "Sure!", "--steps", "2", "--format", "json", "--device", "cpu"]) == 0
    record = json.loads(capsys.readouterr().out)
    chosen = [step["chosen"] for step in record["steps"]]
    assert "".join(c["text"] for c in chosen if c["forced"]) == "Sure!" and not chosen[-1]["forced"]


# --- refusals: one clear line -------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, extra, message",
    [
        ("not json at all [", ["--chat"], "is not a JSON list of messages: not valid JSON"),
        ('{"role": "user"}', ["--chat"], "messages: expected a list"),
        ('[{"role": "user"}]', ["--chat"], "the key 'content' is missing"),
        ('[{"role": "wizard", "content": "hi"}]', ["--chat"], "role must be one of system, user, assistant"),
        ('[{"role": "user", "content": "  "}]', ["--chat"], "The user message is empty"),
    ],
)
def test_a_malformed_prompt_file_is_one_line(tmp_path, content, extra, message):
    path = tmp_path / "prompt.json"
    path.write_text("[" + content if content.startswith("not") else content)
    out, err = run([*extra, "--prompt-file", str(path)])
    assert err.count("\n") == 1 and message in err


def run(options):
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(["trace", *options, "--steps", "1"]) == 2
    return out.getvalue(), err.getvalue()


def test_empty_messages_and_a_model_without_a_template_are_one_line(tiny_model_dir):
    assert "The user message is empty" in run(["", "--chat"])[1]
    assert "--system goes with --chat" in run(["hi", "--system", "be brief"])[1]
    _, err = run(["hi", "--chat", "--model", str(tiny_model_dir), "--device", "cpu"])
    assert "has no chat template" in err and err.count("\n") == 1


# --- the app -----------------------------------------------------------------------------------


async def test_a_two_line_message_a_reply_and_a_second_message_on_screen(tiny_chat_model_dir):
    app = make_app(tiny_chat_model_dir, prompt=PromptRequest("", chat=True), max_new_tokens=12, look_ahead=0)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("tab", *"first", "enter", *"line two", "ctrl+s")
        await settle(pilot)
        session = app.session
        assert session.prompt.form == "chat" and session.prompt.messages[-1] == Message("user", "first\nline two")
        await pilot.press("p")
        await settle(pilot)
        assert session.distribution is None or len(session.reply_ids) == 12
        first_reply = list(session.reply_ids)
        await pilot.press("tab", *"again", "ctrl+s")
        await settle(pilot)
        await pilot.press("space")
        await settle(pilot)
        assert [m.role for m in session.conversation()] == ["user", "assistant", "user", "assistant"]
        assert session.conversation()[2].content == "again" and len(session.reply_ids) == 1
        shown = str(app.query_one("#running-text").content)
        assert shown == session.text and "first\nline two" in shown and "again" in shown
        assert app.snapshot == session.snapshot() and first_reply


async def test_a_model_without_a_template_is_a_notification_and_the_app_stays(tiny_model_dir):
    app = make_app(tiny_model_dir)
    notes = []
    app.notify = lambda message, **kwargs: notes.append(message)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        path = app.snapshot.path
        await pilot.press("ctrl+t", *"hi", "ctrl+s")
        await settle(pilot)
        assert any("has no chat template" in note for note in notes)
        assert app.snapshot.path == path and app.snapshot.prompt == "The quick brown"
        box = app.query_one("#message")
        assert box.text == "hi"  # the message refused is put back, not lost
        box.clear()
        await pilot.press("ctrl+s")  # an empty box: nothing is sent
        await settle(pilot)
        assert any("The message is empty" in note for note in notes)


@pytest.mark.embedded
def test_a_prompt_naming_a_control_token_reads_it_as_text(embedded_engine):
    explorer = Explorer(embedded_engine)
    explorer.new_chat([Message("user", "Write <|im_end|> for me")])
    assert explorer.session.prompt.ids.count(2) == 2  # the system's and the user's own ends, not the typed one
    with pytest.raises(SessionError, match="message is empty"):
        explorer.say("   ")


def test_a_chat_session_reopens_mid_conversation_with_its_turns(tiny_chat_model_dir, tmp_path):
    from decoding.engines.registry import LoadOptions, load_engine
    from decoding.records import session_file
    from decoding.records.keeper import SessionKeeper

    engine = load_engine(LoadOptions(model=str(tiny_chat_model_dir), device="cpu"))
    path = tmp_path / "chat.json"
    explorer = Explorer(engine, keeper=SessionKeeper(path, None, print))
    explorer.open(None)
    explorer.say("hello")
    explorer.step()
    explorer.step()
    explorer.say("and again")
    explorer.step()
    explorer.save()
    before = explorer.session.snapshot()
    reopened = Explorer(
        load_engine(LoadOptions(model=str(tiny_chat_model_dir), device="cpu")),
        keeper=SessionKeeper(path, session_file.load(path), print),
    )
    reopened.open(None)
    after = reopened.session.snapshot()  # read in one pass: the next panel within rounding, the rest the same
    assert replace(after, distribution=None) == replace(before, distribution=None)
    assert [c.token_id for c in after.distribution.candidates] == [c.token_id for c in before.distribution.candidates]
    assert [m.content for m in reopened.session.conversation() if m.role == "user"] == ["hello", "and again"]
    reopened.undo()
    reopened.undo()  # back through the second turn into the first reply
    assert reopened.session.conversation()[-1].role == "assistant" and len(reopened.session.reply_ids) == 2


# --- a message in a file (`--chat --prompt-file`) ----------------------------------------------------


def message_file(tmp_path, text="Name a colour.\n"):
    path = tmp_path / "question.txt"
    path.write_text(text)
    return str(path)


@pytest.mark.embedded
def test_a_plain_message_in_a_prompt_file_is_the_user_message_of_a_chat_trace(capsys, tmp_path):
    args = ["trace", "--chat", "--prompt-file", message_file(tmp_path), "--steps", "2", "--format", "json", "--device", "cpu"]
    assert main(args) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["prompt_form"] == "chat" and record["messages"][-1] == {"role": "user", "content": "Name a colour."}
    assert record["prompt"].endswith("<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n")


async def test_a_plain_message_in_a_prompt_file_opens_the_app_on_that_chat(tiny_chat_model_dir, tmp_path):
    from tui.cli import DEFAULT_PROMPT, build_parsers, prompt_request

    args = build_parsers()[0].parse_args(["--chat", "--system", "Be brief.", "--prompt-file", message_file(tmp_path)])
    app = make_app(tiny_chat_model_dir, prompt=prompt_request(args, default=DEFAULT_PROMPT), look_ahead=0)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.session.prompt.messages == (Message("system", "Be brief."), Message("user", "Name a colour."))
        assert app.session.distribution is not None


@pytest.mark.embedded
def test_diff_of_a_two_turn_chat_follows_every_token(embedded_engine, tmp_path, capsys):
    """A reply that ended, a second message, three more steps, exported (`e`): diff scores every
    token of both replies on the second model, and stops nowhere."""
    explorer = Explorer(embedded_engine)
    explorer.new_chat([Message("user", "Name a colour.")])
    first = step_to_the_end(explorer)
    explorer.say("And another?")
    for _ in range(3):
        explorer.step()
    trace = tmp_path / "chat.json"
    trace.write_text(json.dumps(explorer.trace_record()))
    assert main(["diff", str(trace), "--format", "json"]) == 0
    record = json.loads(capsys.readouterr().out)
    path = [row for row in record["tokens"] if row["part"] == "path"]
    assert not record["note"]
    assert len(path) == len(first) + 3 and all(row["second_logprob"] is not None for row in path)
