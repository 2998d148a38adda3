"""FAISS indexes saved next to a run: ``RUN/index/<kind>.faiss`` plus ``<kind>.json``.

The JSON holds the :class:`IndexConfig` used, the catalogue shape and the fingerprint of the weights
the item vectors came from, so a saved index is only reused for the model it was built over. Index row
``r`` is internal item ``r + 1`` (the rows of ``export/items.npy``), as in ``recommend``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from seqrec.config import parse_override
from seqrec.retrieval.export import artifact_dir, item_export, model_fingerprint
from seqrec.retrieval.fbin import atomic_path
from seqrec.retrieval.index import IndexConfig, build_index, load_index, save_index
from seqrec.retrieval.recommend import LoadedModel

log = logging.getLogger(__name__)

INDEX_DIR = "index"
EXPORT_DIR = "export"
KINDS = ("exact", "hnsw", "ivf")


def index_config(kind: str, overrides: list[str] | tuple[str, ...] = ()) -> IndexConfig:
    """An IndexConfig of ``kind`` with ``index.key=value`` overrides (values read as YAML).

    Raises:
        ValueError: On a malformed override, another section than ``index``, an unknown key, ``kind``
            in an override (use the kind argument) or an invalid value.
    """
    names = {f.name for f in dataclasses.fields(IndexConfig)} - {"kind"}
    values: dict[str, Any] = {}
    for text in overrides:
        section, key, value = parse_override(text)
        if section != "index":
            raise ValueError(f"--set {text!r}: only index.KEY=VALUE is accepted here")
        if key == "kind":
            raise ValueError("set the index kind with --kind, not --set index.kind")
        if key not in names:
            raise ValueError(f"--set {text!r}: unknown index key {key!r}; known: {', '.join(sorted(names))}")
        values[key] = value
    return IndexConfig(kind=kind, **values)


def index_paths(run: str | Path, kind: str) -> tuple[Path, Path]:
    """(``.faiss`` file, ``.json`` file) of a run's saved index of ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"index kind must be one of {', '.join(KINDS)}, got {kind!r}")
    directory = artifact_dir(run) / INDEX_DIR
    return directory / f"{kind}.faiss", directory / f"{kind}.json"


def build_run_index(
    loaded: LoadedModel,
    run: str | Path,
    config: IndexConfig,
    *,
    progress: bool = False,
    fingerprint: str | None = None,
) -> tuple[faiss.Index, Path]:
    """Builds an index over the run's exported item vectors (exporting them first if missing) and saves it.

    Returns:
        The index and the path of its ``.faiss`` file.
    """
    fingerprint = fingerprint or model_fingerprint(loaded)
    vectors, _ = item_export(loaded, artifact_dir(run) / EXPORT_DIR, fingerprint=fingerprint)
    index_path, meta_path = index_paths(run, config.kind)
    index_path.parent.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # the saved index is incomplete until its JSON is back
    started = time.perf_counter()
    index = build_index(np.asarray(vectors), config, progress=progress)
    seconds = time.perf_counter() - started
    save_index(index, index_path)
    meta = {
        "config": dataclasses.asdict(config),
        "fingerprint": fingerprint,
        "num_items": int(index.ntotal),
        "dim": int(index.d),
        "similarity": loaded.similarity,
        "build_seconds": round(seconds, 3),
        "faiss_version": faiss.__version__,
    }
    with atomic_path(meta_path) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return index, index_path


def read_index_meta(run: str | Path, kind: str) -> dict[str, Any] | None:
    """The JSON of the run's saved index of ``kind``, or None when there is none or it is unreadable."""
    _, meta_path = index_paths(run, kind)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def run_index(
    loaded: LoadedModel,
    run: str | Path,
    kind: str = "exact",
    *,
    progress: bool = False,
    fingerprint: str | None = None,
) -> tuple[faiss.Index, str]:
    """The run's saved index of ``kind`` if it was built over these weights, else a new in-memory one.

    A new index uses the default :class:`IndexConfig` of ``kind`` and is not saved (``seqrec index
    build`` saves one).

    Returns:
        ``(index, source)`` with source ``"saved"`` or ``"built"``.
    """
    index_path, _ = index_paths(run, kind)
    meta = read_index_meta(run, kind)
    if meta is not None and index_path.is_file():
        fingerprint = fingerprint or model_fingerprint(loaded)
        if meta.get("fingerprint") != fingerprint:
            log.warning("%s was built for other weights; building a %s index in memory instead", index_path, kind)
        else:
            try:
                index = load_index(index_path)
            except ValueError as exc:
                log.warning("%s; building a %s index in memory instead", exc, kind)
            else:
                if index.ntotal == loaded.model.num_items and index.d == loaded.model.config.hidden_dim:
                    log.info("using the saved %s index %s", kind, index_path)
                    return index, "saved"
                log.warning("%s does not match the model's catalogue; building a %s index in memory", index_path, kind)
    elif kind != "exact":
        log.info("no saved %s index for this run; building one in memory (save one with `seqrec index build`)", kind)
    index = build_index(loaded.item_vectors(), IndexConfig(kind=kind), progress=progress)
    return index, "built"
