"""RecBole's SASRec on a SASRec-format log, side by side with seqrec (issue 16, target 7).

RecBole is not a dependency of seqrec: install it into a separate environment (its pins clash with ours)::

    python3 -m venv /tmp/recbole-venv
    /tmp/recbole-venv/bin/pip install torch==2.13.0 'recbole==1.2.1' 'numpy<2' 'pandas<2.2' 'scipy<1.13'
    /tmp/recbole-venv/bin/pip install 'setuptools<70'   # recbole 1.2.1 imports pkg_resources

Then, three steps:

    # 1. the log as a RecBole atomic file (timestamp = position in the user's sequence, so RecBole's
    #    time-ordered leave-one-out split holds out the same last two items as seqrec's)
    python3 benchmarks/recbole_peer.py prepare ../shared/data/ml-1m/ml-1m.txt.xz --work /tmp/recbole
    # 2. train with RecBole's SASRec defaults, one torch thread, every output line stamped with the time
    timeout -s INT 3660 /tmp/recbole-venv/bin/python benchmarks/recbole_peer.py train --work /tmp/recbole \
        > runs/recbole-ml1m.log 2>&1
    # 3. the log as a seqrec-shaped run directory, so `seqrec report` can overlay it on seqrec's runs
    python3 benchmarks/recbole_peer.py convert runs/recbole-ml1m.log --out runs/recbole-ml1m

The configuration sets only the data fields, the protocol (leave-one-out by time order, full ranking,
NDCG@10 selects) and the device; everything else is RecBole's default for SASRec (CE over the whole
catalogue, 2 layers, 2 heads, hidden 64, dropout 0.5, MAX_ITEM_LIST_LENGTH 50, batch 2048, lr 1e-3,
every prefix of a training sequence a sample, early stop after 10 validations without improvement).
"""

from __future__ import annotations

import argparse
import json
import lzma
import re
import sys
import time
from pathlib import Path

CONFIG = """\
data_path: {data_path}
dataset: {name}
USER_ID_FIELD: user_id
ITEM_ID_FIELD: item_id
TIME_FIELD: timestamp
load_col:
  inter: [user_id, item_id, timestamp]
eval_args:
  split: {{LS: valid_and_test}}
  order: TO
  group_by: user
  mode: full
metrics: [Hit, NDCG, MRR]
topk: [10]
valid_metric: NDCG@10
train_neg_sample_args: ~
loss_type: CE
epochs: 1000
seed: {seed}
use_gpu: false
device: cpu
worker: 0
checkpoint_dir: {work}/saved
"""


def prepare(data: Path, work: Path, name: str, seed: int) -> None:
    opener = lzma.open if data.suffix == ".xz" else open
    folder = work / "dataset" / name
    folder.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    with opener(data, "rt") as src, open(folder / f"{name}.inter", "w") as dst:
        dst.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for line in src:
            user, item = line.split()
            counts[user] = counts.get(user, 0) + 1
            dst.write(f"{user}\t{item}\t{counts[user]}\n")
    (work / "sasrec.yaml").write_text(CONFIG.format(data_path=work / "dataset", name=name, seed=seed, work=work))
    print(f"{folder / (name + '.inter')}: {sum(counts.values())} events, {len(counts)} users")


class _Stamped:
    """A text stream that starts every line with the unix time."""

    def __init__(self, stream):
        self.stream, self.fresh = stream, True

    def write(self, text: str) -> None:
        for part in text.splitlines(keepends=True):
            if self.fresh:
                self.stream.write(f"{time.time():.1f} ")
            self.stream.write(part)
            self.fresh = part.endswith("\n")
        self.stream.flush()

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str):  # encoding, isatty, fileno, ...: the wrapped stream's
        return getattr(self.stream, name)


def train(work: Path, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    sys.stdout, sys.stderr = _Stamped(sys.stdout), _Stamped(sys.stderr)
    print(f"START {time.time():.1f}")
    from recbole.quick_start import run_recbole

    run_recbole(model="SASRec", config_file_list=[str(work / "sasrec.yaml")])


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_TRAIN = re.compile(r"epoch (\d+) training \[time: ([\d.]+)s, train loss: ([\d.]+)\]")
_EVAL = re.compile(r"epoch (\d+) evaluating \[time: ([\d.]+)s")
_METRIC = re.compile(r"(\w+@\d+|mrr@\d+) : ([\d.]+)")


def convert(log: Path, out: Path) -> None:
    """One metrics.jsonl record per validated epoch: epoch (1-based), valid, wall_seconds.

    RecBole logs the sum of its batch losses, not a mean: kept as recbole_train_loss_sum, out of the
    report's loss panel.
    """
    start, records, current, pending = None, [], {}, False
    for raw in log.read_text(errors="replace").splitlines():
        line = _ANSI.sub("", raw)
        stamp, _, text = line.partition(" ")
        if text.startswith("START"):
            start = float(stamp)
            continue
        if (m := _TRAIN.search(text)) is not None:
            current = {"epoch": int(m.group(1)) + 1, "recbole_train_loss_sum": float(m.group(3)),
                       "train_seconds": float(m.group(2))}
        elif (m := _EVAL.search(text)) is not None:
            current["eval_seconds"] = float(m.group(2))
        elif "valid result" in text:
            pending = True
        elif pending and (metrics := _METRIC.findall(text)):
            current["valid"] = {k.lower().replace("hit@", "hr@"): float(v) for k, v in metrics}
            current["wall_seconds"] = float(stamp) - start
            records.append(current)
            current, pending = {}, False
    if start is None or not records:
        raise SystemExit(f"{log}: no START line or no validated epoch")
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (out / "config.yaml").write_text("eval:\n  select_metric: ndcg@10\nrecbole:\n  model: SASRec (RecBole 1.2.1 defaults, CE)\n")
    (out / "command.txt").write_text(f"benchmarks/recbole_peer.py train (log {log})\n")
    best = max(records, key=lambda r: r["valid"]["ndcg@10"])
    print(f"{len(records)} epochs; best valid NDCG@10 {best['valid']['ndcg@10']:.4f} at epoch {best['epoch']} "
          f"({best['wall_seconds'] / 60:.1f} min); last record at {records[-1]['wall_seconds'] / 60:.1f} min")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("data", type=Path)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--name", default="seqrec-log")
    p.add_argument("--seed", type=int, default=42)
    t = sub.add_parser("train")
    t.add_argument("--work", type=Path, required=True)
    t.add_argument("--threads", type=int, default=1)
    c = sub.add_parser("convert")
    c.add_argument("log", type=Path)
    c.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.data, args.work.resolve(), args.name, args.seed)
    elif args.command == "train":
        train(args.work.resolve(), args.threads)
    else:
        convert(args.log, args.out)


if __name__ == "__main__":
    main()
