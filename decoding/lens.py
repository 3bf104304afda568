"""The logit lens: the model's final norm and unembedding applied to the residual stream after each
layer, so a step's prediction can be watched forming with depth.

An engine that can read its layers (`ReadsLayers`) gives, for one position, a log-probability row per
layer (embeddings first, the last layer's row being the model's own next-token distribution); this
module reduces those rows to what the panel and the trace show.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from decoding.engine import ReadsLayers
from decoding.panels import Lens, LensLayer
from decoding.positions import score_rows

if TYPE_CHECKING:
    from decoding.explorer import Explorer
    from decoding.session import Session

LENS_TOP = 5  # tokens shown per layer


def no_lens(note: str, step: int | None = None) -> Lens:
    return Lens(step, (), (), None, note)


def reduce_layers(logprobs: torch.Tensor, tracked: Sequence[int], text_of, step: int | None = None) -> Lens:
    """Rows of log-probabilities, one per layer, reduced to the panel's value."""
    probs = logprobs.exp()
    top_probs, top_ids = probs.topk(LENS_TOP, dim=-1)
    per_token = [score_rows(logprobs, torch.full((logprobs.shape[0],), token_id)) for token_id in tracked]
    layers = tuple(
        LensLayer(
            top=tuple((int(i), text_of(int(i)), float(p)) for i, p in zip(top_ids[layer], top_probs[layer])),
            ranks=tuple(int(scores[layer].rank or 0) for scores in per_token),
            probs=tuple(scores[layer].prob or 0.0 for scores in per_token),
        )
        for layer in range(logprobs.shape[0])
    )
    return Lens(step, tuple((t, text_of(t)) for t in tracked), layers, settles_at(top_ids[:, 0].tolist()))


def settles_at(top1: Sequence[int]) -> int | None:
    """The first layer from which every later layer's top token is the final one."""
    final, layer = top1[-1], len(top1) - 1
    while layer > 0 and top1[layer - 1] == final:
        layer -= 1
    return layer if top1 else None


def session_lens(session: Session, step: int | None) -> Lens:
    """The lens of the next token (`step` None) or of past step `step`: the distribution the chosen
    token of that step was drawn from, read at the position before it."""
    engine = session.engine
    if not isinstance(engine, ReadsLayers):
        return no_lens(f"the {engine.name} engine gives no hidden states: the logit lens needs the transformers engine", step)
    if why := engine.lens_unavailable():
        return no_lens(why, step)
    prefix = session.ids[: len(session.prompt_ids) + step] if step is not None else session.ids
    panel = session.panels[step] if step is not None else session.distribution
    candidates = [c.token_id for c in panel.candidates] if panel is not None else []
    chosen = session.path[step].token_id if step is not None else (candidates[0] if candidates else None)
    tracked = [chosen, *candidates] if chosen is not None else candidates
    return reduce_layers(engine.layer_logprobs(prefix), tracked, session.token_text, step)


def explorer_lens(explorer: Explorer) -> Lens:
    if explorer.beam is not None:
        return no_lens("beam search runs several sequences: the lens follows one path (switch to greedy or sampling)")
    return session_lens(explorer.session, explorer.cursor)
