"""The status line: where the path stands and how fast the model runs."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from decoding.state import BeamSnapshot, Snapshot, Timing


class StatusLine(Static):
    def show(self, snapshot: Snapshot, timing: Timing, model: str) -> None:
        parts = [f"step {len(snapshot.path)}"]
        if snapshot.path:
            last = snapshot.path[-1]
            rank = "beyond the known" if last.rank is None else last.rank + 1
            parts.append(f"last p={last.prob:.2%} rank {rank}")
        if snapshot.distribution:
            bound = "=" if snapshot.distribution.complete else "≥"  # partial scores: a lower bound
            parts.append(f"H{bound}{snapshot.distribution.entropy:.2f} nats")
        parts.append(f"logp={snapshot.sequence_logprob:.2f}")
        if timing.latency_ms is not None:
            parts.append(f"{timing.latency_ms:.0f} ms")
        if timing.tokens_per_s is not None:
            parts.append(f"{timing.tokens_per_s:.1f} tok/s")
        self.update(Text(" │ ".join(parts) + "\n" + f"{model} │ {snapshot.strategy.describe()}"))

    def show_beam(self, beam: BeamSnapshot, timing: Timing, model: str) -> None:
        parts = [
            f"beam step {beam.steps} of at most {beam.max_new_tokens}",
            f"{len(beam.beams)} live",
            f"{len(beam.finished)} finished",
        ]
        if beam.best is not None:
            parts.append(f"best finished {beam.best.penalised:.3f}")
        if beam.ended:
            parts.append("ended")
        if timing.latency_ms is not None:
            parts.append(f"{timing.latency_ms:.0f} ms")
        if timing.tokens_per_s is not None:
            parts.append(f"{timing.tokens_per_s:.1f} steps/s")
        self.update(Text(" │ ".join(parts) + "\n" + f"{model} │ {beam.strategy.describe()}"))
