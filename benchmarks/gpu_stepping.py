"""The stepping benchmark on CUDA, float32 and bfloat16, against generate() there; then memory per
step (GPU memory against the KV cache's), reopening a 2,000-token session and leave-one-out
attribution over 64 tokens against one forward pass, on CUDA (run by gpu.sh).

Uses the embedded model when it is installed; otherwise a model of SmolLM2-135M's exact shape with
random weights (speed depends on the shape, not the values), so the script needs no download.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import attribution_command
import memory
import reopen
import stepping
import torch
from common import load, table


def smollm2_shaped_model(folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.conftest import build_tiny_model

    build_tiny_model(folder)  # for its byte-level tokenizer; the model is replaced below
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        tie_word_embeddings=True,
        eos_token_id=0,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_stepping: no CUDA device here")
        return 2
    from decoding.core.errors import LoadError
    from decoding.engines.registry import LoadOptions, load_engine

    try:
        load(device="cuda")  # the embedded model, if its package travelled
        model = {}
    except LoadError:
        model = {"model": str(smollm2_shaped_model(Path(tempfile.mkdtemp())))}
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, model: {model.get('model', 'embedded')}")
    results = []
    for dtype in ("float32", "bfloat16"):
        engine = load_engine(LoadOptions(device="cuda", dtype=dtype, **model))
        results += stepping.run(engine, label=f"_cuda_{dtype}")
        results += memory.run(engine, label=f"_cuda_{dtype}")
        results += reopen.run(engine, label=f"_cuda_{dtype}")
        results.append(attribution_command.in_process(engine, label=f"_cuda_{dtype}"))
    table("Summary", ["benchmark", "ratio", "target"], [[r.name, r.ratio, r.target_text] for r in results])
    print()
    for result in results:
        print(result.line())
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
