"""Glue between the encoder, the sampled negatives and the pure loss functions.

The model returns embeddings; this module looks up the item vectors a loss needs and calls it. It
also owns the one trainable piece of state a loss may have: a learnable, bounded temperature.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from seqrec.config import LossConfig
from seqrec.data.batches import Batch
from seqrec.losses import LOSSES, full_softmax_loss
from seqrec.losses.infonce import choose_infonce_mode
from seqrec.model.sasrec import SASRec


class Objective(nn.Module):
    """Computes the configured loss for one batch.

    Args:
        config: the loss section.
        item_counts: (I + 1,) training frequency per item; needed for the logQ correction of
            ``extra_pos_negatives``.
    """

    def __init__(self, config: LossConfig, item_counts: np.ndarray | None = None):
        super().__init__()
        self.config = config
        # Parameterised in log space and clamped in ``temperature`` so it stays in [min_temperature, 1].
        self.log_temperature = (
            nn.Parameter(torch.tensor(math.log(config.temperature))) if config.learnable_temperature else None
        )
        log_q = None
        if config.extra_pos_negatives:
            if item_counts is None:
                raise ValueError("loss.extra_pos_negatives needs item_counts for the logQ correction")
            counts = torch.as_tensor(item_counts, dtype=torch.float64).clamp(min=1.0)
            log_q = torch.log(counts / counts.sum()).float()
        self.register_buffer("pos_log_q", log_q, persistent=False)

    @property
    def temperature(self) -> torch.Tensor | float:
        if self.log_temperature is None:
            return self.config.temperature
        return self.log_temperature.exp().clamp(self.config.min_temperature, 1.0)

    def forward(self, model: SASRec, batch: Batch, generator: torch.Generator | None = None) -> torch.Tensor:
        seq_embs = model(batch.input_ids)  # (B, L, D)
        pos_embs = model.item_embeddings(batch.pos_ids)  # (B, L, D)
        cfg = self.config
        if cfg.name == "bce":
            neg_embs = model.item_embeddings(batch.neg_ids)  # (B, L, K, D)
            return LOSSES["bce"](seq_embs, pos_embs, neg_embs, batch.loss_mask)
        history = batch.input_ids if cfg.history_mask else None
        pool_entries = int(batch.loss_mask.sum()) * batch.neg_ids.shape[-1]
        if choose_infonce_mode(cfg.mode, model.num_items, pool_entries) == "full":
            return full_softmax_loss(
                seq_embs, model.item_embeddings(), batch.loss_mask, batch.pos_ids, self.temperature,
                history_ids=history,
            )
        neg_embs = model.item_embeddings(batch.neg_ids)  # (B, L, K, D)
        return LOSSES["infonce"](
            seq_embs, pos_embs, neg_embs, batch.loss_mask, batch.pos_ids, batch.neg_ids, self.temperature,
            pool_size=cfg.pool_size, generator=generator, extra_pos_negatives=cfg.extra_pos_negatives,
            pos_log_q=self.pos_log_q, history_ids=history,
        )
