"""Leave-one-out attribution over a 64-token context, as a user meets it: `tokenstep trace --steps 1
--attribution loo` against the same command without it, the best of three runs of each, taking
turns (the start-up cancels out); measured against one forward pass of the same context on the
same weights in this process (a fresh cache each time, the best of five).

Leave-one-out reads 64 contexts of 63 tokens: batched, on a GPU, that is about one pass; on a CPU,
whose time grows with the tokens read, it is about 64 passes, so the target is one for a GPU.
"""

from __future__ import annotations

from command_runs import MODEL_OPTIONS, ms, run_tokenstep
from common import TEXT, Result, load, seconds, table

CONTEXT_TOKENS = 64
REPEATS = 3
TARGET = 4.0


def context_prompt(engine) -> tuple[str, list[int]]:
    """A prompt of 64 tokens (as the engine reads it) from the benchmarks' text."""
    ids = engine.encode(TEXT * 2)[:CONTEXT_TOKENS]
    text = engine.decode(ids)
    return text, engine.encode(text)


def forward_seconds(engine, ids: list[int]) -> float:
    def one_pass() -> None:
        engine.crop(0)
        engine.feed(ids)

    return min(seconds(one_pass) for _ in range(5))


def in_process(engine, label: str = "") -> Result:
    """Leave-one-out against one forward pass, both in this process on `engine` (gpu.sh runs it on CUDA,
    where the target is meant to hold)."""
    from decoding.search.attribution import attribute

    _, ids = context_prompt(engine)
    forward = forward_seconds(engine, ids)
    target = int(engine.feed(ids).logprobs.argmax())
    attribute(engine, ids, target, "loo")  # once to warm the kernels up
    loo = min(seconds(lambda: attribute(engine, ids, target, "loo")) for _ in range(3))
    return Result(
        f"attribution_loo{label}",
        loo / forward,
        "<=",
        TARGET,
        measured=f"leave-one-out over {len(ids)} tokens, in process: {ms(loo)}",
        baseline=f"one forward pass of the same context: {ms(forward)}",
    )


def run() -> list[Result]:
    from decoding.search.attribution import attribute

    engine = load(dtype="float32")
    prompt, ids = context_prompt(engine)
    forward = forward_seconds(engine, ids)
    target = int(engine.feed(ids).logprobs.argmax())
    in_process = min(seconds(lambda: attribute(engine, ids, target, "loo")) for _ in range(2))
    args = ["trace", prompt, "--steps", "1", "--choices", "10", "--format", "json", *MODEL_OPTIONS]
    plain, attributed = [], []
    for _ in range(REPEATS):
        plain.append(run_tokenstep(args)[0])
        attributed.append(run_tokenstep([*args, "--attribution", "loo"])[0])
    loo = max(min(attributed) - min(plain), 0.0)
    ratio = loo / forward
    table(
        f"leave-one-out over a {len(ids)}-token context against one forward pass of it (CPU, float32)",
        ["what", "ms", "passes"],
        [
            ["one forward pass of the context (in process)", 1000 * forward, 1.0],
            ["leave-one-out, in process (attribute())", 1000 * in_process, in_process / forward],
            ["leave-one-out, tokenstep trace --attribution loo minus plain trace", 1000 * loo, ratio],
        ],
    )
    return [
        Result(
            "attribution_loo",
            ratio,
            "<=",
            TARGET,
            measured=f"`tokenstep trace --attribution loo` over {len(ids)} tokens: {ms(loo)} more than without",
            baseline=f"one forward pass of the same context: {ms(forward)}",
        )
    ]
