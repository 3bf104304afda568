"""The samplers, one entry each: what a strategy can switch on besides its kind, its seed and its beams.

The settings, the processors, the command line, the settings screen, the processor view, traces,
session files, replay and compare all read this registry; adding a sampler is one `register` call.
Pure Python: a sampler's processor (and transformers) is only built when a strategy runs.
"""

from __future__ import annotations

import json
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
    off: Any  # the value that switches it off (a parameter's default); its type is the setting's
    valid: Callable[[Any], bool]
    requirement: str  # what a value must be, without the setting's name
    # (the value, the strategy, the vocabulary's TokenTexts or None) -> a LogitsProcessor (transformers'
    # own where it has one); None for a parameter of another sampler's stage (`part_of`)
    build: Callable[[Any, Any, Any], Any] | None
    label: str  # in the settings screen
    short: str  # in a column of the processor view (10 characters at most)
    help: str  # on the command line
    tag: Callable[[Any], str]  # in a status line, e.g. "T=0.7"
    sampling_only: bool = False  # a warper: generate() applies it when sampling only, after the other processors
    stage: str = ""  # its name in the chain (`samplers`): llama.cpp's where it has one, else the setting's
    part_of: str = ""  # a parameter: the sampler whose stage reads it
    switches_on: bool = False  # a parameter that switches its stage on by itself (frequency penalty, dynatemp range)
    in_generation_config: bool = False  # generate() takes it (else only tokenstep and llama.cpp know it)
    parse: Callable[[str], Any] | None = None  # its value from typed text (default: its type's)
    show: Callable[[Any], str] = str  # its value as a field shows it
    # Reads only the scores still in play, not which token is where: it may run on those alone (a
    # sort over the 400 top-k left instead of the whole vocabulary). Set for the warpers but mirostat.
    position_free: bool = False
    # (strategy, llama.cpp's samplers: engines.llama.samplers.LlamaSamplers) -> the stage as llama.cpp
    # runs it, on --engine llama; None: llama.cpp has no such sampler (tokenstep's runs there too)
    llama_cpp: Callable[[Any, Any], Any] | None = None
    # (strategy, the context's length) -> llama-server's request fields for this stage, or one line
    # saying why the server cannot run it as tokenstep does; None: llama-server has no such sampler
    server: Callable[[Any, int], dict[str, Any] | str] | None = None
    server_stage: str = ""  # its name in llama-server's `samplers` (default: `chain_name`)
    # Keeps a state of its own from step to step (not read from the context): a draft model cannot
    # run it ahead of the target (speculative decoding)
    stateful: bool = False

    @property
    def kind(self) -> Callable[[str], Any]:
        return self.parse or type(self.off)

    @property
    def chain_name(self) -> str:
        return self.stage or self.name

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
    """The warpers (sampling_only) or the other processors, each in the registry's order (a stage's
    parameters after it)."""
    return [sampler for sampler in SAMPLERS.values() if _sampling_only(sampler) == sampling_only]


def _sampling_only(sampler: Sampler) -> bool:
    return SAMPLERS[sampler.part_of].sampling_only if sampler.part_of in SAMPLERS else sampler.sampling_only


def stages() -> list[Sampler]:
    """The samplers that are stages of the chain (not parameters), in the registry's order."""
    return [sampler for sampler in SAMPLERS.values() if not sampler.part_of]


def parameters_of(stage: Sampler) -> list[Sampler]:
    return [sampler for sampler in SAMPLERS.values() if sampler.part_of == stage.name]


def stage_named(name: str) -> Sampler | None:
    """The stage a `samplers` entry names: llama.cpp's name, its alias, or the setting's name."""
    wanted = CHAIN_ALIASES.get(name.strip().lower().replace("-", "_"), name.strip().lower().replace("-", "_"))
    return next((s for s in stages() if wanted in (s.chain_name, s.name)), None)


# llama.cpp's default chain (common/common.h), with the stages it has no name for where they would go
LLAMA_CPP_ORDER = (
    "repetition_penalty",
    "no_repeat_ngram_size",
    "penalties",
    "dry",
    "top_n_sigma",
    "top_k",
    "typ_p",
    "top_p",
    "min_p",
    "epsilon_cutoff",
    "eta_cutoff",
    "xtc",
    "temperature",
    "mirostat",
)
CHAIN_PRESETS = {"llama.cpp": LLAMA_CPP_ORDER, "default": ()}  # default: generate()'s order


# llama.cpp's other spellings of its stage names (common/sampling.cpp)
CHAIN_ALIASES = {
    "temp": "temperature",
    "typical": "typ_p",
    "nucleus": "top_p",
}


def number_from(low: float, high: float) -> Callable[[Any], bool]:
    return lambda value: is_number(value) and low <= value <= high


def whole_from(low: int, high: int = MAX_COUNT) -> Callable[[Any], bool]:
    return lambda value: is_whole(value) and low <= value <= high


def transformers_processor(class_name: str, **fixed: Any) -> Callable[..., Any]:
    """One of transformers' processor classes, imported when first built (torch is slow to import)."""

    def build(value: Any, _strategy: Any = None, _texts: Any = None) -> Any:
        import transformers

        return getattr(transformers, class_name)(value, **fixed)

    return build


def llama_processor(class_name: str, read: Callable[[Any, Any, Any], tuple[Any, ...]]) -> Callable[..., Any]:
    """One of decoding.core.llama_samplers' processors, built from what `read` takes of the value, the
    strategy and the vocabulary."""

    def build(value: Any, strategy: Any, texts: Any) -> Any:
        from decoding.core import llama_samplers

        return getattr(llama_samplers, class_name)(*read(value, strategy, texts))

    return build


def _temperature(value: float, strategy: Any) -> Any:
    """The temperature of transformers, or llama.cpp's dynamic one when its range is set."""
    spread = getattr(strategy, "dynatemp_range", 0.0)
    if spread > 0:
        from decoding.core.llama_samplers import DynamicTemperature

        return DynamicTemperature(value, spread, strategy.dynatemp_exponent)
    return transformers_processor("TemperatureLogitsWarper")(value)


_T_LOW, _T_HIGH = TEMPERATURE_RANGE
_P_LOW, _P_HIGH = PENALTY_RANGE

register(
    Sampler(
        name="temperature",
        position_free=True,
        in_generation_config=True,
        off=1.0,
        valid=number_from(_T_LOW, _T_HIGH),
        requirement=f"must be a number from {_T_LOW:g} to {_T_HIGH:g}; 1 is off",
        build=lambda value, strategy, texts: _temperature(value, strategy),
        label="temperature (1 = off)",
        short="temp.",
        help="> 0; sampling only (default 1.0)",
        tag=lambda value: f"T={value:g}",
        sampling_only=True,
        llama_cpp=lambda s, llama: llama.stage("temp_ext", s.temperature, s.dynatemp_range, s.dynatemp_exponent),
        server=lambda s, n: {
            "temperature": s.temperature,
            "dynatemp_range": s.dynatemp_range,
            "dynatemp_exponent": s.dynatemp_exponent,
        },
    )
)
register(
    Sampler(
        name="top_k",
        position_free=True,
        in_generation_config=True,
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
        llama_cpp=lambda s, llama: llama.stage("top_k", s.top_k),
        server=lambda s, n: {"top_k": s.top_k},
    )
)
register(
    Sampler(
        name="top_p",
        position_free=True,
        in_generation_config=True,
        off=1.0,
        valid=lambda value: is_number(value) and 0 < value <= 1,
        requirement="must be greater than 0 and at most 1; 1 is off",
        build=transformers_processor("TopPLogitsWarper", min_tokens_to_keep=1),
        label="top-p (0 < p ≤ 1)",
        short="top-p",
        help="keep the smallest set with this much probability; 1 = off",
        tag=lambda value: f"top-p={value:g}",
        sampling_only=True,
        llama_cpp=lambda s, llama: llama.stage("top_p", s.top_p, 1),
        server=lambda s, n: {"top_p": s.top_p},
    )
)
register(
    Sampler(
        name="min_p",
        position_free=True,
        in_generation_config=True,
        off=0.0,
        valid=number_from(0.0, 1.0),
        requirement="must be from 0 to 1; 0 is off",
        build=transformers_processor("MinPLogitsWarper", min_tokens_to_keep=1),
        label="min-p (0 = off)",
        short="min-p",
        help="keep tokens at least this fraction of the top token's probability (llama.cpp's default 0.05); 0 = off",
        tag=lambda value: f"min-p={value:g}",
        sampling_only=True,
        llama_cpp=lambda s, llama: llama.stage("min_p", s.min_p, 1),
        server=lambda s, n: {"min_p": s.min_p},
    )
)
register(
    Sampler(
        name="typical_p",
        position_free=True,
        in_generation_config=True,
        stage="typ_p",
        off=1.0,
        valid=lambda value: is_number(value) and 0 < value <= 1,
        requirement="must be greater than 0 and at most 1; 1 is off",
        build=transformers_processor("TypicalLogitsWarper", min_tokens_to_keep=1),
        label="typical-p (1 = off)",
        short="typical",
        help="locally typical sampling: keep the tokens nearest the expected surprisal, this much mass; 1 = off",
        tag=lambda value: f"typical={value:g}",
        sampling_only=True,
        llama_cpp=lambda s, llama: llama.stage("typical", s.typical_p, 1),
        server=lambda s, n: {"typical_p": s.typical_p},
    )
)
register(
    Sampler(
        name="epsilon_cutoff",
        position_free=True,
        in_generation_config=True,
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
        position_free=True,
        in_generation_config=True,
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
        in_generation_config=True,
        off=1.0,
        valid=number_from(_P_LOW, _P_HIGH),
        requirement=f"must be a number from {_P_LOW:g} to {_P_HIGH:g}; 1 is off",
        build=transformers_processor("RepetitionPenaltyLogitsProcessor"),
        label="repetition penalty (1 = off)",
        short="rep.pen.",
        help="> 0; 1 = off (default)",
        tag=lambda value: f"rep={value:g}",
        # transformers' repetition penalty is llama.cpp's repeat penalty over the whole context
        llama_cpp=lambda s, llama: llama.penalties(-1, s.repetition_penalty, 0.0, 0.0),
        server=lambda s, n: {"repeat_penalty": s.repetition_penalty, "repeat_last_n": n},
        server_stage="penalties",
    )
)
register(
    Sampler(
        name="no_repeat_ngram_size",
        in_generation_config=True,
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


# --- llama.cpp's samplers (decoding.core.llama_samplers), named and ranged as llama.cpp names them ----


def _parameter(
    name: str, part_of: str, off: Any, valid: Callable[[Any], bool], requirement: str, label: str, help: str, **more: Any
) -> Sampler:
    """A setting that a stage reads (it builds nothing of its own)."""
    return Sampler(
        name=name,
        off=off,
        valid=valid,
        requirement=requirement,
        build=None,
        label=label,
        short=name[:10],
        help=help,
        tag=more.pop("tag", lambda value: f"{name}={value:g}"),
        part_of=part_of,
        **more,
    )


register(
    _parameter(
        "dynatemp_range",
        "temperature",
        0.0,
        number_from(0.0, _T_HIGH),
        f"must be a number from 0 to {_T_HIGH:g}; 0 is off",
        "dynamic temperature range (0 = off)",
        "llama.cpp's dynamic temperature: from temperature - range to temperature + range, by the entropy; 0 = off",
        switches_on=True,
        tag=lambda value: f"dynatemp±{value:g}",
    )
)
register(
    _parameter(
        "dynatemp_exponent",
        "temperature",
        1.0,
        number_from(0.0, 100.0),
        "must be a number from 0 to 100",
        "dynamic temperature exponent",
        "how the entropy maps onto that range (default 1: linearly)",
        tag=lambda value: f"dynatemp^{value:g}",
    )
)
register(
    Sampler(
        name="top_n_sigma",
        position_free=True,
        off=0.0,
        valid=number_from(0.0, 100.0),
        requirement="must be a number from 0 to 100; 0 is off",
        build=llama_processor("TopNSigma", lambda value, strategy, texts: (value,)),
        label="top-n-sigma (0 = off)",
        short="n-sigma",
        help="keep tokens within n standard deviations of the best logit; 0 = off",
        tag=lambda value: f"top-nσ={value:g}",
        sampling_only=True,
        llama_cpp=lambda s, llama: llama.stage("top_n_sigma", s.top_n_sigma),
        server=lambda s, n: {"top_n_sigma": s.top_n_sigma},
    )
)
register(
    Sampler(
        name="xtc_probability",
        position_free=True,
        off=0.0,
        valid=number_from(0.0, 1.0),
        requirement="must be from 0 to 1; 0 is off",
        build=llama_processor("ExcludeTopChoices", lambda value, strategy, texts: (value, strategy.xtc_threshold, strategy.seed)),
        label="XTC probability (0 = off)",
        short="xtc",
        help="exclude top choices: how often to remove the tokens above --xtc-threshold but the least likely; 0 = off",
        tag=lambda value: f"xtc={value:g}",
        sampling_only=True,
        stage="xtc",
        llama_cpp=lambda s, llama: llama.xtc(s.xtc_probability, s.xtc_threshold, s.seed),
        server=lambda s, n: (
            "XTC's coin is the server's own below probability 1"
            if s.xtc_probability < 1
            else {"xtc_probability": s.xtc_probability, "xtc_threshold": s.xtc_threshold}
        ),
    )
)
register(
    _parameter(
        "xtc_threshold",
        "xtc_probability",
        0.1,
        number_from(0.0, 0.5),
        "must be from 0 to 0.5 (above 0.5 no two tokens can both reach it)",
        "XTC threshold",
        "the probability a token needs to count as a top choice (default 0.1)",
        tag=lambda value: f"xtc≥{value:g}",
    )
)
register(
    Sampler(
        name="mirostat",
        off=0,
        valid=lambda value: value in (0, 2) and is_whole(value),
        requirement="must be 0 (off) or 2 (mirostat 2.0; tokenstep has no mirostat 1)",
        build=llama_processor("MirostatV2", lambda value, strategy, texts: (strategy.mirostat_tau, strategy.mirostat_eta)),
        label="mirostat (0 = off, 2)",
        short="mirostat",
        help="2: mirostat 2.0, which keeps the surprise near --mirostat-tau; 0 = off",
        tag=lambda value: f"mirostat{value}",
        sampling_only=True,
        llama_cpp=lambda s, llama: llama.mirostat(s.mirostat_tau, s.mirostat_eta),
        stateful=True,
        server=lambda s, n: "llama-server restarts mirostat's mu at every request",
    )
)
register(
    _parameter(
        "mirostat_tau",
        "mirostat",
        5.0,
        number_from(0.0, 100.0),
        "must be a number from 0 to 100",
        "mirostat tau",
        "the surprise (bits) mirostat aims at (default 5)",
        tag=lambda value: f"τ={value:g}",
    )
)
register(
    _parameter(
        "mirostat_eta",
        "mirostat",
        0.1,
        number_from(0.0, 1.0),
        "must be from 0 to 1",
        "mirostat eta",
        "how fast mirostat's cutoff follows (default 0.1)",
        tag=lambda value: f"η={value:g}",
    )
)
register(
    Sampler(
        name="presence_penalty",
        off=0.0,
        valid=number_from(-2.0, 2.0),
        requirement="must be a number from -2 to 2; 0 is off",
        build=llama_processor(
            "PresenceFrequencyPenalty",
            lambda value, strategy, texts: (strategy.repeat_last_n, strategy.frequency_penalty, value),
        ),
        label="presence penalty (0 = off)",
        short="penalties",
        help="lower the logit of every token seen in the last --repeat-last-n by this; 0 = off",
        tag=lambda value: f"presence={value:g}",
        stage="penalties",
        llama_cpp=lambda s, llama: llama.penalties(s.repeat_last_n, 1.0, s.frequency_penalty, s.presence_penalty),
        server=lambda s, n: {
            "presence_penalty": s.presence_penalty,
            "frequency_penalty": s.frequency_penalty,
            "repeat_last_n": n if s.repeat_last_n < 0 else s.repeat_last_n,
        },
    )
)
register(
    _parameter(
        "frequency_penalty",
        "presence_penalty",
        0.0,
        number_from(-2.0, 2.0),
        "must be a number from -2 to 2; 0 is off",
        "frequency penalty (0 = off)",
        "lower it by this for each time it was seen; 0 = off",
        switches_on=True,
        tag=lambda value: f"frequency={value:g}",
    )
)
register(
    _parameter(
        "repeat_last_n",
        "presence_penalty",
        64,
        whole_from(-1),
        "must be a whole number, -1 (the whole context) or more; 0 switches the penalties off",
        "penalties: last n tokens",
        "the presence and frequency penalties look at the last n tokens (-1: all; default 64, as llama.cpp)",
        tag=lambda value: f"last-{value}",
    )
)

DRY_BREAKERS = ("\n", ":", '"', "*")  # llama.cpp's default sequence breakers
MAX_BREAKERS = 64
MAX_BREAKER_BYTES = 40  # llama.cpp cuts a breaker to this; longer is refused rather than cut silently


def _breakers_text(text: str) -> tuple[str, ...]:
    """--dry-sequence-breakers: a JSON array of strings, as llama-server takes them ("none": no breaker)."""
    if text.strip().lower() == "none":
        return ()
    try:
        value = json.loads(text)
    except ValueError:
        raise ValueError("not a JSON array of strings") from None
    if not isinstance(value, list):
        raise ValueError("not a JSON array of strings")
    return tuple(value)


_breakers_text.__name__ = "JSON array of strings"  # argparse names a value it cannot read by its reader's name


def _valid_breakers(value: Any) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) <= MAX_BREAKERS
        and all(isinstance(b, str) and 0 < len(b.encode(errors="replace")) <= MAX_BREAKER_BYTES for b in value)
    )


def _dry_settings(value: float, strategy: Any, texts: Any) -> tuple[Any, ...]:
    from decoding.core.llama_samplers import breaker_sequences

    breakers = texts.breakers(strategy.dry_sequence_breakers, breaker_sequences) if texts is not None else {}
    return value, strategy.dry_base, strategy.dry_allowed_length, strategy.dry_penalty_last_n, breakers


register(
    Sampler(
        name="dry_multiplier",
        off=0.0,
        valid=number_from(0.0, 100.0),
        requirement="must be a number from 0 to 100; 0 is off",
        build=llama_processor("DontRepeatYourself", _dry_settings),
        label="DRY multiplier (0 = off)",
        short="dry",
        help="DRY (don't repeat yourself): how hard to penalize a token that extends a repeat (0.8 is typical); 0 = off",
        tag=lambda value: f"dry={value:g}",
        stage="dry",
        llama_cpp=lambda s, llama: llama.dry(
            s.dry_multiplier, s.dry_base, s.dry_allowed_length, s.dry_penalty_last_n, s.dry_sequence_breakers
        ),
        server=lambda s, n: (
            "llama-server takes no empty list of DRY sequence breakers"
            if not s.dry_sequence_breakers
            else {
                "dry_multiplier": s.dry_multiplier,
                "dry_base": s.dry_base,
                "dry_allowed_length": s.dry_allowed_length,
                "dry_penalty_last_n": n if s.dry_penalty_last_n < 0 else s.dry_penalty_last_n,
                "dry_sequence_breakers": list(s.dry_sequence_breakers),
            }
        ),
    )
)
register(
    _parameter(
        "dry_base",
        "dry_multiplier",
        1.75,
        number_from(1.0, 100.0),
        "must be a number from 1 to 100",
        "DRY base",
        "the penalty grows by this factor with each token of the repeat (default 1.75)",
    )
)
register(
    _parameter(
        "dry_allowed_length",
        "dry_multiplier",
        2,
        whole_from(0),
        "must be a whole number, 0 or more",
        "DRY allowed length",
        "repeats this long go unpenalized (default 2)",
    )
)
register(
    _parameter(
        "dry_penalty_last_n",
        "dry_multiplier",
        -1,
        whole_from(-1),
        "must be a whole number, -1 (the whole context) or more",
        "DRY: last n tokens",
        "how far back DRY looks for repeats (-1: the whole context, the default)",
    )
)
register(
    _parameter(
        "dry_sequence_breakers",
        "dry_multiplier",
        DRY_BREAKERS,
        _valid_breakers,
        f"must be a JSON array of at most {MAX_BREAKERS} non-empty strings of at most {MAX_BREAKER_BYTES} bytes, or none",
        "DRY sequence breakers (JSON)",
        'a JSON array of strings that end a repeat (default ["\\n", ":", "\\"", "*"]); none: no breakers',
        parse=_breakers_text,
        show=lambda value: json.dumps(list(value)),
        tag=lambda value: "breakers=" + json.dumps(list(value)),
    )
)
