"""On `--engine llama` the sampler chain is llama.cpp's own: each stage llama.cpp has runs as its
sampler, so the panel and the chain view show the engine's numbers. Held against a llama.cpp sampler
chain built here from the same settings on the engine's own logits, and against tokenstep's
implementations of the same stages."""

import ctypes
import json

import pytest

llama_cpp = pytest.importorskip("llama_cpp")

import torch  # noqa: E402

from decoding.core.processors import Stage, explain_stages, run_processors  # noqa: E402
from decoding.core.settings import Strategy  # noqa: E402
from decoding.core.tokens import TokenTexts  # noqa: E402
from decoding.engines.registry import LoadOptions, load_engine  # noqa: E402
from decoding.search.session import Session  # noqa: E402
from tests.test_llama_samplers import llama_apply  # noqa: E402

pytestmark = pytest.mark.embedded
PROMPT = "The cat sat on the mat. The dog sat on the log. The cat sat on the"
STEPS = 12
# Every stage llama.cpp has, in its own default order (deterministic: XTC at probability 1)
LLAMA_CHAIN = dict(
    kind="sample",
    samplers="llama.cpp",
    repetition_penalty=1.15,
    presence_penalty=0.4,
    frequency_penalty=0.2,
    repeat_last_n=-1,
    dry_multiplier=0.8,
    top_k=60,
    typical_p=0.97,
    top_p=0.95,
    min_p=0.02,
    xtc_probability=1.0,
    xtc_threshold=0.05,
    temperature=0.8,
    dynatemp_range=0.3,
)


@pytest.fixture(scope="module")
def llama_engine():
    return load_engine(LoadOptions(engine="llama"))


def llama_cpp_chain(engine, strategy: Strategy, context: list[int]):
    """llama.cpp's own chain for these settings, as llama-server builds it (common/sampling.cpp),
    shown the context."""
    vocab = llama_cpp.llama_model_get_vocab(engine._llm.model)
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    whole = engine.context_limit
    breakers = [text.encode() for text in strategy.dry_sequence_breakers]
    array = (ctypes.c_char_p * len(breakers))(*breakers)
    for sampler in (
        llama_cpp.llama_sampler_init_penalties(
            engine.vocab_size, whole, strategy.repetition_penalty, strategy.frequency_penalty, strategy.presence_penalty
        ),
        llama_cpp.llama_sampler_init_dry(
            vocab, strategy.dry_multiplier, strategy.dry_base, strategy.dry_allowed_length, whole, array, len(breakers)
        ),
        llama_cpp.llama_sampler_init_top_k(strategy.top_k),
        llama_cpp.llama_sampler_init_typical(strategy.typical_p, 1),
        llama_cpp.llama_sampler_init_top_p(strategy.top_p, 1),
        llama_cpp.llama_sampler_init_min_p(strategy.min_p, 1),
        llama_cpp.llama_sampler_init_xtc(1.0, strategy.xtc_threshold, 1, 0),
        llama_cpp.llama_sampler_init_temp_ext(strategy.temperature, strategy.dynatemp_range, strategy.dynatemp_exponent),
    ):
        llama_cpp.llama_sampler_chain_add(chain, sampler)
    for token in context:
        llama_cpp.llama_sampler_accept(chain, token)
    return chain


def test_each_stage_llama_cpp_has_is_its_own_sampler_and_the_chain_is_its_chain(llama_engine):
    strategy = Strategy(**LLAMA_CHAIN)
    session = Session(llama_engine, strategy)
    session.reset(PROMPT)
    for _ in range(STEPS):
        offered, context = session.next, session.ids
        chain = llama_cpp_chain(llama_engine, strategy, context)
        theirs, _ = llama_apply(chain, offered.scores.values)
        llama_cpp.llama_sampler_free(chain)
        mine = torch.softmax(offered.processed.double(), dim=-1)
        alive = torch.isfinite(offered.processed)
        assert set(alive.nonzero()[:, 0].tolist()) == set(theirs), "the survivors are llama.cpp's"
        worst = max(abs(float(mine[token]) - p) for token, p in theirs.items())
        assert worst < 1e-6, f"probabilities differ from llama.cpp's chain by {worst:.2e}"
        report = offered.report()
        assert {effect.by for effect in report.effects} == {"llama.cpp"}
        session.step()
    assert any(effect.removed_in_all for effect in report.effects)


def test_a_stage_llama_cpp_lacks_is_tokenstep_s_and_the_view_says_which_ran_where(llama_engine):
    strategy = Strategy(kind="sample", top_k=40, epsilon_cutoff=0.001, temperature=0.9)
    session = Session(llama_engine, strategy)
    session.reset(PROMPT)
    report = session.next.report()
    assert {effect.name: effect.by for effect in report.effects} == {
        "temperature": "llama.cpp",
        "top_k": "llama.cpp",
        "epsilon_cutoff": "",
    }

    from tui.widgets.processors import processor_table

    drawn = processor_table(report, session.distribution).plain
    assert "llama.cpp's own samplers ran temp., top-k (the engine's numbers); tokenstep ran epsilon" in " ".join(drawn.split())


def test_llama_cpp_s_stages_agree_with_tokenstep_s_on_the_same_logits(llama_engine):
    """The same chain computed by tokenstep's implementations (transformers' warpers and
    decoding.core.llama_samplers): the same survivors, probabilities within 1e-5 at every stage."""
    strategy = Strategy(**{**LLAMA_CHAIN, "xtc_probability": 0.0, "mirostat": 0})
    session = Session(llama_engine, strategy)
    session.reset(PROMPT)
    ours = TokenTexts.of(llama_engine)
    ours.own_stage = lambda name, strategy: None  # tokenstep's own stages
    for _ in range(6):
        offered = session.next
        model = Stage("model", offered.scores.values, llama_engine.vocab_size)
        theirs = explain_stages(run_processors(strategy, None, session.ids, model, offered._texts), model, [])
        mine = explain_stages(run_processors(strategy, None, session.ids, model, ours), model, [])
        for a, b in zip(theirs.effects, mine.effects):
            assert (a.name, a.kept) == (b.name, b.kept)
            assert abs(a.kept_mass - b.kept_mass) < 1e-5 and abs(a.mass_removed - b.mass_removed) < 1e-5
        session.step()


def test_trace_on_llama_says_which_stages_llama_cpp_ran_and_replays(tmp_path, capsys):
    from tui.cli import main

    record = tmp_path / "chain.json"
    options = ["--engine", "llama", "--strategy", "sample", "--min-p", "0.05", "--temperature", "0.8"]
    options += ["--eta-cutoff", "0.0003", "--samplers", "min_p;eta_cutoff;temperature", "--seed", "3"]
    assert main(["trace", PROMPT, "--steps", "6", "--format", "json", *options]) == 0
    record.write_text(capsys.readouterr().out)
    steps = json.loads(record.read_text())["steps"]
    assert [(p["name"], p.get("by")) for p in steps[0]["processors"]] == [
        ("min_p", "llama.cpp"),
        ("eta_cutoff", None),
        ("temperature", "llama.cpp"),
    ]
    assert main(["replay", str(record)]) == 0
