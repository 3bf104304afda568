"""`tokenstep trace` with the whole sampler chain on (every sampler of decoding.core.samplers: the
penalties, DRY, dynamic temperature, top-k, top-p, min-p, typical, top-n-sigma, XTC, mirostat) against
the same command sampling with nothing on, in the same run: the chain's cost a step, as a user meets it.
Time per token: (T(161 steps) - T(1 step)) / 160, the best of three runs of each, taking turns: the
start-up (loading, finding DRY's sequence breakers once) cancels out, and its noise (a few hundred ms
here) is spread over 160 tokens.
"""

from __future__ import annotations

from command_runs import MODEL_OPTIONS, ms, per_token, run_tokenstep
from common import PROMPT, Result, table

SHORT, LONG = 1, 161
REPEATS = 3
TARGET = 1.1
PLAIN = ["--strategy", "sample", "--seed", "0"]
WHOLE_CHAIN = [
    *PLAIN, "--temperature", "0.9", "--dynatemp-range", "0.3", "--top-k", "400", "--top-p", "0.99", "--min-p", "0.001",
    "--typical-p", "0.99", "--top-n-sigma", "3", "--xtc-probability", "0.5", "--xtc-threshold", "0.01",
    "--presence-penalty", "0.3", "--frequency-penalty", "0.2", "--dry-multiplier", "0.8", "--mirostat", "2",
    "--mirostat-tau", "8", "--repetition-penalty", "1.1",
]  # fmt: skip


def trace_args(steps: int, options: list[str]) -> list[str]:
    return ["trace", PROMPT, "--steps", str(steps), "--choices", "10", "--format", "json", *MODEL_OPTIONS, *options]


def run() -> list[Result]:
    times: dict[str, list[float]] = {key: [] for key in ("plain_short", "plain_long", "chain_short", "chain_long")}
    for _ in range(REPEATS):
        for name, options in (("plain", PLAIN), ("chain", WHOLE_CHAIN)):
            times[f"{name}_short"].append(run_tokenstep(trace_args(SHORT, options))[0])
            times[f"{name}_long"].append(run_tokenstep(trace_args(LONG, options))[0])
    best = {key: min(values) for key, values in times.items()}
    plain = per_token(best["plain_long"], best["plain_short"], LONG - SHORT)
    chain = per_token(best["chain_long"], best["chain_short"], LONG - SHORT)
    ratio = chain / plain
    table(
        f"tokenstep trace, whole sampler chain against plain sampling: ms a token, (T({LONG}) - T({SHORT})) / {LONG - SHORT}",
        ["strategy", "ms a token", "ratio"],
        [["sample, nothing on", 1000 * plain, 1.0], ["sample, every sampler on", 1000 * chain, ratio]],
    )
    return [
        Result(
            "trace_whole_chain",
            ratio,
            "<",
            TARGET,
            measured=f"`tokenstep trace` with every sampler on: {ms(chain)} a token",
            baseline=f"the same command sampling with none on: {ms(plain)} a token",
        )
    ]
