"""Read a TAAC training directory (``read_taac``) and the byte-offset pickles next to its JSON-lines files."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seqrec.data.dataset import PAD_ID, Interactions
from seqrec.data.safe_pickle import safe_load_pickle
from seqrec.data.taac.item_features import read_item_features
from seqrec.data.taac.layout import (
    INDEXER_FILE,
    INT64_MAX,
    INT64_MIN,
    ITEM_FEATURES_FILE,
    READ_BLOCK,
    SEQ_FILE,
    USER_ARRAY_FEATURES,
    VECTOR_DIR,
    TaacFormatError,
    describe,
    existing_dir,
    feature_sort_key,
    id_array,
    norm_cid,
    required_file,
)
from seqrec.data.taac.seq import read_seq, time_order
from seqrec.data.taac.vectors import read_vectors

logger = logging.getLogger(__name__)

@dataclass
class TaacData:
    """A TAAC training directory in memory.

    Attributes:
        interactions: per-user item sequences in file order (one row per line of ``seq.jsonl``), with
            ``actions`` (int8) and ``timestamps`` (int64, seconds). Internal item ids are the file's
            re-ids; ``interactions.item_ids[i]`` is item ``i``'s creative_id (int64, -1 where the
            indexer lacks the re-id; an object array if some creative_id is not an integer), and
            ``interactions.user_ids[u]`` the raw user id (the re-id where the indexer lacks it).
        user_reids: (U,) int64 user re-id of every row, as written in ``seq.jsonl``.
        item_sparse: feature id -> (num_items + 1,) int64 value re-id per item, 0 = missing.
        item_array: feature id -> (offsets (num_items + 2,), values) CSR lists per item.
        user_sparse: feature id -> (U,) int64 value re-id per user row, 0 = missing.
        user_array: feature id -> (offsets (U + 1,), values) CSR lists per user row.
        item_vectors: feature id ("81".."86") -> (matrix (num_items + 1, dim) float32,
            present (num_items + 1,) bool). Rows without a vector are zero and marked absent.
        feature_cardinality: feature id -> embedding table size (largest value re-id + 1, counting the
            indexer's table for that feature too).
        user_index: ``indexer.pkl['u']``, raw user id -> user re-id.
        item_index: ``indexer.pkl['i']``, creative_id -> item re-id; creative_ids written as decimal
            strings are stored as ints so that pickles, JSON and callers agree.
        feature_index: ``indexer.pkl['f']``, feature id (str) -> {raw value: value re-id}.
    """

    interactions: Interactions
    user_reids: np.ndarray
    item_sparse: dict[str, np.ndarray]
    item_array: dict[str, tuple[np.ndarray, np.ndarray]]
    user_sparse: dict[str, np.ndarray]
    user_array: dict[str, tuple[np.ndarray, np.ndarray]]
    item_vectors: dict[str, tuple[np.ndarray, np.ndarray]]
    feature_cardinality: dict[str, int]
    user_index: dict[Any, int]
    item_index: dict[int | str, int]
    feature_index: dict[str, dict[Any, int]]

    @property
    def num_items(self) -> int:
        return self.interactions.num_items


def read_taac(
    directory: str | Path,
    *,
    progress: bool = True,
    sort_by_time: bool = False,
    vector_features: Iterable[str] | None = None,
    validate_event_features: bool = True,
) -> TaacData:
    """Read a TAAC training directory.

    Args:
        directory: holds ``seq.jsonl``, ``indexer.pkl``, ``item_feat_dict.json`` and optionally
            ``creative_emb/`` (without it, ``item_vectors`` is empty).
        progress: show tqdm progress bars.
        sort_by_time: stable-sort each user's events by timestamp. The format note says file order is
            time order, so the default keeps file order.
        vector_features: multimodal feature ids to load (e.g. ``["81"]``); None loads every one found.
            The larger ones (3584 dims) take tens of GB for the full data sets.
        validate_event_features: check the item-feature dict on every ``seq.jsonl`` event. Item features
            come from ``item_feat_dict.json``; the per-event copies are only validated, and skipping that
            makes the read faster.

    Returns:
        The directory's contents; see ``TaacData``.

    Raises:
        FileNotFoundError: the directory or a required file is missing.
        ValueError: a file breaks the layout (``TaacFormatError`` names file, line and field).
    """
    directory = existing_dir(directory, "TAAC training directory")
    user_index, item_index, feature_index = _read_indexer(required_file(directory / INDEXER_FILE))
    num_items = max(item_index.values(), default=0)
    item_columns = read_item_features(required_file(directory / ITEM_FEATURES_FILE), num_items, progress)
    seq = read_seq(
        required_file(directory / SEQ_FILE),
        num_items=num_items,
        predict=False,
        progress=progress,
        validate_event_features=validate_event_features,
    )
    user_reids = seq.users.astype(np.int64)
    _check_unique_users(directory / SEQ_FILE, user_reids, seq.line_numbers)
    items, actions, timestamps = seq.items, seq.actions, seq.timestamps
    if sort_by_time:
        order = time_order(seq.offsets, timestamps)
        items, actions, timestamps = items[order], actions[order], timestamps[order]

    item_ids = _raw_item_ids(item_index, num_items)
    if item_ids.dtype != object and items.size:
        unknown = int(np.count_nonzero(item_ids[items] < 0))
        if unknown:
            logger.warning("%s: %d events name item re-ids absent from %s", SEQ_FILE, unknown, INDEXER_FILE)
    num_users = len(user_reids)
    interactions = Interactions(
        offsets=seq.offsets,
        items=items,
        user_ids=_raw_user_ids(user_index, user_reids),
        item_ids=item_ids,
        timestamps=timestamps,
        actions=actions,
    )
    user_sparse, user_array, user_max = seq.user_features.finish(num_users, USER_ARRAY_FEATURES)
    item_sparse, item_array, item_max = item_columns.finish(num_items + 1, ())
    cardinality = _cardinality([user_max, item_max], feature_index)
    vectors = read_vectors(directory / VECTOR_DIR, item_index, num_items + 1, vector_features, progress)
    logger.info(
        "read %s: %d users, %d items, %d events, %d vector features",
        directory,
        num_users,
        num_items,
        len(items),
        len(vectors),
    )
    return TaacData(
        interactions=interactions,
        user_reids=user_reids,
        item_sparse=item_sparse,
        item_array=item_array,
        user_sparse=user_sparse,
        user_array=user_array,
        item_vectors=vectors,
        feature_cardinality=cardinality,
        user_index=user_index,
        item_index=item_index,
        feature_index=feature_index,
    )


def read_seq_offsets(path: str | Path, seq_path: str | Path | None = None) -> np.ndarray:
    """Read ``seq_offsets.pkl`` / ``predict_seq_offsets.pkl``: the byte offset of every line.

    Training and prediction never need them (the readers stream ``seq.jsonl``); they serve random access
    by line number. Code that seeks with them passes ``seq_path``, so that offsets which do not match
    the file are refused here rather than read as half a line.

    Args:
        path: the pickle (loaded with ``safe_load_pickle``: plain data only).
        seq_path: the ``.jsonl`` file the offsets index; when given, every offset must be the start of
            a line, one offset per line, the first 0.

    Returns:
        (lines,) int64 offsets, strictly increasing.

    Raises:
        TaacFormatError: the pickle holds code, anything but an increasing list of non-negative ints,
            or (with ``seq_path``) offsets that are not the line starts of that file.
    """
    obj = safe_load_pickle(path)
    if type(obj) not in (list, tuple) or not all(type(x) is int and 0 <= x <= INT64_MAX for x in obj):
        raise TaacFormatError(path, None, "offsets", "expected a list of non-negative ints")
    offsets = np.asarray(obj, dtype=np.int64)
    if offsets.size > 1 and np.any(np.diff(offsets) <= 0):
        bad = int(np.argmax(np.diff(offsets) <= 0)) + 1
        raise TaacFormatError(path, None, f"offsets[{bad}]", "offsets must be strictly increasing")
    if seq_path is not None:
        _check_line_starts(Path(path), offsets, Path(seq_path))
    return offsets


def _check_line_starts(path: Path, offsets: np.ndarray, seq_path: Path) -> None:
    """Raises TaacFormatError unless ``offsets`` are exactly the line starts of ``seq_path``."""
    size = seq_path.stat().st_size
    data = np.memmap(seq_path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)

    def newlines_before(end: int) -> int:  # blockwise: the file may be far larger than memory
        return sum(int(np.count_nonzero(data[i : min(i + READ_BLOCK, end)] == 10)) for i in range(0, end, READ_BLOCK))

    lines = newlines_before(size) + (1 if size and data[-1] != 10 else 0)
    if offsets.size != lines:
        raise TaacFormatError(path, None, "offsets", f"{offsets.size} offsets for the {lines} lines of {seq_path}")
    if not lines:
        return
    wrong = offsets >= size
    wrong[0] |= offsets[0] != 0
    wrong[1:] |= data[np.minimum(offsets[1:], size) - 1] != 10  # a line starts right after a newline (10)
    if wrong.any():
        k = int(np.argmax(wrong))
        offset = int(offsets[k])
        if offset >= size:
            where = f"past the end of {seq_path} ({size} bytes)"
        else:
            where = f"inside line {newlines_before(offset) + 1} of {seq_path}, not the start of line {k + 1}"
        raise TaacFormatError(path, None, f"offsets[{k}]", f"byte {offset} is {where}")


def _check_unique_users(path: Path, user_reids: np.ndarray, line_numbers: np.ndarray) -> None:
    if user_reids.size < 2:
        return
    order = np.argsort(user_reids, kind="stable")
    repeated = np.flatnonzero(user_reids[order][1:] == user_reids[order][:-1])
    if repeated.size:
        first, second = order[repeated[0]], order[repeated[0] + 1]
        raise TaacFormatError(
            path,
            int(line_numbers[second]),
            "user_id",
            f"user {int(user_reids[second])} already has line {int(line_numbers[first])}; one line per user",
        )


def _raw_item_ids(item_index: dict[int | str, int], num_items: int) -> np.ndarray:
    """Creative_id of every re-id: int64 (-1 where unknown) if all are ints, else object (None)."""
    if all(type(cid) is int and INT64_MIN <= cid <= INT64_MAX for cid in item_index):
        raw = np.full(num_items + 1, -1, np.int64)
        if item_index:
            reids = np.fromiter(item_index.values(), np.int64, len(item_index))
            raw[reids] = np.fromiter(item_index.keys(), np.int64, len(item_index))
        raw[PAD_ID] = 0
        return raw
    raw = np.full(num_items + 1, None, dtype=object)
    for cid, reid in item_index.items():
        raw[reid] = cid
    return raw


def _raw_user_ids(user_index: dict[Any, int], user_reids: np.ndarray) -> np.ndarray:
    by_reid = {reid: raw for raw, reid in user_index.items()}
    return id_array([by_reid.get(reid, reid) for reid in user_reids.tolist()])


def _cardinality(
    largest: Iterable[dict[str, int]], feature_index: dict[str, dict[Any, int]]
) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for part in largest:
        for key, value in part.items():
            sizes[key] = max(sizes.get(key, 1), value + 1)
    for key, table in feature_index.items():
        if table:
            sizes[key] = max(sizes.get(key, 1), len(table) + 1, max(table.values()) + 1)
    return dict(sorted(sizes.items(), key=lambda kv: feature_sort_key(kv[0])))


def _read_indexer(path: Path) -> tuple[dict[Any, int], dict[int | str, int], dict[str, dict[Any, int]]]:
    """Load and check ``indexer.pkl``; 'u' and 'f' may be absent (empty), 'i' is required."""
    obj = safe_load_pickle(path)
    if type(obj) is not dict or "i" not in obj:
        raise TaacFormatError(
            path, None, "indexer", f"expected a dict with keys 'u', 'i', 'f', got {describe(obj)}"
        )
    users, items, features = obj.get("u", {}), obj["i"], obj.get("f", {})
    for name, table in (("u", users), ("i", items), ("f", features)):
        if type(table) is not dict:
            raise TaacFormatError(path, None, f"['{name}']", f"expected a dict, got {describe(table)}")

    user_index: dict[Any, int] = {}
    for raw, reid in users.items():
        if type(raw) not in (int, str):
            raise TaacFormatError(path, None, f"['u'][{raw!r}]", "raw user id must be an int or a str")
        if type(reid) is not int or not 0 <= reid <= INT64_MAX:
            raise TaacFormatError(
                path, None, f"['u'][{raw!r}]", f"expected an int re-id, got {describe(reid)}"
            )
        user_index[raw] = reid

    item_index: dict[int | str, int] = {}
    for raw, reid in items.items():
        cid = norm_cid(raw)
        if cid is None:
            raise TaacFormatError(path, None, f"['i'][{raw!r}]", "creative_id must be an int or a str")
        if type(reid) is not int or not 1 <= reid <= INT64_MAX:
            raise TaacFormatError(
                path, None, f"['i'][{raw!r}]", f"expected an int re-id >= 1, got {describe(reid)}"
            )
        if cid in item_index:
            raise TaacFormatError(path, None, f"['i'][{raw!r}]", "creative_id listed twice")
        item_index[cid] = reid
    if len(set(item_index.values())) != len(item_index):
        seen: dict[int, Any] = {}
        for cid, reid in item_index.items():
            if reid in seen:
                raise TaacFormatError(
                    path,
                    None,
                    f"['i'][{cid!r}]",
                    f"re-id {reid} already belongs to creative_id {seen[reid]!r}",
                )
            seen[reid] = cid

    feature_index: dict[str, dict[Any, int]] = {}
    for feat, table in features.items():
        if type(feat) not in (int, str) or type(table) is not dict:
            raise TaacFormatError(path, None, f"['f'][{feat!r}]", "expected feature id -> {raw value: re-id}")
        for raw, reid in table.items():
            if type(reid) is not int or not 0 <= reid <= INT64_MAX:
                raise TaacFormatError(
                    path, None, f"['f'][{feat!r}][{raw!r}]", f"expected an int re-id, got {describe(reid)}"
                )
        feature_index[str(feat)] = table
    return user_index, item_index, feature_index
