"""Decoding strategy settings, named and validated as transformers' `GenerationConfig` names them.

Pure Python (no torch), so the command line can check options before anything heavy loads.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from types import SimpleNamespace
from typing import Any

from decoding.core.errors import SettingsError
from decoding.core.json_text import JsonError, parse_json
from decoding.core.samplers import (
    CHAIN_PRESETS,
    MAX_COUNT,
    SAMPLERS,
    Sampler,
    in_order,
    is_number,
    is_whole,
    parameters_of,
    stage_named,
    stages,
)
from decoding.core.tokens import one_line

STRATEGY_KINDS = ("greedy", "sample", "beam")
EARLY_STOPPING = (False, True, "never")  # GenerationConfig.early_stopping
MAX_BEAMS = 64
# Candidates shown per step: each is a row of the panel, made and painted at every step (at 1,000 a
# step took 0.25 s more, at the whole vocabulary 15 s); 100 fill two and a half screens.
MAX_CHOICES = 100


def choices_problem(choices: Any) -> str | None:
    """What is wrong with a number of candidates to show, without the option's name; None if nothing."""
    if is_whole(choices) and 1 <= choices <= MAX_CHOICES:
        return None
    return f"must be at least 1 and at most {MAX_CHOICES}"


CONSTRAINT_KINDS = ("json_schema", "json", "regex", "grammar")


@dataclass(frozen=True)
class Constraint:
    """What the output must follow: a JSON schema (its text), any JSON value, a regular expression, or
    an EBNF/GBNF grammar (its text). Compiled against the model's tokenizer by decoding.core.grammar."""

    kind: str
    source: str = ""

    @property
    def name(self) -> str:
        """What kind of constraint it is, in words: 'JSON schema', 'JSON', 'regex', 'grammar'."""
        return {"json_schema": "JSON schema", "json": "JSON", "regex": "regex", "grammar": "grammar"}.get(self.kind, self.kind)

    def describe(self) -> str:
        if self.kind == "json":
            return "JSON"
        return f"{self.name} {one_line(self.source)[:24]}"


# Beyond this a constraint's text is refused before anything reads it: the meta-schema check alone
# takes ~2 s here on 256 KB of schema properties (~24 s on 2.3 MB), and xgrammar's compile time grows
# faster than the text (see decoding.core.grammar.COMPILE_SECONDS, the deadline for what fits).
MAX_CONSTRAINT_CHARS = 256_000
# Data, not subschemas: a `$ref` key inside them is a value like any other.
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})
# Objects whose keys are names (a property may be called "$ref") and whose values are subschemas.
_NAMED_SUBSCHEMAS = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies"})
_UNUSABLE_CHARACTER = re.compile("[\0\ud800-\udfff]")  # xgrammar takes UTF-8 text without NULs


def check_constraint(constraint: Constraint) -> None:
    """What can be told of a constraint without a model: its size, its text, and a JSON schema's
    validity (one line if not). Compiling it for a vocabulary is decoding.core.grammar's."""
    name = constraint.name
    if len(constraint.source) > MAX_CONSTRAINT_CHARS:
        raise SettingsError(
            f"The {name} is {len(constraint.source):,} characters long; tokenstep compiles at most "
            f"{MAX_CONSTRAINT_CHARS:,} (a grammar this large would take minutes to compile)."
        )
    if _UNUSABLE_CHARACTER.search(constraint.source):
        raise SettingsError(f"The {name} holds a NUL character or a lone surrogate, which no grammar can use.")
    if constraint.kind == "json_schema":
        check_schema(constraint.source)


def check_schema(source: str) -> None:
    """A JSON schema's text: valid JSON, a valid schema by the JSON Schema meta-schema, and every
    `$ref` inside the schema itself (one line if not)."""
    import jsonschema  # type: ignore[import-untyped]

    try:
        schema = parse_json(source)
    except JsonError as error:  # "not valid JSON (...)" or "its JSON is nested more than ..."
        said = str(error)
        said = said.removeprefix("its JSON ") if said.startswith("its JSON ") else f"is {said}"
        raise SettingsError(f"The JSON schema {said}.") from None
    if not isinstance(schema, (dict, bool)):
        raise SettingsError("The JSON schema must be a JSON object.")
    _check_nodes(schema)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as error:
        raise SettingsError(f"The JSON schema is not a valid schema: {one_line(error.message)[:200]}.") from None


def _check_nodes(schema: Any) -> None:
    """Only references into the schema itself ('#' or '#/...'): tokenstep never fetches a schema from
    a server or reads one from a file, and xgrammar would silently let anything through in its place.
    And only finite numbers (JSON text may spell 1e400, NaN or Infinity; xgrammar cannot take them)."""
    pending = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, float) and not math.isfinite(node):
            raise SettingsError(f"The JSON schema holds the number {node!r}, which is not finite: give a finite one.")
        if isinstance(node, list):
            pending.extend(node)
        elif isinstance(node, dict):
            for keyword in ("$ref", "$dynamicRef", "$recursiveRef"):
                if keyword in node:
                    _check_reference(keyword, node[keyword])
            for key, value in node.items():
                if key in _NAMED_SUBSCHEMAS and isinstance(value, dict):
                    pending.extend(value.values())
                elif key not in _DATA_KEYWORDS:
                    pending.append(value)
                else:
                    pending.extend(_numbers_in(value))


def _numbers_in(value: Any) -> list[float]:
    """The floats anywhere in a data value (a `const`, an `enum`), which are not walked as schemas."""
    found, pending = [], [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float):
            found.append(item)
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, dict):
            pending.extend(item.values())
    return found


def _check_reference(keyword: str, target: Any) -> None:
    if keyword != "$ref":
        raise SettingsError(f"The JSON schema cannot be used: {keyword} is not supported (use $ref to '#/...').")
    if not isinstance(target, str) or not (target == "#" or target.startswith("#/")):
        shown = one_line(target if isinstance(target, str) else repr(target))[:80]
        raise SettingsError(
            f"The JSON schema cannot be used: its $ref {shown!r} points outside the schema; only references "
            "inside it ('#' or '#/...') are followed, never a remote or file schema."
        )


@dataclass(frozen=True, init=False)
class Strategy:
    """How the next token is chosen. Defaults switch every sampler off (plain greedy).

    Each sampler of decoding.core.samplers is a setting too, read as an attribute (`strategy.top_k`) and
    given by name (`Strategy(kind="sample", top_k=50)`); its "off" value is `GenerationConfig`'s.
    `num_beams`, `length_penalty` and `early_stopping` apply to beam search only; `suppress_tokens`
    lists ids never chosen (`tokenstep compare` uses it to keep end-of-sequence out, so every
    strategy writes exactly N tokens).
    """

    kind: str = "greedy"
    seed: int = 0
    num_beams: int = 5
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    suppress_tokens: tuple[int, ...] = ()
    constraint: Constraint | None = None  # a grammar the output must follow (a processor of its own)
    samplers: tuple[str, ...] = ()  # the chain's order by stage name (llama.cpp's); () is generate()'s order
    on: tuple[tuple[str, Any], ...] = ()  # the samplers not at their "off" value, (name, value) in the registry's order

    def __init__(self, on: tuple[tuple[str, Any], ...] = (), **settings: Any) -> None:
        values = dict(on)
        for field in fields(self):
            if field.name != "on":
                object.__setattr__(self, field.name, settings.pop(field.name, field.default))
        unknown = [name for name in settings if name not in SAMPLERS]
        if unknown:
            raise SettingsError(f"no setting is called {', '.join(map(repr, unknown))}: known are {', '.join(setting_names())}")
        values.update((name, _as_tuple(value)) for name, value in settings.items())
        on = tuple((s.name, values[s.name]) for s in SAMPLERS.values() if s.name in values and s.is_on(values[s.name]))
        object.__setattr__(self, "on", on)
        # lists as JSON writes them; the chain's order also as typed ("dry;min_p")
        object.__setattr__(self, "suppress_tokens", _as_tuple(self.suppress_tokens))
        order = self.samplers
        object.__setattr__(self, "samplers", chain_order(order) if isinstance(order, str) else _as_tuple(order))
        if isinstance(self.constraint, dict):  # as a session file writes it
            known = {"kind", "source"}
            if set(self.constraint) <= known and all(isinstance(v, str) for v in self.constraint.values()):
                object.__setattr__(self, "constraint", Constraint(**self.constraint))
        problems = field_problems(self)
        if problems:
            raise SettingsError(problems_text(self, problems))

    def __getattr__(self, name: str) -> Any:
        """A sampler's value (its "off" value when it is not switched on)."""
        sampler = SAMPLERS.get(name)
        if sampler is None or name.startswith("__"):
            raise AttributeError(name)
        return next((value for on, value in self.__dict__.get("on", ()) if on == name), sampler.off)

    @property
    def do_sample(self) -> bool:
        return self.kind == "sample"

    @property
    def is_beam(self) -> bool:
        return self.kind == "beam"

    @property
    def reshapes(self) -> bool:
        """True when some processor changes the model's distribution before the choice."""
        return bool(self.active_processors()) or self.constraint is not None

    def stage_is_on(self, stage: Sampler) -> bool:
        """A stage runs when its own setting or a parameter that switches it on is not at "off"."""
        return stage.is_on(getattr(self, stage.name)) or any(
            parameter.switches_on and parameter.is_on(getattr(self, parameter.name)) for parameter in parameters_of(stage)
        )

    def _applied(self) -> list[Sampler]:
        """The stages switched on that apply, in the chain's order: `samplers` as given, else generate()'s
        (processors, then the warpers); a warper applies only when sampling."""
        if self.samplers:
            order = [stage for stage in map(stage_named, self.samplers) if stage is not None]
        else:
            order = [*in_order(sampling_only=False), *in_order(sampling_only=True)]
        return [s for s in order if not s.part_of and self.stage_is_on(s) and (self.do_sample or not s.sampling_only)]

    def active_processors(self) -> list[str]:
        """Names of the processors this strategy applies, in order: generate()'s, or the chain given.
        suppress_tokens goes where generate() puts it (after its processors), or first in a chain given."""
        return list(_active_processors(self))

    def _active_processors(self) -> tuple[str, ...]:
        applied = self._applied()
        names = [sampler.name for sampler in applied]
        if self.suppress_tokens:
            at = 0 if self.samplers else sum(not sampler.sampling_only for sampler in applied)
            names.insert(at, "suppress_tokens")
        return tuple(names)

    def unlisted_stages(self) -> list[str]:
        """Stages switched on that a chain given (`samplers`) leaves out (the chain must name each)."""
        if not self.samplers:
            return []
        listed = {stage.name for stage in map(stage_named, self.samplers) if stage is not None}
        return [s.chain_name for s in stages() if self.stage_is_on(s) and s.name not in listed]

    def generation_kwargs(self) -> dict[str, Any]:
        """The `generate()` / `GenerationConfig` arguments that give this strategy: every processor's
        value and the warpers' when sampling; beside them, llama.cpp's samplers that are on and a chain
        order given (generate() takes neither: a record holds them, replay reads them)."""
        kwargs: dict[str, Any] = {"do_sample": self.do_sample}
        applies = in_order(sampling_only=False) + (in_order(sampling_only=True) if self.do_sample else [])
        kwargs.update((s.name, getattr(self, s.name)) for s in applies if s.in_generation_config)
        kwargs.update(
            (s.name, _as_list(getattr(self, s.name)))
            for s in applies
            if not s.in_generation_config and s.is_on(getattr(self, s.name))
        )
        if self.samplers:
            kwargs["samplers"] = list(self.samplers)
        if self.is_beam:
            kwargs.update(num_beams=self.num_beams, length_penalty=self.length_penalty, early_stopping=self.early_stopping)
        if self.suppress_tokens:
            kwargs.update(suppress_tokens=list(self.suppress_tokens))
        return kwargs

    def as_dict(self) -> dict[str, Any]:
        """Every setting by name (each sampler's too), as session files write them."""
        settings = {field.name: getattr(self, field.name) for field in fields(self) if field.name != "on"}
        constraint = asdict(self.constraint) if isinstance(self.constraint, Constraint) else self.constraint
        return {
            "kind": settings.pop("kind"),
            **{name: _as_list(getattr(self, name)) for name in SAMPLERS},
            **settings,
            "samplers": list(self.samplers),
            "constraint": constraint,
        }

    def with_changes(self, **changes: Any) -> Strategy:
        """A copy with some settings changed; raises SettingsError (and changes nothing) if invalid."""
        return replace(self, **changes)

    def describe(self) -> str:
        """A short label for a status line, e.g. 'sample T=0.7 top-k=50 seed=0'."""
        parts = [self.kind]
        if self.is_beam:
            parts.append(f"B={self.num_beams}")
            if self.length_penalty != 1.0:
                parts.append(f"lp={self.length_penalty:g}")
            if self.early_stopping is not False:
                parts.append(f"early={self.early_stopping}")
        shown = [*(in_order(sampling_only=True) if self.do_sample else []), *in_order(sampling_only=False)]
        parts.extend(s.tag(getattr(self, s.name)) for s in shown if s.is_on(getattr(self, s.name)))
        if self.samplers:
            parts.append("chain " + ">".join(SAMPLERS[name].chain_name for name in self.active_processors() if name in SAMPLERS))
        if self.do_sample:
            parts.append(f"seed={self.seed}")
        if self.constraint is not None:
            parts.append(f"· {self.constraint.describe()}")
        return " ".join(parts)


@functools.lru_cache(maxsize=64)
def _active_processors(strategy: Strategy) -> tuple[str, ...]:
    """Worked out once per strategy: every step asks (it reads the whole registry)."""
    return strategy._active_processors()


def setting_names() -> list[str]:
    """Every setting of a strategy, as `Strategy(...)` takes them and `as_dict` writes them."""
    return ["kind", *SAMPLERS, *(field.name for field in fields(Strategy) if field.name not in ("kind", "on"))]


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def chain_order(text: str) -> tuple[str, ...]:
    """`--samplers`: stage names separated by ';' (llama.cpp's), or a preset: llama.cpp, default."""
    preset = CHAIN_PRESETS.get(text.strip().lower())
    if preset is not None:
        return preset
    return tuple(name.strip() for name in text.split(";") if name.strip())


def chain_problem(s: Any) -> str | None:
    """What is wrong with a chain order given, without its name; None if nothing."""
    order = getattr(s, "samplers", ())
    order = chain_order(order) if isinstance(order, str) else _as_tuple(order)
    if not isinstance(order, tuple) or not all(isinstance(name, str) for name in order):
        return "must be stage names separated by ';'"
    names = ", ".join(stage.chain_name for stage in stages())
    unknown = [name for name in order if stage_named(name) is None]
    if unknown:
        return f"must name stages among {names} (or be llama.cpp or default); {unknown[0]!r} is none"
    chosen = [stage_named(name).name for name in order]  # type: ignore[union-attr]
    if len(set(chosen)) < len(chosen):
        return "must name each stage once"
    if isinstance(s, Strategy):
        missing = s.unlisted_stages()
        if missing:
            return f"must name every stage switched on: {', '.join(missing)} is on but not listed"
    return None


# Where each number is safe: beyond these the float32 arithmetic overflows (a length penalty of 1100
# overflows `length ** penalty`).
LENGTH_PENALTY_RANGE = (-10.0, 10.0)
MAX_SEED = 2**64 - 1  # what torch.manual_seed takes


def _between(value: Any, low: float, high: float) -> bool:
    return is_number(value) and low <= value <= high


def field_problems(s: Strategy | Any) -> dict[str, str]:
    """What is wrong with each setting of `s` (any object with Strategy's settings as attributes), by name.

    Each text says what the setting must be, without its name: the command line puts the option's
    name before it, the settings screen shows it beside the field.
    """
    l_low, l_high = LENGTH_PENALTY_RANGE
    chain_problem_text = chain_problem(s)
    checks = {
        "kind": (s.kind in STRATEGY_KINDS, f"must be one of {', '.join(STRATEGY_KINDS)}"),
        **{
            sampler.name: (sampler.valid(_as_tuple(getattr(s, sampler.name, sampler.off))), sampler.requirement)
            for sampler in SAMPLERS.values()
        },
        "seed": (is_whole(s.seed) and 0 <= s.seed <= MAX_SEED, f"must be a whole number from 0 to {MAX_SEED}"),
        "num_beams": (
            is_whole(s.num_beams) and 2 <= s.num_beams <= MAX_BEAMS,
            f"must be a whole number from 2 to {MAX_BEAMS}; one beam is greedy search",
        ),
        "length_penalty": (
            _between(s.length_penalty, l_low, l_high),
            f"must be a number from {l_low:g} to {l_high:g}; 1 divides by the length, 0 ignores it",
        ),
        "early_stopping": (
            s.early_stopping is True or s.early_stopping is False or s.early_stopping == "never",
            "must be false, true or never",
        ),
        "suppress_tokens": (
            isinstance(s.suppress_tokens, tuple) and all(is_whole(t) and 0 <= t <= MAX_COUNT for t in s.suppress_tokens),
            "must be token ids",
        ),
        "samplers": (chain_problem_text is None, chain_problem_text or ""),
        "constraint": (
            s.constraint is None
            or (
                isinstance(s.constraint, Constraint)
                and s.constraint.kind in CONSTRAINT_KINDS
                and isinstance(s.constraint.source, str)
            ),
            f"must be one of {', '.join(CONSTRAINT_KINDS)} with its text",
        ),
    }
    return {name: requirement for name, (ok, requirement) in checks.items() if not ok}


def _setting_name(field: str) -> str:
    return "strategy" if field == "kind" else field


def problems_text(s: Any, problems: dict[str, str], name_of: Callable[[str], str] = _setting_name) -> str:
    """One line naming each faulty setting (as `name_of` spells it), what it must be, and what it was."""
    return "; ".join(f"{name_of(name)} {requirement} (got {getattr(s, name)!r})" for name, requirement in problems.items())


def option_name(field: str) -> str:
    """The command-line option for a setting: top_k -> --top-k (kind -> --strategy)."""
    return "--strategy" if field == "kind" else "--" + field.replace("_", "-")


def strategy_from_options(**values: Any) -> Strategy:
    """A Strategy from command-line values; a refusal names the options as they were typed."""
    if isinstance(values.get("samplers"), str):
        values = {**values, "samplers": chain_order(values["samplers"])}
    probe = SimpleNamespace(**{name: _as_tuple(value) for name, value in {**Strategy().as_dict(), **values}.items()})
    problems = field_problems(probe)
    if problems:
        raise SettingsError(problems_text(probe, problems, option_name))
    return Strategy(**values)


# --- strategies written on one line: `tokenstep compare --strategies` ------------------------------

CHAPTER_STRATEGIES = (
    "greedy,beam:num_beams=5,beam:num_beams=5:no_repeat_ngram_size=2,sample:temperature=0.5,"
    "sample:temperature=2.0,sample:top_k=50,sample:top_p=0.9,sample:top_k=50:top_p=0.9"
)


def parse_strategies(text: str, **common: Any) -> list[Strategy]:
    """'greedy,beam:num_beams=3,sample:temperature=0.7:top_k=20' -> three Strategies (each with `common`)."""
    specs = [spec.strip() for spec in text.split(",") if spec.strip()]
    if not specs:
        raise SettingsError("no strategies given: write them like greedy,beam:num_beams=3,sample:temperature=0.7")
    return [_parse_strategy(spec, common) for spec in specs]


def _parse_strategy(spec: str, common: dict[str, Any]) -> Strategy:
    kind, *pairs = spec.split(":")
    settings: dict[str, Any] = {**common, "kind": kind}
    known = set(setting_names()) - {"kind", "suppress_tokens"}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or name not in known:
            raise SettingsError(
                f"{spec!r}: write settings as name=value, with a name among {', '.join(sorted(known))} (got {pair!r})"
            )
        settings[name] = _setting_value(value)
    try:
        return Strategy(**settings)
    except SettingsError as error:
        raise SettingsError(f"{spec!r}: {error}") from None


def _setting_value(text: str) -> Any:
    """Numbers as numbers, true/false as booleans, anything else as written (early_stopping=never)."""
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text.strip()
