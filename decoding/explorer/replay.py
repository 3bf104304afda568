"""`tokenstep replay`: run a saved trace again on its model and strategy, and say step by step whether
the same candidates and choices come out (probabilities compared to a tolerance).

This is how a result is checked on another machine or after an upgrade. A step whose choice differs
is put back on the recorded path (the recorded token is forced), so later steps are still compared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from decoding.core.chat import Turn, messages_of, next_turn
from decoding.core.engine import Engine
from decoding.core.errors import SessionError, SettingsError
from decoding.core.prompt import chat_prompt, plain_prompt, recorded_prompt
from decoding.core.schema import LOG_PROBABILITY, PROBABILITY, TOKEN_ID, Items, ShapeError, Whole, check
from decoding.core.settings import MAX_CHOICES, Strategy, setting_names
from decoding.core.steering import Steering
from decoding.engines.registry import DEFAULT_ENGINE, ENGINES, LoadOptions, recorded_model, served_engine

if TYPE_CHECKING:
    from decoding.explorer.explorer import Explorer

STRATEGY_KWARGS = {"do_sample?": bool, "num_beams?": Whole(1)}  # the rest: checked as a Strategy (`strategy_of`)
_COMMON = {
    "model": (str, None),
    "engine": str,
    "dtype?": (str, None),
    "url?": str,
    "strategy": STRATEGY_KWARGS,
    "seed?": Whole(0),
    "prompt": str,
    "prompt_ids": [TOKEN_ID],
    "prompt_form?": str,
    "messages?": [{"role": str, "content": str}],
    "steering?": dict,  # checked by Steering.from_record
    "draft?": dict,  # checked by draft_of
}
DRAFT_SHAPE = {"model_id": (str, None), "engine": str, "dtype?": (str, None), "url?": str, "tokens": Whole(1, 16)}
TOKEN_STEP = {
    "candidates": Items({"token_id": TOKEN_ID, "prob": PROBABILITY, "text": str}, least=1),
    "chosen": {"token_id": TOKEN_ID, "forced": bool, "text": str},
    # where the strategy changed: the one this step (and those after it) was made under
    "strategy?": STRATEGY_KWARGS,
    "seed?": Whole(0),
}
TURN_STEP = {"turn": {"messages": Items({"role": str, "content": str}, least=1), "text": str, "ids": Items(TOKEN_ID, least=1)}}
PATH_TRACE_SHAPE = {
    **_COMMON,
    "choices?": Whole(1, MAX_CHOICES),
    "steps": [(TOKEN_STEP, TURN_STEP)],
}
BEAM_TRACE_SHAPE = {
    **_COMMON,
    "max_new_tokens": Whole(1),
    "finished": (str, None),
    "steps": [{"beams": [{"token_ids": [TOKEN_ID], "score": LOG_PROBABILITY}]}],  # none live once all have finished
}


def checked_trace(record: Any, name: str) -> dict[str, Any]:
    """A JSON trace (`tokenstep trace --format json`, or `e` in the app), checked in full before
    anything runs; SessionError naming the first thing wrong otherwise."""
    if not isinstance(record, dict):
        raise SessionError(f"{name} is not a tokenstep JSON trace (it holds {type(record).__name__}, not an object).")
    shape = BEAM_TRACE_SHAPE if "sequence_score" in record else PATH_TRACE_SHAPE
    try:
        check(record, shape, "trace")
    except ShapeError as error:
        raise SessionError(f"{name} is not a tokenstep JSON trace ({error}).") from None
    if not record["steps"]:
        raise SessionError(f"{name} holds no steps: there is nothing to replay.")
    if not record["prompt_ids"]:
        raise SessionError(f"{name} holds no prompt ids: there is nothing to replay from.")
    if "sequence_score" not in record:
        strategy_changes(record)  # each refused now, before a model loads
    steering_of(record)
    draft_of(record)
    return record


def steering_of(record: dict[str, Any]) -> Steering | None:
    """The steering a trace was made under (None: none); refused in one line if not one tokenstep wrote."""
    if "steering" not in record:
        return None
    try:
        return Steering.from_record(record["steering"])
    except SettingsError as error:
        raise SessionError(f"The trace's steering cannot be used: {error}") from None


def draft_of(record: dict[str, Any], device: str = "auto") -> tuple[LoadOptions, int] | None:
    """The draft a trace was made with, to load again (None: none); one line if not one tokenstep wrote."""
    if "draft" not in record:
        return None
    try:
        check(record["draft"], DRAFT_SHAPE, "the trace's draft")
    except ShapeError as error:
        raise SessionError(f"The trace's draft cannot be used: {error}") from None
    draft = record["draft"]
    options = recorded_model(draft["model_id"], draft["engine"], draft.get("dtype"), draft.get("url"))
    return LoadOptions(**options, device=device), draft["tokens"]


def check_fits(engine: Engine, record: dict[str, Any]) -> None:
    """What only the model a path trace is read on can judge, before any model work: every id it
    will be fed is in its vocabulary, and the whole path fits its context."""
    fed = [
        record["prompt_ids"],
        *(step["turn"]["ids"] if "turn" in step else [step["chosen"]["token_id"]] for step in record["steps"]),
    ]
    for number, ids in enumerate(fed):
        beyond = next((token_id for token_id in ids if token_id >= engine.vocab_size), None)
        if beyond is not None:
            where = "its prompt" if number == 0 else f"its step {number}"
            raise SessionError(
                f"The trace feeds token id {beyond} in {where}, beyond this model's vocabulary of {engine.vocab_size:,}."
            )
    length = sum(map(len, fed))
    if length > engine.context_limit:
        raise SessionError(
            f"The trace's path is {length:,} tokens long, and this model reads at most {engine.context_limit:,}: "
            "it cannot be followed here."
        )


@dataclass(frozen=True)
class StepCheck:
    step: int  # 1-based
    same_candidates: bool  # the same token ids, in the same order
    largest_difference: float | None  # of the probability of a candidate both lists have; None: none shared
    same_choice: bool
    note: str = ""

    def agrees(self, tolerance: float) -> bool:
        shared_agree = self.largest_difference is not None and self.largest_difference <= tolerance
        return self.same_candidates and self.same_choice and shared_agree


def load_options(record: dict[str, Any], **overrides: Any) -> LoadOptions:
    """The trace's own model, engine and dtype, unless overridden (an override of None keeps the trace's).
    Another engine takes none of the trace's own engine's settings: a server trace read by a local
    engine leaves the address out, a local trace read by a server (--url alone says so) its model;
    a model named alone after a server trace runs on the default engine."""
    options = recorded_model(record.get("model"), record.get("engine"), record.get("dtype"), record.get("url"))
    given = {name: value for name, value in overrides.items() if value is not None}
    engine = given.get("engine") or (served_engine() if "url" in given else None)
    if engine is None and "model" in given and ENGINES[options["engine"]].served:
        engine = DEFAULT_ENGINE
    if engine is not None and engine != options["engine"]:
        kept = () if ENGINES[engine].served else ("model", "dtype")
        options = {"engine": engine, **{name: options[name] for name in kept if name in options}}
    options.update(given)
    return LoadOptions(**options)


def strategy_of(record: dict[str, Any], what: str = "strategy") -> Strategy:
    """The Strategy a trace (or one of its steps) records: its `strategy` holds generate()'s
    arguments, beside it its `seed` and `constraint`."""
    kwargs = dict(record.get("strategy") or {})
    kind = "beam" if kwargs.get("num_beams", 1) > 1 else "sample" if kwargs.get("do_sample") else "greedy"
    known = set(setting_names()) - {"kind", "seed"}
    settings = {name: value for name, value in kwargs.items() if name in known}
    try:
        return Strategy(kind=kind, seed=record.get("seed", 0), constraint=record.get("constraint"), **settings)
    except SettingsError as error:
        raise SessionError(f"The trace's {what} is not valid here: {error}") from None


def strategy_changes(record: dict[str, Any]) -> dict[int, Strategy]:
    """Where a path trace's strategy changed (a switch in the app before `e`): by step number, the
    strategy that step and the ones after it were made under. A trace without such steps was made
    under its top-level strategy throughout."""
    changes = {}
    for number, step in enumerate(record["steps"], start=1):
        if "turn" in step or "strategy" not in step:
            continue
        strategy = strategy_of(step, f"step {number} strategy")
        if strategy.is_beam:
            raise SessionError(f"The trace's step {number} records beam search, which chooses no token of a single path.")
        changes[number] = strategy
    return changes


def prompt_difference(engine: Engine, record: dict[str, Any]) -> str | None:
    """Whether the recorded prompt ids are still what the prompt gives here (a tokenizer that changed
    would otherwise hide behind the recorded ids); None when they are."""
    if "sequence_score" in record:
        return None  # a beam trace's prompt is the text the search continued, not a prompt
    try:
        if record.get("prompt_form") == "chat":
            now = chat_prompt(engine, messages_of(record.get("messages", []), "the trace's messages")).ids
        else:
            now = plain_prompt(engine, record["prompt"]).ids
    except SessionError as error:
        return f"the prompt cannot be read here ({error}); replayed from the recorded ids"
    recorded = tuple(record["prompt_ids"])
    if now == recorded:
        return None
    return f"the prompt now gives other token ids ({len(now)} here, {len(recorded)} recorded); replayed from the recorded ids"


def replay_path(explorer: Explorer, record: dict[str, Any]) -> list[StepCheck]:
    """Compare a path trace (`tokenstep trace`, or `e` in the app) step by step, from the recorded
    prompt ids (so a tokenizer that changed shows as a difference, see `prompt_difference`), under
    the strategy each step was made under."""
    check_fits(explorer.engine, record)
    messages = messages_of(record.get("messages", []), "the trace's messages")
    form = record.get("prompt_form", "plain")
    explorer.new_prompt(recorded_prompt(explorer.engine, record["prompt_ids"], record["prompt"], form, messages))
    session = explorer.session
    changes = strategy_changes(record)
    checks = []
    for number, step in enumerate(record["steps"], start=1):
        if "turn" in step:
            checks.append(_replay_turn(explorer, number, step["turn"]))
            continue
        if number in changes:  # switched as it was when the step was made (a new seed restarts the sampler)
            explorer.apply_settings(changes[number], session.choices)
        panel = session.distribution
        if panel is None:
            checks.append(StepCheck(number, False, 0.0, False, f"the generation ended here ({session.finished})"))
            break
        ours = {c.token_id: c.prob for c in panel.candidates}
        theirs = {c["token_id"]: c["prob"] for c in step["candidates"]}
        same_ids = list(ours) == list(theirs)
        shared = set(ours) & set(theirs)
        difference = max((abs(ours[t] - theirs[t]) for t in shared), default=None)
        chosen = step["chosen"]
        if chosen["forced"]:
            explorer.force(chosen["token_id"])
            same_choice, note = True, "forced"
        else:
            explorer.step()
            made = session.path[-1]
            same_choice = made.token_id == chosen["token_id"]
            note = "" if same_choice else f"chose {made.text!r} ({made.token_id}), the trace {chosen['text']!r}"
            if not same_choice:  # back onto the recorded path, so the next steps still compare
                explorer.undo()
                explorer.force(chosen["token_id"])
        checks.append(StepCheck(number, same_ids, difference, same_choice, note))
    return checks


def _replay_turn(explorer: Explorer, number: int, recorded: dict[str, Any]) -> StepCheck:
    """A chat's later turn: fed as recorded; whether the template still frames it so is its check."""
    session = explorer.session
    message = messages_of(recorded["messages"], f"turn {number}'s message")[-1]  # the shape holds one or more
    turn = Turn(message, recorded["text"], tuple(recorded["ids"]))
    try:
        now: tuple[int, ...] | None = next_turn(explorer.engine, session.conversation(), session.ids, session.text, message).ids
    except SessionError:
        now = None
    session.add_turn(turn)
    same = now == turn.ids
    return StepCheck(number, same, 0.0, same, "turn" if same else "turn: the template now frames this message differently")


def replay_beam(explorer: Explorer, record: dict[str, Any]) -> list[StepCheck]:
    """Compare a beam trace: per step, the live beams (their tokens and scores). `explorer` runs the
    trace's beam strategy with its max_new_tokens."""
    from decoding.explorer.trace_run import TracePlan, run_trace

    prompt = recorded_prompt(explorer.engine, record["prompt_ids"], record["prompt"])
    # A trace exported while the search ran (`e` in the app) is replayed as far as it went.
    again = run_trace(explorer, TracePlan(prompt, record["max_new_tokens"] if record["finished"] else len(record["steps"])))
    checks = []
    for number, (ours, theirs) in enumerate(zip(again["steps"], record["steps"]), start=1):
        same = [b["token_ids"] for b in ours["beams"]] == [b["token_ids"] for b in theirs["beams"]]
        difference = max((abs(a["score"] - b["score"]) for a, b in zip(ours["beams"], theirs["beams"])), default=0.0)
        checks.append(StepCheck(number, same, difference, same, "" if same else "other beams"))
    if len(again["steps"]) != len(record["steps"]):
        checks.append(
            StepCheck(
                len(checks) + 1, False, 0.0, False, f"{len(again['steps'])} steps here, {len(record['steps'])} in the trace"
            )
        )
    return checks


def format_checks(
    checks: list[StepCheck], tolerance: float, score_name: str = "probability", prompt_note: str | None = None
) -> str:
    lines = [f"prompt: {prompt_note}"] if prompt_note else []
    lines.append(f"{'step':>4}  {'candidates':<10}  {'largest Δ ' + score_name:<24}  {'choice':<8}  note")
    for step in checks:
        largest = "none shared" if step.largest_difference is None else f"{step.largest_difference:.2e}"
        lines.append(
            f"{step.step:>4}  {'same' if step.same_candidates else 'DIFFER':<10}  {largest:<24}  "
            f"{'same' if step.same_choice else 'DIFFER':<8}  {step.note}"
        )
    failing = [step.step for step in checks if not step.agrees(tolerance)]
    verdict = (
        f"all {len(checks)} steps agree (tolerance {tolerance:g})"
        if not failing
        else f"{len(failing)} of {len(checks)} steps differ: {failing}"
    )
    if prompt_note:
        verdict += "; the prompt differs"
    if any(step.largest_difference is None for step in checks):
        verdict += "\n(to compare two models token for token, run `tokenstep diff TRACE.json --model M`)"
    return "\n".join([*lines, verdict])
