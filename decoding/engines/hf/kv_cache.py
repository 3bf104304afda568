"""The transformers engine's KV cache: transformers' DynamicCache, each layer growing a block of
positions at a time.

transformers' DynamicLayer appends a token by concatenation: every step copies the whole layer into
a fresh tensor and frees the old one. With malloc keeping freed memory for the next tensors (see
`runtime.reuse_freed_memory`), those freed copies, each a little smaller than the next, could not be
reused: peak memory grew ~3.7 times the cache's own size per token. Here a step writes its token
into room already there, and the layer is copied once per block. On the CPU that room is mapped
from the kernel on its own rather than taken from malloc, so that a grown layer's old room goes
back at once instead of staying in the heap as a hole no larger room fits (2.6 times the cache's
size a token, measured on `tokenstep trace`).
"""

from __future__ import annotations

import mmap
from typing import Any

import torch
from transformers import DynamicCache, PretrainedConfig
from transformers.cache_utils import DynamicLayer

BLOCK = 256  # positions added at a time: SmolLM2-135M's float32 layers grow by 192 KiB each


class BlockLayer(DynamicLayer):
    """A DynamicLayer whose keys and values are views of buffers with room for a block more."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._room: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start = self.get_seq_length()
        end = start + key_states.shape[-2]
        if self._room is None or end > self._room[0].shape[-2] or self._room[0].shape[:-2] != key_states.shape[:-2]:
            assert self.keys is not None and self.values is not None, "initialized above"
            self._room = (_grown(self.keys, key_states, start, end), _grown(self.values, value_states, start, end))
        keys, values = self._room
        keys[..., start:end, :] = key_states
        values[..., start:end, :] = value_states
        self.keys, self.values = keys[..., :end, :], values[..., :end, :]
        return self.keys, self.values

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Beam search: each row continues from its parent row, copied within the same room."""
        end = self.get_seq_length()
        if self._room is None or end == 0 or len(beam_idx) != self._room[0].shape[0]:
            super().reorder_cache(beam_idx)
            self._room = None
            return
        order = beam_idx.to(self._room[0].device)
        for room in self._room:
            # A block at a time: the copy's scratch has one size for the whole search, so malloc
            # reuses it rather than leaving a hole each time the room grows.
            for start in range(0, end, BLOCK):
                part = room[:, :, start : min(end, start + BLOCK), :]
                part.copy_(part.index_select(0, order))
        keys, values = self._room
        self.keys, self.values = keys[..., :end, :], values[..., :end, :]

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        self._room = None  # the rows changed: the next update copies them into new room

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._room = None


def _grown(held: torch.Tensor, new: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Room for `end` positions rounded up to a block, holding the `start` positions already held."""
    shape = (*new.shape[:-2], -(-end // BLOCK) * BLOCK, new.shape[-1])
    room = _mapped_empty(shape, new.dtype) if new.device.type == "cpu" else new.new_empty(shape)
    if start:
        room[..., :start, :] = held[..., :start, :]
    return room


def _mapped_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor in memory of its own from the kernel, unmapped when the last view
    of it goes (the tensor holds the mapping). Pages count as resident only once written."""
    count = torch.Size(shape).numel()
    return torch.frombuffer(mmap.mmap(-1, max(count * dtype.itemsize, 1)), dtype=dtype, count=count).view(shape)


def block_cache(config: PretrainedConfig) -> DynamicCache:
    """A DynamicCache for `config`, its full-attention layers growing a block at a time (sliding-window
    and other layers stay transformers' own)."""
    cache = DynamicCache(config=config)
    cache.layers = [BlockLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
