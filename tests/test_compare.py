"""Strategies side by side: each row is what that strategy writes when run alone, for exactly N tokens."""

import json
from dataclasses import replace

import pytest

from decoding.core.errors import SettingsError
from decoding.core.prompt import recorded_prompt
from decoding.core.settings import CHAPTER_STRATEGIES, parse_strategies
from decoding.records.compare import Cancelled, compare, repeated_ngrams
from decoding.search.beam import BeamSearch
from decoding.search.session import Session
from tui.cli import main

NEW_TOKENS = 6


def run_alone(engine, strategy, prefix_ids):
    """The strategy on its own, end-of-sequence suppressed as the comparison does."""
    exact = replace(strategy, suppress_tokens=tuple(sorted(engine.eos_token_ids)))
    if strategy.is_beam:
        search = BeamSearch(engine, exact, prefix_ids, max_new_tokens=NEW_TOKENS)
        while not search.ended:
            search.step()
        best = search.snapshot().best
        return list(best.token_ids), best.logprob
    session = Session(engine, exact)
    session.reset(recorded_prompt(engine, prefix_ids))
    for _ in range(NEW_TOKENS):
        session.step()
    return session.generated_ids, session.sequence_logprob


def test_each_row_equals_that_strategy_run_alone(tiny_engine):
    strategies = parse_strategies(CHAPTER_STRATEGIES, seed=3)
    prefix_ids = tiny_engine.encode("hello world")
    results = compare(tiny_engine, prefix_ids, strategies, NEW_TOKENS)
    assert [r.strategy for r in results] == strategies
    for result in results:
        ids, logprob = run_alone(tiny_engine, result.strategy, prefix_ids)
        assert list(result.token_ids) == ids and len(ids) == NEW_TOKENS
        assert result.logprob == pytest.approx(logprob, abs=1e-4)
        assert result.mean_logprob == pytest.approx(logprob / NEW_TOKENS, abs=1e-4)
        assert not set(ids) & tiny_engine.eos_token_ids


def test_a_comparison_can_be_cancelled_and_reports_progress(tiny_engine):
    seen = []
    calls = iter(range(1000))
    with pytest.raises(Cancelled):
        compare(
            tiny_engine,
            [1, 2],
            parse_strategies("greedy,sample"),
            5,
            should_stop=lambda: next(calls) >= 7,
            progress=lambda d, t: seen.append((d, t)),
        )
    assert seen == [(0, 2), (1, 2)]


def test_repeated_ngrams_counts_repeats_of_earlier_trigrams():
    assert repeated_ngrams([1, 2, 3, 4, 5]) == 0
    assert repeated_ngrams([1, 2, 3, 1, 2, 3, 1, 2, 3]) == 4
    assert repeated_ngrams([7, 7, 7, 7]) == 1


def test_strategy_lists_are_parsed_with_clear_errors():
    beam, sample = parse_strategies("beam:num_beams=3:early_stopping=never, sample:temperature=0.5:top_k=0", seed=9)
    assert (beam.kind, beam.num_beams, beam.early_stopping) == ("beam", 3, "never")
    assert (sample.temperature, sample.top_k, sample.seed) == (0.5, 0, 9)
    with pytest.raises(SettingsError, match="name=value"):
        parse_strategies("sample:temperature")
    with pytest.raises(SettingsError, match="'sample:top_p=2'.*top_p"):
        parse_strategies("sample:top_p=2")


def test_compare_command_prints_every_strategy_in_each_format(capsys, tiny_model_dir):
    args = ["compare", "The quick brown", "--model", str(tiny_model_dir), "--device", "cpu", "--new-tokens", "4"]
    assert main([*args, "--format", "json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["new_tokens"] == 4 and len(record["results"]) == 8
    assert all(len(r["generated_ids"]) == 4 for r in record["results"])
    assert record["results"][1]["settings"]["num_beams"] == 5
    assert main([*args, "--strategies", "greedy,beam:num_beams=2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["Strategy", "logprob", "mean"] and len(table) == 4
    assert main([*args, "--format", "markdown"]) == 0
    assert capsys.readouterr().out.startswith("| Strategy | logprob | mean | repeated 3-grams | Continuation |")
