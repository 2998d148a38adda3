"""Quality on public benchmarks under the leave-one-out, full-ranking protocol.

For each objective (a named preset plus overrides) it trains with model selection on validation NDCG@10,
evaluates test once on the selected epoch, and writes a markdown table and a PNG plot of validation
NDCG@10 against wall-clock training time.

Protocol: full-catalogue ranking, the user's history filtered, leave-one-out (last item test,
second-to-last validation), the file's own event order (never re-sorted), ties counted against the
target.

Example:
    python benchmarks/quality.py --data ../shared/data/ml-1m/ml-1m.txt.xz --name ml-1m \
        --run bce=configs/bce.yaml --run infonce-note=configs/default.yaml --run shipped=configs/ml-1m.yaml \
        --max-minutes 30 --out benchmarks/results/quality-ml-1m
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from seqrec.config import load_config
from seqrec.data.readers import read_interactions
from seqrec.train.loop import train


def parse_run(text: str) -> tuple[str, str, list[str]]:
    """``label=config.yaml[,section.key=value,...]``."""
    label, _, rest = text.partition("=")
    parts = rest.split(",")
    return label, parts[0], parts[1:]


def plot(curves: dict[str, list[tuple[float, float]]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = plt.get_cmap("tab20").colors  # 10 dark/light pairs: the dark ones first, then the light ones
    for i, (label, points) in enumerate(curves.items()):
        xs = [p[0] / 60 for p in points]
        ax.plot(xs, [p[1] for p in points], marker=".", label=label, color=colours[(2 * i + i // 10) % 20],
                linestyle="-" if i < 10 else "--")
    ax.set_xlabel("training wall-clock time (minutes)")
    ax.set_ylabel("validation NDCG@10")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2 if len(curves) > 8 else 1)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="interaction log")
    parser.add_argument("--name", required=True, help="dataset label for the table")
    parser.add_argument("--run", action="append", default=[], help="label=config.yaml[,section.key=value...]")
    parser.add_argument("--report", action="append", default=[],
                        help="label of a finished run in --out to include in the table and plot (runs started "
                             "as separate processes, e.g. in parallel, are reported together this way)")
    parser.add_argument("--max-minutes", type=float, default=30.0, help="training budget per run")
    parser.add_argument("--out", required=True, help="output directory (runs, table, plot)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    parser.add_argument("--ablation", metavar="BASELINE",
                        help="write ablation.md instead: validation metrics only (no test column), each run's "
                             "change from the baseline run's config and its effect on validation NDCG@10")
    args = parser.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    labels = []
    if args.run:
        inter = read_interactions(load_config(None, [f"data.path={args.data}"]).data)
    for text in args.run:
        label, config_path, overrides = parse_run(text)
        config = load_config(config_path, [f"data.path={args.data}", f"train.max_minutes={args.max_minutes}", *overrides])
        started = time.perf_counter()
        train(config, out / label, overwrite=True, progress=False, interactions=inter,
              command=["benchmarks/quality.py", text])
        wall = time.perf_counter() - started
        (out / label / "wall.json").write_text(json.dumps({"wall_seconds": wall, "threads": torch.get_num_threads()}))
        labels.append(label)
    labels += [x for x in args.report if x not in labels]
    if args.ablation:
        ablation_report(out, labels, args.ablation, args.name, args.max_minutes)
    else:
        report(out, labels, args.name, args.max_minutes)


def report(out: Path, labels: list[str], name: str, max_minutes: float) -> None:
    """Writes ``table.md`` and the validation-curve plot from the finished run directories ``out/label``."""
    rows, curves, pop = [], {}, None
    for label in labels:
        run = out / label
        result = json.loads((run / "results.json").read_text())
        wall = json.loads((run / "wall.json").read_text()) if (run / "wall.json").exists() else {}
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        curves[label] = [(r["train_seconds"], r["valid"]["ndcg@10"]) for r in records if "valid" in r]
        epoch_s = sorted(r["epoch_seconds"] for r in records)[len(records) // 2]
        t = result["test"]
        rows.append(
            f"| {label} | {t['hr@10']:.4f} | {t['ndcg@10']:.4f} | {t['hr@20']:.4f} | {t['ndcg@20']:.4f} | "
            f"{t['mrr']:.4f} | {result['valid']['ndcg@10']:.4f} | {result['best_epoch']} | {result['epochs_run']} | "
            f"{wall.get('wall_seconds', float('nan')) / 60:.1f} | {wall.get('threads', '?')} | {epoch_s:.1f} |"
        )
        pop = result["popularity"]["test"]
    header = (
        f"## {name}: test metrics at the epoch selected on validation NDCG@10\n\n"
        f"Machine: {platform.machine()}, torch {torch.__version__}; budget {max_minutes:g} min of training per run; "
        f"date {time.strftime('%Y-%m-%d')}.\n\n"
        "| objective | HR@10 | NDCG@10 | HR@20 | NDCG@20 | MRR | valid NDCG@10 | best epoch | epochs run | wall min | threads | epoch s |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
    )
    pop_row = (f"| popularity | {pop['hr@10']:.4f} | {pop['ndcg@10']:.4f} | {pop['hr@20']:.4f} | "
               f"{pop['ndcg@20']:.4f} | {pop['mrr']:.4f} | | | | | | |\n") if pop else ""
    table = header + "\n".join(rows) + "\n" + pop_row
    (out / "table.md").write_text(table)
    plot(curves, out / "valid_ndcg_vs_time.png", f"{name}: validation NDCG@10 vs training time")
    print(table)


def _flat(config: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def ablation_report(out: Path, labels: list[str], baseline: str, name: str, max_minutes: float) -> None:
    """Writes ``ablation.md``: one row per run, its config change from ``baseline`` (read from the runs'
    config.yaml) and the best validation NDCG@10 / HR@10 within the budget. No test metrics: ablations
    choose settings, and settings are chosen on validation only."""
    import yaml

    def load(label):
        run = out / label
        config = _flat(yaml.safe_load((run / "config.yaml").read_text()))
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        best = max((r for r in records if "valid" in r), key=lambda r: r["valid"]["ndcg@10"])
        epoch_s = sorted(r["epoch_seconds"] for r in records)[len(records) // 2]
        return config, records, best, epoch_s

    base_config, _, base_best, _ = load(baseline)
    rows, curves = [], {}
    for label in [baseline] + [x for x in labels if x != baseline]:
        config, records, best, epoch_s = load(label)
        change = ", ".join(f"{k}={config.get(k)}" for k in sorted(set(config) | set(base_config))
                           if config.get(k) != base_config.get(k) and k != "data.path") or "(baseline)"
        curves[label] = [(r["train_seconds"], r["valid"]["ndcg@10"]) for r in records if "valid" in r]
        v = best["valid"]
        delta = v["ndcg@10"] / base_best["valid"]["ndcg@10"] - 1
        rows.append(f"| {label} | {change} | {v['ndcg@10']:.4f} | {delta:+.1%} | {v['hr@10']:.4f} | "
                    f"{best['epoch']} | {len(records)} | {epoch_s:.1f} |")
    table = (
        f"## {name}: one change at a time, best validation NDCG@10 within {max_minutes:g} minutes of training\n\n"
        f"Machine: {platform.machine()}, torch {torch.__version__}; date {time.strftime('%Y-%m-%d')}.\n\n"
        "| run | change from the baseline | valid NDCG@10 | vs baseline | valid HR@10 | best epoch | epochs | epoch s |\n"
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n" + "\n".join(rows) + "\n"
    )
    (out / "ablation.md").write_text(table)
    plot(curves, out / "ablation_valid_ndcg_vs_time.png", f"{name}: validation NDCG@10 vs training time")
    print(table)


if __name__ == "__main__":
    main()
