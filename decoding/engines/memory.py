"""Will a model fit? Its weights counted from file headers only (a .gguf's tensor infos, safetensors
headers), against the memory free on the device, before anything is converted or loaded."""

from __future__ import annotations

from pathlib import Path
from struct import error as struct_error

from decoding.core.errors import LoadError
from decoding.core.json_text import parse_json
from decoding.engines.embedded import embedded_gguf

GGUF_HEADER_LIMIT = 1 << 24  # bytes of a safetensors header read (real ones are a few hundred KB)
LOAD_OVERHEAD = 1.2  # activations, the KV cache and the tokenizer on top of the weights


DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1, "nf4": 0.5}


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
