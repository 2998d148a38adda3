"""The TAAC 2025 data layout (TencentGR-1M / TencentGR-10M): read it, score it, and write a synthetic copy.

The layout is the one described in the project's TAAC format note (``taac-format.md`` in the shared
docs); this module relies only on what the note states and, where the note says "uncertain", accepts
both variants. Nothing here assumes a property that only our own generator happens to have.

Training directory::

    seq.jsonl            one JSON list of records per user, in time order
    seq_offsets.pkl      byte offset of every line (not needed here: the reader streams the file)
    indexer.pkl          {'u': {raw_user_id: reid}, 'i': {creative_id: reid}, 'f': {feat_id: {raw: reid}}}
    item_feat_dict.json  {"<item_reid>": {"<feat_id>": value_reid or [value_reids]}}
    creative_emb/        emb_81_32.pkl (pickled {creative_id: vector}) and emb_<id>_<dim>/ folders of
                         JSON-lines part files {"anonymous_cid": creative_id, "emb": [floats]}

A record is ``[user_id, item_id, user_feature, item_feature, action_type, timestamp]``: either the
user-profile record (only ``user_feature`` set, one per line at any position) or an item interaction.

Evaluation directory: ``predict_seq.jsonl`` (same layout; unseen users are raw strings, unseen items keep
their raw creative_id, which is greater than the number of items, unseen feature values are strings),
``predict_set.jsonl`` (candidates ``{"creative_id", "retrieval_id", "features"}``) and, only in the
synthetic data written here, ``predict_targets.jsonl``: one JSON object a line,
``{"user_id": <as in predict_seq.jsonl>, "creative_id": <target>}``, in ``predict_seq.jsonl`` order,
holding each user's target (the first clicked ad after the history) so the score can be computed.

Memory: no per-event Python object lives longer than one chunk of lines; events end up in NumPy arrays.
The pickled multimodal feature 81 is the exception the format imposes: a pickle is loaded whole.
Internal item ids are the file's re-ids (1..num_items, 0 = padding), so no re-mapping table is needed.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import re
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from seqrec.data.dataset import PAD_ID, Interactions
from seqrec.data.safe_pickle import safe_load_pickle

logger = logging.getLogger(__name__)

SEQ_FILE = "seq.jsonl"
SEQ_OFFSETS_FILE = "seq_offsets.pkl"
INDEXER_FILE = "indexer.pkl"
ITEM_FEATURES_FILE = "item_feat_dict.json"
VECTOR_DIR = "creative_emb"
PREDICT_SEQ_FILE = "predict_seq.jsonl"
PREDICT_SEQ_OFFSETS_FILE = "predict_seq_offsets.pkl"
PREDICT_SET_FILE = "predict_set.jsonl"
PREDICT_TARGETS_FILE = "predict_targets.jsonl"

USER_SPARSE_FEATURES = ("103", "104", "105", "109")
USER_ARRAY_FEATURES = ("106", "107", "108", "110")
ITEM_SPARSE_FEATURES = (
    "100", "101", "102", "111", "112", "114", "115", "116", "117", "118", "119", "120", "121", "122",
)  # fmt: skip
VECTOR_FEATURES = ("81", "82", "83", "84", "85", "86")

_INT64_MAX = 2**63 - 1
_INT64_MIN = -(2**63)
_ACTION_MAX = 2  # 0 exposure, 1 click, 2 conversion
_FLUSH_EVENTS = 1 << 20  # events buffered as Python ints before they become a NumPy chunk
_FLUSH_ROWS = 1 << 16  # feature rows buffered likewise
_READ_BLOCK = 1 << 20
_MAX_VALUE_CHARS = 1 << 26  # one member of item_feat_dict.json is a few hundred characters
_VECTOR_ENTRY = re.compile(r"emb_(\d+)_(\d+)(\.pkl)?")
_WHITESPACE = re.compile(r"[ \t\n\r]*")


class TaacFormatError(ValueError):
    """A TAAC file breaks the documented layout.

    Attributes:
        path: the offending file.
        line: 1-based line number, or None where the file has no lines (pickles).
        field: the offending record, key or field.
    """

    def __init__(self, path: str | Path, line: int | None, field: str, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {field}: {message}")


# ----------------------------------------------------------------------------------------------------
# Containers
# ----------------------------------------------------------------------------------------------------


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


@dataclass
class TaacCandidates:
    """The candidate items of ``predict_set.jsonl``, in file order.

    Attributes:
        creative_ids: (C,) raw creative ids (int64, or object if some are not integers).
        retrieval_ids: (C,) retrieval ids as written (int64, or object if some are not integers).
        items: (C,) int64 training item re-id, 0 for a creative unseen in training.
        sparse: feature id -> (C,) int64 value re-id, 0 = missing or unseen (a string in the file).
        array: feature id -> (offsets (C + 1,), values) CSR lists; unseen values are 0.
        vectors: feature id -> (matrix (C, dim) float32, present (C,) bool), read from the evaluation
            directory's ``creative_emb/`` or, when it has none, taken from the training vectors.
    """

    creative_ids: np.ndarray
    retrieval_ids: np.ndarray
    items: np.ndarray
    sparse: dict[str, np.ndarray]
    array: dict[str, tuple[np.ndarray, np.ndarray]]
    vectors: dict[str, tuple[np.ndarray, np.ndarray]]

    def __len__(self) -> int:
        return len(self.creative_ids)


@dataclass
class TaacPredict:
    """An evaluation directory: the test users' whole histories and the candidate items.

    Attributes:
        user_ids: (P,) object, each user's id as written in ``predict_seq.jsonl`` (a training user
            re-id or a raw string); the output must follow this order.
        user_reids: (P,) int64 training user re-id, 0 for a user unseen in training.
        offsets: (P + 1,) int64; user ``p``'s history is ``items[offsets[p]:offsets[p + 1]]``, oldest
            first, including the most recent item.
        items: (N,) int64 training item re-id per event, 0 for an item unseen in training.
        raw_items: (N,) creative_id per event (int64, or object if some are not integers).
        actions: (N,) int8 action type per event.
        timestamps: (N,) int64 seconds per event.
        user_sparse, user_array: the users' profile features (rows follow ``user_ids``).
        event_sparse, event_array: the item features written on each event; for unseen items they are
            the only features there are.
        candidates: the items to retrieve from.
    """

    user_ids: np.ndarray
    user_reids: np.ndarray
    offsets: np.ndarray
    items: np.ndarray
    raw_items: np.ndarray
    actions: np.ndarray
    timestamps: np.ndarray
    user_sparse: dict[str, np.ndarray]
    user_array: dict[str, tuple[np.ndarray, np.ndarray]]
    event_sparse: dict[str, np.ndarray]
    event_array: dict[str, tuple[np.ndarray, np.ndarray]]
    candidates: TaacCandidates

    @property
    def num_users(self) -> int:
        return len(self.offsets) - 1

    def history(self, p: int) -> np.ndarray:
        return self.items[self.offsets[p] : self.offsets[p + 1]]


# ----------------------------------------------------------------------------------------------------
# Public readers
# ----------------------------------------------------------------------------------------------------


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
    directory = _existing_dir(directory, "TAAC training directory")
    user_index, item_index, feature_index = _read_indexer(_required_file(directory / INDEXER_FILE))
    num_items = max(item_index.values(), default=0)
    item_columns = _read_item_features(_required_file(directory / ITEM_FEATURES_FILE), num_items, progress)
    seq = _read_seq(
        _required_file(directory / SEQ_FILE),
        num_items=num_items,
        predict=False,
        progress=progress,
        validate_event_features=validate_event_features,
    )
    user_reids = seq.users.astype(np.int64)
    _check_unique_users(directory / SEQ_FILE, user_reids, seq.line_numbers)
    items, actions, timestamps = seq.items, seq.actions, seq.timestamps
    if sort_by_time:
        order = _time_order(seq.offsets, timestamps)
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
    vectors = _read_vectors(directory / VECTOR_DIR, item_index, num_items + 1, vector_features, progress)
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


def read_taac_predict(
    directory: str | Path,
    train: TaacData,
    *,
    progress: bool = True,
    sort_by_time: bool = False,
    vector_features: Iterable[str] | None = None,
) -> TaacPredict:
    """Read a TAAC evaluation directory against the training data it belongs to.

    Every history is read whole, most recent item included (the competition baseline dropped it by
    mistake). Ids are mapped with the training indexer: an ``item_id`` up to ``train.num_items`` is a
    training re-id; a larger one is a raw creative_id, looked up in ``train.item_index`` and 0 when
    unseen. A string user id is a raw id (looked up in ``train.user_index``, 0 when unseen); string
    feature values are unseen values and become 0.

    Args:
        directory: holds ``predict_seq.jsonl`` and ``predict_set.jsonl`` (and optionally ``creative_emb/``).
        train: the training data read by ``read_taac``.
        progress: show tqdm progress bars.
        sort_by_time: stable-sort each history by timestamp (use the training setting).
        vector_features: multimodal feature ids to load for the candidates; None loads every one found.

    Returns:
        The histories and candidates; see ``TaacPredict``.

    Raises:
        FileNotFoundError: the directory or a required file is missing.
        ValueError: a file breaks the layout (``TaacFormatError`` names file, line and field).
    """
    directory = _existing_dir(directory, "TAAC evaluation directory")
    seq_path = _required_file(directory / PREDICT_SEQ_FILE)
    seq = _read_seq(
        seq_path, num_items=_INT64_MAX, predict=True, progress=progress, validate_event_features=True
    )
    num_users = len(seq.users)
    num_events = len(seq.items)

    known_reids = set(train.user_reids.tolist())
    known_reids.update(train.user_index.values())
    user_reids = np.zeros(num_users, np.int64)
    for row, user in enumerate(seq.users.tolist()):
        if type(user) is int:
            user_reids[row] = user if user in known_reids else 0
        else:
            user_reids[row] = train.user_index.get(user, 0)

    items, raw_items = _map_predict_items(seq.items, train)
    actions, timestamps, row_map = seq.actions, seq.timestamps, None
    if sort_by_time:
        order = _time_order(seq.offsets, seq.timestamps)
        items, raw_items, actions, timestamps = (
            items[order],
            raw_items[order],
            actions[order],
            timestamps[order],
        )
        # Event features were collected in file order; row_map sends each file position to its sorted one.
        row_map = np.empty(num_events, np.int64)
        row_map[order] = np.arange(num_events)
    user_sparse, user_array, _ = seq.user_features.finish(num_users, USER_ARRAY_FEATURES)
    assert seq.event_features is not None
    event_sparse, event_array, _ = seq.event_features.finish(num_events, (), row_map=row_map)
    candidates = _read_candidates(directory, train, vector_features, progress)
    return TaacPredict(
        user_ids=seq.users.astype(object),
        user_reids=user_reids,
        offsets=seq.offsets,
        items=items,
        raw_items=raw_items,
        actions=actions,
        timestamps=timestamps,
        user_sparse=user_sparse,
        user_array=user_array,
        event_sparse=event_sparse,
        event_array=event_array,
        candidates=candidates,
    )


def read_taac_targets(directory: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``predict_targets.jsonl`` (written by ``write_taac_synthetic``, not part of the competition).

    Args:
        directory: the evaluation directory.

    Returns:
        ``(user_ids, creative_ids)``, both (P,) object arrays in ``predict_seq.jsonl`` order.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: a line is not ``{"user_id": ..., "creative_id": ...}``.
    """
    path = _required_file(Path(directory) / PREDICT_TARGETS_FILE)
    users: list[Any] = []
    targets: list[Any] = []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            obj = _json_line(path, line_no, raw)
            if type(obj) is not dict or "user_id" not in obj or "creative_id" not in obj:
                raise TaacFormatError(path, line_no, "line", 'expected {"user_id": ..., "creative_id": ...}')
            for key in ("user_id", "creative_id"):
                if _norm_cid(obj[key]) is None:
                    raise TaacFormatError(
                        path, line_no, key, f"expected an int or str, got {_describe(obj[key])}"
                    )
            users.append(obj["user_id"])
            targets.append(obj["creative_id"])
    return _object_array(users), _object_array(targets)


def read_seq_offsets(path: str | Path) -> np.ndarray:
    """Read ``seq_offsets.pkl`` / ``predict_seq_offsets.pkl``: the byte offset of every line.

    Args:
        path: the pickle (loaded with ``safe_load_pickle``: plain data only).

    Returns:
        (lines,) int64 offsets, strictly increasing.

    Raises:
        ValueError: the pickle holds code, or anything but an increasing list of non-negative ints.
    """
    obj = safe_load_pickle(path)
    if type(obj) not in (list, tuple) or not all(type(x) is int and 0 <= x <= _INT64_MAX for x in obj):
        raise TaacFormatError(path, None, "offsets", "expected a list of non-negative ints")
    offsets = np.asarray(obj, dtype=np.int64)
    if offsets.size > 1 and np.any(np.diff(offsets) <= 0):
        bad = int(np.argmax(np.diff(offsets) <= 0)) + 1
        raise TaacFormatError(path, None, f"offsets[{bad}]", "offsets must be strictly increasing")
    return offsets


# ----------------------------------------------------------------------------------------------------
# Metric
# ----------------------------------------------------------------------------------------------------


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
        key = _norm_cid(target)
        for rank, cid in enumerate(list(ranked)[:10], start=1):
            if _norm_cid(cid) == key:
                hits += 1.0
                gain += 1.0 / math.log2(rank + 1)
                break
    return hits / len(wanted), gain / len(wanted)


# ----------------------------------------------------------------------------------------------------
# Reading internals
# ----------------------------------------------------------------------------------------------------


def _describe(value: Any) -> str:
    text = json.dumps(value) if type(value) in (int, float, str, bool, list, dict) else repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    kind = "null" if value is None else type(value).__name__
    return kind if value is None else f"{kind} {text}"


def _norm_cid(value: Any) -> int | str | None:
    """Normalise a raw id: ints (NumPy too) and decimal strings become int, other strings stay; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if type(value) is str:
        if value.isascii() and value.isdigit() and len(value) <= 18:  # longer ones stay strings
            return int(value)
        return value
    return None


def _object_array(values: Sequence[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _id_array(values: Sequence[Any]) -> np.ndarray:
    """int64 when every id is an int in range, else object."""
    if all(type(v) is int and _INT64_MIN <= v <= _INT64_MAX for v in values):
        return np.asarray(values, dtype=np.int64) if len(values) else np.zeros(0, np.int64)
    return _object_array(values)


def _existing_dir(directory: str | Path, what: str) -> Path:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: {what} not found")
    return directory


def _required_file(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: required file not found (see the TAAC format note)")
    return path


def _progress_bar(path: Path, enabled: bool) -> tqdm:
    return tqdm(
        total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name, disable=not enabled, leave=False
    )


def _json_line(path: Path, line_no: int, raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except RecursionError as exc:
        raise TaacFormatError(path, line_no, "line", "JSON nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        raise TaacFormatError(path, line_no, "line", f"not valid JSON, possibly truncated ({exc})") from exc


class _Chunks:
    """A growable column: Python values pile up in ``pending`` and move to NumPy chunks on ``flush``."""

    def __init__(self, dtype: Any) -> None:
        self.dtype = dtype
        self.pending: list[Any] = []
        self.flushed = 0  # values already moved to chunks
        self._done: list[np.ndarray] = []

    def flush(self) -> None:
        if self.pending:
            if self.dtype is object:
                chunk = _object_array(self.pending)
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


class _FeatureColumns:
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
            if type(value) is int and 0 <= value <= _INT64_MAX:
                values.append(value)
                lengths.append(1)
            elif type(value) is list:
                self._has_list.add(key)
                for x in value:
                    if type(x) is int and 0 <= x <= _INT64_MAX:
                        values.append(x)
                    elif lenient and type(x) is str:
                        values.append(0)
                    else:
                        raise TaacFormatError(
                            self._path,
                            line,
                            f"{field}['{key}']",
                            f"expected a list of non-negative int value ids, found element {_describe(x)}",
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
                    f"expected a non-negative int value id or a list of them, got {_describe(value)}",
                )
            rows.append(row)
            if len(rows) >= _FLUSH_ROWS:
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
        for key in sorted(self._pending, key=_feature_sort_key):
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


def _feature_sort_key(key: str) -> tuple[int, int, str]:
    numeric = key.isascii() and key.isdigit() and len(key) <= 18
    return (0, int(key), key) if numeric else (1, 0, key)


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


def _bad_feature_key(features: dict) -> str | None:
    """The first key whose value is neither a value id nor a list of them (training files only)."""
    for key, value in features.items():
        if type(value) is int:
            if not 0 <= value <= _INT64_MAX:
                return key
        elif type(value) is list:
            for x in value:
                if type(x) is not int or not 0 <= x <= _INT64_MAX:
                    return key
        else:
            return key
    return None


@dataclass
class _SeqColumns:
    users: np.ndarray  # user id per line as written (int64 in training, object at inference)
    line_numbers: np.ndarray
    offsets: np.ndarray
    items: np.ndarray  # item_id per event as written
    actions: np.ndarray
    timestamps: np.ndarray
    user_features: _FeatureColumns
    event_features: _FeatureColumns | None


def _read_seq(
    path: Path, *, num_items: int, predict: bool, progress: bool, validate_event_features: bool
) -> _SeqColumns:
    """Stream a ``seq.jsonl``-layout file into columns, validating every record.

    In training files user ids are re-ids (ints) and feature values ints; at inference (``predict``)
    user ids may be raw strings, item ids raw creative_ids and feature values strings, and each event's
    item features are kept.
    """
    parser = _SeqParser(
        path, num_items=num_items, predict=predict, validate_event_features=validate_event_features
    )
    unread_bytes = 0
    with open(path, "rb") as f, _progress_bar(path, progress) as bar:
        for line_no, raw in enumerate(f, 1):
            unread_bytes += len(raw)
            if not raw.strip():
                continue
            parser.add_line(line_no, _json_line(path, line_no, raw))
            if unread_bytes >= _READ_BLOCK:
                bar.update(unread_bytes)
                unread_bytes = 0
        bar.update(unread_bytes)
    return parser.finish()


class _SeqParser:
    """Turns parsed ``seq.jsonl`` lines into columns, checking every record on the way.

    One plain loop per record: a whole-line variant built from C-level ``map``/``set``/``min``/``max``
    passes was measured and was no faster, since it needs about twenty passes over each line.
    """

    def __init__(self, path: Path, *, num_items: int, predict: bool, validate_event_features: bool) -> None:
        self.path = path
        self.num_items = num_items
        self.predict = predict
        self.check_events = validate_event_features and not predict
        self.user_types = (int, str) if predict else (int,)
        self.users = _Chunks(object if predict else np.int64)
        self.line_numbers = _Chunks(np.int64)
        self.lengths = _Chunks(np.int64)
        self.items = _Chunks(np.int64)
        self.actions = _Chunks(np.int8)
        self.stamps = _Chunks(np.int64)
        self.user_features = _FeatureColumns(path, lenient=predict)
        self.event_features = _FeatureColumns(path, lenient=True) if predict else None
        self.num_events = 0

    def add_line(self, line_no: int, records: Any) -> None:
        path = self.path
        if type(records) is not list or not records:
            raise TaacFormatError(
                path, line_no, "line", f"expected a non-empty JSON list of records, got {_describe(records)}"
            )
        row = len(self.line_numbers.pending) + self.line_numbers.flushed
        num_items, check_events, event_features = self.num_items, self.check_events, self.event_features
        add_item, add_action, add_stamp = (
            self.items.pending.append,
            self.actions.pending.append,
            self.stamps.pending.append,
        )
        start = self.num_events
        line_user: Any = None
        line_features: list[dict] = []  # checked together at the end of the line: cheaper than per record
        profile_at = -1
        for k, record in enumerate(records):
            if type(record) is not list or len(record) != 6:
                raise TaacFormatError(
                    path,
                    line_no,
                    f"record {k}",
                    "expected 6 fields [user_id, item_id, user_feature, item_feature, action_type, "
                    f"timestamp], got {_describe(record)}",
                )
            user, item, user_feature, item_feature, action, stamp = record
            if k == 0:
                if type(user) not in self.user_types or (type(user) is int and not 0 <= user <= _INT64_MAX):
                    expected = "an int re-id or a raw string" if self.predict else "a non-negative int re-id"
                    raise TaacFormatError(
                        path, line_no, f"record {k} user_id", f"expected {expected}, got {_describe(user)}"
                    )
                line_user, user_type = user, type(user)
            elif type(user) is not user_type or user != line_user:
                raise TaacFormatError(
                    path,
                    line_no,
                    f"record {k} user_id",
                    f"{_describe(user)} differs from the line's first record ({line_user!r}); a line holds one user",
                )
            if user_feature is None:  # an item record
                if type(item) is not int or not 1 <= item <= num_items:
                    limit = (
                        "a positive int" if self.predict else f"1..{num_items} (the re-ids in {INDEXER_FILE})"
                    )
                    raise TaacFormatError(
                        path, line_no, f"record {k} item_id", f"expected {limit}, got {_describe(item)}"
                    )
                if type(action) is not int or not 0 <= action <= _ACTION_MAX:
                    raise TaacFormatError(
                        path,
                        line_no,
                        f"record {k} action_type",
                        f"expected 0 (exposure), 1 (click) or 2 (conversion), got {_describe(action)}",
                    )
                if type(stamp) is not int or not _INT64_MIN <= stamp <= _INT64_MAX:
                    raise TaacFormatError(
                        path,
                        line_no,
                        f"record {k} timestamp",
                        f"expected int seconds, got {_describe(stamp)}",
                    )
                if item_feature is not None:
                    if type(item_feature) is not dict:
                        raise TaacFormatError(
                            path,
                            line_no,
                            f"record {k} item_feature",
                            f"expected a dict of feature id -> value or null, got {_describe(item_feature)}",
                        )
                    if event_features is not None:
                        event_features.add(self.num_events, item_feature, line_no, f"record {k} item_feature")
                    elif check_events:
                        line_features.append(item_feature)
                add_item(item)
                add_action(action)
                add_stamp(stamp)
                self.num_events += 1
                continue
            if type(user_feature) is not dict:
                raise TaacFormatError(
                    path,
                    line_no,
                    f"record {k} user_feature",
                    f"expected a dict (user-profile record) or null (item record), got {_describe(user_feature)}",
                )
            if item is not None or item_feature is not None or action is not None:
                raise TaacFormatError(
                    path,
                    line_no,
                    f"record {k}",
                    "a user-profile record (user_feature set) needs null item_id, item_feature and action_type",
                )
            if stamp is not None and (type(stamp) is not int or not _INT64_MIN <= stamp <= _INT64_MAX):
                raise TaacFormatError(
                    path,
                    line_no,
                    f"record {k} timestamp",
                    f"expected int seconds or null, got {_describe(stamp)}",
                )
            if profile_at >= 0:
                raise TaacFormatError(
                    path,
                    line_no,
                    f"record {k}",
                    f"second user-profile record (the first is record {profile_at}); a line holds one",
                )
            profile_at = k
            self.user_features.add(row, user_feature, line_no, f"record {k} user_feature")

        if line_features and not _all_value_ids(line_features):
            _check_event_features(path, line_no, records)
        self.users.pending.append(line_user)
        self.lengths.pending.append(self.num_events - start)
        self.line_numbers.pending.append(line_no)
        if len(self.items.pending) >= _FLUSH_EVENTS:
            for column in (self.items, self.actions, self.stamps):
                column.flush()
        if len(self.line_numbers.pending) >= _FLUSH_ROWS:
            for column in (self.users, self.line_numbers, self.lengths):
                column.flush()

    def finish(self) -> _SeqColumns:
        line_lengths = self.lengths.finish()
        offsets = np.zeros(len(line_lengths) + 1, np.int64)
        np.cumsum(line_lengths, out=offsets[1:])
        return _SeqColumns(
            users=self.users.finish(),
            line_numbers=self.line_numbers.finish(),
            offsets=offsets,
            items=self.items.finish(),
            actions=self.actions.finish(),
            timestamps=self.stamps.finish(),
            user_features=self.user_features,
            event_features=self.event_features,
        )


def _all_value_ids(features: list[dict]) -> bool:
    """Whether every value of these feature dicts is a non-negative int (a quick pass over one line)."""
    for value in chain.from_iterable(map(dict.values, features)):
        if type(value) is not int or not 0 <= value <= _INT64_MAX:
            return False
    return True


def _check_event_features(path: Path, line_no: int, records: list) -> None:
    """Find the item record whose feature value is wrong; lists of value ids are fine."""
    for k, record in enumerate(records):
        if record[2] is None and type(record[3]) is dict:
            bad = _bad_feature_key(record[3])
            if bad is not None:
                raise TaacFormatError(
                    path,
                    line_no,
                    f"record {k} item_feature['{bad}']",
                    f"expected a non-negative int value id or a list of them, got {_describe(record[3][bad])}",
                )


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


def _time_order(offsets: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Event permutation that stable-sorts each user's events by timestamp and keeps users in place."""
    owner = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    by_time = np.argsort(timestamps, kind="stable")
    return by_time[np.argsort(owner[by_time], kind="stable")]


def _raw_item_ids(item_index: dict[int | str, int], num_items: int) -> np.ndarray:
    """Creative_id of every re-id: int64 (-1 where unknown) if all are ints, else object (None)."""
    if all(type(cid) is int and _INT64_MIN <= cid <= _INT64_MAX for cid in item_index):
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
    return _id_array([by_reid.get(reid, reid) for reid in user_reids.tolist()])


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
    return dict(sorted(sizes.items(), key=lambda kv: _feature_sort_key(kv[0])))


def _read_indexer(path: Path) -> tuple[dict[Any, int], dict[int | str, int], dict[str, dict[Any, int]]]:
    """Load and check ``indexer.pkl``; 'u' and 'f' may be absent (empty), 'i' is required."""
    obj = safe_load_pickle(path)
    if type(obj) is not dict or "i" not in obj:
        raise TaacFormatError(
            path, None, "indexer", f"expected a dict with keys 'u', 'i', 'f', got {_describe(obj)}"
        )
    users, items, features = obj.get("u", {}), obj["i"], obj.get("f", {})
    for name, table in (("u", users), ("i", items), ("f", features)):
        if type(table) is not dict:
            raise TaacFormatError(path, None, f"['{name}']", f"expected a dict, got {_describe(table)}")

    user_index: dict[Any, int] = {}
    for raw, reid in users.items():
        if type(raw) not in (int, str):
            raise TaacFormatError(path, None, f"['u'][{raw!r}]", "raw user id must be an int or a str")
        if type(reid) is not int or not 0 <= reid <= _INT64_MAX:
            raise TaacFormatError(
                path, None, f"['u'][{raw!r}]", f"expected an int re-id, got {_describe(reid)}"
            )
        user_index[raw] = reid

    item_index: dict[int | str, int] = {}
    for raw, reid in items.items():
        cid = _norm_cid(raw)
        if cid is None:
            raise TaacFormatError(path, None, f"['i'][{raw!r}]", "creative_id must be an int or a str")
        if type(reid) is not int or not 1 <= reid <= _INT64_MAX:
            raise TaacFormatError(
                path, None, f"['i'][{raw!r}]", f"expected an int re-id >= 1, got {_describe(reid)}"
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
            if type(reid) is not int or not 0 <= reid <= _INT64_MAX:
                raise TaacFormatError(
                    path, None, f"['f'][{feat!r}][{raw!r}]", f"expected an int re-id, got {_describe(reid)}"
                )
        feature_index[str(feat)] = table
    return user_index, item_index, feature_index


class _JsonObjectReader:
    """Streams the members of one large top-level JSON object without loading it whole.

    ``item_feat_dict.json`` holds one entry per item (millions); ``json.load`` would build all of them
    as Python dicts at once. Keys and values are decoded one at a time with ``raw_decode`` over a
    sliding text buffer, which is refilled whenever a value may continue past the buffer's end.
    """

    def __init__(self, path: Path, progress: bool) -> None:
        self._path = path
        self._progress = progress
        self._decoder = json.JSONDecoder()
        self._buf = ""
        self._pos = 0
        self._line = 1
        self._eof = False

    def _fill(self) -> bool:
        if self._eof:
            return False
        pending = len(self._buf) - self._pos
        if pending > _MAX_VALUE_CHARS:
            # No item entry is this large; the JSON is malformed. Stop before reading the whole file.
            return False
        try:
            # Read at least as much as is pending so retries of a long value cost linear, not quadratic, time.
            chunk = self._file.read(max(_READ_BLOCK, pending))
        except UnicodeDecodeError as exc:
            raise TaacFormatError(self._path, self._line, "file", f"not UTF-8 text ({exc})") from exc
        if not chunk:
            self._eof = True
            return False
        self._bar.update(len(chunk))
        self._buf = self._buf[self._pos :] + chunk
        self._pos = 0
        return True

    def _peek(self) -> str | None:
        """Skip whitespace; the next character, or None at the end of the file."""
        while True:
            end = _WHITESPACE.match(self._buf, self._pos).end()
            self._line += self._buf.count("\n", self._pos, end)
            self._pos = end
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._fill():
                return None

    def _error(self, field: str, message: str) -> TaacFormatError:
        return TaacFormatError(self._path, self._line, field, message)

    def _value(self, field: str) -> Any:
        while True:
            try:
                value, end = self._decoder.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as exc:
                if self._fill():
                    continue
                line = self._line + self._buf.count("\n", self._pos, exc.pos)
                raise TaacFormatError(self._path, line, field, f"not valid JSON ({exc.msg})") from exc
            except (ValueError, RecursionError) as exc:  # e.g. an int literal beyond Python's digit limit
                raise self._error(field, f"cannot decode the JSON value ({exc})") from exc
            # A value ending exactly at the buffer's end (a number) may continue in the next block.
            if end == len(self._buf) and self._fill():
                continue
            self._line += self._buf.count("\n", self._pos, end)
            self._pos = end
            return value

    def items(self) -> Iterator[tuple[Any, Any, int]]:
        """Yield ``(key, value, line of the key)`` for every member of the top-level object."""
        with (
            open(self._path, encoding="utf-8") as self._file,
            _progress_bar(self._path, self._progress) as self._bar,
        ):
            if self._peek() != "{":
                raise self._error("file", 'expected a JSON object {"<item_reid>": {features}, ...}')
            self._pos += 1
            closing = self._peek()
            if closing == "}":
                self._pos += 1
            while closing != "}":
                if self._peek() != '"':
                    raise self._error("file", "expected a quoted item re-id")
                line = self._line
                key = self._value("item key")
                if self._peek() != ":":
                    raise self._error(f"item {key!r}", "expected ':' after the key")
                self._pos += 1
                self._peek()
                value = self._value(f"item {key!r}")
                yield key, value, line
                closing = self._peek()
                if closing not in (",", "}"):
                    raise self._error(f"item {key!r}", "expected ',' or '}' after the value")
                self._pos += 1
            if self._peek() is not None:
                raise self._error("file", "unexpected data after the top-level object")


def _read_item_features(path: Path, num_items: int, progress: bool) -> _FeatureColumns:
    columns = _FeatureColumns(path, lenient=False)
    seen = np.zeros(num_items + 1, dtype=bool)
    for key, features, line in _JsonObjectReader(path, progress).items():
        # The length bound keeps int() within Python's digit limit and the value within int64.
        if not (key.isascii() and key.isdigit() and len(key) <= 18) or not 1 <= int(key) <= num_items:
            raise TaacFormatError(
                path,
                line,
                f"item {key!r}",
                f"expected an item re-id in 1..{num_items} (the re-ids in {INDEXER_FILE})",
            )
        reid = int(key)
        if seen[reid]:
            raise TaacFormatError(path, line, f"item {key!r}", "item listed twice")
        seen[reid] = True
        if type(features) is not dict:
            raise TaacFormatError(
                path,
                line,
                f"item {key!r}",
                f"expected a dict of feature id -> value, got {_describe(features)}",
            )
        columns.add(reid, features, line, f"item {key!r}")
    return columns


def _scan_vector_sources(directory: Path, wanted: Iterable[str] | None) -> dict[str, tuple[Path, int]]:
    """Feature id -> (source, dim) for every ``emb_<id>_<dim>.pkl`` file and ``emb_<id>_<dim>/`` folder."""
    keep = None if wanted is None else {str(w) for w in wanted}
    sources: dict[str, tuple[Path, int]] = {}
    for entry in sorted(directory.iterdir()):
        match = _VECTOR_ENTRY.fullmatch(entry.name)
        if match is None or (match.group(3) is not None) != entry.is_file():
            continue
        feature, dim = match.group(1), int(match.group(2))
        if keep is not None and feature not in keep:
            continue
        if dim < 1:
            raise TaacFormatError(entry, None, "name", "vector dimension in the name must be >= 1")
        if feature in sources:
            raise TaacFormatError(
                entry, None, "name", f"feature {feature} also has {sources[feature][0].name}"
            )
        sources[feature] = (entry, dim)
    return dict(sorted(sources.items(), key=lambda kv: _feature_sort_key(kv[0])))


def _read_vectors(
    directory: Path,
    cid_rows: dict[int | str, int],
    num_rows: int,
    wanted: Iterable[str] | None,
    progress: bool,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Multimodal vectors keyed by creative_id, placed at ``cid_rows[creative_id]``; others are skipped."""
    if not directory.is_dir():
        logger.warning("%s: no multimodal vectors (folder missing)", directory)
        return {}
    vectors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for feature, (source, dim) in _scan_vector_sources(directory, wanted).items():
        matrix = np.zeros((num_rows, dim), np.float32)
        present = np.zeros(num_rows, bool)
        if source.is_file():
            unknown = _fill_vectors_from_pickle(source, dim, cid_rows, matrix, present)
        else:
            unknown = _fill_vectors_from_parts(source, dim, cid_rows, matrix, present, progress)
        logger.info(
            "%s: %d of %d rows have a vector; %d vectors name other creatives",
            source.name,
            int(present.sum()),
            num_rows,
            unknown,
        )
        vectors[feature] = (matrix, present)
    return vectors


def _vector(value: Any, dim: int, path: Path, line: int | None, field: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:  # ragged nesting
        raise TaacFormatError(path, line, field, f"expected a list of {dim} numbers ({exc})") from exc
    if array.ndim != 1 or array.dtype.kind not in "iuf":
        raise TaacFormatError(path, line, field, f"expected a list of {dim} numbers, got {_describe(value)}")
    if array.shape[0] != dim:
        raise TaacFormatError(
            path, line, field, f"expected {dim} values (the dim in the name), got {array.shape[0]}"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        vector = array.astype(np.float32)
    if not np.isfinite(vector).all():
        raise TaacFormatError(path, line, field, "NaN or infinite value (or too large for float32)")
    return vector


def _fill_vectors_from_pickle(
    path: Path, dim: int, cid_rows: dict[int | str, int], matrix: np.ndarray, present: np.ndarray
) -> int:
    table = safe_load_pickle(path, numeric_arrays=True)  # vectors may be NumPy arrays
    if type(table) is not dict:
        raise TaacFormatError(
            path, None, "file", f"expected a pickled dict creative_id -> vector, got {_describe(table)}"
        )
    unknown = 0
    for raw, value in table.items():
        cid = _norm_cid(raw)
        if cid is None:
            raise TaacFormatError(path, None, f"key {raw!r}", "creative_id must be an int or a str")
        vector = _vector(value, dim, path, None, f"creative_id {raw!r}")
        row = cid_rows.get(cid)
        if row is None:
            unknown += 1
            continue
        matrix[row] = vector
        present[row] = True
    return unknown


def _fill_vectors_from_parts(
    folder: Path,
    dim: int,
    cid_rows: dict[int | str, int],
    matrix: np.ndarray,
    present: np.ndarray,
    progress: bool,
) -> int:
    # Part files may or may not end in .json (uncertain in the format note), so every visible file is a
    # part; names starting with '.' or '_' are Spark/Hadoop markers and checksums (_SUCCESS, .crc).
    parts = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith((".", "_")))
    unknown = 0
    total = sum(p.stat().st_size for p in parts)
    with tqdm(
        total=total, unit="B", unit_scale=True, desc=folder.name, disable=not progress, leave=False
    ) as bar:
        for part in parts:
            with open(part, "rb") as f:
                for line_no, raw in enumerate(f, 1):
                    bar.update(len(raw))
                    if not raw.strip():
                        continue
                    obj = _json_line(part, line_no, raw)
                    if type(obj) is not dict or "anonymous_cid" not in obj or "emb" not in obj:
                        raise TaacFormatError(
                            part,
                            line_no,
                            "line",
                            'expected {"anonymous_cid": <creative_id>, "emb": [floats]}',
                        )
                    cid = _norm_cid(obj["anonymous_cid"])
                    if cid is None:
                        raise TaacFormatError(
                            part,
                            line_no,
                            "anonymous_cid",
                            f"expected an int or str, got {_describe(obj['anonymous_cid'])}",
                        )
                    vector = _vector(obj["emb"], dim, part, line_no, "emb")
                    row = cid_rows.get(cid)
                    if row is None:
                        unknown += 1
                        continue
                    matrix[row] = vector
                    present[row] = True
    return unknown


def _map_predict_items(file_items: np.ndarray, train: TaacData) -> tuple[np.ndarray, np.ndarray]:
    """(training re-id or 0, creative_id) per event of an inference file."""
    num_items = train.num_items
    known = file_items <= num_items
    items = np.where(known, file_items, 0)
    train_raw = train.interactions.item_ids
    if train_raw.dtype == object:
        raw = _object_array(file_items.tolist())
        raw[known] = train_raw[file_items[known]]
    else:
        raw = np.where(known, train_raw[np.where(known, file_items, 0)], file_items)
    unseen = np.flatnonzero(~known)
    if unseen.size:
        lookup = train.item_index
        items[unseen] = [lookup.get(cid, 0) for cid in file_items[unseen].tolist()]
    return items, raw


def _read_candidates(
    directory: Path, train: TaacData, wanted: Iterable[str] | None, progress: bool
) -> TaacCandidates:
    path = _required_file(directory / PREDICT_SET_FILE)
    creative_ids: list[Any] = []
    retrieval_ids: list[Any] = []
    columns = _FeatureColumns(path, lenient=True)
    with open(path, "rb") as f, _progress_bar(path, progress) as bar:
        for line_no, raw in enumerate(f, 1):
            bar.update(len(raw))
            if not raw.strip():
                continue
            obj = _json_line(path, line_no, raw)
            if type(obj) is not dict or "creative_id" not in obj or "retrieval_id" not in obj:
                raise TaacFormatError(
                    path,
                    line_no,
                    "line",
                    'expected {"creative_id": ..., "retrieval_id": ..., "features": {...}}',
                )
            cid = _norm_cid(obj["creative_id"])
            if cid is None:
                raise TaacFormatError(
                    path,
                    line_no,
                    "creative_id",
                    f"expected an int or str, got {_describe(obj['creative_id'])}",
                )
            retrieval = obj["retrieval_id"]
            if _norm_cid(retrieval) is None:
                raise TaacFormatError(
                    path, line_no, "retrieval_id", f"expected an int or str, got {_describe(retrieval)}"
                )
            features = obj.get("features")
            if features is not None:
                if type(features) is not dict:
                    raise TaacFormatError(
                        path,
                        line_no,
                        "features",
                        f"expected a dict of feature id -> value, got {_describe(features)}",
                    )
                columns.add(len(creative_ids), features, line_no, "features")
            creative_ids.append(cid)
            retrieval_ids.append(retrieval)
    count = len(creative_ids)
    items = np.fromiter((train.item_index.get(cid, 0) for cid in creative_ids), np.int64, count)
    sparse, arrays, _ = columns.finish(count, ())

    vector_dir = directory / VECTOR_DIR
    if vector_dir.is_dir():
        # Duplicated creatives share one row while reading, then fan out.
        unique: dict[int | str, int] = {}
        slots = np.fromiter((unique.setdefault(cid, len(unique)) for cid in creative_ids), np.int64, count)
        vectors = {
            feature: (matrix[slots], present[slots])
            for feature, (matrix, present) in _read_vectors(
                vector_dir, unique, len(unique), wanted, progress
            ).items()
        }
    else:
        keep = None if wanted is None else {str(w) for w in wanted}
        vectors = {
            feature: (matrix[items], present[items])
            for feature, (matrix, present) in train.item_vectors.items()
            if keep is None or feature in keep
        }
    return TaacCandidates(
        creative_ids=_id_array(creative_ids),
        retrieval_ids=_id_array(retrieval_ids),
        items=items,
        sparse=sparse,
        array=arrays,
        vectors=vectors,
    )


# ----------------------------------------------------------------------------------------------------
# Synthetic data in the TAAC layout
# ----------------------------------------------------------------------------------------------------

# Value counts from TencentGR-1M (111 is not listed there; 1,000 stands in); capped by the item count.
_SYNTH_ITEM_SIZES = {
    "100": 6, "101": 51, "102": 90_709, "111": 1_000, "112": 30, "114": 20, "115": 691, "116": 18,
    "117": 497, "118": 1_426, "119": 4_191, "120": 3_392, "121": 2_135_891, "122": 90_919,
}  # fmt: skip
_SYNTH_CLUSTER_FEATURES = ("101", "112", "117", "118")  # follow the item's cluster: features carry signal
_SYNTH_GROUP_FEATURES = ("102", "121", "122")  # advertiser-like: a few neighbouring items share a value
_SYNTH_USER_SIZES = {"103": 86, "104": 2, "105": 7, "109": 3, "106": 14, "107": 19, "108": 4, "110": 2}
_SYNTH_DRIFT = 0.08  # chance per step that a user moves on to the next cluster
_SYNTH_FOLLOW = 0.5  # chance that the next item is the previous item's successor in its cluster
_SYNTH_NOISE = 0.08  # chance of a globally popular item instead
_SYNTH_MISSING_FEATURE = 0.03
_SYNTH_NEW_IN_HISTORY = 0.03  # evaluation events replaced by an item unseen in training
_SYNTH_NEW_TARGET = 0.05


@dataclass(frozen=True)
class TaacSyntheticDirs:
    """Where ``write_taac_synthetic`` put its output.

    Attributes:
        train: the training directory (``read_taac``).
        eval: the evaluation directory (``read_taac_predict``, ``read_taac_targets``).
    """

    train: Path
    eval: Path


@dataclass
class _SynthWorld:
    """Latent structure of the synthetic catalogue: clusters, a successor chain per cluster, popularity."""

    num_clusters: int
    cluster: np.ndarray  # (num_items + num_new + 1,) cluster of every synthetic item; [0] unused
    successor: np.ndarray  # (num_items + 1,) next item in the same cluster's chain
    grouped: np.ndarray  # training items ordered by cluster
    cdf_keys: np.ndarray  # cluster + within-cluster popularity CDF, ascending along ``grouped``
    popularity: np.ndarray  # (num_items,) probability of items 1..num_items

    def sample_in(self, rng: np.random.Generator, clusters: np.ndarray) -> np.ndarray:
        at = np.searchsorted(self.cdf_keys, clusters + rng.random(len(clusters)), side="right")
        return self.grouped[np.minimum(at, len(self.grouped) - 1)]

    def step(
        self, rng: np.random.Generator, previous: np.ndarray, clusters: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        n = len(previous)
        drift = rng.random(n) < _SYNTH_DRIFT
        clusters = np.where(drift, (clusters + 1) % self.num_clusters, clusters)
        draw = rng.random(n)
        following = (draw < _SYNTH_FOLLOW) & ~drift
        chosen = np.where(following, self.successor[previous], self.sample_in(rng, clusters))
        noisy = draw >= 1.0 - _SYNTH_NOISE
        if noisy.any():
            chosen[noisy] = 1 + rng.choice(len(self.popularity), size=int(noisy.sum()), p=self.popularity)
        return chosen, clusters

    def simulate(
        self, rng: np.random.Generator, clusters: np.ndarray, steps: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(items, cluster states), both (n, steps), for n users starting in ``clusters``."""
        items = np.zeros((len(clusters), steps), np.int64)
        states = np.zeros((len(clusters), steps), np.int64)
        items[:, 0], states[:, 0] = self.sample_in(rng, clusters), clusters
        for t in range(1, steps):
            items[:, t], states[:, t] = self.step(rng, items[:, t - 1], states[:, t - 1])
        return items, states


def write_taac_synthetic(
    directory: str | Path,
    *,
    num_users: int,
    num_items: int,
    seed: int = 0,
    mean_length: int = 20,
    max_length: int = 100,
    num_eval_users: int | None = None,
    unseen_user_fraction: float = 0.2,
    num_new_items: int | None = None,
    candidate_fraction: float = 0.5,
    click_rate: float = 0.1,
    vector_coverage: float = 0.9,
    vector_dims: dict[str, int] | None = None,
    progress: bool = False,
) -> TaacSyntheticDirs:
    """Write a small seeded dataset in the TAAC layout, with a learnable sequential signal.

    Items fall into clusters; each cluster chains its items in a fixed successor order. A user starts in
    a home cluster, now and then drifts to the next cluster, and mostly picks either the successor of
    the previous item or a popular item of the current cluster (popularity is Zipf-like), sometimes a
    globally popular item. Item features, user feature 103 and the multimodal vectors follow the
    clusters, so they are informative. About ``click_rate`` of the events are clicks; each line holds
    one user-profile record at a random position; vectors cover about ``vector_coverage`` of items.

    The evaluation directory holds ``predict_seq.jsonl`` (training users by re-id with their training
    history, plus unseen users as raw strings; a few events are items unseen in training, written as
    their raw creative_id with string feature values), ``predict_set.jsonl`` (every target, a sample of
    training items and every unseen item), ``predict_targets.jsonl`` (see the module docstring),
    ``indexer.pkl`` and ``creative_emb/``. Each target is the next step of the user's process, a click.

    Args:
        directory: created if needed; output goes to ``directory/train`` and ``directory/eval``.
        num_users: training users (>= 1).
        num_items: training items (>= 2).
        seed: seed of everything random.
        mean_length: mean item records per training sequence (1..max_length).
        max_length: most item records per sequence (the real data has 100).
        num_eval_users: test users; default ``max(2, num_users // 10)``.
        unseen_user_fraction: share of test users unseen in training.
        num_new_items: items unseen in training; default ``max(1, num_items // 20)``.
        candidate_fraction: share of training items among the candidates (besides targets and new items).
        click_rate: share of events that are clicks (the rest are exposures).
        vector_coverage: share of items with a vector, per multimodal feature.
        vector_dims: multimodal feature id -> dim; default ``{"81": 32, "82": 16}``. Feature 81 is
            written as a pickle, the others as folders of JSON-lines parts.
        progress: show tqdm progress while writing.

    Returns:
        The two directories.

    Raises:
        ValueError: an argument is out of range.
    """
    dims = {"81": 32, "82": 16} if vector_dims is None else {str(k): int(v) for k, v in vector_dims.items()}
    num_eval_users = max(2, num_users // 10) if num_eval_users is None else num_eval_users
    num_new_items = max(1, num_items // 20) if num_new_items is None else num_new_items
    _check_synthetic_args(
        num_users, num_items, mean_length, max_length, num_eval_users, unseen_user_fraction, num_new_items,
        candidate_fraction, click_rate, vector_coverage, dims,
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    root = Path(directory)
    train_dir, eval_dir = root / "train", root / "eval"
    train_dir.mkdir(parents=True, exist_ok=True)
    eval_dir.mkdir(parents=True, exist_ok=True)

    total_items = num_items + num_new_items  # synthetic ids 1..num_items train, then the new ones
    world = _synth_world(rng, num_items, num_new_items)
    creative_ids = np.zeros(total_items + 1, np.int64)
    # Every creative_id exceeds num_items, as unseen ones must in predict_seq.jsonl.
    creative_ids[1:] = num_items + 1 + rng.choice(20 * total_items, size=total_items, replace=False)
    item_sizes = {f: min(size, max(2, num_items // 2)) for f, size in _SYNTH_ITEM_SIZES.items()}
    item_features = _synth_item_features(rng, world.cluster, item_sizes, first_new=num_items + 1)
    item_json = [""] + [json.dumps(features) for features in item_features[1:]]
    users = _synth_users(rng, world, num_users, mean_length, max_length, click_rate, unseen=False)

    # Training: user u (0-based) has re-id u + 1; lines follow a shuffled order, so row != re-id - 1.
    train_tokens = [""] + [f"{i}, null, {item_json[i]}" for i in range(1, num_items + 1)]
    line_users = rng.permutation(num_users)
    profile_at = rng.integers(0, users.lengths + 1)

    def train_lines() -> Iterator[str]:
        for u in tqdm(line_users.tolist(), desc=SEQ_FILE, disable=not progress, leave=False):
            n = int(users.lengths[u])
            yield _synth_line(
                str(u + 1),
                json.dumps(users.profiles[u]),
                int(profile_at[u]),
                [train_tokens[i] for i in users.items[u, :n].tolist()],
                users.actions[u, :n].tolist(),
                users.stamps[u, :n].tolist(),
            )

    _write_lines(train_dir / SEQ_FILE, train_dir / SEQ_OFFSETS_FILE, train_lines())
    with open(train_dir / ITEM_FEATURES_FILE, "w", encoding="utf-8") as f:
        # One member a line: the reader has to cope with this as well as with one-line files.
        f.write("{\n" + ",\n".join(f'"{i}": {item_json[i]}' for i in range(1, num_items + 1)) + "\n}\n")
    raw_users = [f"user_{x}" for x in rng.choice(10 * num_users, size=num_users, replace=False).tolist()]
    indexer = {
        "u": {raw: u + 1 for u, raw in enumerate(raw_users)},
        "i": {int(creative_ids[i]): i for i in range(1, num_items + 1)},
        "f": {
            feature: {f"{feature}:{v}": v for v in range(1, size + 1)}
            for feature, size in {**item_sizes, **_SYNTH_USER_SIZES}.items()
        },
    }
    vectors = _synth_vectors(rng, world.cluster, dims, vector_coverage)
    for target_dir in (train_dir, eval_dir):
        with open(target_dir / INDEXER_FILE, "wb") as f:
            pickle.dump(indexer, f, protocol=4)
        _write_synth_vectors(target_dir / VECTOR_DIR, creative_ids, vectors)

    num_unseen = min(num_eval_users, int(round(num_eval_users * unseen_user_fraction)))
    seen = rng.choice(num_users, size=min(num_users, num_eval_users - num_unseen), replace=False)
    unseen = _synth_users(rng, world, num_unseen, mean_length, max_length, click_rate, unseen=True)
    _write_synth_eval(
        rng,
        eval_dir,
        world,
        creative_ids,
        item_features,
        users,
        seen,
        unseen,
        num_items,
        candidate_fraction,
        progress,
    )
    logger.info("wrote synthetic TAAC data to %s (%d users, %d items)", root, num_users, num_items)
    return TaacSyntheticDirs(train=train_dir, eval=eval_dir)


def _check_synthetic_args(
    num_users: int,
    num_items: int,
    mean_length: int,
    max_length: int,
    num_eval_users: int,
    unseen_user_fraction: float,
    num_new_items: int,
    candidate_fraction: float,
    click_rate: float,
    vector_coverage: float,
    dims: dict[str, int],
) -> None:
    if num_users < 1:
        raise ValueError(f"num_users must be >= 1, got {num_users}")
    if num_items < 2:
        raise ValueError(f"num_items must be >= 2, got {num_items}")
    if not 1 <= mean_length <= max_length:
        raise ValueError(f"need 1 <= mean_length <= max_length, got {mean_length} and {max_length}")
    if num_eval_users < 1 or num_new_items < 1:
        raise ValueError(
            f"num_eval_users and num_new_items must be >= 1, got {num_eval_users}, {num_new_items}"
        )
    for name, value in (
        ("unseen_user_fraction", unseen_user_fraction),
        ("candidate_fraction", candidate_fraction),
        ("click_rate", click_rate),
        ("vector_coverage", vector_coverage),
    ):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
    for feature, dim in dims.items():
        if not (feature.isascii() and feature.isdigit()) or dim < 1:
            raise ValueError(f"vector_dims: feature {feature!r} -> {dim}: need a numeric id and dim >= 1")


def _synth_world(rng: np.random.Generator, num_items: int, num_new_items: int) -> _SynthWorld:
    num_clusters = max(2, min(num_items // 10, round(math.sqrt(num_items))))
    cluster = np.zeros(num_items + num_new_items + 1, np.int64)
    # A permutation of i % K gives every cluster at least one item.
    cluster[1 : num_items + 1] = rng.permutation(np.arange(num_items) % num_clusters)
    cluster[num_items + 1 :] = rng.integers(num_clusters, size=num_new_items)
    grouped = np.argsort(cluster[1 : num_items + 1], kind="stable") + 1
    counts = np.bincount(cluster[grouped], minlength=num_clusters)
    starts = np.cumsum(counts) - counts
    position = np.arange(num_items) - starts[cluster[grouped]]
    successor = np.zeros(num_items + 1, np.int64)
    successor[grouped] = grouped[starts[cluster[grouped]] + (position + 1) % counts[cluster[grouped]]]

    weights = 1.0 / (rng.permutation(num_items) + 1.0) ** 0.9
    popularity = weights / weights.sum()
    grouped_weights = weights[grouped - 1]
    cumulative = np.cumsum(grouped_weights)
    before = (cumulative - grouped_weights)[starts]  # weight of all earlier clusters, per cluster
    totals = np.add.reduceat(grouped_weights, starts)
    cdf = (cumulative - before[cluster[grouped]]) / totals[cluster[grouped]]
    cdf[starts + counts - 1] = 1.0  # exact 1 so rounding never spills into the next cluster
    return _SynthWorld(
        num_clusters=num_clusters,
        cluster=cluster,
        successor=successor,
        grouped=grouped,
        cdf_keys=cluster[grouped] + cdf,
        popularity=popularity,
    )


def _synth_item_features(
    rng: np.random.Generator, cluster: np.ndarray, sizes: dict[str, int], first_new: int
) -> list[dict[str, Any]]:
    """Feature dict per synthetic item ([0] unused); unseen items get string values for group features."""
    count = len(cluster)
    ids = np.arange(count)
    columns: dict[str, np.ndarray] = {}
    for feature, size in sizes.items():
        if feature in _SYNTH_CLUSTER_FEATURES:
            values = 1 + (cluster * (int(feature) % 7 + 1)) % size
            noisy = rng.random(count) < 0.1
            values[noisy] = rng.integers(1, size + 1, size=int(noisy.sum()))
        elif feature in _SYNTH_GROUP_FEATURES:
            values = 1 + (ids // 3) % size
        else:
            values = rng.integers(1, size + 1, size=count)
        columns[feature] = values.tolist()
    present = {feature: (rng.random(count) >= _SYNTH_MISSING_FEATURE).tolist() for feature in sizes}
    unseen_value = {feature: (rng.random(count) < 0.5).tolist() for feature in _SYNTH_GROUP_FEATURES}
    features: list[dict[str, Any]] = [{}]
    for i in range(1, count):
        item: dict[str, Any] = {}
        for feature in sizes:
            if not present[feature][i]:
                continue
            if i >= first_new and feature in unseen_value and unseen_value[feature][i]:
                item[feature] = f"new_{feature}_{i}"
            else:
                item[feature] = columns[feature][i]
        features.append(item)
    return features


@dataclass
class _SynthUsers:
    """Simulated users: profiles and (count, steps) item, cluster, action and timestamp arrays."""

    profiles: list[dict[str, Any]]
    lengths: np.ndarray  # (count,) item records written for each user
    items: np.ndarray
    states: np.ndarray
    actions: np.ndarray
    stamps: np.ndarray


def _synth_users(
    rng: np.random.Generator,
    world: _SynthWorld,
    count: int,
    mean_length: int,
    max_length: int,
    click_rate: float,
    *,
    unseen: bool,
) -> _SynthUsers:
    """Simulate ``count`` users; unseen (test-only) users get one extra step, their target."""
    homes = rng.integers(world.num_clusters, size=count)
    lengths = np.minimum(max_length, 1 + rng.poisson(mean_length - 1, size=count))
    steps = (int(lengths.max()) if count else 1) + int(unseen)
    items, states = world.simulate(rng, homes, steps)
    start = 1_745_000_000 if unseen else 1_740_000_000
    return _SynthUsers(
        profiles=_synth_user_features(rng, homes, unseen=unseen),
        lengths=lengths,
        items=items,
        states=states,
        actions=(rng.random((count, steps)) < click_rate).astype(np.int64),
        stamps=rng.integers(start, start + 5_000_000, size=(count, 1))
        + np.cumsum(rng.integers(5, 4_000, size=(count, steps)), axis=1),
    )


def _synth_user_features(
    rng: np.random.Generator, homes: np.ndarray, *, unseen: bool
) -> list[dict[str, Any]]:
    """Profile features per user; 103 and 107 follow the home cluster. Unseen users get some string values."""
    sizes = _SYNTH_USER_SIZES
    count = len(homes)
    draws = {f: rng.integers(1, sizes[f] + 1, size=(count, 3)).tolist() for f in sizes}
    list_lengths = rng.integers(1, 4, size=(count, len(USER_ARRAY_FEATURES))).tolist()
    unseen_103 = (rng.random(count) < 0.5).tolist()
    unseen_106 = (rng.random(count) < 0.3).tolist()
    homes_list = homes.tolist()
    users: list[dict[str, Any]] = []
    for u in range(count):
        home = homes_list[u]
        profile: dict[str, Any] = {
            "103": f"new_103_{u}" if unseen and unseen_103[u] else 1 + home % sizes["103"],
            "104": draws["104"][u][0],
            "105": draws["105"][u][0],
            "109": draws["109"][u][0],
        }
        for j, feature in enumerate(USER_ARRAY_FEATURES):
            values = sorted(set(draws[feature][u][: list_lengths[u][j]]))
            if feature == "107":
                values = [1 + home % sizes["107"]] + values[:1]
            if feature == "106" and unseen and unseen_106[u]:
                values = values + [f"new_106_{u}"]
            profile[feature] = values
        users.append(profile)
    return users


def _synth_vectors(
    rng: np.random.Generator, cluster: np.ndarray, dims: dict[str, int], coverage: float
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """feature -> (rounded vectors (count, dim), present mask); vectors lie near a per-cluster centre."""
    count = len(cluster)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for feature, dim in dims.items():
        centres = rng.normal(size=(int(cluster.max()) + 1, dim))
        vectors = np.round(centres[cluster] + 0.5 * rng.normal(size=(count, dim)), 5).astype(np.float32)
        present = rng.random(count) < coverage
        present[0] = False
        out[feature] = (vectors, present)
    return out


def _write_synth_vectors(
    directory: Path, creative_ids: np.ndarray, vectors: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for feature, (matrix, present) in vectors.items():
        rows = np.flatnonzero(present)
        dim = matrix.shape[1]
        if feature == "81":
            table = {int(creative_ids[i]): matrix[i].tolist() for i in rows.tolist()}
            with open(directory / f"emb_{feature}_{dim}.pkl", "wb") as f:
                pickle.dump(table, f, protocol=4)
            continue
        folder = directory / f"emb_{feature}_{dim}"
        folder.mkdir(exist_ok=True)
        for part, chunk in enumerate(np.array_split(rows, 2)):
            with open(folder / f"part-{part:05d}.json", "w", encoding="utf-8") as f:
                for i in chunk.tolist():
                    f.write(
                        json.dumps({"anonymous_cid": int(creative_ids[i]), "emb": matrix[i].tolist()}) + "\n"
                    )


def _synth_line(
    user: str, profile: str, profile_at: int, tokens: list[str], actions: list[int], stamps: list[int]
) -> str:
    """One ``seq.jsonl`` line; ``tokens`` hold each event's ``item_id, null, item_feature`` text."""
    records = [f"[{user}, {token}, {a}, {t}]" for token, a, t in zip(tokens, actions, stamps, strict=True)]
    stamp = stamps[min(profile_at, len(stamps) - 1)] if stamps else "null"
    records.insert(profile_at, f"[{user}, null, {profile}, null, null, {stamp}]")
    return "[" + ", ".join(records) + "]\n"


def _write_lines(path: Path, offsets_path: Path, lines: Iterable[str]) -> None:
    offsets: list[int] = []
    position = 0
    with open(path, "wb") as f:
        for line in lines:
            data = line.encode("utf-8")
            offsets.append(position)
            f.write(data)
            position += len(data)
    with open(offsets_path, "wb") as f:
        pickle.dump(offsets, f, protocol=4)


def _write_synth_eval(
    rng: np.random.Generator,
    eval_dir: Path,
    world: _SynthWorld,
    creative_ids: np.ndarray,
    item_features: list[dict[str, Any]],
    train: _SynthUsers,
    seen: np.ndarray,
    unseen: _SynthUsers,
    num_items: int,
    candidate_fraction: float,
    progress: bool,
) -> None:
    """Test users ``seen`` (training users, by index) then ``unseen``; their targets; the candidates."""
    total_items = len(creative_ids) - 1
    num_unseen = len(unseen.lengths)
    # Seen users keep their training history; the target is the next step of their process.
    last = train.lengths[seen] - 1
    seen_targets, _ = world.step(rng, train.items[seen, last], train.states[seen, last])
    # Unseen users: the step after the written history is the target.
    targets = np.concatenate([seen_targets, unseen.items[np.arange(num_unseen), unseen.lengths]])
    new_target = rng.random(len(targets)) < _SYNTH_NEW_TARGET
    targets[new_target] = rng.integers(num_items + 1, total_items + 1, size=int(new_target.sum()))

    # Items unseen in training keep their raw creative_id (> num_items) and may carry string values.
    tokens = [""] + [
        f"{i if i <= num_items else int(creative_ids[i])}, null, {json.dumps(item_features[i])}"
        for i in range(1, total_items + 1)
    ]
    user_tokens: list[str] = []

    def eval_lines() -> Iterator[str]:
        for row in tqdm(range(len(targets)), desc=PREDICT_SEQ_FILE, disable=not progress, leave=False):
            if row < len(seen):
                users, u = train, int(seen[row])
                user = str(u + 1)
            else:
                users, u = unseen, row - len(seen)
                user = json.dumps(f"new_user_{u}")
            n = int(users.lengths[u])
            history = users.items[u, :n].copy()
            replaced = rng.random(n) < _SYNTH_NEW_IN_HISTORY
            history[replaced] = rng.integers(num_items + 1, total_items + 1, size=int(replaced.sum()))
            user_tokens.append(user)
            yield _synth_line(
                user,
                json.dumps(users.profiles[u]),
                int(rng.integers(0, n + 1)),
                [tokens[i] for i in history.tolist()],
                users.actions[u, :n].tolist(),
                users.stamps[u, :n].tolist(),
            )

    _write_lines(eval_dir / PREDICT_SEQ_FILE, eval_dir / PREDICT_SEQ_OFFSETS_FILE, eval_lines())
    with open(eval_dir / PREDICT_TARGETS_FILE, "w", encoding="utf-8") as f:
        for user, target in zip(user_tokens, targets.tolist(), strict=True):
            f.write(f'{{"user_id": {user}, "creative_id": {int(creative_ids[target])}}}\n')

    sampled = np.flatnonzero(rng.random(num_items) < candidate_fraction) + 1
    pool = np.unique(np.concatenate([targets, sampled, np.arange(num_items + 1, total_items + 1)]))
    pool = pool[rng.permutation(len(pool))]
    retrieval_ids = rng.permutation(len(pool)) + 1
    with open(eval_dir / PREDICT_SET_FILE, "w", encoding="utf-8") as f:
        for i, retrieval in zip(pool.tolist(), retrieval_ids.tolist(), strict=True):
            candidate = {
                "creative_id": int(creative_ids[i]),
                "retrieval_id": retrieval,
                "features": item_features[i],
            }
            f.write(json.dumps(candidate) + "\n")
