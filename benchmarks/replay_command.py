"""`tokenstep replay` and `tokenstep diff` end to end on greedy traces of 65 and 1 steps (written by
`tokenstep trace` first), against generate() doing the trace's tokens, per step: (T(65) - T(1)) / 64.

diff reads the path with two models (here the trace's own, twice), so its figure is reported without
a target.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from command_runs import MODEL_OPTIONS, generate, generation_settings, ms, per_token, run_tokenstep, timed_generate
from common import PROMPT, Result, load, table

SHORT, LONG = 1, 65
REPEATS = 3
TARGET = 0.9


def write_traces(folder: Path) -> dict[int, Path]:
    paths = {}
    for steps in (SHORT, LONG):
        args = ["trace", PROMPT, "--steps", str(steps), "--choices", "10", "--format", "json", *MODEL_OPTIONS]
        paths[steps] = folder / f"trace-{steps}.json"
        paths[steps].write_text(run_tokenstep(args)[1])
    return paths


def run() -> list[Result]:
    engine = load(dtype="float32")
    traces = write_traces(Path(tempfile.mkdtemp(prefix="tokenstep-bench-replay-")))
    record = json.loads(traces[LONG].read_text())
    prompt_ids, settings = record["prompt_ids"], generation_settings(record, engine)
    steps = len(record["steps"])
    same = generate(engine, prompt_ids, steps, settings) == record["generated_ids"]
    commands = {
        "replay": lambda length: ["replay", str(traces[length]), "--device", "cpu"],
        "diff": lambda length: ["diff", str(traces[length]), "--device", "cpu", "--format", "json"],
    }
    times: dict[str, list[float]] = {}
    for _ in range(REPEATS):
        for name, args in commands.items():
            for length in (SHORT, LONG):
                times.setdefault(f"{name}_{length}", []).append(run_tokenstep(args(length))[0])
        for length in (SHORT, LONG):
            new = steps if length == LONG else SHORT
            times.setdefault(f"generate_{length}", []).append(timed_generate(engine, prompt_ids, new, settings))
    best = {key: min(values) for key, values in times.items()}
    theirs = per_token(best[f"generate_{LONG}"], best[f"generate_{SHORT}"], steps - SHORT)
    ours = {name: per_token(best[f"{name}_{LONG}"], best[f"{name}_{SHORT}"], steps - SHORT) for name in commands}
    table(
        f"tokenstep replay and diff of a {steps}-step trace: ms a step, (T({steps}) - T({SHORT})) / {steps - SHORT}",
        ["command", "ms a step", "generate() ms a token", "ratio"],
        [[name, 1000 * ours[name], 1000 * theirs, theirs / ours[name]] for name in commands],
    )
    problem = "" if same else "the trace's tokens differ from generate()'s"
    baseline = f"`generate()` writing the trace's tokens: {ms(theirs)} a token"
    return [
        Result(
            "replay_steps",
            theirs / ours["replay"],
            ">=",
            TARGET,
            measured=f"`tokenstep replay` of a {steps}-step trace: {ms(ours['replay'])} a step",
            baseline=baseline,
            problem=problem,
        ),
        Result(
            "diff_steps",
            theirs / ours["diff"],
            "",
            measured=f"`tokenstep diff` of the same trace (two models read it): {ms(ours['diff'])} a step",
            baseline=baseline,
            problem=problem,
        ),
    ]
