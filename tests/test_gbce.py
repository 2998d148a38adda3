"""gBCE against a direct, dense implementation of Petrov & Macdonald's formula; its wiring in training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqrec.config import ConfigError, LossConfig, ModelConfig
from seqrec.data.batches import BatchBuilder
from seqrec.losses import LOSSES, bce_loss
from seqrec.losses.gbce import gbce_beta, gbce_loss
from seqrec.model.sasrec import SASRec, similarity_for_loss
from seqrec.train.objective import Objective, _candidate_vectors
from tests.conftest import tiny_config


def reference_gbce(seq, pos, neg, mask, num_items, t, weights=None):
    """The paper's formula written out: -log(sigmoid(s+)^beta) - sum_k log(1 - sigmoid(s_k)), over 1 + k."""
    k = neg.shape[2]
    alpha = k / (num_items - 1)
    beta = alpha * (t * (1 - 1 / alpha) + 1 / alpha)
    s_pos = (seq * pos).sum(-1).double()
    s_neg = torch.einsum("bld,blkd->blk", seq, neg).double()
    per = (-torch.log(torch.sigmoid(s_pos) ** beta) - torch.log(1 - torch.sigmoid(s_neg)).sum(-1)) / (1 + k)
    w = mask.double() if weights is None else mask.double() * weights.double()
    return (per * w).sum() / w.sum()


def _inputs(seed, B=3, L=5, D=4, K=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    seq = torch.randn(B, L, D, generator=g, dtype=dtype, requires_grad=True)
    pos = torch.randn(B, L, D, generator=g, dtype=dtype, requires_grad=True)
    neg = torch.randn(B, L, K, D, generator=g, dtype=dtype, requires_grad=True)
    mask = torch.rand(B, L, generator=g) < 0.7
    mask[0, -1] = True
    return seq, pos, neg, mask


@pytest.mark.parametrize("t", [0.0, 0.5, 0.75, 1.0])
@pytest.mark.parametrize("num_items", [7, 50, 3000])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_the_formula_values_and_gradients(t, num_items, weighted):
    seq, pos, neg, mask = _inputs(seed=num_items + int(10 * t))
    weights = torch.rand(mask.shape, generator=torch.Generator().manual_seed(1)) if weighted else None
    ours = gbce_loss(seq, pos, neg, mask, num_items=num_items, t=t, weights=weights)
    ref = reference_gbce(seq, pos, neg, mask, num_items, t, weights)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(torch.autograd.grad(ours, (seq, pos, neg)), torch.autograd.grad(ref, (seq, pos, neg)), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_float32_inputs_match_the_float64_formula_and_keep_their_dtype():
    seq, pos, neg, mask = _inputs(seed=4, dtype=torch.float32)
    ours = gbce_loss(seq, pos, neg, mask, num_items=1000, t=0.9)
    assert ours.dtype == torch.float32
    ref = reference_gbce(seq.double(), pos.double(), neg.double(), mask, 1000, 0.9)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6)


def test_beta_endpoints_and_t0_is_bce_up_to_the_1_plus_k_mean():
    assert gbce_beta(101, 10, 0.0) == pytest.approx(1.0)
    assert gbce_beta(101, 10, 1.0) == pytest.approx(10 / 100)
    assert gbce_beta(101, 10, 0.5) == pytest.approx(0.1 * (0.5 * (1 - 10) + 10))
    seq, pos, neg, mask = _inputs(seed=2, K=1)
    torch.testing.assert_close(gbce_loss(seq, pos, neg, mask, num_items=40, t=0.0),
                               bce_loss(seq, pos, neg, mask) / 2)
    # (B, L, D) negatives are one negative per position.
    torch.testing.assert_close(gbce_loss(seq, pos, neg[:, :, 0], mask, num_items=40, t=0.3),
                               gbce_loss(seq, pos, neg, mask, num_items=40, t=0.3))


def test_no_valid_position_gives_zero_with_a_gradient_path():
    seq, pos, neg, mask = _inputs(seed=5)
    loss = gbce_loss(seq, pos, neg, torch.zeros_like(mask), num_items=30, t=0.5)
    assert loss.item() == 0.0 and loss.requires_grad


@pytest.mark.parametrize(("items", "k", "t", "match"), [(1, 1, 0.5, "at least 2"), (10, 10, 0.5, "num_items - 1"),
                                                        (10, 2, 1.5, r"\[0, 1\]")])
def test_bad_arguments_are_value_errors(items, k, t, match):
    with pytest.raises(ValueError, match=match):
        gbce_beta(items, k, t)


def test_config_validates_gbce_fields():
    assert LossConfig(name="gbce", gbce_t=0.2, negatives_per_position=4).gbce_t == 0.2
    with pytest.raises(ConfigError, match="gbce_t"):
        LossConfig(name="gbce", gbce_t=1.2)
    with pytest.raises(ConfigError, match="apply to infonce only"):
        LossConfig(name="gbce", mode="full")


def test_objective_uses_the_configured_t_k_and_catalogue():
    items = np.array([1, 2, 3, 4, 5, 1, 3, 5, 2, 4])
    offsets = np.array([0, 5, 10])
    builder = BatchBuilder(offsets, items, np.array([5, 5]), 9, maxlen=6, negatives_per_position=3)
    batch = builder.build(np.array([0, 1]), np.random.default_rng(0))
    torch.manual_seed(0)
    model = SASRec(9, ModelConfig(maxlen=6, hidden_dim=8, num_blocks=1, num_heads=1, dropout=0.0)).eval()
    objective = Objective(LossConfig(name="gbce", gbce_t=0.4, negatives_per_position=3))
    seq = model(batch.input_ids, users=batch.users)
    pos, neg = _candidate_vectors(model, batch)
    assert neg.shape[2] == 3
    expected = LOSSES["gbce"](seq, pos, neg, batch.loss_mask, num_items=9, t=0.4)
    torch.testing.assert_close(objective(model, batch), expected)
    assert not torch.allclose(expected, gbce_loss(seq, pos, neg, batch.loss_mask, num_items=9, t=0.8))
    assert similarity_for_loss("gbce") == "dot"


def test_gbce_training_run_records_dot_similarity(tmp_path):
    from seqrec.retrieval.recommend import load_model
    from seqrec.train.loop import train

    cfg = tiny_config(loss={"name": "gbce", "negatives_per_position": 4, "gbce_t": 0.5}, train={"epochs": 1})
    train(cfg, tmp_path / "gbce", progress=False, command=["test"])
    assert load_model(tmp_path / "gbce").similarity == "dot"
