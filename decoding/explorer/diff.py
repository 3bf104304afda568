"""`tokenstep diff`: two models along one recorded path, token for token.

The trace's path (prompt, chosen tokens, chat turns) is read by its own model and by a second one;
each token gets both log-probabilities and their difference, the KL divergence of the two next-token
distributions before it, and whether the two models' most likely tokens agree there.
"""

from __future__ import annotations

import csv
import io
import statistics
from typing import TYPE_CHECKING, Any

from decoding.core.chat import Turn, messages_of
from decoding.core.errors import SessionError
from decoding.core.prompt import recorded_prompt
from decoding.core.state import PairScore
from decoding.core.tokens import one_line, token_label
from decoding.explorer.replay import check_fits
from decoding.records.trace import terminal_safe_json

if TYPE_CHECKING:
    from decoding.explorer.explorer import Explorer
    from decoding.search.second import SecondModel

DIFF_FORMATS = ("table", "json", "csv")


def diff_record(explorer: Explorer, second: SecondModel, record: dict[str, Any]) -> dict[str, Any]:
    """Walk the trace's path on `explorer` (forcing its tokens, feeding its turns), have `second`
    follow it, and gather both models' scores of every token after the first."""
    if "sequence_score" in record:
        raise SessionError("diff follows one path, and a beam trace holds several: export a single path (greedy or sampling).")
    # A tokenizer that differs, or a path this model cannot read, is refused before any model work.
    explorer.add_second(second, f"the trace's model {explorer.engine.model_id}", f"--model {second.name}")
    check_fits(explorer.engine, record)
    messages = messages_of(record.get("messages", []), "the trace's messages")
    explorer.new_prompt(
        recorded_prompt(explorer.engine, record["prompt_ids"], record["prompt"], record.get("prompt_form", "plain"), messages)
    )
    session = explorer.session
    explorer.catch_up()
    for number, step in enumerate(record["steps"], start=1):
        if "turn" in step:
            turn = step["turn"]
            said = messages_of(turn["messages"], f"turn {number}'s message")  # the shape holds one or more
            session.add_turn(Turn(said[-1], turn["text"], tuple(turn["ids"])))
        else:
            explorer.force(step["chosen"]["token_id"])
        explorer.catch_up()  # the second model reads each step while its full scores are still held
    shown = explorer.view()
    view = shown.snapshot
    assert view.second is not None
    tokens = [
        _token_row("prompt", index, token_id, explorer, pair)
        for index, (token_id, pair) in enumerate(zip(session.prompt_ids, view.second.prompt))
        if index > 0
    ]
    tokens += [
        _token_row("path", index, token.token_id, explorer, pair)
        for index, (token, pair) in enumerate(zip(view.path, view.second.path))
    ]
    from decoding.explorer.explorer import model_line  # not at the top: the CLI imports this module before torch

    return {
        "first_model": shown.model,
        "second_model": model_line(second.engine),
        "note": view.second.note,
        "tokens": tokens,
        "summary": _summary(tokens),
    }


def _token_row(part: str, index: int, token_id: int, explorer: Explorer, pair: PairScore | None) -> dict[str, Any]:
    text = explorer.session.token_text(token_id)
    row: dict[str, Any] = {"part": part, "index": index, "token_id": token_id, "text": text}
    if pair is None:
        return row | {"first_logprob": None, "second_logprob": None, "difference": None, "kl": None, "greedy_agree": None}
    return row | {
        "first_logprob": pair.first.logprob,
        "second_logprob": pair.second.logprob,
        "difference": pair.difference,
        "kl": pair.kl,
        "first_greedy": explorer.session.token_text(pair.first.greedy),
        "second_greedy": explorer.session.token_text(pair.second.greedy),
        "greedy_agree": pair.agree,
    }


def _summary(tokens: list[dict[str, Any]]) -> dict[str, Any]:
    scored = [row for row in tokens if row["difference"] is not None]
    largest = max(scored, key=lambda row: abs(row["difference"]), default=None)
    kls = [row["kl"] for row in tokens if row["kl"] is not None]
    divergence = next((row for row in tokens if row["greedy_agree"] is False), None)
    return {
        "tokens_compared": len(scored),
        "largest_difference": abs(largest["difference"]) if largest else None,
        "largest_at": _where(largest),
        "mean_kl": statistics.fmean(kls) if kls else None,
        "largest_kl": max(kls) if kls else None,
        "first_divergence": _where(divergence),
    }


def _where(row: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if row is None else {"part": row["part"], "index": row["index"], "text": row["text"]}


def format_diff(record: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return terminal_safe_json(record)
    if fmt == "csv":
        return _csv(record)
    return _table(record)


def _table(record: dict[str, Any]) -> str:
    lines = [f"first:  {record['first_model']}", f"second: {record['second_model']}"]
    if record["note"]:
        lines.append(record["note"])
    lines.append(f"{'part':<6} {'#':>4}  {'token':<16} {'logp first':>11} {'logp second':>11} {'Δ':>10} {'KL':>10}  greedy")
    for row in record["tokens"]:
        label = token_label(row["text"])[:16]
        if row["difference"] is None:
            lines.append(f"{row['part']:<6} {row['index'] + 1:>4}  {label:<16} {'(not scored)':>11}")
            continue
        kl = "-" if row["kl"] is None else f"{row['kl']:.2e}"
        agree = (
            "same" if row["greedy_agree"] else f"DIFFER: {token_label(row['first_greedy'])} / {token_label(row['second_greedy'])}"
        )
        lines.append(
            f"{row['part']:<6} {row['index'] + 1:>4}  {label:<16} {_number(row['first_logprob']):>11} "
            f"{_number(row['second_logprob']):>11} {_number(row['difference'], '+.2e'):>10} {kl:>10}  {agree}"
        )
    return "\n".join([*lines, _verdict(record["summary"])])


def _verdict(summary: dict[str, Any]) -> str:
    if not summary["tokens_compared"]:
        return "no token could be compared"
    parts = [f"{summary['tokens_compared']} tokens compared", f"largest |Δ logp| {summary['largest_difference']:.2e}"]
    if summary["largest_at"]:
        at = summary["largest_at"]
        parts[-1] += f" at {at['part']} token {at['index'] + 1} {token_label(at['text'])}"
    if summary["mean_kl"] is not None:
        parts.append(f"mean KL {summary['mean_kl']:.2e} nats (largest {summary['largest_kl']:.2e})")
    divergence = summary["first_divergence"]
    parts.append(
        "the greedy choices agree everywhere"
        if divergence is None
        else f"the greedy choices first differ before {divergence['part']} token {divergence['index'] + 1} {token_label(divergence['text'])}"
    )
    return "; ".join(parts)


def _number(value: float | None, spec: str = ".4f") -> str:
    return "?" if value is None else format(value, spec)


def _csv(record: dict[str, Any]) -> str:
    out = io.StringIO()
    columns = ["part", "index", "token_id", "text", "first_logprob", "second_logprob", "difference", "kl", "greedy_agree"]
    writer = csv.DictWriter(out, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in record["tokens"]:
        writer.writerow({**row, "text": one_line(row["text"])})
    return out.getvalue().rstrip("\n")
