"""The core stays headless, and its light modules stay light (the CLI checks options before torch loads)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def module_files(package: str) -> dict[str, Path]:
    """Every module of `package` by its dotted name (a package by its own name)."""
    files = {}
    for path in (ROOT / package).rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


CORE_MODULES = sorted(module_files("decoding"))


def modules_after_import(*modules: str) -> set[str]:
    code = f"import sys, {', '.join(modules)}; print('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def test_core_never_imports_textual():
    loaded = modules_after_import(*CORE_MODULES)
    assert "decoding.search.session" in loaded
    assert not {name for name in loaded if name.split(".")[0] in ("textual", "tui")}


@pytest.mark.parametrize(
    "module",
    [
        "decoding.core.settings",
        "decoding.core.errors",
        "decoding.core.tokens",
        "decoding.engines.registry",
        "decoding.core.state",
        "tui.cli",
        "tui.app",
    ],
)
def test_modules_needed_before_the_first_paint_do_not_import_torch(module):
    assert "torch" not in modules_after_import(module)


def imports_of(path: Path, known: dict[str, Path]) -> set[str]:
    """The package's own modules `path` imports anywhere: at the top, in functions, under TYPE_CHECKING."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known}
    return found


@pytest.mark.parametrize("package", ["decoding", "tui"])
def test_no_import_cycle_even_through_deferred_imports(package):
    known = module_files(package)
    graph = {name: imports_of(path, known) - {name} for name, path in known.items()}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), list(graph[start])
        while todo:
            name = todo.pop()
            if name == goal:
                return True
            if name not in seen:
                seen.add(name)
                todo.extend(graph[name])
        return False

    cycles = sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if reaches(b, a))
    assert cycles == []
