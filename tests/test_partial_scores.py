"""An engine that returns only the top N scores (as an inference server does), driven through the
explorer: each command works on partial scores, or says clearly what they do not allow."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from decoding.core.errors import SessionError, SettingsError
from decoding.core.settings import Strategy
from decoding.explorer.explorer import Explorer
from tests.engines import Basic, TopOnly

N = 8


@pytest.fixture
def full(tiny_engine):
    explorer = Explorer(tiny_engine, choices=5)
    explorer.new_prompt("The quick brown")
    return explorer


@pytest.fixture
def partial(tiny_model_dir):
    from decoding.engines.registry import LoadOptions, load_engine

    explorer = Explorer(TopOnly(load_engine(LoadOptions(model=str(tiny_model_dir), device="cpu")), N), choices=5)
    explorer.new_prompt("The quick brown")
    return explorer


def test_greedy_steps_and_the_panel_equal_the_full_engines(full, partial):
    for _ in range(6):
        full.step()
        partial.step()
    assert partial.session.generated_ids == full.session.generated_ids
    ours, theirs = partial.session.distribution, full.session.distribution
    assert [c.token_id for c in ours.candidates] == [c.token_id for c in theirs.candidates]
    assert [c.prob for c in ours.candidates] == pytest.approx([c.prob for c in theirs.candidates], abs=1e-6)
    assert ours.known == N and not ours.complete and 0 < ours.covered < 1
    assert ours.covered == pytest.approx(sum(sorted(torch.softmax(full.session.next.scores.values, -1).tolist())[-N:]), abs=1e-5)
    assert ours.entropy <= theirs.entropy + 1e-6  # a lower bound of the true entropy


def test_a_token_forced_inside_or_outside_the_n_gets_its_true_probability(full, partial):
    inside = partial.session.distribution.candidates[3].token_id
    partial.force(inside)
    full.force(inside)
    outside = int(torch.argsort(full.session.next.scores.values, descending=True)[N + 5])
    partial.force(outside)
    full.force(outside)
    ours, theirs = partial.session.path, full.session.path
    assert [t.logprob for t in ours] == pytest.approx([t.logprob for t in theirs], abs=1e-5)
    assert ours[0].rank == theirs[0].rank == 3
    assert ours[1].rank is None and theirs[1].rank == N + 5  # beyond the known N: no rank to tell


def test_without_a_way_to_score_one_token_forcing_outside_the_n_is_refused(tiny_model_dir):
    from decoding.engines.registry import LoadOptions, load_engine
    from tests.engines import top_only

    class TopOnlyNoScoring(Basic):
        def feed(self, ids):
            return top_only(self.inner.feed(ids), N)

    explorer = Explorer(TopOnlyNoScoring(load_engine(LoadOptions(model=str(tiny_model_dir), device="cpu"))))
    explorer.new_prompt("The quick brown")
    values = explorer.session.next.scores.values
    outside = int(torch.nonzero(~torch.isfinite(values))[0])
    with pytest.raises(SessionError, match=f"returned only its top {N} tokens here.*cannot be forced"):
        explorer.force(outside)
    assert explorer.session.path == ()


def test_undo_restores_the_panel_and_seeded_sampling_draws_among_the_n(partial):
    partial.apply_settings(Strategy(kind="sample", seed=4), 5)
    before = partial.session.distribution
    drawn = [partial.session.step().token_id for _ in range(4)]
    for _ in range(4):
        partial.undo()
    assert partial.session.distribution == before
    assert [partial.session.step().token_id for _ in range(4)] == drawn
    for step in partial.session.steps:
        assert math.isfinite(float(step.offered.scores.values[step.token.token_id]))  # drawn among the N


def test_beam_search_is_exact_when_each_beam_knows_its_top_2b(full, partial):
    strategy = Strategy(kind="beam", num_beams=3)
    full.apply_settings(strategy, 5)
    partial.apply_settings(strategy, 5)
    for _ in range(4):
        full.step()
        partial.step()
    ours, theirs = partial.beam.snapshot(), full.beam.snapshot()
    assert [b.token_ids for b in ours.beams] == [b.token_ids for b in theirs.beams]
    assert [b.score for b in ours.beams] == pytest.approx([b.score for b in theirs.beams], abs=1e-4)
    with pytest.raises(SettingsError, match=f"needs each beam's top 10 tokens; the top-{N} engine returned {N}"):
        partial.apply_settings(Strategy(kind="beam", num_beams=5), 5)
    assert partial.session.strategy == strategy  # refused as a whole


def test_the_processor_view_follows_the_n(partial):
    partial.apply_settings(Strategy(kind="sample", top_k=3, temperature=0.7), 5)
    report = partial.view({"processors"}).panels["processors"]
    assert [effect.name for effect in report.effects] == ["temperature", "top_k"]
    top_k = report.effects[1]
    assert top_k.removed_in_all == N - 3  # of the N known tokens; the rest were never candidates
    assert sum(p > 0 for p in top_k.after) == 3


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 40),
    vocab=st.integers(2, 300),
    seed=st.integers(0, 2**32 - 1),
    coarse=st.booleans(),
    unknown=st.floats(0, 0.9),
    from_logits=st.booleans(),
)
def test_the_fast_reduction_of_many_rows_equals_a_plain_one(rows, vocab, seed, coarse, unknown, from_logits):
    """The prompt's rows are reduced a few at a time with tricks (a sign pass, in-place entropy);
    the result is what a plain per-row computation gives: ties (coarse values) rank the lower ids
    first, -inf counts nothing, the greedy token is the first of equal maxima."""
    from decoding.search.positions import score_rows

    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(rows, vocab, generator=generator) * 4
    values = values.round() if coarse else values
    values[torch.rand(rows, vocab, generator=generator) < unknown] = float("-inf")
    values[:, 0] = values[:, 0].clamp(min=-50)  # every row keeps a known token
    token_ids = torch.randint(0, vocab, (rows,), generator=generator)
    logprobs = torch.log_softmax(values, dim=-1)
    for got, row, token in zip(
        score_rows(values if from_logits else logprobs, token_ids, from_logits), logprobs, token_ids.tolist()
    ):
        chosen = row[token]
        assert got.logprob == float(chosen)
        if chosen != float("-inf"):
            assert got.rank == int((row > chosen).sum()) + int((row[:token] == chosen).sum())
        assert got.entropy == pytest.approx(-float(torch.where(row == float("-inf"), 0.0, row.exp() * row).sum()), abs=1e-5)
        assert got.greedy == int(row.argmax())
