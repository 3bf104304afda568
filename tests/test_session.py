"""The core state machine on a tiny random model: step, force, undo, strategies, endings, bad input."""

import pytest
import torch

from decoding.core.errors import SessionError, SettingsError
from decoding.core.settings import Strategy
from decoding.search.session import Session


def generate(engine, session, n, **kwargs):
    ids = torch.tensor([session.prompt_ids])
    out = engine.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, pad_token_id=0, **kwargs)
    return out[0, len(session.prompt_ids) :].tolist()


def test_step_appends_the_argmax_and_runs_only_the_new_token(tiny_session, tiny_engine):
    fed = []
    original_feed = tiny_engine.feed
    tiny_engine.feed = lambda ids: fed.append(list(ids)) or original_feed(ids)
    top = tiny_session.distribution.candidates[0]
    token = tiny_session.step()
    assert token.token_id == top.token_id == int(torch.argmax(tiny_session.steps[0].offered.scores.values))
    assert token.rank == 0 and not token.forced
    assert fed == [[token.token_id]]
    assert tiny_engine.cached_length == len(tiny_session.ids)


def test_greedy_steps_equal_generate(tiny_session, tiny_engine):
    for _ in range(12):
        tiny_session.step()
    assert tiny_session.generated_ids == generate(tiny_engine, tiny_session, 12, do_sample=False)


@pytest.mark.parametrize(
    "settings",
    [
        {"repetition_penalty": 1.5},
        {"no_repeat_ngram_size": 2},
        {"kind": "sample", "temperature": 0.7, "seed": 1},
        {"kind": "sample", "top_k": 5, "top_p": 0.8, "seed": 2, "repetition_penalty": 1.3},
        {"kind": "sample", "temperature": 0.7, "min_p": 0.5, "seed": 3},
        {"kind": "sample", "typical_p": 0.5, "seed": 4},
        {"kind": "sample", "temperature": 0.5, "epsilon_cutoff": 0.003, "seed": 5},
        {"kind": "sample", "temperature": 0.5, "eta_cutoff": 0.003, "seed": 6},
    ],
)
def test_strategies_equal_generate_under_the_same_seed(tiny_engine, settings):
    strategy = Strategy(**settings)
    session = Session(tiny_engine, strategy)
    session.reset("The quick brown")
    for _ in range(15):
        session.step()
    torch.manual_seed(strategy.seed)
    expected = generate(tiny_engine, session, 15, **strategy.generation_kwargs())
    assert session.generated_ids == expected


def test_force_takes_any_token_and_records_its_raw_probability(tiny_session):
    candidate = tiny_session.distribution.candidates[3]
    token = tiny_session.force(candidate.token_id)
    assert (token.token_id, token.rank, token.forced) == (candidate.token_id, 3, True)
    assert token.prob == pytest.approx(candidate.prob)
    rare = tiny_session.engine.vocab_size - 1
    assert tiny_session.force(rare).token_id == rare
    assert tiny_session.sequence_logprob == pytest.approx(sum(t.logprob for t in tiny_session.path))


def test_force_refuses_ids_outside_the_vocabulary_and_keeps_the_path(tiny_session):
    tiny_session.step()
    before = tiny_session.path
    for bad in (-1, tiny_session.engine.vocab_size, "7"):
        with pytest.raises(SessionError, match="not in the vocabulary"):
            tiny_session.force(bad)
    assert tiny_session.path == before


def test_undo_restores_the_exact_distribution_without_recomputing(tiny_session, tiny_engine):
    tiny_session.step()
    before = tiny_session.distribution
    logits_before = tiny_session.next.scores.values.clone()
    tiny_session.force(tiny_session.distribution.candidates[2].token_id)
    tiny_session.step()
    tiny_engine.feed = lambda ids: pytest.fail("undo must not run the model")
    tiny_session.undo()
    tiny_session.undo()
    assert tiny_session.distribution == before
    assert torch.equal(tiny_session.next.scores.values, logits_before)
    assert tiny_engine.cached_length == len(tiny_session.ids)


def test_undo_then_step_continues_exactly_as_before(tiny_session):
    for _ in range(3):
        tiny_session.step()
    path = tiny_session.path
    tiny_session.undo()
    tiny_session.step()
    assert tiny_session.path == path


def test_sampling_undo_then_step_draws_the_same_token_again(tiny_engine):
    session = Session(tiny_engine, Strategy(kind="sample", seed=5))
    session.reset("The quick brown")
    drawn = [session.step().token_id for _ in range(6)]
    for _ in range(3):
        session.undo()
    assert [session.step().token_id for _ in range(3)] == drawn[3:]


def test_steps_without_a_draw_share_one_sampler_state(tiny_session, tiny_engine):
    for _ in range(8):
        tiny_session.step()
    assert len({id(step.sampler_state) for step in tiny_session.steps}) == 1  # greedy: 5 KB once, not a step
    sampling = Session(tiny_engine, Strategy(kind="sample", seed=5))
    sampling.reset("The quick brown")
    for _ in range(4):
        sampling.step()
    assert len({bytes(step.sampler_state.tolist()) for step in sampling.steps}) == 4  # each draw moves it on


def test_undo_at_the_prompt_says_so(tiny_session):
    with pytest.raises(SessionError, match="Nothing to undo"):
        tiny_session.undo()


def test_strategy_change_recomputes_the_panel_and_keeps_the_path(tiny_session):
    tiny_session.step()
    path = tiny_session.path
    assert tiny_session.distribution.candidates[0].processed_prob is None
    tiny_session.set_strategy(Strategy(kind="sample", top_k=2))
    candidates = tiny_session.distribution.candidates
    assert tiny_session.path == path
    assert [c.removed for c in candidates] == [False, False, True, True, True]
    assert sum(c.processed_prob for c in candidates) == pytest.approx(1.0)


def test_end_of_sequence_ends_the_generation_and_undo_resumes(tiny_session, tiny_engine):
    eos = next(iter(tiny_engine.eos_token_ids))
    tiny_session.force(eos)
    assert tiny_session.finished == "eos"
    assert tiny_session.distribution is None
    with pytest.raises(SessionError, match="end-of-sequence"):
        tiny_session.step()
    tiny_session.undo()
    assert tiny_session.finished is None
    assert tiny_session.step()


def test_context_limit_stops_the_session_with_a_message(tiny_session, tiny_engine):
    while not tiny_session.finished:
        tiny_session.step()
    assert tiny_session.finished == "context limit"
    assert len(tiny_session.ids) == tiny_engine.context_limit
    with pytest.raises(SessionError, match="context limit of 64"):
        tiny_session.step()


def test_bad_prompts_are_refused_and_the_path_is_kept(tiny_session):
    tiny_session.step()
    path, text = tiny_session.path, tiny_session.text
    with pytest.raises(SessionError, match="empty"):
        tiny_session.reset("")
    with pytest.raises(SessionError, match="at most 64"):
        tiny_session.reset("word " * 200)
    assert tiny_session.path == path and tiny_session.text == text
    assert tiny_session.step()


def test_a_failed_forward_pass_leaves_the_path_and_cache_as_they_were(tiny_session, tiny_engine, monkeypatch):
    tiny_session.step()
    path, distribution = tiny_session.path, tiny_session.distribution

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(tiny_engine.model, "forward", out_of_memory)
    with pytest.raises(RuntimeError):
        tiny_session.step()
    monkeypatch.undo()
    assert tiny_session.path == path and tiny_session.distribution == distribution
    assert tiny_engine.cached_length == len(tiny_session.ids)
    assert tiny_session.step()


def test_choices_setting_is_validated(tiny_session):
    with pytest.raises(SettingsError):
        tiny_session.set_choices(0)
    tiny_session.set_choices(12)
    assert len(tiny_session.distribution.candidates) == 12


def test_byte_tokens_show_partial_characters_as_hex(tiny_session, tiny_engine):
    e2 = tiny_engine.tokenizer.convert_tokens_to_ids("â")  # byte-level BPE spells byte 0xE2 as 'â'
    assert tiny_session.token_text(e2) == "<0xE2>"
    tiny_session.force(e2)
    assert tiny_session.path[-1].text == "<0xE2>"


def test_running_text_joins_multi_token_characters(tiny_session, tiny_engine):
    for token_id in tiny_engine.encode(" 東京"):
        tiny_session.force(token_id)
    assert tiny_session.generated_text == " 東京"


def test_strategy_choice_predicts_step_without_drawing(tiny_engine):
    session = Session(tiny_engine, Strategy(kind="sample", seed=11))
    session.reset("The quick brown")
    for _ in range(5):
        predicted = session.strategy_choice()
        assert session.strategy_choice() == predicted  # asking twice draws nothing
        assert session.step().token_id == predicted


@pytest.mark.parametrize("rank", [0, 2, 4])
def test_a_pick_looked_ahead_needs_no_model_work_and_is_bit_identical(tiny_model_dir, rank):
    from decoding.engines.registry import LoadOptions, load_engine

    plain = Session(load_engine(LoadOptions(model=str(tiny_model_dir), device="cpu")))
    ahead = Session(load_engine(LoadOptions(model=str(tiny_model_dir), device="cpu")))
    for session in (plain, ahead):
        session.reset("The quick brown")
        session.step()
    top5 = [c.token_id for c in ahead.distribution.candidates[:5]]
    ahead.look_ahead(top5)
    assert ahead.looked_ahead == frozenset(top5)
    feed = ahead.engine.feed
    ahead.engine.feed = lambda ids: pytest.fail("the pick was computed ahead")
    ahead.force(top5[rank])
    ahead.engine.feed = feed
    plain.force(top5[rank])
    assert torch.equal(ahead.next.scores.values, plain.next.scores.values)
    assert ahead.distribution == plain.distribution
    assert ahead.looked_ahead == frozenset()  # the path moved: the rest is dropped
    for session in (plain, ahead):  # and both go on the same way
        session.step()
    assert ahead.path == plain.path and torch.equal(ahead.next.scores.values, plain.next.scores.values)


def test_look_ahead_stops_when_asked_and_leaves_the_cache_as_it_was(tiny_session, tiny_engine):
    asked = []
    top = [c.token_id for c in tiny_session.distribution.candidates[:5]]
    tiny_session.look_ahead(top, should_stop=lambda: len(asked.append(1) or asked) > 2)
    assert tiny_session.looked_ahead == frozenset(top[:2])
    assert tiny_engine.cached_length == len(tiny_session.ids)
    tiny_session.undo() if tiny_session.path else None
    tiny_session.step()
    assert tiny_session.looked_ahead == frozenset()


@pytest.mark.parametrize("strategy", [Strategy(), Strategy(kind="sample", seed=5, top_k=20, no_repeat_ngram_size=2)])
def test_old_steps_keep_their_panels_only_and_undo_to_them_is_exact(tiny_engine, strategy):
    """Past the last few steps, each keeps its panel but not its full-vocabulary scores; undoing to
    it feeds the token before it again, which gives the very same scores (the same pass, on the same
    cached prefix), so panels, processed scores and the next choices are as they were."""
    from decoding.search.session import FULL_STEPS_KEPT

    session = Session(tiny_engine, strategy)
    session.reset("hello world")
    offered, reports = [], []
    for _ in range(12):
        offered.append((session.next.scores.values.clone(), session.next.strategy_scores.clone(), session.distribution))
        reports.append(session.processor_report())
        session.step()
    held = [step.offered.held for step in session.steps]
    assert held == [False] * (12 - FULL_STEPS_KEPT) + [True] * FULL_STEPS_KEPT
    assert [session.processor_report(index) for index in range(12)] == reports  # released ones computed again
    later = [session.step().token_id for _ in range(3)]
    for _ in range(3):
        session.undo()
    for values, strategy_scores, distribution in reversed(offered):
        session.undo()
        assert torch.equal(session.next.scores.values, values) and torch.equal(session.next.strategy_scores, strategy_scores)
        assert session.distribution == distribution
    for _ in range(12):
        session.step()
    assert [session.step().token_id for _ in range(3)] == later  # the sampler's state came back too
