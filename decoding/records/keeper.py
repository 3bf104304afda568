"""Keeps an exploration's session file: reopens a saved tree once the model is loaded, saves after every change.

Runs on the model's thread (like the session it saves); what a person must know (a file from another
model, a failed save) comes back through `note`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from decoding.core.engine import Engine, Steers
from decoding.core.errors import TokenstepError
from decoding.core.steering import Steering
from decoding.records import session_file

if TYPE_CHECKING:  # torch-free, but only needed once the model is loaded
    from decoding.core.prompt import Prompt
    from decoding.records.session_file import SavedSession, SessionWriter
    from decoding.search.session import Session
    from decoding.search.tree import Branch


class SessionKeeper:
    def __init__(self, path: Path | None, saved: SavedSession | None, note: Callable[[str], object]) -> None:
        self.path = path  # None: nothing is saved (tests, benchmarks)
        self.saved = saved  # to reopen once, when the model is loaded
        self.note = note
        self.foreign: tuple[tuple[Branch, ...], str] = ((), "")  # another model's tree, shown read-only
        self._writer: SessionWriter | None = None

    def open(self, session: Session, prompt: str | Prompt | None) -> None:
        """Reopen the saved tree on the same model, or start at `prompt`; another model's tree is only
        shown, and a tree that cannot be reopened is left as it is: both go on in a new file."""
        saved, self.saved = self.saved, None
        if saved is None:
            return _start(session, prompt)
        if saved.note:  # what reading left out (a last save cut short)
            self.note(saved.note)
        if not session_file.same_model(saved.model, session.engine):
            model = _described(saved.model)
            self.foreign = (tuple(saved.tree.branches()), model)
            return self._elsewhere(session, prompt, f"was made with {model}, not this model: its tree is shown read-only (t)")
        self._restore_steering(session.engine, saved.steering)
        old = session.strategy, session.choices
        try:
            session.set_strategy(saved.strategy)
            session.set_choices(saved.choices)
            session.adopt(saved.tree)
        except Exception as error:  # whatever the file held: the exploration starts afresh, the file stays
            session.set_strategy(old[0])
            session.set_choices(old[1])
            self._elsewhere(session, prompt, f"could not be reopened ({error})")

    def _restore_steering(self, engine: Engine, steering: Steering | None) -> None:
        """The steering the tree was explored under, unless one was asked for now (it wins)."""
        if steering is None or not isinstance(engine, Steers) or engine.steering is not None:
            if steering is not None and not isinstance(engine, Steers):
                self.note(f"The session was steered ({steering.describe()}); the {engine.name} engine cannot steer.")
            return
        try:
            engine.steer(steering)
        except TokenstepError as error:  # a vector file gone since: the tree opens unsteered
            self.note(f"The session's steering is left out: {error}")

    def _elsewhere(self, session: Session, prompt: str | Prompt | None, why: str) -> None:
        """Leave the opened file as it is; this exploration starts at `prompt`, saved to a new file."""
        old, self.path = self.path, session_file.new_session_path()
        self.note(f"{old} {why}; it was left as it is. This exploration is saved to {self.path}.")
        _start(session, prompt)

    def start(self, session: Session) -> None:
        """Save from now on (after loading a model)."""
        self._writer = None
        if self.path is not None:
            self._writer = session_file.SessionWriter(self.path, session.engine)
            self.save(session)
            try:
                session_file.remember_last(self.path)
            except OSError as error:
                self.note(f"Could not note {self.path} as the last session ({error}); --resume will not find it.")

    def save(self, session: Session) -> None:
        """Write the file (~1 ms); on failure say so once and go on unsaved: nothing else is lost."""
        if self._writer is None or session.tree.current is None:
            return
        try:
            steering = session.engine.steering if isinstance(session.engine, Steers) else None
            self._writer.save(session.tree, session.strategy, session.choices, steering)
        except (OSError, TokenstepError) as error:
            self._writer = None
            self.note(f"Could not save the session to {self.path} ({error}); it goes on unsaved.")

    def new_file(self) -> None:
        """Another model is being loaded: the old file keeps the old model's tree."""
        if self.path is not None:
            self.path = session_file.new_session_path()


def _start(session: Session, prompt: str | Prompt | None) -> None:
    """Start at `prompt`; with none (a chat prompt the model could not take), wait for one."""
    if prompt is not None:
        session.reset(prompt)


def _described(model: dict[str, Any]) -> str:
    """A saved model for a message: its name, engine and dtype."""
    details = ", ".join(str(model[key]) for key in ("engine", "dtype") if model.get(key))
    return f"{model.get('model_id') or 'another model'}" + (f" ({details})" if details else "")
