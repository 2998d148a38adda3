import math

import numpy as np
import pytest
import torch

from seqrec.evaluation.evaluate import ranks_from_scores, seen_mask
from seqrec.evaluation.metrics import hit_rate, mrr, ndcg, ranking_metrics


def test_hand_computed_metrics():
    ranks = np.array([1, 2, 11, 5])
    assert hit_rate(ranks, 1) == 0.25
    assert hit_rate(ranks, 10) == 0.75
    expected = (1.0 + 1 / math.log2(3) + 0.0 + 1 / math.log2(6)) / 4
    assert ndcg(ranks, 10) == pytest.approx(expected)
    assert mrr(ranks) == pytest.approx((1 + 0.5 + 1 / 11 + 0.2) / 4)
    out = ranking_metrics(ranks, (1, 10))
    assert set(out) == {"hr@1", "ndcg@1", "hr@10", "ndcg@10", "mrr"}
    assert out["ndcg@1"] == 0.25


def test_ranks_are_pessimistic_on_ties_and_skip_padding():
    scores = torch.tensor([[9.0, 1.0, 2.0, 2.0, 0.5]])  # column 0 is padding and scores highest
    assert ranks_from_scores(scores, torch.tensor([2])).item() == 2  # tied with item 3 -> counted against
    assert ranks_from_scores(scores, torch.tensor([3])).item() == 2
    assert ranks_from_scores(scores, torch.tensor([1])).item() == 3
    assert ranks_from_scores(scores, torch.tensor([4])).item() == 4


def test_seen_items_are_removed_but_never_the_target():
    scores = torch.tensor([[0.0, 5.0, 4.0, 3.0, 2.0]])
    seen = seen_mask(torch.tensor([[0, 1, 3]]), 4)
    assert seen.tolist() == [[False, True, False, True, False]]
    assert ranks_from_scores(scores, torch.tensor([4]), seen).item() == 2  # only item 2 remains above
    seen_target = seen_mask(torch.tensor([[1, 2]]), 4)
    assert ranks_from_scores(scores, torch.tensor([2]), seen_target).item() == 1
