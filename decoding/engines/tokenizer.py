"""What a transformers tokenizer says of its tokens: the bytes each stands for, which are control
tokens, and which end a turn. The transformers engine and a server's local vocabulary read them alike."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # sentencepiece byte-fallback tokens
# Control tokens that end a turn, as llama.cpp recognises them (its end-of-generation set): a chat
# reply ends at any of them, as well as at the ids generate() stops at.
END_OF_TURN_TEXTS = frozenset(
    {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>", "<|eom_id|>", "<|return|>"}
)


def token_bytes_of(tokenizer: Any, byte_decoder: dict[str, int] | None) -> Callable[[int], bytes]:
    """The raw bytes each token of `tokenizer` stands for (may be part of a UTF-8 character)."""

    def token_bytes(token_id: int) -> bytes:
        piece = tokenizer.convert_ids_to_tokens(token_id)
        if piece is None:
            return b""
        if match := BYTE_PIECE.fullmatch(piece):
            return bytes([int(match[1], 16)])
        if byte_decoder and all(ch in byte_decoder for ch in piece):
            return bytes(byte_decoder[ch] for ch in piece)
        return piece.replace("\u2581", " ").encode("utf-8")  # sentencepiece writes a leading space as ▁

    return token_bytes


def special_ids_of(tokenizer) -> frozenset[int]:
    """Control tokens: the tokenizer's special tokens and the added tokens marked special."""
    added = getattr(tokenizer, "added_tokens_decoder", {})
    return frozenset(tokenizer.all_special_ids) | frozenset(i for i, token in added.items() if getattr(token, "special", False))


def byte_decoder_of(tokenizer) -> dict[str, int] | None:
    """GPT-2-style byte-level tokenizers spell each byte as a printable character; map them back."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is not None and type(decoder).__name__ == "ByteLevel":
        return {char: byte for byte, char in bytes_to_unicode().items()}
    return None
