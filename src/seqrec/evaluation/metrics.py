"""Ranking metrics as pure functions of the target's 1-based rank (one relevant item per user)."""

from __future__ import annotations

import numpy as np


def hit_rate(ranks: np.ndarray, k: int) -> float:
    """Fraction of users whose target is within the top ``k``."""
    return float(np.mean(ranks <= k)) if len(ranks) else 0.0


def ndcg(ranks: np.ndarray, k: int) -> float:
    """Mean of 1 / log2(rank + 1) for ranks <= k, else 0 (the ideal DCG is 1 with one relevant item)."""
    if not len(ranks):
        return 0.0
    ranks = np.asarray(ranks, dtype=np.float64)
    return float(np.mean(np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)))


def mrr(ranks: np.ndarray) -> float:
    """Mean reciprocal rank over the full ranking (no cut-off)."""
    return float(np.mean(1.0 / np.asarray(ranks, dtype=np.float64))) if len(ranks) else 0.0


def ranking_metrics(ranks: np.ndarray, ks: tuple[int, ...] | list[int]) -> dict[str, float]:
    """``{"hr@K": ..., "ndcg@K": ... for K in ks, "mrr": ...}`` from 1-based ranks."""
    out: dict[str, float] = {}
    for k in ks:
        out[f"hr@{k}"] = hit_rate(ranks, k)
        out[f"ndcg@{k}"] = ndcg(ranks, k)
    out["mrr"] = mrr(ranks)
    return out
