"""Inverted dropout whose CPU mask comes from ``torch.rand``.

``torch.nn.functional.dropout`` draws its CPU mask with ``bernoulli_``, which on the project's 2-core
machine made dropout ~22% of a whole SASRec training step (nine dropouts per step, the largest on the
(B, H, L, L) attention weights). A uniform draw compared with ``p`` gives the same Bernoulli(1 - p) keep
mask at a fraction of the cost: forward + backward of a (128, 1, 200, 200) tensor 87 ms -> 52 ms
(BENCHMARKS.md, "Dropout"). The draw itself is the CPU generator's sequential Mersenne Twister, so
the mask is cut from 16 random bits per element, four per 64-bit draw: ~4x fewer draws than one float
per element (a (32, 1, 114, 114) mask 1.8 ms -> 0.5 ms on one thread, session 12), with the drop
probability rounded to a multiple of 1/65,536. Other devices keep ``F.dropout`` (fused kernels there).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Zeroes each element of ``x`` with probability ``p`` and scales the rest by ``1 / (1 - p)``.

    The distribution of ``F.dropout(x, p, training)`` with ``p`` rounded to a multiple of 1/65,536 (the
    scale uses the rounded value, so the expectation is ``x``); draws from the default generator of
    ``x``'s device, so ``torch.manual_seed`` makes it reproducible.
    """
    if not training or p == 0.0:
        return x
    drop = round(p * 65536)  # an element is dropped when its 16 random bits, as int16, are below drop - 32768
    if x.device.type != "cpu" or not 0 < drop < 65536:
        return F.dropout(x, p, training)
    n = x.numel()
    words = torch.empty(((n + 3) // 4,), dtype=torch.int64, device=x.device).random_(-(2**63), None)  # all 64 bits
    bits = words.view(torch.int16)[:n].view(x.shape)
    # The scaled keep mask (1 / (1 - p) or 0); autograd saves it for backward (no gradient flows into it).
    mask = bits.ge(drop - 32768).to(x.dtype).mul_(65536 / (65536 - drop))
    return x * mask


class Dropout(nn.Module):
    """Drop-in ``nn.Dropout`` using :func:`dropout`."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor, p: float,
              training: bool) -> torch.Tensor:
    """Scaled dot-product attention, (B, H, L, Dh) each, ``attn_mask`` bool (True = may attend).

    With dropout on a CPU it is computed explicitly (as PyTorch's own CPU math path does for dropout) so
    that the attention-weight dropout uses :func:`dropout`; otherwise it is
    ``F.scaled_dot_product_attention`` and its fused kernels.
    """
    if not training or p == 0.0 or q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=p if training else 0.0)
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(1.0 / math.sqrt(q.shape[-1]))
    weights = scores.masked_fill_(~attn_mask, float("-inf")).softmax(dim=-1)
    return torch.matmul(dropout(weights, p, True), v)
