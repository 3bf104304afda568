"""The core on the real embedded SmolLM2-135M-Instruct: agreement with generate() and the chapter's table."""

import pytest
import torch

from decoding.core.settings import Strategy
from decoding.explorer.explorer import Explorer
from decoding.explorer.trace_run import TracePlan, run_trace
from decoding.records.trace import format_trace
from decoding.search.session import Session

pytestmark = pytest.mark.embedded
PROMPT = "Transformers are the"


def generate(engine, prompt_ids, n, **kwargs):
    ids = torch.tensor([prompt_ids])
    out = engine.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, **kwargs)
    return out[0, len(prompt_ids) :].tolist()


def test_greedy_steps_give_exactly_the_tokens_of_generate(embedded_engine):
    session = Session(embedded_engine)
    session.reset(PROMPT)
    for _ in range(24):
        session.step()
    assert session.generated_ids == generate(embedded_engine, session.prompt_ids, 24, do_sample=False)


@pytest.mark.parametrize(
    "settings",
    [
        {"temperature": 0.7, "top_k": 50, "top_p": 0.9, "seed": 0},
        {"temperature": 1.5, "top_k": 0, "top_p": 1.0, "seed": 42},
        {"temperature": 1.0, "top_k": 0, "top_p": 0.9, "seed": 7, "repetition_penalty": 1.2, "no_repeat_ngram_size": 2},
        {"temperature": 0.8, "min_p": 0.05, "seed": 1},
        {"typical_p": 0.9, "seed": 2},
        {"epsilon_cutoff": 3e-4, "seed": 3},
        {"temperature": 1.2, "eta_cutoff": 3e-4, "seed": 4},
    ],
)
def test_seeded_sampling_gives_exactly_the_tokens_of_generate(embedded_engine, settings):
    strategy = Strategy(kind="sample", **settings)
    session = Session(embedded_engine, strategy)
    session.reset(PROMPT)
    for _ in range(24):
        session.step()
    torch.manual_seed(strategy.seed)
    assert session.generated_ids == generate(embedded_engine, session.prompt_ids, 24, **strategy.generation_kwargs())


def chapter_loop(engine, prompt, n_steps, choices):
    """The chapter's greedy loop: re-run the whole sequence each step, argsort, top choices."""
    model, tokenizer = engine.model, engine.tokenizer
    input_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    rows = []
    with torch.no_grad():
        for _ in range(n_steps):
            probs = torch.softmax(model(input_ids=input_ids).logits[0, -1, :], dim=-1)
            sorted_ids = torch.argsort(probs, dim=-1, descending=True)
            rows.append([(int(i), float(probs[i])) for i in sorted_ids[:choices]])
            input_ids = torch.cat([input_ids, sorted_ids[None, 0, None]], dim=-1)
    return rows


def test_trace_table_matches_the_chapters_loop(embedded_engine):
    record = run_trace(Explorer(embedded_engine, choices=5), TracePlan(PROMPT, steps=8))
    expected = chapter_loop(embedded_engine, PROMPT, 8, 5)
    for step, want in zip(record["steps"], expected, strict=True):
        got = [(c["token_id"], c["prob"]) for c in step["candidates"]]
        assert [token for token, _ in got] == [token for token, _ in want]
        assert [p for _, p in got] == pytest.approx([p for _, p in want], rel=1e-4)
    table = format_trace(record, "table").splitlines()
    header = ["Input", "Chosen", "Prob", "Forced", "Choice", "0", "Choice", "1", "Choice", "2", "Choice", "3", "Choice", "4"]
    assert table[0].split() == header
    assert table[2].startswith("Transformers are the ") and f"* most ({100 * expected[0][0][1]:.2f}%)" in table[2]
    assert len(table) == 2 + 8


def test_a_forced_path_is_scored_by_the_raw_model_and_undo_returns_to_it(embedded_engine):
    session = Session(embedded_engine)
    session.reset(PROMPT)
    second = session.distribution.candidates[1]
    first_panel = session.distribution
    token = session.force(second.token_id)
    assert (token.forced, token.rank, token.prob) == (True, 1, second.prob)
    session.step()
    full = torch.tensor([session.ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(embedded_engine.model(input_ids=full).logits[0].float(), dim=-1)
    n = len(session.prompt_ids)
    expected = sum(float(logprobs[n - 1 + i, t]) for i, t in enumerate(session.generated_ids))
    assert session.sequence_logprob == pytest.approx(expected, abs=1e-3)
    session.undo()
    session.undo()
    assert session.distribution == first_panel
