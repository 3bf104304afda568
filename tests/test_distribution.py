import math

import torch

from decoding.distribution import entropy, rank_of, summarize, top_ids
from decoding.tokens import TokenTexts


def test_ties_are_ordered_by_token_id_so_row_zero_is_argmax():
    logits = torch.tensor([0.0, 5.0, 1.0, 5.0, 5.0, 2.0])
    assert top_ids(logits, 4) == [1, 3, 4, 5]
    assert top_ids(torch.tensor([0.0, 3.0, 1.0, 2.0, 2.0]), 3) == [1, 3, 4]  # a tie at the cut
    assert top_ids(torch.tensor([0.0, 3.0, 1.0, 2.0]), 3) == [1, 3, 2]  # no ties: topk's own order
    assert top_ids(logits, 1) == [int(torch.argmax(logits))]
    assert [rank_of(logits, i) for i in range(6)] == [5, 0, 4, 1, 2, 3]


def test_entropy_of_a_uniform_distribution_is_log_n():
    logprobs = torch.log_softmax(torch.zeros(8), dim=-1)
    assert math.isclose(entropy(logprobs), math.log(8), rel_tol=1e-6)


def test_summary_marks_tokens_a_processor_removed():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0])
    processed = torch.tensor([3.0, 2.0, float("-inf"), float("-inf")])
    summary = summarize(logits, torch.log_softmax(logits, dim=-1), processed, 4, TokenTexts(lambda i: f"t{i}".encode()))
    assert [c.removed for c in summary.candidates] == [False, False, True, True]
    assert summary.candidates[2].processed_prob == 0.0
    assert math.isclose(sum(c.processed_prob for c in summary.candidates), 1.0, rel_tol=1e-6)
    assert math.isclose(sum(c.prob for c in summary.candidates), 1.0, rel_tol=1e-6)
    assert summary.processed_entropy < summary.entropy
