"""Find and load a Hugging Face causal LM (Hub id, local folder, or .gguf file) for the transformers engine.

A GGUF file is de-quantized once (slow) and cached as safetensors under the user's cache folder.
Every failure a user can cause becomes a `LoadError` with a one-paragraph message.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from decoding.core.engine import Engine
from decoding.core.errors import LoadError
from decoding.core.files import file_digest
from decoding.engines.embedded import EMBEDDED_NAME, cache_root, embedded_gguf
from decoding.engines.memory import check_fits
from decoding.engines.runtime import resolve_dtype

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
QUANTIZED = {"8bit": "int8", "4bit": "nf4"}  # --load-in: what each weight is stored as

Progress = Callable[[str], object]


def check_fits_on_cpu(model_name: str | None, dtype_name: str, placement: Placement) -> None:
    """The memory check before torch is imported, for a load on the CPU (auto: float32 there)."""
    placement.check_fits(model_name, "cpu", "float32" if dtype_name == "auto" else dtype_name)


def load_transformers(
    model_name: str | None,
    device: str,
    dtype_name: str,
    placement: Placement,
    progress: Progress,
) -> Engine:
    dtype = resolve_dtype(dtype_name, device)
    computed_in = str(dtype).removeprefix("torch.")
    placement.check_fits(model_name, device, computed_in)  # before a .gguf converts or a weight is read
    progress("importing torch and transformers")
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as transformers_logging

    from decoding.engines.hf.engine import TransformersEngine

    # Progress goes through `progress`; transformers' own bars and advice would garble a terminal app.
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    hub_logging.set_verbosity_error()  # its retry chatter while offline

    source, model_id = _locate(model_name, progress)
    progress(f"loading {model_id} on {device} ({placement.stored(computed_in)})")
    model, tokenizer = _load_pretrained(source, model_id, device, dtype, placement.arguments(device, dtype))
    return TransformersEngine(model, tokenizer, model_id=model_id)


@dataclass(frozen=True)
class Placement:
    """--device-map, --max-memory and --load-in: where the layers go and how they are stored."""

    device_map: str | None = None
    load_in: str | None = None
    max_memory: dict[str, str] | None = None  # with device_map "auto": a cap per device ("cpu": "200MB")

    def __post_init__(self) -> None:
        if self.device_map not in (None, "auto"):
            raise LoadError(f"--device-map only accepts 'auto' (got {self.device_map!r}).")
        if self.load_in not in (None, *QUANTIZED):
            raise LoadError(f"--load-in must be one of {', '.join(QUANTIZED)} (got {self.load_in!r}).")
        if self.load_in and self.device_map:
            raise LoadError("--load-in and --device-map cannot go together: the quantizers here cannot offload layers.")

    def stored(self, dtype: str) -> str:
        """What each weight is stored as: the quantization's type, else `dtype`."""
        return QUANTIZED[self.load_in] if self.load_in else dtype

    def check_fits(self, model_name: str | None, device: str, dtype: str) -> None:
        """Refuse a model too big for `device` in `dtype` (offloading is for models larger than memory)."""
        if self.device_map != "auto":
            check_fits(model_name, device, self.stored(dtype))

    def arguments(self, device: str, dtype) -> dict[str, Any]:
        """from_pretrained's placement and quantization arguments: accelerate's device map (layers
        that do not fit go to the CPU, then to disk), or bitsandbytes' config: LLM.int8() for 8 bits
        (the same greedy tokens as float32 on the embedded model), NF4 for 4 bits, on the CPU or CUDA.
        (torchao's int8 ran faster on the CPU, but transformers imports torchao on every load once it
        is installed: 1.3 s more for every start.)"""
        if self.device_map == "auto":
            offload = cache_root() / "offload"
            return {
                "device_map": "auto",
                "offload_folder": str(offload),
                **({"max_memory": self.max_memory} if self.max_memory else {}),
            }
        if not self.load_in:
            return {}
        try:
            import bitsandbytes  # noqa: F401  checked here: transformers' own message is long
            from transformers import BitsAndBytesConfig
        except ImportError as error:
            raise LoadError(f"--load-in {self.load_in} needs {error.name}: pip install 'tokenstep[quant]'.") from None
        # bitsandbytes says at each forward that it casts float32 inputs to float16: it is how int8 works
        warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
        four = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": dtype}
        config = BitsAndBytesConfig(**(four if self.load_in == "4bit" else {"load_in_8bit": True}))
        return {"quantization_config": config, "device_map": {"": device}}


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
