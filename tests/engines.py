"""Engines made from the tiny model that can do less, as other engines do: only the base interface (no
work ahead, no second cache, no beams), or only the top N scores (as an inference server returns)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from decoding.core.engine import Runner
from decoding.core.scores import Scores


class Basic:
    """The wrapped engine seen through the base `Engine` interface only."""

    def __init__(self, engine) -> None:
        self.inner = engine
        for name in (
            "name",
            "model_id",
            "device",
            "dtype",
            "vocab_size",
            "context_limit",
            "eos_token_ids",
            "end_of_turn_ids",
            "special_ids",
            "weights_digest",
        ):
            setattr(self, name, getattr(engine, name))

    def encode(self, text: str) -> list[int]:
        return self.inner.encode(text)

    def encode_piece(self, text: str) -> list[int]:
        return self.inner.encode_piece(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.inner.decode(ids)

    def token_bytes(self, token_id: int) -> bytes:
        return self.inner.token_bytes(token_id)

    @property
    def cached_length(self) -> int:
        return self.inner.cached_length

    def feed(self, ids: Sequence[int]) -> Scores:
        return self.inner.feed(ids)

    def crop(self, length: int) -> None:
        self.inner.crop(length)


def top_only(scores: Scores, n: int) -> Scores:
    """Only the top `n` log-probabilities of each row, -inf elsewhere (what a server returns)."""
    logprobs = scores.logprobs
    values, ids = torch.topk(logprobs, n, dim=-1)
    partial = torch.full_like(logprobs, float("-inf"))
    partial.scatter_(-1, ids, values)
    return Scores(partial, complete=False)


class TopOnly(Basic):
    """Returns only the top N log-probabilities, can tell any one token's (as vLLM's logprob_token_ids
    does), and runs beams side by side, each row cut to its top N likewise."""

    def __init__(self, engine, n: int) -> None:
        super().__init__(engine)
        self.n = n
        self.name = f"top-{n}"
        self._full: dict[int, torch.Tensor] = {}  # held length -> that position's full log-probabilities

    def feed(self, ids: Sequence[int]) -> Scores:
        scores = self.inner.feed(ids)
        self._full[self.cached_length] = scores.logprobs
        return top_only(scores, self.n)

    def logprob_of(self, token_id: int) -> float:
        return float(self._full[self.cached_length][token_id])

    def side_by_side(self) -> Runner:
        return TopOnlyRunner(self.inner.side_by_side(), self.n)


class TopOnlyRunner:
    def __init__(self, runner: Runner, n: int) -> None:
        self.runner, self.n = runner, n

    def start(self, sequences: list[list[int]]) -> Scores:
        return top_only(self.runner.start(sequences), self.n)

    def feed(self, token_ids: list[int]) -> Scores:
        return top_only(self.runner.feed(token_ids), self.n)

    def reorder(self, rows: list[int]) -> None:
        self.runner.reorder(rows)
