"""Plot of ``taac_oracle.py --json`` tables: per synthetic dataset, the competition score of the transition
baseline, of a model, of the generator's ranking with counted popularity and of the generator's own
ranking, with the issue-16 bar (+15% over transitions) drawn on each.

    python benchmarks/taac_ceiling.py --model RUN_NAME --out ceiling.png A.json B.json ...

``RUN_NAME`` is the model row of each table (the run directory's name); ``--model`` may be repeated in the
order of the files when the runs differ.
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

BARS = (("transitions", "transition baseline", "#999999"), ("model", "seqrec generic default", "#1f77b4"),
        ("oracle, counted popularity", "process known, popularity counted", "#ff7f0e"),
        ("oracle", "the generator's probabilities", "#2ca02c"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tables", nargs="+")
    ap.add_argument("--model", action="append", required=True, help="the model row's name (per file, or one)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if len(args.model) not in (1, len(args.tables)):
        ap.error("give --model once or once per table")
    models = args.model * len(args.tables) if len(args.model) == 1 else args.model

    fig, ax = plt.subplots(figsize=(2.2 + 1.9 * len(args.tables), 4.8))
    width = 0.2
    labels = []
    for x, (path, model) in enumerate(zip(args.tables, models, strict=True)):
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
        rows, gen = table["rankings"], table["generator"]
        labels.append(f"{gen['items']} + {gen['new_items']} unseen\nitems, seed {gen['seed']}")
        for b, (key, name, colour) in enumerate(BARS):
            score = rows[model if key == "model" else key]["score"]
            ax.bar(x + (b - 1.5) * width, score, width, color=colour, label=name if x == 0 else None)
            if key != "transitions":
                gain = score / rows["transitions"]["score"] - 1
                ax.text(x + (b - 1.5) * width, score + 0.004, f"{gain:+.0%}", ha="center", fontsize=7)
        bar = 1.15 * rows["transitions"]["score"]
        ax.hlines(bar, x - 2 * width, x + 2 * width, colors="red", linestyles="dashed",
                  label="target: transitions +15%" if x == 0 else None)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_ylabel("competition score (0.31 HR@10 + 0.69 NDCG@10)")
    ax.set_ylim(0.35, None)
    ax.set_title("seqrec taac-generate data: what each ranking scores", fontsize=10)
    fig.legend(fontsize=7, loc="lower center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(args.out, dpi=120)


if __name__ == "__main__":
    main()
