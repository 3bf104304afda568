"""Beam search stepped one iteration at a time: agreement with generate(), undo, force, refusals."""

import pytest
import torch

from decoding.core.errors import SessionError, SettingsError
from decoding.core.settings import Strategy
from decoding.search.beam import BeamSearch

CHAT = "<|im_start|>user\nWhat is 2+2? Answer in one word.<|im_end|>\n<|im_start|>assistant\n"


def run_to_end(search: BeamSearch) -> None:
    while not search.ended:
        search.step()


def generate_beam(engine, prompt_ids, strategy, n):
    ids = torch.tensor([prompt_ids])
    return engine.model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=n,
        output_scores=True,
        return_dict_in_generate=True,
        eos_token_id=sorted(engine.eos_token_ids),
        **strategy.generation_kwargs(),
    )


@pytest.mark.embedded
@pytest.mark.parametrize(
    "prompt, settings, new_tokens",
    [
        ("Transformers are the", {"num_beams": 2}, 12),
        ("Transformers are the", {"num_beams": 5}, 12),
        ("Transformers are the", {"num_beams": 5, "no_repeat_ngram_size": 2}, 16),
        ("Transformers are the", {"num_beams": 2, "no_repeat_ngram_size": 2, "length_penalty": 2.0}, 12),
        (CHAT, {"num_beams": 5, "length_penalty": 0.5}, 30),  # ends on end-of-sequence
        (CHAT, {"num_beams": 2, "early_stopping": True}, 30),
        (CHAT, {"num_beams": 5, "no_repeat_ngram_size": 2, "length_penalty": 1.3}, 24),
    ],
)
def test_beam_search_run_to_the_end_equals_generate(embedded_engine, prompt, settings, new_tokens):
    strategy = Strategy(kind="beam", **settings)
    prompt_ids = embedded_engine.encode(prompt)
    search = BeamSearch(embedded_engine, strategy, prompt_ids, max_new_tokens=new_tokens)
    run_to_end(search)
    best = search.snapshot().best
    expected = generate_beam(embedded_engine, prompt_ids, strategy, new_tokens)
    generated = expected.sequences[0, len(prompt_ids) :].tolist()
    assert list(best.token_ids) == generated[: len(best.token_ids)]
    assert all(token == generated[-1] for token in generated[len(best.token_ids) :])  # padding only
    assert best.penalised == pytest.approx(float(expected.sequences_scores[0]), abs=1e-5)


def tiny_search(engine, **settings) -> BeamSearch:
    strategy = Strategy(kind="beam", **{"num_beams": 3, **settings})
    return BeamSearch(engine, strategy, engine.encode("hello world"), max_new_tokens=8)


def test_a_step_advances_every_live_beam_by_one_token_best_first(tiny_engine):
    search = tiny_search(tiny_engine)
    start = search.snapshot()
    assert len(start.beams) == 1 and start.beams[0].token_ids == ()  # B copies of the prompt count as one
    search.step()
    search.step()
    snapshot = search.snapshot()
    assert len(snapshot.beams) == 3 and len(snapshot.candidates) == 3
    assert all(len(beam.token_ids) == 2 for beam in snapshot.beams)
    scores = [beam.score for beam in snapshot.beams]
    assert scores == sorted(scores, reverse=True)
    assert len({beam.token_ids for beam in snapshot.beams}) == 3


def test_undo_takes_back_a_whole_step_exactly(tiny_engine):
    search = tiny_search(tiny_engine)
    search.step()
    before = search.snapshot()
    search.step()
    search.step()
    search.undo()
    search.undo()
    assert search.snapshot() == before
    search.step()  # the cache is rebuilt for the restored beams: stepping on agrees with a fresh search
    fresh = tiny_search(tiny_engine)
    fresh.step()
    fresh.step()
    assert [b.token_ids for b in search.snapshot().beams] == [b.token_ids for b in fresh.snapshot().beams]
    for ours, theirs in zip(search.snapshot().beams, fresh.snapshot().beams):
        assert ours.score == pytest.approx(theirs.score, abs=1e-4)


def test_old_beam_steps_let_their_scores_go_and_undo_to_them_runs_the_beams_again(tiny_engine):
    """Past the last few steps a beam step keeps its beams but not their B vocabulary-sized rows;
    undoing to it runs the live beams again from the prompt, which gives their scores within rounding
    (1e-4 in log-probability) and the same beams, finished hypotheses and candidates."""
    from decoding.search.beam import FULL_STEPS_KEPT

    search = BeamSearch(tiny_engine, Strategy(kind="beam", num_beams=3), tiny_engine.encode("hello world"), max_new_tokens=12)
    seen = []
    for _ in range(10):
        seen.append((search.snapshot(), search._state.scores.logprobs.clone()))
        search.step()
    assert [state.scores is None for state in search._history] == [True] * (10 - FULL_STEPS_KEPT) + [False] * FULL_STEPS_KEPT
    for snapshot, logprobs in reversed(seen):
        search.undo()
        restored = search.snapshot()
        assert restored.beams == snapshot.beams and restored.finished == snapshot.finished
        assert [[c.token_id for c in panel.candidates] for panel in restored.candidates] == [
            [c.token_id for c in panel.candidates] for panel in snapshot.candidates
        ]
        assert (search._state.scores.logprobs - logprobs).abs().max() < 1e-4


def test_a_token_forced_onto_a_beam_continues_as_a_live_beam(tiny_engine):
    search = tiny_search(tiny_engine)
    search.step()
    search.step()
    weakest = search.snapshot().candidates[2]
    unlikely = weakest.candidates[-1].token_id  # far down the third beam's list
    parent = search.snapshot().beams[2].token_ids
    search.force(2, unlikely)
    snapshot = search.snapshot()
    rows = [row for row, beam in enumerate(snapshot.beams) if beam.token_ids == parent + (unlikely,)]
    assert len(rows) == 1 and snapshot.beams[rows[0]].forced == 1
    assert snapshot.candidates[rows[0]].candidates  # it has its own next-token candidates, like the others
    assert len(snapshot.beams) == 3 and all(len(beam.token_ids) == 3 for beam in snapshot.beams)


def test_the_search_ends_at_max_new_tokens_with_finished_hypotheses(tiny_engine):
    search = tiny_search(tiny_engine)
    run_to_end(search)
    snapshot = search.snapshot()
    assert snapshot.ended and snapshot.best is not None and snapshot.candidates == ()
    assert all(len(beam.token_ids) <= 8 for beam in snapshot.finished)
    with pytest.raises(SessionError, match="ended"):
        search.step()
    search.undo()
    assert search.snapshot().ended is None


def test_bad_requests_are_refused_and_change_nothing(tiny_engine):
    search = tiny_search(tiny_engine)
    with pytest.raises(SessionError, match="Nothing to undo"):
        search.undo()
    with pytest.raises(SessionError, match="no live beam 1"):
        search.force(1, 5)  # at the start there is one beam
    with pytest.raises(SessionError, match="not in the vocabulary"):
        search.force(0, tiny_engine.vocab_size)
    assert search.steps == 0
    with pytest.raises(SettingsError, match="num_beams must be a whole number from 2"):
        Strategy(kind="beam", num_beams=1)


def test_an_engine_without_beam_search_says_so(tiny_engine):
    from tests.engines import Basic

    with pytest.raises(SettingsError, match="cannot run beam search"):
        tiny_search(Basic(tiny_engine))


@pytest.mark.embedded
def test_the_beam_trace_json_reports_generates_winner_and_score(embedded_engine, capsys):
    from tui.cli import main

    assert (
        main(
            [
                "trace",
                "Transformers are the",
                "--strategy",
                "beam",
                "--num-beams",
                "2",
                "--steps",
                "6",
                "--length-penalty",
                "1.5",
                "--format",
                "json",
            ]
        )
        == 0
    )
    record = __import__("json").loads(capsys.readouterr().out)
    strategy = Strategy(kind="beam", num_beams=2, length_penalty=1.5)
    expected = generate_beam(embedded_engine, record["prompt_ids"], strategy, 6)
    assert record["generated_ids"] == expected.sequences[0, len(record["prompt_ids"]) :].tolist()
    assert record["sequence_score"] == pytest.approx(float(expected.sequences_scores[0]), abs=1e-5)
    assert record["generated_text"] == embedded_engine.decode(record["generated_ids"])
    raw = torch.log_softmax(expected_logits(embedded_engine, record["prompt_ids"], record["generated_ids"]), dim=-1)
    assert record["sequence_logprob"] == pytest.approx(
        sum(float(raw[i, t]) for i, t in enumerate(record["generated_ids"])), abs=1e-3
    )


def expected_logits(engine, prompt_ids, generated):
    """The raw model's logits at each generated position, from one plain forward pass."""
    ids = torch.tensor([prompt_ids + generated])
    with torch.no_grad():
        logits = engine.model(ids).logits[0]
    return logits[len(prompt_ids) - 1 : -1]
