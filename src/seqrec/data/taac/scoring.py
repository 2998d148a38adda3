"""The TAAC 2025 metric: HitRate@10 and NDCG@10 of top-10 creative_id lists, and their weighted score."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from seqrec.data.taac.layout import (
    norm_cid,
)


def competition_score(hr10: float, ndcg10: float) -> float:
    """The TAAC 2025 score: ``0.31 * HitRate@10 + 0.69 * NDCG@10``."""
    return 0.31 * hr10 + 0.69 * ndcg10


def hit_ndcg_at_10(top10: Iterable[Sequence[Any]], targets: Iterable[Any]) -> tuple[float, float]:
    """HitRate@10 and NDCG@10 of ranked lists against one target per user.

    Args:
        top10: per user, candidate creative_ids best first; only the first 10 count.
        targets: per user, the target creative_id. Ids compare after normalisation, so ``123``,
            ``np.int64(123)`` and ``"123"`` are the same creative.

    Returns:
        ``(hr10, ndcg10)`` averaged over users; NDCG@10 is ``1 / log2(rank + 1)`` at the 1-based rank
        of the target's first occurrence, 0 beyond rank 10.

    Raises:
        ValueError: the two inputs differ in length or are empty.
    """
    lists = list(top10)
    wanted = list(targets)
    if len(lists) != len(wanted):
        raise ValueError(f"top10 has {len(lists)} users but targets has {len(wanted)}")
    if not wanted:
        raise ValueError("no users to score")
    hits = 0.0
    gain = 0.0
    for ranked, target in zip(lists, wanted, strict=True):
        key = norm_cid(target)
        for rank, cid in enumerate(list(ranked)[:10], start=1):
            if norm_cid(cid) == key:
                hits += 1.0
                gain += 1.0 / math.log2(rank + 1)
                break
    return hits / len(wanted), gain / len(wanted)
