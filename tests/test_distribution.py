import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from decoding.core.distribution import entropy, rank_of, summarize, top_ids
from decoding.core.errors import SessionError
from decoding.core.processors import Stage
from decoding.core.settings import Constraint, Strategy
from decoding.core.tokens import TokenTexts
from decoding.search.session import Session


def test_ties_are_ordered_by_token_id_so_row_zero_is_argmax():
    logits = torch.tensor([0.0, 5.0, 1.0, 5.0, 5.0, 2.0])
    assert top_ids(logits, 4) == [1, 3, 4, 5]
    assert top_ids(torch.tensor([0.0, 3.0, 1.0, 2.0, 2.0]), 3) == [1, 3, 4]  # a tie at the cut
    assert top_ids(torch.tensor([0.0, 3.0, 1.0, 2.0]), 3) == [1, 3, 2]  # no ties: topk's own order
    assert top_ids(logits, 1) == [int(torch.argmax(logits))]
    assert [rank_of(logits, i) for i in range(6)] == [5, 0, 4, 1, 2, 3]


def test_entropy_of_a_uniform_distribution_is_log_n():
    logprobs = torch.log_softmax(torch.zeros(8), dim=-1)
    assert math.isclose(entropy(logprobs), math.log(8), rel_tol=1e-6)


def test_summary_marks_tokens_a_processor_removed():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0])
    processed = torch.tensor([3.0, 2.0, float("-inf"), float("-inf")])
    summary = summarize(
        logits, torch.log_softmax(logits, dim=-1), Stage.of("chain", processed), 4, TokenTexts(lambda i: f"t{i}".encode())
    )
    assert [c.removed for c in summary.candidates] == [False, False, True, True]
    assert summary.candidates[2].processed_prob == 0.0
    assert math.isclose(sum(c.processed_prob for c in summary.candidates), 1.0, rel_tol=1e-6)
    assert math.isclose(sum(c.prob for c in summary.candidates), 1.0, rel_tol=1e-6)
    assert summary.processed_entropy < summary.entropy


# --- a strategy that leaves no token: one clear line, never NaN ------------------------------------

finite = st.floats(-30, 30, allow_nan=False, width=32)


@given(
    logits=st.lists(finite, min_size=2, max_size=40),
    removed=st.lists(st.booleans(), min_size=40, max_size=40),
    k=st.integers(1, 40),
)
@settings(max_examples=200, deadline=None)
def test_a_summary_holds_only_numbers_whatever_the_processors_removed(logits, removed, k):
    values = torch.tensor(logits)
    mask = torch.tensor(removed[: len(logits)])
    processed = values.masked_fill(mask, float("-inf"))
    summary = summarize(values, torch.log_softmax(values, dim=-1), Stage.of("chain", processed), k, TokenTexts(lambda i: b"t"))
    numbers = [summary.entropy, summary.processed_entropy]
    numbers += [n for c in summary.candidates for n in (c.prob, c.logprob, c.processed_prob)]
    assert all(math.isfinite(n) for n in numbers)
    assert [c.removed for c in summary.candidates] == [bool(mask[c.token_id]) for c in summary.candidates]
    if bool(mask.all()):  # nothing left: every probability 0, and 0 log 0 counts 0
        assert summary.processed_entropy == 0.0 and all(c.processed_prob == 0.0 for c in summary.candidates)
    else:
        assert summary.processed_entropy >= 0


def every_id(engine) -> tuple[int, ...]:
    return tuple(range(engine.vocab_size))


def test_suppressing_every_token_is_one_line_at_the_step_and_the_path_stays(tiny_engine):
    session = Session(tiny_engine, Strategy(), choices=5)
    session.reset("The quick")
    session.step()
    path = session.path
    session.set_strategy(Strategy(suppress_tokens=every_id(tiny_engine)))
    shown = session.distribution
    assert shown.nothing_left.startswith("No token is left to choose here: suppress_tokens rules out every one.")
    assert all(c.removed and c.processed_prob == 0.0 for c in shown.candidates)
    assert shown.processed_entropy == 0.0 and math.isfinite(shown.entropy)
    for choose in (session.step, session.strategy_choice):
        with pytest.raises(SessionError, match="No token is left to choose here"):
            choose()
    assert session.path == path
    forced = session.force(shown.candidates[0].token_id)  # a person may still force any token
    assert forced.processed_prob == 0.0
    session.undo()
    session.set_strategy(Strategy())  # the setting changed back: the strategy chooses again
    assert not session.distribution.nothing_left
    session.step()
    assert len(session.path) == 2


def test_a_grammar_whose_path_leaves_no_token_says_so_and_names_what_ruled_them_out(tiny_engine):
    """`aa` under no_repeat_ngram_size=1: after the first `a`, the second is banned and nothing else fits."""
    a = tiny_engine.encode("a")
    assert len(a) == 1
    strategy = Strategy(no_repeat_ngram_size=1, constraint=Constraint("regex", "aa"))
    session = Session(tiny_engine, strategy)
    session.reset("The quick")
    session.force(a[0])
    line = session.distribution.nothing_left
    assert line == (
        "No token is left to choose here: no_repeat_ngram_size and the regex aa rule out every one. "
        "Undo, force a token, or change the settings."
    )
    with pytest.raises(SessionError, match="no_repeat_ngram_size and the regex aa rule out every one"):
        session.step()


def test_trace_ends_with_exit_status_2_and_one_line_where_no_token_is_left(tiny_model_dir):
    args = ["trace", "hi", "--model", str(tiny_model_dir), "--regex", "aa", "--no-repeat-ngram-size", "1"]
    result = subprocess.run([sys.executable, "-m", "tui.cli", *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "tokenstep: No token is left to choose here: no_repeat_ngram_size and the regex aa rule out every one. "
        "Undo, force a token, or change the settings."
    ]


def test_beam_search_with_every_token_suppressed_refuses_the_step(tiny_engine):
    from decoding.search.beam import BeamSearch

    strategy = Strategy(kind="beam", num_beams=2, suppress_tokens=every_id(tiny_engine))
    search = BeamSearch(tiny_engine, strategy, tiny_engine.encode("hello world"), max_new_tokens=4)
    assert all(math.isfinite(c.processed_prob) for shown in search.snapshot().candidates for c in shown.candidates)
    with pytest.raises(SessionError, match="No token is left to choose here: suppress_tokens rules out every one"):
        search.step()
    assert search.steps == 0
