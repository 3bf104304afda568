"""Text fields whose editing keys act in the order they were typed.

Textual inserts a typed character as soon as the field gets its key, but runs a bound key (backspace,
delete, the arrows) only once that key has bubbled up to the app. Keys that arrive in one burst (tmux
send-keys, a paste of keys, a fast typist on a loaded machine) were applied out of order: ⌫ 7 on
"1.5" inserted the 7, then deleted it (Textual issue #6605). These fields run their own bindings at
once, in order; a key they do not bind goes on as before.
"""

from __future__ import annotations

from textual import events
from textual.widget import Widget
from textual.widgets import Input, TextArea


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


class MessageBox(TextArea):
    async def _on_key(self, event: events.Key) -> None:
        if not await _ran_own_binding(self, event):
            await super()._on_key(event)
