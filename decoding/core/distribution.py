"""One step's next-token distribution, summarised for people: the top-k candidates and the entropy.

Kept apart from choosing a token: greedy, sampling and a force-pick are three ways of choosing from
the same computed distribution.
"""

from __future__ import annotations

import math

import torch

from decoding.core.finite import finite_ids
from decoding.core.processors import Stage
from decoding.core.state import Candidate, Distribution
from decoding.core.tokens import TokenTexts


def top_ids(logits: torch.Tensor, k: int) -> list[int]:
    """The k most likely ids, ordered by logit then by token id.

    `torch.topk` may order exact ties (common in bfloat16) either way; `torch.argmax` takes the first
    index, so ties are broken by id to keep row 0 equal to the greedy choice.
    """
    k = min(k, logits.numel())
    top = torch.topk(logits, min(k + 1, logits.numel()))
    values, ids = top.values.tolist(), top.indices.tolist()
    if len(set(values)) == len(values):  # no ties among them or at the cut: topk's order is the order
        return ids[:k]
    tied_or_better = torch.nonzero(logits >= values[k - 1]).flatten().tolist()
    ordered = sorted(zip(logits[tied_or_better].tolist(), tied_or_better), key=lambda pair: (-pair[0], pair[1]))
    return [token_id for _, token_id in ordered[:k]]


def rank_of(logits: torch.Tensor, token_id: int) -> int:
    """0-based rank of `token_id` in the order `top_ids` uses."""
    value = logits[token_id]
    better = int((logits > value).sum())
    tied_before = int((logits[:token_id] == value).sum())
    return better + tied_before


def entropy(logprobs: torch.Tensor) -> float:
    """Shannon entropy in nats, -sum(p log p). A token with probability 0 (log-probability -inf)
    contributes 0 * (most negative float) = 0 rather than nan. One dot product: it runs every step."""
    return float(-torch.dot(logprobs.exp(), logprobs.clamp(min=torch.finfo(logprobs.dtype).min)))


def summarize(
    values: torch.Tensor,
    logprobs: torch.Tensor,
    processed: Stage | None,
    k: int,
    texts: TokenTexts,
    known: int | None = None,
) -> Distribution:
    """Top-k candidates of the raw scores `values` (`logprobs` their log-probabilities), with the
    probabilities after the chain (its last stage, `processed`) beside them if any. `known`: on
    partial scores, how many tokens the engine returned (-inf elsewhere); the entropy is then a lower
    bound."""
    ids = top_ids(values, k if known is None else min(k, known))
    raw = logprobs[ids].tolist()
    kept, kept_mass = None, 1.0
    after: list[float | None]
    if processed is None:
        after, removed, processed_entropy = [None] * len(ids), [False] * len(ids), None
    else:
        left = processed.scores if processed.left is not None else processed.scores[finite_ids(processed.scores)]
        total = float(torch.logsumexp(left, dim=-1)) if left.numel() else float("-inf")
        # nothing left: every probability 0 (a log-softmax of all -inf is NaN), as `entropy` counts 0 log 0
        processed_entropy = entropy(left - total) if left.numel() else 0.0
        chosen = processed.at(torch.tensor(ids, dtype=torch.long, device=values.device))
        after = (chosen - total).exp().tolist() if left.numel() else [0.0] * len(ids)
        removed = (chosen == float("-inf")).tolist()
        kept = left.numel()
        in_play = processed.left if processed.left is not None else finite_ids(processed.scores)
        kept_mass = float(logprobs[in_play].exp().sum()) if kept else 0.0
    candidates = tuple(
        Candidate(
            token_id,
            texts(token_id),
            math.exp(logprob),
            logprob,
            rank,
            processed_prob,
            was_removed,
            token_id in texts.special_ids,
            token_id in texts.end_ids,
        )
        for rank, (token_id, logprob, processed_prob, was_removed) in enumerate(zip(ids, raw, after, removed))
    )
    size = int(values.shape[-1])
    if known is None:
        return Distribution(candidates, entropy(logprobs), processed_entropy, kept=kept, kept_mass=kept_mass, vocab_size=size)
    covered = float(logprobs[finite_ids(logprobs)].exp().sum())
    rest = max(0.0, 1.0 - covered)  # the unknown mass adds at least -r log r (all of it on one token)
    bound = entropy(logprobs) - (rest * math.log(rest) if rest > 0 else 0.0)
    return Distribution(
        candidates, bound, processed_entropy, known=known, covered=covered, kept=kept, kept_mass=kept_mass, vocab_size=size
    )
