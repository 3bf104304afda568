"""Conversations: the messages a chat prompt is made of, read from a file, and the next turn of a
conversation already under way, fed after the path on the same cache (nothing is computed again).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from decoding.core.engine import Engine
from decoding.core.errors import SessionError
from decoding.core.files import json_of, read_text_file
from decoding.core.prompt import ROLES, Prompt, chat_engine, chat_prompt, checked_messages, checked_text, plain_prompt, segments
from decoding.core.schema import ShapeError, check
from decoding.core.state import Message, Segment


@dataclass(frozen=True)
class Turn:
    """The next user message of a conversation, as the template frames it after the path so far."""

    message: Message
    text: str  # the template's text from the end of the path to the start of the next reply
    ids: tuple[int, ...]

    @property
    def segments(self) -> tuple[Segment, ...]:
        return segments(self.text, [self.message])


MESSAGES_SHAPE = [{"role": str, "content": str}]


def messages_of(value: Any, where: str) -> tuple[Message, ...]:
    """Messages from JSON: a list of {"role", "content"}, as apply_chat_template takes them."""
    try:
        check(value, MESSAGES_SHAPE, "messages")
    except ShapeError as error:
        raise SessionError(f'{where} is not a list of {{"role", "content"}} messages ({error}).') from None
    messages = tuple(Message(item["role"], item["content"]) for item in value)
    unknown = next((m.role for m in messages if m.role not in ROLES), None)
    if unknown is not None:
        raise SessionError(f"{where}: a message's role must be one of {', '.join(ROLES)} (got {unknown!r}).")
    return messages


def read_prompt_file(path: Path, chat: bool) -> str | tuple[Message, ...]:
    """A prompt from a file: its text; with `chat`, the user's message (the line break an editor
    ends a file with is not part of it), or the messages of a file that starts with `[` or `{` (a
    JSON list of {"role", "content"} messages)."""
    if not chat:
        return read_text_file(path, "a prompt")
    text = read_text_file(path, "a chat prompt")
    if not text.lstrip().startswith(("[", "{")):
        return text.removesuffix("\n").removesuffix("\r")
    return messages_of(json_of(text, path, "a JSON list of messages"), str(path))


def conversation(first: Sequence[Message], system: str | None = None) -> tuple[Message, ...]:
    """The opening messages, with a system message first when one is given."""
    return ((Message("system", system),) if system else ()) + tuple(first)


@dataclass(frozen=True)
class PromptRequest:
    """A prompt as a person asks for it, before a model is loaded: plain text to continue, or a
    conversation (one user message, or whole messages from a file) for the model's chat template."""

    text: str = ""
    messages: tuple[Message, ...] = ()
    chat: bool = False
    system: str | None = None

    def check(self) -> None:
        """What can be refused before a model loads (an empty or undecodable prompt, unknown roles)."""
        if not self.chat:
            if not self.text:
                raise SessionError("The prompt is empty: give some text for the model to continue.")
            checked_text(self.text, "The prompt")
        else:
            checked_messages(self._messages())

    def build(self, engine: Engine) -> Prompt:
        return chat_prompt(engine, self._messages()) if self.chat else plain_prompt(engine, self.text)

    def _messages(self) -> tuple[Message, ...]:
        return conversation(self.messages or (Message("user", self.text),), self.system)


def next_turn(engine: Engine, so_far: Sequence[Message], ids: Sequence[int], text: str, message: Message) -> Turn:
    """The tokens that follow the path (`ids`, which decode to `text`) to put `message` after the
    conversation `so_far` (whose last message is the assistant's reply, possibly cut short) and open
    the next reply. They are what the template gives for the whole conversation beyond the path; if
    the path's tokens are not how the template would spell them, the template's text beyond the path's
    text is tokenized instead, so the path (and its cache) stays as it was walked."""
    renderer = chat_engine(engine)
    messages = checked_messages([*so_far, message])
    full_text, full_ids = renderer.render_chat(
        [{"role": m.role, "content": m.content} for m in messages], add_generation_prompt=True
    )
    if len(full_ids) > len(ids) and list(full_ids[: len(ids)]) == list(ids):
        return Turn(message, engine.decode(full_ids[len(ids) :]), tuple(full_ids[len(ids) :]))
    if full_text.startswith(text) and len(full_text) > len(text):
        rest = full_text[len(text) :]
        return Turn(message, rest, tuple(renderer.encode_rendered(rest)))
    raise SessionError(
        "The reply does not end the way this chat template ends a turn, so the next message cannot follow it: "
        "undo its last token and end it with the template's end-of-turn token."
    )
