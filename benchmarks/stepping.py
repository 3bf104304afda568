"""1. The session's play loop (panel computed every step) against model.generate(), 64 new tokens."""

from __future__ import annotations

import torch
from common import Result, best_of, load, long_text, table

NEW_TOKENS = 64


def play_loop(session, prompt: str, new_tokens: int = NEW_TOKENS) -> int:
    session.reset(prompt)
    while len(session.path) < new_tokens and not session.finished:
        session.step()
        session.snapshot()  # what the app renders: panel, text pieces
    return len(session.path)


def tokens_per_second(session, prompt: str) -> float:
    taken = []
    elapsed = best_of(lambda: taken.append(play_loop(session, prompt)))
    return taken[-1] / elapsed


def generate_tokens_per_second(engine, prompt: str) -> float:
    ids = torch.tensor([engine.encode(prompt)], device=engine.model.device)
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)
    with torch.inference_mode():
        engine.model.generate(ids, **kwargs)  # warm-up
        return NEW_TOKENS / best_of(lambda: engine.model.generate(ids, **kwargs))


def run(engine=None, label: str = "") -> list[Result]:
    from decoding.search.session import Session

    engine = engine or load()
    session = Session(engine)
    prompts = {"4-token prompt": "Transformers are the", "200-token prompt": long_text(200, engine)}
    rows, results = [], []
    play_loop(session, "warm up", 4)
    for prompt_label, prompt in prompts.items():
        ours, theirs = tokens_per_second(session, prompt), generate_tokens_per_second(engine, prompt)
        rows.append([prompt_label, ours, theirs, ours / theirs])
        results.append(
            Result(
                f"stepping{label}_{prompt_label.split('-')[0]}tok",
                ours / theirs,
                ">=",
                0.95,
                measured=f"the session's play loop, {prompt_label}{label}: {ours:.1f} tok/s",
                baseline=f"`generate()`: {theirs:.1f} tok/s",
            )
        )
    title = f"Stepping{' ' + label.strip('_') if label else ''}: tokens/s, play loop vs generate()"
    table(title, ["prompt", "tokenstep tok/s", "generate tok/s", "ratio"], rows)
    return results
