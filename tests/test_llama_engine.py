"""The llama.cpp engine on the embedded GGUF: the same session, strategies and undo as transformers."""

import pytest

pytest.importorskip("llama_cpp")

from decoding.core.errors import LoadError  # noqa: E402
from decoding.core.settings import Strategy  # noqa: E402
from decoding.engines.registry import LoadOptions, load_engine  # noqa: E402
from decoding.search.session import Session  # noqa: E402

pytestmark = pytest.mark.embedded
PROMPT = "Transformers are the"
# llama.cpp multiplies by the Q4_1 weights as they are (with 8-bit activations); transformers by their
# float32 de-quantized copy. Over 16 greedy steps the top-10 probabilities differ by at most 0.045.
PROB_TOLERANCE = 0.06
MIN_SHARED_OF_TOP10 = 7


def test_llama_cpp_was_built_for_any_cpu_of_its_kind():
    """`make` builds llama.cpp with portable flags (.ci/build-llama.sh): a build that enables AMX crashed
    in ggml's AMX kernels, and one with AVX-512 would not start on a CPU without it."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode()
    assert "AMX" not in info, f"llama.cpp was built with AMX (GGML_NATIVE?): {info}"
    assert "AVX512" not in info, f"llama.cpp was built for AVX-512 CPUs only: {info}"


@pytest.fixture(scope="module")
def llama_engine():
    return load_engine(LoadOptions(engine="llama"))


def test_top10_agrees_with_the_transformers_engine_on_the_same_weights(llama_engine, embedded_engine):
    llama, hf = Session(llama_engine), Session(embedded_engine)
    for session in (llama, hf):
        session.reset(PROMPT)
    assert llama.prompt_ids == hf.prompt_ids
    for _ in range(12):
        ours = {c.token_id: c.prob for c in llama.distribution.candidates}
        theirs = {c.token_id: c.prob for c in hf.distribution.candidates}
        shared = ours.keys() & theirs.keys()
        assert len(shared) >= MIN_SHARED_OF_TOP10
        assert max(abs(ours[t] - theirs[t]) for t in shared) <= PROB_TOLERANCE
        token = hf.distribution.candidates[0].token_id
        llama.force(token)
        hf.force(token)


def test_undo_crops_llamas_cache_without_running_the_model(llama_engine):
    session = Session(llama_engine)
    session.reset(PROMPT)
    for _ in range(3):
        session.step()
    before = session.distribution
    session.step()
    llama_engine._llm.eval = lambda tokens: pytest.fail("undo must not evaluate")
    try:
        session.undo()
    finally:
        del llama_engine._llm.eval
    assert session.distribution == before
    assert llama_engine.cached_length == len(session.ids)
    session.step()  # and the cropped cache goes on correctly
    assert session.path[-1].rank == 0


def test_strategies_forcing_and_endings_work_the_same(llama_engine):
    session = Session(llama_engine, Strategy(kind="sample", top_k=20, seed=3))
    session.reset(PROMPT)
    drawn = [session.step().token_id for _ in range(5)]
    for _ in range(5):
        session.undo()
    assert [session.step().token_id for _ in range(5)] == drawn
    session.force(next(iter(llama_engine.eos_token_ids)))
    assert session.finished == "eos"
    session.look_ahead([1, 2, 3])  # llama.cpp cannot set cache entries aside: nothing happens
    assert session.looked_ahead == frozenset()


def test_llama_engine_refuses_a_model_that_is_not_gguf(tiny_model_dir):
    with pytest.raises(LoadError, match="runs .gguf files"):
        LoadOptions(model=str(tiny_model_dir), engine="llama")


def test_trace_names_the_engine(capsys):
    import json

    from tui.cli import main

    assert main(["trace", PROMPT, "--engine", "llama", "--format", "json", "--steps", "2"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["engine"] == "llama.cpp" and record["generated_text"].startswith(" most")


def test_a_chat_renders_from_the_ggufs_own_template_to_the_same_ids(llama_engine, embedded_engine):
    from decoding.core.prompt import chat_prompt
    from decoding.core.state import Message

    messages = [Message("system", "Be brief."), Message("user", "What is a transformer?")]
    ours, theirs = chat_prompt(llama_engine, messages), chat_prompt(embedded_engine, messages)
    assert ours.text == theirs.text and ours.ids == theirs.ids
    session = Session(llama_engine)
    session.reset(ours)
    for _ in range(3):
        session.step()
    assert session.prompt.form == "chat" and llama_engine.end_of_turn_ids >= {0, 2}  # <|endoftext|>, <|im_end|>
