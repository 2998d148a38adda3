"""The built-in synthetic dataset: a learnable sequential signal with a popularity skew.

Items belong to clusters; each item has three preferred successors inside its cluster (a Markov
chain); users hold one to three interest clusters. Each step either follows a successor of the
current item (most of the time), jumps to a popular item of one of the user's clusters, or picks a
globally popular item. A sequence model can learn the transitions; popularity alone cannot, so a
trained model clearly beats the popularity baseline.
"""

from __future__ import annotations

import numpy as np

from seqrec.data.dataset import Interactions


def generate_synthetic(
    num_users: int = 2000,
    num_items: int = 400,
    *,
    num_clusters: int = 20,
    min_len: int = 8,
    max_len: int = 50,
    p_follow: float = 0.7,
    p_global: float = 0.1,
    seed: int = 0,
) -> Interactions:
    """Generates seeded user sequences without repeated items; raw ids are ``u<n>`` / ``i<n>`` strings."""
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, num_clusters, size=num_items)
    popularity = rng.zipf(1.3, size=num_items).astype(np.float64)
    popularity = np.minimum(popularity, 1000.0)
    members = [np.flatnonzero(cluster == c) for c in range(num_clusters)]
    members = [m if len(m) else np.arange(num_items) for m in members]
    successors = np.stack([rng.choice(members[cluster[i]], size=3) for i in range(num_items)])
    global_p = popularity / popularity.sum()
    cluster_p = [popularity[m] / popularity[m].sum() for m in members]

    lengths = rng.integers(min_len, max_len + 1, size=num_users)
    seqs = []
    for u in range(num_users):
        interests = rng.choice(num_clusters, size=rng.integers(1, 4), replace=False)
        seen: set[int] = set()
        seq: list[int] = []
        current = -1
        for _ in range(lengths[u] * 3):  # bounded: repeated picks are skipped
            if len(seq) == lengths[u]:
                break
            r = rng.random()
            if current >= 0 and r < p_follow:
                item = int(successors[current, rng.integers(0, 3)])
            elif r < 1.0 - p_global:
                c = interests[rng.integers(0, len(interests))]
                item = int(rng.choice(members[c], p=cluster_p[c]))
            else:
                item = int(rng.choice(num_items, p=global_p))
            if item in seen:
                continue
            seen.add(item)
            seq.append(item)
            current = item
        seqs.append(seq)

    lens = np.array([len(s) for s in seqs], dtype=np.int64)
    offsets = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    items = np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs]) + 1
    item_ids = np.array([""] + [f"i{i}" for i in range(1, num_items + 1)], dtype=object)
    user_ids = np.array([f"u{u}" for u in range(num_users)], dtype=object)
    return Interactions(offsets=offsets, items=items, user_ids=user_ids, item_ids=item_ids)
