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

from decoding.core.engine import ReadsLayers
from decoding.core.errors import SessionError
from decoding.core.state import Lens, LensLayer

if TYPE_CHECKING:
    from decoding.search.session import Session

LENS_TOP = 5  # tokens shown per layer


def no_lens(note: str, step: int | None = None) -> Lens:
    return Lens(step, (), (), None, note)


def reduce_layers(logprobs: torch.Tensor, tracked: Sequence[int], text_of, step: int | None = None) -> Lens:
    """Rows of log-probabilities, one per layer, reduced to the panel's value. A tracked token's rank
    counts the tokens strictly more likely."""
    top_logprobs, top_ids = logprobs.topk(LENS_TOP, dim=-1)
    values = logprobs[:, list(tracked)]  # [layers, tracked]
    # one comparison per tracked token: a single [layers, tracked, vocab] one was 2.7x slower here
    ranks = torch.stack([(logprobs > values[:, j : j + 1]).sum(dim=-1, dtype=torch.int32) for j in range(len(tracked))], 1)
    top_probs, probs = top_logprobs.exp().tolist(), values.exp().tolist()
    layers = tuple(
        LensLayer(
            top=tuple((token_id, text_of(token_id), prob) for token_id, prob in zip(top_ids[layer].tolist(), top_probs[layer])),
            ranks=tuple(ranks[layer].tolist()),
            probs=tuple(probs[layer]),
        )
        for layer in range(logprobs.shape[0])
    )
    return Lens(step, tuple((t, text_of(t)) for t in tracked), layers, settles_at(top_ids[:, 0].tolist()))


def settles_at(top1: Sequence[int]) -> int:
    """The first layer from which every later layer's top token is the final one."""
    layer = len(top1) - 1
    while layer > 0 and top1[layer - 1] == top1[-1]:
        layer -= 1
    return layer


def session_lens(session: Session, step: int | None) -> Lens:
    """The lens of the next token (`step` None) or of past step `step`: the distribution the chosen
    token of that step was drawn from, read at the position before it."""
    engine = session.engine
    if not isinstance(engine, ReadsLayers):
        return no_lens(f"the {engine.name} engine gives no hidden states: the logit lens needs the transformers engine", step)
    if why := engine.lens_unavailable():
        return no_lens(why, step)
    if step is None and session.distribution is None:
        return no_lens("the generation has ended: look at a past step (,) for its lens")
    prefix = session.ids_before(step) if step is not None else session.ids
    panel = session.panels[step] if step is not None else session.distribution
    candidates = [c.token_id for c in panel.candidates] if panel is not None else []
    chosen = session.path[step].token_id if step is not None else candidates[0]
    tracked = [chosen, *candidates]
    return reduce_layers(engine.layer_logprobs(prefix), tracked, session.token_text, step)


def lens_record(lens: Lens) -> list[dict[str, object]]:
    """A trace's `lens` of one step: per layer (0: the embeddings) the top tokens, and the chosen
    token's rank (0-based) and probability."""
    return [
        {
            "layer": index,
            "top": [{"token_id": token_id, "text": text, "prob": prob} for token_id, text, prob in layer.top],
            "chosen_rank": layer.ranks[0],
            "chosen_prob": layer.probs[0],
        }
        for index, layer in enumerate(lens.layers)
    ]


def add_lens(session: Session, record: dict[str, object]) -> None:
    """Each token step of a trace record gains its lens (one forward per step, at its position on the
    cached prefix); an engine without one makes this a one-line error."""
    token_steps = [step for step in record["steps"] if "turn" not in step]  # type: ignore[attr-defined]
    for index, step in enumerate(token_steps):
        lens = session_lens(session, index)
        if lens.note:
            raise SessionError(f"--lens: {lens.note}.")
        step["lens"] = lens_record(lens)
