"""Growable NumPy columns for streamed records, and feature values collected per row into arrays."""

from __future__ import annotations

from collections.abc import Container
from pathlib import Path
from typing import Any

import numpy as np

from seqrec.data.taac.layout import (
    INT64_MAX,
    TaacFormatError,
    describe,
    feature_sort_key,
    object_array,
)

FLUSH_ROWS = 1 << 16  # feature rows buffered as Python ints before they become a NumPy chunk


class Chunks:
    """A growable column: Python values pile up in ``pending`` and move to NumPy chunks on ``flush``."""

    def __init__(self, dtype: Any) -> None:
        self.dtype = dtype
        self.pending: list[Any] = []
        self.flushed = 0  # values already moved to chunks
        self._done: list[np.ndarray] = []

    def flush(self) -> None:
        if self.pending:
            if self.dtype is object:
                chunk = object_array(self.pending)
            else:
                chunk = np.array(self.pending, dtype=self.dtype)
            self._done.append(chunk)
            self.flushed += len(chunk)
            self.pending.clear()

    def finish(self) -> np.ndarray:
        self.flush()
        if not self._done:
            return np.zeros(0, dtype=self.dtype)
        return np.concatenate(self._done)


class FeatureColumns:
    """Feature values of many rows (users, items, events), collected as (row, length, values) per feature.

    A feature becomes a CSR list when it is documented as an array feature or any value is a list;
    otherwise a dense column with 0 for missing. In lenient mode (inference files) string values are
    unseen values and become 0.
    """

    def __init__(self, path: Path, *, lenient: bool) -> None:
        self._path = path
        self._lenient = lenient
        self._pending: dict[str, tuple[list[int], list[int], list[int]]] = {}
        self._done: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        self._has_list: set[str] = set()

    def add(self, row: int, features: dict, line: int | None, field: str) -> None:
        lenient = self._lenient
        for key, value in features.items():
            columns = self._pending.get(key)
            if columns is None:
                columns = self._pending[key] = ([], [], [])
                self._done[key] = []
            rows, lengths, values = columns
            if type(value) is int and 0 <= value <= INT64_MAX:
                values.append(value)
                lengths.append(1)
            elif type(value) is list:
                self._has_list.add(key)
                for x in value:
                    if type(x) is int and 0 <= x <= INT64_MAX:
                        values.append(x)
                    elif lenient and type(x) is str:
                        values.append(0)
                    else:
                        raise TaacFormatError(
                            self._path,
                            line,
                            f"{field}['{key}']",
                            f"expected a list of non-negative int value ids, found element {describe(x)}",
                        )
                lengths.append(len(value))
            elif lenient and type(value) is str:
                values.append(0)
                lengths.append(1)
            else:
                raise TaacFormatError(
                    self._path,
                    line,
                    f"{field}['{key}']",
                    f"expected a non-negative int value id or a list of them, got {describe(value)}",
                )
            rows.append(row)
            if len(rows) >= FLUSH_ROWS:
                self._flush(key)

    def _flush(self, key: str) -> None:
        rows, lengths, values = self._pending[key]
        if rows:
            self._done[key].append(
                (np.array(rows, np.int64), np.array(lengths, np.int64), np.array(values, np.int64))
            )
            rows.clear()
            lengths.clear()
            values.clear()

    def finish(
        self, num_rows: int, array_features: Container[str], row_map: np.ndarray | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, tuple[np.ndarray, np.ndarray]], dict[str, int]]:
        """Build per-feature arrays over ``num_rows`` rows; ``row_map`` renumbers rows (after a sort).

        Returns:
            (sparse columns, CSR array features, largest value per feature).
        """
        sparse: dict[str, np.ndarray] = {}
        arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        largest: dict[str, int] = {}
        for key in sorted(self._pending, key=feature_sort_key):
            self._flush(key)
            rows, lengths, values = (np.concatenate(part) for part in zip(*self._done.pop(key), strict=True))
            if row_map is not None:
                rows = row_map[rows]
            largest[key] = int(values.max()) if values.size else 0
            if key in array_features or key in self._has_list:
                arrays[key] = _csr(rows, lengths, values, num_rows)
            else:
                column = np.zeros(num_rows, np.int64)
                column[rows] = values
                sparse[key] = column
        self._pending.clear()
        return sparse, arrays, largest


def _csr(
    rows: np.ndarray, lengths: np.ndarray, values: np.ndarray, num_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """CSR (offsets, values) from per-row segments given in any row order (each row at most once)."""
    counts = np.zeros(num_rows, np.int64)
    counts[rows] = lengths
    offsets = np.zeros(num_rows + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    if rows.size > 1 and np.any(rows[1:] < rows[:-1]):
        order = np.argsort(rows, kind="stable")
        starts = (np.cumsum(lengths) - lengths)[order]
        seg_lengths = lengths[order]
        new_starts = np.cumsum(seg_lengths) - seg_lengths
        gather = np.repeat(starts - new_starts, seg_lengths) + np.arange(int(seg_lengths.sum()))
        values = values[gather]
    return offsets, values
