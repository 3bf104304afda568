"""`make bench`: every benchmark, each a table, then one `BENCH name ratio=... target... PASS|FAIL` line each.

Run one with `python benchmarks/run.py stepping` (names: the modules below).
"""

from __future__ import annotations

import importlib
import os
import platform
import sys

import common  # noqa: F401  puts the repository on the path

BENCHMARKS = [
    "stepping",
    "context",
    "undo",
    "saves",
    "memory",
    "reopen",
    "startup",
    "app_play",
    "prompt_scores",
    "lens",
    "grammar",
    "fits",
    "engines",
    "threads",
    "server",
]


def machine() -> str:
    import torch

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def main(names: list[str]) -> int:
    print(f"# tokenstep benchmarks on {machine()}")
    results = []
    for name in names or BENCHMARKS:
        results += importlib.import_module(name).run()
    print()
    for result in results:
        print(result.line())
    return 0 if all(result.passed for result in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
