"""While steering: the same model without the vector, reading the same context, so the candidate
panel can set the unsteered probabilities beside the steered ones (as the second-model view sets a
second model's).
"""

from __future__ import annotations

from collections.abc import Sequence

from decoding.core.engine import Engine, Forks, Steers
from decoding.search.follower import Follower


class UnsteeredTwin:
    def __init__(self, engine: Engine) -> None:
        assert isinstance(engine, Forks) and isinstance(engine, Steers)
        twin = engine.fork()
        assert isinstance(twin, Steers)
        twin.steer(None)  # its own cache emptied; the steered engine keeps its vector
        self._follower = Follower(twin)

    def probs(self, context: Sequence[int], token_ids: Sequence[int]) -> tuple[float, ...]:
        """The unsteered probability of each of `token_ids` after `context`."""
        logprobs = self._follower.scores_after(context).logprobs
        return tuple(logprobs[list(token_ids)].exp().tolist())
