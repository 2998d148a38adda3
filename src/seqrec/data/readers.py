"""Interaction-log readers: SASRec text (plain, .gz, .xz), CSV/TSV and Parquet -> ``Interactions``.

Raw ids of any type are mapped to contiguous internal ids (items 1..I, 0 = padding; users 0..U-1) in
sorted raw-id order, so a SASRec file whose ids are already 1..N keeps them. Event order:
- SASRec text: file order, never re-sorted (published numbers depend on it);
- CSV/TSV/Parquet with a timestamp column: a stable sort per user (ties keep file order);
- without timestamps: file order.

Every user error is a ``DataError`` naming the file, the line and the field.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import itertools
import logging
import lzma
import math
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from seqrec.config import DataConfig
from seqrec.data.dataset import Interactions
from seqrec.errors import DataError

log = logging.getLogger(__name__)


def _open_binary(path: Path):
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")
    if suffix == ".xz":
        return lzma.open(path, "rb")
    if suffix == ".bz2":
        return bz2.open(path, "rb")
    return open(path, "rb")  # noqa: SIM115 - closed by the caller's with-block


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yields (1-based line number, line without newline); turns decoding and stream errors into DataError.

    Lines are decoded one by one (not in buffered chunks) so that an encoding error names its line.
    """
    lineno = 0
    try:
        with _open_binary(path) as handle:
            for lineno, raw in enumerate(handle, start=1):  # noqa: B007 - lineno is read in the except blocks
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: not valid UTF-8 text ({exc.reason} at byte {exc.start})",
                                    path=path, line=lineno) from exc
                if lineno == 1:
                    # Spreadsheet exports often start with a UTF-8 byte-order mark; it is not part of the data.
                    line = line.removeprefix("\ufeff")
                yield lineno, line.rstrip("\r\n")
    except (EOFError, lzma.LZMAError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        # Decompression runs in blocks ahead of the lines, so the damage lies somewhere after this point.
        where = f"after line {lineno}" if lineno else "before the first line"
        raise DataError(f"{path}: compressed stream is truncated or corrupt {where} ({exc})", path=path,
                        line=lineno + 1 if lineno else None) from exc


def _detect_format(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    name = path.name.lower()
    for suffix in (".gz", ".xz", ".bz2"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    if name.endswith(".csv"):
        return "csv"
    if name.endswith(".tsv"):
        return "tsv"
    if name.endswith(".parquet"):
        return "parquet"
    return "sasrec"


_INT64_MAX = 2**63 - 1
_INT64_DIGITS = len(str(_INT64_MAX))  # 19
MAX_ID_CHARS = 1000  # longest text id of a CSV/TSV row; longer ones are refused as damaged data
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # C0 controls but tab, and DEL


def _field_error(path: Path, lineno: int, field: str, text: str) -> DataError:
    """``<path>:<line>: field <field>: <text>``, with ``path``, ``line`` and ``field`` set on the error."""
    return DataError(f"{path}:{lineno}: field {field}: {text}", path=path, line=lineno, field=field)


def _parse_positive_int(token: str, path: Path, lineno: int, field: str) -> int:
    # ASCII digits only: int() also accepts "1_0", "+5" and non-ASCII digits, which would silently
    # merge distinct raw ids; ids must also fit the int64 arrays they are stored in.
    if not (token.isascii() and token.isdigit()):
        if token.isascii() and token.startswith("-") and token[1:].isdigit():
            raise _field_error(path, lineno, field, f"id must be >= 1 (0 is reserved for padding), got {token[:40]}")
        raise _field_error(path, lineno, field, f"expected a positive integer id, got {token[:40]!r}")
    digits = token.lstrip("0") or "0"
    # The length first: int() refuses over 4,300 digits with a message that names neither file nor line.
    if len(digits) > _INT64_DIGITS or int(digits) > _INT64_MAX:
        shown = digits if len(digits) <= 40 else f"of {len(digits):,} digits ({digits[:20]}...)"
        raise _field_error(path, lineno, field, f"id {shown} does not fit in 64 bits (ids are int64: at most "
                                                f"{_INT64_MAX}, {_INT64_DIGITS} digits)")
    value = int(digits)
    if value == 0:
        raise _field_error(path, lineno, field, f"id must be >= 1 (0 is reserved for padding), got {token}")
    return value


def read_sasrec(path: Path, on_bad_line: str = "error") -> tuple[np.ndarray, np.ndarray, None]:
    """Reads ``user item`` lines (positive integer ids, one space or tab) in file order."""
    users: list[int] = []
    items: list[int] = []
    skipped = 0
    for lineno, line in _lines(path):
        parts = line.split()
        if not parts:
            continue  # blank lines (e.g. a trailing newline pair) carry no event, as in CSV/TSV
        try:
            if len(parts) != 2:
                raise DataError(f"{path}:{lineno}: expected 2 fields 'user item', got {len(parts)}: {line[:80]!r}",
                                path=path, line=lineno)
            users.append(_parse_positive_int(parts[0], path, lineno, "user"))
            items.append(_parse_positive_int(parts[1], path, lineno, "item"))
        except DataError:
            if on_bad_line == "error":
                raise
            if len(users) > len(items):
                users.pop()
            skipped += 1
    if skipped:
        log.warning("%s: skipped %d malformed line(s) (data.on_bad_line=skip)", path, skipped)
    if not users:
        raise DataError(f"{path}: no interactions (empty file or blank lines only)", path=path)
    return np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64), None


def _parse_time(token: str, path: Path, lineno: int, field: str) -> float:
    try:
        value = float(token)
    except ValueError:
        raise _field_error(path, lineno, field, f"expected a numeric timestamp, got {token[:40]!r}") from None
    if not math.isfinite(value):
        raise _field_error(path, lineno, field, f"timestamp must be finite, got {token[:40]!r}")
    return value


def read_delimited(path: Path, config: DataConfig, delimiter: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Reads CSV/TSV; ids are kept as strings (any type), timestamps as floats.

    With ``data.header`` (the default) the first row names the columns; without it every row is data and
    ``data.user_col``/``item_col``/``time_col`` are 0-based column positions (config.py). Either way the
    first row fixes the number of fields every row must have.
    """
    rows = _lines(path)
    # The header is the first line, blank or not; without one, the first non-blank row.
    first = next(((n, line) for n, line in rows if config.header or line.strip()), None)
    if first is None:
        raise DataError(f"{path}: empty file (expected a header row)" if config.header
                        else f"{path}: no interactions (empty file or blank lines only)", path=path)
    first_lineno, first_line = first
    first_fields = _split_row(first_line, delimiter, path, first_lineno)
    header = first_fields if config.header else None
    specs = [("user_col", config.user_col), ("item_col", config.item_col)]
    if config.time_col is not None:
        specs.append(("time_col", config.time_col))
    cols, names = _resolve_columns(path, first_lineno, specs, header, len(first_fields))
    user_name, item_name = names[0], names[1]
    time_name = names[2] if config.time_col is not None else None
    users: list[str] = []
    items: list[str] = []
    times: list[float] = []
    skipped = 0
    data_rows = rows if config.header else itertools.chain([first], rows)
    for lineno, line in data_rows:
        if not line.strip():
            continue
        try:
            fields = _split_row(line, delimiter, path, lineno)
            if len(fields) != len(first_fields):
                raise DataError(f"{path}:{lineno}: expected {len(first_fields)} fields, got {len(fields)}",
                                path=path, line=lineno)
            user = _text_id(fields[cols[0]], path, lineno, user_name)
            item = _text_id(fields[cols[1]], path, lineno, item_name)
            t = _parse_time(fields[cols[2]], path, lineno, time_name) if time_name is not None else None
        except DataError:
            if config.on_bad_line == "error":
                raise
            skipped += 1
            continue
        users.append(user)
        items.append(item)
        if t is not None:
            times.append(t)
    if skipped:
        log.warning("%s: skipped %d malformed line(s) (data.on_bad_line=skip)", path, skipped)
    if not users:
        raise DataError(f"{path}: no interactions (header only)" if config.header else f"{path}: no interactions",
                        path=path)
    return (
        _maybe_numeric(users, path, user_name),
        _maybe_numeric(items, path, item_name),
        np.asarray(times, dtype=np.float64) if time_name is not None else None,
    )


def _resolve_columns(
    path: Path, lineno: int, specs: list[tuple[str, str | int]], header: list[str] | None, width: int
) -> tuple[list[int], list[str]]:
    """``[(setting, name or position)]`` -> (0-based positions, names for messages).

    A name is looked up in ``header`` (it must appear there exactly once); a position must lie inside
    the first row's ``width`` fields. Messages call a column by its header name, or without a header
    ``column N`` (N 0-based, as in the config).
    """
    if header is not None:
        missing = [c for _, c in specs if isinstance(c, str) and c not in header]
        if missing:
            hint = ""
            if all(_looks_like_number(f) for f in header):  # a data row where the header should be
                hint = "; if the file has no header row, set data.header=false and the columns by position"
            raise DataError(f"{path}:{lineno}: missing column(s) {', '.join(map(repr, missing))}; "
                            f"header has {header[:20]}{hint}", path=path, line=lineno, field=missing[0])
        repeated = [c for _, c in specs if isinstance(c, str) and header.count(c) > 1]
        if repeated:
            raise DataError(f"{path}:{lineno}: column(s) {', '.join(map(repr, repeated))} appear more than once in the header",
                            path=path, line=lineno, field=repeated[0])
    cols, names = [], []
    for setting, col in specs:
        if isinstance(col, str):
            assert header is not None  # DataConfig allows names only with a header
            cols.append(header.index(col))
            names.append(col)
            continue
        if col >= width:
            raise DataError(f"{path}:{lineno}: data.{setting}={col} is out of range: the row has {width} field(s) "
                            f"(positions 0..{width - 1})", path=path, line=lineno, field=f"data.{setting}")
        cols.append(col)
        names.append(header[col] if header is not None else f"column {col}")
    return cols, names


def _looks_like_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _text_id(value: str, path: Path, lineno: int, field: str) -> str:
    """A CSV/TSV id field, stripped; empty, over-long and control-character ids are refused."""
    value = value.strip()
    if not value:
        raise _field_error(path, lineno, field, "empty id")
    if len(value) > MAX_ID_CHARS:
        digits = value[1:] if value[:1] == "-" else value
        if digits.isascii() and digits.isdigit():  # a number: say why it cannot be an integer id either
            raise _field_error(path, lineno, field, f"id of {len(value):,} characters is longer than {MAX_ID_CHARS:,} "
                               f"({value[:20]}...); integer ids must fit in int64 (at most {_INT64_DIGITS} digits)")
        raise _field_error(path, lineno, field, f"id of {len(value):,} characters is longer than "
                           f"{MAX_ID_CHARS:,} ({value[:20]!r}...)")
    bad = _CONTROL.search(value)
    if bad:
        # a NUL or another control character is damage (a binary file, a bad export), never part of an id
        raise _field_error(path, lineno, field, f"id contains the control character {bad.group()!r} "
                           f"at position {bad.start() + 1}: {value[:40]!r}")
    return value


def _split_row(line: str, delimiter: str, path: Path, lineno: int) -> list[str]:
    try:
        return next(csv.reader([line], delimiter=delimiter))
    except csv.Error as exc:  # e.g. a field over csv.field_size_limit()
        raise DataError(f"{path}:{lineno}: malformed {'TSV' if delimiter == chr(9) else 'CSV'} row ({exc})",
                        path=path, line=lineno) from exc


def _is_int64_text(value: str) -> bool:
    # ASCII digits only: int() would also accept "1_0" or non-ASCII digits and merge them with "10".
    digits = value[1:] if value.startswith("-") else value
    return (digits.isascii() and digits.isdigit() and len(digits.lstrip("0")) <= _INT64_DIGITS
            and -_INT64_MAX - 1 <= int(value) <= _INT64_MAX)


def _maybe_numeric(values: list[str], path: Path, field: str) -> np.ndarray:
    """Integer ids stay integers (so ``7`` and ``07`` are one user); anything else stays a string.

    A column of integers of which some do not fit in int64 is read as text, with a warning: ``7`` and
    ``07`` are then two ids.
    """
    beyond = None
    for v in values:
        if not _is_int64_text(v):
            digits = v[1:] if v[:1] == "-" else v
            if not (digits.isascii() and digits.isdigit()):
                return np.asarray(values, dtype=object)
            beyond = beyond or v
    if beyond is not None:
        log.warning("%s: field %s: id %s does not fit in int64; the column is read as text ids", path, field,
                    beyond if len(beyond) <= 40 else f"{beyond[:20]}... ({len(beyond):,} digits)")
        return np.asarray(values, dtype=object)
    return np.asarray([int(v) for v in values], dtype=np.int64)


def read_parquet(path: Path, config: DataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - depends on the extra
        raise DataError(f"{path}: reading Parquet needs pyarrow (pip install 'seqrec[parquet]')", path=path) from exc
    try:
        table = pq.read_table(path)
        # read_table does not check string data; invalid UTF-8 would only fail later, in to_numpy,
        # with a bare ArrowException (found by tests/test_reliability_hypothesis.py)
        table.validate(full=True)
    except Exception as exc:  # pyarrow raises many types for corrupt files
        raise DataError(f"{path}: not a readable Parquet file ({exc})", path=path) from exc
    if not config.header:
        raise DataError(f"{path}: data.header=false applies to CSV/TSV; a Parquet file always names its columns",
                        path=path, field="data.header")
    wanted = [config.user_col, config.item_col] + ([config.time_col] if config.time_col is not None else [])
    out_of_range = [c for c in wanted if isinstance(c, int) and c >= table.num_columns]
    if out_of_range:
        raise DataError(f"{path}: column position(s) {', '.join(map(str, out_of_range))} out of range: the file has "
                        f"{table.num_columns} column(s)", path=path, field=str(out_of_range[0]))
    wanted = [table.column_names[c] if isinstance(c, int) else c for c in wanted]
    missing = [c for c in wanted if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(map(repr, missing))}; has {table.column_names}",
                        path=path, field=missing[0])
    if table.num_rows == 0:
        raise DataError(f"{path}: no interactions (0 rows)", path=path)
    out = []
    for c in wanted[:2]:
        col = table.column(c)
        if pa.types.is_dictionary(col.type):  # pandas categoricals arrive dictionary-encoded
            col = col.cast(col.type.value_type)
        # Only integer and text ids survive the round trip through the checkpoint's id maps unchanged.
        if not (pa.types.is_integer(col.type) or pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            raise DataError(f"{path}: column {c!r}: ids must be integers or strings, got type {col.type}",
                            path=path, field=c)
        if col.null_count:
            first = int(np.argmax(col.is_null().to_numpy(zero_copy_only=False))) + 1
            raise DataError(f"{path}: row {first}: column {c!r}: null id ({col.null_count} null id(s) in the column)",
                            path=path, line=first, field=c)
        if not pa.types.is_integer(col.type):
            _check_parquet_text_ids(path, c, col)
        values = col.to_numpy(zero_copy_only=False)
        if values.dtype == np.uint64 and len(values) and values.max() > _INT64_MAX:
            row = int(np.argmax(values > _INT64_MAX)) + 1
            raise DataError(f"{path}: row {row}: column {c!r}: id {values[row - 1]} does not fit in int64 (ids are at "
                            f"most {_INT64_MAX})", path=path, line=row, field=c)
        out.append(values.astype(np.int64) if np.issubdtype(values.dtype, np.integer) else values.astype(object))
    times = None
    if config.time_col is not None:
        time_col = wanted[2]
        try:
            times = table.column(time_col).to_numpy(zero_copy_only=False).astype(np.float64)
        except (ValueError, TypeError) as exc:
            raise DataError(f"{path}: column {time_col!r}: not numeric timestamps ({exc})",
                            path=path, field=time_col) from exc
        bad = np.flatnonzero(~np.isfinite(times))
        if len(bad):
            raise DataError(f"{path}: row {bad[0] + 1}: column {time_col!r}: timestamp is not finite",
                            path=path, line=int(bad[0]) + 1, field=time_col)
    return out[0], out[1], times


def _check_parquet_text_ids(path: Path, name: str, col) -> None:
    """The checks of a CSV text id (``_text_id``) on a Parquet string column: empty, over-long, control chars."""
    import pyarrow.compute as pc

    # RE2 (pyarrow's regex engine) reads the escapes of _CONTROL's class; the pattern holds no raw NUL
    checks = (
        (pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(col)), 0), "empty id"),
        (pc.greater(pc.utf8_length(col), MAX_ID_CHARS), f"id longer than {MAX_ID_CHARS:,} characters"),
        (pc.match_substring_regex(col, r"[\x00-\x08\x0a-\x1f\x7f]"), "id contains a control character"),
    )
    for mask, what in checks:
        flags = mask.to_numpy(zero_copy_only=False)
        if flags.any():
            row = int(np.argmax(flags)) + 1
            shown = str(col[row - 1])[:40]
            raise DataError(f"{path}: row {row}: column {name!r}: {what}: {shown!r}", path=path, line=row, field=name)


def build_interactions(
    users: np.ndarray, items: np.ndarray, times: np.ndarray | None = None
) -> Interactions:
    """Groups events per user (stable: file order, or timestamp order with ties in file order) and maps ids."""
    user_ids, user_idx = np.unique(users, return_inverse=True)
    item_ids, item_idx = np.unique(items, return_inverse=True)
    if times is None:
        order = np.argsort(user_idx, kind="stable")
    else:
        order = np.lexsort((times, user_idx))  # lexsort is stable: ties keep file order
    counts = np.bincount(user_idx, minlength=len(user_ids))
    offsets = np.zeros(len(user_ids) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    raw_items = np.empty(len(item_ids) + 1, dtype=item_ids.dtype)
    raw_items[1:] = item_ids
    raw_items[0] = 0 if item_ids.dtype != object else ""
    return Interactions(
        offsets=offsets,
        items=(item_idx[order] + 1).astype(np.int64),
        user_ids=user_ids,
        item_ids=raw_items,
        timestamps=None if times is None else times[order],
    )


def kcore_filter(users: np.ndarray, items: np.ndarray, times: np.ndarray | None, k: int):
    """Iteratively drops users and items with fewer than ``k`` events until none is left."""
    keep = np.ones(len(users), dtype=bool)
    while True:
        _, u_inv, u_cnt = np.unique(users[keep], return_inverse=True, return_counts=True)
        _, i_inv, i_cnt = np.unique(items[keep], return_inverse=True, return_counts=True)
        ok = (u_cnt[u_inv] >= k) & (i_cnt[i_inv] >= k)
        if ok.all():
            break
        idx = np.flatnonzero(keep)
        keep[idx[~ok]] = False
        if not keep.any():
            raise DataError(f"{k}-core filtering removed every interaction")
    return users[keep], items[keep], None if times is None else times[keep]


def read_interactions(config: DataConfig) -> Interactions:
    """Reads the log named by ``config.path`` (or generates the synthetic default) into ``Interactions``."""
    if config.path is None:
        from seqrec.data.synthetic import generate_synthetic

        # A preset's name says nothing about its data: say so when no file was given.
        log.info("no data.path (--data): the built-in synthetic data, %d users and %d items",
                 config.synthetic_users, config.synthetic_items)
        return generate_synthetic(config.synthetic_users, config.synthetic_items, seed=config.synthetic_seed)
    path = Path(config.path)
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    if config.format == "taac" or (config.format == "auto" and (path / "seq.jsonl").is_file()):
        from seqrec.data.taac.dataset import read_taac_dataset  # interactions and features in one read

        return read_taac_dataset(config)[0]
    if config.format == "seqrec" or (config.format == "auto" and path.is_dir()):
        from seqrec.data.storage import is_interactions_dir, load_interactions

        if not is_interactions_dir(path):
            raise DataError(f"{path}: not a seqrec interactions directory (no meta.json of that format)", path=path)
        if config.kcore > 1:
            raise DataError(f"{path}: data.kcore is not applied to a saved seqrec directory; filter before saving",
                            path=path, field="data.kcore")
        return load_interactions(path)  # memory-mapped; events are already in order
    if path.is_dir():
        raise DataError(f"{path}: is a directory; expected an interaction log file", path=path)
    fmt = _detect_format(path, config.format)
    if fmt == "sasrec":
        if config.time_col is not None:
            raise DataError(f"{path}: SASRec text has no timestamp column; unset data.time_col", path=path,
                            field="data.time_col")
        users, items, times = read_sasrec(path, config.on_bad_line)
    elif fmt in ("csv", "tsv"):
        users, items, times = read_delimited(path, config, "," if fmt == "csv" else "\t")
    else:
        users, items, times = read_parquet(path, config)
    if config.kcore > 1:
        try:
            users, items, times = kcore_filter(users, items, times, config.kcore)
        except DataError as exc:  # kcore_filter works on arrays and does not know the file
            raise DataError(f"{path}: {exc} (data.kcore={config.kcore})", path=path, field="data.kcore") from None
    inter = build_interactions(users, items, times)
    _warn_duplicates(inter, path)
    return inter


def _warn_duplicates(inter: Interactions, path: Path) -> None:
    user_of_event = np.repeat(np.arange(inter.num_users), inter.lengths)
    keys = user_of_event * (inter.num_items + 1) + inter.items
    dup = len(keys) - len(np.unique(keys))
    if dup:
        log.info("%s: %d repeated (user, item) events kept as repeat consumption", path, dup)
