"""What each processor did: followed one by one, they end where the strategy's distribution ends."""

import json

import pytest

from decoding.core.settings import Strategy
from decoding.search.session import Session
from tests.test_app import SIZE, make_app, settle
from tui.cli import main
from tui.widgets.processors import ProcessorPanel

RESHAPING = Strategy(kind="sample", temperature=0.7, top_k=4, top_p=0.6, repetition_penalty=1.5, no_repeat_ngram_size=1)


def test_each_processor_in_generates_order_ends_at_the_strategys_probabilities(tiny_engine):
    session = Session(tiny_engine, RESHAPING, choices=8)
    session.reset("hello world hello")
    report = session.processor_report()
    assert [e.name for e in report.effects] == ["repetition_penalty", "no_repeat_ngram_size", "temperature", "top_k", "top_p"]
    panel = session.distribution
    assert list(report.token_ids) == [c.token_id for c in panel.candidates]
    assert report.effects[0].before == pytest.approx([c.prob for c in panel.candidates], abs=1e-6)
    assert report.effects[-1].after == pytest.approx([c.processed_prob for c in panel.candidates], abs=1e-6)
    for earlier, later in zip(report.effects, report.effects[1:]):
        assert later.before == earlier.after
    ngram, top_k = report.effects[1], report.effects[3]
    assert ngram.removed_in_all == len(set(session.prompt_ids))  # every 1-gram of the prompt is banned
    assert top_k.removed_in_all == tiny_engine.vocab_size - 4 - ngram.removed_in_all  # 4 kept
    assert sum(p > 0 for p in top_k.after) <= 4 and not set(top_k.removed) & set(ngram.removed)
    assert set(report.effects[2].changed) == set(report.token_ids)  # temperature rescales every score


def test_prompt_tokens_are_penalised_and_banned(tiny_engine):
    session = Session(tiny_engine, Strategy(repetition_penalty=2.0, no_repeat_ngram_size=1), choices=50)
    session.reset("hello world hello")
    report = session.processor_report()
    in_prompt = set(session.prompt_ids)
    penalty, ngram = report.effects
    assert set(penalty.changed) == in_prompt & set(report.token_ids)
    assert set(ngram.removed) == in_prompt & set(report.token_ids)


def test_greedy_has_no_report_and_past_steps_keep_theirs(tiny_engine):
    assert Session(tiny_engine).processor_report() is None
    session = Session(tiny_engine, RESHAPING)
    session.reset("hello")
    first = session.processor_report()
    session.step()
    session.set_strategy(Strategy())  # a later change of strategy does not rewrite the past
    assert session.processor_report(0) == first and session.processor_report() is None


def test_json_trace_has_each_processors_effect_per_step(capsys, tiny_model_dir):
    args = ["trace", "The quick brown", "--model", str(tiny_model_dir), "--device", "cpu", "--format", "json", "--steps", "2"]
    assert main([*args, "--strategy", "sample", "--top-k", "2", "--temperature", "0.5"]) == 0
    step = json.loads(capsys.readouterr().out)["steps"][0]
    temperature, top_k = step["processors"]
    assert (temperature["name"], top_k["name"]) == ("temperature", "top_k")
    assert top_k["removed"] == [c["token_id"] for c in step["candidates"][2:]]
    assert top_k["probs_after"][:2] == pytest.approx([c["processed_prob"] for c in step["candidates"][:2]])
    assert main(args) == 0
    assert "processors" not in json.loads(capsys.readouterr().out)["steps"][0]  # greedy reshapes nothing


async def test_w_shows_what_each_processor_did(tiny_model_dir):
    app = make_app(tiny_model_dir, strategy=Strategy(kind="sample", top_k=3))
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("w")
        await settle(pilot)
        panel = app.query_one(ProcessorPanel)
        assert panel.display and app.view.panels["processors"] is not None
        shown = "\n".join(line.text for line in panel.render_lines(panel.region.reset_offset))
        assert "top-k" in shown and shown.count("✗ top-k") == 7  # 10 candidates, 3 kept
        await pilot.press("space")
        await settle(pilot)
        assert app.view.panels["processors"] == app.session.processor_report()  # follows the step
        await pilot.press("w")
        await pilot.pause()
        assert not panel.display
