"""Futures as a record (`tokenstep futures --format json`) and as a table: each future with its
tokens, text, raw-model log-probability and where it ended, then the outcomes they came to."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from decoding.core.tokens import one_line
from decoding.records.trace import strategy_fields
from decoding.search.futures import Future
from decoding.search.outcomes import Outcome, OutcomeRule
from decoding.search.session import Session

TEXT_SHOWN = 60  # characters of a future's text in a table row


@dataclass(frozen=True)
class FuturesRun:
    """What one batch of futures gave, and how it was asked for."""

    futures: tuple[Future, ...]
    outcomes: tuple[Outcome, ...]
    rule: OutcomeRule
    new_tokens: int
    start_ids: tuple[int, ...]  # what the model had read where they start
    second: tuple[str, tuple[float | None, ...]] | None = None  # a second model's name and each future's log-probability
    cancelled: bool = False


def futures_record(session: Session, run: FuturesRun) -> dict[str, Any]:
    engine = session.engine
    second = run.second[1] if run.second is not None else (None,) * len(run.futures)
    return {
        "model": engine.model_id,
        "engine": engine.name,
        "device": engine.device,
        "dtype": engine.dtype,
        **strategy_fields(session.strategy),
        "prompt": session.prompt.text,
        "prompt_ids": list(session.prompt_ids),
        "start_ids": list(run.start_ids),
        "n": len(run.futures),
        "new_tokens": run.new_tokens,
        **({"second_model": run.second[0]} if run.second is not None else {}),
        "futures": [_future_record(future, logprob) for future, logprob in zip(run.futures, second)],
        "outcome": run.rule.name,
        "outcomes": [_outcome_record(outcome) for outcome in run.outcomes],
        **({"cancelled": True} if run.cancelled else {}),
    }


def _future_record(future: Future, second_logprob: float | None) -> dict[str, Any]:
    return {
        "seed": future.seed,
        "ids": list(future.ids),
        "text": future.text,
        "logprob": future.logprob,
        "length": len(future.tokens),
        "finished": future.finished,
        **({"second_logprob": second_logprob} if second_logprob is not None else {}),
    }


def _outcome_record(outcome: Outcome) -> dict[str, Any]:
    return {
        "outcome": outcome.text,
        "count": outcome.count,
        "share": outcome.share,
        "interval": list(outcome.interval),
        "probability": outcome.probability,
        "futures": list(outcome.futures),
    }


def format_futures(record: dict[str, Any]) -> str:
    """The record as two tables: the futures, then the outcomes."""
    second = "second_model" in record
    header = ["#", "seed", "logprob", *(["2nd logprob"] if second else []), "tokens", "ended", "text"]
    rows = [
        [
            str(index + 1),
            str(future["seed"]),
            f"{future['logprob']:.3f}",
            *([_number(future.get("second_logprob"))] if second else []),
            str(future["length"]),
            future["finished"] or "",
            _cut(future["text"]),
        ]
        for index, future in enumerate(record["futures"])
    ]
    outcome_rows = [
        [
            outcome["outcome"][:TEXT_SHOWN],
            str(outcome["count"]),
            f"{outcome['share']:.3f}",
            f"{outcome['interval'][0]:.3f}–{outcome['interval'][1]:.3f}",
            _number(outcome["probability"]),
        ]
        for outcome in record["outcomes"]
    ]
    title = f"{record['n']} futures of up to {record['new_tokens']} tokens"
    return "\n".join(
        [
            title,
            _table(header, rows),
            "",
            f"outcomes ({record['outcome']}):",
            _table(["outcome", "count", "share", "95% interval", "probability"], outcome_rows),
            *(["(cancelled: the futures end where they were)"] if record.get("cancelled") else []),
        ]
    )


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _cut(text: str) -> str:
    shown = one_line(text)
    return shown if len(shown) <= TEXT_SHOWN else shown[: TEXT_SHOWN - 1] + "…"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(title), *(len(row[i]) for row in rows)]) for i, title in enumerate(header)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * width for width in widths))
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)
