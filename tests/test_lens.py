"""The logit lens against an independent computation from `model(ids, output_hidden_states=True)`, on the
embedded SmolLM2 (Llama: RMSNorm, separate head) and on a tiny random GPT-2 (LayerNorm, tied embeddings)."""

import json

import pytest
import torch

from decoding.engines.registry import LoadOptions, load_engine
from decoding.search.lens import session_lens
from decoding.search.session import Session
from tui.cli import main


def independent_lens(engine, ids):
    """Every layer's residual stream at the last position through the base model's final norm and the
    output embeddings; the last layer's as transformers returns it (already normed)."""
    model = engine.model
    with torch.inference_mode():
        out = model(torch.tensor([ids]), output_hidden_states=True)
        states = [layer[0, -1] for layer in out.hidden_states]
        norm = engine._final_norm
        rows = [model.get_output_embeddings()(norm(state)) for state in states[:-1]]
        rows.append(model.get_output_embeddings()(states[-1]))
    return torch.stack(rows).float().log_softmax(-1), out.logits[0, -1].float().log_softmax(-1)


def assert_lens_matches(engine, session, ids, step):
    lens = session_lens(session, step)
    expected, model_own = independent_lens(engine, ids)
    got = engine.layer_logprobs(ids)
    assert got.shape == expected.shape == (engine.model.config.num_hidden_layers + 1, engine.vocab_size)
    assert torch.allclose(got.exp(), expected.exp(), atol=1e-4)
    assert torch.allclose(got[-1].exp(), model_own.exp(), atol=1e-5)  # the last layer is the model's own
    chosen = lens.tracked[0][0]
    for layer, row in zip(lens.layers, expected):
        assert layer.top[0][0] == int(row.argmax())
        assert layer.ranks[0] == int((row > row[chosen]).sum())
        assert layer.probs[0] == pytest.approx(float(row[chosen].exp()), abs=1e-4)
    return lens


@pytest.mark.embedded
def test_the_lens_of_the_embedded_model_equals_an_independent_computation(embedded_engine):
    session = Session(embedded_engine)
    session.reset("Transformers are the most")
    lens = assert_lens_matches(embedded_engine, session, session.ids, None)  # the next token
    assert lens.tracked[0][1] == " efficient" and lens.settles_at is not None
    final_top = lens.layers[-1].top[0][0]
    assert all(layer.top[0][0] == final_top for layer in lens.layers[lens.settles_at :])
    assert lens.layers[lens.settles_at - 1].top[0][0] != final_top
    before = session.distribution
    session.step()
    session.step()
    # a past step: one forward at its position on the cached prefix, leaving the cache as it was
    assert_lens_matches(embedded_engine, session, session.ids_before(1), 1)
    session.undo()
    assert session.distribution is not None and session.path[0].token_id == before.candidates[0].token_id


@pytest.mark.embedded
def test_kept_layers_give_the_same_lens_without_a_second_forward(embedded_engine, monkeypatch):
    session = Session(embedded_engine)
    session.reset("Transformers are the most")
    embedded_engine.keep_layers = True
    try:
        session.step()
        import decoding.engines.hf.engine as hf

        def no_second_forward(*args, **kwargs):
            raise AssertionError("the kept layers should have been used")

        monkeypatch.setattr(hf, "_last_logits_and_states", no_second_forward)
        got = embedded_engine.layer_logprobs(session.ids)
    finally:
        embedded_engine.keep_layers = False
    monkeypatch.undo()
    expected, _ = independent_lens(embedded_engine, session.ids)
    assert torch.allclose(got.exp(), expected.exp(), atol=1e-4)


@pytest.fixture(scope="module")
def tiny_gpt2_dir(tiny_model_dir, tmp_path_factory):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=3, n_head=4, eos_token_id=0)
    torch.manual_seed(0)
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_the_lens_of_a_tiny_gpt2_equals_an_independent_computation(tiny_gpt2_dir):
    engine = load_engine(LoadOptions(model=str(tiny_gpt2_dir), device="cpu"))
    assert type(engine._final_norm).__name__ == "LayerNorm"
    assert engine.model.get_output_embeddings().weight.data_ptr() == engine.model.get_input_embeddings().weight.data_ptr()
    session = Session(engine)
    session.reset("The quick brown")
    assert_lens_matches(engine, session, session.ids, None)
    session.step()
    session.step()
    assert_lens_matches(engine, session, session.ids_before(0), 0)


def test_the_trace_carries_each_steps_lens(capsys, tiny_model_dir):
    assert main(["trace", "The quick brown", "--model", str(tiny_model_dir), "--steps", "2", "--format", "json", "--lens"]) == 0
    record = json.loads(capsys.readouterr().out)
    engine = load_engine(LoadOptions(model=str(tiny_model_dir), device="cpu"))
    ids = list(record["prompt_ids"])
    for step in record["steps"]:
        expected, _ = independent_lens(engine, ids)
        chosen = step["chosen"]["token_id"]
        assert len(step["lens"]) == engine.model.config.num_hidden_layers + 1
        for layer, row in zip(step["lens"], expected):
            assert layer["chosen_rank"] == int((row > row[chosen]).sum())
            assert [t["token_id"] for t in layer["top"]] == row.topk(5).indices.tolist()
        assert step["lens"][-1]["chosen_prob"] == pytest.approx(step["chosen"]["prob"], abs=1e-5)
        ids.append(chosen)


@pytest.mark.embedded
def test_the_llama_cpp_engine_says_it_has_no_lens():
    pytest.importorskip("llama_cpp")
    session = Session(load_engine(LoadOptions(engine="llama")))
    session.reset("Transformers are the")
    lens = session_lens(session, None)
    assert not lens.layers and "no hidden states" in lens.note


def test_after_the_end_of_sequence_the_lens_says_to_look_at_a_past_step(tiny_engine):
    session = Session(tiny_engine)
    session.reset("The quick brown")
    session.step()
    session.force(sorted(tiny_engine.eos_token_ids)[0])
    assert session.finished == "eos"
    lens = session_lens(session, None)
    assert not lens.layers and "has ended" in lens.note
    assert len(session_lens(session, 1).layers) == tiny_engine.model.config.num_hidden_layers + 1
