"""`make bench`: every benchmark, each a table, then one `BENCH name ratio=... target... PASS|FAIL` line
each; the rows go to docs/benchmarks.md (and docs/benchmarks.json, which keeps them between runs).

Run some with `python benchmarks/run.py trace_command undo` (names: the modules below, or a group:
`commands`, `internal`). Their rows replace the same modules' rows in docs/benchmarks.md; the others stay.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

from common import Result

# What users run, end to end, each command a subprocess against generate() (or the session's own loop).
COMMANDS = [
    "trace_command",
    "chain_command",
    "futures_command",
    "attribution_command",
    "draft_command",
    "compare_command",
    "replay_command",
    "export_command",
    "app_pty",
    "command_memory",
]
# The core's loops in this process, against their baselines.
INTERNAL = [
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
GROUPS = {"commands": COMMANDS, "internal": INTERNAL}
DOCS = Path(__file__).resolve().parents[1] / "docs"
TABLE, ROWS = DOCS / "benchmarks.md", DOCS / "benchmarks.json"


def machine() -> str:
    import torch

    processor = platform.processor() or platform.machine()
    load = os.getloadavg()[0]
    return f"{processor}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.2f} at the start"


def modules(names: list[str]) -> list[str]:
    chosen = [module for name in names or COMMANDS + INTERNAL for module in GROUPS.get(name, [name])]
    unknown = [name for name in chosen if name not in COMMANDS + INTERNAL]
    if unknown:
        raise SystemExit(
            f"run.py: no benchmark {', '.join(unknown)} (names: {', '.join(COMMANDS + INTERNAL)}, commands, internal)"
        )
    return chosen


def main(names: list[str]) -> int:
    chosen, on = modules(names), machine()
    print(f"# tokenstep benchmarks on {on}")
    measured: dict[str, list[Result]] = {}
    for module in chosen:
        started = time.perf_counter()
        measured[module] = importlib.import_module(module).run()
        print(f"({module}: {time.perf_counter() - started:.0f} s)")
    print()
    results = [result for module in chosen for result in measured[module]]
    for result in results:
        print(result.line())
    write_docs(measured, on)
    print(f"\nrows written to {TABLE}")
    return 0 if all(result.passed for result in results) else 1


def write_docs(measured: dict[str, list[Result]], on: str) -> None:
    """These modules' rows replace their earlier ones; the rows of modules not run now are kept."""
    rows = json.loads(ROWS.read_text()) if ROWS.is_file() else []
    today = datetime.date.today().isoformat()
    rows = [row for row in rows if row["module"] not in measured]
    for module, results in measured.items():
        rows += [{"module": module, "date": today, "machine": on, **asdict(result)} for result in results]
    order = {module: index for index, module in enumerate(COMMANDS + INTERNAL)}
    rows.sort(key=lambda row: order.get(row["module"], len(order)))
    DOCS.mkdir(exist_ok=True)
    ROWS.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
    TABLE.write_text(markdown(rows))


def markdown(rows: list[dict]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`benchmarks/run.py`), not by hand. Each figure is measured against a baseline",
        "taken in the same run; `python benchmarks/run.py NAME` runs one module again (the name in brackets)",
        "and replaces its rows. The first rows time the commands users run, end to end; the others, the",
        "core's loops.",
        "",
        "| benchmark | measured | baseline (same run) | ratio | target | result |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        result = Result(**{key: row[key] for key in Result.__dataclass_fields__})
        verdict = f"{result.verdict}: {result.problem}" if result.problem else result.verdict
        cells = [f"`{result.name}` ({row['module']})", result.measured, result.baseline, f"{result.ratio:.3g}"]
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in [*cells, result.target_text, verdict]) + " |")
    lines.append("")
    runs: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        modules_run = runs.setdefault((row["date"], row["machine"]), [])
        if row["module"] not in modules_run:
            modules_run.append(row["module"])
    for (date, on), modules_run in runs.items():
        lines.append(f"- {', '.join(modules_run)}: {date}, {on}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
