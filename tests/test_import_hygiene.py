"""The core stays headless, and its light modules stay light (the CLI checks options before torch loads)."""

import subprocess
import sys
from pathlib import Path

import pytest

CORE_MODULES = sorted(f"decoding.{p.stem}" for p in (Path(__file__).parents[1] / "decoding").glob("*.py") if p.stem != "__init__")


def modules_after_import(*modules: str) -> set[str]:
    code = f"import sys, {', '.join(modules)}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_core_never_imports_textual():
    loaded = modules_after_import(*CORE_MODULES)
    assert "decoding.session" in loaded
    assert not {name for name in loaded if name.split(".")[0] in ("textual", "tui")}


@pytest.mark.parametrize(
    "module",
    ["decoding.settings", "decoding.errors", "decoding.tokens", "decoding.loading", "decoding.state", "tui.cli", "tui.app"],
)
def test_modules_needed_before_the_first_paint_do_not_import_torch(module):
    assert "torch" not in modules_after_import(module)
