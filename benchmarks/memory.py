"""17. Memory per generated token over 1,000 greedy steps on the embedded model, against the KV
cache's own size per token (measured from the cache's tensors in the same run).

Past the last few steps, a step keeps its panel and not its full-vocabulary scores (196 KB each
here, twice over with their log-probabilities), so what grows is the cache, and a few KB a step of
panels, tokens and sampler states.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc

import psutil
from common import PROMPT, Result, load, table

WARM_UP, STEPS = 50, 1000


def resident_mb() -> float:
    """Resident memory once the allocator has handed its free pages back: glibc keeps the blocks
    the growing KV cache leaves behind (each step copies it into a larger one), which is allocator
    slack, not memory held."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # glibc only
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return psutil.Process().memory_info().rss / 2**20


def used_mb(engine) -> float:
    """GPU memory in use on CUDA (nothing per step may stay there beyond the cache), else the process's."""
    import torch

    if engine.device.startswith("cuda"):
        return torch.cuda.memory_allocated() / 2**20
    return resident_mb()


def run(engine=None, label: str = "") -> list[Result]:
    from decoding.search.session import Session

    session = Session(engine or load())  # greedy
    session.reset(PROMPT)
    for _ in range(WARM_UP):
        session.step()
    before, cache_before = used_mb(session.engine), cache_mb(session.engine)
    for _ in range(STEPS):
        session.step()
    grown, cache_grown = used_mb(session.engine) - before, cache_mb(session.engine) - cache_before
    per_token, cache_per_token = grown / STEPS, cache_grown / STEPS
    table(
        f"Memory over {STEPS} greedy steps, MB a token{label}",
        ["process", "KV cache", "ratio", "full scores a step (not kept)"],
        [[per_token, cache_per_token, per_token / cache_per_token, session.next.scores.values.nbytes / 2**20]],
    )
    return [
        Result(
            f"memory_per_token_vs_kv_cache{label}",
            per_token / cache_per_token,
            "<",
            1.5,
            measured=f"the session loop's memory over {STEPS} greedy steps: {1024 * per_token:.1f} KiB a token",
            baseline=f"the KV cache's tensors: {1024 * cache_per_token:.1f} KiB a token",
        ),
        beam_memory(session.engine, label),
    ]


BEAMS, BEAM_STEPS = 5, 256


def beam_memory(engine, label: str) -> Result:
    """The same for a beam search: memory a step against its B beams' KV cache growth a step."""
    from decoding.core.settings import Strategy
    from decoding.search.beam import BeamSearch

    strategy = Strategy(kind="beam", num_beams=BEAMS, early_stopping="never")  # runs to its limit
    search = BeamSearch(engine, strategy, engine.encode(PROMPT), max_new_tokens=BEAM_STEPS + WARM_UP + 1)
    for _ in range(WARM_UP):
        search.step()
    runner = search._runner
    before, cache_before = used_mb(engine), cache_mb(runner)
    steps = 0
    while steps < BEAM_STEPS and not search.ended:
        search.step()
        steps += 1
    grown, cache_grown = used_mb(engine) - before, cache_mb(runner) - cache_before
    table(
        f"Memory over {steps} beam search steps ({BEAMS} beams), MB a step{label}",
        ["process", "beams' KV cache", "ratio"],
        [[grown / steps, cache_grown / steps, grown / cache_grown]],
    )
    return Result(
        f"beam_memory_per_step_vs_kv_cache{label}",
        grown / cache_grown,
        "<",
        1.5,
        measured=f"a beam search's memory over {steps} steps ({BEAMS} beams): {1024 * grown / steps:.0f} KiB a step",
        baseline=f"its beams' KV cache: {1024 * cache_grown / steps:.0f} KiB a step",
    )


def cache_mb(holder) -> float:
    """The KV cache's tensors, of an engine or of a beam search's runner."""
    layers = holder._cache.layers
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in layers if layer.keys is not None) / 2**20
