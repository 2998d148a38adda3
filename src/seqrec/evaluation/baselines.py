"""Count-based baselines over a candidate set: popularity and last-item transitions.

Both rank the same candidates a model ranks, so their metrics sit next to the model's on equal terms.
Items are catalogue rows (1..N; 0 = none); counts come from training sequences only.
"""

from __future__ import annotations

import numpy as np


def item_counts(items: np.ndarray, num_rows: int) -> np.ndarray:
    """(num_rows + 1,) number of training events per catalogue row (row 0 never counts)."""
    counts = np.bincount(np.asarray(items, dtype=np.int64), minlength=num_rows + 1)[: num_rows + 1]
    counts[0] = 0
    return counts


class TransitionCounts:
    """How often row ``b`` directly follows row ``a`` in the training sequences.

    Args:
        offsets: (U + 1,) CSR offsets of the sequences into ``items``.
        items: (E,) catalogue rows in time order per sequence.
    """

    def __init__(self, offsets: np.ndarray, items: np.ndarray):
        items = np.asarray(items, dtype=np.int64)
        self.stride = int(items.max(initial=0)) + 1
        follows = np.ones(len(items), dtype=bool)
        follows[np.asarray(offsets[:-1], dtype=np.int64)[np.diff(offsets) > 0]] = False  # a sequence's first event
        nxt = np.flatnonzero(follows)
        keys = items[nxt - 1] * self.stride + items[nxt]
        keys = keys[(items[nxt - 1] > 0) & (items[nxt] > 0)]
        self.keys, self.counts = np.unique(keys, return_counts=True)

    def __call__(self, prev: int, rows: np.ndarray) -> np.ndarray:
        """(C,) count of ``prev -> rows[c]``; 0 for rows never seen after ``prev`` (or unknown rows)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros(len(rows), dtype=np.int64)
        if prev <= 0 or prev >= self.stride or not len(self.keys):
            return out
        known = (rows > 0) & (rows < self.stride)
        q = prev * self.stride + rows[known]
        pos = np.minimum(np.searchsorted(self.keys, q), len(self.keys) - 1)
        out[known] = np.where(self.keys[pos] == q, self.counts[pos], 0)
        return out


def top_k(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Indices of the ``k`` best ``scores`` (ties: the lower index first), skipping ``exclude``."""
    scores = np.asarray(scores, dtype=np.float64).copy()
    if exclude is not None and len(exclude):
        scores[exclude] = -np.inf
    order = np.lexsort((np.arange(len(scores)), -scores))
    order = order[np.isfinite(scores[order])]
    return order[:k]


def baseline_rankings(
    candidate_rows: np.ndarray,
    last_rows: np.ndarray,
    counts: np.ndarray,
    transitions: TransitionCounts,
    k: int,
    exclude: list[np.ndarray] | None = None,
) -> dict[str, list[np.ndarray]]:
    """Top-``k`` candidate indices per user for the two baselines.

    Args:
        candidate_rows: (C,) catalogue row of every candidate (rows unseen in training count 0).
        last_rows: (U,) catalogue row of each user's last history event (0: none).
        counts: item_counts of the training events.
        transitions: the training sequences' transition counts.
        k: list length.
        exclude: optional per-user candidate indices never to return.

    Returns:
        ``{"popularity": [...], "transitions": [...]}``: per user, candidate indices best first. The
        transition baseline scores ``count(last -> candidate)`` and breaks ties (and users whose last item
        has no known successor) by popularity.
    """
    rows = np.asarray(candidate_rows, dtype=np.int64)
    pop = np.where(rows < len(counts), counts[np.minimum(rows, len(counts) - 1)], 0).astype(np.float64)
    scale = pop.max(initial=0.0) + 1.0
    out: dict[str, list[np.ndarray]] = {"popularity": [], "transitions": []}
    for u, last in enumerate(np.asarray(last_rows, dtype=np.int64).tolist()):
        ex = None if exclude is None else exclude[u]
        out["popularity"].append(top_k(pop, k, ex))
        out["transitions"].append(top_k(transitions(last, rows) * scale + pop, k, ex))
    return out
