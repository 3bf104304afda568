"""Where and how a local model runs: the device and dtype asked for, and the collector and malloc
settings that keep loading and stepping fast."""

from __future__ import annotations

import ctypes
import gc
from contextlib import contextmanager, suppress

from decoding.core.errors import LoadError

DEVICES_HELP = "auto, cpu, cuda, cuda:N or mps"
DTYPES = ("auto", "float32", "bfloat16", "float16")
# glibc's mallopt parameters (malloc.h) and the largest mmap threshold it accepts on 64-bit systems
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX = -1, -3, 32 * 2**20
TRIM_THRESHOLD = 2**30  # free memory kept at the top of the heap for the next pass, not given back


def valid_device_name(name: str) -> bool:
    if name in ("auto", "cpu", "cuda", "mps"):
        return True
    prefix, _, index = name.partition(":")
    return prefix == "cuda" and index.isdigit()


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
