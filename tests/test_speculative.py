"""Speculative decoding: greedy with a draft is the target's greedy path token for token, a draft equal
to the target is always accepted, speculative sampling keeps the target's distribution (chi-square
over 2,000 draws at one step), and the app draws the draft at work."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import replace

import pytest
from rich.cells import cell_len

from decoding.core.errors import SessionError
from decoding.core.settings import Strategy
from decoding.core.tokens import escape_controls, token_label
from decoding.engines.registry import LoadOptions, load_engine
from decoding.explorer.explorer import Explorer
from decoding.explorer.opening import add_draft_model
from decoding.search.session import Session
from tests.test_app import make_app, settle
from tests.test_app_drawn import rows_of
from tests.test_attribution_and_steering import tiny_model_of
from tests.test_hostile import run_cli
from tui.widgets.status import StatusLine
from tui.widgets.text_view import TextView

PROMPT = "The quick brown"


@pytest.fixture(scope="module")
def other_draft(tiny_model_dir, tmp_path_factory):
    """A tiny Qwen2 of other random weights, with the tiny Llama's tokenizer: a draft often wrong."""
    return tiny_model_of("qwen2", tiny_model_dir, tmp_path_factory.mktemp("draft"))


@pytest.fixture(scope="module")
def near_draft(tiny_model_dir, tmp_path_factory):
    """The tiny Llama with noise on its weights: a draft right most of the time, not always."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("near-draft")
    shutil.copytree(tiny_model_dir, folder, dirs_exist_ok=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.3 * parameter.std().clamp(min=1e-3))
    model.save_pretrained(folder)
    return folder


def path_of(explorer: Explorer, steps: int) -> list[int]:
    explorer.new_prompt(PROMPT)
    for _ in range(steps):
        if not explorer.can_play_on():
            break
        explorer.step()
    return explorer.session.generated_ids


@pytest.mark.parametrize("which", ["near", "other"])
def test_greedy_with_a_draft_right_or_wrong_is_the_targets_greedy_path(tiny_model_dir, near_draft, other_draft, which):
    target = load_engine(LoadOptions(model=str(tiny_model_dir), device="cpu"))
    plain = path_of(Explorer(load_engine(LoadOptions(model=str(tiny_model_dir), device="cpu"))), 40)
    explorer = Explorer(target)
    drafted = near_draft if which == "near" else other_draft
    explorer.add_draft(load_engine(LoadOptions(model=str(drafted), device="cpu")), 4, which)
    assert path_of(explorer, 40) == plain
    draft = explorer.view().snapshot.draft
    assert draft.accepted < draft.judged  # it was wrong, and the path never showed it
    if which == "near":
        assert draft.accepted > 0 and draft.passes < 40  # and right, and the target ran fewer passes than tokens


@pytest.mark.parametrize("strategy", [Strategy(), Strategy(kind="sample", seed=3, temperature=0.9)], ids=["greedy", "sample"])
def test_a_draft_equal_to_the_target_is_always_accepted(tiny_model_dir, strategy):
    options = LoadOptions(model=str(tiny_model_dir), device="cpu")
    explorer = Explorer(load_engine(options), strategy)
    add_draft_model(explorer, options, 4, options)  # the same weights, on a cache of their own
    path_of(explorer, 30)
    draft = explorer.view().snapshot.draft
    assert draft.judged >= 20 and draft.acceptance == 1.0
    assert draft.tokens_per_pass == pytest.approx(5.0, abs=0.5)  # K accepted and the target's own, each pass


def test_speculative_sampling_keeps_the_targets_distribution(tiny_model_dir, other_draft):
    """2,000 rounds from one context: the first judged token, grouped by the round's first token, is
    drawn as the target draws it (chi-square), though the draft proposes from another distribution."""
    strategy = Strategy(kind="sample", seed=11, top_k=3)
    target = load_engine(LoadOptions(model=str(tiny_model_dir), device="cpu"))
    explorer = Explorer(target, strategy)
    explorer.add_draft(load_engine(LoadOptions(model=str(other_draft), device="cpu")), 1, "qwen2")
    session = explorer.session
    seen: dict[int, Counter] = {}
    rejected = 0
    for seed in range(2000):  # a seed each: the session's sampler draws for the draft's rounds too
        explorer.apply_settings(replace(strategy, seed=seed), session.choices)
        explorer.new_prompt(PROMPT)
        explorer.step()
        explorer.step()
        first, second = session.generated_ids
        seen.setdefault(first, Counter())[second] += 1
        rejected += not explorer.view().snapshot.draft.marks[1].accepted
    first, counts = max(seen.items(), key=lambda item: sum(item[1].values()))
    draws = sum(counts.values())
    assert draws >= 500
    check = Session(load_engine(LoadOptions(model=str(tiny_model_dir), device="cpu")), strategy)
    check.reset(PROMPT)
    check.force(first)
    p = check.next.strategy_scores.softmax(-1)
    kept = [int(t) for t in p.nonzero().flatten()]
    assert set(counts) <= set(kept)  # nothing the target rules out, though the draft proposes it
    chi2 = sum((counts[t] - draws * float(p[t])) ** 2 / (draws * float(p[t])) for t in kept)
    assert chi2 < 13.8  # chi-square with 2 degrees of freedom, p = 0.001
    assert rejected > 100  # the draft was rejected now and then, and the path never showed it


def test_a_draft_with_another_tokenizer_or_a_strategy_it_cannot_share_is_one_line(tiny_model_dir):
    code, _, err = run_cli("trace", "Hi", "--model", str(tiny_model_dir), "--device", "cpu", "--draft-engine", "llama")
    assert code == 2 and err.count("\n") == 1 and "both models must share one tokenizer" in err
    code, _, err = run_cli(
        "trace",
        "Hi",
        "--model",
        str(tiny_model_dir),
        "--device",
        "cpu",
        "--draft-model",
        str(tiny_model_dir),
        "--draft-tokens",
        "0",
    )
    assert code == 2 and "--draft-tokens must be from 1 to 16 (got 0)." in err
    code, _, err = run_cli("trace", "Hi", "--model", str(tiny_model_dir), "--device", "cpu", "--draft-model", "/nonexistent")
    assert code == 2 and err.startswith("tokenstep: --draft-model /nonexistent: no such folder")  # the draft's option named
    code, _, err = run_cli("trace", "Hi", "--draft-tokens", "3")
    assert code == 2 and "--draft-tokens goes with --draft-model or --draft-engine." in err
    explorer = Explorer(load_engine(LoadOptions(model=str(tiny_model_dir), device="cpu")), Strategy(kind="beam"))
    with pytest.raises(SessionError, match="proposes one path: use greedy or sampling"):
        explorer.add_draft(explorer.engine, 4, "itself")


def test_a_trace_records_each_proposal_and_a_summary(tiny_model_dir, other_draft):
    code, out, err = run_cli(
        "trace", PROMPT, "--model", str(tiny_model_dir), "--device", "cpu", "--steps", "12", "--format", "json",
        "--draft-model", str(other_draft), "--draft-tokens", "3",
    )  # fmt: skip
    assert code == 0, err
    record = json.loads(out)
    summary, steps = record["draft"], record["steps"]
    assert summary["tokens"] == 3 and summary["proposals_judged"] == sum(step["draft"] is not None for step in steps)
    assert summary["accepted"] == sum(bool(step["draft"] and step["draft"]["accepted"]) for step in steps)
    for step in steps:
        mark = step["draft"]
        if mark is not None:  # the proposal judged here: taken when accepted, else the target's correction
            assert (mark["proposed"] == step["chosen"]["token_id"]) == mark["accepted"]
            assert 0 <= mark["p_target"] <= 1 and 0 < mark["q_draft"] <= 1
    code, plain, _ = run_cli(
        "trace", PROMPT, "--model", str(tiny_model_dir), "--device", "cpu", "--steps", "12", "--format", "json"
    )
    assert [s["chosen"]["token_id"] for s in json.loads(plain)["steps"]] == [s["chosen"]["token_id"] for s in steps]


def test_compare_steps_greedy_and_sampling_with_the_draft_and_beam_search_without(tiny_model_dir, near_draft):
    args = ["compare", PROMPT, "--model", str(tiny_model_dir), "--device", "cpu", "--new-tokens", "10", "--format", "json"]
    strategies = ["--strategies", "greedy,sample:temperature=0.8,beam"]
    code, out, err = run_cli(*args, *strategies, "--draft-model", str(near_draft))
    assert code == 0, err
    drafted = json.loads(out)["results"]
    code, out, _ = run_cli(*args, *strategies)
    plain = json.loads(out)["results"]
    assert drafted[0]["generated_ids"] == plain[0]["generated_ids"]  # greedy: the same tokens
    assert drafted[2]["generated_ids"] == plain[2]["generated_ids"] and "draft" not in drafted[2]  # beam: no draft
    assert all(0 <= r["draft"]["acceptance_rate"] <= 1 for r in drafted[:2])


@pytest.mark.embedded
def test_the_embedded_model_with_its_gguf_under_llama_cpp_as_draft_keeps_its_greedy_path():
    pytest.importorskip("llama_cpp")
    args = ["trace", "The capital of France is", "--steps", "40", "--format", "json", "--device", "cpu", "--dtype", "float32"]
    code, out, err = run_cli(*args, "--draft-engine", "llama")
    assert code == 0, err
    drafted = json.loads(out)
    code, out, _ = run_cli(*args)
    assert [s["chosen"]["token_id"] for s in drafted["steps"]] == [s["chosen"]["token_id"] for s in json.loads(out)["steps"]]
    assert drafted["draft"]["acceptance_rate"] > 0.8 and drafted["draft"]["tokens_per_target_pass"] > 3


async def test_the_app_draws_the_proposals_the_acceptance_and_the_draft_agreement_heat(tiny_model_dir, near_draft):
    draft = (LoadOptions(model=str(near_draft), device="cpu"), 4)
    app = make_app(tiny_model_dir, draft=draft)
    async with app.run_test(size=(170, 40)) as pilot:
        await settle(pilot)
        for _ in range(8):
            await pilot.press("space")  # one token a key: each proposal judged as the path reaches it
            await settle(pilot)
        snapshot = app.snapshot
        shown = snapshot.draft
        strip = " ".join(row.text for row in rows_of(app, app.query_one("#draft-strip")))
        assert "draft, 4 a round:" in strip
        for label, state, p, q in shown.proposals:
            mark = {"accepted": "✓", "rejected": "✗", "pending": "·", "dropped": "·"}[state]
            assert f"{mark} {token_label(label)}" in strip
            if p is not None:
                assert f"p={p:.2f} q={q:.2f}" in strip
        status = rows_of(app, app.query_one(StatusLine))[0].text
        assert f"draft {shown.acceptance:.0%} accepted" in status
        while app.heat != "draft agreement":
            await pilot.press("h")
            await pilot.pause()
        legend = rows_of(app, app.query_one(TextView).query_one("#legend"))[0]
        at = legend.find("heat: draft agreement")
        tints = []
        for label in ("accepted", "the target's own", "rejected: corrected"):
            at = legend.find(label, at)
            (colour,) = legend.colours(at, label)
            tints.append(colour)
            at += len(label)
        assert len(set(tints)) == 3
        tints.insert(2, None)  # (the third tint is not this heat's)
        row = rows_of(app, app.query_one(TextView).query_one("#running-text"))[0]
        at = len(snapshot.prompt)
        for piece, mark in zip(snapshot.pieces, shown.marks):
            expected = tints[1] if mark is None else tints[0] if mark.accepted else tints[3]
            drawn = escape_controls(piece)  # as the text shows a control character
            if drawn:  # (a token that is part of a character shows with the one that completes it)
                assert row.colours(at, drawn) == {expected}, piece
            at += cell_len(drawn)
        assert math.isfinite(shown.tokens_per_pass)


def test_replay_loads_the_draft_again_and_a_sampled_path_comes_out_the_same(tiny_model_dir, near_draft, tmp_path):
    code, out, err = run_cli(
        "trace", PROMPT, "--model", str(tiny_model_dir), "--device", "cpu", "--steps", "12", "--format", "json",
        "--strategy", "sample", "--seed", "4", "--draft-model", str(near_draft),
    )  # fmt: skip
    assert code == 0, err
    record = json.loads(out)
    assert record["draft"]["model_id"] == str(near_draft) and record["draft"]["tokens"] == 4
    path = tmp_path / "drafted.json"
    path.write_text(out)
    code, out, err = run_cli("replay", str(path), "--device", "cpu")
    assert code == 0, out + err
    record["draft"]["tokens"] = 99
    path.write_text(json.dumps(record))
    code, out, err = run_cli("replay", str(path), "--device", "cpu")
    assert code == 2 and err.count("\n") == 1 and "The trace's draft cannot be used" in err


def test_a_round_is_dropped_when_the_path_changes_under_it(tiny_model_dir, near_draft):
    """Pick another token at the last step, undo, change the settings: what the round computed for
    the old path is never used (greedy stays the target's own path from wherever the path is)."""
    plain = Explorer(load_engine(LoadOptions(model=str(tiny_model_dir), device="cpu")))
    drafted = Explorer(load_engine(LoadOptions(model=str(tiny_model_dir), device="cpu")))
    drafted.add_draft(load_engine(LoadOptions(model=str(near_draft), device="cpu")), 4, "near")
    for explorer in (plain, drafted):
        explorer.new_prompt(PROMPT)
        for _ in range(3):
            explorer.step()
        explorer.pick_at(2, 1)  # the last token replaced by the runner-up: the round was drafted after the old one
        explorer.step()
        explorer.undo()
        explorer.step()
        explorer.apply_settings(Strategy(repetition_penalty=1.3), explorer.session.choices)
        for _ in range(6):
            explorer.step()
    assert drafted.session.generated_ids == plain.session.generated_ids
    assert drafted.engine.cached_length == len(drafted.session.ids)


def test_a_draft_that_fails_or_a_strategy_it_cannot_share_sits_out_and_the_path_goes_on(tiny_model_dir, near_draft):
    plain = Explorer(load_engine(LoadOptions(model=str(tiny_model_dir), device="cpu")))
    drafted = Explorer(load_engine(LoadOptions(model=str(tiny_model_dir), device="cpu")))
    drafted.add_draft(load_engine(LoadOptions(model=str(near_draft), device="cpu")), 4, "near")
    draft_engine = drafted.draft.follower.engine

    def broken(ids):
        raise RuntimeError("the draft's server went away\x1b[31m")

    draft_engine.feed = broken
    for explorer in (plain, drafted):
        explorer.new_prompt(PROMPT)
        explorer.step()
    assert drafted.session.generated_ids == plain.session.generated_ids
    assert drafted.view().snapshot.draft.note.startswith("the draft sat this round out: the draft's server went away")
    assert "\x1b" not in drafted.view().snapshot.draft.note
    del draft_engine.feed
    for explorer in (plain, drafted):
        explorer.apply_settings(Strategy(kind="sample", mirostat=2, seed=1), explorer.session.choices)
        explorer.step()
    assert drafted.session.generated_ids == plain.session.generated_ids  # mirostat: the target's own step
    assert "mirostat" in drafted.view().snapshot.draft.note
