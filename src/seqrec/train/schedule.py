"""Small pure helpers of the training loop: the learning-rate schedule and seeding."""

from __future__ import annotations

import math
import random

import numpy as np
import torch

from seqrec.config import TrainConfig


def learning_rate(step: int, total_steps: int, config: TrainConfig, budget_used: float = 0.0) -> float:
    """Learning rate at optimizer step ``step`` (0-based): linear warm-up, then constant or cosine to 10%.

    ``budget_used``: the share of the wall-clock budget spent so far, which ``lr_decay=budget`` follows
    (the plateau halving that it shares with ``plateau`` is the caller's factor).
    """
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.lr_decay == "cosine" and total_steps > config.warmup_steps:
        progress = min(1.0, (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps))
        return config.lr * _cosine_to_tenth(progress)
    if config.lr_decay == "budget":
        return config.lr * _cosine_to_tenth(min(1.0, max(0.0, budget_used)))
    return config.lr


def _cosine_to_tenth(progress: float) -> float:
    """1 at progress 0, 0.1 at progress 1, along half a cosine."""
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
