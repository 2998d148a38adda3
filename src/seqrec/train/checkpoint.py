"""Checkpoints: one dict per file, written atomically, loaded with ``torch.load(weights_only=True)``.

A checkpoint holds everything needed to resume (model, optimizer, RNG state, step, epoch, best metric)
and to serve (resolved config, similarity, raw-id maps). Files have fixed names in the run directory:
``checkpoints/last.pt`` and ``checkpoints/best.pt``.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seqrec.errors import CheckpointError

SCHEMA_VERSION = 1
REQUIRED_KEYS = ("schema_version", "model", "config", "similarity", "num_items", "item_ids", "user_ids")


def ids_to_list(ids: np.ndarray) -> list:
    """Raw ids as plain Python ints/strs (what ``weights_only`` loading admits)."""
    if ids.dtype == object:
        return [v if isinstance(v, (int, str)) else str(v) for v in ids.tolist()]
    return ids.tolist()


def ids_from_list(values: list) -> np.ndarray:
    if values and all(isinstance(v, int) for v in values):
        return np.asarray(values, dtype=np.int64)
    return np.asarray(values, dtype=object)


def atomic_write(path: Path, write: Any) -> None:
    """Calls ``write(file_object)`` on a temporary file next to ``path``, fsyncs, then renames over ``path``.

    On any error the temporary file is removed and ``path`` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.filename is None:
            # write/fsync errors carry no file name, and "No space left on device" alone names nothing
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


class _ErrorRecordingFile:
    """Passes writes through and remembers the first OSError.

    torch.save reports a failed write of its zip writer as a RuntimeError ("unexpected pos ...") that
    no longer says why; the recorded OSError (e.g. ENOSPC) is what the user needs to see.
    """

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        self.handle.flush()


def _torch_save(state: dict[str, Any], handle: Any) -> None:
    recorder = _ErrorRecordingFile(handle)
    try:
        torch.save(state, recorder)
    except RuntimeError as exc:
        if recorder.error is not None:
            raise recorder.error from exc
        raise


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Atomically saves ``state`` (schema version added); a failed save keeps the previous file."""
    state = {"schema_version": SCHEMA_VERSION, **state}
    try:
        atomic_write(Path(path), lambda handle: _torch_save(state, handle))
    except OSError as exc:
        raise CheckpointError(f"could not save checkpoint {path}: {exc.strerror or exc}; the previous one is kept") from exc
    except RuntimeError as exc:  # torch's zip writer failed for a reason other than an OSError
        raise CheckpointError(f"could not save checkpoint {path}: {exc}; the previous one is kept") from exc


def migrate(state: dict[str, Any], path: Path) -> dict[str, Any]:
    """Brings an older checkpoint to the current schema, or explains why it cannot."""
    version = state.get("schema_version")
    if version == SCHEMA_VERSION:
        return state
    if isinstance(version, int) and version > SCHEMA_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint schema {version} is newer than this seqrec understands ({SCHEMA_VERSION}); upgrade seqrec"
        )
    raise CheckpointError(f"{path}: not a seqrec checkpoint (schema_version={version!r})")


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Loads a checkpoint without executing code from it (``weights_only=True``)."""
    path = Path(path)
    if path.is_dir():
        candidates = [path / "checkpoints" / "best.pt", path / "best.pt", path / "checkpoints" / "last.pt"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise FileNotFoundError(f"no checkpoint in run directory {path} (looked for checkpoints/best.pt)")
        path = found
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes), not a checkpoint")
    _verify_archive(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _weights_only_reason(exc)
        if reason.startswith("Unsupported global"):
            raise CheckpointError(
                f"{path}: refused to load: it names code to run, not only tensors and plain data ({reason}); "
                "nothing from it was executed"
            ) from exc
        raise CheckpointError(f"{path}: corrupt or not a checkpoint ({reason})") from exc
    except Exception as exc:  # a damaged file makes torch.load fail in many ways (KeyError, IndexError, ...)
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a seqrec checkpoint (top level is {type(state).__name__})")
    state = migrate(state, path)
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    for key, kind in _REQUIRED_TYPES.items():
        if not isinstance(state[key], kind) or isinstance(state[key], bool):
            raise CheckpointError(f"{path}: checkpoint field {key!r} has type {type(state[key]).__name__}")
    state["path"] = str(path)
    return state


_REQUIRED_TYPES = {"model": dict, "config": dict, "similarity": str, "num_items": int, "item_ids": list, "user_ids": list}


def _verify_archive(path: Path) -> None:
    """Checks the CRC-32 of every record of a zip-format checkpoint.

    torch.load does not verify them, so a flipped bit inside a tensor would load silently as a wrong
    weight. Files that are not zip archives are left to torch.load to reject.
    """
    try:
        if not zipfile.is_zipfile(path):
            return
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({exc})") from exc
    if bad is not None:
        raise CheckpointError(f"{path}: corrupt checkpoint: record {bad} fails its CRC check")


def _weights_only_reason(exc: pickle.UnpicklingError) -> str:
    """The one informative line of torch's weights_only error, without its advice to disable the check."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker not in text:
        return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    reason = text.split(marker, 1)[1].strip().split("\n\n")[0].strip()
    return reason.split(" Please use")[0]


def rng_state() -> dict[str, Any]:
    import random

    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
