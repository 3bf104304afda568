"""Strategies side by side: each writes exactly N tokens from the same prefix and seed, scored alike.

End-of-sequence is suppressed (generate()'s `suppress_tokens`) so every continuation has the same length,
which makes the log-probabilities comparable, as in the chapter's comparison of decoding methods; under
a grammar constraint it is not (it completes the grammar), and a continuation may end early.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from decoding.core.engine import Engine, RunsSideBySide, decode_continuation
from decoding.core.errors import SessionError, SettingsError
from decoding.core.settings import Strategy
from decoding.core.tokens import one_line
from decoding.records.trace import aligned_table, markdown_table, terminal_safe_json

NGRAM = 3  # repeats are counted among token 3-grams
COMPARE_NEW_TOKENS = 32  # what each strategy writes in a comparison from the current text (the app's view)

Progress = Callable[[int, int], object]  # (strategies done, strategies in all)


class Cancelled(Exception):
    """The comparison was stopped before the end."""


@dataclass(frozen=True)
class Continuation:
    strategy: Strategy
    token_ids: tuple[int, ...]
    text: str
    logprob: float  # the sequence's log-probability under the raw model
    repeated_ngrams: int  # token 3-grams that repeat an earlier one
    cut_short: str | None = None  # why it has fewer tokens than asked for: "the context limit", "the grammar's end"
    draft: tuple[float | None, float | None] | None = None  # with a draft: (acceptance rate, tokens a target pass)

    @property
    def label(self) -> str:
        return self.strategy.describe()

    @property
    def mean_logprob(self) -> float:
        return self.logprob / len(self.token_ids) if self.token_ids else 0.0


@dataclass(frozen=True)
class Draft:
    """A draft model for speculative decoding: each strategy that can share it steps with it."""

    engine: Engine
    tokens: int
    name: str


def compare(
    engine: Engine,
    prefix_ids: list[int],
    strategies: list[Strategy],
    new_tokens: int,
    should_stop: Callable[[], bool] = lambda: False,
    progress: Progress = lambda done, total: None,
    draft: Draft | None = None,
) -> list[Continuation]:
    """Run each strategy for `new_tokens` from `prefix_ids`. `engine`'s own cache is used (and left
    changed): give a fork to keep a session's. Raises Cancelled when `should_stop` says so. With a
    `draft`, greedy and sampling strategies step by speculative decoding (beam search, mirostat and
    grammars without it)."""
    if new_tokens < 1:
        raise SessionError(f"the number of new tokens must be at least 1 (got {new_tokens}).")
    if any(s.is_beam for s in strategies) and not isinstance(engine, RunsSideBySide):  # say so before any work
        raise SettingsError(
            f"The {engine.name} engine cannot run beam search; leave beam out of --strategies or use --engine transformers."
        )
    results = []
    for done, strategy in enumerate(strategies):
        progress(done, len(strategies))
        # Under a grammar, end-of-sequence is what completes it: not suppressed, it may end a continuation early.
        exact = strategy if strategy.constraint else replace(strategy, suppress_tokens=tuple(sorted(engine.eos_token_ids)))
        drafted: tuple[float | None, float | None] | None = None
        if strategy.is_beam:
            ids, logprob = _beam(engine, exact, prefix_ids, new_tokens, should_stop)
        else:
            ids, logprob, drafted = _path(engine, exact, prefix_ids, new_tokens, should_stop, draft)
        cut_short = None
        if len(ids) < new_tokens:
            ended = ids and ids[-1] in engine.eos_token_ids
            cut_short = "the grammar's end" if ended else "the context limit"
        results.append(
            Continuation(
                strategy, ids, decode_continuation(engine, prefix_ids, ids), logprob, repeated_ngrams(ids), cut_short, drafted
            )
        )
    progress(len(strategies), len(strategies))
    return results


def _path(
    engine: Engine, strategy: Strategy, prefix_ids: list[int], new_tokens: int, should_stop, draft: Draft | None
) -> tuple[tuple[int, ...], float, tuple[float | None, float | None] | None]:
    from decoding.core.prompt import recorded_prompt
    from decoding.search.session import Session
    from decoding.search.speculative import Speculator, check_speculation

    session = Session(engine, strategy)
    session.reset(recorded_prompt(engine, prefix_ids))
    speculator = None
    if draft is not None:
        try:
            check_speculation(engine, strategy, draft.tokens)
            speculator = Speculator(draft.engine, draft.tokens, draft.name)
        except SessionError:  # mirostat, a grammar: this strategy steps without the draft
            speculator = None
    while len(session.path) < new_tokens and not session.finished:
        if should_stop():
            raise Cancelled
        if speculator is not None:
            speculator.step(session)
        else:
            session.step()
    if speculator is None:
        return tuple(session.generated_ids), session.sequence_logprob, None
    view = speculator.view(session)
    return tuple(session.generated_ids), session.sequence_logprob, (view.acceptance, view.tokens_per_pass)


def _beam(
    engine: Engine, strategy: Strategy, prefix_ids: list[int], new_tokens: int, should_stop
) -> tuple[tuple[int, ...], float]:
    from decoding.search.beam import BeamSearch

    search = BeamSearch(engine, strategy, prefix_ids, max_new_tokens=new_tokens)  # at most the room left
    while not search.ended:
        if should_stop():
            raise Cancelled
        search.step()
    best = search.snapshot().best
    assert best is not None, "an ended search has a finished hypothesis"
    return best.token_ids, best.logprob


def repeated_ngrams(ids: tuple[int, ...] | list[int], n: int = NGRAM) -> int:
    """How many of the sequence's n-grams repeat one seen earlier in it."""
    seen, repeats = set(), 0
    for start in range(len(ids) - n + 1):
        gram = tuple(ids[start : start + n])
        repeats += gram in seen
        seen.add(gram)
    return repeats


def comparison_record(prompt: str, new_tokens: int, results: list[Continuation]) -> dict:
    return {
        "prompt": prompt,
        "new_tokens": new_tokens,
        "ngram": NGRAM,
        "results": [
            {
                "strategy": r.label,
                "settings": r.strategy.generation_kwargs() | {"seed": r.strategy.seed},
                "generated_ids": list(r.token_ids),
                "generated_text": r.text,
                "sequence_logprob": r.logprob,
                "mean_logprob": r.mean_logprob,
                "repeated_ngrams": r.repeated_ngrams,
                **({"cut_short": r.cut_short} if r.cut_short else {}),
                **({"draft": {"acceptance_rate": r.draft[0], "tokens_per_target_pass": r.draft[1]}} if r.draft else {}),
            }
            for r in results
        ],
    }


def cut_short_notes(record: dict) -> list[str]:
    """A line for each continuation shorter than asked, saying why (its numbers do not compare)."""
    return [
        f"{r['strategy']} wrote {len(r['generated_ids'])} of {record['new_tokens']} tokens: {r['cut_short']} was reached"
        for r in record["results"]
        if r.get("cut_short")
    ]


def format_comparison(record: dict, fmt: str) -> str:
    if fmt == "json":
        return terminal_safe_json(record)
    header = ["Strategy", "logprob", "mean", f"repeated {record['ngram']}-grams", "Continuation"]
    rows = [
        [
            r["strategy"],
            f"{r['sequence_logprob']:.2f}",
            f"{r['mean_logprob']:.3f}",
            str(r["repeated_ngrams"]),
            one_line(r["generated_text"]),
        ]
        for r in record["results"]
    ]
    if any("draft" in r for r in record["results"]):  # how the draft fared, before the text
        header.insert(4, "draft accepted")
        for row, r in zip(rows, record["results"]):
            rate = r.get("draft", {}).get("acceptance_rate")
            row.insert(4, "" if "draft" not in r else "—" if rate is None else f"{rate:.0%}")
    table = markdown_table(header, rows) if fmt == "markdown" else aligned_table(header, rows)
    return "\n".join([table, *(f"\nNote: {note}" for note in cut_short_notes(record))])
