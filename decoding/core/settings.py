"""Decoding strategy settings, named and validated as transformers' `GenerationConfig` names them.

Pure Python (no torch), so the command line can check options before anything heavy loads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from types import SimpleNamespace
from typing import Any

from decoding.core.errors import SettingsError
from decoding.core.json_text import JsonError, parse_json
from decoding.core.tokens import one_line

STRATEGY_KINDS = ("greedy", "sample", "beam")
EARLY_STOPPING = (False, True, "never")  # GenerationConfig.early_stopping
MAX_BEAMS = 64
# Candidates shown per step: each is a row of the panel, made and painted at every step (at 1,000 a
# step took 0.25 s more, at the whole vocabulary 15 s); 100 fill two and a half screens.
MAX_CHOICES = 100


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))  # (an int of 400 digits overflows isfinite)


def choices_problem(choices: Any) -> str | None:
    """What is wrong with a number of candidates to show, without the option's name; None if nothing."""
    if _is_int(choices) and 1 <= choices <= MAX_CHOICES:
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


@dataclass(frozen=True)
class Strategy:
    """How the next token is chosen. Defaults switch every processor off (plain greedy).

    `top_k=0`, `top_p=1.0`, `temperature=1.0`, `repetition_penalty=1.0` and `no_repeat_ngram_size=0`
    mean "off", exactly as in `GenerationConfig`. `num_beams`, `length_penalty` and `early_stopping`
    apply to beam search only; `suppress_tokens` lists ids never chosen (`tokenstep compare` uses it
    to keep end-of-sequence out, so every strategy writes exactly N tokens).
    """

    kind: str = "greedy"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    seed: int = 0
    num_beams: int = 5
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    suppress_tokens: tuple[int, ...] = ()
    constraint: Constraint | None = None  # a grammar the output must follow (a processor of its own)

    def __post_init__(self) -> None:
        if isinstance(self.suppress_tokens, list):  # as JSON and generate() write it
            object.__setattr__(self, "suppress_tokens", tuple(self.suppress_tokens))
        if isinstance(self.constraint, dict):  # as a session file writes it
            known = {"kind", "source"}
            if set(self.constraint) <= known and all(isinstance(v, str) for v in self.constraint.values()):
                object.__setattr__(self, "constraint", Constraint(**self.constraint))
        problems = field_problems(self)
        if problems:
            raise SettingsError(problems_text(self, problems))

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

    def active_processors(self) -> list[str]:
        """Names of the processors this strategy applies, in the order `generate()` applies them."""
        active = []
        if self.repetition_penalty != 1.0:
            active.append("repetition_penalty")
        if self.no_repeat_ngram_size > 0:
            active.append("no_repeat_ngram_size")
        if self.suppress_tokens:
            active.append("suppress_tokens")
        if self.do_sample:
            if self.temperature != 1.0:
                active.append("temperature")
            if self.top_k > 0:
                active.append("top_k")
            if self.top_p < 1.0:
                active.append("top_p")
        return active

    def generation_kwargs(self) -> dict[str, Any]:
        """The `generate()` / `GenerationConfig` arguments that give this strategy."""
        kwargs: dict[str, Any] = {
            "do_sample": self.do_sample,
            "repetition_penalty": self.repetition_penalty,
            "no_repeat_ngram_size": self.no_repeat_ngram_size,
        }
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        if self.is_beam:
            kwargs.update(num_beams=self.num_beams, length_penalty=self.length_penalty, early_stopping=self.early_stopping)
        if self.suppress_tokens:
            kwargs.update(suppress_tokens=list(self.suppress_tokens))
        return kwargs

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

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
        if self.do_sample:
            if self.temperature != 1.0:
                parts.append(f"T={self.temperature:g}")
            if self.top_k:
                parts.append(f"top-k={self.top_k}")
            if self.top_p < 1.0:
                parts.append(f"top-p={self.top_p:g}")
        if self.repetition_penalty != 1.0:
            parts.append(f"rep={self.repetition_penalty:g}")
        if self.no_repeat_ngram_size:
            parts.append(f"no-repeat-{self.no_repeat_ngram_size}gram")
        if self.do_sample:
            parts.append(f"seed={self.seed}")
        if self.constraint is not None:
            parts.append(f"· {self.constraint.describe()}")
        return " ".join(parts)


# Where each number is safe: beyond these the float32 arithmetic of the processors overflows (a
# temperature of 1e-40 turns logits into inf, a length penalty of 1100 overflows `length ** penalty`).
TEMPERATURE_RANGE = (0.01, 100.0)
PENALTY_RANGE = (0.01, 100.0)
LENGTH_PENALTY_RANGE = (-10.0, 10.0)
MAX_SEED = 2**64 - 1  # what torch.manual_seed takes
MAX_COUNT = 2**31 - 1  # top_k, n-gram sizes: larger would mean nothing


def _between(value: Any, low: float, high: float) -> bool:
    return _is_number(value) and low <= value <= high


def field_problems(s: Strategy | Any) -> dict[str, str]:
    """What is wrong with each setting of `s` (any object with Strategy's fields), by field name.

    Each text says what the field must be, without its name: the command line puts the option's
    name before it, the settings screen shows it beside the field.
    """
    t_low, t_high = TEMPERATURE_RANGE
    p_low, p_high = PENALTY_RANGE
    l_low, l_high = LENGTH_PENALTY_RANGE
    checks = {
        "kind": (s.kind in STRATEGY_KINDS, f"must be one of {', '.join(STRATEGY_KINDS)}"),
        "temperature": (_between(s.temperature, t_low, t_high), f"must be a number from {t_low:g} to {t_high:g}; 1 is off"),
        "top_k": (_is_int(s.top_k) and 0 <= s.top_k <= MAX_COUNT, "must be a whole number, 0 or more; 0 is off"),
        "top_p": (_is_number(s.top_p) and 0 < s.top_p <= 1, "must be greater than 0 and at most 1; 1 is off"),
        "repetition_penalty": (
            _between(s.repetition_penalty, p_low, p_high),
            f"must be a number from {p_low:g} to {p_high:g}; 1 is off",
        ),
        "no_repeat_ngram_size": (
            _is_int(s.no_repeat_ngram_size) and 0 <= s.no_repeat_ngram_size <= MAX_COUNT,
            "must be a whole number, 0 or more; 0 is off",
        ),
        "seed": (_is_int(s.seed) and 0 <= s.seed <= MAX_SEED, f"must be a whole number from 0 to {MAX_SEED}"),
        "num_beams": (
            _is_int(s.num_beams) and 2 <= s.num_beams <= MAX_BEAMS,
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
            isinstance(s.suppress_tokens, tuple) and all(_is_int(t) and 0 <= t <= MAX_COUNT for t in s.suppress_tokens),
            "must be token ids",
        ),
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
    probe = SimpleNamespace(**{**asdict(Strategy()), **values})
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
    known = set(Strategy.__dataclass_fields__) - {"kind", "suppress_tokens"}
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
