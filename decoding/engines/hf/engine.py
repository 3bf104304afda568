"""The transformers engine: a causal LM and its tokenizer, run one new token at a time over a KV cache."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator, Sequence
from typing import Any, cast

import torch
from transformers import DynamicCache, PreTrainedModel

from decoding.core.scores import Scores
from decoding.core.steering import Steering
from decoding.engines.hf.kv_cache import block_cache
from decoding.engines.hf.steering import applied, steering_vector
from decoding.engines.tokenizer import END_OF_TURN_TEXTS, byte_decoder_of, special_ids_of, token_bytes_of

POSITION_CHUNK = 128  # positions scored at once: 128 x 49,152 floats = 25 MB, let go after each chunk


class TransformersEngine:
    """Any transformers causal LM: full scores, work ahead, forks, beam search side by side."""

    name = "transformers"

    def __init__(self, model: PreTrainedModel, tokenizer, *, model_id: str) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.device = str(model.device)
        self.dtype = _quantized_as(model) or str(model.dtype).removeprefix("torch.")
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.context_limit = _context_limit(model.config)
        self.eos_token_ids = _eos_ids(model, tokenizer)
        self.special_ids = special_ids_of(tokenizer)
        self.end_of_turn_ids = frozenset(i for i in self.special_ids if tokenizer.convert_ids_to_tokens(i) in END_OF_TURN_TEXTS)
        self._token_bytes = token_bytes_of(tokenizer, byte_decoder_of(tokenizer))
        self._cache = block_cache(model.config)
        self._prefill: tuple[int, tuple[int, ...], torch.Tensor] = (-1, (), torch.empty(0))  # (start, ids, hidden states)
        self.keep_layers = False  # the logit lens is shown: keep each feed's last position's layers
        self._layers: tuple[int, int, torch.Tensor] | None = None  # (position, token id, [layers + 1, hidden])
        self._final_norm = _final_norm(model)
        self._head_checked: bool | None = None  # see _head_is_the_models
        self.weights_digest = _weights_digest(model)
        self.placement = _placement(model)  # where accelerate put the layers, when not all in one place
        self._neutral: int | None = None  # integrated gradients' baseline token, found once
        self.steering: Steering | None = None
        self._steered: tuple[int, torch.Tensor] | None = None  # (layer, scale * vector) while steered

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
        """A prompt's prefill (several tokens on an empty cache) also keeps the last layer's hidden
        states of every position, so that scoring each of them later (`score_positions`) costs the
        head alone, not a second pass. Other feeds keep no hidden states (a path read in one pass
        would hold every layer's for every token) unless the logit lens wants the last position's."""
        before = self.cached_length
        try:
            with applied(self._steered):
                if not self.keep_layers and (len(ids) == 1 or before > 0):
                    return Scores(_last_logits(self.model, self._cache, [list(ids)])[0])
                logits, states = _last_logits_and_states(self.model, self._cache, list(ids))
        except BaseException:
            self.crop(before)  # some layers may already hold the new positions
            raise
        self._layers = (self.cached_length - 1, ids[-1], torch.stack([layer[0, -1] for layer in states]))
        if len(ids) > 1:
            self._prefill = (before, tuple(ids), states[-1][0])
        return Scores(logits)

    def feed_each(self, ids: Sequence[int]) -> list[Scores]:
        """Several tokens in one pass, the scores after each (speculative decoding's check of a draft)."""
        before = self.cached_length
        try:
            with applied(self._steered):
                input_ids = torch.tensor([list(ids)], dtype=torch.long, device=self.model.device)
                with torch.inference_mode():
                    out = self.model(input_ids=input_ids, cache=self._cache, use_cache=True)
        except BaseException:
            self.crop(before)
            raise
        self._layers = None  # the lens reads the last position again when asked
        return [Scores(row) for row in out.logits[0].to(dtype=torch.float32)]

    def lens_unavailable(self) -> str | None:
        if self._final_norm is None:
            return f"{self.model_id}: no final norm found on its base model, so no logit lens"
        if not self._head_is_the_models():
            return f"{self.model_id}: its head changes the logits in a way tokenstep does not know, so no logit lens"
        return None

    def _head_is_the_models(self) -> bool:
        """Once: whether `_head` gives the model's own logits (after two tokens, without a cache).
        The head is rebuilt from config attributes; an architecture that does something else to its
        logits would otherwise give a lens and prompt scores that are silently off."""
        if self._head_checked is None:
            some = [self.vocab_size // 3, self.vocab_size // 2]  # not id 0: often padding, its embedding zeros
            input_ids = torch.tensor([some], dtype=torch.long, device=self.model.device)
            with torch.inference_mode():
                out = self.model(input_ids=input_ids, use_cache=False, logits_to_keep=1, output_hidden_states=True)
            ours, theirs = self._head(out.hidden_states[-1][0, -1:])[0], out.logits[0, -1].float()
            self._head_checked = bool(torch.allclose(ours, theirs.to(ours.device), rtol=1e-3, atol=1e-3))
        return self._head_checked

    def layer_logprobs(self, ids: Sequence[int]) -> torch.Tensor:
        """From the layers the last feed kept when they are of this position, else from one forward of
        its last token on the cached prefix before it (the positions after are set aside, then put back)."""
        position = len(ids) - 1
        if not 0 <= position < self.cached_length:
            raise ValueError(f"position {position} is not in the cache ({self.cached_length} tokens)")
        if self._layers is not None and self._layers[:2] == (position, ids[-1]):
            return self._lens(self._layers[2])
        tail = self.detach_last(self.cached_length - position)
        try:
            with applied(self._steered):
                _, states = _last_logits_and_states(self.model, self._cache, [ids[-1]])
        finally:
            self.crop(position)
            self.attach(tail)
        return self._lens(torch.stack([layer[0, -1] for layer in states]))

    def _lens(self, layers: torch.Tensor) -> torch.Tensor:
        """Every layer's residual stream through the final norm (the last one already passed it, as
        transformers returns it) and the head."""
        assert self._final_norm is not None
        with torch.inference_mode():
            normed = torch.cat([self._final_norm(layers[:-1]), layers[-1:]])
        return torch.log_softmax(self._head(normed), dim=-1)

    def score_positions(self, ids: Sequence[int]) -> Iterator[torch.Tensor]:
        """Rows of logits for every position of `ids` (row i: the scores after ids[:i+1]),
        a chunk at a time: never a full-vocabulary tensor per position kept. From the last prefill's
        hidden states when it read `ids`, else from one pass on a cache of its own. (A model whose
        head `_head` cannot rebuild gives its own logits, every position's at once.)"""
        if not self._head_is_the_models():
            with torch.inference_mode(), applied(self._steered):
                own = self.model(input_ids=torch.tensor([list(ids)], device=self.model.device), use_cache=False)
            yield from own.logits[0].float().split(POSITION_CHUNK)
            return
        start, fed, hidden = self._prefill
        if not (start == 0 and fed == tuple(ids)):
            with applied(self._steered):
                _, states = _last_logits_and_states(self.model, DynamicCache(config=self.model.config), list(ids))
            hidden = states[-1][0]
        for chunk in hidden.split(POSITION_CHUNK):
            yield self._head(chunk)

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's own head on last-layer hidden states: the output embedding, then the soft cap or
        scale some models apply (read from their config: Gemma's cap, Cohere's scale, Granite's
        divisor), as float32 logits."""
        with torch.inference_mode():
            logits = self.model.get_output_embeddings()(hidden).float()
        config = self.model.config
        if cap := getattr(config, "final_logit_softcapping", None):
            logits = torch.tanh(logits / cap) * cap
        if isinstance(scale := getattr(config, "logit_scale", None), (int, float)):
            logits = logits * scale
        if isinstance(scaling := getattr(config, "logits_scaling", None), (int, float)) and scaling:
            logits = logits / scaling  # Granite's
        return logits

    def crop(self, length: int) -> None:
        if self._layers is not None and self._layers[0] >= length:
            self._layers = None  # of a position no longer held
        if length <= 0:
            self._cache = block_cache(self.model.config)
        elif length < self.cached_length:
            self._cache.crop(length - self.cached_length)  # a negative count: tokens to drop from the end

    def detach_last(self, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        layers = cast(list[Any], self._cache.layers)  # attention layers: each holds keys and values
        tail = [(layer.keys[..., -count:, :].clone(), layer.values[..., -count:, :].clone()) for layer in layers]
        self.crop(self.cached_length - count)
        return tail

    def attach(self, tail: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        with torch.inference_mode():  # written in place into the cache's room, made under inference mode
            for index, (keys, values) in enumerate(tail):
                self._cache.update(keys, values, index)

    def fork(self) -> TransformersEngine:
        """The same model and tokenizer, steered as this one is, with a cache of its own: work that must
        not disturb this one's."""
        twin = copy.copy(self)
        twin._cache = block_cache(self.model.config)
        return twin

    def gradient_attribution(self, ids: Sequence[int], target: int, method: str, steps: int) -> tuple[list[float], float | None]:
        """Each context token's attribution of logp(target | ids) by gradients: "grad_x_input", or
        "ig" (integrated gradients, with its completeness gap) over `steps` steps."""
        from decoding.engines.hf import attribution

        with applied(self._steered):
            if method == "grad_x_input":
                return attribution.grad_x_input(self.model, ids, target), None
            if self._neutral is None:
                self._neutral = attribution.neutral_token(self.model, self.special_ids)
            return attribution.integrated_gradients(self.model, ids, target, steps, self._neutral)

    @property
    def steerable_layers(self) -> int:
        config = self.model.config
        return int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0) or 0)

    def steer(self, steering: Steering | None) -> None:
        """Add `steering`'s vector to its layer from now on (None: no more); the cache, made under the
        old settings, is emptied: what it held must be read again. A bad steering changes nothing."""
        steered = steering_vector(self.model, self.encode, steering) if steering is not None else None
        self.steering, self._steered = steering, steered
        self.crop(0)
        self._prefill = (-1, (), torch.empty(0))
        self._layers = None

    def side_by_side(self) -> SideBySide:
        """A separate cache for several sequences stepped together (beam search)."""
        return SideBySide(self.model, self._steered)


class SideBySide:
    """Equal-length sequences run as one batch on their own KV cache, as `generate(num_beams=B)` runs them."""

    def __init__(self, model: PreTrainedModel, steered: tuple[int, torch.Tensor] | None = None) -> None:
        self.model, self.steered = model, steered
        self._cache = block_cache(model.config)

    def start(self, sequences: list[list[int]]) -> Scores:
        """Run whole sequences from scratch; the last position's logits, one row per sequence."""
        self._cache = block_cache(self.model.config)
        return Scores(self._run(sequences))

    def feed(self, token_ids: list[int]) -> Scores:
        """One new token per sequence."""
        return self.extend([[token_id] for token_id in token_ids])

    def extend(self, rows: list[list[int]]) -> Scores:
        """Equal-length runs of new tokens, one per sequence."""
        return Scores(self._run(rows))

    def reorder(self, rows: list[int]) -> None:
        """Row i of the cache becomes old row rows[i] (a beam continues from its parent)."""
        with torch.inference_mode():  # rows are copied in place, within the room made under inference mode
            self._cache.reorder_cache(cast(torch.LongTensor, torch.tensor(rows, dtype=torch.long, device=self.model.device)))

    def _run(self, ids: list[list[int]]) -> torch.Tensor:
        with applied(self.steered):
            return _last_logits(self.model, self._cache, ids)


def _last_logits(model: PreTrainedModel, cache: DynamicCache, ids: list[list[int]]) -> torch.Tensor:
    """Run equal-length rows of new tokens on `cache`; each row's last logits, as float32 (generate()
    reads them as float32 before its processors; so do we)."""
    input_ids = torch.tensor(ids, dtype=torch.long, device=model.device)
    with torch.inference_mode():
        out = model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1].to(dtype=torch.float32)


def _last_logits_and_states(
    model: PreTrainedModel, cache: DynamicCache, ids: list[int]
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Run new tokens on `cache`: the last position's logits (float32), and the hidden states of every
    layer (embeddings first, each [1, len(ids), hidden]; the last one after the final norm, as the
    head reads it)."""
    input_ids = torch.tensor([ids], dtype=torch.long, device=model.device)
    with torch.inference_mode():
        out = model(input_ids=input_ids, cache=cache, use_cache=True, logits_to_keep=1, output_hidden_states=True)
    return out.logits[0, -1].to(dtype=torch.float32), tuple(out.hidden_states)


def _final_norm(model: PreTrainedModel) -> torch.nn.Module | None:
    """The norm the base model applies after its last layer, found by the attribute names the
    transformers models give it (Llama, Qwen, Mistral, Gemma: `norm`; GPT-2: `ln_f`; Phi:
    `final_layernorm`; ...)."""
    base = model.base_model
    for name in ("norm", "ln_f", "final_layernorm", "final_layer_norm", "norm_f", "final_norm"):
        module = getattr(base, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    return None


def _weights_digest(model: PreTrainedModel, samples: int = 4096) -> str:
    """A digest of a spread of the weights as loaded (values and dtype): two checkpoints that share a
    tokenizer, or one checkpoint in two dtypes, give different numbers and different digests."""
    digest = hashlib.sha256(str(model.config.model_type).encode())
    parameters = [p for p in model.parameters() if p.device.type != "meta"]  # offloaded ones are not here
    for parameter in parameters[:: max(1, len(parameters) // 4)]:
        plain = parameter.detach()
        if type(plain) is not torch.Tensor and hasattr(plain, "dequantize"):  # a quantizer's tensor (torchao)
            plain = plain.dequantize()
        flat = plain.reshape(-1)
        sample = flat[:: max(1, flat.numel() // samples)][:samples].to("cpu", torch.float32)
        digest.update(f"{tuple(parameter.shape)} {parameter.dtype}".encode() + sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def _placement(model: PreTrainedModel) -> str | None:
    """Where a device map put the layers, e.g. "layers 0-4 cpu, 5-29 disk"; None when all are in one place."""
    device_map = getattr(model, "hf_device_map", None) or {}
    if len(set(device_map.values())) < 2:
        return None
    layers: dict[str, list[int]] = {}
    for name, where in device_map.items():
        number = name.rsplit("layers.", 1)[-1].split(".")[0] if "layers." in name else ""
        if number.isdigit():
            layers.setdefault(str(where), []).append(int(number))
    runs = [f"{_ranges(sorted(numbers))} {where}" for where, numbers in layers.items()]
    return "layers " + ", ".join(runs) if runs else "split over " + ", ".join(sorted(set(map(str, device_map.values()))))


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2 5"."""
    runs: list[list[int]] = []
    for number in numbers:
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    return " ".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs)


def _quantized_as(model: PreTrainedModel) -> str | None:
    """How a quantizer stores the weights (--load-in): "int8" or "nf4"; None when it did not."""
    config = getattr(model.config, "quantization_config", None)
    if config is None:
        return None
    if getattr(config, "load_in_4bit", False):
        return str(getattr(config, "bnb_4bit_quant_type", "4bit"))
    return "int8"


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
