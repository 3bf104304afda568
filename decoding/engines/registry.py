"""The one table of engines, and what a user asks a load for (`LoadOptions`).

Each engine is one `EngineEntry`: its --engine name, the name traces record, its own options with
their checks, its loader, and what a trace records of it. The command line, loading, traces,
replay and the app's "load another model" read the table; no engine is named anywhere else.
A new engine is a package under `decoding/engines/` and one entry in `ENGINES`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from decoding.core.engine import Engine
from decoding.core.errors import LoadError
from decoding.core.files import path_problem, shown_path
from decoding.core.registry import add, added
from decoding.engines.embedded import EMBEDDED_NAME
from decoding.engines.hf.load import Placement, check_fits_on_cpu, load_transformers
from decoding.engines.llama.load import load_llama
from decoding.engines.runtime import DEVICES_HELP, DTYPES, collector_paused, resolve_device, reuse_freed_memory, valid_device_name
from decoding.engines.server.load import ServerOptions, load_server

Progress = Callable[[str], object]


@dataclass(frozen=True)
class EngineOption:
    """One option only an engine takes: the `LoadOptions` field, and its flag on the command line (None: none)."""

    field: str
    flag: str | None
    help: str = ""
    kind: Callable[[str], Any] = str
    choices: tuple[str, ...] | None = None
    names_model: bool = False  # it says which model (a server's address): not kept for another model


@dataclass(frozen=True)
class EngineEntry:
    option: str  # --engine's value
    name: str  # `Engine.name`: what traces and session files record
    help: str
    load: Callable[[LoadOptions, str, Progress], Engine]  # options, the device resolved, progress
    # its options' values, whatever the engine (what it returns is not used: a check raises LoadError)
    check_values: Callable[[LoadOptions], object] = lambda options: None
    check: Callable[[LoadOptions], None] = lambda options: None  # what it needs when it is the engine
    options: tuple[EngineOption, ...] = ()
    model_suffix: str | None = None  # ".gguf": the only model files it runs
    served: bool = False  # the model is a server's, found by its address, not --model (no device, no dtype)
    check_early: Callable[[LoadOptions], None] = lambda options: None  # before torch is imported

    def runs(self, model: str | None) -> bool:
        """Whether it can run `model` (None or empty: the embedded one)."""
        return not (self.model_suffix and model and not model.lower().endswith(self.model_suffix))


def _placement(options: LoadOptions) -> Placement:
    return Placement(options.device_map, options.load_in, options.max_memory)


def _server(options: LoadOptions) -> ServerOptions:
    return ServerOptions(options.url, options.api_key, options.server_top, options.tokenizer)


def _check_fits_early(options: LoadOptions) -> None:
    """On the CPU, the memory check comes before torch is imported, without asking torch where the
    model goes (a refusal then takes a fraction of a second; on a GPU the loader checks after torch)."""
    gpu_here = any(Path("/dev").glob("nvidia[0-9]*"))
    if options.device == "cpu" or (options.device == "auto" and not gpu_here):
        check_fits_on_cpu(options.model, options.dtype, _placement(options))


ENGINES: dict[str, EngineEntry] = {
    entry.option: entry
    for entry in (
        EngineEntry(
            "transformers",
            "transformers",
            "any Hugging Face causal LM; agrees with generate() (default)",
            load=lambda options, device, progress: load_transformers(
                options.model, device, options.dtype, _placement(options), progress
            ),
            check_values=_placement,  # a Placement checks itself as it is made
            options=(
                EngineOption(
                    "device_map",
                    "--device-map",
                    "auto: accelerate places the layers that do not fit on the GPU on the CPU, then on disk",
                    choices=("auto",),
                ),
                EngineOption(
                    "load_in",
                    "--load-in",
                    "quantize the weights as they load with bitsandbytes: 8bit = LLM.int8(), 4bit = NF4",
                    choices=("8bit", "4bit"),
                ),
                EngineOption("max_memory", None),
            ),
            check_early=_check_fits_early,
        ),
        EngineEntry(
            "llama",
            "llama.cpp",
            "a .gguf file run by llama.cpp: faster, quantized",
            load=lambda options, device, progress: load_llama(options.model, device, progress),
            model_suffix=".gguf",
        ),
        EngineEntry(
            "server",
            "server",
            "a model served by vLLM, SGLang or llama.cpp's llama-server (--url)",
            load=lambda options, device, progress: load_server(_server(options), progress),
            check_values=_server,  # and so do ServerOptions
            check=lambda options: _server(options).check_address(),
            options=(
                EngineOption(
                    "url", "--url", "the server's address, with or without /v1 (vLLM, SGLang or llama-server)", names_model=True
                ),
                EngineOption("api_key", "--api-key", "for a server behind a key (default: $TOKENSTEP_API_KEY)"),
                EngineOption("server_top", "--server-top", "top N log-probabilities asked for per step (default 20)", int),
                EngineOption(
                    "tokenizer",
                    "--tokenizer",
                    "a local copy of the served model's tokenizer (default: the server's own endpoints)",
                    names_model=True,
                ),
            ),
            served=True,
        ),
    )
}
DEFAULT_ENGINE = "transformers"


def register(entry: EngineEntry) -> EngineEntry:
    return add(ENGINES, entry.option, entry, "engine")


def registered(entry: EngineEntry) -> AbstractContextManager[EngineEntry]:
    """An engine that is registered only inside the block (for a plug-in's tests)."""
    return added(ENGINES, entry.option, entry, "engine")


@dataclass(frozen=True)
class LoadOptions:
    """What a user asks a load for: the model, device, dtype and engine every load has, then each
    engine's own options (see its entry), which no other engine takes. Checked as it is made."""

    model: str | None = None  # None: the embedded SmolLM2-135M-Instruct
    device: str = "auto"
    dtype: str = "auto"
    engine: str = DEFAULT_ENGINE
    device_map: str | None = None
    load_in: str | None = None
    max_memory: dict[str, str] | None = None
    url: str | None = None
    api_key: str | None = None
    server_top: int = 20
    tokenizer: str | None = None

    def __post_init__(self) -> None:
        if self.model is not None and not self.model.strip():
            raise LoadError("--model is empty: give a Hub id, a folder or a .gguf file (or leave it out for the embedded model).")
        if self.model is not None and (problem := path_problem(self.model)):  # before a file system call fails on it
            raise LoadError(f"--model {shown_path(self.model)} names no model: {problem}.")
        if self.engine not in ENGINES:
            raise LoadError(f"--engine must be one of {', '.join(ENGINES)} (got {self.engine!r}).")
        if self.dtype not in DTYPES:
            raise LoadError(f"--dtype must be one of {', '.join(DTYPES)} (got {self.dtype!r}).")
        if not valid_device_name(self.device):
            raise LoadError(f"--device must be {DEVICES_HELP} (got {self.device!r}).")
        entry = self.entry
        if not entry.runs(self.model):
            raise LoadError(
                f"--engine {self.engine} runs {entry.model_suffix} files; --model {self.model} is not one. "
                f"Use --engine {DEFAULT_ENGINE}."
            )
        if entry.served and self.model:
            raise LoadError(f"--engine {self.engine} runs the model the server serves: leave out --model.")
        for each in ENGINES.values():  # a value out of range is said as such, whichever engine runs
            each.check_values(self)
        self._refuse_other_engines_options()
        entry.check(self)

    @property
    def entry(self) -> EngineEntry:
        return ENGINES[self.engine]

    def _refuse_other_engines_options(self) -> None:
        defaults = {field.name: field.default for field in fields(self)}
        for owner in ENGINES.values():
            for option in owner.options:
                if owner is not self.entry and getattr(self, option.field) != defaults[option.field]:
                    shown = option.flag or option.field
                    raise LoadError(f"{shown} is for --engine {owner.option} (got --engine {self.engine}).")


def engine_options() -> list[EngineOption]:
    """Every engine's own options, in the table's order."""
    return [option for entry in ENGINES.values() for option in entry.options]


def load_engine(options: LoadOptions | None = None, progress: Progress = lambda message: None) -> Engine:
    """Load the model `options` name with its engine."""
    options = options or LoadOptions()
    reuse_freed_memory()
    with collector_paused():
        device = "server" if options.entry.served else resolve_device(options.device)
        return options.entry.load(options, device, progress)


def check_fits_early(options: LoadOptions) -> None:
    """Refuse a model far too big for memory before torch is imported, where the engine can tell."""
    options.entry.check_early(options)


def named(options: LoadOptions) -> str:
    """The model that options name: a server's address, a model, or the embedded one."""
    return (options.url or "") if options.entry.served else options.model or EMBEDDED_NAME


def shown_name(options: LoadOptions, engine: Engine) -> str:
    """The model as a person reads it: the one a server says it serves, else the one options name."""
    return engine.model_id if options.entry.served else named(options)


def switched_model(current: LoadOptions, answer: str) -> LoadOptions:
    """The options for the app's "load another model" answer: a server's http(s):// address, or a model
    (empty: the embedded one) on the local engine in use (after a server, or an engine that cannot run
    the model given, the default engine). The engine's own options stay while the engine does, but
    for those that name the old model."""
    answer = answer.strip()
    is_address = answer.lower().startswith(("http://", "https://"))
    engine = served_engine() if is_address else current.engine
    if not is_address and (ENGINES[engine].served or not ENGINES[engine].runs(answer)):
        engine = DEFAULT_ENGINE
    kept = {
        option.field: getattr(current, option.field)
        for option in ENGINES[engine].options
        if engine == current.engine and not option.names_model
    }
    named_model = {"url": answer} if is_address else {"model": answer or None}
    return LoadOptions(device=current.device, dtype=current.dtype, engine=engine, **kept, **named_model)


def recorded_model(
    model_id: str | None, engine_name: str | None, dtype: str | None = None, url: str | None = None
) -> dict[str, Any]:
    """LoadOptions' `model`, `engine` and `dtype` (and a server's `url`) for a model as traces and
    session files record it (the name shown, the engine's name, the dtype it ran in: a quantization
    name means the engine's own)."""
    entry = next((entry for entry in ENGINES.values() if entry.name == engine_name), ENGINES[DEFAULT_ENGINE])
    if entry.served:
        return {"model": None, "engine": entry.option, "url": url}
    return {
        "model": None if model_id == EMBEDDED_NAME else model_id,
        "engine": entry.option,
        "dtype": dtype if dtype in DTYPES else "auto",
    }


def served_engine() -> str:
    """The --engine that a server's address alone asks for."""
    return next(entry.option for entry in ENGINES.values() if entry.served)
