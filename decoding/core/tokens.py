"""How token text is shown: literally, safely, with invisible characters made visible.

No raw control character or escape sequence from a model ever reaches the terminal through these.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from collections.abc import Callable
from typing import Any

VISIBLE_WHITESPACE = {" ": "␣", "\n": "↵", "\t": "⇥"}


def undecodable_at(text: str) -> int | None:
    """Where `text` holds a byte that was not UTF-8 (a lone surrogate, as Python keeps such bytes of a
    command line or a file name), or None: a model's tokenizer cannot take it."""
    return next((index for index, ch in enumerate(text) if "\ud800" <= ch <= "\udfff"), None)


def _hex_bytes(error: UnicodeError) -> tuple[str, int]:
    assert isinstance(error, UnicodeDecodeError), "registered for decoding only"
    bad = error.object[error.start : error.end]
    return "".join(f"<0x{b:02X}>" for b in bad), error.end


codecs.register_error("tokenstep-hex", _hex_bytes)


def bytes_to_text(raw: bytes) -> str:
    """Decode UTF-8, showing bytes that are not valid on their own (a partial character) as `<0xE2>`."""
    return raw.decode("utf-8", errors="tokenstep-hex")


class TokenTexts:
    """Each token's own text (`bytes_to_text` of its bytes), decoded once: panels show the same tokens
    step after step. Also which tokens are control tokens, and which end a turn; and what the chain's
    samplers need of the engine: DRY's sequence breakers in its vocabulary, and its own samplers
    (`RunsOwnSamplers`) for the stages it has."""

    def __init__(
        self,
        token_bytes: Callable[[int], bytes],
        special_ids: frozenset[int] = frozenset(),
        end_ids: frozenset[int] = frozenset(),
        vocab_size: int = 0,
        encode_piece: Callable[[str], list[int]] = lambda text: [],
        own_stage: Callable[[str, Any], Any] | None = None,
        chain_beside: Callable[[Any, Any], Any] | None = None,
    ) -> None:
        self._token_bytes = token_bytes
        # The engine's own sampler for a stage of the chain (llama.cpp's), or None where it has none
        self.own_stage = own_stage or (lambda name, strategy: None)
        # A server's own chain for the same settings (ids, strategy): ServerChain, a line why not, or None
        self.chain_beside = chain_beside or (lambda ids, strategy: None)
        self._texts: dict[int, str] = {}
        self.special_ids, self.end_ids = special_ids, end_ids
        self.vocab_size = vocab_size
        self.encode_piece = encode_piece
        self._breakers: dict[tuple[str, ...], Any] = {}

    @classmethod
    def of(cls, engine: Any) -> TokenTexts:
        return cls(
            engine.token_bytes,
            engine.special_ids,
            engine.eos_token_ids | engine.end_of_turn_ids,
            vocab_size=engine.vocab_size,
            encode_piece=engine.encode_piece,
            own_stage=getattr(engine, "own_stage", None),
            chain_beside=getattr(engine, "chain_probs", None),
        )

    def breakers(self, strings: tuple[str, ...], find: Callable[..., Any]) -> Any:
        """DRY's sequence breakers as this vocabulary spells them (`find`: llama_samplers.breaker_sequences),
        found once: it reads every token."""
        if strings not in self._breakers:
            self._breakers[strings] = find(strings, self._token_bytes, self.vocab_size, self.encode_piece)
        return self._breakers[strings]

    def __call__(self, token_id: int) -> str:
        if token_id not in self._texts:
            self._texts[token_id] = bytes_to_text(self._token_bytes(token_id))
        return self._texts[token_id]


class RunningText:
    """Each token's share of the running text: the characters its bytes complete.

    A character split over several tokens is given to the token that completes it, so tinting
    text token by token never shows half a character. Incremental, with undo: O(1) a token.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._states: list[tuple[bytes, int]] = []  # the decoder's pending bytes after each token

    def push(self, raw: bytes) -> str:
        self._decoder.setstate(self._states[-1] if self._states else (b"", 0))
        share = self._decoder.decode(raw)
        self._states.append(self._decoder.getstate())
        return share

    def pop(self) -> None:
        self._states.pop()

    def unfinished(self) -> str:
        """What the bytes left pending at the end show as (a replacement mark, or nothing)."""
        pending = self._states[-1][0] if self._states else b""
        return pending.decode("utf-8", errors="replace")


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


UNSHOWN_CATEGORIES = ("Cc", "Cf", "Cs")
# Every character outside printable ASCII: only these need a look at their category, so text that is
# mostly ASCII (a trace's JSON, a token's text) is checked at the regex engine's speed.
_OUTSIDE_PRINTABLE_ASCII = re.compile(r"[^\t\n\x20-\x7e]")


def is_unshown(ch: str) -> bool:
    """A character that must never reach a terminal as it is: shown as an escape instead."""
    # Cc: C0/C1 controls (ESC, BEL, CR...); Cf: invisible format characters (bidi overrides, ZWJ...);
    # Cs: lone surrogates (bytes of a command line that were not UTF-8), which no terminal can print.
    return unicodedata.category(ch) in UNSHOWN_CATEGORIES and ch not in "\n\t"


def escape_unshown(text: str, escape: Callable[[str], str], also: str = "") -> str:
    """`text` with each unshown character (and each of `also`) replaced by `escape(ch)`."""
    return _OUTSIDE_PRINTABLE_ASCII.sub(lambda m: escape(m[0]) if is_unshown(m[0]) or m[0] in also else m[0], text)


def escape_controls(text: str) -> str:
    """Keep newlines and tabs; write every other control or format character as a `\\x1b`-style escape."""
    return escape_unshown(text, _escape_char)


def token_label(text: str, *, visible_spaces: bool = True) -> str:
    """One token's text for a candidate list: whitespace visible (␣ ↵ ⇥), controls escaped.

    With `visible_spaces=False` spaces stay spaces (the chapter's table style: ' most').
    """
    shown = []
    for ch in text:
        if ch == " " and not visible_spaces:
            shown.append(ch)
        elif ch in VISIBLE_WHITESPACE:
            shown.append(VISIBLE_WHITESPACE[ch])
        elif is_unshown(ch) or ch == "\r":
            shown.append(_escape_char(ch))
        else:
            shown.append(ch)
    return "".join(shown)


def json_escaped(ch: str) -> str:
    """`ch` as a JSON string escape (a surrogate pair above the BMP)."""
    code = ord(ch)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def one_line(text: str) -> str:
    """Running text squeezed onto one line (for tables): newlines and tabs visible, controls escaped."""
    return token_label(text, visible_spaces=False)
