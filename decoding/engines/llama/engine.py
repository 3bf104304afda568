"""The llama.cpp engine (llama-cpp-python): a .gguf model run as it is, quantized, for speed.

It reads the same weights as the transformers engine but computes with quantized matrices, so its
probabilities differ slightly; transformers stays the default, the engine that agrees with generate().
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from decoding.core.files import file_digest
from decoding.core.scores import Scores

MAX_CONTEXT = 8192  # llama.cpp allocates the whole KV cache up front; the session keeps to the model's own limit


def default_threads() -> int:
    """Every core but one: ggml waits at a barrier after each operation, so when another process takes
    a core its threads stall together (2 cores: 49 tokens/s with one thread, 31 with two beside a busy
    core; `python benchmarks/run.py threads`)."""
    return max(1, (os.cpu_count() or 1) - 1)


class LlamaCppEngine:
    """A .gguf run by llama.cpp: full scores, one sequence, one context (no work ahead, no beam search:
    its cache cannot set entries aside, and a second context would load the model again)."""

    name = "llama.cpp"

    def __init__(self, gguf: Path, *, model_id: str, gpu: bool, threads: int | None = None) -> None:
        import llama_cpp

        self._llm = llama_cpp.Llama(
            model_path=str(gguf),
            n_ctx=MAX_CONTEXT,
            n_threads=threads or default_threads(),
            n_gpu_layers=-1 if gpu else 0,
            logits_all=False,
            verbose=False,
        )
        self.model_id = model_id
        self.device = "gpu" if gpu else "cpu"
        self.dtype = _quantization(gguf.name)
        self.vocab_size = self._llm.n_vocab()
        self.context_limit = min(self._llm._model.n_ctx_train(), self._llm.n_ctx())
        self.eos_token_ids = frozenset({self._llm.token_eos()})
        self._vocab = vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        self.special_ids = frozenset(i for i in range(self.vocab_size) if llama_cpp.llama_vocab_is_control(vocab, i))
        self.end_of_turn_ids = frozenset(i for i in self.special_ids if llama_cpp.llama_vocab_is_eog(vocab, i))
        self.weights_digest = file_digest(gguf)

    def encode(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)

    def encode_piece(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def decode(self, ids: Sequence[int]) -> str:
        """llama.cpp's own detokenizer, with room for the whole text (llama-cpp-python's wrapper gives
        each token 32 bytes and silently drops a longer one, such as a run of 32 spaces)."""
        import llama_cpp

        tokens = (llama_cpp.llama_token * len(ids))(*ids)
        written = _grown(
            lambda buffer, size: llama_cpp.llama_detokenize(self._vocab, tokens, len(ids), buffer, size, False, True)
        )
        return written.decode("utf-8", errors="replace")

    def chat_template(self) -> str | None:
        template = self._llm.metadata.get("tokenizer.chat_template")
        return template or None

    def render_chat(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> tuple[str, list[int]]:
        """The GGUF's template, rendered by transformers' own renderer (as apply_chat_template renders
        it); a message's text is tokenized as text, the template's own parts with control tokens."""
        from transformers.utils.chat_template_utils import render_jinja_template

        template = self.chat_template()
        assert template is not None, "checked by the caller"
        special = {
            "bos_token": self._llm._model.token_get_text(self._llm.token_bos()),
            "eos_token": self._llm._model.token_get_text(self._llm.token_eos()),
        }
        render = cast(Any, render_jinja_template)  # typed as returning a str; it returns (texts, indices)
        rendered, _ = render(
            [[dict(m) for m in messages]], chat_template=template, add_generation_prompt=add_generation_prompt, **special
        )
        text = rendered[0]
        return text, self._encode_keeping_typed_text(text, [m["content"] for m in messages])

    def encode_rendered(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def _encode_keeping_typed_text(self, text: str, contents: list[str]) -> list[int]:
        """Tokenize rendered text whole, unless a message holds a control token's text: then the
        messages are tokenized as text and the template's parts around them with control tokens."""
        names = [self._llm._model.token_get_text(i) for i in self.special_ids]
        if not any(name and name in content for content in contents for name in names):
            return self.encode_rendered(text)
        ids, cursor = [], 0
        for content in contents:
            start = text.find(content, cursor) if content else -1
            if start < 0:
                continue
            ids += self.encode_rendered(text[cursor:start]) + self.encode_piece(content)
            cursor = start + len(content)
        return ids + self.encode_rendered(text[cursor:])

    def token_bytes(self, token_id: int) -> bytes:
        import llama_cpp

        return _grown(lambda buffer, size: llama_cpp.llama_token_to_piece(self._vocab, token_id, buffer, size, 0, True))

    @property
    def cached_length(self) -> int:
        return self._llm.n_tokens

    def feed(self, ids: Sequence[int]) -> Scores:
        before = self.cached_length
        try:
            # The last id evaluated alone, as every step's token is: llama.cpp's numbers for a token
            # inside a batch differ from one alone (by up to 0.03 in probability on the embedded
            # model), and the same position must give the same panel however it is reached.
            if len(ids) > 1:
                self._llm.eval(list(ids[:-1]))
            self._llm.eval(list(ids[-1:]))
        except BaseException:
            self.crop(before)
            raise
        # With logits_all off, llama.cpp keeps the logits of the last position only.
        logits = np.ctypeslib.as_array(self._llm._ctx.get_logits(), shape=(self.vocab_size,))
        return Scores(torch.from_numpy(logits.astype(np.float32, copy=True)))

    def own_stage(self, name: str, strategy: Any) -> object | None:
        """llama.cpp's own sampler for a stage of the chain, as its registry entry builds it (see
        decoding.engines.llama.samplers); None for a stage llama.cpp does not have."""
        from decoding.core.samplers import SAMPLERS
        from decoding.engines.llama.samplers import LlamaSamplers

        sampler = SAMPLERS.get(name)
        if sampler is None or sampler.llama_cpp is None:
            return None
        return sampler.llama_cpp(strategy, LlamaSamplers(self._vocab, self.vocab_size, self.context_limit))

    def crop(self, length: int) -> None:
        self._llm._ctx.kv_cache_seq_rm(-1, max(length, 0), -1)
        self._llm.n_tokens = max(length, 0)


def _grown(write: Callable[[Any, int], int]) -> bytes:
    """Call a llama.cpp function that writes text into a buffer, growing the buffer when it says it
    needs more (a negative count: the size needed)."""
    size = 256
    while True:
        buffer = ctypes.create_string_buffer(size)
        written = write(buffer, size)
        if written >= 0:
            return buffer.raw[:written]
        size = -written


def _quantization(file_name: str) -> str:
    """'SmolLM2-135M-Instruct.Q4_1.gguf' -> 'Q4_1' (what llama.cpp computes in)."""
    stem = file_name.removesuffix(".gguf")
    tail = stem.rsplit(".", 1)[-1] if "." in stem else stem.rsplit("-", 1)[-1]
    return tail if tail[:1] in ("Q", "F", "I", "B") and any(ch.isdigit() for ch in tail) else "gguf"
