"""The in-memory form every reader produces: per-user sequences in CSR layout plus the raw-id maps.

Internal ids: users are 0..U-1 (row index), items are 1..I with ``PAD_ID = 0`` reserved for padding.
No per-event Python objects: a dataset of 1M users x 100 events is two NumPy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAD_ID = 0


@dataclass
class Interactions:
    """Chronological item sequences of every user.

    Attributes:
        offsets: (U + 1,) int64; user ``u``'s events are ``items[offsets[u]:offsets[u + 1]]``, oldest first.
        items: (N,) int64 internal item ids in 1..num_items (int32, read-only and memory-mapped when
            loaded from the compact on-disk form, ``seqrec.data.storage``).
        user_ids: (U,) raw user ids (object or numeric array); ``user_ids[u]`` is user ``u``'s raw id.
        item_ids: (num_items + 1,) raw item ids; ``item_ids[i]`` is internal item ``i``'s raw id,
            ``item_ids[0]`` is a placeholder for padding.
        timestamps: optional (N,) int64/float64, aligned with ``items``.
        actions: optional (N,) int8 action type per event (0 exposure, 1 click, 2 conversion).
    """

    offsets: np.ndarray
    items: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray | None = None
    actions: np.ndarray | None = None

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_items(self) -> int:
        return len(self.item_ids) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def sequence(self, u: int) -> np.ndarray:
        return self.items[self.offsets[u] : self.offsets[u + 1]]
