"""The ``seq.jsonl`` layout (training ``seq.jsonl`` and ``predict_seq.jsonl``): one user a line, every record checked."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

from seqrec.data.taac.columns import FLUSH_ROWS, Chunks, FeatureColumns
from seqrec.data.taac.layout import (
    INDEXER_FILE,
    INT64_MAX,
    INT64_MIN,
    READ_BLOCK,
    TaacFormatError,
    describe,
    json_line,
    progress_bar,
)

_ACTION_MAX = 2  # 0 exposure, 1 click, 2 conversion
_FLUSH_EVENTS = 1 << 20  # events buffered as Python ints before they become a NumPy chunk


def _bad_feature_key(features: dict) -> str | None:
    """The first key whose value is neither a value id nor a list of them (training files only)."""
    for key, value in features.items():
        if type(value) is int:
            if not 0 <= value <= INT64_MAX:
                return key
        elif type(value) is list:
            for x in value:
                if type(x) is not int or not 0 <= x <= INT64_MAX:
                    return key
        else:
            return key
    return None


@dataclass
class SeqColumns:
    users: np.ndarray  # user id per line as written (int64 in training, object at inference)
    line_numbers: np.ndarray
    offsets: np.ndarray
    items: np.ndarray  # item_id per event as written
    actions: np.ndarray
    timestamps: np.ndarray
    user_features: FeatureColumns
    event_features: FeatureColumns | None


def read_seq(
    path: Path, *, num_items: int, predict: bool, progress: bool, validate_event_features: bool
) -> SeqColumns:
    """Stream a ``seq.jsonl``-layout file into columns, validating every record.

    In training files user ids are re-ids (ints) and feature values ints; at inference (``predict``)
    user ids may be raw strings, item ids raw creative_ids and feature values strings, and each event's
    item features are kept.
    """
    parser = _SeqParser(
        path, num_items=num_items, predict=predict, validate_event_features=validate_event_features
    )
    unread_bytes = 0
    with open(path, "rb") as f, progress_bar(path, progress) as bar:
        for line_no, raw in enumerate(f, 1):
            unread_bytes += len(raw)
            if not raw.strip():
                continue
            parser.add_line(line_no, json_line(path, line_no, raw))
            if unread_bytes >= READ_BLOCK:
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
        self.users = Chunks(object if predict else np.int64)
        self.line_numbers = Chunks(np.int64)
        self.lengths = Chunks(np.int64)
        self.items = Chunks(np.int64)
        self.actions = Chunks(np.int8)
        self.stamps = Chunks(np.int64)
        self.user_features = FeatureColumns(path, lenient=predict)
        self.event_features = FeatureColumns(path, lenient=True) if predict else None
        self.num_events = 0

    def add_line(self, line_no: int, records: Any) -> None:
        path = self.path
        if type(records) is not list or not records:
            raise TaacFormatError(
                path, line_no, "line", f"expected a non-empty JSON list of records, got {describe(records)}"
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
                    f"timestamp], got {describe(record)}",
                )
            user, item, user_feature, item_feature, action, stamp = record
            if k == 0:
                if type(user) not in self.user_types or (type(user) is int and not 0 <= user <= INT64_MAX):
                    expected = "an int re-id or a raw string" if self.predict else "a non-negative int re-id"
                    raise TaacFormatError(
                        path, line_no, f"record {k} user_id", f"expected {expected}, got {describe(user)}"
                    )
                line_user, user_type = user, type(user)
            elif type(user) is not user_type or user != line_user:
                raise TaacFormatError(
                    path,
                    line_no,
                    f"record {k} user_id",
                    f"{describe(user)} differs from the line's first record ({line_user!r}); a line holds one user",
                )
            if user_feature is None:  # an item record
                if type(item) is not int or not 1 <= item <= num_items:
                    limit = (
                        "a positive int" if self.predict else f"1..{num_items} (the re-ids in {INDEXER_FILE})"
                    )
                    raise TaacFormatError(
                        path, line_no, f"record {k} item_id", f"expected {limit}, got {describe(item)}"
                    )
                if type(action) is not int or not 0 <= action <= _ACTION_MAX:
                    raise TaacFormatError(
                        path,
                        line_no,
                        f"record {k} action_type",
                        f"expected 0 (exposure), 1 (click) or 2 (conversion), got {describe(action)}",
                    )
                if type(stamp) is not int or not INT64_MIN <= stamp <= INT64_MAX:
                    raise TaacFormatError(
                        path,
                        line_no,
                        f"record {k} timestamp",
                        f"expected int seconds, got {describe(stamp)}",
                    )
                if item_feature is not None:
                    if type(item_feature) is not dict:
                        raise TaacFormatError(
                            path,
                            line_no,
                            f"record {k} item_feature",
                            f"expected a dict of feature id -> value or null, got {describe(item_feature)}",
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
                    f"expected a dict (user-profile record) or null (item record), got {describe(user_feature)}",
                )
            if item is not None or item_feature is not None or action is not None:
                raise TaacFormatError(
                    path,
                    line_no,
                    f"record {k}",
                    "a user-profile record (user_feature set) needs null item_id, item_feature and action_type",
                )
            if stamp is not None and (type(stamp) is not int or not INT64_MIN <= stamp <= INT64_MAX):
                raise TaacFormatError(
                    path,
                    line_no,
                    f"record {k} timestamp",
                    f"expected int seconds or null, got {describe(stamp)}",
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
        if len(self.line_numbers.pending) >= FLUSH_ROWS:
            for column in (self.users, self.line_numbers, self.lengths):
                column.flush()

    def finish(self) -> SeqColumns:
        line_lengths = self.lengths.finish()
        offsets = np.zeros(len(line_lengths) + 1, np.int64)
        np.cumsum(line_lengths, out=offsets[1:])
        return SeqColumns(
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
        if type(value) is not int or not 0 <= value <= INT64_MAX:
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
                    f"expected a non-negative int value id or a list of them, got {describe(record[3][bad])}",
                )


def time_order(offsets: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Event permutation that stable-sorts each user's events by timestamp and keeps users in place."""
    owner = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    by_time = np.argsort(timestamps, kind="stable")
    return by_time[np.argsort(owner[by_time], kind="stable")]
