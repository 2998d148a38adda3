"""Faults lose no work: damaged checkpoints, full disks, I/O errors, NaN losses and half-written outputs.

Every fault either raises a clear error (CheckpointError / NonFiniteLossError / OSError naming the file)
or is survived, and in both cases what was on disk before is still there and loadable.
"""

from __future__ import annotations

import errno
import io
import json
import os
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import seqrec.train.checkpoint as checkpoint_module
from seqrec.cli import main
from seqrec.retrieval.recommend import write_recommendations
from seqrec.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from seqrec.train.loop import NonFiniteLossError, train
from seqrec.train.objective import Objective
from tests.conftest import tiny_config


def make_state(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "model": {"item_emb.weight": torch.randn(61, 16, generator=g), "proj.weight": torch.randn(16, 16, generator=g)},
        "config": {"model": {"hidden_dim": 16}},
        "similarity": "cosine",
        "num_items": 60,
        "item_ids": list(range(61)),
        "user_ids": [f"u{i}" for i in range(10)],
        "step": seed,
    }


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ---------------------------------------------------------------------------------------------------
# Corrupted checkpoints
# ---------------------------------------------------------------------------------------------------


def test_a_flipped_bit_in_a_weight_is_detected(tmp_path):
    path = tmp_path / "last.pt"
    state = make_state()
    save_checkpoint(state, path)
    raw = bytearray(path.read_bytes())
    where = bytes(raw).find(state["model"]["item_emb.weight"].numpy().tobytes())
    assert where > 0, "tensor bytes are stored uncompressed in the zip archive"
    raw[where + 100] ^= 0x01  # torch.load alone would return a slightly different weight
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: corrupt checkpoint: record ") + r".* fails its CRC check"):
        load_checkpoint(path)


def test_random_byte_flips_never_load_as_different_data(tmp_path):
    """Over many seeded single-byte flips, a load either fails clearly or returns exactly what was saved."""
    state = make_state()
    path = tmp_path / "flip.pt"
    save_checkpoint(state, path)
    expected = load_checkpoint(path)
    raw = path.read_bytes()
    rng = random.Random(1234)
    detected = 0
    for _ in range(300):
        flipped = bytearray(raw)
        flipped[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(flipped))
        try:
            loaded = load_checkpoint(path)
        except CheckpointError as exc:
            assert str(path) in str(exc)
            detected += 1
            continue
        # undetected flips hit bytes that carry no data (zip padding, timestamps, ...)
        assert same({k: v for k, v in loaded.items() if k != "path"}, {k: v for k, v in expected.items() if k != "path"})
    assert detected > 250


@pytest.mark.parametrize("keep", [0, 1, 30, 0.25, 0.5, 0.9, -1])
def test_truncated_checkpoint(tmp_path, keep):
    path = tmp_path / "best.pt"
    save_checkpoint(make_state(), path)
    raw = path.read_bytes()
    cut = keep if isinstance(keep, int) and keep >= 0 else (len(raw) - 1 if keep == -1 else int(len(raw) * keep))
    path.write_bytes(raw[:cut])
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ": (corrupt|empty file)"):
        load_checkpoint(path)


# ---------------------------------------------------------------------------------------------------
# Unwritable places, full disks and I/O errors while saving
# ---------------------------------------------------------------------------------------------------


def test_save_into_a_path_under_a_regular_file(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match=re.escape(f"could not save checkpoint {blocker / 'ckpt' / 'last.pt'}")):
        save_checkpoint(make_state(), blocker / "ckpt" / "last.pt")


def test_save_into_a_read_only_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: a read-only directory is still writable")
        with pytest.raises(CheckpointError, match="Permission denied; the previous one is kept"):
            save_checkpoint(make_state(), locked / "last.pt")
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("fault", ["fsync", "torch.save", "write", "replace"])
def test_io_error_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch, fault):
    path = tmp_path / "last.pt"
    save_checkpoint(make_state(1), path)
    before = path.read_bytes()
    expected_reason = "No space left on device"
    if fault == "fsync":
        monkeypatch.setattr(os, "fsync", enospc)
    elif fault == "torch.save":
        monkeypatch.setattr(torch, "save", enospc)
    elif fault == "write":
        # The disk fills up in the middle of torch.save's zip stream (torch itself would report only
        # "unexpected pos"); the saved error must still say why.
        real_fdopen = os.fdopen

        class FillsUp(io.RawIOBase):
            def __init__(self, handle):
                self.handle, self.written = handle, 0

            def writable(self):
                return True

            def write(self, data):
                self.written += len(data)
                if self.written > 1000:
                    enospc()
                return self.handle.write(data)

            def flush(self):
                self.handle.flush()

            def fileno(self):
                return self.handle.fileno()

            def close(self):
                if not self.closed:
                    super().close()  # flushes through self.flush while the real file is still open
                    self.handle.close()

        monkeypatch.setattr(checkpoint_module.os, "fdopen", lambda fd, mode: FillsUp(real_fdopen(fd, mode)))
    else:
        expected_reason = "Input/output error"

        def eio(*_args):
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(os, "replace", eio)
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(make_state(2), path)
    assert str(info.value) == f"could not save checkpoint {path}: {expected_reason}; the previous one is kept"
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert no_temp_files(tmp_path)


def _params(path: Path) -> dict:
    return load_checkpoint(path)["model"]


def test_disk_full_during_training_loses_no_work(tmp_path, monkeypatch, capsys):
    """The disk fills up mid-run: training stops with a clear error, last.pt stays loadable, and once
    space is back, --resume ends exactly where an uninterrupted run ends."""
    cfg = tiny_config(train={"epochs": 3, "checkpoint_every_steps": 2, "seed": 5})
    train(cfg, tmp_path / "full", progress=False, command=["t"])

    real_fsync = os.fsync
    calls = {"n": 0}

    def fills_up(fd):
        calls["n"] += 1
        if calls["n"] > 7:  # a few saves succeed (each save fsyncs the file and its directory)
            enospc()
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fills_up)
    with pytest.raises(CheckpointError, match="No space left on device; the previous one is kept"):
        train(cfg, tmp_path / "run", progress=False, command=["t"])
    monkeypatch.undo()
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    assert load_checkpoint(last)["step"] > 0
    assert no_temp_files(last.parent)
    train(cfg, tmp_path / "run", resume=True, progress=False, command=["t"])
    full, resumed = _params(tmp_path / "full" / "checkpoints" / "last.pt"), _params(last)
    for name in full:
        torch.testing.assert_close(resumed[name], full[name], rtol=0, atol=1e-6)


def test_disk_full_through_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(os, "fsync", enospc)
    code = main(["train", "--out", str(tmp_path / "run"), "--quiet", "--set", "train.epochs=1",
                 "--set", "data.synthetic_users=100", "--set", "model.hidden_dim=8", "--set", "model.maxlen=10"])
    err = capsys.readouterr().err
    assert code == 2
    # the first durable write is config.yaml; the message names it
    assert err.startswith("seqrec train: error: [Errno 28] No space left on device: "), err
    assert str(tmp_path / "run" / "config.yaml") in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------------
# NaN / inf loss
# ---------------------------------------------------------------------------------------------------


def _poison_loss_at(monkeypatch, call: int, value: float, best: Path, seen: dict) -> None:
    """Objective.forward returns ``value`` on its ``call``-th call; records best.pt just before."""
    original = Objective.forward
    count = {"n": 0}

    def forward(self, model, batch, generator=None):
        count["n"] += 1
        loss = original(self, model, batch, generator)
        if count["n"] == call:
            seen["bytes"], seen["mtime"] = best.read_bytes(), best.stat().st_mtime_ns
            return loss * value
        return loss

    monkeypatch.setattr(Objective, "forward", forward)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_loss_stops_training_and_never_touches_best(tmp_path, monkeypatch, value):
    cfg = tiny_config(train={"epochs": 3, "checkpoint_every_steps": 2})
    run = tmp_path / "run"
    best = run / "checkpoints" / "best.pt"
    seen: dict = {}
    # 300 users / batch 64 = 5 steps per epoch: call 11 is epoch 3, step 0, global step 10
    _poison_loss_at(monkeypatch, 11, value, best, seen)
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg, run, progress=False, command=["t"])
    message = str(info.value)
    assert f"loss is {value} at epoch 3 step 0 (global step 10), lr 0.003, loss infonce" in message
    assert "the best checkpoint is untouched" in message
    assert best.read_bytes() == seen["bytes"] and best.stat().st_mtime_ns == seen["mtime"]
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2  # the last good state is kept


def test_nan_loss_through_the_cli(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    best = run / "checkpoints" / "best.pt"
    seen: dict = {}
    _poison_loss_at(monkeypatch, 4, float("nan"), best, seen)  # 2 steps per epoch: epoch 2, step 1
    code = main(["train", "--out", str(run), "--quiet", "--set", "train.epochs=3", "--set", "data.synthetic_users=100",
                 "--set", "train.batch_size=64", "--set", "model.hidden_dim=8", "--set", "model.maxlen=10",
                 "--set", "train.num_threads=1", "--set", "train.warmup_steps=0"])
    err = capsys.readouterr().err
    assert code == 2
    assert "seqrec train: error: loss is nan at epoch 2 step 1 (global step 3), lr 0.003, loss infonce" in err
    assert best.read_bytes() == seen["bytes"] and best.stat().st_mtime_ns == seen["mtime"]


def test_absurd_learning_rate(tmp_path, capsys):
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 1 step \d+ \(global step \d+\), lr 1e\+30"):
        train(tiny_config(train={"lr": 1e30}, loss={"name": "bce"}), tmp_path / "run", progress=False, command=["t"])
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()
    code = main(["train", "--out", str(tmp_path / "run2"), "--set", "train.lr=1.0e+300"])
    assert code == 2
    assert "train.lr must fit in float32 (<= 3.4e38), got 1e+300" in capsys.readouterr().err
    code = main(["train", "--out", str(tmp_path / "run2"), "--set", "train.lr=1e300"])  # YAML 1.1: a string
    assert code == 2
    assert "got str '1e300' (YAML reads 1e300 as text; write 1.0e+300)" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# Kills at awkward moments (simulated in-process; tests/test_kill_resume.py uses real SIGKILLs)
# ---------------------------------------------------------------------------------------------------


def test_torn_metrics_line_and_stale_temp_files_after_a_kill(tmp_path, monkeypatch):
    cfg = tiny_config(train={"epochs": 3, "checkpoint_every_steps": 2, "seed": 3})
    original = Objective.forward
    count = {"n": 0}

    def interrupted(self, model, batch, generator=None):
        count["n"] += 1
        if count["n"] == 13:  # mid-epoch 3
            raise KeyboardInterrupt
        return original(self, model, batch, generator)

    monkeypatch.setattr(Objective, "forward", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", progress=False, command=["t"])
    monkeypatch.undo()
    metrics = tmp_path / "run" / "metrics.jsonl"
    with open(metrics, "a", encoding="utf-8") as handle:
        handle.write('{"epoch": 3, "step": 1')  # a record torn by the kill
    stale = tmp_path / "run" / "checkpoints" / ".last.pt.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    train(cfg, tmp_path / "run", resume=True, progress=False, command=["t"])
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1, 2, 3]
    assert not stale.exists()


def test_crash_between_metrics_record_and_last_checkpoint(tmp_path, monkeypatch):
    """The epoch-end record is written before last.pt: a crash between them is neither lost nor duplicated."""
    cfg = tiny_config(train={"epochs": 3, "checkpoint_every_steps": 2, "seed": 3})
    real_save = checkpoint_module.save_checkpoint
    saves = {"epoch_end_last": 0}

    def crashing_save(state, path):
        real_save(state, path)
        if Path(path).name == "last.pt" and state["epoch_step"] == 0 and state["epoch"] == 2:
            saves["epoch_end_last"] += 1
            raise KeyboardInterrupt  # killed right after the epoch-2 last.pt (and, before it, the record)

    import seqrec.train.loop as loop_module

    monkeypatch.setattr(loop_module, "save_checkpoint", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", progress=False, command=["t"])
    monkeypatch.undo()
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert saves["epoch_end_last"] == 1
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1, 2]
    train(cfg, tmp_path / "run", resume=True, progress=False, command=["t"])
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1, 2, 3]


# ---------------------------------------------------------------------------------------------------
# Recommendations output
# ---------------------------------------------------------------------------------------------------


def _batches(fail_after: int):
    users = np.arange(4)
    for b in range(3):
        if b == fail_after:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        yield users[b : b + 1], np.array([[1, 2, 3]]), np.array([[0.9, 0.5, 0.1]])


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_failed_recommendation_write_keeps_the_old_file(tmp_path, monkeypatch, suffix):
    out = tmp_path / f"recs{suffix}"
    user_ids = np.array(["a", "b", "c", "d"], dtype=object)
    item_ids = np.array(["", "x", "y", "z"], dtype=object)
    assert write_recommendations(out, _batches(fail_after=99), user_ids, item_ids) == 3
    old = out.read_bytes()
    with pytest.raises(OSError, match="Input/output error"):
        write_recommendations(out, _batches(fail_after=2), user_ids, item_ids)  # fails after two users
    assert out.read_bytes() == old and no_temp_files(tmp_path)
    monkeypatch.setattr(os, "fsync", enospc)
    with pytest.raises(OSError, match="No space left on device"):
        write_recommendations(out, _batches(fail_after=99), user_ids, item_ids)
    monkeypatch.undo()
    assert out.read_bytes() == old and no_temp_files(tmp_path)
    new = tmp_path / f"new{suffix}"
    with pytest.raises(OSError):
        write_recommendations(new, _batches(fail_after=1), user_ids, item_ids)
    assert not new.exists() and no_temp_files(tmp_path)


def test_failed_recommendation_write_through_the_cli(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), "--quiet", "--set", "train.epochs=1", "--set", "data.synthetic_users=100",
                 "--set", "model.hidden_dim=8", "--set", "model.maxlen=10", "--set", "train.num_threads=1"]) == 0
    out = tmp_path / "recs.csv"
    assert main(["recommend", str(run), "--users", "u1", "u2", "--out", str(out), "--quiet"]) == 0
    old = out.read_bytes()
    import seqrec.retrieval.recommend as recommend_module

    real = recommend_module.recommend_batches

    def half_then_fail(*args, **kwargs):
        for i, batch in enumerate(real(*args, **kwargs, batch_size=1)):
            if i == 1:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            yield batch

    monkeypatch.setattr(recommend_module, "recommend_batches", half_then_fail)
    capsys.readouterr()
    assert main(["recommend", str(run), "--users", "u3", "u4", "u5", "--out", str(out), "--quiet"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert out.read_bytes() == old and no_temp_files(tmp_path)
