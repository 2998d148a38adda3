"""The CPU dropout and explicit attention used in training (model/dropout.py)."""

import math

import pytest
import torch
import torch.nn.functional as F

from seqrec.model.dropout import Dropout, attention, dropout


def test_dropout_keeps_with_probability_one_minus_p_and_scales():
    torch.manual_seed(0)
    x = torch.ones(400_000)
    y = dropout(x, 0.3, True)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.7))
    assert abs(y.mean().item() - 1.0) < 0.01  # inverted dropout preserves the mean


def test_dropout_mask_bits_are_independent_of_position():
    # Four mask elements come from one 64-bit draw: each of the four slots must drop at rate p, and
    # neighbours must not be correlated (a bias in one slot or a shared bit would show here).
    torch.manual_seed(3)
    kept = (dropout(torch.ones(400_000), 0.25, True) != 0).float().view(-1, 4)
    for slot in range(4):
        assert abs(kept[:, slot].mean().item() - 0.75) < 0.006
    both = (kept[:, 0] * kept[:, 1]).mean().item()
    assert abs(both - 0.75**2) < 0.006
    x = torch.ones(7, 5, dtype=torch.bfloat16)  # sizes not a multiple of four, low precision
    y = dropout(x, 0.5, True)
    assert y.dtype == torch.bfloat16 and set(y.unique().tolist()) <= {0.0, 2.0}


def test_dropout_gradient_is_the_same_mask_and_scale():
    torch.manual_seed(1)
    x = torch.randn(50, 30, requires_grad=True)
    y = dropout(x, 0.5, True)
    g = torch.randn_like(y)
    y.backward(g)
    mask = (y.detach() != 0).float() * 2.0
    assert torch.equal(x.grad, g * mask)
    assert 0 < (mask == 0).sum() < mask.numel()


def test_dropout_identity_in_eval_and_at_p0_and_seeded():
    x = torch.randn(10, 10)
    assert dropout(x, 0.4, False) is x and dropout(x, 0.0, True) is x
    module = Dropout(0.4).eval()
    assert module(x) is x
    torch.manual_seed(5)
    a = dropout(x, 0.4, True)
    torch.manual_seed(5)
    assert torch.equal(a, dropout(x, 0.4, True))


def _masked(B=3, H=2, L=7, Dh=4):
    torch.manual_seed(2)
    q, k, v = (torch.randn(B, H, L, Dh, dtype=torch.float64, requires_grad=True) for _ in range(3))
    valid = torch.ones(B, L, dtype=torch.bool)
    valid[0, :3] = False
    mask = (torch.ones(L, L, dtype=torch.bool).tril() & valid[:, None, :]) | torch.eye(L, dtype=torch.bool)
    return q, k, v, mask[:, None]


def test_attention_without_dropout_is_sdpa():
    q, k, v, mask = _masked()
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert torch.allclose(attention(q, k, v, mask, 0.2, False), ref)
    assert torch.allclose(attention(q, k, v, mask, 0.0, True), ref)


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_explicit_attention_drops_the_softmax_weights(p):
    q, k, v, mask = _masked()
    torch.manual_seed(9)
    out = attention(q, k, v, mask, p, True)
    # Reference with the same draw: 16 random bits per weight (four per int64), kept where the bits as an
    # int16 are at least p * 65536 - 32768; softmax over visible keys.
    torch.manual_seed(9)
    shape = q.shape[:-1] + (q.shape[-2],)
    n = math.prod(shape)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None).view(torch.int16)[:n].view(shape)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    w = scores.masked_fill(~mask, float("-inf")).softmax(-1) * (bits >= round(p * 65536) - 32768) / (1 - p)
    assert torch.allclose(out, w @ v)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
