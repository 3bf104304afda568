"""Why this token: how much each token of the context made a target next token likely.

- leave-one-out, on every engine that can score: `loo[i] = logp(target | context) - logp(target |
  context without token i)`, the n shortened contexts read side by side (a batch on transformers,
  concurrent requests on a server; one after another on llama.cpp's cache, set back after);
- gradient x input and integrated gradients, on an engine with the model in this process
  (`AttributesByGradient`: transformers).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from decoding.core.engine import AttributesByGradient, Engine, RunsSideBySide
from decoding.core.errors import SessionError
from decoding.core.scores import Scores
from decoding.core.state import ATTRIBUTION_METHODS
from decoding.search.session import Session

METHODS = ATTRIBUTION_METHODS
IG_STEPS = 64
ROWS_AT_ONCE = 16  # shortened contexts read in one batch (each holds the whole context's activations)


@dataclass(frozen=True)
class Attribution:
    method: str
    target: int
    values: tuple[float | None, ...]  # one per context token (None: the engine did not score the target there)
    completeness_gap: float | None = None  # integrated gradients: |sum - (f(x) - f(baseline))| / |f(x) - f(baseline)|


def check_methods(names: Sequence[str]) -> list[str]:
    unknown = [name for name in names if name not in METHODS]
    if unknown or not names:
        raise SessionError(f"attribution methods are {', '.join(METHODS)} (got {', '.join(unknown) or 'none'}).")
    return list(dict.fromkeys(names))


def attribute(
    engine: Engine,
    context: Sequence[int],
    target: int,
    method: str,
    *,
    held: Sequence[int] = (),
    should_stop: Callable[[], bool] = lambda: False,
) -> Attribution:
    """`method`'s attribution of logp(target | context) over the context's tokens. `held`: what the
    engine's cache holds, set back after on an engine that reads the shortened contexts on it."""
    if not 0 <= target < engine.vocab_size:
        raise SessionError(f"token id {target!r} is not in the vocabulary.")
    if not context:
        raise SessionError("There is no context to attribute to: set a prompt first.")
    if method == "loo":
        return Attribution(method, target, tuple(leave_one_out(engine, context, target, held, should_stop)))
    if not isinstance(engine, AttributesByGradient):
        raise SessionError(
            f"{METHODS[method]} needs the model's gradients, which the {engine.name} engine does not give: "
            "use leave-one-out (loo), or --engine transformers."
        )
    values, gap = engine.gradient_attribution(list(context), target, method, IG_STEPS)
    return Attribution(method, target, tuple(values), gap)


def leave_one_out(
    engine: Engine,
    context: Sequence[int],
    target: int,
    held: Sequence[int] = (),
    should_stop: Callable[[], bool] = lambda: False,
) -> list[float | None]:
    """For each context token, how much less likely the target is with that token deleted. The
    contexts without tokens a.. share the tokens before a: read once, then each row's rest."""
    context = list(context)
    with _reader(engine, held) as read:
        whole = _logprob(read([], [context])[0], target)
        shortened: list[float | None] = []
        for first in range(0, len(context), ROWS_AT_ONCE):
            if should_stop():
                raise SessionError("The attribution was cancelled.")
            deleted = range(first, min(first + ROWS_AT_ONCE, len(context)))
            rests = [context[first:i] + context[i + 1 :] for i in deleted]
            shortened += [_logprob(scores, target) for scores in read(context[:first], rests)]
    return [None if whole is None or without is None else whole - without for without in shortened]


def _logprob(scores: Scores, target: int) -> float | None:
    value = float(scores.logprobs[target])
    return value if math.isfinite(value) else None


@contextmanager
def _reader(engine: Engine, held: Sequence[int]) -> Iterator[Callable[[list[int], list[list[int]]], list[Scores]]]:
    """Reads a shared prefix followed by each of equal-length rests, to each one's next-token
    scores: side by side on a runner of the engine's own (the prefix read once), else one after
    another on the engine's cache, which is set back to what it held after. An empty sequence (a
    context of one token, deleted) has no scores."""
    if isinstance(engine, RunsSideBySide):

        def side_by_side(prefix: list[int], rests: list[list[int]]) -> list[Scores]:
            if not prefix and not rests[0]:
                return [Scores.top(engine.vocab_size, [], [])] * len(rests)
            runner = engine.side_by_side()
            if not prefix:
                scores = runner.start(rests)
            else:
                scores = runner.start([prefix])
                runner.reorder([0] * len(rests))
                scores = runner.extend(rests) if rests[0] else Scores(scores.values.expand(len(rests), -1), scores.complete)
            return [Scores(row, scores.complete) for row in scores.values]

        yield side_by_side
        return

    def one_by_one(prefix: list[int], rests: list[list[int]]) -> list[Scores]:
        engine.crop(0)
        after_prefix = engine.feed(prefix) if prefix else Scores.top(engine.vocab_size, [], [])
        read = []
        for rest in rests:
            engine.crop(len(prefix))
            read.append(engine.feed(rest) if rest else after_prefix)
        return read

    try:
        yield one_by_one
    finally:
        engine.crop(0)
        if held:
            engine.feed(list(held))


def add_attribution(session: Session, record: dict[str, Any], methods: Sequence[str], rank: int = 0) -> None:
    """Each token step of a trace record gains `"attribution": {"target": id, "<method>": [one number
    per context token], ...}`: the chosen token's (rank 0), or the candidate of that rank in the
    step's panel. The engine's cache is the session's again after."""
    token_steps = [step for step in record["steps"] if "turn" not in step]
    held = session.ids[: session.engine.cached_length]
    for index, step in enumerate(token_steps):
        candidates = step["candidates"]
        if not 0 <= rank < len(candidates):
            raise SessionError(f"--attribution-target {rank}: step {index + 1} shows {len(candidates)} candidates.")
        target = step["chosen"]["token_id"] if rank == 0 else candidates[rank]["token_id"]
        context = session.ids_before(index)
        found: dict[str, Any] = {"target": target}
        for method in methods:
            attribution = attribute(session.engine, context, target, method, held=held)
            found[method] = list(attribution.values)
            if attribution.completeness_gap is not None:
                found[f"{method}_completeness_gap"] = attribution.completeness_gap
        step["attribution"] = found
