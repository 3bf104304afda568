"""The proposal strip above the candidates while a draft model runs ahead (speculative decoding): the
last round's K draft tokens, each ✓ accepted, ✗ rejected, · still to be judged or dropped (drafted
after a rejection), with the target's probability p and the draft's q where judged."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from decoding.core.state import DraftView
from decoding.core.tokens import escape_controls, token_label

MARKS = {
    "accepted": ("✓", "bold #5fd75f"),
    "rejected": ("✗", "bold #ff5f5f"),
    "pending": ("·", "dim"),
    "dropped": ("·", "dim strike"),
}


def strip_text(draft: DraftView) -> Text:
    text = Text()
    text.append(f"draft, {draft.tokens} a round: ", style="dim")
    if draft.note:  # a strategy it cannot share, or its own failure: the target steps alone
        return text.append(escape_controls(draft.note), style="yellow")
    if not draft.proposals:
        return text.append("no proposal yet (space steps)", style="dim")
    for index, (label, state, p, q) in enumerate(draft.proposals):
        mark, style = MARKS[state]
        if index:
            text.append("  ")
        text.append(f"{mark} ", style=style)
        text.append(token_label(label), style="bold" if state in ("accepted", "rejected") else "dim")
        if p is not None and q is not None:
            text.append(f" p={p:.2f} q={q:.2f}", style="dim")
    return text


class DraftStrip(Static):
    _shown: DraftView | None = None

    def show(self, draft: DraftView | None) -> None:
        self.display = draft is not None
        if draft is not None and draft != self._shown:
            self.update(strip_text(draft))
        self._shown = draft
