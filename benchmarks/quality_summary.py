"""One line per run directory: first-epoch and best validation NDCG@10, when it got there, test metrics.

    python benchmarks/quality_summary.py runs/a runs/b --reach 0.16 0.0976

Times are wall-clock minutes from the command's start (``wall_seconds`` in metrics.jsonl; older runs
without it fall back to training seconds).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def summarise(run: Path, reach: list[float]) -> str:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    records = [r for r in records if "valid" in r]
    valid = [r["valid"]["ndcg@10"] for r in records]
    minutes = [r.get("wall_seconds", r["train_seconds"]) / 60 for r in records]
    best = max(range(len(valid)), key=valid.__getitem__)
    parts = [f"{run}: epoch-1 valid {valid[0]:.4f}", f"best valid {valid[best]:.4f} at epoch {best + 1} "
             f"({minutes[best]:.1f} min)", f"{len(records)} epochs"]
    results = run / "results.json"
    if results.is_file():
        r = json.loads(results.read_text())
        parts.append(f"test NDCG@10 {r['test']['ndcg@10']:.4f} HR@10 {r['test']['hr@10']:.4f}")
        parts.append(f"{r.get('wall_seconds', r['train_seconds']) / 60:.1f} min in all")
    for threshold in reach:
        when = next((m for v, m in zip(valid, minutes, strict=True) if v >= threshold), None)
        parts.append(f"valid >= {threshold}: " + ("never" if when is None else f"{when:.1f} min"))
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--reach", nargs="*", type=float, default=[], help="validation NDCG@10 thresholds")
    args = parser.parse_args()
    for run in args.runs:
        print(summarise(run, args.reach))


if __name__ == "__main__":
    main()
