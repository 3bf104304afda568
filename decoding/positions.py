"""What a model thought of every token of a text, reduced as it is computed: for each position the
chosen token's log-probability, rank and the entropy of the distribution it was drawn from, and the
model's own top token there. Full-vocabulary rows are reduced a chunk at a time and let go.

Two models reading the same ids (`pair_score`) also give, per position, the KL divergence of their
next-token distributions: what a fine-tune, a quantization or a bigger model changes, token for token.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from decoding.engine import Engine, ScoresPositions
from decoding.scores import Scores
from decoding.state import PairScore, TokenScore


def score_row(scores: Scores, token_id: int, logprob: float | None = None) -> TokenScore:
    """One position's raw scores reduced for `token_id`. On partial scores a token outside the known
    N has no rank, and its log-probability is `logprob` if the engine could tell it, else unknown."""
    row = score_rows(scores.logprobs.unsqueeze(0), torch.tensor([token_id]))[0]
    if scores.complete or row.logprob != float("-inf"):
        return row
    return TokenScore(logprob, None, row.entropy, row.greedy)


def score_rows(logprobs: torch.Tensor, token_ids: torch.Tensor) -> list[TokenScore]:
    """Each row of log-probabilities reduced for its token; ranks break ties by token id, as the
    candidate panel does (on partial rows, -inf for unknown tokens: the entropy is then a lower bound).
    Written for speed over a prompt's 1,000 rows: counts summed as int32 (summing booleans is 3x
    slower) and p * log p with -inf clamped (where p is 0), not xlogy (4x slower)."""
    logprobs = logprobs.float()
    chosen = logprobs.gather(1, token_ids.unsqueeze(1))
    ranks = (logprobs > chosen).sum(dim=1, dtype=torch.int32)
    equal = (logprobs == chosen).sum(dim=1, dtype=torch.int32)
    for row in (equal > 1).nonzero().flatten().tolist():  # a tie: the lower ids come first
        ranks[row] += int((logprobs[row, : token_ids[row]] == chosen[row]).sum())
    entropies = -(logprobs.exp() * logprobs.clamp(min=torch.finfo(logprobs.dtype).min)).sum(dim=1)
    rows = zip(chosen[:, 0].tolist(), ranks.tolist(), entropies.tolist(), logprobs.argmax(dim=1).tolist())
    return [TokenScore(logprob, rank, entropy, greedy) for logprob, rank, entropy, greedy in rows]


def position_rows(engine: Engine, ids: Sequence[int]) -> Iterator[Scores]:
    """The raw scores after ids[:1], ids[:2], ... one position at a time. An engine that scores
    positions does it in one pass, in chunks; any other is fed the ids one at a time on its own
    cache (which then holds `ids`)."""
    if isinstance(engine, ScoresPositions):
        for chunk in engine.score_positions(ids):
            yield from (Scores(row) for row in chunk)
        return
    engine.crop(0)
    for token_id in ids:
        yield engine.feed([token_id])


def prompt_scores(engine: ScoresPositions, ids: Sequence[int]) -> tuple[TokenScore | None, ...]:
    """Every prompt token's score in one pass, reduced a chunk at a time: the first token has none
    (nothing came before it); the last row, the distribution after the prompt, is the first panel."""
    scores: list[TokenScore | None] = [None]
    for chunk in engine.score_positions(ids):
        targets = list(ids[len(scores) : len(scores) + len(chunk)])
        if targets:
            scores += score_rows(chunk[: len(targets)], torch.tensor(targets))
    return tuple(scores)


def pair_score(
    first: TokenScore, first_row: Scores, second_row: Scores, token_id: int, second_logprob: float | None = None
) -> PairScore:
    """Both models at one position: the second's view of the token, and how far apart the two
    next-token distributions are (KL(first || second), nats; None when either is partial)."""
    second = score_row(second_row, token_id, second_logprob)
    kl = kl_divergence(first_row.logprobs, second_row.logprobs) if first_row.complete and second_row.complete else None
    return PairScore(first, second, kl)


def kl_divergence(first: torch.Tensor, second: torch.Tensor) -> float:
    """KL(P || Q) in nats from two log-probability vectors (terms where P is 0 count 0)."""
    terms = first.exp() * (first - second)
    return max(0.0, float(torch.where(first == float("-inf"), 0.0, terms).sum()))
