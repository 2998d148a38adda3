"""Raw item ids from outside (request bodies, candidate files) -> internal item ids.

A checkpoint's raw ids are ints or strings; callers may hand over either form: ``"42"`` finds the
raw int ``42`` and ``42`` finds the raw string ``"42"``. Anything that matches no item is returned as
unknown rather than raised, so a caller can report it and go on.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seqrec.errors import DataError

log = logging.getLogger(__name__)

_INT_TEXT = re.compile(r"[+-]?[0-9]+")
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


class ItemLookup:
    """Maps raw item ids to internal ids 1..I of one checkpoint.

    Args:
        item_ids: (I + 1,) raw ids, ``item_ids[i]`` = raw id of internal item ``i``; ``[0]`` (padding)
            is never matched.
    """

    def __init__(self, item_ids: np.ndarray):
        self.item_ids = item_ids
        self.num_items = len(item_ids) - 1
        raw = item_ids[1:]
        if np.issubdtype(raw.dtype, np.integer):
            # Sorted-array lookup: a 1M-item catalogue costs 16 MB instead of a 100 MB dict.
            self._order = np.argsort(raw, kind="stable")
            self._sorted = raw[self._order].astype(np.int64, copy=False)
            self._dict: dict[Any, int] | None = None
        else:
            self._dict = {}
            for i, value in enumerate(raw.tolist(), start=1):
                self._dict.setdefault(value, i)

    def lookup(self, values: Sequence[Any]) -> tuple[np.ndarray, list[Any]]:
        """Internal ids of the known ``values`` (in order, duplicates kept) and the unknown values.

        Returns:
            ``(ids, unknown)``: (n_known,) int64 internal ids, and the values that match no item, each
            once, in order of first appearance.
        """
        if self._dict is None:
            if values and all(type(v) is int for v in values):  # the common case: JSON ints (serving)
                try:
                    numbers = np.array(values, dtype=np.int64)
                except OverflowError:  # some value outside int64: the general path reports it unknown
                    pass
                else:
                    pos = np.minimum(np.searchsorted(self._sorted, numbers), max(len(self._sorted) - 1, 0))
                    if len(self._sorted):
                        known = self._sorted[pos] == numbers
                        if known.all():
                            return self._order[pos] + 1, []
                        unknown = [v for v, ok in zip(values, known.tolist(), strict=True) if not ok]
                        return self._order[pos[known]] + 1, _unique(unknown)
                    return np.empty(0, dtype=np.int64), _unique(list(values))
            keys = [_as_int(v) for v in values]
            known = np.fromiter((k is not None for k in keys), dtype=bool, count=len(keys))
            numbers = np.fromiter((k if k is not None else 0 for k in keys), dtype=np.int64, count=len(keys))
            pos = np.searchsorted(self._sorted, numbers)
            pos = np.minimum(pos, len(self._sorted) - 1)
            if len(self._sorted):
                known &= self._sorted[pos] == numbers
            else:
                known[:] = False
            ids = self._order[pos[known]] + 1 if len(self._sorted) else np.empty(0, dtype=np.int64)
            return ids.astype(np.int64, copy=False), _unique([v for v, ok in zip(values, known, strict=True) if not ok])
        found, unknown = [], []
        for value in values:
            i = self._dict.get(value)
            if i is None:
                i = self._dict.get(_alternate(value))
            if i is None:
                unknown.append(value)
            else:
                found.append(i)
        return np.asarray(found, dtype=np.int64), _unique(unknown)

    def raw(self, internal: Iterable[int]) -> list[Any]:
        """Raw ids (plain Python ints/strs) of internal ids."""
        return [_plain(self.item_ids[i]) for i in internal]


def _as_int(value: Any) -> int | None:
    """An int in int64 range, from an int or from a decimal string; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        number = int(value)
    elif isinstance(value, str) and _is_int64_text(value.strip()):
        number = int(value.strip())
    else:
        return None
    return number if _I64_MIN <= number <= _I64_MAX else None


def _is_int64_text(text: str) -> bool:
    # 20 characters hold every int64; the length first, since int() refuses over 4,300 digits
    return len(text) <= 20 and _INT_TEXT.fullmatch(text) is not None


def _alternate(value: Any) -> Any:
    """The other spelling of an id: str for an int, int for a decimal string."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, str) and _is_int64_text(value.strip()):
        return int(value.strip())
    return None


def _unique(values: list[Any]) -> list[Any]:
    seen: set = set()
    out = []
    for value in values:
        key = (type(value).__name__, value)
        if key not in seen:
            seen.add(key)
            out.append(value)
    return out


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def ids_array(values: np.ndarray) -> np.ndarray:
    """Raw ids as an array ``np.save`` can write without pickle: int64 for integers, else unicode."""
    arr = np.asarray(values)
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "U":
        return arr
    items = arr.tolist()
    if items and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in items):
        return np.asarray(items, dtype=np.int64)
    return np.asarray([str(v) for v in items], dtype=str) if items else np.empty(0, dtype="<U1")


def read_id_lines(path: str | Path, *, file_kind: str, id_kind: str) -> list[str]:
    """The ids listed in ``path``, one a line (stripped, blank lines skipped), in file order.

    Args:
        path: a UTF-8 text file.
        file_kind, id_kind: how messages name the file and its ids ("users", "user").

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        DataError: If the file is not UTF-8 text (a ``ValueError``; the message names the line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{file_kind} file not found: {path}")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text ({exc.reason} at byte {exc.start}); expected one {id_kind} id "
                        "a line", path=path, line=line) from exc
    return [v for v in (line.strip() for line in text.splitlines()) if v]


def read_candidate_values(path: str | Path) -> list[str]:
    """The raw item ids listed in ``path`` (one per line, stripped, blank lines skipped), in file order.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not UTF-8 text or lists no id.
    """
    values = read_id_lines(path, file_kind="candidates", id_kind="item")
    if not values:
        raise DataError(f"candidates file {path} lists no item id", path=path)
    return values


def shown(values: Sequence[Any], limit: int = 5) -> str:
    """The first ``limit`` values, comma-separated, `` ...`` if there are more."""
    return ", ".join(map(str, values[:limit])) + (" ..." if len(values) > limit else "")


def read_candidates(path: str | Path, lookup: ItemLookup) -> np.ndarray:
    """Sorted unique internal ids of the raw item ids in ``path`` (one per line, blank lines skipped).

    Candidates the model does not know are skipped and their count is logged (a warning naming the
    first few). A model with an item tower can embed unknown candidates from their features instead:
    see ``seqrec.retrieval.recommend.resolve_candidates``.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file lists no id, or none the model knows.
    """
    values = read_candidate_values(path)
    ids, unknown = lookup.lookup(values)
    if unknown:
        log.warning("%d of %d candidate ids in %s are unknown to the model and skipped: %s",
                    len(unknown), len(set(values)), path, shown(unknown))
    if not len(ids):
        raise DataError(f"none of the {len(set(values))} candidate ids in {path} is known to the model", path=path)
    return np.unique(ids)
