"""What a model thought of every token of a text, reduced as it is computed: for each position the
chosen token's log-probability, rank and the entropy of the distribution it was drawn from, and the
model's own top token there. Full-vocabulary rows are reduced a chunk at a time and let go.

Two models reading the same ids (`pair_score`) also give, per position, the KL divergence of their
next-token distributions: what a fine-tune, a quantization or a bigger model changes, token for token.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from decoding.core.engine import Engine, ScoresPositions
from decoding.core.scores import Scores
from decoding.core.state import PairScore, TokenScore


def score_row(scores: Scores, token_id: int, logprob: float | None = None) -> TokenScore:
    """One position's raw scores reduced for `token_id`. On partial scores a token outside the known
    N has no rank, and its log-probability is `logprob` if the engine could tell it, else unknown."""
    row = score_rows(scores.logprobs.unsqueeze(0), torch.tensor([token_id]))[0]
    if scores.complete or row.logprob != float("-inf"):
        return row
    return TokenScore(logprob, None, row.entropy, row.greedy)


ROWS_IN_CACHE = 16  # rows reduced at once: 16 x 49,152 floats = 3 MB, in cache through every pass


def score_rows(values: torch.Tensor, token_ids: torch.Tensor, from_logits: bool = False) -> list[TokenScore]:
    """Each row of log-probabilities (or of logits, normalized here) reduced for its token; ranks
    break ties by token id, as the candidate panel does (on partial rows, -inf for unknown tokens: the
    entropy is then a lower bound). Written for speed over a prompt's 1,000 rows: a few rows at a
    time, so that the passes over them (about six) read the cache rather than memory, in one scratch
    buffer (a fresh 25 MB tensor per pass costs more in page faults than the arithmetic)."""
    values = values.float()
    scratch = torch.empty(min(len(values), ROWS_IN_CACHE), values.shape[1])
    parts = [
        _reduce_slice(torch.log_softmax(rows, dim=-1) if from_logits else rows, ids, scratch[: len(rows)])
        for rows, ids in zip(values.split(ROWS_IN_CACHE), token_ids.split(ROWS_IN_CACHE))
    ]
    chosen, ranks, entropies, greedy = (torch.cat(column).tolist() for column in zip(*parts))
    return [TokenScore(*row) for row in zip(chosen, ranks, entropies, greedy)]


def _reduce_slice(
    logprobs: torch.Tensor, token_ids: torch.Tensor, scratch: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The chosen log-probabilities, ranks, entropies and greedy tokens of a few rows. One sign pass
    counts the tokens above and beside the chosen one; entropy is -sum(p log p) in place. The greedy
    token is the chosen one where nothing ranks above it; a row with a tie or with -inf (where
    p log p is 0 x -inf) is redone apart."""
    chosen = logprobs.gather(1, token_ids.unsqueeze(1))[:, 0]
    signs = torch.sub(logprobs, chosen.unsqueeze(1), out=scratch).sign_()  # +1 above the chosen, 0 beside, -1 below
    balance, unequal = signs.sum(dim=1), signs.abs_().sum(dim=1)  # exact: integers below 2^24
    ranks = ((balance + unequal) / 2).to(torch.int64)
    entropies = -torch.exp(logprobs, out=scratch).mul_(logprobs).sum(dim=1)
    greedy = token_ids.clone()
    if len(below := ranks.nonzero().flatten()):
        greedy[below] = logprobs[below].argmax(dim=1)  # the first of equal maxima
    unusual = (unequal != logprobs.shape[1] - 1) | entropies.isnan()
    for row in unusual.nonzero().flatten().tolist():
        ranks[row], entropies[row], greedy[row] = _careful_row(logprobs[row], int(token_ids[row]))
    return chosen, ranks, entropies, greedy


def _careful_row(logprobs: torch.Tensor, token_id: int) -> tuple[int, float, int]:
    """Rank (ties: the lower ids first), entropy (p log p counted 0 where p is 0) and greedy token
    of one row."""
    chosen = logprobs[token_id]
    rank = int((logprobs > chosen).sum()) + int((logprobs[:token_id] == chosen).sum())
    entropy = -float((logprobs.exp() * logprobs.clamp(min=torch.finfo(logprobs.dtype).min)).sum())
    return rank, entropy, int(logprobs.argmax())


def position_rows(engine: Engine, ids: Sequence[int]) -> Iterator[Scores]:
    """The raw scores after ids[:1], ids[:2], ... one position at a time. An engine that scores
    positions does it in one pass, in chunks of logits; any other is fed the ids one at a time on its own
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
            scores += score_rows(chunk[: len(targets)], torch.tensor(targets), from_logits=True)
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
