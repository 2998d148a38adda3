"""Item-to-item neighbours: the items whose vectors are nearest to an item's own.

The score is the checkpoint's similarity between the two output-side item vectors (the ones
``recommend`` ranks with): cosine for cosine checkpoints (the vectors are L2-normalised), the raw dot
product for dot checkpoints. The item itself is never among its neighbours. The search goes through
``retrieval/search.py``, so ties and exclusions follow the same rules as user recommendations.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from seqrec.retrieval.recommend import LoadedModel
from seqrec.retrieval.search import search


def similar_items(loaded: LoadedModel, index: Any, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest items of each of ``ids``.

    Args:
        loaded: the model.
        index: a faiss index over ``loaded.item_vectors()`` (row r = internal item r + 1).
        ids: (n,) internal item ids in 1..I.
        k: neighbours per item, >= 1.

    Returns:
        ``(items, scores)``: (n, k) internal ids (0 where fewer than k other items exist) and (n, k)
        float32 scores (-inf there), best first.

    Raises:
        ValueError: If ``k`` < 1, an id is outside 1..I, or the index is not over this model's items.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    num_items = loaded.model.num_items
    if ids.size and (ids.min() < 1 or ids.max() > num_items):
        raise ValueError(f"internal item ids must be in 1..{num_items}")
    if index.ntotal != num_items:
        raise ValueError(f"the index holds {index.ntotal} items but the checkpoint has {num_items}")
    if not ids.size:
        return np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32)
    queries = loaded.item_vectors(ids)  # (n, D), normalised for cosine like the indexed rows
    scores, rows = search(index, queries, k, exclude=[np.array([i - 1]) for i in ids.tolist()])
    return rows + 1, scores
