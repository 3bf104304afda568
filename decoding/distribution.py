"""One step's next-token distribution, summarised for people: the top-k candidates and the entropy.

Kept apart from choosing a token: greedy, sampling and a force-pick are three ways of choosing from
the same computed distribution.
"""

from __future__ import annotations

from typing import Callable

import torch

from decoding.state import Candidate, Distribution


def top_ids(logits: torch.Tensor, k: int) -> list[int]:
    """The k most likely ids, ordered by logit then by token id.

    `torch.topk` may order exact ties (common in bfloat16) either way; `torch.argmax` takes the first
    index, so ties are broken by id to keep row 0 equal to the greedy choice.
    """
    k = min(k, logits.numel())
    threshold = torch.topk(logits, k).values[-1]
    tied_or_better = torch.nonzero(logits >= threshold).flatten().tolist()
    values = logits[tied_or_better].tolist()
    ordered = sorted(zip(values, tied_or_better), key=lambda pair: (-pair[0], pair[1]))
    return [token_id for _, token_id in ordered[:k]]


def rank_of(logits: torch.Tensor, token_id: int) -> int:
    """0-based rank of `token_id` in the order `top_ids` uses."""
    value = logits[token_id]
    better = int((logits > value).sum())
    tied_before = int((logits[:token_id] == value).sum())
    return better + tied_before


def entropy(logprobs: torch.Tensor) -> float:
    """Shannon entropy in nats; tokens with probability 0 contribute nothing."""
    return float(torch.special.entr(logprobs.exp()).sum())


def summarize(
    logits: torch.Tensor,
    processed_scores: torch.Tensor | None,
    k: int,
    text_of: Callable[[int], str],
) -> Distribution:
    """Top-k candidates of the raw `logits`, with the processed probabilities beside them if any."""
    logprobs = torch.log_softmax(logits, dim=-1)
    processed = torch.softmax(processed_scores, dim=-1) if processed_scores is not None else None
    ids = top_ids(logits, k)
    candidates = tuple(
        Candidate(
            token_id=token_id,
            text=text_of(token_id),
            prob=float(logprobs[token_id].exp()),
            logprob=float(logprobs[token_id]),
            rank=rank,
            processed_prob=None if processed is None else float(processed[token_id]),
            removed=processed_scores is not None and bool(processed_scores[token_id] == float("-inf")),
        )
        for rank, token_id in enumerate(ids)
    )
    processed_entropy = None if processed is None else entropy(torch.log_softmax(processed_scores, dim=-1))
    return Distribution(candidates, entropy(logprobs), processed_entropy)
