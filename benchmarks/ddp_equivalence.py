"""DDP equivalence on real data: N processes (torchrun) against one, at the same global batch.

Trains the same configuration twice through the CLI, once as one process and once with
``seqrec train --nproc N`` (torchrun, gloo on CPU / NCCL on GPUs), for a fixed number of epochs with early
stopping off, and compares the validation NDCG@10 of every epoch (target: |difference| <= 0.005 at the
last epoch). Data order, batches and negatives are the same in both runs; dropout masks are not (each
process draws its own), so the runs agree up to that noise.

Usage:
    python benchmarks/ddp_equivalence.py --data ../shared/data/ml-1m/ml-1m.txt.xz --epochs 2 \\
        --set model.maxlen=50

The markdown report goes to stdout and to ``benchmarks/results/ddp.md``; the runs to ``--runs``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

TARGET = 0.005
METRIC = "ndcg@10"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "ddp.md"


def run_training(args: argparse.Namespace, nproc: int, out: Path) -> tuple[float, list[dict], dict]:
    """Trains through the CLI; returns (wall seconds, metrics.jsonl records, results.json)."""
    command = [sys.executable, "-m", "seqrec", "train", "--data", args.data, "--out", str(out), "--overwrite",
               "--quiet", "--set", f"train.epochs={args.epochs}", "--set", "train.patience=0"]
    if args.config:
        command += ["--config", args.config]
    for override in args.set:
        command += ["--set", override]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    print(f"running: {' '.join(command)}", file=sys.stderr)
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=sys.stderr)
    seconds = time.perf_counter() - started
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return seconds, records, json.loads((out / "results.json").read_text())


def report(args: argparse.Namespace, runs: dict[int, tuple[float, list[dict], dict]], command: str) -> str:
    (wall_1, rec_1, res_1), (wall_n, rec_n, res_n) = runs[1], runs[args.nproc]
    n = args.nproc
    lines = [
        f"# DDP equivalence: {n} processes vs 1 at the same global batch",
        "",
        f"- command: `{command}`",
        f"- data: `{args.data}`; config: `{args.config or 'defaults'}`; overrides: {', '.join(f'`{s}`' for s in args.set) or 'none'}; "
        f"{args.epochs} epochs, early stopping off",
        f"- machine: {os.cpu_count()} CPU cores ({platform.machine()}), "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}; "
        f"torch {torch.__version__}, Python {platform.python_version()}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        "",
        f"| epoch | train loss (1) | train loss ({n}) | valid {METRIC} (1) | valid {METRIC} ({n}) | difference |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for a, b in zip(rec_1, rec_n, strict=True):
        va, vb = a["valid"][METRIC], b["valid"][METRIC]
        lines.append(f"| {a['epoch']} | {a['train_loss']:.4f} | {b['train_loss']:.4f} | {va:.4f} | {vb:.4f} | "
                     f"{vb - va:+.4f} |")
    diff = rec_n[-1]["valid"][METRIC] - rec_1[-1]["valid"][METRIC]
    verdict = "within" if abs(diff) <= TARGET else "OUTSIDE"
    lines += [
        "",
        f"- test {METRIC} of the best checkpoint: {res_1['test'][METRIC]:.4f} (1 process), "
        f"{res_n['test'][METRIC]:.4f} ({n} processes)",
        f"- training seconds: {rec_1[-1]['train_seconds']:.0f} (1 process), {rec_n[-1]['train_seconds']:.0f} "
        f"({n} processes); wall seconds including start-up and evaluation: {wall_1:.0f}, {wall_n:.0f}",
        f"- last-epoch validation {METRIC} difference {diff:+.4f}: {verdict} the target of {TARGET}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/ml-1m/ml-1m.txt.xz", help="interaction log")
    parser.add_argument("--config", help="YAML config of both runs (default: the built-in defaults)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of both runs (early stopping off)")
    parser.add_argument("--nproc", type=int, default=2, help="processes of the distributed run")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="config override for both runs (repeatable)")
    parser.add_argument("--runs", type=Path, default=Path("runs/ddp-equivalence"), help="where the runs go")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    if args.nproc < 2:
        parser.error("--nproc must be >= 2")
    command = " ".join(["python", "benchmarks/ddp_equivalence.py", *(sys.argv[1:] if argv is None else argv)])
    runs = {n: run_training(args, n, args.runs / f"nproc{n}") for n in (1, args.nproc)}
    text = report(args, runs, command)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)


if __name__ == "__main__":
    main()
