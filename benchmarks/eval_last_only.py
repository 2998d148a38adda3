"""Validation time with the last position alone (``SASRec.forward(last_only=True)``) vs the full forward.

Ranking needs one vector per user, the output at the last position; ``user_embeddings`` now computes the
last block for that query alone. This times ``evaluate_model`` on a preset's validation users both ways,
alternating (old, new) pairs in one process, and checks that the metrics are identical. The model is
freshly initialised: the time does not depend on the weights.

    python benchmarks/eval_last_only.py --config configs/ml-1m.yaml --data ../shared/data/ml-1m/ml-1m.txt.xz
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from seqrec.config import load_config  # noqa: E402
from seqrec.data.features import read_dataset  # noqa: E402
from seqrec.data.split import make_split  # noqa: E402
from seqrec.evaluation.evaluate import evaluate_model  # noqa: E402
from seqrec.model.features import build_model, has_item_tower  # noqa: E402
from seqrec.model.sasrec import SASRec  # noqa: E402
from seqrec.train.auto import repeat_share, resolve_auto  # noqa: E402


@torch.no_grad()
def full_forward(self: SASRec, histories: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
    """The previous ``user_embeddings``: every position through every block, then the last row."""
    return self(histories, users)[:, -1, :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config, [f"data.path={args.data}"])
    inter, features = read_dataset(config.data, progress=False)
    split = make_split(inter, config.data)
    config, _ = resolve_auto(config, split.train_lengths, repeat_share(inter.offsets, inter.items, split.train_lengths),
                             has_item_tower(config.model, features), inter.num_items)
    model = build_model(inter.num_items, config.model, features).eval()
    last_only = SASRec.user_embeddings
    seconds: dict[str, list[float]] = {"full": [], "last_only": []}
    metrics = {}
    print(f"load average at start: {os.getloadavg()}", flush=True)
    for _ in range(args.pairs):
        for name, method in (("full", full_forward), ("last_only", last_only)):
            SASRec.user_embeddings = method
            started = time.perf_counter()
            metrics[name] = evaluate_model(model, split, "valid", "cosine", config.eval)
            seconds[name].append(time.perf_counter() - started)
    SASRec.user_embeddings = last_only
    ratio = statistics.median(f / n for f, n in zip(seconds["full"], seconds["last_only"], strict=True))
    print({k: [round(s, 2) for s in v] for k, v in seconds.items()})
    print(f"full / last_only (median of pairs): {ratio:.2f}; identical metrics: {metrics['full'] == metrics['last_only']}")
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
