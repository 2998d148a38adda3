"""The multimodal vectors of ``creative_emb/``: ``emb_<id>_<dim>.pkl`` pickles and ``emb_<id>_<dim>/`` JSON-lines parts."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from seqrec.data.safe_pickle import safe_load_pickle
from seqrec.data.taac.layout import (
    TaacFormatError,
    describe,
    feature_sort_key,
    json_lines,
    norm_cid,
)

logger = logging.getLogger(__name__)

_VECTOR_ENTRY = re.compile(r"emb_(\d+)_(\d+)(\.pkl)?")


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
    return dict(sorted(sources.items(), key=lambda kv: feature_sort_key(kv[0])))


def read_vectors(
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
        raise TaacFormatError(path, line, field, f"expected a list of {dim} numbers, got {describe(value)}")
    if array.shape[0] != dim:
        raise TaacFormatError(
            path, line, field, f"expected {dim} values (the dim in the name), got {array.shape[0]}"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        vector = array.astype(np.float32)
    if not np.isfinite(vector).all():
        raise TaacFormatError(path, line, field, "NaN or infinite value (or too large for float32)")
    return vector


def _place(
    cid: int | str, vector: np.ndarray, cid_rows: dict[int | str, int], matrix: np.ndarray, present: np.ndarray
) -> bool:
    """Puts ``vector`` in the row of creative ``cid``; False when ``cid`` has no row (another creative)."""
    row = cid_rows.get(cid)
    if row is None:
        return False
    matrix[row] = vector
    present[row] = True
    return True


def _fill_vectors_from_pickle(
    path: Path, dim: int, cid_rows: dict[int | str, int], matrix: np.ndarray, present: np.ndarray
) -> int:
    table = safe_load_pickle(path, numeric_arrays=True)  # vectors may be NumPy arrays
    if type(table) is not dict:
        raise TaacFormatError(
            path, None, "file", f"expected a pickled dict creative_id -> vector, got {describe(table)}"
        )
    unknown = 0
    for raw, value in table.items():
        cid = norm_cid(raw)
        if cid is None:
            raise TaacFormatError(path, None, f"key {raw!r}", "creative_id must be an int or a str")
        vector = _vector(value, dim, path, None, f"creative_id {raw!r}")
        unknown += not _place(cid, vector, cid_rows, matrix, present)
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
            for line_no, obj in json_lines(part, bar):
                if type(obj) is not dict or "anonymous_cid" not in obj or "emb" not in obj:
                    raise TaacFormatError(
                        part,
                        line_no,
                        "line",
                        'expected {"anonymous_cid": <creative_id>, "emb": [floats]}',
                    )
                cid = norm_cid(obj["anonymous_cid"])
                if cid is None:
                    raise TaacFormatError(
                        part,
                        line_no,
                        "anonymous_cid",
                        f"expected an int or str, got {describe(obj['anonymous_cid'])}",
                    )
                vector = _vector(obj["emb"], dim, part, line_no, "emb")
                unknown += not _place(cid, vector, cid_rows, matrix, present)
    return unknown
