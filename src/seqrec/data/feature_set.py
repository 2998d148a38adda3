"""Side features of items and users as NumPy arrays aligned with the internal ids (``FeatureSet``).

Layout: every item array has one row per internal item id 0..I, row 0 being padding (no feature, no
vector); every user array has one row per user row 0..U-1 of ``Interactions``. Value ids of categorical
and multi-valued features start at 1; 0 means missing (and, at inference, a value unseen in training).
A feature's embedding table has ``cardinality[name]`` rows (largest value + 1). The loaders live in
``side_features`` (MovieLens-1M, Amazon Beauty) and ``taac/dataset`` (TAAC); ``features`` picks one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

_NAME = re.compile(r"[A-Za-z0-9_]+")  # feature names become module and buffer names in the item tower


@dataclass
class FeatureSet:
    """Item and user side features, indexed by internal item id (row 0 = padding) and by user row.

    Attributes:
        num_items: I; item arrays have I + 1 rows.
        num_users: U; user arrays have U rows.
        item_categorical: name -> (I + 1,) int64 value id, 0 = missing.
        item_multi: name -> (offsets (I + 2,) int64, values int64): item ``i``'s values are
            ``values[offsets[i]:offsets[i + 1]]`` (CSR); 0 values are ignored.
        item_continuous: (I + 1, C) float32 scalars (standardised by the loader, 0 = missing), or None.
        continuous_names: the C column names of ``item_continuous``.
        item_vectors: name -> ((I + 1, dim) float32, (I + 1,) bool present); a row without a vector is
            absent (not a zero vector that means something).
        user_categorical: name -> (U,) int64 value id, 0 = missing.
        user_multi: name -> (offsets (U + 1,), values) CSR lists.
        cardinality: name -> embedding table size (largest value id + 1) of every categorical and
            multi-valued feature, item and user alike; names are unique across both.
    """

    num_items: int
    num_users: int
    item_categorical: dict[str, np.ndarray] = field(default_factory=dict)
    item_multi: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    item_continuous: np.ndarray | None = None
    continuous_names: tuple[str, ...] = ()
    item_vectors: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    user_categorical: dict[str, np.ndarray] = field(default_factory=dict)
    user_multi: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    cardinality: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def has_item_features(self) -> bool:
        return bool(self.item_categorical or self.item_multi or self.continuous_names or self.item_vectors)

    @property
    def has_user_features(self) -> bool:
        return bool(self.user_categorical or self.user_multi)

    def validate(self) -> None:
        """Raises ValueError on a shape, name or value that breaks the layout above."""
        rows_i, rows_u = self.num_items + 1, self.num_users
        names = [*self.item_categorical, *self.item_multi, *self.user_categorical, *self.user_multi]
        if len(set(names)) != len(names):
            raise ValueError(f"feature names must be unique across items and users, got {names}")
        for name in [*names, *self.continuous_names, *self.item_vectors]:
            if not _NAME.fullmatch(name):
                raise ValueError(f"feature name {name!r}: use letters, digits and underscores only")
        for group, rows in ((self.item_categorical, rows_i), (self.user_categorical, rows_u)):
            for name, column in group.items():
                if column.shape != (rows,):
                    raise ValueError(f"feature {name}: expected ({rows},) values, got {column.shape}")
                self._check_values(name, column)
        for group, rows in ((self.item_multi, rows_i), (self.user_multi, rows_u)):
            for name, (offsets, values) in group.items():
                if offsets.shape != (rows + 1,) or offsets[0] != 0 or offsets[-1] != len(values):
                    raise ValueError(f"feature {name}: CSR offsets must have {rows + 1} entries from 0 to len(values)")
                self._check_values(name, values)
        if self.item_continuous is None:
            if self.continuous_names:
                raise ValueError("continuous_names given without item_continuous")
        elif self.item_continuous.shape != (rows_i, len(self.continuous_names)):
            raise ValueError(f"item_continuous: expected ({rows_i}, {len(self.continuous_names)}), "
                             f"got {self.item_continuous.shape}")
        for name, (matrix, present) in self.item_vectors.items():
            if matrix.ndim != 2 or len(matrix) != rows_i or present.shape != (rows_i,):
                raise ValueError(f"vector feature {name}: expected ({rows_i}, dim) and ({rows_i},), "
                                 f"got {matrix.shape} and {present.shape}")

    def _check_values(self, name: str, values: np.ndarray) -> None:
        if name not in self.cardinality:
            raise ValueError(f"feature {name}: no cardinality")
        if values.size and (values.min() < 0 or values.max() >= self.cardinality[name]):
            raise ValueError(f"feature {name}: value ids must lie in [0, {self.cardinality[name]})")

    def take_items(self, rows: np.ndarray) -> FeatureSet:
        """The item features of ``rows`` (internal ids, ``rows[0]`` = 0) as items 0..len(rows)-1; users kept."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0 or rows[0] != 0:
            raise ValueError("rows must start with the padding row 0")
        return FeatureSet(
            num_items=len(rows) - 1,
            num_users=self.num_users,
            item_categorical={k: v[rows] for k, v in self.item_categorical.items()},
            item_multi={k: csr_take(*v, rows) for k, v in self.item_multi.items()},
            item_continuous=None if self.item_continuous is None else self.item_continuous[rows],
            continuous_names=self.continuous_names,
            item_vectors={k: (m[rows], p[rows]) for k, (m, p) in self.item_vectors.items()},
            user_categorical=self.user_categorical,
            user_multi=self.user_multi,
            cardinality=self.cardinality,
        )


def csr_take(offsets: np.ndarray, values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR lists of ``rows`` (any order, repeats allowed) as a new CSR."""
    lengths = (offsets[1:] - offsets[:-1])[rows]
    new_offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    # Position j of the output comes from offsets[row] + (j - new_offsets[row's slot]).
    gather = np.repeat(offsets[rows] - new_offsets[:-1], lengths) + np.arange(int(new_offsets[-1]))
    return new_offsets, values[gather]


def csr_from_lists(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum([len(v) for v in lists], out=offsets[1:])
    values = np.fromiter((x for v in lists for x in v), dtype=np.int64, count=int(offsets[-1]))
    return offsets, values



def concat_items(base: FeatureSet, new: FeatureSet) -> FeatureSet:
    """A catalogue of ``base``'s items followed by ``new``'s items 1..n (as items I+1..I+n), users of ``new``.

    Used to embed items unseen in training next to the trained ones (``ItemTower.extend_catalogue``):
    the tables are ``base``'s, so a value of ``new`` outside them (unseen in training) becomes 0
    (missing), and a feature ``new`` lacks is missing (vectors: absent) for its items.

    Raises:
        ValueError: If a vector feature has another width in ``new`` than in ``base``.
    """
    card = base.cardinality
    n = new.num_items

    def known(values: np.ndarray, name: str) -> np.ndarray:
        values = np.asarray(values, dtype=np.int64)
        return np.where((values >= 0) & (values < card[name]), values, 0)

    categorical = {}
    for name, column in base.item_categorical.items():
        extra = known(new.item_categorical[name][1:], name) if name in new.item_categorical else np.zeros(n, np.int64)
        categorical[name] = np.concatenate([column, extra])
    multi = {}
    for name, (offsets, values) in base.item_multi.items():
        if name in new.item_multi:
            new_offsets, new_values = new.item_multi[name]
            start = new_offsets[1]  # new row 0 (padding) is dropped
            extra_offsets, extra_values = new_offsets[1:] - start, known(new_values[start:], name)
        else:
            extra_offsets, extra_values = np.zeros(n + 1, np.int64), np.zeros(0, np.int64)
        multi[name] = (np.concatenate([offsets, extra_offsets[1:] + offsets[-1]]), np.concatenate([values, extra_values]))
    continuous = None
    if base.item_continuous is not None:
        extra = np.zeros((n, len(base.continuous_names)), dtype=np.float32)
        for j, name in enumerate(base.continuous_names):
            if name in new.continuous_names:
                extra[:, j] = new.item_continuous[1:, new.continuous_names.index(name)]
        continuous = np.concatenate([base.item_continuous.astype(np.float32, copy=False), extra])
    vectors = {}
    for name, (matrix, present) in base.item_vectors.items():
        extra, extra_present = np.zeros((n, matrix.shape[1]), dtype=np.float32), np.zeros(n, dtype=bool)
        if name in new.item_vectors:
            given, mask = new.item_vectors[name]
            if given.shape[1] != matrix.shape[1]:
                raise ValueError(f"vector feature {name}: dim {given.shape[1]} for the new items, {matrix.shape[1]} trained")
            extra, extra_present = given[1:], mask[1:]
        vectors[name] = (np.concatenate([matrix, extra]), np.concatenate([present, extra_present]))
    return FeatureSet(
        num_items=base.num_items + n,
        num_users=new.num_users,
        item_categorical=categorical,
        item_multi=multi,
        item_continuous=continuous,
        continuous_names=base.continuous_names,
        item_vectors=vectors,
        user_categorical=new.user_categorical,
        user_multi=new.user_multi,
        cardinality={**new.cardinality, **card},
    )

