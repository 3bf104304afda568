"""Speculative decoding as a user meets it, the embedded model with its own GGUF under llama.cpp as
the draft (`--draft-engine llama`, 4 tokens a round) against the same without a draft, in the same run:

- `tokenstep trace`: time per token, (T(161 steps) - T(1 step)) / 160, the best of two runs of each,
  taking turns (start-up, the draft's load included, cancels out);
- the app in a pseudo-terminal: `p`, then the time until the status line shows step 96, the best of
  two runs of each, taking turns.

Greedy, on a prompt that runs without an end, so both write the same tokens (the test suite holds
the paths equal).
"""

from __future__ import annotations

from app_pty import app_play_seconds
from command_runs import LIST_PROMPT, MODEL_OPTIONS, ms, per_token, run_tokenstep
from common import Result, table

SHORT, LONG = 1, 161
REPEATS = 2
TARGET = 1.3
DRAFT = ["--draft-engine", "llama", "--draft-tokens", "4"]
PLAY_STEPS = 96


def trace_args(steps: int, options: list[str]) -> list[str]:
    return ["trace", LIST_PROMPT, "--steps", str(steps), "--choices", "10", "--format", "json", *MODEL_OPTIONS, *options]


def play_seconds(options: list[str]) -> float:
    """Seconds from `p` to the app's status line showing step PLAY_STEPS."""
    return app_play_seconds(LIST_PROMPT, PLAY_STEPS, tuple(options))


def play_result() -> Result:
    plain, drafted = [], []
    for _ in range(REPEATS):
        plain.append(play_seconds([]))
        drafted.append(play_seconds(DRAFT))
    ratio = min(plain) / min(drafted)
    table(
        f"The app in a pseudo-terminal, play {PLAY_STEPS} tokens with the embedded GGUF under llama.cpp as draft: ms a step",
        ["run", "ms a step", "speed-up"],
        [["no draft", 1000 * min(plain) / PLAY_STEPS, 1.0], ["draft, 4 tokens a round", 1000 * min(drafted) / PLAY_STEPS, ratio]],
    )
    return Result(
        "draft_play_speedup",
        ratio,
        ">=",
        TARGET,
        measured=f"`tokenstep --draft-engine llama` in a pseudo-terminal, `p` for {PLAY_STEPS} tokens: {ms(min(drafted) / PLAY_STEPS)} a step",
        baseline=f"the same app without a draft: {ms(min(plain) / PLAY_STEPS)} a step",
    )


def run() -> list[Result]:
    return [trace_result(), play_result()]


def trace_result() -> Result:
    times: dict[str, list[float]] = {key: [] for key in ("plain_short", "plain_long", "draft_short", "draft_long")}
    outputs: dict[str, str] = {}
    for _ in range(REPEATS):
        for name, options in (("plain", []), ("draft", DRAFT)):
            times[f"{name}_short"].append(run_tokenstep(trace_args(SHORT, options))[0])
            taken, outputs[name] = run_tokenstep(trace_args(LONG, options))
            times[f"{name}_long"].append(taken)
    best = {key: min(values) for key, values in times.items()}
    plain = per_token(best["plain_long"], best["plain_short"], LONG - SHORT)
    drafted = per_token(best["draft_long"], best["draft_short"], LONG - SHORT)
    ratio = plain / drafted
    same = _chosen(outputs["plain"]) == _chosen(outputs["draft"])
    table(
        f"tokenstep trace, greedy, with the embedded GGUF under llama.cpp as draft: ms a token, (T({LONG}) - T({SHORT})) / {LONG - SHORT}",
        ["run", "ms a token", "speed-up"],
        [["no draft", 1000 * plain, 1.0], ["draft, 4 tokens a round", 1000 * drafted, ratio]],
    )
    return Result(
        "draft_speedup",
        ratio,
        ">=",
        TARGET,
        measured=f"`tokenstep trace --draft-engine llama`: {ms(drafted)} a token",
        baseline=f"the same command without a draft: {ms(plain)} a token",
        problem="" if same else "the two paths differ",
    )


def _chosen(output: str) -> list[int]:
    import json

    return [step["chosen"]["token_id"] for step in json.loads(output)["steps"]]
