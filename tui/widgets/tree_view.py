"""The tree panel (key `t`): every branch walked, compactly; enter jumps to the highlighted one.

Each row is a run of tokens since a fork (a root's row is its prompt), indented by how many forks lie
above it, with the sequence log-probability at its end and how its first token was made. ● marks where
the session stands; rows on the current path are bold. A session file from another model is listed
below, read-only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.widgets import Static

from decoding.core.tokens import one_line
from decoding.explorer.commands import DeleteBranch, Jump
from decoding.explorer.panels import TreeRows
from decoding.search.tree import Branch
from tui.messages import RunCommand

if TYPE_CHECKING:
    from decoding.explorer.explorer import View


class TreePanel(Static, can_focus=True):
    COMPONENT_CLASSES = {"tree-panel--highlight"}
    BINDINGS = [
        Binding("up", "move(-1)", show=False, id="tree.up"),
        Binding("down", "move(1)", show=False, id="tree.down"),
        Binding("enter", "jump", "Jump here", id="tree.jump"),
        Binding("delete,x", "delete", "Delete branch", id="tree.delete"),
    ]

    rows: tuple[Branch, ...] = ()
    foreign: tuple[Branch, ...] = ()
    foreign_model = ""
    cursor = 0
    doomed: int | None = None  # the row x was pressed on once: a second x deletes it

    def show(self, value: TreeRows, view: View | None = None) -> None:
        rows, foreign, foreign_model = value.rows, value.foreign, value.foreign_model
        first_show = not self.rows
        if rows != self.rows:
            self.doomed = None  # the rows moved: a second x must not hit another branch
        self.rows, self.foreign, self.foreign_model = rows, foreign, foreign_model
        if first_show:  # start on where the session stands
            self.cursor = next((i for i, row in enumerate(rows) if row.current), 0)
        self._paint()

    def on_resize(self) -> None:
        self._paint()  # the rows are cut to the panel's width, which is only known once it is laid out

    def action_move(self, delta: int) -> None:
        self.cursor = max(0, min(self.cursor + delta, len(self.rows) + len(self.foreign) - 1))
        self._paint()

    def on_key(self, event) -> None:
        if event.key not in ("x", "delete") and self.doomed is not None:
            self.doomed = None  # any other key keeps the branch
            self._paint()

    def action_jump(self) -> None:
        if self.cursor < len(self.rows):
            self.post_message(RunCommand(Jump(self.rows[self.cursor].end)))
        elif self.foreign:
            self.notify("That branch is from another model's session: read-only.", severity="warning")

    def action_delete(self) -> None:
        """The first x asks, the second deletes: there is no undo for a deletion."""
        if self.cursor >= len(self.rows):
            return
        if self.doomed == self.cursor:
            self.doomed = None
            self.post_message(RunCommand(DeleteBranch(self.rows[self.cursor].node_ids[0])))
        else:
            self.doomed = self.cursor
        self._paint()

    def _rows_below(self, index: int) -> int:
        """How many rows hang below row `index` (deleted with it)."""
        level, count = self.rows[index].level, 0
        for row in self.rows[index + 1 :]:
            if row.level <= level:
                break
            count += 1
        return count

    def _paint(self) -> None:
        width = max(20, (self.content_size.width or 80) - 30)  # what the numbers and "how" leave
        lines = [Text("branches (↑ ↓ move, enter jumps, x deletes, [ ] siblings, t closes)", style="dim")]
        if self.doomed is not None and self.doomed < len(self.rows):
            below = self._rows_below(self.doomed)
            lines.append(
                Text(
                    f"x again deletes the highlighted branch{f' and the {below} below it' if below else ''}; any other key keeps it",
                    style="bold yellow",
                )
            )
        highlight = self.get_component_rich_style("tree-panel--highlight")
        for index, row in enumerate(self.rows):
            lines.append(_line(row, width, highlight if index == self.cursor else None))
        if self.foreign:
            lines.append(Text(f"\nread-only: made with {one_line(self.foreign_model)}, another model", style="bold yellow"))
            for index, row in enumerate(self.foreign, start=len(self.rows)):
                lines.append(_line(row, width, highlight if index == self.cursor else None, style="dim"))
        self.update(Text("\n").join(lines))


def _line(row: Branch, width: int, highlight: Style | None, style: str = "") -> Text:
    indent = "  " * row.level
    text = row.text if len(indent + row.text) <= width else row.text[: max(1, width - len(indent) - 1)] + "…"
    line = Text(no_wrap=True, overflow="ellipsis")
    line.append(indent + ("● " if row.current else "  "), style="cyan")
    line.append(text.ljust(max(0, width - len(indent))), style=style or ("bold" if row.on_path else ""))
    line.append(f" {row.logprob:8.2f}  {one_line(row.made_by)[:14]}", style=style or "dim")
    if highlight is not None:
        line.stylize(highlight)
    return line
