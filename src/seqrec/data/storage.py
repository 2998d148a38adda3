"""A compact on-disk form of ``Interactions``: a directory of ``.npy`` arrays that loads memory-mapped.

Layout (format ``seqrec-interactions``, version 1)::

    meta.json          format name and version, counts, dtypes, how the raw ids are stored, extras
    offsets.npy        (U + 1,) int64 CSR offsets
    items.npy          (N,) int32 internal item ids (int64 only when the catalogue needs it)
    timestamps.npy     optional (N,) int64 or float64
    actions.npy        optional (N,) int8
    user_ids.npy       (U,) raw user ids: numeric arrays as they are, strings as a numpy unicode array
      or user_ids.jsonl  (one JSON value a line) when the ids are neither (e.g. mixed ints and strings)
    item_ids.npy       (I + 1,) raw item ids, same encodings (``item_ids.jsonl``)
    item_feat_<id>.npy optional per-item feature columns, (I + 1,) int arrays (row 0 = padding)

Everything loads with ``np.load(allow_pickle=False)``: no pickle anywhere. ``load_interactions`` maps
the per-event arrays (``mmap_mode="r"``), so a 91M-event log costs page cache, not private memory, and
never becomes per-event Python objects. Saving is atomic: files are written into a temporary sibling
directory that is renamed into place only once complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from seqrec.data.dataset import Interactions
from seqrec.errors import DataError

FORMAT_NAME = "seqrec-interactions"
FORMAT_VERSION = 1
META_FILE = "meta.json"
ITEM_FEATURE_PREFIX = "item_feat_"
_COPY_CHUNK = 1 << 24  # elements copied per slice when converting a big array on its way to disk
_INT32_MAX = np.iinfo(np.int32).max


class StorageError(DataError):
    """A compact interactions directory is missing, incomplete or inconsistent; the message says which file."""


# ----------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------


def is_interactions_dir(path: str | Path) -> bool:
    """True when ``path`` is a directory holding a ``meta.json`` of this format."""
    meta = Path(path) / META_FILE
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text(encoding="utf-8")).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False


def items_dtype(num_items: int) -> np.dtype:
    """int32 when every id 0..num_items fits, else int64."""
    return np.dtype(np.int32) if num_items <= _INT32_MAX else np.dtype(np.int64)


def save_interactions(
    inter: Interactions,
    directory: str | Path,
    *,
    item_features: Mapping[str, np.ndarray] | None = None,
    extra: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes ``inter`` (and optional per-item feature columns) as a compact directory, atomically.

    Args:
        inter: the interactions; ``items`` must lie in 1..num_items and ``offsets`` be a valid CSR.
        directory: destination; must not exist unless ``overwrite``.
        item_features: feature id -> (num_items + 1,) integer column, saved as ``item_feat_<id>.npy``.
        extra: JSON-serialisable metadata stored under ``meta["extra"]`` (e.g. generator settings).
        overwrite: replace an existing directory (the old one is removed only after the new one is complete).

    Returns:
        The directory path.
    """
    _check_interactions(inter)
    with AtomicDirectory(directory, overwrite=overwrite) as tmp:
        meta = base_meta(inter.num_users, inter.num_items, len(inter.items))
        write_array(tmp / "offsets.npy", inter.offsets, np.int64)
        write_array(tmp / "items.npy", inter.items, items_dtype(inter.num_items))
        if inter.timestamps is not None:
            ts_dtype = np.int64 if np.issubdtype(inter.timestamps.dtype, np.integer) else np.float64
            write_array(tmp / "timestamps.npy", inter.timestamps, ts_dtype)
        if inter.actions is not None:
            write_array(tmp / "actions.npy", inter.actions, np.int8)
        meta["has_timestamps"] = inter.timestamps is not None
        meta["has_actions"] = inter.actions is not None
        meta["user_ids"] = write_ids(tmp, "user_ids", inter.user_ids)
        meta["item_ids"] = write_ids(tmp, "item_ids", inter.item_ids)
        meta["item_features"] = {}
        for feature_id, column in (item_features or {}).items():
            meta["item_features"][str(feature_id)] = write_item_feature(tmp, str(feature_id), column, inter.num_items)
        meta["extra"] = dict(extra or {})
        write_meta(tmp, meta)
    return Path(directory)


def load_interactions(directory: str | Path, mmap: bool = True) -> Interactions:
    """Loads a compact directory; with ``mmap`` the per-event arrays are read-only memory maps.

    Raises:
        StorageError: not a directory of this format, unknown version, a missing file, or arrays whose
            shapes or dtypes disagree with ``meta.json``.
    """
    directory = Path(directory)
    meta = read_meta(directory)
    mode = "r" if mmap else None
    offsets = _load(directory / "offsets.npy", mode)
    items = _load(directory / "items.npy", mode)
    n_users, n_items, n_events = meta["num_users"], meta["num_items"], meta["num_events"]
    if offsets.shape != (n_users + 1,) or offsets.dtype != np.int64:
        raise StorageError(f"{directory / 'offsets.npy'}: expected ({n_users + 1},) int64, got {offsets.shape} {offsets.dtype}", path=directory / 'offsets.npy')
    if items.shape != (n_events,) or not np.issubdtype(items.dtype, np.integer):
        raise StorageError(f"{directory / 'items.npy'}: expected ({n_events},) integers, got {items.shape} {items.dtype}", path=directory / 'items.npy')
    if int(offsets[0]) != 0 or int(offsets[-1]) != n_events:
        raise StorageError(f"{directory / 'offsets.npy'}: must start at 0 and end at {n_events}", path=directory / 'offsets.npy')
    if n_users and int(np.diff(offsets).min()) < 0:
        raise StorageError(f"{directory / 'offsets.npy'}: offsets decrease", path=directory / 'offsets.npy')
    timestamps = actions = None
    if meta.get("has_timestamps"):
        timestamps = _load(directory / "timestamps.npy", mode)
        if timestamps.shape != (n_events,):
            raise StorageError(f"{directory / 'timestamps.npy'}: expected ({n_events},), got {timestamps.shape}", path=directory / 'timestamps.npy')
    if meta.get("has_actions"):
        actions = _load(directory / "actions.npy", mode)
        if actions.shape != (n_events,):
            raise StorageError(f"{directory / 'actions.npy'}: expected ({n_events},), got {actions.shape}", path=directory / 'actions.npy')
    user_ids = read_ids(directory, meta["user_ids"], n_users, mode)
    item_ids = read_ids(directory, meta["item_ids"], n_items + 1, mode)
    return Interactions(offsets=offsets, items=items, user_ids=user_ids, item_ids=item_ids,
                        timestamps=timestamps, actions=actions)


def load_item_features(directory: str | Path, mmap: bool = True) -> dict[str, np.ndarray]:
    """Feature id -> (num_items + 1,) integer column (0 = missing / padding), as listed in ``meta.json``."""
    directory = Path(directory)
    meta = read_meta(directory)
    out = {}
    for feature_id, info in meta.get("item_features", {}).items():
        column = _load(directory / info["file"], "r" if mmap else None)
        if column.shape != (meta["num_items"] + 1,):
            raise StorageError(f"{directory / info['file']}: expected ({meta['num_items'] + 1},), got {column.shape}", path=directory / info['file'])
        out[feature_id] = column
    return out


def read_meta(directory: str | Path) -> dict[str, Any]:
    """The parsed ``meta.json`` after checking the format name and version."""
    path = Path(directory) / META_FILE
    if not Path(directory).is_dir():
        raise StorageError(f"{directory}: not a directory", path=directory)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StorageError(f"{path}: missing; not a seqrec interactions directory", path=path) from None
    except ValueError as exc:
        raise StorageError(f"{path}: not valid JSON ({exc})", path=path) from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise StorageError(f"{path}: format is not {FORMAT_NAME!r}", path=path)
    if meta.get("version") != FORMAT_VERSION:
        raise StorageError(f"{path}: format version {meta.get('version')!r} is not supported (this code reads {FORMAT_VERSION})", path=path)
    for key in ("num_users", "num_items", "num_events", "user_ids", "item_ids"):
        if key not in meta:
            raise StorageError(f"{path}: missing key {key!r}", path=path)
    return meta


# ----------------------------------------------------------------------------------------------------
# Building blocks, shared with writers that stream their arrays (seqrec.data.scale)
# ----------------------------------------------------------------------------------------------------


class AtomicDirectory:
    """Context manager: yields a temporary sibling directory, renames it to ``directory`` on success.

    On an exception the temporary directory is removed and ``directory`` is untouched. With
    ``overwrite`` an existing ``directory`` is moved aside first and deleted after the rename.
    """

    def __init__(self, directory: str | Path, overwrite: bool = False):
        self.directory = Path(directory)
        self.overwrite = overwrite
        self.tmp: Path | None = None

    def __enter__(self) -> Path:
        if self.directory.exists() and not self.overwrite:
            raise StorageError(f"{self.directory} already exists (pass overwrite=True / --overwrite to replace it)")
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.directory.name}.", suffix=".tmp", dir=self.directory.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp creates 0700; the result should look like a mkdir
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        _fsync_dir(self.tmp)
        old = None
        if self.directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.directory.name}.", suffix=".old", dir=self.directory.parent))
            os.rename(self.directory, old / "previous")
        os.rename(self.tmp, self.directory)
        _fsync_dir(self.directory.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def write_array(path: Path, array: np.ndarray, dtype: Any) -> None:
    """Saves ``array`` as ``dtype`` in ``.npy`` form, converting slice by slice (no full-size temporary copy)."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer) and len(array) and np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(dtype)
        lo, hi = int(array.min()), int(array.max())
        if lo < info.min or hi > info.max:
            raise StorageError(f"{path.name}: values {lo}..{hi} do not fit {dtype}")
    if array.size == 0:  # a zero-length file cannot be memory-mapped
        np.save(path, np.asarray(array, dtype=dtype), allow_pickle=False)
        fsync_file(path)
        return
    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=array.shape)
    for start in range(0, len(array), _COPY_CHUNK):
        out[start : start + _COPY_CHUNK] = array[start : start + _COPY_CHUNK]
    out.flush()
    del out
    fsync_file(path)


def write_ids(directory: Path, name: str, ids: np.ndarray) -> dict[str, Any]:
    """Saves a raw-id map without pickle; returns its ``meta.json`` entry.

    Encodings: ``npy`` (numeric or numpy-unicode arrays, as they are), ``npy-str`` (an object array of
    Python strings, stored as numpy unicode and given back as an object array) and ``jsonl`` (anything
    else JSON can hold: mixed ints and strings, ...).
    """
    ids = np.asarray(ids)
    if ids.dtype.kind in "biuf" or ids.dtype.kind == "U":
        np.save(directory / f"{name}.npy", ids, allow_pickle=False)
        fsync_file(directory / f"{name}.npy")
        return {"file": f"{name}.npy", "encoding": "npy"}
    values = ids.tolist()
    # numpy unicode drops trailing NULs, so such strings go to JSON lines instead.
    if all(isinstance(v, str) and not v.endswith("\0") for v in values):
        np.save(directory / f"{name}.npy", np.array(values, dtype=str) if values else np.array([], dtype="<U1"),
                allow_pickle=False)
        fsync_file(directory / f"{name}.npy")
        return {"file": f"{name}.npy", "encoding": "npy-str"}
    path = directory / f"{name}.jsonl"
    with open(path, "w", encoding="utf-8") as handle:
        for v in values:
            if not (v is None or isinstance(v, (bool, int, float, str))):
                raise StorageError(f"{name}: raw id {v!r} of type {type(v).__name__} cannot be stored (JSON)")
            handle.write(json.dumps(v) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return {"file": path.name, "encoding": "jsonl"}


def read_ids(directory: Path, info: Mapping[str, Any], expected: int, mode: str | None) -> np.ndarray:
    path = directory / info["file"]
    encoding = info.get("encoding")
    if encoding == "npy":
        ids = _load(path, mode)
    elif encoding == "npy-str":
        ids = _load(path, None).astype(object)
    elif encoding == "jsonl":
        try:
            with open(path, encoding="utf-8") as handle:
                ids = np.empty(expected, dtype=object)
                count = 0
                for count, line in enumerate(handle, start=1):  # noqa: B007 - count is checked below
                    if count > expected:
                        break
                    try:
                        ids[count - 1] = json.loads(line)
                    except ValueError as exc:  # was reported one line too late
                        raise StorageError(f"{path}:{count}: not valid JSON ({exc})", path=path, line=count) from exc
        except FileNotFoundError:
            raise StorageError(f"{path}: missing", path=path) from None
        except UnicodeDecodeError as exc:  # raised while reading the next line
            raise StorageError(f"{path}:{count + 1}: not UTF-8 text ({exc.reason})", path=path, line=count + 1) from exc
        if count != expected:
            raise StorageError(f"{path}: expected {expected} ids, found {count if count <= expected else 'more'}", path=path)
        return ids
    else:
        raise StorageError(f"{directory / META_FILE}: unknown id encoding {encoding!r}", path=directory / META_FILE)
    if ids.shape != (expected,):
        raise StorageError(f"{path}: expected ({expected},) ids, got {ids.shape}", path=path)
    return ids


def write_item_feature(directory: Path, feature_id: str, column: np.ndarray, num_items: int) -> dict[str, Any]:
    """Saves one per-item integer feature column; returns its ``meta.json`` entry."""
    column = np.asarray(column)
    if column.shape != (num_items + 1,) or not np.issubdtype(column.dtype, np.integer):
        raise StorageError(f"item feature {feature_id}: expected ({num_items + 1},) integers, got {column.shape} {column.dtype}")
    if not feature_id or not all(c.isalnum() or c in "_-" for c in feature_id):
        raise StorageError(f"item feature id {feature_id!r}: use letters, digits, '_' or '-'")
    name = f"{ITEM_FEATURE_PREFIX}{feature_id}.npy"
    cardinality = int(column.max(initial=0)) + 1
    write_array(directory / name, column, np.int32 if cardinality <= _INT32_MAX else np.int64)
    return {"file": name, "cardinality": cardinality}


def write_meta(directory: Path, meta: Mapping[str, Any]) -> None:
    path = directory / META_FILE
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(meta, handle, indent=2, sort_keys=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())


def base_meta(num_users: int, num_items: int, num_events: int) -> dict[str, Any]:
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "num_users": int(num_users),
        "num_items": int(num_items),
        "num_events": int(num_events),
        "items_dtype": items_dtype(num_items).name,
    }


# ----------------------------------------------------------------------------------------------------
# Internals
# ----------------------------------------------------------------------------------------------------


def _check_interactions(inter: Interactions) -> None:
    offsets, items = np.asarray(inter.offsets), np.asarray(inter.items)
    n = len(items)
    if offsets.ndim != 1 or len(offsets) < 1 or int(offsets[0]) != 0 or int(offsets[-1]) != n:
        raise StorageError(f"offsets must be a 1-D CSR index from 0 to len(items) = {n}")
    if len(offsets) > 1 and int(np.diff(offsets).min()) < 0:
        raise StorageError("offsets decrease")
    if len(inter.user_ids) != inter.num_users:
        raise StorageError(f"user_ids has {len(inter.user_ids)} entries for {inter.num_users} users")
    if n and (int(items.min()) < 1 or int(items.max()) > inter.num_items):
        raise StorageError(f"items must lie in 1..{inter.num_items} (0 is padding)")
    for name in ("timestamps", "actions"):
        column = getattr(inter, name)
        if column is not None and len(column) != n:
            raise StorageError(f"{name} has {len(column)} entries for {n} events")


def _load(path: Path, mode: str | None) -> np.ndarray:
    try:
        # A plain ndarray view of the memory map (the map stays alive through ``.base``): the np.memmap
        # subclass would otherwise propagate into every slice and result and cost a little on each.
        return np.asarray(np.load(path, mmap_mode=mode, allow_pickle=False))
    except FileNotFoundError:
        raise StorageError(f"{path}: missing", path=path) from None
    except ValueError as exc:  # pickled object arrays, truncated headers
        raise StorageError(f"{path}: not a plain .npy array ({exc})", path=path) from exc


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
