"""The block-growing KV cache gives what transformers' own DynamicCache gives, bit for bit, through
growth, crops, set-aside tails and beam reorders."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache

from decoding.engines.hf import kv_cache
from decoding.engines.hf.kv_cache import block_cache


@pytest.fixture
def model(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(kv_cache, "BLOCK", 4)  # the tiny model's 64 positions cross many blocks
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def run(model, cache, rows: list[list[int]]) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=torch.tensor(rows), past_key_values=cache, use_cache=True).logits[:, -1]


def test_steps_crops_and_regrowth_match_dynamic_cache(model):
    ours, theirs = block_cache(model.config), DynamicCache(config=model.config)
    for cache in (ours, theirs):
        run(model, cache, [[5, 6, 7]])
    for token in range(10, 30):
        assert torch.equal(run(model, ours, [[token]]), run(model, theirs, [[token]]))
    ours.crop(-9), theirs.crop(-9)  # back into an earlier block, then grow over what it held
    for token in (40, 41, 42, 43, 44, 45, 46, 47, 48, 49, 50):
        assert torch.equal(run(model, ours, [[token]]), run(model, theirs, [[token]]))
    assert ours.get_seq_length() == theirs.get_seq_length() == 25


def test_beam_reorders_match_dynamic_cache(model):
    ours, theirs = block_cache(model.config), DynamicCache(config=model.config)
    for cache in (ours, theirs):
        run(model, cache, [[5, 6, 7]] * 3)
    for step, rows in enumerate([[0, 0, 1], [2, 1, 1], [1, 2, 0], [0, 0, 0], [2, 2, 1]] * 3):
        index = torch.tensor(rows)
        with torch.inference_mode():
            ours.reorder_cache(index), theirs.reorder_cache(index)
        tokens = [[20 + step], [30 + step], [40 + step]]
        assert torch.equal(run(model, ours, tokens), run(model, theirs, tokens))
