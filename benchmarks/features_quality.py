"""Side features: quality with and without them, cold-start items, and TAAC synthetic InfoNCE vs BCE.

Three measurements, each a subcommand writing ``results.json`` in ``--out`` and printing a markdown table:

``warm``  trains the same preset with ids only (``data.features=none``) and with side features, under
          the same wall-clock budget, and reports test HR/NDCG@10 of the epoch selected on validation
          (leave-one-out, full catalogue, history filtered).
``cold``  holds 10% of the items out of training entirely (their events are removed from every
          sequence, they are never negatives), trains on the rest, then ranks the held-out items for the
          users whose last event is one of them, from the history before it. Candidates: the held-out
          items only. The feature models embed them from their features (no trained id); an id-only
          model has no vector for them and cannot rank them; the random ranking's expectation is exact.
``taac``  writes a synthetic TAAC dataset, trains InfoNCE and BCE (with features and the user token),
          runs ``taac_infer`` and reports 0.31 * HR@10 + 0.69 * NDCG@10.

Examples:
    python benchmarks/features_quality.py warm --data ../shared/data/amazon-beauty/Beauty.txt --features beauty \
        --config configs/beauty.yaml --minutes 5 --out runs/bench-features/beauty
    python benchmarks/features_quality.py cold --data ../shared/data/ml-1m/ml-1m.txt.xz --features ml-1m \
        --config configs/ml-1m.yaml --minutes 6 --out runs/bench-features/ml-1m-cold
    python benchmarks/features_quality.py taac --users 3000 --items 1500 --minutes 2 --out runs/bench-features/taac
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from seqrec.config import load_config
from seqrec.data.batches import left_padded_windows
from seqrec.data.dataset import Interactions
from seqrec.data.features import read_dataset
from seqrec.data.taac.synthetic import write_taac_synthetic
from seqrec.retrieval.recommend import load_model
from seqrec.serving.taac import taac_infer
from seqrec.train.loop import train


def _machine() -> dict:
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpus": __import__("os").cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "load_average": list(__import__("os").getloadavg()),
    }


def _runs(texts: list[str] | None, default: list[str]) -> list[tuple[str, list[str]]]:
    """``label=section.key=value,section.key=value`` -> (label, overrides)."""
    out = []
    for text in texts or default:
        label, _, rest = text.partition("=")
        out.append((label, [part for part in rest.split(",") if part]))
    return out


def _budget(args: argparse.Namespace) -> list[str]:
    return [] if args.minutes is None else [f"train.max_minutes={args.minutes}"]


def warm(args: argparse.Namespace) -> dict:
    base = [f"data.path={args.data}", *_budget(args), *(args.set or [])]
    runs = _runs(args.run, ["ids=data.features=none", f"features=data.features={args.features}"])
    inter, features = read_dataset(load_config(args.config, [*base, f"data.features={args.features}"]).data)
    rows = {}
    for label, overrides in runs:
        config = load_config(args.config, [*base, *overrides])
        started = time.perf_counter()
        result = train(config, Path(args.out) / label, overwrite=True, progress=False, interactions=inter,
                       features=features if config.data.features not in (None, "none") else None,
                       command=["benchmarks/features_quality.py", "warm", label])
        rows[label] = {
            "overrides": overrides, "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
            "train_seconds": result.train_seconds, "wall_seconds": time.perf_counter() - started,
            "valid": result.best_valid, "test": result.test,
        }
        print(f"{label}: test ndcg@10 {result.test['ndcg@10']:.4f} hr@10 {result.test['hr@10']:.4f} "
              f"({result.epochs_run} epochs, {result.train_seconds:.0f}s)", flush=True)
    return {"kind": "warm", "data": args.data, "features": args.features, "config": args.config,
            "minutes": args.minutes, "runs": rows}


def _hold_out(inter: Interactions, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, Interactions]:
    """(warm ids, cold ids, interactions without the cold items, warm items renumbered 1..W)."""
    rng = np.random.default_rng(seed)
    ids = np.arange(1, inter.num_items + 1)
    cold = np.sort(rng.choice(ids, size=max(1, int(round(fraction * inter.num_items))), replace=False))
    is_cold = np.zeros(inter.num_items + 1, dtype=bool)
    is_cold[cold] = True
    warm_ids = ids[~is_cold[1:]]
    renumber = np.zeros(inter.num_items + 1, dtype=np.int64)
    renumber[warm_ids] = np.arange(1, len(warm_ids) + 1)
    keep = ~is_cold[inter.items]
    owner = np.repeat(np.arange(inter.num_users), inter.lengths)
    offsets = np.zeros(inter.num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner[keep], minlength=inter.num_users), out=offsets[1:])
    kept = Interactions(offsets=offsets, items=renumber[inter.items[keep]], user_ids=inter.user_ids,
                        item_ids=inter.item_ids[np.r_[0, warm_ids]])
    return warm_ids, cold, kept


def _metrics(ranks: np.ndarray) -> dict:
    hit = ranks <= 10
    return {"hr@10": float(hit.mean()), "ndcg@10": float(np.where(hit, 1.0 / np.log2(ranks + 1), 0.0).mean())}


@torch.no_grad()
def _cold_ranks(run: Path, inter: Interactions, features, warm_ids, cold, users, targets) -> np.ndarray:
    """Pessimistic rank of each user's cold target among the cold items, from the warm history before it."""
    loaded = load_model(run)
    model = loaded.model
    catalogue = features.take_items(np.r_[0, warm_ids, cold])
    id_rows = np.r_[np.arange(len(warm_ids) + 1), np.zeros(len(cold), dtype=np.int64)]
    model.item_tower.set_catalogue(catalogue, id_rows)
    cold_rows = torch.arange(len(warm_ids) + 1, len(warm_ids) + 1 + len(cold))
    items = model.item_embeddings(cold_rows)
    renumber = np.zeros(inter.num_items + 1, dtype=np.int64)
    renumber[warm_ids] = np.arange(1, len(warm_ids) + 1)
    position = {int(c): j for j, c in enumerate(cold)}
    ranks = []
    maxlen = model.config.maxlen
    for start in range(0, len(users), 256):
        u = users[start : start + 256]
        histories = [renumber[inter.sequence(x)[:-1]] for x in u]
        histories = [h[h > 0] for h in histories]
        flat = np.concatenate(histories)
        ends = np.cumsum([len(h) for h in histories])
        window = torch.from_numpy(left_padded_windows(flat, ends - [len(h) for h in histories], ends, maxlen))
        queries = model.user_embeddings(window, torch.from_numpy(u))
        if loaded.similarity == "cosine":
            scores = F.normalize(queries, dim=-1) @ F.normalize(items, dim=-1).T
        else:
            scores = queries @ items.T
        target_col = torch.tensor([position[int(t)] for t in targets[start : start + 256]])
        target_score = scores.gather(1, target_col[:, None])
        better = (scores >= target_score).sum(1) - 1  # ties count against the target
        ranks.append((better + 1).numpy())
    return np.concatenate(ranks)


def cold(args: argparse.Namespace) -> dict:
    base = [f"data.path={args.data}", f"data.features={args.features}", *_budget(args), *(args.set or [])]
    inter, features = read_dataset(load_config(args.config, base).data)
    warm_ids, cold_ids, kept = _hold_out(inter, args.fraction, args.seed)
    train_features = features.take_items(np.r_[0, warm_ids])
    is_cold = np.zeros(inter.num_items + 1, dtype=bool)
    is_cold[cold_ids] = True
    last = inter.items[inter.offsets[1:] - 1]
    users = np.flatnonzero(is_cold[last] & (inter.lengths >= 2))
    n = len(cold_ids)
    random_ndcg = sum(1.0 / math.log2(r + 1) for r in range(1, min(10, n) + 1)) / n
    rows = {"random (expected)": {"hr@10": min(10, n) / n, "ndcg@10": random_ndcg},
            "ids only": {"hr@10": None, "ndcg@10": None, "note": "no vector for an item never trained on"}}
    for label, overrides in _runs(args.run, ["features+id=model.use_item_id=true",
                                             "features only=model.use_item_id=false"]):
        config = load_config(args.config, [*base, *overrides])
        run = Path(args.out) / label.replace(" ", "_").replace("+", "_")
        result = train(config, run, overwrite=True, progress=False, interactions=kept, features=train_features,
                       command=["benchmarks/features_quality.py", "cold", label])
        ranks = _cold_ranks(run, inter, features, warm_ids, cold_ids, users, last[users])
        rows[label] = {**_metrics(ranks), "overrides": overrides, "epochs_run": result.epochs_run,
                       "train_seconds": result.train_seconds, "warm_test_ndcg@10": result.test["ndcg@10"]}
        print(f"{label}: cold hr@10 {rows[label]['hr@10']:.4f} ndcg@10 {rows[label]['ndcg@10']:.4f}", flush=True)
    return {"kind": "cold", "data": args.data, "features": args.features, "config": args.config,
            "minutes": args.minutes, "fraction": args.fraction, "cold_items": n, "eval_users": int(len(users)),
            "runs": rows}


def taac(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    dirs = write_taac_synthetic(out / "data", num_users=args.users, num_items=args.items, seed=args.seed,
                                mean_length=args.mean_length)
    base = [f"data.path={dirs.train}", *_budget(args), "model.maxlen=50",
            "model.hidden_dim=64", "model.num_blocks=2", "model.num_heads=2", "model.user_features=token",
            "train.batch_size=256", "train.lr=0.001", "train.patience=3", *(args.set or [])]
    rows = {}
    for label, overrides in _runs(args.run, ["infonce=loss.name=infonce", "bce=loss.name=bce"]):
        config = load_config(None, [*base, *overrides])
        result = train(config, out / label, overwrite=True, progress=False,
                       command=["benchmarks/features_quality.py", "taac", label])
        inferred = taac_infer(out / label, dirs.eval, out / f"{label}-result.jsonl")
        rows[label] = {"hr@10": inferred.hr10, "ndcg@10": inferred.ndcg10, "score": inferred.score,
                       "overrides": overrides, "epochs_run": result.epochs_run, "train_seconds": result.train_seconds,
                       "valid_ndcg@10": result.best_valid["ndcg@10"]}
        print(f"{label}: score {inferred.score:.4f} (HR@10 {inferred.hr10:.4f}, NDCG@10 {inferred.ndcg10:.4f})", flush=True)
    return {"kind": "taac", "users": args.users, "items": args.items, "mean_length": args.mean_length,
            "seed": args.seed, "minutes": args.minutes, "eval_users": inferred.num_users,
            "candidates": inferred.num_candidates, "new_items": inferred.num_new_items, "runs": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("warm", "cold"):
        p = sub.add_parser(name)
        p.add_argument("--data", required=True)
        p.add_argument("--features", required=True, help="data.features value, e.g. ml-1m or beauty")
        p.add_argument("--config", required=True, help="preset YAML")
        p.add_argument("--fraction", type=float, default=0.1, help="cold: share of items held out")
        p.add_argument("--seed", type=int, default=0, help="cold: seed of the held-out items")
    p = sub.add_parser("taac")
    p.add_argument("--users", type=int, default=3000)
    p.add_argument("--items", type=int, default=1500)
    p.add_argument("--mean-length", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    for p in sub.choices.values():
        p.add_argument("--minutes", type=float, help="wall-clock training budget per run (default: none; "
                       "on a shared machine prefer a fixed train.epochs, which gives every run the same work)")
        p.add_argument("--out", required=True)
        p.add_argument("--run", action="append", help="label=section.key=value,... (repeatable; replaces the defaults)")
        p.add_argument("--set", action="append", help="section.key=value for every run")
        p.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    report = {"warm": warm, "cold": cold, "taac": taac}[args.what](args)
    report["machine"] = _machine()
    (Path(args.out) / "results.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
