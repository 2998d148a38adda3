"""Export item and user embeddings of a trained model, with their raw ids side by side.

Layout of an export directory (default ``RUN/export/``):

* ``items.npy`` (I, D) float32, row r = internal item r + 1; ``item_ids.npy`` (I,) its raw ids;
* ``users.npy`` (U, D) float32, the encoder output at the last position over each user's full history;
  ``user_ids.npy`` (U,) raw user ids;
* with ``fbin``: ``items.fbin`` / ``users.fbin`` (uint32 count, uint32 dim, float32 rows) and
  ``item_ids.u64`` / ``user_ids.u64`` (raw little-endian uint64). Raw ids that are not non-negative
  integers cannot be written as uint64; then the files hold internal ids (items 1..I, users 0..U-1,
  i.e. row + 1 and row of the ``.npy`` files) and ``meta.json`` says so;
* ``meta.json``: shapes, similarity, the model fingerprint and which files exist.

Vectors are L2-normalised if and only if the checkpoint's similarity is cosine (the same vectors
``recommend`` searches). Id arrays are saved without pickle: int64 for integer ids, a unicode array
otherwise. Every file is written atomically; ``meta.json`` is removed first and written last, so an
interrupted export never looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from seqrec.data.batches import left_padded_windows
from seqrec.data.dataset import Interactions
from seqrec.retrieval.fbin import atomic_path, write_fbin, write_ids_u64
from seqrec.retrieval.ids import ids_array
from seqrec.retrieval.onnx_export import ONNX_FILE, ONNX_META
from seqrec.retrieval.recommend import LoadedModel

log = logging.getLogger(__name__)

META = "meta.json"
EXPORT_FORMAT = 1
_ITEM_FILES = ("items.npy", "item_ids.npy", "items.fbin", "item_ids.u64")
_USER_FILES = ("users.npy", "user_ids.npy", "users.fbin", "user_ids.u64")


@dataclass
class ExportResult:
    """What :func:`export_embeddings` wrote."""

    out: Path
    num_items: int
    num_users: int | None
    dim: int
    files: list[Path] = field(default_factory=list)
    internal_id_files: list[str] = field(default_factory=list)  # uint64 id files holding internal ids


def artifact_dir(run: str | Path) -> Path:
    """The directory derived files (export, index) of a run live in.

    A run directory is used as is; for a checkpoint file ``RUN/checkpoints/best.pt`` it is ``RUN``, for
    any other checkpoint file its directory.
    """
    path = Path(run)
    if path.is_dir():
        return path
    parent = path.parent
    return parent.parent if parent.name == "checkpoints" else parent


def model_fingerprint(loaded: LoadedModel) -> str:
    """SHA-1 over the model's parameters and similarity: identifies the weights an artifact was made from."""
    digest = hashlib.sha1(loaded.similarity.encode())
    for name, tensor in sorted(loaded.model.state_dict().items()):
        digest.update(name.encode())
        if not isinstance(tensor, torch.Tensor):  # a feature tower's extra state: its schema (plain lists, ints)
            digest.update(json.dumps(tensor, sort_keys=True, default=str).encode())
            continue
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(memoryview(flat.view(torch.uint8).numpy()))
    return digest.hexdigest()


def export_embeddings(
    loaded: LoadedModel,
    inter: Interactions | None,
    out: str | Path,
    *,
    fbin: bool = False,
    batch_size: int = 1024,
    progress: bool = False,
    fingerprint: str | None = None,
) -> ExportResult:
    """Writes item vectors (and user vectors when ``inter`` is given) with their raw ids to ``out``.

    Args:
        loaded: The model (see :func:`seqrec.retrieval.recommend.load_model`).
        inter: Interaction histories of the users to embed; None exports items only.
        out: Export directory; created if missing. Files of a previous export are replaced.
        fbin: Also write the ``.fbin`` / ``.u64`` competition layout.
        batch_size: Users per encoder call.
        progress: Show a progress bar over user batches.
        fingerprint: :func:`model_fingerprint` of ``loaded`` if already computed.

    Raises:
        ValueError: If ``inter`` has a different number of items than the model, or ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if inter is not None and inter.num_items != loaded.model.num_items:
        raise ValueError(
            f"the data has {inter.num_items} items but the checkpoint was trained on {loaded.model.num_items}"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / META).unlink(missing_ok=True)  # the export is incomplete until meta.json is back
    # An items-only export must not leave users (or an ONNX encoder) of other weights behind.
    for name in _ITEM_FILES + _USER_FILES + (ONNX_FILE, ONNX_META):
        (out / name).unlink(missing_ok=True)

    items = loaded.item_vectors()
    result = ExportResult(out, len(items), None, items.shape[1])
    meta: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "fingerprint": fingerprint or model_fingerprint(loaded),
        "checkpoint": Path(loaded.state["path"]).name,
        "similarity": loaded.similarity,
        "normalized": loaded.similarity == "cosine",
        "dim": int(items.shape[1]),
        "num_items": int(len(items)),
        "num_users": None,
        "files": {},
        "fbin_ids": {},
    }
    _save_npy(out / "items.npy", items)
    _save_npy(out / "item_ids.npy", ids_array(loaded.item_ids[1:]))
    meta["files"].update(items="items.npy", item_ids="item_ids.npy")
    if fbin:
        write_fbin(out / "items.fbin", items)
        kind = _write_u64_ids(out / "item_ids.u64", loaded.item_ids[1:], first_internal=1, what="item")
        meta["files"].update(items_fbin="items.fbin", item_ids_u64="item_ids.u64")
        meta["fbin_ids"]["item_ids.u64"] = kind
    del items

    if inter is not None:
        result.num_users = inter.num_users
        meta["num_users"] = int(inter.num_users)
        _write_user_vectors(loaded, inter, out / "users.npy", batch_size, progress)
        _save_npy(out / "user_ids.npy", ids_array(inter.user_ids))
        meta["files"].update(users="users.npy", user_ids="user_ids.npy")
        if fbin:
            write_fbin(out / "users.fbin", np.load(out / "users.npy", mmap_mode="r"))
            kind = _write_u64_ids(out / "user_ids.u64", inter.user_ids, first_internal=0, what="user")
            meta["files"].update(users_fbin="users.fbin", user_ids_u64="user_ids.u64")
            meta["fbin_ids"]["user_ids.u64"] = kind

    with atomic_path(out / META) as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    result.files = [out / name for name in meta["files"].values()] + [out / META]
    result.internal_id_files = [name for name, kind in meta["fbin_ids"].items() if kind == "internal"]
    return result


def read_export_meta(out: str | Path) -> dict[str, Any] | None:
    """The ``meta.json`` of a complete export in ``out``, or None if there is none (or it is unreadable)."""
    path = Path(out) / META
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        return None
    return meta


def item_export(
    loaded: LoadedModel, out: str | Path, *, fingerprint: str | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """The exported item vectors in ``out`` (memory-mapped), exporting items first if missing or stale.

    Stale means made from other weights than ``loaded`` (its fingerprint differs).
    """
    fingerprint = fingerprint or model_fingerprint(loaded)
    meta = read_export_meta(out)
    vectors = None
    if meta is not None and meta.get("fingerprint") == fingerprint:
        try:
            vectors = np.load(Path(out) / meta["files"]["items"], mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, KeyError):
            vectors = None
    if vectors is None or vectors.shape != (loaded.model.num_items, meta.get("dim")):
        if meta is not None:
            log.info("the export in %s is from other weights or incomplete; exporting the item vectors again", out)
        export_embeddings(loaded, None, out, fingerprint=fingerprint)
        meta = read_export_meta(out)
        vectors = np.load(Path(out) / "items.npy", mmap_mode="r", allow_pickle=False)
    return vectors, meta


def _write_user_vectors(loaded: LoadedModel, inter: Interactions, path: Path, batch_size: int, progress: bool) -> None:
    """Fills an (U, D) float32 .npy in place, batch by batch; users of similar length share a batch."""
    maxlen = loaded.model.config.maxlen
    lengths = np.minimum(inter.lengths, maxlen)
    order = np.argsort(lengths, kind="stable")  # less padding per batch: the encoder is padding-invariant
    dim = loaded.model.config.hidden_dim
    with atomic_path(path) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(inter.num_users, dim))
        bar = tqdm(total=inter.num_users, desc="user vectors", unit="user", disable=not progress)
        with bar:
            for start in range(0, inter.num_users, batch_size):
                users = order[start : start + batch_size]
                starts, ends = inter.offsets[users], inter.offsets[users + 1]
                width = int(max(lengths[users].max(initial=1), 1))
                window = torch.from_numpy(left_padded_windows(inter.items, starts, ends, width))
                array[users] = loaded.user_vectors(window, torch.from_numpy(users))  # rows for user features
                bar.update(len(users))
        array.flush()
        del array


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def _write_u64_ids(path: Path, raw: np.ndarray, *, first_internal: int, what: str) -> str:
    """Raw ids as uint64 when they are all non-negative integers, else internal ids; returns which."""
    ids = ids_array(raw)
    if np.issubdtype(ids.dtype, np.integer) and (ids.size == 0 or ids.min() >= 0):
        write_ids_u64(path, ids)
        return "raw"
    log.warning(
        "raw %s ids are not non-negative integers; %s holds internal ids %d..%d (row + %d of %s_ids.npy, "
        "which maps them to raw ids)", what, path.name, first_internal, first_internal + len(ids) - 1,
        first_internal, what,
    )
    write_ids_u64(path, np.arange(first_internal, first_internal + len(ids), dtype=np.uint64))
    return "internal"
