"""infonce_loss / full_softmax_loss against plain dense float64 references (values and gradients)."""

from __future__ import annotations

import functools
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import seqrec.losses.infonce_kernel as kernel_module
from seqrec.losses.infonce import (
    _build_pool,
    choose_infonce_mode,
    full_softmax_loss,
    infonce_loss,
    sample_pool_indices,
)
from seqrec.losses.infonce_kernel import softmax_ce_sum

RTOL = 1e-5
PROPERTY = settings(max_examples=50, deadline=None)


# ----------------------------------------------------------------------------- dense references


def reference_infonce(
    seq, pos, neg, mask, pos_ids, neg_ids, temperature, *, keep=None, log_q=None, history=None
):
    """The loss written out densely: one logit per (valid row, pool entry), no grouping, no streaming.

    ``keep``: indices of the sampled-negative entries to use (the pool_size subset); ``log_q`` given means
    extra_pos_negatives with that correction.
    """
    if neg.dim() == 3:
        neg, neg_ids = neg.unsqueeze(2), neg_ids.unsqueeze(2)
    B, L, K, _ = neg.shape
    rows = [(b, t) for b in range(B) for t in range(L) if bool(mask[b, t])]
    if not rows:
        return (seq * 0).sum()
    qn, pn, nn = (F.normalize(x, dim=-1) for x in (seq, pos, neg))
    entries = [(b, t, k) for b, t in rows for k in range(K) if int(neg_ids[b, t, k]) != 0]
    if keep is not None:
        entries = [entries[i] for i in keep.tolist()]
    vecs = [nn[b, t, k] for b, t, k in entries]
    ids = [int(neg_ids[b, t, k]) for b, t, k in entries]
    bias = [0.0] * len(entries)
    if log_q is not None:
        vecs += [pn[b, t] for b, t in rows]
        ids += [int(pos_ids[b, t]) for b, t in rows]
        bias += [-float(log_q[int(pos_ids[b, t])]) for b, t in rows]
    q = torch.stack([qn[b, t] for b, t in rows])
    p = torch.stack([pn[b, t] for b, t in rows])
    pos_logit = (q * p).sum(-1, keepdim=True) / temperature
    if vecs:
        pool_logit = q @ torch.stack(vecs).T / temperature + torch.tensor(bias, dtype=q.dtype)
        banned = torch.zeros(pool_logit.shape, dtype=torch.bool)
        for r, (b, t) in enumerate(rows):
            own = int(pos_ids[b, t])
            hist = set() if history is None else set(history[b].tolist()) - {0}
            for j, item in enumerate(ids):
                banned[r, j] = item == own or item in hist
        pool_logit = pool_logit.masked_fill(banned, float("-inf"))
        logits = torch.cat([pos_logit, pool_logit], dim=1)
    else:
        logits = pos_logit
    return -torch.log_softmax(logits, dim=1)[:, 0].mean()


def reference_full(seq, table, mask, pos_ids, temperature, history=None):
    """Dense catalogue softmax: row 0 dropped, history masked except the positive."""
    rows = [(b, t) for b in range(seq.shape[0]) for t in range(seq.shape[1]) if bool(mask[b, t])]
    if not rows:
        return (seq * 0).sum()
    q = torch.stack([F.normalize(seq[b, t], dim=-1) for b, t in rows])
    logits = q @ F.normalize(table[1:], dim=-1).T / temperature
    banned = torch.zeros(logits.shape, dtype=torch.bool)
    if history is not None:
        for r, (b, t) in enumerate(rows):
            for h in history[b].tolist():
                if h != 0 and h != int(pos_ids[b, t]):
                    banned[r, h - 1] = True
    logits = logits.masked_fill(banned, float("-inf"))
    target = torch.tensor([int(pos_ids[b, t]) - 1 for b, t in rows])
    return F.cross_entropy(logits, target)


# ----------------------------------------------------------------------------- helpers


def make_batch(seed, B, L, D, K, num_items, *, neg_3d=False, p_valid=0.6, dtype=torch.float64):
    """Random batch whose embeddings come from one item table (same id => same embedding)."""
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(num_items + 1, D, generator=g, dtype=dtype)
    pos_ids = torch.randint(1, num_items + 1, (B, L), generator=g)
    # Negatives may be 0 (never pooled) and may collide with positives (accidental hits).
    neg_ids = torch.randint(0, num_items + 1, (B, L) if neg_3d else (B, L, K), generator=g)
    mask = torch.rand(B, L, generator=g) < p_valid
    pos_ids = torch.where(mask, pos_ids, torch.zeros_like(pos_ids))
    seq = torch.randn(B, L, D, generator=g, dtype=dtype).requires_grad_()
    pos = table[pos_ids].requires_grad_()
    neg = table[neg_ids].requires_grad_()
    history = torch.randint(0, num_items + 1, (B, 4), generator=g)
    log_q = torch.log_softmax(torch.randn(num_items + 1, generator=g, dtype=dtype), dim=0)
    return seq, pos, neg, mask, pos_ids, neg_ids, table, history, log_q


def column_blocks(factor):
    """Tiles span ``factor * chunk_size`` pool columns: small factors force the two-sweep column path."""
    return mock.patch.object(kernel_module, "_COL_BLOCK_FACTOR", factor)


def assert_close(a, b, what=""):
    assert a.shape == b.shape, what
    assert torch.allclose(a, b, rtol=RTOL, atol=1e-10), f"{what}: max abs diff {(a - b).abs().max().item()}"


def check_loss_and_grads(ours, ref, inputs):
    assert_close(ours.detach(), ref.detach(), "loss")
    g_ours = torch.autograd.grad(ours, inputs, allow_unused=True, retain_graph=True)
    g_ref = torch.autograd.grad(ref, inputs, allow_unused=True, retain_graph=True)
    for i, (a, b) in enumerate(zip(g_ours, g_ref, strict=True)):
        a = torch.zeros_like(inputs[i]) if a is None else a
        b = torch.zeros_like(inputs[i]) if b is None else b
        assert_close(a, b, f"grad {i}")


dims = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**31 - 1),
        "B": st.integers(1, 3),
        "L": st.integers(1, 5),
        "D": st.integers(2, 6),
        "K": st.integers(1, 3),
        "num_items": st.integers(1, 8),
        "neg_3d": st.booleans(),
        "p_valid": st.sampled_from([0.0, 0.5, 1.0]),
    }
)


# ----------------------------------------------------------------------------- properties


@PROPERTY
@given(
    d=dims,
    learn_tau=st.booleans(),
    tau=st.sampled_from([0.07, 0.3, 1.0, 0.001]),  # 0.001: too cold for the fixed shift, running max
    extra=st.booleans(),
    use_history=st.booleans(),
    chunk=st.integers(1, 6),
    col_factor=st.sampled_from([1, 2, 32]),
)
def test_matches_dense_reference(d, learn_tau, tau, extra, use_history, chunk, col_factor):
    seq, pos, neg, mask, pos_ids, neg_ids, _, history, log_q = make_batch(**d)
    temperature = torch.tensor(tau, dtype=torch.float64, requires_grad=True) if learn_tau else tau
    hist = history if use_history else None
    with column_blocks(col_factor):
        ours = infonce_loss(
            seq, pos, neg, mask, pos_ids, neg_ids, temperature,
            extra_pos_negatives=extra, pos_log_q=log_q if extra else None, history_ids=hist, chunk_size=chunk,
        )  # fmt: skip
    ref = reference_infonce(
        seq, pos, neg, mask, pos_ids, neg_ids, temperature, log_q=log_q if extra else None, history=hist
    )
    inputs = [seq, pos, neg] + ([temperature] if learn_tau else [])
    check_loss_and_grads(ours, ref, inputs)


@PROPERTY
@given(d=dims, pool_size=st.integers(0, 12), gen_seed=st.integers(0, 1000))
def test_pool_size_equals_reference_on_chosen_subset(d, pool_size, gen_seed):
    seq, pos, neg, mask, pos_ids, neg_ids, *_ = make_batch(**d)
    ours = infonce_loss(
        seq, pos, neg, mask, pos_ids, neg_ids, 0.2,
        pool_size=pool_size, generator=torch.Generator().manual_seed(gen_seed), chunk_size=2,
    )  # fmt: skip
    ids = neg_ids if neg_ids.dim() == 3 else neg_ids.unsqueeze(2)
    num_entries = int(((ids != 0) & mask.bool()[:, :, None]).sum())
    keep = sample_pool_indices(num_entries, pool_size, torch.Generator().manual_seed(gen_seed))
    assert keep.numel() == min(pool_size, num_entries)
    ref = reference_infonce(seq, pos, neg, mask, pos_ids, neg_ids, 0.2, keep=keep)
    check_loss_and_grads(ours, ref, [seq, pos, neg])


@PROPERTY
@given(
    d=dims,
    learn_tau=st.booleans(),
    use_history=st.booleans(),
    chunk=st.integers(1, 5),
    col_factor=st.sampled_from([1, 32]),
)
def test_full_softmax_matches_dense_reference(d, learn_tau, use_history, chunk, col_factor):
    seq, _, _, mask, pos_ids, _, table, history, _ = make_batch(**d)
    table = table.clone().requires_grad_()
    temperature = torch.tensor(0.25, dtype=torch.float64, requires_grad=True) if learn_tau else 0.25
    hist = history if use_history else None
    with column_blocks(col_factor):
        ours = full_softmax_loss(seq, table, mask, pos_ids, temperature, history_ids=hist, chunk_size=chunk)
    ref = reference_full(seq, table, mask, pos_ids, temperature, history=hist)
    check_loss_and_grads(ours, ref, [seq, table] + ([temperature] if learn_tau else []))


# ----------------------------------------------------------------------------- specific cases


def test_pool_size_not_smaller_than_pool_is_no_cap():
    seq, pos, neg, mask, pos_ids, neg_ids, *_ = make_batch(3, 3, 5, 4, 2, 6)
    full = infonce_loss(seq, pos, neg, mask, pos_ids, neg_ids)
    capped = infonce_loss(
        seq, pos, neg, mask, pos_ids, neg_ids, pool_size=10_000, generator=torch.Generator()
    )
    assert_close(full.detach(), capped.detach())


def test_streaming_tiles_match_single_tile():
    # 60 rows x ~250 pool columns: chunk_size=4 gives 15 row tiles; with 4 * chunk_size columns per
    # block the pool is swept in ~16 column blocks, with 32 * chunk_size in 2.
    seq, pos, neg, mask, pos_ids, neg_ids, _, history, log_q = make_batch(5, 6, 10, 8, 4, 400, p_valid=1.0)
    kw = {"extra_pos_negatives": True, "pos_log_q": log_q, "history_ids": history}
    one = infonce_loss(seq, pos, neg, mask, pos_ids, neg_ids, 0.1, chunk_size=10_000, **kw)
    tiled = infonce_loss(seq, pos, neg, mask, pos_ids, neg_ids, 0.1, chunk_size=4, **kw)
    with column_blocks(4):
        narrow = infonce_loss(seq, pos, neg, mask, pos_ids, neg_ids, 0.1, chunk_size=4, **kw)
    ref = reference_infonce(seq, pos, neg, mask, pos_ids, neg_ids, 0.1, log_q=log_q, history=history)
    for ours in (one, tiled, narrow):
        check_loss_and_grads(ours, ref, [seq, pos, neg])


@pytest.mark.parametrize("include_pos", [True, False])
def test_streamed_sum_gradcheck_with_masks_and_blocks(include_pos):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(7, 3, dtype=torch.float64, generator=g, requires_grad=True)
    pos = torch.randn(7, dtype=torch.float64, generator=g, requires_grad=True)
    pool = torch.randn(11, 3, dtype=torch.float64, generator=g, requires_grad=True)
    bias = torch.randn(11, dtype=torch.float64, generator=g, requires_grad=True)
    rows = torch.tensor([0, 0, 2, 5, 5, 5, 6])
    cols = torch.tensor([1, 9, 0, 3, 4, 10, 2])
    expected = None
    # With 4 * chunk_size columns per block, chunk 1 and 2 sweep the 11 columns in 3 and 2 blocks
    # (two-sweep path); chunk 3 and 100 take one block.
    for chunk in (1, 2, 3, 100):
        fn = functools.partial(
            softmax_ce_sum,
            mask_rows=rows,
            mask_cols=cols,
            include_pos=include_pos,
            scale=0.3,
            chunk_size=chunk,
        )
        with column_blocks(4):
            assert torch.autograd.gradcheck(fn, (q, pos, pool, bias), fast_mode=True)
            value = fn(q, pos, pool, bias).item()
        expected = value if expected is None else expected
        assert value == pytest.approx(expected, rel=1e-12)


def dense_ce_sum(q, pos, pool, bias, rows, cols, include_pos, scale):
    """Reference for softmax_ce_sum: the whole masked logits matrix at once."""
    logits = q @ pool.T + (0 if bias is None else bias)
    logits = logits.index_put((rows, cols), torch.tensor(float("-inf"), dtype=q.dtype))
    if include_pos:
        logits = torch.cat([pos[:, None], logits], dim=1)
    return scale * (torch.logsumexp(logits, dim=1) - pos).sum()


@pytest.mark.parametrize("kind", ["sparse", "dense", "huge", "learnable"])
@pytest.mark.parametrize("col_factor", [1, 32])
def test_streamed_sum_bias_paths(kind, col_factor):
    # sparse: few non-zero biases (scaled column by column); dense: every column; huge: biases above 40
    # (shifted by beta); learnable: the bias gets a gradient.
    g = torch.Generator().manual_seed(1)
    q = torch.randn(9, 4, dtype=torch.float64, generator=g, requires_grad=True)
    pos = torch.randn(9, dtype=torch.float64, generator=g, requires_grad=True)
    pool = torch.randn(40, 4, dtype=torch.float64, generator=g, requires_grad=True)
    bias = torch.zeros(40, dtype=torch.float64)
    if kind == "sparse":
        bias[[3, 17, 33]] = torch.tensor([0.7, 1.1, 2.0], dtype=torch.float64)
    elif kind == "huge":
        bias = 45.0 + torch.rand(40, dtype=torch.float64, generator=g)
        bias[5] = 3.0
    else:
        bias = torch.rand(40, dtype=torch.float64, generator=g)
    bias.requires_grad_(kind == "learnable")
    rows, cols = torch.tensor([0, 0, 4, 8]), torch.tensor([3, 39, 17, 0])
    inputs = [q, pos, pool] + ([bias] if kind == "learnable" else [])
    for include_pos in (True, False):
        with column_blocks(col_factor):
            ours = softmax_ce_sum(
                q, pos, pool, bias, rows, cols, include_pos=include_pos, scale=0.25, chunk_size=2
            )
        ref = dense_ce_sum(q, pos, pool, bias, rows, cols, include_pos, 0.25)
        check_loss_and_grads(ours, ref, inputs)


def unit_inputs(n, u, d, tau, dtype, seed=3):
    """Unit-norm queries / pool scaled by 1/tau (what the callers pass with a logit bound)."""
    g = torch.Generator().manual_seed(seed)
    q = (F.normalize(torch.randn(n, d, dtype=torch.float64, generator=g), dim=1) / tau).to(dtype)
    pool = F.normalize(torch.randn(u, d, dtype=torch.float64, generator=g), dim=1).to(dtype)
    pos = (q * F.normalize(torch.randn(n, d, dtype=torch.float64, generator=g), dim=1).to(dtype)).sum(1)
    return [t.detach().requires_grad_() for t in (q, pos, pool)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["none", "logcount", "logq", "learnable"])
@pytest.mark.parametrize("col_factor", [1, 32])
@pytest.mark.parametrize("include_pos", [True, False])
def test_fixed_shift_path_matches_running_max_and_reference(dtype, kind, col_factor, include_pos):
    n, u, tau = 23, 37, 0.05
    q, pos, pool = unit_inputs(n, u, 8, tau, dtype)
    g = torch.Generator().manual_seed(4)
    bias = None
    if kind == "logcount":
        bias = torch.randint(1, 50, (u,), generator=g).double().log().to(dtype)
    elif kind in ("logq", "learnable"):
        bias = (
            torch.randint(1, 50, (u,), generator=g).double().log()
            + 12 * torch.rand(u, generator=g, dtype=torch.float64)
        ).to(dtype)
    if kind == "learnable":
        bias.requires_grad_()
    rows = torch.tensor([0, 0, 3, 3, 3, 9, 22, 22])
    cols = torch.tensor([1, 36, 0, 5, 5, 20, 2, 3])  # a duplicate pair too
    inputs = [q, pos, pool] + ([bias] if kind == "learnable" else [])
    kw = dict(include_pos=include_pos, scale=0.3, chunk_size=4)
    assert kernel_module._fixed_shift(1.001 / tau, bias, u, dtype, 0.3) is not None
    with column_blocks(col_factor), mock.patch.object(
        kernel_module, "_fixed_shift_sweep", wraps=kernel_module._fixed_shift_sweep
    ) as sweep:
        fixed = softmax_ce_sum(q, pos, pool, bias, rows, cols, logit_bound=1.001 / tau, **kw)
        assert sweep.call_count == 1
        general = softmax_ce_sum(q, pos, pool, bias, rows, cols, **kw)
        assert sweep.call_count == 1
    wide = [t.double() if t is not None else None for t in (q, pos, pool, bias)]
    ref = dense_ce_sum(*wide, rows, cols, include_pos, 0.3)
    rtol = RTOL if dtype == torch.float64 else 1e-4
    for ours in (fixed, general):
        assert torch.allclose(ours.double(), ref, rtol=rtol)
    g_fixed = torch.autograd.grad(fixed, inputs)
    g_general = torch.autograd.grad(general, inputs)
    g_ref = torch.autograd.grad(ref, inputs)
    for a, b, r in zip(g_fixed, g_general, g_ref, strict=True):
        atol = 1e-10 if dtype == torch.float64 else 1e-6
        assert torch.allclose(a.double(), r.double(), rtol=rtol, atol=atol)
        assert torch.allclose(a, b, rtol=rtol, atol=atol)


def test_fixed_shift_falls_back_when_not_provably_safe():
    f32, bias = torch.float32, torch.tensor([0.0, 3.0, -2.0])
    assert kernel_module._fixed_shift(1 / 0.07, bias, 3, f32, 1.0) == pytest.approx(0.5)
    assert kernel_module._fixed_shift(1 / 0.07, None, 3, f32, 1.0) == 0.0
    assert kernel_module._fixed_shift(None, bias, 3, f32, 1.0) is None  # no guarantee
    assert kernel_module._fixed_shift(1 / 0.01, bias, 3, f32, 1.0) is None  # |logit| 100: exp overflows
    assert kernel_module._fixed_shift(1 / 0.01, bias, 3, torch.float64, 1.0) is not None
    assert kernel_module._fixed_shift(1 / 0.02, bias + 30, 3, f32, 1.0) is None  # range 2 * 50 + 35
    assert kernel_module._fixed_shift(1 / 0.07, bias, 3, torch.float16, 1.0) is None
    assert kernel_module._fixed_shift(float("nan"), bias, 3, f32, 1.0) is None
    assert kernel_module._fixed_shift(1 / 0.07, torch.tensor([0.0, float("inf")]), 2, f32, 1.0) is None
    assert kernel_module._fixed_shift(1 / 0.07, None, 3, f32, 1e30) is None  # absurd scale
    # A learnable temperature that went cold: infonce_loss takes the running-max path, still exact.
    seq, pos, neg, mask, pos_ids, neg_ids, *_ = make_batch(2, 4, 5, 3, 2, 9, p_valid=1.0)
    seq, pos, neg = (t.float().detach().requires_grad_() for t in (seq, pos, neg))
    for tau, fixed_calls in ((0.07, 1), (0.01, 0)):
        temperature = torch.tensor(tau, requires_grad=True)
        with mock.patch.object(
            kernel_module, "_fixed_shift_sweep", wraps=kernel_module._fixed_shift_sweep
        ) as sweep:
            ours = infonce_loss(seq, pos, neg, mask, pos_ids, neg_ids, temperature)
        assert sweep.call_count == fixed_calls
        wide = [t.double() for t in (seq, pos, neg)]
        ref = reference_infonce(*wide, mask, pos_ids, neg_ids, temperature.double())
        assert ours.item() == pytest.approx(ref.item(), rel=1e-4)


def test_full_softmax_uses_the_fixed_shift():
    seq, _, _, mask, pos_ids, *_ = make_batch(2, 4, 5, 3, 2, 9, p_valid=1.0)
    table = torch.randn(10, seq.shape[-1], dtype=seq.dtype)
    with mock.patch.object(
        kernel_module, "_fixed_shift_sweep", wraps=kernel_module._fixed_shift_sweep
    ) as sweep:
        full_softmax_loss(seq, table, mask, pos_ids, 0.07)
    assert sweep.call_count == 1


def test_row_with_every_pool_column_masked_keeps_only_its_positive():
    q = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    pool = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    pos = torch.zeros(2, dtype=torch.float64)
    kw = {"include_pos": True, "scale": 1.0}
    # Row 0 has every pool column masked: only its positive is left, loss 0 and zero gradient.
    for chunk in (1, 4):
        with column_blocks(1):
            out = softmax_ce_sum(
                q, pos, pool, None, torch.tensor([0, 0]), torch.tensor([0, 1]), chunk_size=chunk, **kw
            )
        (g_q, g_pool) = torch.autograd.grad(out, (q, pool))
        assert torch.all(g_q[0] == 0) and torch.isfinite(g_pool).all() and torch.isfinite(out)
        ref = torch.logsumexp(torch.cat([pos[1:], q[1] @ pool.T]), 0) - pos[1]
        assert out.item() == pytest.approx(ref.item(), rel=1e-12)


def test_accidental_hit_masks_the_whole_group():
    # Every negative is the row's own positive: only the positive logit is left, loss exactly 0.
    seq = torch.randn(1, 3, 4, requires_grad=True)
    pos_ids = torch.tensor([[5, 5, 5]])
    table = torch.randn(6, 4)
    loss = infonce_loss(seq, table[pos_ids], table[pos_ids], torch.ones(1, 3), pos_ids, pos_ids.clone())
    assert loss.item() == 0.0


def test_history_masking_never_masks_the_positive():
    seq, pos, neg, mask, pos_ids, neg_ids, *_ = make_batch(1, 2, 4, 4, 2, 5, p_valid=1.0)
    hist = torch.arange(1, 6).repeat(2, 1)  # every item is in every history: only positives are left
    loss = infonce_loss(seq, pos, neg, mask, pos_ids, neg_ids, history_ids=hist)
    assert loss.item() == 0.0
    full = full_softmax_loss(seq, torch.randn(6, 4, dtype=torch.float64), mask, pos_ids, history_ids=hist)
    assert full.item() == pytest.approx(0.0, abs=1e-12)


def test_duplicates_are_grouped():
    vecs = torch.randn(5, 3)
    ids = torch.tensor([4, 2, 4, 4, 9])
    pool, bias, keys = _build_pool(vecs[[0, 1, 0, 0, 4]], ids, None, None, None, False)
    assert keys.tolist() == [4, 8, 18]
    assert torch.allclose(bias, torch.tensor([1.0, 3.0, 1.0]).log())
    assert torch.allclose(pool[1], F.normalize(vecs[0], dim=0))


def test_zero_vectors_follow_f_normalize():
    # A zero query, and an item whose embedding is zero (as a positive and as a negative), are scored as
    # F.normalize defines them (zero stays zero, x / max(||x||, eps)): same loss and gradients as the
    # dense reference, all finite.
    seq, pos, neg, mask, pos_ids, neg_ids, table, *_ = make_batch(3, 3, 5, 4, 2, 6, p_valid=1.0)
    zero_id = int(neg_ids[0, 0, 0]) or 1
    with torch.no_grad():
        seq[0, 0] = 0.0
        pos[pos_ids == zero_id] = 0.0
        neg[neg_ids == zero_id] = 0.0
    assert bool((pos_ids == zero_id).any()) and bool((neg_ids == zero_id).any())
    ours = infonce_loss(seq, pos, neg, mask, pos_ids, neg_ids, 0.1)
    assert torch.isfinite(ours)
    check_loss_and_grads(ours, reference_infonce(seq, pos, neg, mask, pos_ids, neg_ids, 0.1), [seq, pos, neg])
    table = table.index_fill(0, torch.tensor([zero_id]), 0.0)
    full = full_softmax_loss(seq, table, mask, pos_ids, 0.1)
    check_loss_and_grads(full, reference_full(seq, table, mask, pos_ids, 0.1), [seq])


def test_zero_valid_batch_is_zero_and_backward_works():
    seq, pos, neg, mask, pos_ids, neg_ids, table, *_ = make_batch(0, 2, 3, 4, 2, 5, p_valid=0.0)
    temperature = torch.tensor(0.1, requires_grad=True)
    loss = infonce_loss(seq, pos, neg, mask, pos_ids, neg_ids, temperature)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(seq.grad == 0) and torch.all(neg.grad == 0) and temperature.grad == 0
    table.requires_grad_()
    full = full_softmax_loss(seq, table, mask, pos_ids)
    assert full.item() == 0.0
    full.backward()
    assert torch.all(table.grad == 0)


def test_bfloat16_inputs_give_float32_loss_close_to_float32():
    seq, pos, neg, mask, pos_ids, neg_ids, *_ = make_batch(2, 4, 8, 16, 2, 50, dtype=torch.float32)
    ref = infonce_loss(seq, pos, neg, mask, pos_ids, neg_ids)
    bf = [x.detach().bfloat16().requires_grad_() for x in (seq, pos, neg)]
    loss = infonce_loss(*bf, mask, pos_ids, neg_ids)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref.item(), rel=0.05)
    loss.backward()
    assert bf[0].grad.dtype == torch.bfloat16 and torch.isfinite(bf[0].grad.float()).all()


def test_extra_pos_negatives_needs_log_q():
    seq, pos, neg, mask, pos_ids, neg_ids, *_ = make_batch(0, 2, 3, 4, 2, 5)
    with pytest.raises(ValueError):
        infonce_loss(seq, pos, neg, mask, pos_ids, neg_ids, extra_pos_negatives=True)


def test_choose_infonce_mode():
    assert choose_infonce_mode("pool", 10, 1000) == "pool"
    assert choose_infonce_mode("full", 10**7, 10) == "full"
    assert choose_infonce_mode("auto", 3416, 12800) == "full"
    assert choose_infonce_mode("auto", 5_000_000, 12800) == "pool"
    assert choose_infonce_mode("auto", 65_536, 100) == "full"  # a catalogue the full softmax affords
    assert choose_infonce_mode("auto", 65_537, 100) == "pool"
    assert choose_infonce_mode("auto", 100_000, 200_000) == "full"  # smaller than the pool
    with pytest.raises(ValueError):
        choose_infonce_mode("dense", 1, 1)


def test_no_grad_gives_the_same_value():
    seq, pos, neg, mask, pos_ids, neg_ids, *_ = make_batch(4, 3, 5, 4, 2, 6)
    with_grad = infonce_loss(seq, pos, neg, mask, pos_ids, neg_ids)
    with torch.no_grad():
        without = infonce_loss(seq, pos, neg, mask, pos_ids, neg_ids)
    assert not without.requires_grad
    assert without.item() == pytest.approx(with_grad.item(), rel=1e-12)
