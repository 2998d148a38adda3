"""Inner-product indexes over item embeddings, built on faiss: exact (flat), HNSW and IVF.

Index positions are the row numbers of the matrix the index was built from, so with the project's
item-id layout (``PAD_ID = 0``) row ``i`` is internal item ``i`` and row 0 is the padding row. Vectors
are used as given: for cosine similarity the caller L2-normalises both the catalogue and the queries.
``IndexConfig`` names the kind and its recall/speed knobs; searching is in ``search.py``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from seqrec.retrieval.fbin import atomic_path

_KINDS = ("exact", "hnsw", "ivf")
# Vectors added per faiss call: big enough to keep faiss's threads busy, small enough for a live bar.
_ADD_CHUNK = 65_536
# faiss k-means warns (and clusters poorly) with fewer than 39 training points per centroid.
_IVF_MIN_POINTS_PER_LIST = 39
# Training sample per IVF list: quality saturates well below faiss's own cap of 256, and k-means time
# is linear in the sample, which dominates the build on a small machine.
_IVF_TRAIN_POINTS_PER_LIST = 64


@dataclass(frozen=True)
class IndexConfig:
    """Which nearest-neighbour index to build and how to tune it.

    All indexes use inner product; fields of the kinds not selected are ignored.
    """

    kind: str = "exact"
    """Index type: "exact" (brute force, IndexFlatIP), "hnsw" (graph, IndexHNSWFlat) or "ivf"
    (inverted lists, IndexIVFFlat)."""

    hnsw_m: int = 32
    """HNSW: neighbours per node per layer (>= 2). Higher means better recall, more memory and a slower
    build; 16-64 is the usual range."""

    hnsw_ef_construction: int = 200
    """HNSW: candidate list size while building (>= 1). Higher gives a better graph and a slower build."""

    hnsw_ef_search: int = 128
    """HNSW: candidate list size while searching (>= 1; faiss uses at least k). Higher means better
    recall and fewer queries per second. Stored in the index, changeable later via
    ``index.hnsw.efSearch``."""

    ivf_nlist: int | None = None
    """IVF: number of k-means lists (>= 1 and <= number of vectors). None picks about 4 * sqrt(N),
    capped at N / 39 so every centroid has enough training points."""

    ivf_nprobe: int = 16
    """IVF: lists scanned per query (>= 1; values above nlist scan every list). Higher means better
    recall and fewer queries per second. Stored in the index, changeable later via ``index.nprobe``."""

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"IndexConfig.kind must be one of {_KINDS}, got {self.kind!r}")
        _check_int("hnsw_m", self.hnsw_m, 2)
        _check_int("hnsw_ef_construction", self.hnsw_ef_construction, 1)
        _check_int("hnsw_ef_search", self.hnsw_ef_search, 1)
        if self.ivf_nlist is not None:
            _check_int("ivf_nlist", self.ivf_nlist, 1)
        _check_int("ivf_nprobe", self.ivf_nprobe, 1)


def _check_int(name: str, value: Any, minimum: int) -> None:
    # bool is an int subclass, but hnsw_m=True is certainly a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"IndexConfig.{name} must be an integer >= {minimum}, got {value!r}")


def build_index(vectors: np.ndarray, config: IndexConfig, *, progress: bool = True) -> faiss.Index:
    """Build an inner-product index whose positions are the row numbers of ``vectors``.

    HNSW construction runs on several threads, so two builds of the same vectors may differ slightly;
    searching one built index is deterministic.

    Args:
        vectors: (N, D) real-valued matrix, N >= 1; converted to contiguous float32. Used as given
            (normalise first for cosine similarity).
        config: Index kind and parameters.
        progress: Show a tqdm bar (on stderr) while adding, when there is more than one chunk to add.

    Returns:
        A ``faiss.IndexFlatIP``, ``faiss.IndexHNSWFlat`` or ``faiss.IndexIVFFlat``.

    Raises:
        ValueError: If ``vectors`` is not a non-empty finite 2-D matrix, or ``config.ivf_nlist``
            exceeds the number of vectors.
    """
    x = as_matrix(vectors, "vectors")
    n, d = x.shape
    if n == 0:
        raise ValueError("vectors is empty (0 rows); cannot build an index")
    if config.kind == "exact":
        index = faiss.IndexFlatIP(d)
    elif config.kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, int(config.hnsw_m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(config.hnsw_ef_construction)
        index.hnsw.efSearch = int(config.hnsw_ef_search)
    else:
        nlist = _ivf_nlist(n, config.ivf_nlist)
        # The faiss Python wrapper keeps the quantizer alive as long as the IVF index.
        quantizer = faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.nprobe = int(min(config.ivf_nprobe, nlist))
        index.train(_training_sample(x, nlist))
    _add_in_chunks(index, x, progress)
    return index


def _ivf_nlist(n: int, requested: int | None) -> int:
    if requested is None:
        return max(1, min(round(4 * math.sqrt(n)), n // _IVF_MIN_POINTS_PER_LIST))
    if requested > n:
        raise ValueError(f"IndexConfig.ivf_nlist={requested} exceeds the number of vectors ({n})")
    return int(requested)


def _training_sample(x: np.ndarray, nlist: int) -> np.ndarray:
    m = min(len(x), _IVF_TRAIN_POINTS_PER_LIST * nlist)
    if m == len(x):
        return x
    # Fixed seed: the same vectors always give the same centroids (faiss k-means is seeded too).
    rows = np.sort(np.random.default_rng(0).choice(len(x), size=m, replace=False))
    return x[rows]


def _add_in_chunks(index: faiss.Index, x: np.ndarray, progress: bool) -> None:
    n = len(x)
    bar = tqdm(
        total=n, unit="vec", desc=f"adding to {type(index).__name__}", disable=not progress or n <= _ADD_CHUNK
    )
    with bar:
        for start in range(0, n, _ADD_CHUNK):
            chunk = x[start : start + _ADD_CHUNK]
            index.add(chunk)
            bar.update(len(chunk))


def save_index(index: faiss.Index, path: str | os.PathLike) -> None:
    """Write ``index`` to ``path`` atomically (temp file in the same directory, fsync, rename).

    Search settings stored in the index (HNSW efSearch, IVF nprobe) are saved with it.

    Args:
        index: Any faiss index.
        path: Destination file; its directory must exist.

    Raises:
        ValueError: If the directory of ``path`` does not exist.
    """
    with atomic_path(path) as tmp:
        faiss.write_index(index, str(tmp))


def load_index(path: str | os.PathLike) -> faiss.Index:
    """Read an index written by :func:`save_index`.

    Args:
        path: Source file.

    Returns:
        The index, as its concrete faiss class.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If faiss cannot parse the file (truncated or not a faiss index).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"index file {str(p)!r} does not exist")
    try:
        return faiss.read_index(str(p))
    except RuntimeError as e:
        raise ValueError(f"cannot read a faiss index from {str(p)!r} (truncated or corrupt?): {e}") from e


def as_matrix(a: Any, name: str, d: int | None = None) -> np.ndarray:
    """``a`` as a C-contiguous float32 (N, D) matrix of finite values (D = ``d`` when given), or ValueError."""
    arr = np.asarray(a)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) matrix, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be real-valued, got dtype {arr.dtype}")
    if d is not None and arr.shape[1] != d:
        raise ValueError(f"{name} has dimension {arr.shape[1]}, the index has dimension {d}")
    x = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        raise ValueError(f"{name} row {int(np.argmin(finite))} contains NaN or inf")
    return x
