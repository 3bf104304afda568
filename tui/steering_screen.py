"""The steering screen (key `S`): a vector added, times a scale, to one decoder layer's output while
stepping, made from a contrast pair (text toward, text away) or read from a .safetensors file.

Enter applies, ctrl+o steers no more, escape leaves it as it was. Back in the explorer, `-` and `+`
nudge the scale and the candidate panel moves, the unsteered probabilities beside the steered ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label

from decoding.core.errors import SettingsError
from decoding.core.steering import Steering

FIELDS = (
    ("toward", "toward (text A)"),
    ("away", "away from (text B)"),
    ("vector_file", "or a vector file (.safetensors)"),
    ("layer", "decoder layer"),
    ("scale", "scale"),
)


@dataclass(frozen=True)
class SteeringChoice:
    """What the screen ended with: a steering to apply, or None for no more steering."""

    steering: Steering | None


class SteeringScreen(ModalScreen[SteeringChoice | None]):
    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="steering.cancel"),
        Binding("ctrl+o", "off", "Steer no more", id="steering.off"),
    ]

    def __init__(self, current: Steering | None, layers: int | None) -> None:
        super().__init__()
        self.current, self.layer_count = current, layers

    def compose(self) -> ComposeResult:
        current = self.current
        values = {
            "toward": current.toward if current else "",
            "away": current.away if current else "",
            "vector_file": current.vector_file if current else "",
            "layer": str(current.layer) if current else str((self.layer_count or 2) // 2),
            "scale": f"{current.scale:g}" if current else "4",
        }
        layers = f" (0 to {self.layer_count - 1})" if self.layer_count else ""
        with Vertical(id="steering-dialog"):
            yield Label(f"Steering: v = mean output of layer L on A − the same on B; S·v added at L{layers}", id="steering-title")
            yield Label("enter applies · ctrl+o steers no more · escape cancels · then - and + nudge the scale", classes="dim")
            with Grid(id="steering-grid"):
                for name, label in FIELDS:
                    yield Label(label)
                    yield Input(values[name], id=f"steer-{name}", compact=True)
            yield Label("", classes="error", id="steering-error")

    def on_mount(self) -> None:
        self.query_one("#steer-toward", Input).focus()

    def on_input_submitted(self) -> None:
        try:
            steering = self.steering()
        except SettingsError as error:
            self.query_one("#steering-error", Label).update(Text(str(error)))  # the person's text, never markup
            return
        self.dismiss(SteeringChoice(steering))

    def steering(self) -> Steering:
        """The fields as a steering (SettingsError, one line, if they are not one)."""
        values = {name: self.query_one(f"#steer-{name}", Input).value for name, _ in FIELDS}
        try:
            layer = int(values["layer"])
        except ValueError:
            raise SettingsError(f"--steer-layer must be a layer's number (got {values['layer']!r}).") from None
        try:
            scale = float(values["scale"])
        except ValueError:
            raise SettingsError(f"--steer-scale must be a number (got {values['scale']!r}).") from None
        return Steering(layer, scale, values["toward"], values["away"], values["vector_file"].strip())

    def action_off(self) -> None:
        self.dismiss(SteeringChoice(None))

    def action_cancel(self) -> None:
        self.dismiss(None)
