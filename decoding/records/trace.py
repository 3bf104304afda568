"""`tokenstep trace`: run N steps headless and record them; print the record as table, json, csv or markdown.

The table is the chapter's: one row per step, the input so far and the top choices with their probabilities.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from decoding.core.state import (
    Beam,
    Candidate,
    DraftView,
    Message,
    PairScore,
    PathToken,
    ProcessorReport,
    SecondView,
    TokenScore,
)
from decoding.core.tokens import RunningText, escape_unshown, json_escaped, one_line

FORMATS = ("table", "json", "csv", "markdown")
INPUT_WIDTH = 48  # the Input column keeps the end of long inputs, where the action is

if TYPE_CHECKING:  # the command line reads options and formats before torch is imported
    from decoding.core.settings import Strategy
    from decoding.search.beam import BeamSearch
    from decoding.search.session import Session


def trace_record(session: Session, steps_as_written: bool = False) -> dict[str, Any]:
    """The session's current path as a trace record: what was on offer at each step and what was
    chosen (and in a chat, each later turn: its message, the template's text and its ids).
    `steps_as_written`: the steps as an iterator, each made as `json_chunks` writes it, so that a
    long path's record never sits in memory whole."""
    engine, strategy = session.engine, session.strategy
    steps = _step_records(session)
    chat = {"messages": [_message_record(m) for m in session.prompt.messages]} if session.prompt.form == "chat" else {}
    return {
        **engine_fields(engine),
        **_steering(engine),
        **strategy_fields(strategy),
        "prompt": session.prompt.text,
        "prompt_ids": session.prompt_ids,
        "prompt_form": session.prompt.form,
        **chat,
        "choices": session.choices,
        **_prompt_scores_record(session),
        "steps": steps if steps_as_written else list(steps),
        "generated_ids": session.generated_ids,
        "generated_text": session.generated_text,
        "sequence_logprob": session.sequence_logprob,
        "finished": session.finished,
    }


def _step_records(session: Session) -> Iterator[dict[str, Any]]:
    inputs = input_texts(session)
    # Replay starts under the strategy at the top (the one in force now); a token step made under
    # another says which (strategy, seed, constraint), and those after it were made under it too.
    strategy_before = strategy_fields(session.strategy)
    for position, step in enumerate(session.steps):
        if step.turn is not None:
            turn = step.turn
            yield {"turn": {"messages": [_message_record(turn.message)], "text": turn.text, "ids": list(turn.ids)}}
        elif step.token is not None:
            panel = step.offered.distribution
            made_under = strategy_fields(step.offered.strategy)
            changed, strategy_before = made_under != strategy_before, made_under
            yield {
                **(made_under if changed else {}),
                "input_text": next(inputs),
                "candidates": [_candidate_record(c) for c in panel.candidates],
                "chosen": _chosen_record(step.token),
                "entropy": panel.entropy,
                **({"server_chain": panel.server} if panel.server else {}),
                **_processors_record(session.report_at(position)),
            }


def strategy_fields(strategy: Strategy) -> dict[str, Any]:
    """A strategy as a record holds it: generate()'s arguments, the seed and any constraint."""
    fields: dict[str, Any] = {"strategy": strategy.generation_kwargs(), "seed": strategy.seed}
    if strategy.constraint is not None:
        fields["constraint"] = {"kind": strategy.constraint.kind, "source": strategy.constraint.source}
    return fields


def input_texts(session: Session) -> Iterator[str]:
    """What the model had read before each path token, as text: the prompt (and each chat turn)
    decoded, then the tokens' bytes decoded as they come (decoding the whole input again at every
    step took 0.2 s of a 1,000-step export)."""
    engine, ids = session.engine, list(session.prompt_ids)
    text, tail = engine.decode(ids), RunningText()
    for step in session.steps:
        ids += step.ids
        if step.token is None:  # a turn: what the template framed, decoded after all before it
            text, tail = engine.decode(ids), RunningText()
            continue
        yield text + tail.unfinished()
        text += tail.push(step.token.raw)


def _prompt_scores_record(session: Session) -> dict[str, Any]:
    """Each prompt token's log-probability, rank and entropy (the first token's: null), when the
    engine can score the prompt."""
    scores = session.score_prompt()
    if scores is None:
        return {}
    return {"prompt_scores": [score_record(score) for score in scores]}


def score_record(score: TokenScore | None) -> dict[str, Any] | None:
    if score is None:
        return None
    return {"logprob": score.logprob, "rank": score.rank, "entropy": score.entropy, "greedy": score.greedy}


def second_model_record(second: SecondView) -> dict[str, Any]:
    """A second model's scores of the same tokens: prompt and path, aligned with the record's."""

    def pair_record(pair: PairScore | None) -> dict[str, Any] | None:
        if pair is None:
            return None
        return {**(score_record(pair.second) or {}), "difference": pair.difference, "kl": pair.kl, "greedy_agree": pair.agree}

    return {
        "model": second.model,
        "prompt_scores": [pair_record(pair) for pair in second.prompt],
        "steps": [pair_record(pair) for pair in second.path],
        "first_divergence": second.first_divergence,
        **({"note": second.note} if second.note else {}),
    }


def engine_fields(engine: Any) -> dict[str, Any]:
    """The model a record was made with, as replay loads it again."""
    fields = {"model": engine.model_id, "engine": engine.name, "device": engine.device, "dtype": engine.dtype}
    return {**fields, **_server(engine)}


def add_draft_record(record: dict[str, Any], draft: DraftView, engine: Any) -> None:
    """Each token step gains `"draft"`: the proposal judged there (`{"proposed", "accepted",
    "p_target", "q_draft"}`; null where the token was the target's own, with no proposal to judge),
    and the record a summary of the draft's work, with the draft `engine` as replay loads it again."""
    token_steps = [step for step in record["steps"] if "turn" not in step]
    for step, mark in zip(token_steps, draft.marks):
        step["draft"] = None if mark is None else asdict(mark)
    record["draft"] = {
        "model": draft.model,
        "model_id": engine.model_id,
        "engine": engine.name,
        "dtype": engine.dtype,
        **_server(engine),
        "tokens": draft.tokens,
        "proposals_judged": draft.judged,
        "accepted": draft.accepted,
        "acceptance_rate": draft.acceptance,
        "target_passes": draft.passes,
        "tokens_per_target_pass": draft.tokens_per_pass,
    }


def beam_trace_record(search: BeamSearch) -> dict[str, Any]:
    """The search so far: per step the live beams and the finished hypotheses, then the best finished
    hypothesis as generate() would return it (none yet while the search runs and none has finished)."""
    engine, snapshot = search.engine, search.snapshot()
    best = snapshot.best
    steps = [
        {"beams": [_beam_record(b) for b in beams], "finished": [_beam_record(b) for b in finished]}
        for beams, finished in search.steps_so_far()
    ]
    return {
        **engine_fields(engine),
        "strategy": search.strategy.generation_kwargs(),
        "max_new_tokens": search.max_new_tokens,
        "prompt": snapshot.prefix,
        "prompt_ids": search.prefix_ids,
        "steps": steps,
        "generated_ids": list(best.token_ids) if best else [],
        "generated_text": best.text if best else "",
        "sequence_logprob": best.logprob if best else None,
        "sequence_score": best.penalised if best else None,
        "finished": snapshot.ended,
    }


def _beam_record(beam: Beam) -> dict[str, Any]:
    record = {"text": beam.text, "token_ids": list(beam.token_ids), "logprob": beam.logprob, "score": beam.score}
    return {**record, "penalised_score": beam.penalised, "forced": beam.forced}


def _processors_record(report: ProcessorReport | None) -> dict[str, Any]:
    """Under a reshaping strategy: each processor in turn, with the candidates' probabilities (in the
    order of `candidates`) before and after it, and which it removed or changed."""
    if report is None:
        return {}
    return {
        "processors": [
            {
                "name": effect.name,
                "probs_before": list(effect.before),
                "probs_after": list(effect.after),
                "removed": list(effect.removed),
                "changed": list(effect.changed),
                "removed_in_all": effect.removed_in_all,
                "mass_removed": effect.mass_removed,
                "kept": effect.kept,
                "kept_mass": effect.kept_mass,
                **({"by": effect.by} if effect.by else {}),
            }
            for effect in report.effects
        ]
    }


def _steering(engine: Any) -> dict[str, Any]:
    """The steering the engine ran under, so that replay can steer it alike."""
    steering = getattr(engine, "steering", None)
    return {"steering": steering.record()} if steering is not None else {}


def _server(engine: Any) -> dict[str, str]:
    """A served model's address, so that replay can ask the same server."""
    url = getattr(engine, "url", None)
    return {"url": url} if isinstance(url, str) else {}


def _message_record(message: Message) -> dict[str, str]:
    return {"role": message.role, "content": message.content}


def _candidate_record(candidate: Candidate) -> dict[str, Any]:
    record: dict[str, Any] = {
        "token_id": candidate.token_id,
        "text": candidate.text,
        "prob": candidate.prob,
        "logprob": candidate.logprob,
    }
    if candidate.special:
        record.update(special=True, ends=candidate.ends)  # a control token, not text that reads like one
    if candidate.processed_prob is not None:
        record.update(processed_prob=candidate.processed_prob, removed=candidate.removed)
    if candidate.server_prob is not None:
        record.update(server_prob=candidate.server_prob)  # after the server's own chain
    return record


def _chosen_record(token: PathToken) -> dict[str, Any]:
    record = {
        "token_id": token.token_id,
        "text": token.text,
        "prob": token.prob,
        "logprob": token.logprob,
        "rank": token.rank,  # null: beyond the top N an engine returned
        "forced": token.forced,
    }
    if token.processed_prob is not None:
        record["processed_prob"] = token.processed_prob
    if token.special:
        record["special"] = True
    return record


# --- formats -------------------------------------------------------------------------------------


def format_trace(record: dict[str, Any], fmt: str) -> str:
    if fmt == "json":
        return terminal_safe_json(record)
    header, rows, long_column = _table_cells(record, numbers=fmt == "csv")
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerows([header, *rows])
        return out.getvalue().rstrip("\n")
    if fmt == "markdown":
        return markdown_table(header, rows)
    return aligned_table(header, [[_tail(cell) if i == long_column else cell for i, cell in enumerate(row)] for row in rows])


def _table_cells(record: dict[str, Any], numbers: bool = False) -> tuple[list[str], list[list[str]], int]:
    """Header, rows, and which column holds text long enough to cut in an aligned table. Each step
    says what was chosen, whether a person forced it and its probability (`numbers`: as plain
    numbers, for a spreadsheet); the chosen candidate is marked with a * among the choices."""
    if "sequence_score" in record:
        return _beam_table_cells(record)
    width = max([len(step.get("candidates", ())) for step in record["steps"]], default=record["choices"])
    header = ["Input", "Chosen", "Prob", "Forced"] + [f"Choice {i}" for i in range(width)]
    rows = []
    for step in record["steps"]:
        if "turn" in step:  # a chat's next message
            message = step["turn"]["messages"][-1]
            rows.append([one_line(f"▸ {message['role']}: {message['content']}")] + [""] * (width + 3))
            continue
        chosen = step["chosen"]
        cells = [
            f"{'*' if c['token_id'] == chosen['token_id'] else ''}{one_line(c['text'])} ({100 * c['prob']:.2f}%)"
            for c in step["candidates"]
        ]
        prob = repr(chosen["prob"]) if numbers else f"{100 * chosen['prob']:.2f}%"
        forced = str(chosen["forced"]).lower() if numbers else "forced" if chosen["forced"] else ""
        rows.append([one_line(step["input_text"]), one_line(chosen["text"]), prob, forced, *cells, *[""] * (width - len(cells))])
    return header, rows, 0


def _beam_table_cells(record: dict[str, Any]) -> tuple[list[str], list[list[str]], int]:
    """One row per live beam per step, best first; then the finished hypotheses, the winner first."""
    header = ["Step", "Beam", "Continuation", "logprob", "score", "penalised"]

    def row(step: str, rank: str, beam: dict[str, Any]) -> list[str]:
        numbers = (beam["logprob"], beam["score"], beam["penalised_score"])
        return [step, rank, one_line(beam["text"]), *(f"{number:.3f}" for number in numbers)]

    rows = [
        row(str(index), str(rank), beam)
        for index, step in enumerate(record["steps"], 1)
        for rank, beam in enumerate(step["beams"])
    ]
    final = record["steps"][-1]["finished"] if record["steps"] else []
    rows += [row("finished", "best" if rank == 0 else str(rank), beam) for rank, beam in enumerate(final)]
    return header, rows, 2


def _tail(text: str) -> str:
    return text if len(text) <= INPUT_WIDTH else "…" + text[-(INPUT_WIDTH - 1) :]


def aligned_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(row) for row in rows)])


def terminal_safe_json(record: dict[str, Any]) -> str:
    """The record as JSON, a line a field, and a line an item where a field holds records (a trace's
    steps, a comparison's rows): each line in json's compact form, which its C encoder writes (an
    indented dump runs the pure-Python encoder, which took milliseconds a step and a copy of every
    value). Non-ASCII text stays readable; what json leaves raw and a terminal must not see (DEL, C1
    controls, bidi overrides, lone surrogates) is written as a \\u escape, the same text to a JSON reader."""
    return "".join(json_chunks(record))


def json_chunks(record: dict[str, Any]) -> Iterator[str]:
    """`terminal_safe_json`'s text in pieces of a line or so, for writing as they come: a field that
    holds an iterator of records (a trace's steps as written) is read an item at a time."""
    if not record:
        yield "{}"
        return
    yield "{\n"
    for index, (key, value) in enumerate(record.items()):
        if index:
            yield ",\n"
        for chunk in _field_chunks(key, value):
            yield escape_unshown(chunk, json_escaped, also="\u2028\u2029")
    yield "\n}"


def _field_chunks(key: str, value: Any) -> Iterator[str]:
    name = f"  {json.dumps(key)}: "
    records = isinstance(value, Iterator) or (isinstance(value, list) and value and all(isinstance(i, dict) for i in value))
    if not records:
        yield name + json.dumps(value, ensure_ascii=False)
        return
    items = iter(value)
    first = next(items, None)
    if first is None:
        yield name + "[]"
        return
    yield f"{name}[\n    {json.dumps(first, ensure_ascii=False)}"
    for item in items:
        yield f",\n    {json.dumps(item, ensure_ascii=False)}"
    yield "\n  ]"
