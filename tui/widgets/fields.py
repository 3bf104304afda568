"""Text fields whose editing keys act in the order they were typed.

Textual inserts a typed character as soon as the field gets its key, but runs a bound key (backspace,
delete, the arrows) only once that key has bubbled up to the app. Keys that arrive in one burst (tmux
send-keys, a paste of keys, a fast typist on a loaded machine) were applied out of order: ⌫ 7 on
"1.5" inserted the 7, then deleted it (Textual issue #6605). These fields run their own bindings at
once, in order; a key they do not bind goes on as before.
"""

from __future__ import annotations

from typing import Any

from textual import events
from textual.widget import Widget
from textual.widgets import Input, TextArea

from decoding.core.tokens import one_line


async def _ran_own_binding(widget: Widget, event: events.Key) -> bool:
    """Run `widget`'s own binding of the key now (the app ran priority bindings before forwarding it)."""
    for binding in widget._bindings.key_to_bindings.get(event.key, ()):
        if not binding.priority and await widget.app.run_action(binding.action, widget):
            event.stop()
            event.prevent_default()
            return True
    return False


class Field(Input):
    async def _on_key(self, event: events.Key) -> None:
        if not await _ran_own_binding(self, event):
            await super()._on_key(event)


class PromptField(Field):
    """The one-line prompt box: newlines and controls shown as visible escapes, never raw. Sent again
    unedited, the box stands for the prompt itself."""

    def __init__(self, prompt: str, **kwargs: Any) -> None:
        super().__init__(one_line(prompt), **kwargs)
        self._prompts = {one_line(prompt): prompt}  # the box's text -> the prompt it stands for
        self.border_title = "prompt · tab to edit, enter to run · ctrl+t chat"

    def show(self, prompt: str) -> None:
        self.value = one_line(prompt)
        self._prompts[self.value] = prompt

    def prompt_of(self, value: str) -> str:
        return self._prompts.get(value, value)


class MessageBox(TextArea):
    """The chat's message box (several lines)."""

    unsent = ""  # the last message taken: put back in the box if it is refused

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.border_title = "message · tab to edit, ctrl+s sends · ctrl+n new conversation · ctrl+t plain prompt"

    async def _on_key(self, event: events.Key) -> None:
        if not await _ran_own_binding(self, event):
            await super()._on_key(event)

    def take(self) -> str | None:
        """The message typed (None: nothing but blanks), the box emptied for the next one."""
        if not self.text.strip():
            return None
        self.unsent = self.text
        self.clear()
        return self.unsent

    def give_back(self) -> None:
        """A message that was not taken is not lost."""
        if not self.text:
            self.text = self.unsent
