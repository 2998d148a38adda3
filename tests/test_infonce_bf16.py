"""The streamed softmax with bfloat16 matrix products (``gemm_dtype``) against the float64 reference.

bfloat16 keeps 8 mantissa bits, so the tolerances here are those of one rounding per logit (about 0.4%
of the logit's magnitude, up to 1/temperature): close to the reference, never equal to it.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch

import seqrec.losses.infonce_kernel as kernel_module
from seqrec.config import LossConfig
from seqrec.losses.infonce import full_softmax_loss, infonce_loss
from seqrec.losses.infonce_kernel import softmax_ce_sum
from seqrec.train.objective import Objective
from tests.test_infonce import (
    column_blocks,
    dense_ce_sum,
    make_batch,
    reference_full,
    reference_infonce,
    unit_inputs,
)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-30))


@pytest.mark.parametrize("kind", ["none", "logcount", "learnable"])
@pytest.mark.parametrize("col_factor", [1, 32])
@pytest.mark.parametrize("include_pos", [True, False])
def test_bf16_gemms_match_the_float64_reference(kind, col_factor, include_pos):
    n, u, tau = 70, 90, 0.07
    q, pos, pool = unit_inputs(n, u, 16, tau, torch.float32)
    g = torch.Generator().manual_seed(4)
    bias = None
    if kind != "none":
        bias = torch.randint(1, 50, (u,), generator=g).float().log().requires_grad_(kind == "learnable")
    rows = torch.tensor([0, 0, 3, 9, 22, 69])
    cols = torch.tensor([1, 36, 5, 20, 2, 89])
    inputs = [q, pos, pool] + ([bias] if kind == "learnable" else [])
    with column_blocks(col_factor), mock.patch.object(
        kernel_module, "_fixed_shift_sweep", wraps=kernel_module._fixed_shift_sweep
    ) as sweep:
        ours = softmax_ce_sum(q, pos, pool, bias, rows, cols, include_pos=include_pos, scale=0.3, chunk_size=8,
                              logit_bound=1.001 / tau, gemm_dtype=torch.bfloat16)
        assert sweep.call_args.args[13].dtype == torch.bfloat16  # the tile buffer: the GEMMs ran in bf16
    assert ours.dtype == torch.float32
    wide = [t.double() if t is not None else None for t in (q, pos, pool, bias)]
    ref = dense_ce_sum(*wide, rows, cols, include_pos, 0.3)
    assert ours.item() == pytest.approx(ref.item(), rel=3e-3)
    for a, r in zip(torch.autograd.grad(ours, inputs), torch.autograd.grad(ref, inputs), strict=True):
        assert a.dtype == torch.float32
        assert _relative(a, r) < 0.02


def test_bf16_gemms_without_a_bound_stay_in_full_precision():
    # No logit bound: the running-max path, which has no low-precision variant, gives the fp32 result.
    q, pos, pool = unit_inputs(20, 30, 8, 0.1, torch.float32)
    rows, cols = torch.tensor([1, 4]), torch.tensor([2, 7])
    kw = dict(include_pos=True, scale=0.5, chunk_size=4)
    low = softmax_ce_sum(q, pos, pool, None, rows, cols, gemm_dtype=torch.bfloat16, **kw)
    full = softmax_ce_sum(q, pos, pool, None, rows, cols, **kw)
    assert torch.equal(low, full)


def test_full_softmax_and_pooled_infonce_with_bf16_gemms():
    seq, pos, neg, mask, pos_ids, neg_ids, table, history, _ = make_batch(5, 4, 9, 32, 3, 60, dtype=torch.float32)
    table.requires_grad_()
    ref = reference_full(seq.double(), table.double(), mask, pos_ids, 0.07, history)
    ours = full_softmax_loss(seq, table, mask, pos_ids, 0.07, history_ids=history, gemm_dtype=torch.bfloat16)
    assert ours.item() == pytest.approx(ref.item(), rel=3e-3)
    g_ours = torch.autograd.grad(ours, (seq, table))
    g_ref = torch.autograd.grad(ref, (seq, table))
    assert all(_relative(a, r) < 0.02 for a, r in zip(g_ours, g_ref, strict=True))

    ref = reference_infonce(seq.double(), pos.double(), neg.double(), mask, pos_ids, neg_ids, 0.07)
    ours = infonce_loss(seq, pos, neg, mask, pos_ids, neg_ids, 0.07, gemm_dtype=torch.bfloat16)
    assert ours.item() == pytest.approx(ref.item(), rel=3e-3)


def test_objective_bf16_uses_bf16_gemms_and_learns_like_fp32():
    # precision=bf16 hands bfloat16 to the loss; one small problem optimised in both precisions ends at
    # nearly the same loss.
    losses = {}
    for precision in ("fp32", "bf16"):
        objective = Objective(LossConfig(mode="full"), precision=precision)
        assert objective.gemm_dtype == (torch.bfloat16 if precision == "bf16" else None)
        torch.manual_seed(1)
        seq = torch.randn(1, 40, 16, requires_grad=True)
        table = torch.randn(41, 16, requires_grad=True)
        opt = torch.optim.Adam([seq, table], lr=0.05)
        ids = torch.arange(1, 41)[None]
        for _ in range(60):
            loss = full_softmax_loss(seq, table, torch.ones(1, 40), ids, 0.07, gemm_dtype=objective.gemm_dtype)
            opt.zero_grad()
            loss.backward()
            opt.step()
        losses[precision] = loss.item()
    assert losses["fp32"] < 0.5  # it learned: ln(40) = 3.7 at the start
    assert losses["bf16"] == pytest.approx(losses["fp32"], abs=0.05)
