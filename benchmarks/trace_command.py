"""`tokenstep trace` end to end, a subprocess per run, against generate() on the same weights doing
the same tokens: greedy; sampling with temperature, top-k, top-p and a repetition penalty (same seed);
beam search with 5 beams against generate(num_beams=5). Time per token: (T(65 steps) - T(1 step)) / 64.
"""

from __future__ import annotations

import json

from command_runs import MODEL_OPTIONS, generate, generation_settings, ms, per_token, run_tokenstep, timed_generate
from common import PROMPT, Result, load, table

SHORT, LONG = 1, 65
REPEATS = 3  # runs of each, taking turns; the best of each
TARGET = 0.95
SAMPLING = ["--strategy", "sample", "--temperature", "0.7", "--top-k", "50", "--top-p", "0.9", "--repetition-penalty", "1.2"]
CASES = {
    "trace_greedy": ("greedy", []),
    "trace_sampling": ("sampling T=0.7, top-k 50, top-p 0.9, repetition penalty 1.2, seed 0", [*SAMPLING, "--seed", "0"]),
    "trace_beam": ("beam search, 5 beams", ["--strategy", "beam", "--num-beams", "5"]),
}


def trace_args(steps: int, options: list[str]) -> list[str]:
    return ["trace", PROMPT, "--steps", str(steps), "--choices", "10", "--format", "json", *MODEL_OPTIONS, *options]


def measure(engine, options: list[str]) -> dict:
    """The best of REPEATS runs of each of the four (the command and generate(), short and long)."""
    times: dict[str, list[float]] = {"short": [], "long": [], "generate_short": [], "generate_long": []}
    for _ in range(REPEATS):
        times["short"].append(run_tokenstep(trace_args(SHORT, options))[0])
        taken, output = run_tokenstep(trace_args(LONG, options))
        times["long"].append(taken)
        if len(times["long"]) == 1:  # the first run says what generate() must do, and warms it up
            record = json.loads(output)
            prompt_ids, settings, seed = record["prompt_ids"], generation_settings(record, engine), record.get("seed")
            steps = len(record["steps"])
            same = generate(engine, prompt_ids, steps, settings, seed) == record["generated_ids"]
        times["generate_short"].append(timed_generate(engine, prompt_ids, SHORT, settings, seed))
        times["generate_long"].append(timed_generate(engine, prompt_ids, steps, settings, seed))
    best = {key: min(values) for key, values in times.items()}
    return {
        "steps": steps,
        "same_tokens": same,
        "ours": per_token(best["long"], best["short"], steps - SHORT),
        "theirs": per_token(best["generate_long"], best["generate_short"], steps - SHORT),
        "start_up": best["short"],
    }


def run() -> list[Result]:
    engine = load(dtype="float32")
    rows, results = [], []
    for name, (label, options) in CASES.items():
        got = measure(engine, options)
        ratio = got["theirs"] / got["ours"]
        rows.append([label, got["steps"], 1000 * got["ours"], 1000 * got["theirs"], ratio, got["same_tokens"], got["start_up"]])
        results.append(
            Result(
                name,
                ratio,
                ">=",
                TARGET,
                measured=f"`tokenstep trace` {label}: {ms(got['ours'])} a token",
                baseline=f"`generate()`: {ms(got['theirs'])} a token",
                problem="" if got["same_tokens"] else "its tokens differ from generate()'s",
            )
        )
    table(
        f"tokenstep trace: ms a token, (T({LONG} steps) - T({SHORT})) / {LONG - SHORT}, against generate()",
        ["strategy", "steps", "trace ms", "generate ms", "ratio", "same tokens", "T(1 step) s"],
        rows,
    )
    return results
