"""2. Per-step latency as the context grows, against re-running the whole sequence each step."""

from __future__ import annotations

import torch
from common import Result, load, long_text, median_of, table

LENGTHS = (10, 200, 1000)


def run() -> list[Result]:
    from decoding.search.session import Session

    engine = load()
    session = Session(engine)
    rows, ratio = [], 0.0
    for length in LENGTHS:
        session.reset(long_text(length, engine))
        session.step()  # warm-up
        ours = median_of(session.step, 7)
        ids = torch.tensor([session.ids])
        with torch.inference_mode():
            rerun = median_of(lambda ids=ids: engine.model(input_ids=ids, use_cache=False, logits_to_keep=1), 3)
        ratio = rerun / ours
        rows.append([len(session.prompt_ids), 1000 * ours, 1000 * rerun, ratio])
    table("Context growth: ms per step", ["context", "KV-cache step ms", "re-run ms", "speed-up"], rows)
    context, step_ms, rerun_ms = rows[-1][:3]
    return [
        Result(
            "context_growth_1000",
            ratio,
            ">=",
            20,
            measured=f"a step at {context} tokens of context: {step_ms:.1f} ms",
            baseline=f"re-running the whole sequence: {rerun_ms:.0f} ms",
        )
    ]
