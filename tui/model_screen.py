"""Ask for another model after a failed load (key `m`)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label


class ModelScreen(ModalScreen[str | None]):
    AUTO_FOCUS = "Input"
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="model.cancel")]

    def compose(self) -> ComposeResult:
        with Vertical(id="model-dialog"):
            yield Label("Model to load: a Hub id, a local folder or a .gguf file (empty: the embedded model)")
            yield Input(placeholder="HuggingFaceTB/SmolLM2-135M-Instruct", id="model-input")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip())

    def action_cancel(self) -> None:
        self.dismiss(None)
