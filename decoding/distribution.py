"""One step's next-token distribution, summarised for people: the top-k candidates and the entropy.

Kept apart from choosing a token: greedy, sampling and a force-pick are three ways of choosing from
the same computed distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from decoding.tokens import token_label


@dataclass(frozen=True)
class Candidate:
    """A possible next token. `prob`/`logprob` are the raw model's; `processed_prob` is after the
    strategy's processors (None when the strategy leaves the distribution as it is)."""

    token_id: int
    text: str  # the token's own text; bytes that are only part of a character show as <0xE2>
    prob: float
    logprob: float
    rank: int  # 0-based, in the whole raw distribution (ties broken by token id)
    processed_prob: float | None = None
    removed: bool = False  # a processor (top-k, top-p, n-gram blocking...) ruled it out

    @property
    def label(self) -> str:
        """The text with whitespace visible and controls escaped, safe for any terminal."""
        return token_label(self.text)


@dataclass(frozen=True)
class Distribution:
    candidates: tuple[Candidate, ...]  # best first; row 0 is always the greedy (raw argmax) token
    entropy: float  # of the raw distribution, in nats
    processed_entropy: float | None  # after the processors, when they reshape it


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
