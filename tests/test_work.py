"""The model's work behind a record: `tokenstep trace` runs each forward pass its output needs, once, and
a record made after the fact (`e` in the app) runs none. Counted on the real model: every forward pass
reads its input ids through the embedding layer, so a hook there sees each pass and its tokens."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import zip_longest

import pytest
import torch

from decoding.core.settings import Strategy
from decoding.core.state import Message
from decoding.explorer.explorer import Explorer
from tui.cli import main

STEPS = 6
PROMPT = "The quick brown"
HEAD_CHECK = [2]  # once per engine: the head rebuilt for prompt scores and the lens is checked on 2 tokens
EVERY_PROCESSOR = [
    *("--strategy", "sample", "--temperature", "0.8", "--top-k", "20", "--top-p", "0.9"),
    *("--repetition-penalty", "1.3", "--no-repeat-ngram-size", "2", "--seed", "3"),
]


@dataclass
class Work:
    passes: list[int] = field(default_factory=list)  # tokens read by each forward pass (rows x length)

    @property
    def tokens(self) -> int:
        return sum(self.passes)


@contextmanager
def counted() -> Iterator[Work]:
    work = Work()

    def count(module: torch.nn.Module, inputs: tuple) -> None:
        if isinstance(module, torch.nn.Embedding) and inputs:
            work.passes.append(inputs[0].numel())

    handle = torch.nn.modules.module.register_module_forward_pre_hook(count)
    try:
        yield work
    finally:
        handle.remove()


def traced(capsys, model, *options: str) -> tuple[dict, Work]:
    args = ["trace", PROMPT, "--model", str(model), "--device", "cpu", "--format", "json", "--steps", str(STEPS)]
    with counted() as work:
        assert main([*args, *options]) == 0
    return json.loads(capsys.readouterr().out), work


def prompt_length(record: dict) -> int:
    return len(record["prompt_ids"])


def one_pass_per_step(record: dict) -> list[int]:
    """The prompt read at once, then each chosen token fed alone (an ending token is never fed)."""
    fed = len(record["generated_ids"]) - (record["finished"] == "eos")
    return [prompt_length(record), *[1] * fed]


@pytest.mark.parametrize("options", [(), tuple(EVERY_PROCESSOR)], ids=["greedy", "every-processor"])
def test_a_trace_runs_one_pass_per_step(capsys, tiny_model_dir, options):
    record, work = traced(capsys, tiny_model_dir, *options)
    assert len(record["steps"]) == STEPS
    if options:
        assert all(step["processors"] for step in record["steps"])  # each step's report, none computed again
    assert work.passes == [*one_pass_per_step(record), *HEAD_CHECK]


def test_a_chat_trace_runs_one_pass_per_step(capsys, tiny_chat_model_dir):
    record, work = traced(capsys, tiny_chat_model_dir, "--chat")
    assert record["prompt_form"] == "chat"
    assert work.passes == [*one_pass_per_step(record), *HEAD_CHECK]


def test_a_grammar_trace_runs_one_pass_per_step(capsys, tiny_model_dir):
    record, work = traced(capsys, tiny_model_dir, "--regex", "[a-z ]{6}")
    assert work.passes == [*one_pass_per_step(record), *HEAD_CHECK]


def test_the_lens_adds_one_token_per_step(capsys, tiny_model_dir):
    """Each step's lens reads every layer at its position: one token on the cached prefix, the last
    step's from the pass that made it."""
    record, work = traced(capsys, tiny_model_dir, "--lens")
    assert all(step["lens"] for step in record["steps"])
    assert work.passes == [*one_pass_per_step(record), *HEAD_CHECK, *[1] * (STEPS - 1)]


def test_diff_reads_the_path_once_on_each_model(capsys, tiny_model_dir, tmp_path):
    record, _ = traced(capsys, tiny_model_dir)
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps(record))
    with counted() as work:
        assert main(["diff", str(trace), "--model", str(tiny_model_dir), "--device", "cpu", "--format", "json"]) == 0
    tokens = json.loads(capsys.readouterr().out)["tokens"]
    assert len([row for row in tokens if row["part"] == "path"]) == STEPS
    fed = one_pass_per_step(record)
    second = [prompt_length(record), *fed[1:]]
    assert work.passes == [fed[0], *HEAD_CHECK, second[0], *HEAD_CHECK, *interleaved(fed[1:], second[1:])]


def interleaved(first: list[int], second: list[int]) -> list[int]:
    """The first model steps, the second follows at once."""
    return [passes for pair in zip_longest(first, second) for passes in pair if passes is not None]


def test_beam_search_runs_one_pass_per_step(capsys, tiny_model_dir):
    """generate()'s work: the prompt once per beam, then one token per live beam for each step after the first; beside it the
    single path's prompt, which the explorer keeps to switch back to."""
    beams = 3
    record, work = traced(capsys, tiny_model_dir, "--strategy", "beam", "--num-beams", str(beams))
    steps = len(record["steps"])
    assert work.passes == [prompt_length(record), beams * prompt_length(record), *[beams] * (steps - 1)]


@pytest.mark.parametrize("strategy", [Strategy(), Strategy(kind="sample", temperature=0.8, top_k=20, repetition_penalty=1.3)])
def test_a_record_after_the_fact_runs_no_model(tiny_engine, strategy):
    """`e` in the app: the steps are made, long enough that old ones let their scores go."""
    explorer = Explorer(tiny_engine, strategy, choices=5)
    explorer.new_prompt(PROMPT)
    explorer.session.score_prompt()  # as the app does once the first panel is out
    for _ in range(12):
        explorer.step()
    with counted() as work:
        record = explorer.trace_record()
    assert len(record["steps"]) == 12 and work.passes == []


@pytest.mark.embedded
def test_each_steps_input_text_is_its_input_decoded(embedded_engine):
    """The record's inputs, built token by token, read as decoding each input whole would: through
    characters split over tokens, control tokens and a chat's second turn."""
    explorer = Explorer(embedded_engine, Strategy(kind="sample", temperature=1.5, seed=5), choices=3)
    explorer.new_chat([Message("user", "Écris un mot en japonais: 東京 😀")])
    for token_id in embedded_engine.encode_piece("東京 😀 café"):
        explorer.force(token_id)
    explorer.force(embedded_engine.encode_piece("<|im_end|>")[0])
    explorer.say("Encore?")
    for _ in range(8):
        explorer.step()
    session = explorer.session
    inputs = [step["input_text"] for step in explorer.trace_record()["steps"] if "turn" not in step]
    assert inputs == [embedded_engine.decode(session.ids_before(index)) for index in range(len(session.path))]
