"""The transformers engine: a causal LM and its tokenizer, run one new token at a time over a KV cache."""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.convert_slow_tokenizer import bytes_to_unicode

from decoding.scores import Scores

BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # sentencepiece byte-fallback tokens
# Control tokens that end a turn, as llama.cpp recognises them (its end-of-generation set): a chat
# reply ends at any of them, as well as at the ids generate() stops at.
END_OF_TURN_TEXTS = frozenset(
    {"<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>", "<|eom_id|>", "<|return|>"}
)


class TransformersEngine:
    """Any transformers causal LM: full scores, work ahead, forks, beam search side by side."""

    name = "transformers"

    def __init__(self, model: PreTrainedModel, tokenizer, *, model_id: str) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.device = str(model.device)
        self.dtype = str(model.dtype).removeprefix("torch.")
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.context_limit = _context_limit(model.config)
        self.eos_token_ids = _eos_ids(model, tokenizer)
        self.special_ids = _special_ids(tokenizer)
        self.end_of_turn_ids = frozenset(i for i in self.special_ids if tokenizer.convert_ids_to_tokens(i) in END_OF_TURN_TEXTS)
        self._token_bytes = token_bytes_of(tokenizer, _byte_decoder(tokenizer))
        self._cache = DynamicCache(config=model.config)
        self.weights_digest = _weights_digest(model)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text)["input_ids"])

    def encode_piece(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids)))

    def chat_template(self) -> str | None:
        template = getattr(self.tokenizer, "chat_template", None)
        return template if isinstance(template, str) and template else None

    def render_chat(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> tuple[str, list[int]]:
        conversation = [dict(message) for message in messages]
        text = self.tokenizer.apply_chat_template(conversation, add_generation_prompt=add_generation_prompt, tokenize=False)
        encoded = self.tokenizer.apply_chat_template(
            conversation, add_generation_prompt=add_generation_prompt, sanitize_control_tokens=True, return_dict=True
        )
        return str(text), list(encoded["input_ids"])

    def encode_rendered(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def token_bytes(self, token_id: int) -> bytes:
        return self._token_bytes(token_id)

    @property
    def cached_length(self) -> int:
        return self._cache.get_seq_length()

    def feed(self, ids: Sequence[int]) -> Scores:
        before = self.cached_length
        try:
            return Scores(_last_logits(self.model, self._cache, [list(ids)])[0])
        except BaseException:
            self.crop(before)  # some layers may already hold the new positions
            raise

    def crop(self, length: int) -> None:
        if length <= 0:
            self._cache = DynamicCache(config=self.model.config)
        elif length < self.cached_length:
            self._cache.crop(length - self.cached_length)  # a negative count: tokens to drop from the end

    def detach_last(self, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        layers = cast(list[Any], self._cache.layers)  # attention layers: each holds keys and values
        tail = [(layer.keys[..., -count:, :].clone(), layer.values[..., -count:, :].clone()) for layer in layers]
        self.crop(self.cached_length - count)
        return tail

    def attach(self, tail: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        for index, (keys, values) in enumerate(tail):
            self._cache.update(keys, values, index)

    def fork(self) -> TransformersEngine:
        """The same model and tokenizer with a cache of its own: work that must not disturb this one's."""
        twin = copy.copy(self)
        twin._cache = DynamicCache(config=self.model.config)
        return twin

    def side_by_side(self) -> SideBySide:
        """A separate cache for several sequences stepped together (beam search)."""
        return SideBySide(self.model)


class SideBySide:
    """Equal-length sequences run as one batch on their own KV cache, as `generate(num_beams=B)` runs them."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self._cache = DynamicCache(config=model.config)

    def start(self, sequences: list[list[int]]) -> Scores:
        """Run whole sequences from scratch; the last position's logits, one row per sequence."""
        self._cache = DynamicCache(config=self.model.config)
        return Scores(self._run(sequences))

    def feed(self, token_ids: list[int]) -> Scores:
        """One new token per sequence."""
        return Scores(self._run([[token_id] for token_id in token_ids]))

    def reorder(self, rows: list[int]) -> None:
        """Row i of the cache becomes old row rows[i] (a beam continues from its parent)."""
        self._cache.reorder_cache(cast(torch.LongTensor, torch.tensor(rows, dtype=torch.long, device=self.model.device)))

    def _run(self, ids: list[list[int]]) -> torch.Tensor:
        return _last_logits(self.model, self._cache, ids)


def _last_logits(model: PreTrainedModel, cache: DynamicCache, ids: list[list[int]]) -> torch.Tensor:
    """Run equal-length rows of new tokens on `cache`; each row's last logits, as float32 (generate()
    reads them as float32 before its processors; so do we)."""
    input_ids = torch.tensor(ids, dtype=torch.long, device=model.device)
    with torch.inference_mode():
        out = model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1].to(dtype=torch.float32)


def _weights_digest(model: PreTrainedModel, samples: int = 4096) -> str:
    """A digest of a spread of the weights as loaded (values and dtype): two checkpoints that share a
    tokenizer, or one checkpoint in two dtypes, give different numbers and different digests."""
    digest = hashlib.sha256(str(model.config.model_type).encode())
    parameters = [p for p in model.parameters() if p.device.type != "meta"]  # offloaded ones are not here
    for parameter in parameters[:: max(1, len(parameters) // 4)]:
        flat = parameter.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // samples)][:samples].to("cpu", torch.float32)
        digest.update(f"{tuple(parameter.shape)} {parameter.dtype}".encode() + sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def _context_limit(config) -> int:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048


def _eos_ids(model, tokenizer) -> frozenset[int]:
    found = set()
    for source in (model.generation_config.eos_token_id, model.config.eos_token_id, tokenizer.eos_token_id):
        if isinstance(source, int):
            found.add(source)
        elif source:
            found.update(source)
    return frozenset(found)


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


def _special_ids(tokenizer) -> frozenset[int]:
    """Control tokens: the tokenizer's special tokens and the added tokens marked special."""
    added = getattr(tokenizer, "added_tokens_decoder", {})
    return frozenset(tokenizer.all_special_ids) | frozenset(i for i, token in added.items() if getattr(token, "special", False))


def _byte_decoder(tokenizer) -> dict[str, int] | None:
    """GPT-2-style byte-level tokenizers spell each byte as a printable character; map them back."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None)
    if decoder is not None and type(decoder).__name__ == "ByteLevel":
        return {char: byte for byte, char in bytes_to_unicode().items()}
    return None
