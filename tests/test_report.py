"""seqrec report (PNG + HTML from run directories) and the TensorBoard writer, on tiny real runs."""

from __future__ import annotations

import base64
import json
import re
import shutil
import sys

import pytest

from seqrec.cli import main
from seqrec.report import _config_blocks, read_run, read_runs, write_report
from seqrec.train.loop import train
from tests.conftest import tiny_config

pytest.importorskip("matplotlib")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    a, b = root / "infonce", root / "gbce"
    data = {"synthetic_users": 120, "synthetic_items": 40}
    train(tiny_config(data=data, train={"epochs": 3}), a, progress=False, command=["seqrec", "train", "a"])
    train(tiny_config(data=data, loss={"name": "gbce", "negatives_per_position": 4}, train={"epochs": 2}), b,
          progress=False, command=["seqrec", "train", "b"])
    return a, b


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _embedded_png(page: str) -> bytes:
    match = re.search(r'<img [^>]*src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert match, "the page embeds the PNG"
    return base64.b64decode(match.group(1))


def test_cli_report_writes_a_png_and_a_page_that_embeds_it(runs, capsys):
    run = runs[0]
    assert main(["report", str(run)]) == 0
    assert "report.png" in capsys.readouterr().out
    png = (run / "report.png").read_bytes()
    width, height = _png_size(png)
    assert width >= 1200 and height >= 900
    page = (run / "report.html").read_text()
    assert _embedded_png(page) == png
    results = json.loads((run / "results.json").read_text())
    # The page carries the test metrics, the popularity baseline and the full config and command.
    assert f"{results['test']['ndcg@10']:.4f}" in page
    assert f"{results['popularity']['test']['ndcg@10']:.4f}" in page
    assert "seqrec train a" in page and "hidden_dim: 16" in page


def test_overlay_of_two_runs(runs, tmp_path):
    png_path, page_path = write_report(list(runs), tmp_path / "sub" / "both.png")
    assert png_path == tmp_path / "sub" / "both.png" and page_path.suffix == ".html"
    single, _ = write_report([runs[0]], tmp_path / "one")
    both = png_path.read_bytes()
    assert _png_size(both)[0] == _png_size(single.read_bytes())[0] and both != single.read_bytes()
    page = page_path.read_text()
    assert _embedded_png(page) == both
    assert page.count("<h2>") == 2 and "<h2>infonce</h2>" in page and "<h2>gbce</h2>" in page
    # The config columns show what tells the runs apart, then what they share.
    blocks = _config_blocks(read_runs(list(runs)), ["C0", "C1"])
    assert [title for title, _, _ in blocks] == ["infonce", "gbce", "shared by every run"]
    assert "loss.name = gbce" in blocks[1][2] and "model.hidden_dim = 16" in blocks[2][2]
    assert not any(line.startswith("model.") for line in blocks[1][2])


def test_run_still_training_and_older_records(runs, tmp_path):
    run = tmp_path / "live"
    shutil.copytree(runs[0], run, ignore=shutil.ignore_patterns("checkpoints", "report*"))
    (run / "results.json").unlink()
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for r in records:  # as written before wall_seconds existed
        r.pop("wall_seconds")
    lines = [json.dumps(r) for r in records]
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"epoch": 4, "tor')  # torn by a kill
    log = read_run(run)
    assert len(log.records) == 3 and log.results is None
    assert log.best_epoch == max(records, key=lambda r: r["valid"]["ndcg@10"])["epoch"]
    minutes, measured = log.minutes()
    assert not measured and minutes == sorted(minutes) and minutes[0] > records[0]["train_seconds"] / 60
    png, page = write_report([run], tmp_path / "live-report")
    assert _png_size(png.read_bytes()) and "still training" in page.read_text()


def test_report_errors_name_the_file(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "metrics.jsonl: not found" in capsys.readouterr().err
    (tmp_path / "empty" / "metrics.jsonl").write_text('{"epoch": 1}\nnot json\n{"epoch": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a JSON record"):
        read_run(tmp_path / "empty")


def test_tensorboard_log_writes_the_records(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from seqrec.train.tensorboard import TensorboardLog

    log = TensorboardLog(tmp_path)
    log.epoch({"epoch": 1, "step": 5, "train_loss": 3.0, "lr": 1e-3, "epoch_seconds": 2.0})
    log.epoch({"epoch": 2, "step": 10, "train_loss": 2.5, "lr": 1e-3, "epoch_seconds": 2.0,
               "eval_seconds": 0.5, "valid": {"ndcg@10": 0.25, "hr@10": 0.5}})
    log.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/lr", "time/epoch_seconds", "time/eval_seconds", "valid/ndcg@10",
            "valid/hr@10"} <= set(events.Tags()["scalars"])
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 3.0), (2, 2.5)]
    assert [(e.step, e.value) for e in events.Scalars("valid/ndcg@10")] == [(2, 0.25)]


def test_tensorboard_log_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    from seqrec.train.tensorboard import TensorboardLog

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(RuntimeError, match=r"pip install 'seqrec\[tensorboard\]'"):
        TensorboardLog(tmp_path)


def test_a_run_without_training_loss_overlays(runs, tmp_path):
    # another toolkit's log converted to a run directory (benchmarks/recbole_peer.py): validation only
    peer = tmp_path / "peer"
    peer.mkdir()
    (peer / "metrics.jsonl").write_text(json.dumps(
        {"epoch": 1, "valid": {"ndcg@10": 0.06, "hr@10": 0.13}, "wall_seconds": 3240.0}) + "\n")
    png, page = write_report([runs[0], peer], tmp_path / "with-peer")
    assert _png_size(png.read_bytes()) and "peer" in page.read_text()
