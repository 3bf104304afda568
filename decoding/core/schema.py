"""Checking the shape of JSON read from a file before anything uses it: one validator for every record.

A spec is written in plain Python values:
- a type (`int`, `float`, `str`, `bool`): a value of that type (`float` takes whole numbers too;
  neither number type takes a boolean), or `Whole(low, high)` / `Number(low, high)` for a range
  (a `Number` is finite unless a bound is an infinity: `Number(-math.inf, 0)` takes -inf too);
- `dict` / `list`: any object / any list (its reader checks it further);
- `None`: the value null; a tuple of specs: any one of them (`(str, None)`: a string or null);
- `[spec]`: a list whose every item fits spec; `Items(spec, least, most)`: with that many items;
- `{"key": spec, "key?": spec}`: an object with those keys (`?`: may be missing); other keys are ignored.

`check` raises `ShapeError` naming the first place that does not fit, e.g. `steps[3].chosen.token_id`.
It first runs the spec compiled into plain predicates (no place names built: a session file holds
hundreds of thousands of values), and walks the value again naming places only when that says no.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class ShapeError(ValueError):
    """A value does not have the shape its spec describes."""


@dataclass(frozen=True)
class Whole:
    """A whole number from `low` to `high`."""

    low: int | None = None
    high: int | None = None


@dataclass(frozen=True)
class Number:
    """A number from `low` to `high` (None: no bound): finite, or an infinity named as a bound. Never NaN."""

    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class Items:
    """A list of `least` to `most` values, each fitting `spec`."""

    spec: Any
    least: int = 0
    most: int | None = None


# The numbers tokenstep's files record, in the ranges a view can show.
MAX_VOCABULARY = 2**31  # more tokens than any model has (token ids are int32 in some engines)
TOKEN_ID = Whole(0, MAX_VOCABULARY - 1)
PROBABILITY = Number(0, 1)
LOG_PROBABILITY = Number(-math.inf, 0)  # -inf: a token the model cannot choose
ENTROPY = Number(0, math.log(MAX_VOCABULARY))  # nats: no distribution over fewer tokens is more spread


_NAMES = {
    int: "a whole number",
    float: "a number",
    str: "a string",
    bool: "true or false",
    None: "null",
    dict: "an object",
    list: "a list",
}


def check(value: Any, spec: Any, where: str = "the file") -> None:
    """Raise ShapeError if `value` does not fit `spec`."""
    if not _predicate(spec)(value):
        _walk(value, spec, where)


def _walk(value: Any, spec: Any, where: str) -> None:
    """Raise ShapeError naming the first place in `value` that does not fit `spec`."""
    if not _fits(value, spec, where):
        raise ShapeError(f"{where}: expected {_describe(spec)}, found {_preview(value)}")


# id(spec) -> (spec, its predicate): specs are module constants, compiled once each
_PREDICATES: dict[int, tuple[Any, Callable[[Any], bool]]] = {}


def _predicate(spec: Any) -> Callable[[Any], bool]:
    """`spec` as one function of the value: true exactly where `_fits` finds no fault (a property
    test holds the two to that)."""
    cached = _PREDICATES.get(id(spec))
    if cached is None or cached[0] is not spec:
        cached = _PREDICATES[id(spec)] = (spec, _compile(spec))
    return cached[1]


def _compile(spec: Any) -> Callable[[Any], bool]:
    # Stricter than `_fits` where that is cheaper (an int subclass is not `type(value) is int`): the
    # walk that names places then has the last word.
    if isinstance(spec, tuple):
        options = [_compile(option) for option in spec]
        return lambda value: any(option(value) for option in options)
    if spec is None:
        return lambda value: value is None
    if spec is bool or spec is str or spec in (dict, list):
        return lambda value: type(value) is spec
    if spec is int or spec is float or isinstance(spec, (Whole, Number)):
        return _number_predicate(spec)
    if isinstance(spec, (list, Items)):
        item, least, most = _compile(_item_spec(spec)), _least(spec), _most(spec)
        return lambda value: type(value) is list and least <= len(value) <= most and all(map(item, value))
    if isinstance(spec, dict):
        return _object_predicate(spec)
    raise TypeError(f"not a spec: {spec!r}")


def _fits(value: Any, spec: Any, where: str) -> bool:
    """True if `value` fits `spec` at this level; raises for a mismatch further down."""
    if isinstance(spec, tuple):
        if any(_fits_quietly(value, option, where) for option in spec):
            return True
        alike = [option for option in spec if _spec_kind(option) is _value_kind(value) is not None]
        if len(alike) > 1 and isinstance(value, dict):  # objects told apart by the keys they must have
            alike = [option for option in alike if isinstance(option, dict) and _required(option) <= value.keys()]
        if len(alike) == 1:  # an object where an object or null may be, say: name the place inside it
            _walk(value, alike[0], where)
        return False
    if spec is None:
        return value is None
    if spec is bool:
        return isinstance(value, bool)
    if spec is int or isinstance(spec, Whole):
        return _is_whole(value) and _within(value, spec)
    if spec is float or isinstance(spec, Number):
        return _is_number(value) and _within(value, spec)
    if spec is str:
        return isinstance(value, str)
    if spec in (dict, list):  # any object, any list: checked by whoever reads it
        return isinstance(value, spec)
    if isinstance(spec, (list, Items)):
        if not isinstance(value, list) or not _least(spec) <= len(value) <= _most(spec):
            return False
        for index, item in enumerate(value):
            _walk(item, _item_spec(spec), f"{where}[{index}]")
        return True
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return False
        for key, item_spec in spec.items():
            name = key.removesuffix("?")
            if name in value:
                _walk(value[name], item_spec, f"{where}.{name}")
            elif not key.endswith("?"):
                raise ShapeError(f"{where}: the key {name!r} is missing")
        return True
    raise TypeError(f"not a spec: {spec!r}")


def _number_predicate(spec: Any) -> Callable[[Any], bool]:
    whole_only = spec is int or isinstance(spec, Whole)
    low, high = _bounds(spec)
    # A Number takes an infinity only where it names it as a bound; a plain float takes both.
    infinities = (spec.low, spec.high) if isinstance(spec, Number) else (-math.inf, math.inf)

    def fits(value: Any) -> bool:
        kind = type(value)
        if kind is float:
            if whole_only or value != value or (value in (math.inf, -math.inf) and value not in infinities):
                return False
        elif kind is not int:
            return False
        return low <= value <= high

    return fits


def _object_predicate(spec: dict[str, Any]) -> Callable[[Any], bool]:
    keys = [(key.removesuffix("?"), not key.endswith("?"), _compile(item)) for key, item in spec.items()]

    def fits(value: Any) -> bool:
        if type(value) is not dict:
            return False
        for name, required, item in keys:
            if name in value:
                if not item(value[name]):
                    return False
            elif required:
                return False
        return True

    return fits


def _fits_quietly(value: Any, spec: Any, where: str) -> bool:
    try:
        return _fits(value, spec, where)
    except ShapeError:
        return False


def _spec_kind(spec: Any) -> type | None:
    """The kind of JSON value a spec takes (a number of either kind: float); None for null or options."""
    if isinstance(spec, dict) or spec is dict:
        return dict
    if isinstance(spec, (list, Items)) or spec is list:
        return list
    if isinstance(spec, (Whole, Number)) or spec is int or spec is float:
        return float
    return spec if spec is str or spec is bool else None


def _required(spec: dict[str, Any]) -> set[str]:
    return {key for key in spec if not key.endswith("?")}


def _value_kind(value: Any) -> type | None:
    if isinstance(value, bool):
        return bool
    if isinstance(value, (int, float)):
        return float
    return next((kind for kind in (dict, list, str) if isinstance(value, kind)), None)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isnan(value)
    return _is_whole(value)


def _within(value: float, spec: Any) -> bool:
    low, high = _bounds(spec)
    if isinstance(spec, Number) and isinstance(value, float) and math.isinf(value) and value not in (spec.low, spec.high):
        return False  # an infinity fits a Number only as one of its bounds (a whole number is never infinite)
    return low <= value <= high


def _bounds(spec: Any) -> tuple[float, float]:
    low, high = getattr(spec, "low", None), getattr(spec, "high", None)
    return -math.inf if low is None else low, math.inf if high is None else high


def _item_spec(spec: list[Any] | Items) -> Any:
    return spec.spec if isinstance(spec, Items) else spec[0]


def _least(spec: list[Any] | Items) -> int:
    return spec.least if isinstance(spec, Items) else 0


def _most(spec: list[Any] | Items) -> float:
    return spec.most if isinstance(spec, Items) and spec.most is not None else math.inf


def _describe(spec: Any) -> str:
    if isinstance(spec, tuple):
        return " or ".join(_describe(option) for option in spec)
    if isinstance(spec, (Whole, Number)):
        kind = "a whole number" if isinstance(spec, Whole) else "a number"
        low, high = spec.low, spec.high
        if low is not None and high is not None:
            return f"{kind} from {_bound(low)} to {_bound(high)}"
        if low is not None:
            return f"{kind} >= {_bound(low)}"
        return f"{kind} <= {_bound(high)}" if high is not None else kind
    if isinstance(spec, Items) and (spec.least or spec.most is not None):
        most = "" if spec.most is None else f" and at most {spec.most}"
        return f"a list of at least {spec.least} item{'s' if spec.least != 1 else ''}{most}"
    if isinstance(spec, (list, Items)):
        return "a list"
    if isinstance(spec, dict):
        return "an object"
    return _NAMES.get(spec, repr(spec))


def _bound(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"
