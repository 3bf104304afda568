"""Load a .gguf file (or the embedded model) into the llama.cpp engine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from decoding.core.engine import Engine
from decoding.core.errors import LoadError
from decoding.engines.embedded import EMBEDDED_NAME, embedded_gguf


def load_llama(model_name: str | None, device: str, progress: Callable[[str], object]) -> Engine:
    try:
        from decoding.engines.llama.engine import LlamaCppEngine
    except ImportError:
        raise LoadError(
            "--engine llama needs llama-cpp-python: install it with `pip install 'tokenstep[llama]'` "
            "(it compiles llama.cpp, a few minutes), or use --engine transformers."
        ) from None
    gguf = Path(model_name).expanduser() if model_name else embedded_gguf()
    if not gguf.is_file():
        raise LoadError(f"--model {model_name}: no such file. Give the path of an existing .gguf file.")
    model_id = model_name or EMBEDDED_NAME
    progress(f"loading {model_id} with llama.cpp on {device}")
    try:
        return LlamaCppEngine(gguf, model_id=model_id, gpu=device != "cpu")
    except (ValueError, RuntimeError) as error:
        raise LoadError(f"--model {gguf}: llama.cpp cannot load this file ({error}).") from None
