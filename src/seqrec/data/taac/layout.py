"""File names, feature ids and the shared helpers of the TAAC 2025 layout (see the package docstring).

Every format violation is a ``TaacFormatError`` naming the file, the line and the field.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from seqrec.errors import DataError

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

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
READ_BLOCK = 1 << 20


class TaacFormatError(DataError):
    """A TAAC file breaks the documented layout.

    Attributes:
        path: the offending file.
        line: 1-based line number, or None where the file has no lines (pickles).
        field: the offending record, key or field.
    """

    def __init__(self, path: str | Path, line: int | None, field: str, message: str) -> None:
        where = str(path) if line is None else f"{path}:{line}"
        super().__init__(f"{where}: {field}: {message}", path=path, line=line, field=field)


class LongIntLiteral:
    """A JSON integer literal of more digits than ``int()`` converts (Python's 4,300-digit limit).

    ``json.loads`` refuses such a line as a whole, naming no field; decoded with ``BIG_INT_DECODER`` it
    stands in for the number, so the field's own check (``type(x) is int`` and the int64 range) refuses
    it and names the field. It is never an int or a str, so it can pass no check.
    """

    __slots__ = ("digits", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.digits = len(text.lstrip("-"))

    def __repr__(self) -> str:
        return f"{self.text[:20]}... ({self.digits:,} digits, beyond int64)"


def _parse_int(text: str) -> int | LongIntLiteral:
    # 20 characters hold every int64 ("-9223372036854775808"); JSON has no leading zeros
    return int(text) if len(text) <= 20 else LongIntLiteral(text)


BIG_INT_DECODER = json.JSONDecoder(parse_int=_parse_int)


def describe(value: Any) -> str:
    if isinstance(value, LongIntLiteral):
        return f"int {value!r}"
    if type(value) is int and not INT64_MIN <= value <= INT64_MAX:  # from a pickle: may be beyond str()
        return f"int of {value.bit_length():,} bits, beyond int64"
    try:
        text = json.dumps(value) if type(value) in (int, float, str, bool, list, dict) else repr(value)
    except ValueError:  # a list or dict holding an int beyond str()'s digit limit
        text = f"{type(value).__name__} holding an int beyond int64"
    if len(text) > 60:
        text = text[:57] + "..."
    kind = "null" if value is None else type(value).__name__
    return kind if value is None else f"{kind} {text}"


def norm_cid(value: Any) -> int | str | None:
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


def object_array(values: Sequence[Any]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def id_array(values: Sequence[Any]) -> np.ndarray:
    """int64 when every id is an int in range, else object."""
    if all(type(v) is int and INT64_MIN <= v <= INT64_MAX for v in values):
        return np.asarray(values, dtype=np.int64) if len(values) else np.zeros(0, np.int64)
    return object_array(values)


def existing_dir(directory: str | Path, what: str) -> Path:
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: {what} not found")
    return directory


def required_file(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: required file not found (see the TAAC format note)")
    return path


def progress_bar(path: Path, enabled: bool) -> tqdm:
    return tqdm(
        total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name, disable=not enabled, leave=False
    )


def json_line(path: Path, line_no: int, raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except RecursionError as exc:
        raise TaacFormatError(path, line_no, "line", "JSON nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
        error: Exception = exc
        if type(exc) is ValueError:  # int() refused a literal of over 4,300 digits: let its field say so
            try:
                return BIG_INT_DECODER.decode(raw.decode("utf-8"))
            except (ValueError, RecursionError) as again:  # the line is broken elsewhere too: say where
                error = again
        raise TaacFormatError(path, line_no, "line", f"not valid JSON, possibly truncated ({error})") from exc


def json_lines(path: Path, bar: tqdm | None = None) -> Iterator[tuple[int, Any]]:
    """``(1-based line number, parsed value)`` of every non-blank line of a JSON-lines file.

    ``bar`` (a byte-count bar, see ``progress_bar``) advances by every line read, blank ones too.
    """
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            if bar is not None:
                bar.update(len(raw))
            if raw.strip():
                yield line_no, json_line(path, line_no, raw)


def feature_sort_key(key: str) -> tuple[int, int, str]:
    numeric = key.isascii() and key.isdigit() and len(key) <= 18
    return (0, int(key), key) if numeric else (1, 0, key)
