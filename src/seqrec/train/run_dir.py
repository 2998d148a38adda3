"""The run directory: refuse to reuse one by accident, prepare it, and keep metrics.jsonl consistent on resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from seqrec.errors import RunDirError
from seqrec.train.checkpoint import atomic_write

RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoints")


def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> bool:
    """Raises RunDirError if ``run_dir`` cannot be used as asked; changes nothing. Returns: it holds a run."""
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite contradict each other")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir} exists and is not a directory; --out names the run directory")
    existing = run_dir.is_dir() and any((run_dir / name).exists() for name in RUN_FILES)
    if existing and not (resume or overwrite):
        raise RunDirError(f"{run_dir} already holds a run; pass --resume to continue it or --overwrite to replace it")
    if resume and not (run_dir / "checkpoints" / "last.pt").is_file():
        raise RunDirError(f"--resume: no checkpoint at {run_dir / 'checkpoints' / 'last.pt'}")
    return existing


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Creates ``run_dir``; refuses to reuse one that holds a run unless resuming or overwriting.

    Call it once the data and model are known to be usable: with ``overwrite`` it deletes the old run.
    """
    existing = check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    # A kill during an atomic write leaves its temporary file behind; it is never read, only removed.
    for stale in (run_dir / "checkpoints").glob(".*.pt.*.tmp") if existing else ():
        stale.unlink(missing_ok=True)
    if overwrite and existing:
        for name in ("metrics.jsonl", "results.json"):
            (run_dir / name).unlink(missing_ok=True)
        for name in ("last.pt", "best.pt"):
            (run_dir / "checkpoints" / name).unlink(missing_ok=True)
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise RunDirError(f"run directory {run_dir} is not writable: {exc.strerror or exc}") from exc


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def truncate_metrics(path: Path, step: int) -> None:
    """On resume, drops records written after the checkpoint being resumed (they will be rewritten)."""
    if not path.is_file():
        return
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    keep = []
    for lineno, line in enumerate(lines, start=1):
        if not line:
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if lineno == len(lines):
                break  # a record torn by a kill mid-append; the resumed run writes it again
            raise RunDirError(f"{path}:{lineno}: not a JSON record ({exc.msg}); fix or remove the line to resume") from exc
        if record.get("step", 0) <= step:
            keep.append(line)
    atomic_write(path, lambda h: h.write("".join(line + "\n" for line in keep).encode()))
