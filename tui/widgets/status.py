"""The status line: where the path stands and how fast the model runs."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from decoding.state import BeamSnapshot, Snapshot, Timing


class StatusLine(Static):
    def show(self, snapshot: Snapshot, timing: Timing, model: str) -> None:
        at = snapshot.cursor
        parts = [f"step {len(snapshot.path)}" if at is None else f"looking at step {at + 1} of {len(snapshot.path)}"]
        if snapshot.path:
            index = len(snapshot.path) - 1 if at is None else at
            token = snapshot.path[index]
            rank = "beyond the known" if token.rank is None else token.rank + 1
            parts.append(f"{'last' if at is None else 'chosen'} p={token.prob:.2%} rank {rank}")
            if snapshot.second is not None:
                parts.append(_second_part(snapshot, index))
        distribution = snapshot.distribution if at is None else snapshot.panels[at]
        if distribution:
            bound = "=" if distribution.complete else "≥"  # partial scores: a lower bound
            parts.append(f"H{bound}{distribution.entropy:.2f} nats")
        parts.append(f"logp={snapshot.sequence_logprob:.2f}")
        if snapshot.constraint is not None:
            parts.append(f"grammar: {snapshot.constraint}")
        if timing.latency_ms is not None:
            parts.append(f"{timing.latency_ms:.0f} ms")
        if timing.tokens_per_s is not None:
            parts.append(f"{timing.tokens_per_s:.1f} tok/s")
        self.update(Text(" │ ".join(parts) + "\n" + f"{model} │ {snapshot.strategy.describe()}"), layout=False)  # 2 lines, always

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
        self.update(Text(" │ ".join(parts) + "\n" + f"{model} │ {beam.strategy.describe()}"), layout=False)


def _second_part(snapshot: Snapshot, index: int) -> str:
    """The second model at that step: its log-probability against the first's, the KL divergence of
    the two distributions, and where their greedy choices first differ."""
    second = snapshot.second
    assert second is not None
    if second.note:
        return second.note
    pair = second.path[index] if index < len(second.path) else None
    if pair is None:
        return "second model: catching up"
    difference = "?" if pair.difference is None else f"{pair.difference:+.3f}"
    kl = "" if pair.kl is None else f" KL={pair.kl:.3f}"
    diverge = second.first_divergence
    where = "greedy agree so far" if diverge is None else f"greedy first differ at step {diverge + 1}"
    return f"second Δlogp={difference}{kl} · {where}"
