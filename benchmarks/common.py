"""What every benchmark shares: results as ratios against a baseline measured in the same run."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# Before torch is imported anywhere: OpenMP's threads then wait as tokenstep's do (passively), so that a
# baseline in this process runs under the same policy as the commands it is measured against.
import decoding  # noqa: E402, F401

TEXT = (
    "Transformer language models generate text one token at a time. At each step the model gives a "
    "probability to every token of its vocabulary, and a decoding method picks one: greedy search takes "
    "the most likely, beam search keeps several hypotheses, and sampling draws from the distribution, "
    "often after temperature, top-k or top-p reshape it. "
)
PROMPT = "Transformers are the"
TARGET_SIGNS = {">=": "≥", "<=": "≤", "<": "<"}


@dataclass(frozen=True)
class Result:
    name: str
    ratio: float
    op: str  # ">=", "<" or "<="; "" for a figure reported without a target
    target: float = 0.0
    measured: str = ""  # what was timed, with its figure (a row of docs/benchmarks.md)
    baseline: str = ""  # what it is measured against in the same run
    problem: str = ""  # why the figure does not count (the command and its baseline did different work)

    @property
    def passed(self) -> bool:
        meets = {">=": self.ratio >= self.target, "<=": self.ratio <= self.target, "<": self.ratio < self.target, "": True}
        return not self.problem and meets[self.op]

    @property
    def verdict(self) -> str:
        return "FAIL" if not self.passed else "PASS" if self.op else "reported"

    @property
    def target_text(self) -> str:
        return f"{TARGET_SIGNS[self.op]} {self.target:g}" if self.op else ""

    def line(self) -> str:
        target = f" target{self.op}{self.target:g}" if self.op else ""
        problem = f" ({self.problem})" if self.problem else ""
        return f"BENCH {self.name} ratio={self.ratio:.3g}{target} {self.verdict}{problem}"


def seconds(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def stolen_share_while(action: Callable[[], object]) -> float:
    """The share of the CPUs' time a virtual machine's host gave to others while `action` ran
    (steal, from /proc/stat; 0 where the kernel does not count it). Here it swings from 0 to a third,
    and an absolute target in seconds swings with it."""

    def counters() -> list[int]:
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        except OSError:
            return []
        return [int(field) for field in fields]

    before = counters()
    action()
    after = counters()
    if len(before) < 8 or len(after) < 8:
        return 0.0
    spent = [b - a for a, b in zip(before[:8], after[:8])]  # user nice system idle iowait irq softirq steal
    return spent[7] / max(1, sum(spent))


def best_of(action: Callable[[], object], repeats: int = 3) -> float:
    """The fastest of a few runs: the least disturbed by whatever else the machine did."""
    return min(seconds(action) for _ in range(repeats))


def best_of_each(*actions: Callable[[], object], repeats: int = 5) -> list[float]:
    """The fastest run of each action, the actions taking turns: a slow spell of the machine
    (its speed drifts by tens of percent here) then falls on all of them alike."""
    times: list[list[float]] = [[] for _ in actions]
    for _ in range(repeats):
        for action, taken in zip(actions, times):
            taken.append(seconds(action))
    return [min(taken) for taken in times]


def median_of(action: Callable[[], object], repeats: int) -> float:
    return statistics.median(seconds(action) for _ in range(repeats))


def long_text(tokens: int, engine) -> str:
    """Text of about `tokens` tokens (the chapter's topic, repeated)."""
    text = TEXT
    while len(engine.encode(text)) < tokens:
        text += TEXT
    ids = engine.encode(text)[:tokens]
    return engine.decode(ids)


def table(title: str, header: list[str], rows: list[list[object]]) -> None:
    cells = [header] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n## {title}")
    for index, row in enumerate(cells):
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))
        if index == 0:
            print("  ".join("-" * width for width in widths))


def load(**options):
    """An engine on the CPU unless `device=` says otherwise (the benchmarks' baselines are CPU runs)."""
    from decoding.engines.registry import LoadOptions, load_engine

    return load_engine(LoadOptions(**{"device": "cpu", **options}))


def shallower_embedded_model(layers: int) -> Path:
    """The embedded model cut to its first `layers` layers (cached): a step about as fast as the full
    model's on a faster machine, with the same vocabulary, tokenizer and per-step bookkeeping."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from decoding.engines.embedded import cache_root, embedded_gguf
    from decoding.engines.hf.load import converted_gguf

    source = converted_gguf(embedded_gguf())
    target = cache_root() / "bench" / f"{source.name}-{layers}-layers"
    if not (target / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(source)
        model.model.layers = model.model.layers[:layers]
        model.config.num_hidden_layers = layers
        model.save_pretrained(target)
        AutoTokenizer.from_pretrained(source).save_pretrained(target)
    return target
