"""The prompt, built in one place: the text a view shows, the token ids the model reads, and its form.

Traces and session files record the ids; replay and resume start from the recorded ids rather than
encoding the text again (a tokenizer or template that changed is then reported, not hidden).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from decoding.engine import Engine
from decoding.errors import SessionError
from decoding.tokens import undecodable_at

FORMS = ("plain",)


@dataclass(frozen=True)
class Prompt:
    text: str  # as a view shows it
    ids: tuple[int, ...]  # what the model reads
    form: str = "plain"


def plain_prompt(engine: Engine, text: str) -> Prompt:
    """Text for the model to continue, as `generate()` would be given it."""
    if not text:
        raise SessionError("The prompt is empty: type some text for the model to continue.")
    if (index := undecodable_at(text)) is not None:
        raise SessionError(f"The prompt is not valid UTF-8 text (character {index + 1} was a stray byte): give it as UTF-8.")
    return Prompt(text, checked_ids(engine, engine.encode(text)))


def recorded_prompt(engine: Engine, ids: Sequence[int], text: str | None = None, form: str = "plain") -> Prompt:
    """A prompt as a trace or session file recorded it: its ids, which must fit this model."""
    ids = checked_ids(engine, ids)
    return Prompt(engine.decode(list(ids)) if text is None else text, ids, form)


def checked_ids(engine: Engine, ids: Sequence[int]) -> tuple[int, ...]:
    """Token ids the model can read, with room for at least one new token."""
    if not ids:
        raise SessionError("The prompt gives no tokens: type some text for the model to continue.")
    if any(not 0 <= token_id < engine.vocab_size for token_id in ids):
        raise SessionError(f"The prompt holds a token id outside this model's vocabulary (0 to {engine.vocab_size - 1}).")
    if len(ids) >= engine.context_limit:
        raise SessionError(
            f"The prompt is {len(ids)} tokens long; this model reads at most {engine.context_limit}, "
            "and needs room for at least one new token. Shorten the prompt."
        )
    return tuple(ids)
