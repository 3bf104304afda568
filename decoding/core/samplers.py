"""The samplers, one entry each: what a strategy can switch on besides its kind, its seed and its beams.

The settings, the processors, the command line, the settings screen, the processor view, traces,
session files, replay and compare all read this registry; adding a sampler is one `register` call.
Pure Python: a sampler's processor (and transformers) is only built when a strategy runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from decoding.core.registry import add, added

# Where each number is safe: beyond these the float32 arithmetic of the processors overflows (a
# temperature of 1e-40 turns logits into inf).
TEMPERATURE_RANGE = (0.01, 100.0)
PENALTY_RANGE = (0.01, 100.0)
MAX_COUNT = 2**31 - 1  # top_k, n-gram sizes: larger would mean nothing


def is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return is_whole(value) or (isinstance(value, float) and math.isfinite(value))  # (an int of 400 digits overflows isfinite)


@dataclass(frozen=True)
class Sampler:
    """One sampler: a setting of every strategy, and the logits processor that applies it."""

    name: str  # transformers' GenerationConfig name (llama.cpp's where it has none): the setting, the trace key
    off: int | float  # the value that switches it off; its type is the setting's
    valid: Callable[[Any], bool]
    requirement: str  # what a value must be, without the setting's name
    build: Callable[[Any], Any]  # the value -> a LogitsProcessor (transformers' own where it has one)
    label: str  # in the settings screen
    short: str  # in a column of the processor view (10 characters at most)
    help: str  # on the command line
    tag: Callable[[Any], str]  # in a status line, e.g. "T=0.7"
    sampling_only: bool = False  # a warper: generate() applies it when sampling only, after the other processors

    @property
    def kind(self) -> type:
        return type(self.off)

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    def is_on(self, value: Any) -> bool:
        return value != self.off


SAMPLERS: dict[str, Sampler] = {}  # in the order the command line and the settings screen show them


def register(sampler: Sampler) -> Sampler:
    return add(SAMPLERS, sampler.name, sampler, "sampler")


def registered(sampler: Sampler) -> AbstractContextManager[Sampler]:
    """A sampler that is registered only inside the block (for a plug-in's tests)."""
    return added(SAMPLERS, sampler.name, sampler, "sampler")


def in_order(sampling_only: bool) -> list[Sampler]:
    """The warpers (sampling_only) or the other processors, each in the registry's order."""
    return [sampler for sampler in SAMPLERS.values() if sampler.sampling_only == sampling_only]


def number_from(low: float, high: float) -> Callable[[Any], bool]:
    return lambda value: is_number(value) and low <= value <= high


def whole_from(low: int, high: int = MAX_COUNT) -> Callable[[Any], bool]:
    return lambda value: is_whole(value) and low <= value <= high


def transformers_processor(class_name: str, **fixed: Any) -> Callable[..., Any]:
    """One of transformers' processor classes, imported when first built (torch is slow to import)."""

    def build(*args: Any) -> Any:
        import transformers

        return getattr(transformers, class_name)(*args, **fixed)

    return build


_T_LOW, _T_HIGH = TEMPERATURE_RANGE
_P_LOW, _P_HIGH = PENALTY_RANGE

register(
    Sampler(
        name="temperature",
        off=1.0,
        valid=number_from(_T_LOW, _T_HIGH),
        requirement=f"must be a number from {_T_LOW:g} to {_T_HIGH:g}; 1 is off",
        build=transformers_processor("TemperatureLogitsWarper"),
        label="temperature (1 = off)",
        short="temp.",
        help="> 0; sampling only (default 1.0)",
        tag=lambda value: f"T={value:g}",
        sampling_only=True,
    )
)
register(
    Sampler(
        name="top_k",
        off=0,
        valid=whole_from(0),
        requirement="must be a whole number, 0 or more; 0 is off",
        # min_tokens_to_keep=1 is what generate() uses for a single sequence (so for top_p).
        build=transformers_processor("TopKLogitsWarper", min_tokens_to_keep=1),
        label="top-k (0 = off)",
        short="top-k",
        help="keep the k most likely tokens; 0 = off (default)",
        tag=lambda value: f"top-k={value}",
        sampling_only=True,
    )
)
register(
    Sampler(
        name="top_p",
        off=1.0,
        valid=lambda value: is_number(value) and 0 < value <= 1,
        requirement="must be greater than 0 and at most 1; 1 is off",
        build=transformers_processor("TopPLogitsWarper", min_tokens_to_keep=1),
        label="top-p (0 < p ≤ 1)",
        short="top-p",
        help="keep the smallest set with this much probability; 1 = off",
        tag=lambda value: f"top-p={value:g}",
        sampling_only=True,
    )
)
register(
    Sampler(
        name="min_p",
        off=0.0,
        valid=number_from(0.0, 1.0),
        requirement="must be from 0 to 1; 0 is off",
        build=transformers_processor("MinPLogitsWarper", min_tokens_to_keep=1),
        label="min-p (0 = off)",
        short="min-p",
        help="keep tokens at least this fraction of the top token's probability (llama.cpp's default 0.05); 0 = off",
        tag=lambda value: f"min-p={value:g}",
        sampling_only=True,
    )
)
register(
    Sampler(
        name="typical_p",
        off=1.0,
        valid=lambda value: is_number(value) and 0 < value <= 1,
        requirement="must be greater than 0 and at most 1; 1 is off",
        build=transformers_processor("TypicalLogitsWarper", min_tokens_to_keep=1),
        label="typical-p (1 = off)",
        short="typical",
        help="locally typical sampling: keep the tokens nearest the expected surprisal, this much mass; 1 = off",
        tag=lambda value: f"typical={value:g}",
        sampling_only=True,
    )
)
register(
    Sampler(
        name="epsilon_cutoff",
        off=0.0,
        valid=lambda value: is_number(value) and 0 <= value < 1,
        requirement="must be at least 0 and less than 1; 0 is off",
        build=transformers_processor("EpsilonLogitsWarper", min_tokens_to_keep=1),
        label="epsilon cutoff (0 = off)",
        short="epsilon",
        help="rule out tokens below this probability (3e-4 is typical); 0 = off",
        tag=lambda value: f"eps={value:g}",
        sampling_only=True,
    )
)
register(
    Sampler(
        name="eta_cutoff",
        off=0.0,
        valid=lambda value: is_number(value) and 0 <= value < 1,
        requirement="must be at least 0 and less than 1; 0 is off",
        build=transformers_processor("EtaLogitsWarper", min_tokens_to_keep=1),
        label="eta cutoff (0 = off)",
        short="eta",
        help="epsilon scaled by the distribution's entropy (3e-4 is typical); 0 = off",
        tag=lambda value: f"eta={value:g}",
        sampling_only=True,
    )
)
register(
    Sampler(
        name="repetition_penalty",
        off=1.0,
        valid=number_from(_P_LOW, _P_HIGH),
        requirement=f"must be a number from {_P_LOW:g} to {_P_HIGH:g}; 1 is off",
        build=transformers_processor("RepetitionPenaltyLogitsProcessor"),
        label="repetition penalty (1 = off)",
        short="rep.pen.",
        help="> 0; 1 = off (default)",
        tag=lambda value: f"rep={value:g}",
    )
)
register(
    Sampler(
        name="no_repeat_ngram_size",
        off=0,
        valid=whole_from(0),
        requirement="must be a whole number, 0 or more; 0 is off",
        build=transformers_processor("NoRepeatNGramLogitsProcessor"),
        label="no-repeat n-gram size (0 = off)",
        short="n-gram",
        help="ban repeating n-grams of this size; 0 = off",
        tag=lambda value: f"no-repeat-{value}gram",
    )
)
