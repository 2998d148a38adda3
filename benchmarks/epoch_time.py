"""One full ML-1M training epoch with BCE and with in-batch InfoNCE, timed in the same run.

The issue-3 target: an InfoNCE epoch (B=128, L=200, D=64, 2 blocks, the design note's pool) takes at
most 1.5x the BCE epoch. Each objective trains ``--repeats`` single epochs from scratch, interleaved
(bce, infonce, bce, infonce, ...) so that machine noise hits both alike; the table reports the median
epoch time (training only: the validation pass after the epoch is not counted).

Example:
    python benchmarks/epoch_time.py --data ../shared/data/ml-1m/ml-1m.txt.xz --repeats 2 \
        --out benchmarks/results/epoch_time.md
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from seqrec.config import load_config
from seqrec.data.readers import read_interactions
from seqrec.train.loop import train

OBJECTIVES = {
    "bce": ["loss.name=bce"],
    "infonce (note: in-batch pool, T=0.07)": ["loss.name=infonce", "loss.temperature=0.07"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], help="extra section.key=value overrides for both")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    base = ["model.maxlen=200", "model.hidden_dim=64", "model.num_blocks=2", "train.batch_size=128",
            "train.epochs=1", "train.patience=0", f"data.path={args.data}", *args.set]
    inter = None
    times: dict[str, list[float]] = {name: [] for name in OBJECTIVES}
    for r in range(args.repeats):
        for name, overrides in OBJECTIVES.items():
            config = load_config(None, base + overrides)
            if inter is None:
                inter = read_interactions(config.data)
            with tempfile.TemporaryDirectory() as tmp:
                train(config, Path(tmp) / "run", interactions=inter, progress=False)
                record = json.loads((Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()[0])
            times[name].append(record["epoch_seconds"])
            print(f"repeat {r + 1}: {name}: {record['epoch_seconds']:.1f} s", flush=True)

    bce = statistics.median(times["bce"])
    lines = [
        "# One ML-1M training epoch, BCE vs in-batch InfoNCE\n",
        f"`python benchmarks/epoch_time.py --data {args.data} --repeats {args.repeats}"
        + "".join(f" --set {s}" for s in args.set) + "`\n",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}. "
        "B=128, L=200, D=64, 2 blocks; training time of one epoch, median over interleaved repeats.\n",
        "| objective | epoch seconds (each) | median | ratio to BCE |",
        "| --- | --- | ---: | ---: |",
    ]
    for name, values in times.items():
        med = statistics.median(values)
        lines.append(f"| {name} | {', '.join(f'{v:.1f}' for v in values)} | {med:.1f} | {med / bce:.2f}x |")
    # Each repeat's InfoNCE epoch over the BCE epoch just before it: the two ran a minute apart, so a
    # slow phase of this shared machine that spans a whole repeat cancels out.
    pairs = [i / b for b, i in zip(*times.values(), strict=True)]
    lines.append(f"\nPer-repeat ratios (InfoNCE / the BCE epoch before it): {', '.join(f'{r:.2f}' for r in pairs)}; "
                 f"median {statistics.median(pairs):.2f}x.")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
