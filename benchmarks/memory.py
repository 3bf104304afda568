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


def run() -> list[Result]:
    from decoding.session import Session

    session = Session(load())  # greedy
    session.reset(PROMPT)
    for _ in range(WARM_UP):
        session.step()
    before, cache_before = resident_mb(), cache_mb(session.engine)
    for _ in range(STEPS):
        session.step()
    grown, cache_grown = resident_mb() - before, cache_mb(session.engine) - cache_before
    per_token, cache_per_token = grown / STEPS, cache_grown / STEPS
    table(
        f"Memory over {STEPS} greedy steps, MB a token",
        ["process", "KV cache", "ratio", "full scores a step (not kept)"],
        [[per_token, cache_per_token, per_token / cache_per_token, session.next.scores.values.nbytes / 2**20]],
    )
    return [Result("memory_per_token_vs_kv_cache", per_token / cache_per_token, "<", 1.5)]


def cache_mb(engine) -> float:
    layers = engine._cache.layers
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in layers if layer.keys is not None) / 2**20
