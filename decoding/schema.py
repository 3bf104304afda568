"""Checking the shape of JSON read from a file before anything uses it: one validator for every record.

A spec is written in plain Python values:
- a type (`int`, `float`, `str`, `bool`): a value of that type (`float` takes whole numbers too;
  neither number type takes a boolean), or `Whole(low, high)` / `Number(low, high)` for a range;
- `dict` / `list`: any object / any list (its reader checks it further);
- `None`: the value null; a tuple of specs: any one of them (`(str, None)`: a string or null);
- `[spec]`: a list whose every item fits spec;
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
    """A finite number from `low` to `high`."""

    low: float | None = None
    high: float | None = None


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
    if isinstance(spec, list):
        item = _compile(spec[0])
        return lambda value: type(value) is list and all(map(item, value))
    if isinstance(spec, dict):
        return _object_predicate(spec)
    raise TypeError(f"not a spec: {spec!r}")


def _fits(value: Any, spec: Any, where: str) -> bool:
    """True if `value` fits `spec` at this level; raises for a mismatch further down."""
    if isinstance(spec, tuple):
        return any(_fits_quietly(value, option, where) for option in spec)
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
    if isinstance(spec, list):
        if not isinstance(value, list):
            return False
        for index, item in enumerate(value):
            _walk(item, spec[0], f"{where}[{index}]")
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
    low, high = getattr(spec, "low", None), getattr(spec, "high", None)
    whole_only, finite = spec is int or isinstance(spec, Whole), isinstance(spec, Number)
    low = -math.inf if low is None else low
    high = math.inf if high is None else high

    def fits(value: Any) -> bool:
        kind = type(value)
        if kind is float:
            if whole_only or value != value or (finite and not math.isfinite(value)):
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


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isnan(value)  # ±inf is a log-probability of a token that cannot be chosen
    return _is_whole(value)


def _within(value: float, spec: Any) -> bool:
    low, high = getattr(spec, "low", None), getattr(spec, "high", None)
    if isinstance(spec, Number) and not math.isfinite(value):
        return False
    return (low is None or value >= low) and (high is None or value <= high)


def _describe(spec: Any) -> str:
    if isinstance(spec, tuple):
        return " or ".join(_describe(option) for option in spec)
    if isinstance(spec, (Whole, Number)):
        kind = "a whole number" if isinstance(spec, Whole) else "a number"
        bounds = [f">= {spec.low}" if spec.low is not None else "", f"<= {spec.high}" if spec.high is not None else ""]
        return f"{kind} {' and '.join(bound for bound in bounds if bound)}".strip()
    if isinstance(spec, list):
        return "a list"
    if isinstance(spec, dict):
        return "an object"
    return _NAMES.get(spec, repr(spec))


def _preview(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:39] + "…"
