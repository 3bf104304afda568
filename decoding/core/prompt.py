"""The prompt, built in one place: the text a view shows, the token ids the model reads, and its form.

A plain prompt is text the model continues; a chat prompt is a conversation rendered by the model's own
chat template, ending where the assistant's reply begins. Traces and session files record the ids;
replay and resume start from the recorded ids rather than rendering the text again (a tokenizer or
template that changed is then reported, not hidden).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from decoding.core.engine import Engine, RendersChats
from decoding.core.errors import SessionError
from decoding.core.state import Message, Segment
from decoding.core.tokens import undecodable_at

FORMS = ("plain", "chat")
ROLES = ("system", "user", "assistant")
# Text longer than the context times this many characters is first tokenized only that far: text
# runs ~4 characters a token, so a prefix that long is enough to show that the whole cannot fit.
PREFIX_CHARACTERS_PER_TOKEN = 16


@dataclass(frozen=True)
class Prompt:
    text: str  # as a view shows it (a chat: the rendered conversation)
    ids: tuple[int, ...]  # what the model reads
    form: str = "plain"
    messages: tuple[Message, ...] = ()  # a chat's conversation

    @property
    def segments(self) -> tuple[Segment, ...]:
        """The text with a chat template's scaffolding set apart from the messages."""
        return segments(self.text, self.messages) if self.form == "chat" else (Segment(self.text),)


def plain_prompt(engine: Engine, text: str) -> Prompt:
    """Text for the model to continue, as `generate()` would be given it."""
    if not text:
        raise SessionError("The prompt is empty: type some text for the model to continue.")
    checked_text(text, "The prompt")
    check_size(engine, text, "The prompt")
    return Prompt(text, checked_ids(engine, engine.encode(text)))


def chat_prompt(engine: Engine, messages: Sequence[Message]) -> Prompt:
    """A conversation rendered by the model's own chat template, ready for the assistant's reply
    (as `apply_chat_template(messages, add_generation_prompt=True)` renders it)."""
    messages = checked_messages(messages)
    template_holder = chat_engine(engine)
    check_size(engine, "\n".join(m.content for m in messages), "The conversation")
    text, ids = template_holder.render_chat(
        [{"role": m.role, "content": m.content} for m in messages], add_generation_prompt=True
    )
    return Prompt(text, checked_ids(engine, ids), "chat", tuple(messages))


def chat_engine(engine: Engine) -> RendersChats:
    """The engine as a chat renderer; one line saying why not otherwise."""
    if not isinstance(engine, RendersChats):
        raise SessionError(f"The {engine.name} engine cannot render chats. Leave out --chat.")
    if engine.chat_template() is None:
        raise SessionError(
            f"{engine.model_id} has no chat template, so it cannot be given a conversation: "
            "leave out --chat and write the prompt as plain text, or choose an instruct (chat) model."
        )
    return engine


def checked_messages(messages: Sequence[Message]) -> tuple[Message, ...]:
    if not messages:
        raise SessionError("The conversation holds no messages: write a message first.")
    for message in messages:
        if message.role not in ROLES:
            raise SessionError(f"A message's role must be one of {', '.join(ROLES)} (got {message.role!r}).")
        if not message.content.strip():
            raise SessionError(f"The {message.role} message is empty: write something first.")
        checked_text(message.content, f"The {message.role} message")
    return tuple(messages)


def check_size(engine: Engine, text: str, what: str) -> None:
    """Refuse text far longer than the context before tokenizing all of it (a 50 MB prompt took a
    minute): when a prefix of it, cut at a space, already gives more tokens than the model reads,
    so does the whole."""
    limit = engine.context_limit
    prefix = text[: limit * PREFIX_CHARACTERS_PER_TOKEN]
    if len(prefix) == len(text):
        return  # short enough to tokenize whole
    prefix = prefix[: prefix.rfind(" ")] if " " in prefix else prefix
    if (tokens := len(engine.encode_piece(prefix))) > limit:
        raise SessionError(
            f"{what} is {len(text):,} characters long, and its first {len(prefix):,} alone are {tokens:,} tokens: "
            f"this model reads at most {limit:,}. Shorten it."
        )


def check_room(engine: Engine, held: int, adding: int, what: str) -> None:
    """Refuse `adding` tokens after the `held` ones when together they pass the context, before any
    of them is fed (forcing them one by one up to the limit took minutes)."""
    if held + adding > engine.context_limit:
        raise SessionError(
            f"{what} is {adding:,} tokens, and after the {held:,} before it that makes {held + adding:,}: "
            f"this model reads at most {engine.context_limit:,}. Shorten it."
        )


def checked_text(text: str, what: str) -> None:
    if (index := undecodable_at(text)) is not None:
        raise SessionError(f"{what} is not valid UTF-8 text (character {index + 1} was a stray byte): give it as UTF-8.")


def recorded_prompt(
    engine: Engine, ids: Sequence[int], text: str | None = None, form: str = "plain", messages: Sequence[Message] = ()
) -> Prompt:
    """A prompt as a trace or session file recorded it: its ids, which must fit this model."""
    ids = checked_ids(engine, ids)
    return Prompt(engine.decode(list(ids)) if text is None else text, ids, form if form in FORMS else "plain", tuple(messages))


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


def segments(text: str, messages: Sequence[Message]) -> tuple[Segment, ...]:
    """`text` cut into the messages' words and the scaffolding between them, found in order (a
    template that rewrites a message leaves it in the scaffolding)."""
    parts: list[Segment] = []
    cursor = 0
    for message in messages:
        for content in (message.content, message.content.strip()):
            start = text.find(content, cursor) if content else -1
            if start >= 0:
                if start > cursor:
                    parts.append(Segment(text[cursor:start], scaffold=True))
                parts.append(Segment(content))
                cursor = start + len(content)
                break
    if cursor < len(text):
        parts.append(Segment(text[cursor:], scaffold=True))
    return tuple(parts)
