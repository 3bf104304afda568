"""Shared fixtures: a tiny random Llama (built here, saved as a real model folder) and the embedded model."""

from __future__ import annotations

from pathlib import Path

import hypothesis  # noqa: F401  imported now: its pytest plugin's late import trips CPython 3.11.7's ast bug (gh-106905)
import pytest

CORPUS = [
    "Transformers are the most powerful beings in the universe.",
    "The quick brown fox jumps over the lazy dog.",
    "Decoding picks one token at a time: greedy, beam search, sampling.",
    "Température, café, naïve: accents are bytes too. 東京 and emoji 😀.",
] * 20


def build_tiny_model(folder: Path, *, max_positions: int = 64) -> Path:
    """A 2-layer Llama with a byte-level BPE tokenizer (every byte is a token, like GPT-2's)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>")
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        initializer_range=0.5,  # peaked distributions, so greedy choices are clear-cut
        eos_token_id=fast.eos_token_id,
        bos_token_id=None,
        pad_token_id=fast.eos_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


CHAT_TEMPLATE = (
    "{% for message in messages %}<|endoftext|>{{ message['role'] }}\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|endoftext|>assistant\n{% endif %}"
)


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with a chat template (its end-of-text token frames each message)."""
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-chat")
    shutil.copytree(tiny_model_dir, folder, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_engine(tiny_model_dir):
    from decoding.engines.registry import LoadOptions, load_engine

    return load_engine(LoadOptions(model=str(tiny_model_dir), device="cpu"))


@pytest.fixture
def tiny_session(tiny_engine):
    from decoding.search.session import Session

    session = Session(tiny_engine, choices=5)
    session.reset("The quick brown")
    return session


@pytest.fixture(scope="session")
def embedded_engine():
    """The real embedded SmolLM2-135M-Instruct, from the user's converted cache (converted on first use)."""
    from decoding.engines.registry import LoadOptions, load_engine

    return load_engine(LoadOptions(device="cpu"))
