"""Real SIGKILLs: `python -m seqrec train` is killed at 5 seeded random moments and resumed each time.

After every kill, `checkpoints/last.pt` (and `best.pt` if present) must load; after the final resume the
model must equal an uninterrupted run with the same seed (atol 1e-6), metrics.jsonl must hold each epoch
exactly once and no temporary file may be left behind.

The kill moments: after a seeded number (1-6) of new `last.pt` saves of the running process, plus a
seeded fraction of the time between its last two saves, so kills land inside steps, inside checkpoint
writes, in validation and at epoch ends, on slow and fast machines alike. Tiny data and `train.checkpoint_every_steps=1` keep it to well under two minutes on 2 cores.
"""

from __future__ import annotations

import json
import random
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from seqrec.config import load_config
from seqrec.train.checkpoint import load_checkpoint
from seqrec.train.loop import train
from tests.processes import child_env, failure, process_group
from tests.processes import run as run_command

EPOCHS = 6
OVERRIDES = [
    "data.synthetic_users=300", "data.synthetic_items=60", "model.maxlen=20", "model.hidden_dim=16",
    "model.num_blocks=1", "model.dropout=0.1", "train.batch_size=32", "train.lr=0.003", "train.seed=13",
    "train.patience=0", f"train.epochs={EPOCHS}", "train.checkpoint_every_steps=1", "train.num_threads=1",
    "eval.batch_size=128",
]
KILLS = 5
SEED = 20240607


def _file_version(path: Path) -> tuple[int, int] | None:
    """Changes whenever the file is replaced (atomic_write renames a new inode over it)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def _command(run: Path, resume: bool) -> list[str]:
    sets = [arg for value in OVERRIDES for arg in ("--set", value)]
    return [sys.executable, "-m", "seqrec", "train", "--quiet", "--out", str(run), *sets, *(["--resume"] if resume else [])]


def _kill_after_saves(run: Path, resume: bool, saves: int, fraction: float, log: Path) -> tuple[int, int]:
    """Starts a training process, waits for ``saves`` new last.pt versions, then ``fraction`` of the
    interval between the last two, and SIGKILLs it.

    Returns:
        (return code, saves observed); the return code is -SIGKILL when the kill hit a running process.
    """
    last = run / "checkpoints" / "last.pt"
    seen, version = 0, _file_version(last)
    changed_at, interval = time.monotonic(), 0.01
    with open(log, "ab") as out, process_group(_command(run, resume), stdout=out, stderr=out, env=child_env(),
                                               cwd=run.parent) as proc:
        deadline = time.monotonic() + 300
        while seen < saves and proc.poll() is None and time.monotonic() < deadline:
            now = _file_version(last)
            if now is not None and now != version:
                if seen:  # the first change comes after the start-up, not after a step
                    interval = time.monotonic() - changed_at
                seen, version, changed_at = seen + 1, now, time.monotonic()
            time.sleep(0.002)
        time.sleep(fraction * interval)
        proc.send_signal(signal.SIGKILL)
        return proc.wait(timeout=60), seen


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted_run(tmp_path):
    rng = random.Random(SEED)
    run = tmp_path / "killed"
    log = tmp_path / "train.log"

    kills = []
    for i in range(KILLS):
        saves, fraction = rng.randint(1, 6), rng.random()
        code, seen = _kill_after_saves(run, resume=i > 0, saves=saves, fraction=fraction, log=log)
        assert code == -signal.SIGKILL, f"kill {i + 1}: the process ended by itself ({code}); {log}:\n{log.read_text()[-12000:]}"
        assert seen == saves, f"kill {i + 1}: saw {seen} of {saves} checkpoint saves before the deadline"
        # a kill at any moment leaves loadable checkpoints (the atomic rename is all or nothing)
        state = load_checkpoint(run / "checkpoints" / "last.pt")
        best = run / "checkpoints" / "best.pt"
        if best.exists():
            load_checkpoint(best)
        kills.append((state["epoch"], state["epoch_step"], state["step"]))
    steps = [step for _, _, step in kills]
    assert steps == sorted(steps), f"each resumed segment makes progress: {kills}"

    done = run_command(_command(run, resume=True), env=child_env(), cwd=tmp_path, timeout=600)
    assert done.returncode == 0, failure(done)

    # the uninterrupted reference, same seed and settings, trained in this process
    threads = torch.get_num_threads()
    try:
        train(load_config(None, OVERRIDES), tmp_path / "uninterrupted", progress=False, command=["test"])
    finally:
        torch.set_num_threads(threads)

    reference = load_checkpoint(tmp_path / "uninterrupted" / "checkpoints" / "last.pt")
    resumed = load_checkpoint(run / "checkpoints" / "last.pt")
    assert resumed["step"] == reference["step"] and resumed["epoch"] == EPOCHS
    for name, tensor in reference["model"].items():
        torch.testing.assert_close(resumed["model"][name], tensor, rtol=0, atol=1e-6, msg=f"parameter {name}")
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, EPOCHS + 1))
    assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]
    results = json.loads((run / "results.json").read_text())
    expected = json.loads((tmp_path / "uninterrupted" / "results.json").read_text())
    assert results["best_epoch"] == expected["best_epoch"]
    assert results["test"]["ndcg@10"] == pytest.approx(expected["test"]["ndcg@10"], abs=1e-6)
    worst = max(float((resumed["model"][k] - t).abs().max()) for k, t in reference["model"].items())
    print(f"kill points (epoch, step in epoch, global step): {kills}; largest parameter difference {worst:.3g}")
