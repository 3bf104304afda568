"""While steering: the same model without the vector, reading the same context, so the candidate
panel can set the unsteered probabilities beside the steered ones (as the second-model view sets a
second model's). It follows on a cache of its own, cropped back to what a new context shares.
"""

from __future__ import annotations

from collections.abc import Sequence

from decoding.core.engine import Engine, Forks, Steers
from decoding.core.scores import Scores


class UnsteeredTwin:
    def __init__(self, engine: Engine) -> None:
        assert isinstance(engine, Forks) and isinstance(engine, Steers)
        twin = engine.fork()
        assert isinstance(twin, Steers)
        twin.steer(None)  # its own cache emptied; the steered engine keeps its vector
        self.engine: Engine = twin
        self._fed: list[int] = []
        self._scores: Scores | None = None  # after `_fed`

    def probs(self, context: Sequence[int], token_ids: Sequence[int]) -> tuple[float, ...]:
        """The unsteered probability of each of `token_ids` after `context`."""
        logprobs = self._scores_after(list(context)).logprobs
        return tuple(logprobs[list(token_ids)].exp().tolist())

    def _scores_after(self, context: list[int]) -> Scores:
        if context == self._fed and self._scores is not None:
            return self._scores
        shared = 0
        while shared < min(len(context), len(self._fed)) and context[shared] == self._fed[shared]:
            shared += 1
        shared = min(shared, len(context) - 1)  # at least one token read: its scores are the next token's
        self.engine.crop(shared)
        self._fed, self._scores = context[:shared], None
        self._scores = self.engine.feed(context[shared:])
        self._fed = context
        return self._scores
