"""An engine that follows contexts on its own cache: a new context crops it back to what the two
share and feeds the rest, so stepping along a path costs one token a step (the unsteered twin beside
a steered model, a draft model running ahead of the target).
"""

from __future__ import annotations

from collections.abc import Sequence

from decoding.core.engine import Engine
from decoding.core.scores import Scores


class Follower:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._fed: list[int] = []
        self._scores: Scores | None = None  # after `_fed`

    def scores_after(self, context: Sequence[int]) -> Scores:
        """The engine's next-token scores after `context` (at least one token)."""
        context = list(context)
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
