"""14. Scoring every token of a 1,000-token prompt (the heat views' prompt tint) on the embedded model.

The prefill keeps its last-layer hidden states; scoring runs the model's head over them a chunk of
128 positions at a time and reduces each chunk to the chosen token's log-probability, rank and
entropy before the next. The baseline is transformers' own forward over the prompt returning every
position's logits (`model(ids)`, the one pass that could score a prompt), measured in the same run.

Also printed: the same against a prefill that computes the last position's logits only (what the
first panel needs). That ratio is ~1.25 and cannot reach 1.1: the head (576 x 49,152 weights per
position) is a quarter of this model's arithmetic. The app defers it: the prompt is scored once the
first panel is on screen and the model is idle, so the first panel does not wait for it.
"""

from __future__ import annotations

import torch
from common import Result, best_of_each, load, long_text, table

PROMPT_TOKENS = 1000


def run() -> list[Result]:
    from decoding.engines.hf.engine import POSITION_CHUNK
    from decoding.search.positions import prompt_scores

    engine = load()
    ids = engine.encode(long_text(PROMPT_TOKENS, engine))

    def prefill() -> None:
        engine.crop(0)
        engine.feed(ids)

    def prefill_and_score() -> None:
        prefill()
        prompt_scores(engine, ids)

    def full_forward() -> torch.Tensor:
        with torch.inference_mode():
            return engine.model(input_ids=torch.tensor([ids]), use_cache=False).logits

    prefill()
    largest_chunk = max(chunk.nbytes for chunk in engine.score_positions(ids))  # what prompt_scores reduces
    full_logits = full_forward()  # and a warm-up
    ours, full, last_only = best_of_each(prefill_and_score, full_forward, prefill, repeats=7)
    table(
        f"Prompt scores: a {len(ids)}-token prompt, seconds",
        ["prefill + scores", "full-logits forward", "ratio", "last-position prefill", "ratio"],
        [[ours, full, ours / full, last_only, ours / last_only]],
    )
    table(
        "Prompt scores: largest full-vocabulary tensor held, MB",
        ["ours (a chunk)", "rows a chunk", "every position's logits"],
        [[largest_chunk / 2**20, POSITION_CHUNK, full_logits.nbytes / 2**20]],
    )
    return [
        Result(
            "prompt_scores_vs_full_forward",
            ours / full,
            "<",
            1.1,
            measured=f"prefill and scores of a {len(ids)}-token prompt: {ours:.2f} s",
            baseline=f"a forward pass returning every position's logits: {full:.2f} s",
        )
    ]
