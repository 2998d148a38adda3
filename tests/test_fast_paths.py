"""GPU fast paths: bf16 autocast, DataLoader workers, torch.compile, config validation.

On CPU the bf16 checks use CPU bfloat16 autocast (the same numerics question as on a GPU: 8 mantissa
bits in the encoder); the CUDA-only checks are marked ``gpu`` and skipped without a CUDA device.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqrec.config import ConfigError
from seqrec.data.batches import BatchBuilder, left_padded_windows
from seqrec.data.split import leave_one_out
from seqrec.data.synthetic import generate_synthetic
from seqrec.model.sasrec import SASRec, score_items
from seqrec.train.checkpoint import load_checkpoint
from seqrec.train.loop import item_counts, train
from seqrec.train.objective import Objective
from seqrec.train.precision import resolve_precision
from tests.conftest import tiny_config

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _model_and_batch(device="cpu"):
    config = tiny_config(model={"dropout": 0.0})
    inter = generate_synthetic(300, 60, seed=0)
    split = leave_one_out(inter)
    builder = BatchBuilder(inter.offsets, inter.items, split.train_lengths, inter.num_items, config.model.maxlen)
    torch.manual_seed(0)
    model = SASRec(inter.num_items, config.model).to(device)
    return model, builder.batch(seed=1, epoch=0, step=0, batch_size=64).to(device), item_counts(split)


@pytest.mark.parametrize("loss", ["infonce", "bce"])
def test_bf16_autocast_loss_matches_fp32(loss):
    model, batch, counts = _model_and_batch()
    config = tiny_config(loss={"name": loss}).loss
    fp32 = Objective(config, counts)(model, batch)
    bf16 = Objective(config, counts, precision="bf16")(model, batch)
    assert bf16.dtype == torch.float32  # the loss and its log-sum-exp run outside autocast
    assert bf16.item() == pytest.approx(fp32.item(), rel=1e-2)
    bf16.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_bf16_training_and_top10_agree_with_fp32(tmp_path):
    """Trains with precision=bf16 (CPU autocast), then ranks with the encoder in bf16 and in fp32."""
    config = tiny_config(train={"precision": "bf16", "epochs": 2})
    train(config, tmp_path / "run", progress=False, command=["t"])
    state = load_checkpoint(tmp_path / "run")
    model = SASRec(state["num_items"], config.model)
    model.load_state_dict(state["model"])
    model.eval()
    inter = generate_synthetic(300, 60, seed=0)
    histories = torch.from_numpy(left_padded_windows(inter.items, inter.offsets[:-1], inter.offsets[1:], 20))
    tops = []
    for bf16 in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            users = model.user_embeddings(histories)
        scores = score_items(users.float(), model.item_embeddings(), state["similarity"])[:, 1:]
        tops.append(scores.topk(10, dim=1).indices)
    overlap = np.mean([len(set(a.tolist()) & set(b.tolist())) / 10 for a, b in zip(*tops, strict=True)])
    assert overlap >= 0.95


def test_dataloader_workers_train_the_same_model(tmp_path):
    for workers in (0, 2):
        cfg = tiny_config(train={"epochs": 1, "num_workers": workers})
        train(cfg, tmp_path / f"w{workers}", progress=False, command=["t"])
    a, b = (load_checkpoint(tmp_path / f"w{w}" / "checkpoints" / "last.pt")["model"] for w in (0, 2))
    assert all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.parametrize(("speedup", "expected"), [(3.0, "bf16"), (1.2, "fp32"), (0.05, "fp32")])
def test_auto_precision_follows_the_measured_bf16_speed(monkeypatch, speedup, expected):
    monkeypatch.setattr("seqrec.train.precision.bf16_speedup", lambda: speedup)
    assert resolve_precision("auto", torch.device("cpu")) == expected
    assert resolve_precision("auto", torch.device("cuda")) == "fp32"  # CUDA: TF32, bf16 only when asked
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"


def test_explicit_bf16_on_a_slow_cpu_warns_but_is_kept(monkeypatch, caplog):
    monkeypatch.setattr("seqrec.train.precision.bf16_speedup", lambda: 0.05)
    with caplog.at_level("WARNING"):
        assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert "no bfloat16 instructions" in caplog.text


def test_bf16_run_validates_in_bf16_and_reports_float32(tmp_path, monkeypatch):
    # The training-time validations take the bf16 encoder; the final valid numbers are recomputed in fp32.
    import seqrec.train.loop as loop

    calls = []
    real = loop.evaluate_model
    monkeypatch.setattr(loop, "evaluate_model", lambda *a, **kw: calls.append(kw.get("bf16")) or real(*a, **kw))
    result = train(tiny_config(train={"precision": "bf16", "epochs": 2}), tmp_path / "run", progress=False,
                   command=["t"])
    assert calls == [True, True, False, False]  # two validations, then valid and test in float32
    assert 0 < result.best_valid["ndcg@10"] <= 1


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("precision", "fp16", "train.precision must be one of"), ("num_workers", -1, "num_workers must be >= 0")],
)
def test_fast_path_config_is_validated(key, value, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(train={key: value})


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("loss", ["infonce", "bce"])
def test_cuda_bf16_loss_matches_fp32(loss):
    model, batch, counts = _model_and_batch("cuda")
    config = tiny_config(loss={"name": loss}).loss
    fp32 = Objective(config, counts)(model, batch)
    bf16 = Objective(config, counts, precision="bf16")(model, batch)
    assert bf16.dtype == torch.float32
    assert bf16.item() == pytest.approx(fp32.item(), rel=1e-2)


@pytest.mark.gpu
@needs_cuda
def test_cuda_compiled_bf16_training_with_workers(tmp_path):
    """compile + bf16 + pinned DataLoader workers on CUDA reach the quality of plain fp32 training."""
    results = {}
    for name, extra in (("plain", {}), ("fast", {"precision": "bf16", "compile": True, "num_workers": 2})):
        cfg = tiny_config(train={"device": "cuda", "epochs": 3, **extra})
        results[name] = train(cfg, tmp_path / name, progress=False, command=["t"])
    assert results["fast"].best_valid["ndcg@10"] == pytest.approx(results["plain"].best_valid["ndcg@10"], abs=0.05)
