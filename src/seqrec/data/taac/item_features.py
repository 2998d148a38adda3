"""``item_feat_dict.json``: one large JSON object streamed member by member into feature columns."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from seqrec.data.taac.columns import FeatureColumns
from seqrec.data.taac.layout import (
    BIG_INT_DECODER,
    INDEXER_FILE,
    READ_BLOCK,
    TaacFormatError,
    describe,
    progress_bar,
)

_MAX_VALUE_CHARS = 1 << 26  # one member of item_feat_dict.json is a few hundred characters
_WHITESPACE = re.compile(r"[ \t\n\r]*")


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
            chunk = self._file.read(max(READ_BLOCK, pending))
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
                try:  # as a LongIntLiteral, the value's own check names the feature that holds it
                    value, end = BIG_INT_DECODER.raw_decode(self._buf, self._pos)
                except json.JSONDecodeError as again:
                    if self._fill():
                        continue
                    line = self._line + self._buf.count("\n", self._pos, again.pos)
                    raise TaacFormatError(self._path, line, field, f"not valid JSON ({again.msg})") from exc
                except (ValueError, RecursionError):
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
            progress_bar(self._path, self._progress) as self._bar,
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


def read_item_features(path: Path, num_items: int, progress: bool) -> FeatureColumns:
    columns = FeatureColumns(path, lenient=False)
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
                f"expected a dict of feature id -> value, got {describe(features)}",
            )
        columns.add(reid, features, line, f"item {key!r}")
    return columns
