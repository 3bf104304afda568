"""Steering (activation addition): a vector added, times a scale, to the output of one decoder layer
at every position while stepping. Pure Python: the command line checks it before torch loads; the
transformers engine applies it (decoding.engines.hf.steering).

The vector is made from a contrast pair, `v = mean over positions of layer L's output on text A -
the same on text B`, or read from a file (a .safetensors of one vector, as repeng or steering-vectors
save them).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from decoding.core.errors import SettingsError
from decoding.core.tokens import one_line

MAX_SCALE = 1000.0
MAX_TEXT = 10_000  # characters of a contrast text


@dataclass(frozen=True)
class Steering:
    layer: int
    scale: float
    toward: str = ""  # text A
    away: str = ""  # text B
    vector_file: str = ""  # or the vector itself, from a file

    def __post_init__(self) -> None:
        if not isinstance(self.layer, int) or isinstance(self.layer, bool) or self.layer < 0:
            raise SettingsError(f"--steer-layer must be a layer's number, 0 or more (got {self.layer!r}).")
        if not isinstance(self.scale, (int, float)) or isinstance(self.scale, bool) or not math.isfinite(self.scale):
            raise SettingsError(f"--steer-scale must be a number (got {self.scale!r}).")
        if abs(self.scale) > MAX_SCALE:
            raise SettingsError(f"--steer-scale must be from {-MAX_SCALE:g} to {MAX_SCALE:g} (got {self.scale:g}).")
        if not all(isinstance(text, str) for text in (self.toward, self.away, self.vector_file)):
            raise SettingsError("the steering's texts and file must be text.")
        if self.vector_file and (self.toward or self.away):
            raise SettingsError("Steer by a vector file or by a contrast pair (--steer-toward, --steer-away), not both.")
        if not self.vector_file and not (self.toward and self.away):
            raise SettingsError("Steering needs --steer-toward and --steer-away (a contrast pair), or --steer-vector FILE.")
        if max(len(self.toward), len(self.away)) > MAX_TEXT:
            raise SettingsError(f"A steering text must be at most {MAX_TEXT:,} characters.")

    def with_scale(self, scale: float) -> Steering:
        return Steering(self.layer, scale, self.toward, self.away, self.vector_file)

    def describe(self) -> str:
        """For a status line: 'steer L6 x4 toward "love" away "hate"'."""
        made = (
            f"from {one_line(self.vector_file)[-40:]}"
            if self.vector_file
            else f"toward {one_line(self.toward)[:24]!r} away {one_line(self.away)[:24]!r}"
        )
        return f"steer L{self.layer} ×{self.scale:g} {made}"

    def record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: Any) -> Steering:
        """As a trace or a session file holds it (checked: a file may hold anything)."""
        if not isinstance(record, dict) or set(record) - {"layer", "scale", "toward", "away", "vector_file"}:
            raise SettingsError("the recorded steering is not one tokenstep wrote.")
        try:
            return cls(**record)
        except TypeError:
            raise SettingsError("the recorded steering is not one tokenstep wrote.") from None
