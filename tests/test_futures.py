"""Many futures at once: N continuations sampled side by side from one point, each what a single
seeded run gives, its log-probability what a teacher-forced pass gives, kept as branches of the
tree; the outcomes they come to, with Wilson intervals and the model's own probability."""

from __future__ import annotations

import json
import math

import pytest
import torch

from decoding.core.errors import SessionError
from decoding.core.settings import Constraint, Strategy
from decoding.engines.registry import LoadOptions, load_engine
from decoding.explorer.explorer import Explorer
from decoding.records import session_file
from decoding.search.futures import sample_futures
from decoding.search.outcomes import OutcomeRule, outcomes, wilson_interval
from decoding.search.session import Session
from tests.test_hostile import run_cli

PROMPT = "The quick brown"
SAMPLING = dict(kind="sample", temperature=0.9, top_k=40, seed=3)


def explorer_on(engine, **settings) -> Explorer:
    explorer = Explorer(engine, Strategy(**{**SAMPLING, **settings}))
    explorer.new_prompt(PROMPT)
    return explorer


def single_run(engine, seed: int, steps: int, prompt: str = PROMPT, **settings) -> list[int]:
    session = Session(engine, Strategy(**{**SAMPLING, **settings, "seed": seed}))
    session.reset(prompt)
    for _ in range(steps):
        if session.finished:
            break
        session.step()
    return session.generated_ids


def teacher_forced(model, ids: list[int], continuation: tuple[int, ...]) -> float:
    """The continuation's log-probability from one forward pass of the model itself."""
    whole = torch.tensor([[*ids, *continuation]])
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(whole).logits[0].float(), dim=-1)
    return sum(float(logprobs[len(ids) - 1 + i, token]) for i, token in enumerate(continuation))


def test_future_i_is_the_single_seeded_run_of_seed_plus_i(tiny_engine):
    explorer = explorer_on(tiny_engine)
    run = explorer.futures(6, 10)
    assert [future.seed for future in run.futures] == [3, 4, 5, 6, 7, 8]
    for future in run.futures:
        assert list(future.ids) == single_run(tiny_engine.fork(), future.seed, 10)
    assert len({future.ids for future in run.futures}) > 1  # sampled: they differ


def test_a_futures_log_probability_is_a_teacher_forced_passes(tiny_engine):
    explorer = explorer_on(tiny_engine, repetition_penalty=1.3)
    run = explorer.futures(4, 12)
    for future in run.futures:
        assert future.logprob == pytest.approx(teacher_forced(tiny_engine.model, list(run.start_ids), future.ids), abs=1e-3)


def test_the_same_seed_gives_the_same_futures(tiny_engine):
    first = explorer_on(tiny_engine).futures(5, 8)
    again = explorer_on(tiny_engine.fork()).futures(5, 8)
    assert [f.ids for f in first.futures] == [f.ids for f in again.futures]
    assert [f.logprob for f in first.futures] == pytest.approx([f.logprob for f in again.futures], abs=1e-5)


def test_futures_are_branches_walking_into_one_follows_it_and_stepping_goes_on_as_its_seed_would(tiny_engine, tmp_path):
    explorer = explorer_on(tiny_engine)
    explorer.step()
    path = explorer.session.generated_ids
    run = explorer.futures(4, 6)
    assert explorer.session.generated_ids == path  # the path stays where it was
    future = run.futures[2]
    explorer.jump(future.node)
    assert tuple(explorer.session.generated_ids[1:]) == future.ids
    explorer.session.step()  # the sampler goes on from where future 2's left it
    # future 2 was sampled with seed + 2 from after the path's first token: a run seeded so, forced
    # to that token (a forced token draws nothing), then stepping, is the same path
    continued = Session(tiny_engine.fork(), Strategy(**{**SAMPLING, "seed": future.seed}))
    continued.reset(PROMPT)
    continued.force(path[0])
    for _ in range(len(future.ids) + 1):
        continued.step()
    assert explorer.session.generated_ids == continued.generated_ids
    file = tmp_path / "s.json"
    session_file.save(file, explorer.session.tree, tiny_engine, explorer.session.strategy, 10)
    kept = session_file.load(file).tree
    assert all(future.node in kept.nodes for future in run.futures)
    assert [node.token.token_id for node in kept.path(run.futures[0].node)[2:]] == list(run.futures[0].ids)


def test_futures_from_a_past_step_start_where_that_step_was_offered(tiny_engine):
    explorer = explorer_on(tiny_engine)
    for _ in range(3):
        explorer.step()
    explorer.look(1)  # the cursor on the second token: the futures are alternatives to it
    run = explorer.futures(3, 4)
    assert list(run.start_ids) == explorer.session.ids_before(1)
    tree = explorer.session.tree
    after_first = tree.path(tree.here)[1].id
    for future in run.futures:
        assert tree.path(future.node)[2].parent == after_first  # each hangs below the first token
        assert [node.token.token_id for node in tree.path(future.node)[2:]] == list(future.ids)


def test_esc_cancels_between_tokens_and_what_grew_is_kept(tiny_engine):
    explorer = explorer_on(tiny_engine)
    told = []
    run = explorer.futures(3, 50, should_stop=lambda: len(told) >= 4, grown=told.append)
    assert run.cancelled and {len(future.tokens) for future in run.futures} == {4}
    assert [len(update.futures[0].tokens) for update in told] == [1, 2, 3, 4]


def test_a_bad_request_is_one_clear_line(tiny_engine):
    explorer = explorer_on(tiny_engine)
    for n, tokens, said in [
        (0, 4, "from 1 to 256"),
        (300, 4, "from 1 to 256"),
        (2, 0, "from 1 to 4096"),
        (True, 4, "whole number"),
    ]:
        with pytest.raises(SessionError, match=said):
            explorer.futures(n, tokens)
    explorer.session.set_strategy(Strategy(kind="beam"))
    explorer.new_prompt(PROMPT)
    with pytest.raises(SessionError, match="beam search"):
        explorer.futures(2, 4)


# --- outcomes ---------------------------------------------------------------------------------------


def test_the_wilson_interval_is_the_textbook_one():
    low, high = wilson_interval(28, 40)
    assert (round(low, 3), round(high, 3)) == (0.546, 0.819)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_outcomes_are_first_lines_a_regex_group_or_a_chat_reply():
    first_line, word = OutcomeRule(), OutcomeRule(r"is (\w+)")
    assert first_line.read("  Paris\nis big", ended=False) == ("Paris", True)
    assert first_line.read(" Paris is", ended=False) == ("Paris is", False)
    assert word.read("It is Rome.", ended=False) == ("Rome", True)
    assert word.read("It is Ro", ended=False) == ("Ro", False)
    assert word.read("nothing here", ended=True) == (None, True)
    reply = OutcomeRule(chat=True)
    assert reply.read("Paris.", ended=False) == ("Paris.", False)  # a reply is decided when it ends
    assert reply.read(" Paris. ", ended=True) == ("Paris.", True)


def test_an_outcomes_probability_is_the_models_over_the_tokens_that_decide_it(tiny_engine):
    """Decided by the first token: its probability is the strategy's, at the start, of every token
    whose text reads as that outcome and decides it."""
    explorer = explorer_on(tiny_engine, top_k=0, temperature=1.0)
    rule = OutcomeRule(r"^(\S)")  # the first character, decided once another follows
    run = explorer.futures(40, 3, r"^(\S)")
    start = torch.softmax(explorer.session.next.strategy_scores, dim=-1)
    for outcome in run.outcomes:
        if outcome.probability is None:
            continue
        decided_at_once = [f for f in run.futures if f.index in outcome.futures and f.decision.tokens == 1]
        outcome_read = decided_at_once[0].decision.outcome if decided_at_once else None
        if len(decided_at_once) != outcome.count:
            continue
        expected = 0.0
        for token_id in range(tiny_engine.vocab_size):
            text = tiny_engine.token_bytes(token_id).decode("utf-8", errors="ignore")
            if rule.read(text, token_id in tiny_engine.eos_token_ids) == (outcome_read, True):
                expected += float(start[token_id])
        assert outcome.probability == pytest.approx(expected, abs=1e-5)
        break
    else:
        pytest.fail("no outcome was decided by its first token")


@pytest.mark.embedded
def test_the_sampled_share_closes_in_on_the_models_probability(embedded_engine):
    explorer = Explorer(embedded_engine, Strategy(kind="sample", seed=0))
    explorer.new_prompt("The capital of France is")
    run = explorer.futures(48, 4, r"^\s*(\w+)")
    paris = next(outcome for outcome in run.outcomes if outcome.text == "Paris")
    low, high = paris.interval
    assert paris.probability is not None and low <= paris.probability <= high
    assert paris.count >= 24


def test_outcomes_group_and_rank_the_futures(tiny_engine):
    run = explorer_on(tiny_engine).futures(10, 3, r"(.)")
    assert sum(outcome.count for outcome in run.outcomes) == 10
    assert [outcome.count for outcome in run.outcomes] == sorted((o.count for o in run.outcomes), reverse=True)
    assert math.fsum(outcome.share for outcome in run.outcomes) == pytest.approx(1.0)
    again = outcomes(run.futures, OutcomeRule(r"(.)"))
    assert [(o.text, o.count) for o in again] == [(o.text, o.count) for o in run.outcomes]


# --- every engine and prompt form -------------------------------------------------------------------


def test_grammar_futures_each_follow_the_schema(tiny_engine):
    schema = json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})
    explorer = explorer_on(tiny_engine, constraint=Constraint("json_schema", schema))
    run = explorer.futures(3, 24)
    for future in run.futures:
        assert future.text.startswith('{"a"')
        if future.finished == "eos":
            assert isinstance(json.loads(future.text)["a"], int)


def test_a_chat_futures_outcome_is_the_reply(tiny_chat_model_dir):
    from decoding.core.chat import PromptRequest

    engine = load_engine(LoadOptions(model=str(tiny_chat_model_dir), device="cpu"))
    explorer = Explorer(engine, Strategy(**SAMPLING))
    explorer.new_prompt(PromptRequest("Hello", chat=True).build(engine))
    run = explorer.futures(3, 6)
    assert run.rule.name == "the reply up to its end"


def test_a_second_models_log_probability_of_each_future(tiny_engine):
    from decoding.search.second import SecondModel

    explorer = explorer_on(tiny_engine)
    explorer.add_second(SecondModel(tiny_engine.fork(), "the same model"), "a", "b")
    run = explorer.futures(3, 5)
    assert run.second is not None and run.second[0] == "the same model"
    for future, second in zip(run.futures, run.second[1]):
        assert second == pytest.approx(future.logprob, abs=1e-3)


@pytest.mark.embedded
def test_on_llama_cpp_futures_run_one_after_another_and_the_path_is_kept():
    pytest.importorskip("llama_cpp")
    engine = load_engine(LoadOptions(engine="llama"))
    explorer = Explorer(engine, Strategy(kind="sample", seed=1))
    explorer.new_prompt(PROMPT)
    explorer.step()
    before = explorer.session.next.distribution
    run = explorer.futures(3, 5)
    after = explorer.session.next.distribution  # the engine's cache was lent and set back
    assert [c.token_id for c in after.candidates] == [c.token_id for c in before.candidates]
    first = explorer.session.generated_ids[0]
    for future in run.futures:
        session = Session(engine, Strategy(kind="sample", seed=future.seed))
        session.reset(PROMPT)
        session.force(first)
        for _ in range(len(future.ids)):
            session.step()
        assert tuple(session.generated_ids[1:]) == future.ids


# --- the command ------------------------------------------------------------------------------------


def test_the_futures_command_writes_json_that_a_trace_of_each_seed_agrees_with(tiny_model_dir):
    common = ["--model", str(tiny_model_dir), "--device", "cpu", "--strategy", "sample", "--top-k", "30"]
    code, out, err = run_cli("futures", PROMPT, "--n", "3", "--new-tokens", "5", "--seed", "7", "--format", "json", *common)
    assert code == 0, err
    record = json.loads(out)
    assert record["prompt_ids"] and len(record["futures"]) == 3 and record["outcomes"]
    assert set(record["futures"][0]) >= {"ids", "text", "logprob", "finished"}
    assert set(record["outcomes"][0]) >= {"outcome", "count", "share", "interval", "probability"}
    for index, future in enumerate(record["futures"]):
        code, out, _ = run_cli("trace", PROMPT, "--steps", "5", "--seed", str(7 + index), "--format", "json", *common)
        assert json.loads(out)["generated_ids"] == future["ids"]


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["--n", "0"], "number of futures must be a whole number from 1 to 256"),
        (["--new-tokens", "0"], "from 1 to 4096"),
        (["--outcome", "(unclosed"], "--outcome: not a regular expression"),
        (["--strategy", "beam"], "use --strategy sample"),
    ],
)
def test_a_bad_futures_option_is_one_line_and_exit_2(tiny_model_dir, options, said):
    code, out, err = run_cli("futures", PROMPT, "--model", str(tiny_model_dir), "--device", "cpu", *options)
    assert code == 2 and said in err and len(err.strip().splitlines()) == 1 and not out


def test_sample_futures_keeps_them_in_the_tree_without_moving_the_path(tiny_engine):
    session = Session(tiny_engine, Strategy(**SAMPLING))
    session.reset(PROMPT)
    here = session.tree.here
    futures = sample_futures(session, 2, 3)
    assert session.tree.here == here and all(f.node is not None for f in futures)
