"""Binary vector and id files in the layouts the competition baseline reads and writes.

* ``.fbin``: ``uint32 count``, ``uint32 dim``, then ``count * dim`` float32 values row by row, all
  little-endian (the big-ann-benchmarks layout).
* id files: a raw little-endian ``uint64`` array with no header (the baseline's layout).

Every writer is atomic: it writes a temporary file in the target's directory, fsyncs it and renames it
over the target, so a crash never leaves a half-written file under the final name. Readers check the
file size against the header and raise ``ValueError`` (naming the file, the expected and the actual
size) on a truncated or corrupt file rather than returning garbage.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

_HEADER_BYTES = 8  # two uint32: count, dim
_U32_MAX = 2**32 - 1
_F32_LE = np.dtype("<f4")
_U32_LE = np.dtype("<u4")
_U64_LE = np.dtype("<u8")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it over ``path``.

    The temporary file lives in the same directory because ``os.replace`` is only atomic within one
    file system. If the body raises, the temporary file is removed and ``path`` is left untouched.

    Args:
        path: Final destination. Its directory must exist.

    Yields:
        The temporary path the body should write to (the file exists and is empty).

    Raises:
        ValueError: If the directory of ``path`` does not exist.
    """
    target = Path(path)
    directory = target.parent
    if not directory.is_dir():
        raise ValueError(f"directory of output path {str(target)!r} does not exist: {str(directory)!r}")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # The body may have written through another handle (e.g. faiss), so fsync by reopening.
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    """Persist the rename itself; some platforms (Windows) cannot open directories, which is harmless."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def write_fbin(path: str | os.PathLike, vectors: np.ndarray) -> None:
    """Write a 2-D float matrix as an ``.fbin`` file (uint32 count, uint32 dim, float32 rows).

    Args:
        path: Destination file; replaced atomically.
        vectors: (N, D) real-valued array; converted to little-endian float32.

    Raises:
        ValueError: If ``vectors`` is not 2-D, not real-valued, or N or D does not fit in uint32.
    """
    arr = np.asarray(vectors)
    if arr.ndim != 2:
        raise ValueError(f"vectors must be 2-D (N, D), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"vectors must be real-valued, got dtype {arr.dtype}")
    n, d = arr.shape
    if n > _U32_MAX or d > _U32_MAX:
        raise ValueError(f"vectors shape {arr.shape} does not fit the uint32 fbin header")
    data = np.ascontiguousarray(arr, dtype=_F32_LE)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(np.array([n, d], dtype=_U32_LE).tobytes())
        data.tofile(f)


def read_fbin(path: str | os.PathLike, *, mmap: bool = False) -> np.ndarray:
    """Read an ``.fbin`` file written by :func:`write_fbin` (or any big-ann-benchmarks tool).

    Args:
        path: Source file.
        mmap: Map the file read-only instead of loading it, for catalogues larger than memory.

    Returns:
        (N, D) float32 array (a read-only memmap when ``mmap`` is true).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is shorter than its header, or its size differs from
            ``8 + 4 * N * D`` bytes (truncated or trailing garbage).
    """
    p = Path(path)
    actual = p.stat().st_size
    if actual < _HEADER_BYTES:
        raise ValueError(
            f"fbin file {str(p)!r} is truncated: expected at least {_HEADER_BYTES} header bytes, got {actual}"
        )
    header = np.fromfile(p, dtype=_U32_LE, count=2)
    n, d = int(header[0]), int(header[1])
    expected = _HEADER_BYTES + 4 * n * d
    if actual != expected:
        raise ValueError(
            f"fbin file {str(p)!r} is corrupt or truncated: header says {n} x {d} float32, "
            f"expected {expected} bytes, got {actual}"
        )
    if mmap:
        return np.memmap(p, dtype=_F32_LE, mode="r", offset=_HEADER_BYTES, shape=(n, d))
    data = np.fromfile(p, dtype=_F32_LE, offset=_HEADER_BYTES, count=n * d)
    # Native float32 so downstream code (faiss, torch) never sees a byte-swapped dtype.
    return data.astype(np.float32, copy=False).reshape(n, d)


def write_ids_u64(path: str | os.PathLike, ids: np.ndarray) -> None:
    """Write ids as a raw little-endian uint64 array (no header).

    Args:
        path: Destination file; replaced atomically.
        ids: 1-D array of non-negative integers.

    Raises:
        ValueError: If ``ids`` is not 1-D, not integer-valued, or holds a negative value.
    """
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"ids must be integers, got dtype {arr.dtype}")
    if arr.size and np.issubdtype(arr.dtype, np.signedinteger) and arr.min() < 0:
        raise ValueError(f"ids must be non-negative, got {int(arr.min())}")
    data = np.ascontiguousarray(arr, dtype=_U64_LE)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        data.tofile(f)


def read_ids_u64(path: str | os.PathLike, *, count: int | None = None) -> np.ndarray:
    """Read a raw little-endian uint64 id array written by :func:`write_ids_u64`.

    The layout has no header, so a truncation that happens to fall on an 8-byte boundary can only be
    detected when the caller passes the expected ``count`` (e.g. the row count of the matching fbin).

    Args:
        path: Source file.
        count: Expected number of ids, or None to accept any whole number of ids.

    Returns:
        (N,) uint64 array.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the size is not a multiple of 8 bytes, or differs from ``8 * count``.
    """
    if count is not None and count < 0:
        raise ValueError(f"count must be non-negative, got {count}")
    p = Path(path)
    actual = p.stat().st_size
    if count is not None and actual != 8 * count:
        raise ValueError(
            f"id file {str(p)!r} is corrupt or truncated: expected {count} uint64 ids = {8 * count} bytes, "
            f"got {actual}"
        )
    if actual % 8:
        raise ValueError(
            f"id file {str(p)!r} is corrupt or truncated: size {actual} bytes is not a multiple of 8 "
            f"(expected {8 * (actual // 8)} or {8 * (actual // 8 + 1)})"
        )
    return np.fromfile(p, dtype=_U64_LE).astype(np.uint64, copy=False)
