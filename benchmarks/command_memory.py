"""Memory a step of `tokenstep trace`, end to end: the command's peak resident memory (VmHWM, from
the model's load on: see peak_rss.py) at two lengths, the growth a step, against the KV cache a step adds (from the model's config: keys and
values, every layer, every KV head; a beam search's B beams add B tokens' worth a step). Greedy and
with a repetition penalty over 1,000 steps; beam search (5 beams) over fewer, as each of its steps
holds 5 tokens' cache.
"""

from __future__ import annotations

from command_runs import LIST_PROMPT, MODEL_OPTIONS, kv_bytes_per_token, peak_rss_kib
from common import Result, load, table

TARGET = 1.5
BEAMS = 5
# Under a repetition penalty the list of animals ends at step 305; this opening runs past 1,000.
NOVEL_PROMPT = "The following is the full text of a very long novel.\n\nChapter 1\n\n"
# (label, prompt, options, the shorter length, the longer, KV cache tokens a step).
CASES = {
    "trace_memory_greedy": ("greedy", LIST_PROMPT, [], 100, 1000, 1),
    "trace_memory_repetition_penalty": (
        "greedy, repetition penalty 1.2",
        NOVEL_PROMPT,
        ["--repetition-penalty", "1.2"],
        100,
        1000,
        1,
    ),
    "trace_memory_beam": (
        f"beam search, {BEAMS} beams, to its limit",
        LIST_PROMPT,
        ["--strategy", "beam", "--num-beams", str(BEAMS), "--early-stopping", "never"],
        60,
        260,
        BEAMS,
    ),
}


def trace_args(prompt: str, steps: int, options: list[str]) -> list[str]:
    return ["trace", prompt, "--steps", str(steps), "--choices", "10", "--format", "json", *MODEL_OPTIONS, *options]


def steps_taken(output: str) -> int:
    import json

    return len(json.loads(output)["steps"])


def run() -> list[Result]:
    kv_per_token = kv_bytes_per_token(load(dtype="float32"))
    rows, results = [], []
    for name, (label, prompt, options, short, long, tokens_a_step) in CASES.items():
        peaks, taken = {}, {}
        for steps in (short, long):
            peaks[steps], output = peak_rss_kib(trace_args(prompt, steps, options))
            taken[steps] = steps_taken(output)
        per_step = 1024 * (peaks[long] - peaks[short]) / (taken[long] - taken[short])
        kv_a_step = kv_per_token * tokens_a_step
        ratio = per_step / kv_a_step
        rows.append([label, f"{taken[short]}-{taken[long]}", peaks[short] / 1024, peaks[long] / 1024, per_step / 1024, ratio])
        results.append(
            Result(
                name,
                ratio,
                "<=",
                TARGET,
                measured=f"`tokenstep trace` {label}: peak RSS {per_step / 1024:.1f} KiB a step (steps {taken[short]} to {taken[long]})",
                baseline=f"the KV cache a step adds: {kv_a_step / 1024:.1f} KiB",
                problem="" if taken[long] == long else f"the trace ended at {taken[long]} of {long} steps",
            )
        )
    table(
        f"tokenstep trace: peak RSS growth a step against the KV cache ({kv_per_token / 1024:.1f} KiB a token)",
        ["strategy", "steps", "peak MiB (short)", "peak MiB (long)", "KiB a step", "ratio"],
        rows,
    )
    return results
