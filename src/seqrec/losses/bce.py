"""The original SASRec objective: binary cross-entropy on one positive and one random negative."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bce_loss(
    seq_embs: torch.Tensor, pos_embs: torch.Tensor, neg_embs: torch.Tensor, loss_mask: torch.Tensor
) -> torch.Tensor:
    """Dot-product logits, BCE with the positive labelled 1 and each negative 0, mean over valid positions.

    Args:
        seq_embs: (B, L, D) sequence embeddings.
        pos_embs: (B, L, D) embeddings of the next item.
        neg_embs: (B, L, D) or (B, L, K, D) embeddings of the random negatives.
        loss_mask: (B, L) bool or 0/1; positions with a real next item.

    Returns:
        Scalar loss: sum over valid positions of [BCE(pos) + mean_k BCE(neg_k)] / number of valid positions;
        0 with a gradient path when no position is valid.
    """
    mask = loss_mask.to(seq_embs.dtype)
    if neg_embs.dim() == 3:
        neg_embs = neg_embs.unsqueeze(2)
    pos_logits = (seq_embs * pos_embs).sum(-1)  # (B, L)
    neg_logits = torch.einsum("bld,blkd->blk", seq_embs, neg_embs)  # (B, L, K)
    per_position = F.softplus(-pos_logits) + F.softplus(neg_logits).mean(-1)  # -log σ(p) - log(1 - σ(n))
    return (per_position * mask).sum() / mask.sum().clamp(min=1.0)
