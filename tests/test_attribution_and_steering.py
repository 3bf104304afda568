"""Why this token, and what if: attribution of a candidate over the context (leave-one-out on every
engine, gradient x input and integrated gradients on transformers), held against independent
computations; steering vectors added to one decoder layer, held against generate() with a forward
hook adding the same vector, on tiny GPT-2, Qwen2 and Phi models as on Llama."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from decoding.core.errors import SessionError
from decoding.core.settings import Strategy
from decoding.core.steering import Steering
from decoding.engines.registry import LoadOptions, load_engine
from decoding.explorer.explorer import Explorer
from decoding.search.attribution import attribute
from decoding.search.session import Session
from tests.test_hostile import run_cli

PROMPT = "The quick brown fox jumps over"


def target_logprob(model, ids: list[int], target: int) -> float:
    with torch.no_grad():
        return float(torch.log_softmax(model(torch.tensor([ids])).logits[0, -1].float(), dim=-1)[target])


LONG = " ".join(["The quick brown fox jumps over the lazy dog."] * 4)  # 40-odd tokens: three batches of deletions


@pytest.mark.parametrize("text", [PROMPT, LONG, "The"], ids=["short", "three batches", "one token"])
def test_leave_one_out_is_what_deleting_each_token_gives(tiny_engine, text):
    ids = tiny_engine.encode(text)
    target = 40
    if len(ids) == 1:  # without its one token the context is empty: nothing to read, no number
        assert attribute(tiny_engine, ids, target, "loo").values == (None,)
        return
    whole = target_logprob(tiny_engine.model, ids, target)
    expected = [whole - target_logprob(tiny_engine.model, ids[:i] + ids[i + 1 :], target) for i in range(len(ids))]
    got = attribute(tiny_engine, ids, target, "loo").values
    assert got == pytest.approx(expected, abs=1e-3)


def test_gradient_times_input_is_what_autograd_gives(tiny_engine):
    model, ids, target = tiny_engine.model, tiny_engine.encode(PROMPT), 40
    embeddings = model.get_input_embeddings()(torch.tensor([ids])).detach().requires_grad_(True)
    with torch.enable_grad():
        logprob = torch.log_softmax(model(inputs_embeds=embeddings).logits[0, -1].float(), dim=-1)[target]
        logprob.backward()
    expected = (embeddings.grad * embeddings).sum(dim=-1)[0].tolist()
    assert attribute(tiny_engine, ids, target, "grad_x_input").values == pytest.approx(expected, abs=1e-3)


@pytest.mark.embedded
def test_integrated_gradients_are_complete_within_5_percent_at_64_steps(embedded_engine):
    ids = embedded_engine.encode("The capital of France is")
    target = embedded_engine.encode_piece(" Paris")[0]
    found = attribute(embedded_engine, ids, target, "ig")
    assert found.completeness_gap is not None and found.completeness_gap < 0.05
    assert len(found.values) == len(ids) and found.values[0] == 0.0  # the first token stays in the baseline


def test_trace_attribution_equals_the_independent_computations(tiny_model_dir, tiny_engine):
    code, out, err = run_cli(
        "trace", "The quick brown", "--model", str(tiny_model_dir), "--device", "cpu", "--steps", "3", "--format", "json",
        "--attribution", "loo,grad_x_input,ig", "--attribution-target", "1",
    )  # fmt: skip
    assert code == 0, err
    record = json.loads(out)
    for index, step in enumerate(record["steps"]):
        context = record["prompt_ids"] + record["generated_ids"][:index]
        found = step["attribution"]
        assert found["target"] == step["candidates"][1]["token_id"]
        assert len(found["loo"]) == len(found["grad_x_input"]) == len(found["ig"]) == len(context)
        whole = target_logprob(tiny_engine.model, context, found["target"])
        deleted = [
            whole - target_logprob(tiny_engine.model, context[:i] + context[i + 1 :], found["target"])
            for i in range(len(context))
        ]
        assert found["loo"] == pytest.approx(deleted, abs=1e-3)
        assert "ig_completeness_gap" in found


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["--attribution", "shap"], "--attribution takes loo, grad_x_input and ig"),
        (["--attribution", "loo"], "with --format json"),
        (["--attribution-target", "2"], "--attribution-target goes with --attribution"),
    ],
)
def test_a_bad_attribution_option_is_one_line(tiny_model_dir, options, said):
    code, _, err = run_cli("trace", "Hi", "--model", str(tiny_model_dir), "--device", "cpu", *options)
    assert code == 2 and said in err and len(err.strip().splitlines()) == 1


@pytest.mark.embedded
def test_leave_one_out_works_on_llama_cpp_and_sets_its_cache_back():
    pytest.importorskip("llama_cpp")
    engine = load_engine(LoadOptions(engine="llama"))
    session = Session(engine)
    session.reset("The capital of France is")
    before = session.next.distribution
    target = before.candidates[0].token_id
    found = attribute(engine, session.ids, target, "loo", held=session.ids)
    assert len(found.values) == len(session.ids) and all(value is not None for value in found.values)
    session.step()  # the cache holds the path again: the step is the one it would have been
    assert session.path[0].token_id == target
    with pytest.raises(SessionError, match="gradients"):
        attribute(engine, session.ids, target, "grad_x_input")


@pytest.mark.embedded
def test_leave_one_out_on_llama_cpp_is_what_deleting_each_token_gives():
    pytest.importorskip("llama_cpp")
    engine = load_engine(LoadOptions(engine="llama"))
    ids = engine.encode(" ".join(["The quick brown fox jumps over the lazy dog."] * 2))  # 20-odd: two batches
    target = engine.encode_piece(" The")[0]

    def logprob(context: list[int]) -> float:
        engine.crop(0)
        return float(engine.feed(context).logprobs[target])

    whole = logprob(ids)
    expected = [whole - logprob(ids[:i] + ids[i + 1 :]) for i in range(len(ids))]
    assert attribute(engine, ids, target, "loo").values == pytest.approx(expected, abs=1e-3)


# --- steering -------------------------------------------------------------------------------------


def tiny_model_of(architecture: str, tokenizer_dir: Path, folder: Path) -> Path:
    """A tiny random model of another family, with the tiny Llama's tokenizer."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, PhiConfig, PhiForCausalLM, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    common = dict(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    if architecture == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=3, n_head=4, n_positions=64, initializer_range=0.3, **common))
    elif architecture == "qwen2":
        config = Qwen2Config(
            hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=64, initializer_range=0.3, **common,
        )  # fmt: skip
        model = Qwen2ForCausalLM(config)
    else:
        config = PhiConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=64,
            initializer_range=0.3, **common,
        )  # fmt: skip
        model = PhiForCausalLM(config)
    torch.manual_seed(1)
    model.save_pretrained(folder)
    for name in tokenizer_dir.iterdir():
        if "token" in name.name:
            shutil.copy(name, folder / name.name)
    return folder


ARCHITECTURES = ["llama", "gpt2", "qwen2", "phi"]
STEERING = Steering(layer=1, scale=6.0, toward="The quick brown fox", away="Decoding picks one token")


@pytest.fixture(params=ARCHITECTURES)
def any_model(request, tiny_model_dir, tmp_path_factory):
    if request.param == "llama":
        return tiny_model_dir
    return tiny_model_of(request.param, tiny_model_dir, tmp_path_factory.mktemp(request.param))


def generate_with_hook(engine, ids: list[int], steering: Steering, new_tokens: int) -> list[int]:
    """generate() with a forward hook of the test's own adding scale * v to the layer's output."""
    from decoding.engines.hf.steering import decoder_layers

    layers = decoder_layers(engine.model)

    def mean_output(text: str) -> torch.Tensor:
        kept = []
        handle = layers[steering.layer].register_forward_hook(lambda module, args, output: kept.append(output))
        with torch.no_grad():
            engine.model(torch.tensor([engine.encode(text)]))
        handle.remove()
        out = kept[0][0] if isinstance(kept[0], tuple) else kept[0]
        return out[0].mean(dim=0)

    vector = steering.scale * (mean_output(steering.toward) - mean_output(steering.away))

    def add(module, args, output):
        return (output[0] + vector, *output[1:]) if isinstance(output, tuple) else output + vector

    handle = layers[steering.layer].register_forward_hook(add)
    try:
        with torch.no_grad():
            out = engine.model.generate(
                torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long), max_new_tokens=new_tokens,
                do_sample=False, pad_token_id=min(engine.eos_token_ids),
            )  # fmt: skip
    finally:
        handle.remove()
    return out[0, len(ids) :].tolist()


def unsteered_fork(engine):
    fork = engine.fork()  # steered as the engine is
    fork.steer(None)
    return fork


def greedy_path(engine, steering: Steering | None, steps: int = 12) -> list[int]:
    explorer = Explorer(engine, Strategy(), max_new_tokens=steps)
    explorer.new_prompt("The quick brown")
    if steering is not None:
        explorer.steer(steering)
    for _ in range(steps):
        if not explorer.can_play_on():
            break
        explorer.step()
    return explorer.session.generated_ids


def test_steered_greedy_is_generate_with_the_same_hook_and_scale_0_is_unsteered(any_model):
    engine = load_engine(LoadOptions(model=str(any_model), device="cpu"))
    ids = engine.encode("The quick brown")
    steered = greedy_path(engine, STEERING)
    assert steered == generate_with_hook(engine, ids, STEERING, len(steered))
    unsteered = greedy_path(unsteered_fork(engine), None)
    moved, plain = Session(engine), Session(unsteered_fork(engine))
    for session in (moved, plain):
        session.reset("The quick brown")
    # The steering moved the next-token distribution (a random tiny model's path may hold all the same)
    assert not torch.allclose(moved.next.scores.values, plain.next.scores.values, atol=1e-3)
    engine.steer(None)
    zero = greedy_path(engine, STEERING.with_scale(0.0))
    assert zero == unsteered
    plain = Session(unsteered_fork(engine))
    plain.reset("The quick brown")
    engine_zero = Session(engine)
    engine_zero.reset("The quick brown")
    assert torch.equal(plain.next.scores.values, engine_zero.next.scores.values)  # exactly: scale 0 adds nothing


def test_a_fork_reads_the_same_weights_unsteered(tiny_engine):
    fork = tiny_engine.fork()
    tiny_engine.steer(STEERING)
    steered, plain = Session(tiny_engine), Session(fork)
    for session in (steered, plain):
        session.reset("The quick brown")
    unsteered = Session(load_engine(LoadOptions(model=tiny_engine.model_id, device="cpu")))
    unsteered.reset("The quick brown")
    assert torch.equal(plain.next.scores.values, unsteered.next.scores.values)
    assert not torch.equal(steered.next.scores.values, plain.next.scores.values)


def test_a_trace_records_its_steering_and_replay_steers_alike(tiny_model_dir, tmp_path):
    steer = [
        "--steer-toward",
        "The quick brown fox",
        "--steer-away",
        "Decoding picks",
        "--steer-layer",
        "1",
        "--steer-scale",
        "6",
    ]
    code, out, err = run_cli(
        "trace", "The quick brown", "--model", str(tiny_model_dir), "--device", "cpu", "--steps", "6", "--format", "json", *steer
    )
    assert code == 0, err
    record = json.loads(out)
    assert record["steering"] == {
        "layer": 1,
        "scale": 6.0,
        "toward": "The quick brown fox",
        "away": "Decoding picks",
        "vector_file": "",
    }
    path = tmp_path / "steered.json"
    path.write_text(out)
    code, out, err = run_cli("replay", str(path))
    assert code == 0, out + err
    record["steering"]["scale"] = 0.0  # replayed unsteered, the same path would not come out
    path.write_text(json.dumps(record))
    code, out, _ = run_cli("replay", str(path))
    assert code == 1


def test_a_vector_from_a_file_steers_as_the_pair_it_was_made_from(tiny_engine, tmp_path):
    from safetensors.torch import save_file

    from decoding.engines.hf.steering import steering_vector

    layer, added = steering_vector(tiny_engine.model, tiny_engine.encode, STEERING.with_scale(1.0))
    save_file({"1": added.contiguous()}, str(tmp_path / "v.safetensors"))
    from_file = Steering(layer=1, scale=6.0, vector_file=str(tmp_path / "v.safetensors"))
    assert greedy_path(tiny_engine, from_file) == greedy_path(tiny_engine.fork(), STEERING)


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["--steer-toward", "a", "--steer-away", "b"], "Steering needs --steer-layer"),
        (["--steer-toward", "a", "--steer-layer", "1"], "needs --steer-toward and --steer-away"),
        (["--steer-toward", "a", "--steer-away", "b", "--steer-layer", "-1"], "--steer-layer must be"),
        (
            ["--steer-toward", "a", "--steer-away", "b", "--steer-layer", "1", "--steer-scale", "nan"],
            "--steer-scale must be a number",
        ),
        (["--steer-toward", "a", "--steer-away", "b", "--steer-layer", "9"], "the model has layers 0 to 1"),
        (["--steer-vector", "/nonexistent.safetensors", "--steer-layer", "1"], "--steer-vector"),
    ],
)
def test_a_bad_steering_is_one_line(tiny_model_dir, options, said):
    code, _, err = run_cli("trace", "Hi", "--model", str(tiny_model_dir), "--device", "cpu", *options)
    assert code == 2 and said in err and len(err.strip().splitlines()) == 1


@pytest.mark.embedded
def test_llama_cpp_refuses_steering_in_one_line(capsys):
    pytest.importorskip("llama_cpp")
    code, _, err = run_cli("trace", "Hi", "--engine", "llama", "--steer-toward", "a", "--steer-away", "b", "--steer-layer", "1")
    assert code == 2 and "cannot steer" in err and "leave-one-out" in err
