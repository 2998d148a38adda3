"""Read a TAAC evaluation directory: the test users' histories, the candidates and (synthetic data) the targets."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seqrec.data.taac.columns import FeatureColumns
from seqrec.data.taac.layout import (
    INT64_MAX,
    PREDICT_SEQ_FILE,
    PREDICT_SET_FILE,
    PREDICT_TARGETS_FILE,
    USER_ARRAY_FEATURES,
    VECTOR_DIR,
    TaacFormatError,
    describe,
    existing_dir,
    id_array,
    json_lines,
    norm_cid,
    object_array,
    progress_bar,
    required_file,
)
from seqrec.data.taac.reader import TaacData
from seqrec.data.taac.seq import read_seq, time_order
from seqrec.data.taac.vectors import read_vectors


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
    directory = existing_dir(directory, "TAAC evaluation directory")
    seq_path = required_file(directory / PREDICT_SEQ_FILE)
    seq = read_seq(
        seq_path, num_items=INT64_MAX, predict=True, progress=progress, validate_event_features=True
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
        order = time_order(seq.offsets, seq.timestamps)
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
    path = required_file(Path(directory) / PREDICT_TARGETS_FILE)
    users: list[Any] = []
    targets: list[Any] = []
    for line_no, obj in json_lines(path):
        if type(obj) is not dict or "user_id" not in obj or "creative_id" not in obj:
            raise TaacFormatError(path, line_no, "line", 'expected {"user_id": ..., "creative_id": ...}')
        for key in ("user_id", "creative_id"):
            if norm_cid(obj[key]) is None:
                raise TaacFormatError(
                    path, line_no, key, f"expected an int or str, got {describe(obj[key])}"
                )
        users.append(obj["user_id"])
        targets.append(obj["creative_id"])
    return object_array(users), object_array(targets)


def _map_predict_items(file_items: np.ndarray, train: TaacData) -> tuple[np.ndarray, np.ndarray]:
    """(training re-id or 0, creative_id) per event of an inference file."""
    num_items = train.num_items
    known = file_items <= num_items
    items = np.where(known, file_items, 0)
    train_raw = train.interactions.item_ids
    if train_raw.dtype == object:
        raw = object_array(file_items.tolist())
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
    path = required_file(directory / PREDICT_SET_FILE)
    creative_ids: list[Any] = []
    retrieval_ids: list[Any] = []
    columns = FeatureColumns(path, lenient=True)
    with progress_bar(path, progress) as bar:
        for line_no, obj in json_lines(path, bar):
            if type(obj) is not dict or "creative_id" not in obj or "retrieval_id" not in obj:
                raise TaacFormatError(
                    path,
                    line_no,
                    "line",
                    'expected {"creative_id": ..., "retrieval_id": ..., "features": {...}}',
                )
            cid = norm_cid(obj["creative_id"])
            if cid is None:
                raise TaacFormatError(
                    path,
                    line_no,
                    "creative_id",
                    f"expected an int or str, got {describe(obj['creative_id'])}",
                )
            retrieval = obj["retrieval_id"]
            if norm_cid(retrieval) is None:
                raise TaacFormatError(
                    path, line_no, "retrieval_id", f"expected an int or str, got {describe(retrieval)}"
                )
            features = obj.get("features")
            if features is not None:
                if type(features) is not dict:
                    raise TaacFormatError(
                        path,
                        line_no,
                        "features",
                        f"expected a dict of feature id -> value, got {describe(features)}",
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
            for feature, (matrix, present) in read_vectors(
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
        creative_ids=id_array(creative_ids),
        retrieval_ids=id_array(retrieval_ids),
        items=items,
        sparse=sparse,
        array=arrays,
        vectors=vectors,
    )
