"""17 (part). A model bigger than the memory is refused before anything loads: the time from the command
to its one-line refusal, against `python -c "import torch"` measured in the same run.

The model is a header-only safetensors folder declaring 26 billion float32 weights (nothing else is
read); the estimate comes from file headers, before transformers is imported or a .gguf converted.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from common import Result, best_of, table


def header_only_model(folder: Path) -> Path:
    from decoding.engines.embedded import embedded_gguf
    from decoding.engines.hf.load import converted_gguf

    shutil.copytree(converted_gguf(embedded_gguf()), folder, ignore=shutil.ignore_patterns("*.safetensors"))
    rows, columns = 200_000, 131_072
    header = json.dumps({"huge.weight": {"dtype": "F32", "shape": [rows, columns], "data_offsets": [0, rows * columns * 4]}})
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header.encode())
    return folder


def run() -> list[Result]:
    big = header_only_model(Path(tempfile.mkdtemp(prefix="tokenstep-big-")) / "big")
    command = [sys.executable, "-m", "tui.cli", "trace", "hi", "--model", str(big), "--device", "cpu"]

    def refuse() -> None:
        result = subprocess.run(command, capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": ""})
        assert result.returncode == 2 and "billion parameters need about" in result.stderr, result.stderr

    refused = best_of(refuse)
    torch_import = best_of(lambda: subprocess.run([sys.executable, "-c", "import torch"], check=True))
    shutil.rmtree(big.parent)
    table(
        "A model bigger than the memory: seconds to the refusal",
        ["refused after", "python -c 'import torch'", "ratio"],
        [[refused, torch_import, refused / torch_import]],
    )
    return [
        Result(
            "too_big_refused_s",
            refused,
            "<",
            2.0,
            measured=f"a model bigger than the memory refused after {refused:.2f} s",
            baseline=f"`python -c 'import torch'`: {torch_import:.2f} s",
        )
    ]
