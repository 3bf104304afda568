"""The strategy settings (key `s`): every field checked, mistakes shown beside the field, old settings kept."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select

from decoding.core.errors import SettingsError, TokenstepError
from decoding.core.files import read_text_file
from decoding.core.samplers import Sampler, in_order
from decoding.core.settings import (
    CONSTRAINT_KINDS,
    STRATEGY_KINDS,
    Constraint,
    Strategy,
    chain_order,
    chain_problem,
    check_constraint,
    choices_problem,
    field_problems,
)
from tui.widgets.fields import Field

TextField = tuple[str, str, Callable[[str], Any], Callable[[Any], str]]


def text_fields() -> list[TextField]:
    """(setting, label, parser, shown): each text field of the form, how its text becomes a value and
    a value its text. The samplers come from their registry: the warpers beside the seed, then the
    other processors, then the chain's order."""

    def of(samplers: list[Sampler]) -> list[TextField]:
        return [(sampler.name, sampler.label, sampler.kind, sampler.show) for sampler in samplers]

    return [
        *of(in_order(sampling_only=True)),
        ("seed", "seed", int, str),
        *of(in_order(sampling_only=False)),
        ("samplers", "chain order (alt+↑/↓ moves a stage)", chain_order, ";".join),
        ("num_beams", "beams (beam search)", int, str),
        ("length_penalty", "length penalty (beam search)", float, str),
        ("choices", "candidates shown", int, str),
    ]


def default_chain_names() -> list[str]:
    """generate()'s order, by the names the chain-order field takes."""
    return [stage.chain_name for stage in [*in_order(sampling_only=False), *in_order(sampling_only=True)] if not stage.part_of]


CONSTRAINT_CHOICES = [("none", "none"), *((kind, kind) for kind in CONSTRAINT_KINDS)]
EARLY_STOPPING_VALUES = {"false": False, "true": True, "never": "never"}
EARLY_STOPPING_CHOICES = [(text, text) for text in EARLY_STOPPING_VALUES]


@dataclass(frozen=True)
class Settings:
    strategy: Strategy
    choices: int


class SettingsScreen(ModalScreen[Settings | None]):
    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="settings.cancel"),
        Binding("alt+up", "move_stage(-1)", "Stage earlier", show=False, id="settings.stage_earlier"),
        Binding("alt+down", "move_stage(1)", "Stage later", show=False, id="settings.stage_later"),
    ]

    def __init__(self, current: Settings, field: str | None = None) -> None:
        """`field`: the one focused at first (enter applies at once); the first one if None."""
        super().__init__()
        self.fields = text_fields()
        self.current, self.first_field = current, field or self.fields[0][0]

    def compose(self) -> ComposeResult:
        values = {**self.current.strategy.as_dict(), "choices": self.current.choices}
        with Vertical(id="settings"):
            yield Label("Strategy settings  (enter applies, escape cancels)", id="settings-title")
            # taller than most terminals: the fields scroll to the one focused, the button stays in view
            with VerticalScroll(id="settings-fields"), Grid(id="settings-grid"):
                yield Label("strategy")
                yield Select(
                    [(kind, kind) for kind in STRATEGY_KINDS], value=values["kind"], allow_blank=False, id="kind", compact=True
                )
                yield Label("", classes="error", id="kind-error")
                for name, label, _, shown in self.fields:
                    yield Label(label)
                    yield Field(shown(values[name]), id=name, select_on_focus=False, compact=True)
                    yield Label("", classes="error", id=f"{name}-error")
                    if name == "length_penalty":
                        yield Label("early stopping (beam search)")
                        yield Select(
                            EARLY_STOPPING_CHOICES,
                            value=str(values["early_stopping"]).lower(),
                            allow_blank=False,
                            id="early_stopping",
                            compact=True,
                        )
                        yield Label("", classes="error", id="early_stopping-error")
                constraint = self.current.strategy.constraint
                yield Label("constraint (xgrammar)")
                yield Select(
                    CONSTRAINT_CHOICES,
                    value=constraint.kind if constraint else "none",
                    allow_blank=False,
                    id="constraint_kind",
                    compact=True,
                )
                yield Label("", classes="error")
                yield Label("  its pattern, file or text")
                yield Field(constraint.source if constraint else "", id="constraint_source", select_on_focus=False, compact=True)
                yield Label("", classes="error", id="constraint-error")
            yield Button("Apply", variant="primary", id="apply")

    def on_mount(self) -> None:
        self.query_one(f"#{self.first_field}", Input).focus()

    def on_input_submitted(self) -> None:
        self.apply()

    def on_button_pressed(self) -> None:
        self.apply()

    def action_move_stage(self, by: int) -> None:
        """In the chain-order field: swap the stage under the cursor with the one before or after it.
        An empty field (generate()'s order) is first filled in with that order."""
        field = self.query_one("#samplers", Input)
        if self.focused is not field:
            return
        names = [name for name in field.value.split(";") if name.strip()] or default_chain_names()
        at = min(field.value[: field.cursor_position].count(";"), len(names) - 1) if field.value.strip() else 0
        to = at + by
        if not names or not 0 <= to < len(names):
            return
        names[at], names[to] = names[to], names[at]
        field.value = ";".join(names)
        field.cursor_position = len(";".join(names[:to]))

    def action_cancel(self) -> None:
        self.dismiss(None)

    def apply(self) -> None:
        """Dismiss with the new settings, or show beside each field what is wrong and keep the screen open."""
        current = {**self.current.strategy.as_dict(), "choices": self.current.choices}
        values = {
            "kind": self.query_one("#kind", Select).value,
            "early_stopping": EARLY_STOPPING_VALUES[str(self.query_one("#early_stopping", Select).value)],
            "suppress_tokens": current["suppress_tokens"],
        }
        problems: dict[str, str] = {}
        for name, _, parse, _ in self.fields:
            try:
                values[name] = parse(self.query_one(f"#{name}", Input).value.strip())
            except ValueError as error:
                values[name] = current[name]  # so the other fields can still be checked
                problems[name] = f"not a {'whole number' if parse is int else 'number' if parse is float else str(error)}"
        values["constraint"], constraint_problem = self._constraint()
        if constraint_problem:
            problems["constraint"] = constraint_problem
        problems = {**field_problems(SimpleNamespace(**values)), **problems}
        if "choices" not in problems and (problem := choices_problem(values["choices"])):
            problems["choices"] = problem
        if not problems:
            choices = values.pop("choices")
            try:
                self.dismiss(Settings(Strategy(**values), choices))
                return
            except SettingsError as error:  # what only the whole strategy can tell: the chain's stages
                problems["samplers"] = chain_problem(SimpleNamespace(**values)) or str(error)
                values["choices"] = choices
        for name, *_ in self.fields:
            self.query_one(f"#{name}-error", Label).update(problems.get(name, ""))
        self.query_one("#constraint-error", Label).update(problems.get("constraint", ""))

    def _constraint(self) -> tuple[Constraint | None, str]:
        """The constraint the two fields give (a schema or grammar from a file, or typed), or what is wrong.
        A regex or grammar that does not compile is refused when the model compiles it (the old
        settings then stay)."""
        kind = str(self.query_one("#constraint_kind", Select).value)
        if kind == "none":
            return None, ""
        if kind == "json":
            return Constraint("json"), ""
        source = self.query_one("#constraint_source", Input).value.strip()
        if not source:
            return None, "needs its pattern, a file or the text"
        try:
            if kind != "regex" and Path(source).expanduser().is_file():
                source = read_text_file(Path(source).expanduser(), "the constraint file")
            constraint = Constraint(kind, source)
            check_constraint(constraint)
        except TokenstepError as error:
            return None, str(error)
        return constraint, ""
