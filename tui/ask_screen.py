"""Ask for one line of text: another model to load (key `m`), text to force token by token (key `f`)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label

from tui.widgets.fields import Field

MODEL_QUESTION = "Model to load: a Hub id, a local folder, a .gguf file or a server's http:// address (empty: the embedded model)"
MODEL_EXAMPLE = "HuggingFaceTB/SmolLM2-135M-Instruct"


class AskScreen(ModalScreen[str | None]):
    """Dismissed with the text typed (enter), or None (escape)."""

    AUTO_FOCUS = "Input"
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="ask.cancel")]

    def __init__(self, question: str, placeholder: str = "", strip: bool = True) -> None:
        super().__init__()
        self.question, self.placeholder, self.strip = question, placeholder, strip

    def compose(self) -> ComposeResult:
        with Vertical(id="ask-dialog"):
            yield Label(self.question)
            yield Field(placeholder=self.placeholder, id="ask-input")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() if self.strip else event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)
