"""9. Thread counts: each engine with one thread and with every core, on an idle machine and beside a
process that keeps one core busy, with OpenMP threads that spin while they wait (ACTIVE) or sleep
(PASSIVE, what tokenstep sets). The target: beside a busy process, tokenstep's choice (transformers:
every core; llama.cpp: every core but one; both PASSIVE) keeps at least 0.8 of what one thread gives,
where spinning threads collapse."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from common import Result, table

from decoding.engines.llama.engine import default_threads

CHILD = Path(__file__).with_name("child.py")
CORES = os.cpu_count() or 1


def tokens_per_s(engine: str, threads: int, policy: str) -> float:
    env = {**os.environ, "OMP_WAIT_POLICY": policy}
    out = subprocess.run(
        [sys.executable, str(CHILD), "steps", engine, str(threads)], env=env, capture_output=True, text=True, check=True
    ).stdout
    return float(next(line.split()[1] for line in out.splitlines() if line.startswith("TOKENS_PER_S")))


def measure(engine: str) -> dict[tuple[bool, int, str], float]:
    rates = {}
    for busy in (False, True):
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            for threads in sorted({1, default_threads(), CORES}):
                for policy in ("ACTIVE", "PASSIVE"):
                    rates[busy, threads, policy] = tokens_per_s(engine, threads, policy)
        finally:
            if hog is not None:
                hog.kill()
    return rates


def run() -> list[Result]:
    results = []
    for engine in ("transformers", "llama"):
        try:
            rates = measure(engine)
        except subprocess.CalledProcessError:
            print(f"\n## Threads: {engine} engine not available here, skipped")
            continue
        rows = [[("busy core" if busy else "idle"), threads, policy, rate] for (busy, threads, policy), rate in rates.items()]
        table(f"Threads: {engine} engine, tokens/s ({CORES} cores)", ["machine", "threads", "OpenMP wait", "tok/s"], rows)
        chosen = CORES if engine == "transformers" else default_threads()
        ratio = rates[True, chosen, "PASSIVE"] / rates[True, 1, "PASSIVE"]
        busy, alone = rates[True, chosen, "PASSIVE"], rates[True, 1, "PASSIVE"]
        results.append(
            Result(
                f"threads_busy_{engine}",
                ratio,
                ">=",
                0.8,
                measured=f"the {engine} engine, {chosen} threads, beside a busy core: {busy:.1f} tok/s",
                baseline=f"one thread there: {alone:.1f} tok/s",
            )
        )
    return results
