"""The status line: where the path stands and how fast the model runs."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from decoding.core.state import BeamSnapshot, SecondView, Snapshot, Timing


class StatusLine(Static):
    """Two lines (three with a second model), each cut short rather than wrapped: a wrapped line would
    push the next one out of sight."""

    _line_count = 2

    def show(self, snapshot: Snapshot, timing: Timing, model: str) -> None:
        at = snapshot.cursor
        index = None if not snapshot.path else len(snapshot.path) - 1 if at is None else at
        parts = [f"step {len(snapshot.path)}" if at is None else f"looking at step {at + 1} of {len(snapshot.path)}"]
        if index is not None:
            token = snapshot.path[index]
            rank = "beyond the known" if token.rank is None else token.rank + 1
            parts.append(f"{'last' if at is None else 'chosen'} p={token.prob:.2%} rank {rank}")
        distribution = snapshot.distribution if at is None else snapshot.panels[at]
        if distribution:
            bound = "=" if distribution.complete else "≥"  # partial scores: a lower bound
            parts.append(f"H{bound}{distribution.entropy:.2f} nats")
        parts.append(f"logp={snapshot.sequence_logprob:.2f}")
        if snapshot.constraint is not None:
            parts.append(f"grammar: {snapshot.constraint}")
        if snapshot.draft is not None and snapshot.draft.acceptance is not None:
            draft = snapshot.draft
            parts.append(f"draft {draft.acceptance:.0%} accepted, {draft.tokens_per_pass:.1f} tokens a target pass")
        if snapshot.steering:
            parts.append(snapshot.steering)  # its texts escaped by Steering.describe
        if timing.latency_ms is not None:
            parts.append(f"{timing.latency_ms:.0f} ms")
        if timing.tokens_per_s is not None:
            parts.append(f"{timing.tokens_per_s:.1f} tok/s")
        lines = [" │ ".join(parts), f"{model} │ {snapshot.strategy.describe()}"]
        if snapshot.second is not None:
            lines.append(_second_line(snapshot, index))
        self._show(lines)

    def _show(self, lines: list[str]) -> None:
        """The screen is laid out again only when the number of lines changes (not at every frame of play)."""
        if len(lines) != self._line_count:
            self._line_count = len(lines)
            self.styles.height = self._line_count
        self.update(Text("\n".join(lines)), layout=False)

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
        self._show([" │ ".join(parts), f"{model} │ {beam.strategy.describe()}"])


def _second_line(snapshot: Snapshot, index: int | None) -> str:
    """The second model at that step: its log-probability against the first's, the KL divergence of
    the two distributions, where their greedy choices first differ; then its name (the values come
    first: a long name is what is cut)."""
    second = snapshot.second
    assert second is not None
    if second.note:  # it names the model
        return f"second model {second.note}"
    return f"second model {_second_values(second, index)} │ {second.model}"


def _second_values(second: SecondView, index: int | None) -> str:
    if index is None:
        return "scores each step"
    pair = second.path[index] if index < len(second.path) else None
    if pair is None:
        return "catching up"
    difference = "?" if pair.difference is None else f"{pair.difference:+.3f}"
    kl = "" if pair.kl is None else f" KL={pair.kl:.3f}"
    diverge = second.first_divergence
    where = "greedy agree so far" if diverge is None else f"greedy first differ at step {diverge + 1}"
    return f"Δlogp={difference}{kl} │ {where}"
