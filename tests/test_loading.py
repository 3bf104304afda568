"""Finding models, clear load errors, and the GGUF conversion cache."""

import os
from pathlib import Path

import pytest
import torch

from decoding.core.errors import LoadError
from decoding.engines import embedded, memory
from decoding.engines.embedded import cache_root
from decoding.engines.hf import load as hf_load
from decoding.engines.registry import LoadOptions, load_engine


def test_a_missing_folder_or_gguf_is_named_in_the_message(tmp_path):
    with pytest.raises(LoadError, match="no such folder"):
        load_engine(LoadOptions(model=str(tmp_path / "nothing"), device="cpu"))
    with pytest.raises(LoadError, match="no such file"):
        load_engine(LoadOptions(model=str(tmp_path / "model.gguf"), device="cpu"))


def test_a_hub_id_not_in_the_cache_while_offline_says_how_to_fix_it(monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(LoadError) as error:
        load_engine(LoadOptions(model="no-such-org/no-such-model", device="cpu"))
    message = str(error.value)
    assert "no-such-org/no-such-model" in message and "HF_HUB_OFFLINE" in message and "hf download" in message
    assert "\n" not in message


def test_a_model_that_is_not_a_causal_lm_is_refused(tmp_path):
    from transformers import DistilBertConfig, DistilBertModel

    DistilBertModel(DistilBertConfig(dim=16, n_layers=1, n_heads=2, hidden_dim=16)).save_pretrained(tmp_path)
    with pytest.raises(LoadError, match="'distilbert' model, which is not a causal"):
        load_engine(LoadOptions(model=str(tmp_path), device="cpu"))


def test_a_folder_without_a_tokenizer_is_refused(tiny_model_dir, tmp_path):
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((tiny_model_dir / name).read_bytes())
    with pytest.raises(LoadError, match="no tokenizer"):
        load_engine(LoadOptions(model=str(tmp_path), device="cpu"))


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_an_unavailable_device_is_refused_with_the_alternative():
    with pytest.raises(LoadError, match="no CUDA GPU is available.*--device cpu"):
        load_engine(LoadOptions(device="cuda:0"))


@pytest.mark.parametrize("options", [{"device": "gpu"}, {"device": "cuda:x"}, {"dtype": "int8"}, {"device_map": "balanced"}])
def test_invalid_device_dtype_and_device_map_names_are_refused(options):
    with pytest.raises(LoadError):
        LoadOptions(**options)


def test_a_local_folder_loads_on_the_requested_dtype(tiny_model_dir):
    engine = load_engine(LoadOptions(model=str(tiny_model_dir), device="cpu", dtype="bfloat16"))
    assert (engine.device, engine.dtype, engine.context_limit) == ("cpu", "bfloat16", 64)


def test_cache_folder_respects_tokenstep_cache_then_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("TOKENSTEP_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "tokenstep"
    monkeypatch.setenv("TOKENSTEP_CACHE", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"


def test_a_conversion_killed_half_way_leaves_no_entry_that_would_be_used(monkeypatch, tmp_path):
    monkeypatch.setenv("TOKENSTEP_CACHE", str(tmp_path))
    gguf = embedded.embedded_gguf()
    target = tmp_path / "gguf" / hf_load._gguf_key(gguf)
    target.parent.mkdir(parents=True)
    (target.parent / f".{target.name}.partial-abc").mkdir()  # debris of an earlier killed run

    def killed(self, folder, **kwargs):
        (Path(folder) / "config.json").write_text("{")  # half-written
        raise KeyboardInterrupt

    monkeypatch.setattr("transformers.PreTrainedModel.save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        hf_load.converted_gguf(gguf)
    assert not target.exists()


@pytest.mark.embedded
def test_gguf_converts_once_to_a_bit_identical_cached_copy(monkeypatch, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("TOKENSTEP_CACHE", str(tmp_path))
    gguf = embedded.embedded_gguf()
    target = tmp_path / "gguf" / hf_load._gguf_key(gguf)
    direct = hf_load.convert_gguf(gguf, target)
    cached = AutoModelForCausalLM.from_pretrained(target)
    for (name, a), (_, b) in zip(direct.state_dict().items(), cached.state_dict().items()):
        assert torch.equal(a, b), name
    assert sorted(os.listdir(target.parent)) == [target.name]  # no partial folder left behind
    assert hf_load.converted_gguf(gguf) == target  # the second time reuses it


def test_the_garbage_collector_runs_again_after_a_load_whether_it_worked_or_not(tiny_model_dir, tmp_path):
    """Loading pauses Python's collector for speed; left paused, a long session would grow without bound."""
    import gc

    load_engine(LoadOptions(model=str(tiny_model_dir), device="cpu"))
    assert gc.isenabled()
    with pytest.raises(LoadError):
        load_engine(LoadOptions(model=str(tmp_path / "nothing"), device="cpu"))
    assert gc.isenabled()


def test_a_model_let_go_is_freed_when_another_loads_although_loads_freeze_what_they_make(tiny_model_dir):
    """Loading freezes its objects (no full collection re-scans them); a model caught in a reference
    cycle must still be freed once another model loads, or switching models would leak each one."""
    import gc
    import weakref

    first = load_engine(LoadOptions(model=str(tiny_model_dir), device="cpu"))
    assert gc.get_freeze_count() > 0
    first.model.cycle = first  # type: ignore[attr-defined]  # freed only by the cyclic collector
    gone = weakref.ref(first.model)
    del first
    load_engine(LoadOptions(model=str(tiny_model_dir), device="cpu"))
    assert gone() is None


def header_only_model(tiny_model_dir, folder: Path, rows: int, columns: int) -> Path:
    """The tiny model's config and tokenizer with a safetensors file whose header declares one
    [rows, columns] float32 tensor and holds no data: only the header is ever read."""
    import json
    import shutil
    import struct

    shutil.copytree(tiny_model_dir, folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    header = json.dumps({"huge.weight": {"dtype": "F32", "shape": [rows, columns], "data_offsets": [0, rows * columns * 4]}})
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header.encode())
    return folder


REUSED_MEMORY_PROBE = """
import resource, sys, torch
from decoding.engines import runtime
if sys.argv[1] == "reuse":
    runtime.reuse_freed_memory()
def faults_for_a_pass():  # a pass's temporaries: twelve tensors of 4, 8 and 12 MB, written, then freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensors = [torch.ones(2**20 * (1 + i % 3)) for i in range(12)]
    del tensors
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults_for_a_pass()
print(sum(faults_for_a_pass() for _ in range(3)))
"""


@pytest.mark.skipif(os.uname().sysname != "Linux", reason="glibc's malloc")
def test_memory_a_pass_freed_is_reused_by_the_next_passes_without_new_pages_from_the_kernel():
    import subprocess
    import sys

    def faults_in_three_more_passes(mode: str) -> int:
        run = subprocess.run([sys.executable, "-c", REUSED_MEMORY_PROBE, mode], capture_output=True, text=True, check=True)
        return int(run.stdout)

    pages_of_a_pass = 96 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert faults_in_three_more_passes("default") > pages_of_a_pass  # glibc's own policy gives pages back
    assert faults_in_three_more_passes("reuse") < pages_of_a_pass / 2


def test_a_model_bigger_than_the_memory_is_refused_before_loading(tiny_model_dir, tmp_path):
    import subprocess
    import sys

    big = header_only_model(tiny_model_dir, tmp_path / "big", 200_000, 131_072)  # 26 billion weights
    result = subprocess.run(
        [sys.executable, "-m", "tui.cli", "trace", "hi", "--model", str(big), "--device", "cpu"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "26.21 billion parameters need about 125.8 GB as float32 on cpu" in result.stderr
    assert "--engine llama" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_the_estimate_counts_the_weights_the_model_loads(tiny_model_dir):
    engine = load_engine(LoadOptions(model=str(tiny_model_dir), device="cpu"))
    assert memory.parameter_count(str(tiny_model_dir)) == sum(p.numel() for p in engine.model.parameters())


@pytest.mark.embedded
def test_the_estimate_of_a_gguf_counts_the_weights_it_de_quantizes_to(embedded_engine):
    loaded = sum(p.numel() for p in embedded_engine.model.parameters())  # tied embeddings counted once
    assert memory.parameter_count(None) == loaded


# --- quantized loading and layers offloaded ----------------------------------------------------------

CHAPTER_PROMPT = "Transformers are the"


def greedy_tokens(engine, count: int = 8) -> list[int]:
    from decoding.search.session import Session

    session = Session(engine)
    session.reset(CHAPTER_PROMPT)
    return [session.step().token_id for _ in range(count)]


@pytest.mark.embedded
def test_8bit_on_the_cpu_chooses_float32s_first_8_greedy_tokens_in_a_third_of_the_memory(embedded_engine):
    from decoding.explorer.explorer import model_line
    from decoding.records import session_file

    int8 = load_engine(LoadOptions(device="cpu", load_in="8bit"))
    assert greedy_tokens(int8) == greedy_tokens(embedded_engine)
    assert "int8" in model_line(int8)
    layers = [m for name, m in int8.model.named_modules() if name.endswith("mlp.down_proj")]
    assert layers[0].weight.dtype == torch.int8  # stored as int8, not de-quantized
    # a session of the float32 model is not this model's: its numbers differ (it opens read-only)
    assert not session_file.same_model(session_file.model_identity(embedded_engine), int8)


@pytest.mark.embedded
def test_4bit_loads_as_nf4_and_steps(embedded_engine):
    nf4 = load_engine(LoadOptions(device="cpu", load_in="4bit"))
    assert nf4.dtype == "nf4" and len(greedy_tokens(nf4, 3)) == 3


@pytest.mark.embedded
def test_layers_beyond_the_memory_cap_go_to_disk_and_the_status_line_says_where(embedded_engine):
    from decoding.explorer.explorer import model_line

    offloaded = load_engine(LoadOptions(device="cpu", device_map="auto", max_memory={"cpu": "250MB"}))
    line = model_line(offloaded)
    assert " cpu, " in line and line.endswith(" disk") and "layers 0-" in line
    assert greedy_tokens(offloaded) == greedy_tokens(embedded_engine)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"engine": "llama", "load_in": "8bit"}, "--load-in is for --engine transformers"),
        ({"load_in": "3bit"}, "--load-in must be one of 8bit, 4bit"),
        ({"load_in": "8bit", "device_map": "auto"}, "cannot go together"),
    ],
)
def test_quantized_loading_options_that_cannot_work_are_refused(options, message):
    with pytest.raises(LoadError, match=message):
        LoadOptions(**options)
