"""`tokenstep compare` end to end (the chapter's 8 strategies x 32 tokens) against generate() writing
the same rows: each strategy's settings, seed and suppressed end-of-sequence, as compare runs them.
Time per token: (T(32 tokens a row) - T(1)) / (8 rows x 31), start-up cancelling out.
"""

from __future__ import annotations

import json

from command_runs import MODEL_OPTIONS, generate, ms, per_token, run_tokenstep, timed_generate
from common import PROMPT, Result, load, table

SHORT, LONG = 1, 32
REPEATS = 2
TARGET = 0.9


def compare_args(new_tokens: int) -> list[str]:
    return ["compare", PROMPT, "--new-tokens", str(new_tokens), "--format", "json", *MODEL_OPTIONS]


def row_settings(row: dict, engine) -> tuple[dict, int]:
    """generate()'s arguments for one row of the comparison: its settings, end-of-sequence suppressed."""
    settings = {key: value for key, value in row["settings"].items() if key != "seed"}
    eos = sorted(engine.eos_token_ids)
    return settings | {"suppress_tokens": eos, "pad_token_id": eos[0]}, row["settings"]["seed"]


def generate_rows(engine, prompt_ids: list[int], rows: list[dict], new_tokens: int) -> list[list[int]]:
    return [generate(engine, prompt_ids, new_tokens, *row_settings(row, engine)) for row in rows]


def run() -> list[Result]:
    engine = load(dtype="float32")
    prompt_ids = engine.encode(PROMPT)
    times: dict[str, list[float]] = {"short": [], "long": [], "generate_short": [], "generate_long": []}
    for _ in range(REPEATS):
        times["short"].append(run_tokenstep(compare_args(SHORT))[0])
        taken, output = run_tokenstep(compare_args(LONG))
        times["long"].append(taken)
        if len(times["long"]) == 1:  # the first run says what generate() must write, and warms it up
            rows = json.loads(output)["results"]
            written = generate_rows(engine, prompt_ids, rows, LONG)
            differ = [row["strategy"] for row, ids in zip(rows, written) if ids != row["generated_ids"]]
        for length, key in ((SHORT, "generate_short"), (LONG, "generate_long")):
            times[key].append(sum(timed_generate(engine, prompt_ids, length, *row_settings(row, engine)) for row in rows))
    best = {key: min(values) for key, values in times.items()}
    tokens = len(rows) * (LONG - SHORT)
    ours = per_token(best["long"], best["short"], tokens)
    theirs = per_token(best["generate_long"], best["generate_short"], tokens)
    table(
        f"tokenstep compare, {len(rows)} rows x {LONG} tokens: ms a token against generate() writing the same rows",
        ["compare ms", "generate ms", "ratio", "rows whose tokens differ", "T(1 token) s"],
        [[1000 * ours, 1000 * theirs, theirs / ours, ", ".join(differ) or "none", best["short"]]],
    )
    return [
        Result(
            "compare_rows",
            theirs / ours,
            ">=",
            TARGET,
            measured=f"`tokenstep compare`, {len(rows)} rows x {LONG} tokens: {ms(ours)} a token",
            baseline=f"`generate()` writing the same rows: {ms(theirs)} a token",
            problem=f"rows whose tokens differ from generate()'s: {', '.join(differ)}" if differ else "",
        )
    ]
