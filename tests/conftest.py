"""Shared fixtures: tiny seeded synthetic data with a planted sequential pattern."""

from __future__ import annotations

import pytest
import torch

from seqrec.config import RunConfig, config_from_dict
from seqrec.data.synthetic import generate_synthetic

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_interactions():
    return generate_synthetic(300, 60, num_clusters=6, min_len=5, max_len=20, seed=3)


def tiny_config(**sections) -> RunConfig:
    """A config small enough for a test to train in seconds."""
    values = {
        "data": {"synthetic_users": 300, "synthetic_items": 60},
        "model": {"maxlen": 20, "hidden_dim": 16, "num_blocks": 1, "num_heads": 1, "dropout": 0.1},
        # fp32: the same numerics on every test machine (auto would measure the CPU and may pick bf16)
        "train": {"epochs": 2, "batch_size": 64, "lr": 3e-3, "patience": 0, "seed": 7, "warmup_steps": 0,
                  "precision": "fp32"},
        "eval": {"batch_size": 128},
    }
    for name, updates in sections.items():
        values.setdefault(name, {}).update(updates)
    return config_from_dict(values)
