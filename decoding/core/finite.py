"""Which scores are finite (the tokens still in play), fast on the CPU.

torch's isfinite is not vectorized on the CPU: over a vocabulary of 49,152 it takes 127 µs against
numpy's 5 µs on the same memory, and a step of the whole sampler chain asks it a dozen times. numpy
reads a CPU tensor without a copy; other devices and dtypes numpy lacks (bfloat16) keep torch's.
"""

from __future__ import annotations

import numpy as np
import torch

_NUMPY_DTYPES = (torch.float32, torch.float64, torch.float16)


def _as_numpy(scores: torch.Tensor) -> np.ndarray | None:
    if scores.device.type != "cpu" or scores.dtype not in _NUMPY_DTYPES or scores.requires_grad:
        return None
    return scores.numpy()


def finite_count(scores: torch.Tensor) -> int:
    """How many of `scores` are finite."""
    values = _as_numpy(scores)
    return int(np.count_nonzero(np.isfinite(values))) if values is not None else int(torch.isfinite(scores).sum())


def finite_ids(scores: torch.Tensor) -> torch.Tensor:
    """The positions of the finite scores of a vector, ascending."""
    values = _as_numpy(scores)
    if values is None:
        return torch.isfinite(scores).nonzero()[:, 0]
    return torch.from_numpy(np.flatnonzero(np.isfinite(values))).to(torch.long)


def finite_mask(scores: torch.Tensor) -> torch.Tensor:
    """Which of `scores` are finite."""
    values = _as_numpy(scores)
    return torch.from_numpy(np.isfinite(values)) if values is not None else torch.isfinite(scores)
