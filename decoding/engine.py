"""The one interface between a model and the rest of tokenstep.

Strategies, the session and the app only talk to an `Engine`, so other back ends (llama.cpp, an
inference server) can be added without touching them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch


class Engine(Protocol):
    name: str  # "transformers", ...
    model_id: str  # what the user asked for, shown in traces and the status line
    device: str
    dtype: str
    vocab_size: int  # width of the logits vector
    context_limit: int  # most tokens the model can attend to
    eos_token_ids: frozenset[int]
    weights_digest: str  # tells two checkpoints (or dtypes) apart: their numbers differ
    can_look_ahead: bool  # whether detach_last/attach work (work ahead is skipped where not)
    can_beam_search: bool  # whether side_by_side() works
    can_fork: bool  # whether fork() works

    def encode(self, text: str) -> list[int]:
        """Token ids of a prompt, as `generate()` would be given them."""

    def decode(self, ids: list[int]) -> str:
        """Text of a token sequence (multi-token characters come out whole)."""

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes one token stands for (may be part of a UTF-8 character)."""

    @property
    def cached_length(self) -> int:
        """How many tokens the KV cache holds."""

    def feed(self, ids: list[int]) -> torch.Tensor:
        """Run `ids` after the cached tokens; return the last position's logits (1-D float32).

        On failure the cache is left as it was before the call.
        """

    def crop(self, length: int) -> None:
        """Drop cached tokens past `length` (O(1) model work: no recomputation)."""

    def detach_last(self, count: int) -> Any:
        """Remove the last `count` cached tokens and return them, to `attach` again later."""

    def attach(self, tail: Any) -> None:
        """Append cached tokens returned by `detach_last` (no model work)."""

    def fork(self) -> Engine:
        """The same model with a cache of its own (for work beside a session, such as a comparison)."""

    def side_by_side(self) -> Any:
        """A runner for equal-length sequences stepped together on their own cache: `start(sequences)`
        and `feed(one token per sequence)` return one row of logits per sequence; `reorder(rows)`."""


def decode_continuation(engine: Engine, prefix_ids: list[int], ids: list[int] | tuple[int, ...], prefix_text: str | None = None) -> str:
    """The text `ids` add after `prefix_ids`, decoded together with the prefix so a character split
    across the boundary comes out whole. `prefix_text`: the prefix decoded, if the caller has it."""
    prefix_text = engine.decode(prefix_ids) if prefix_text is None else prefix_text
    full = engine.decode(list(prefix_ids) + list(ids))
    return full[len(prefix_text) :] if full.startswith(prefix_text) else engine.decode(list(ids))
