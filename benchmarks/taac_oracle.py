"""How far a TAAC ranking is from the synthetic generator's own next-item probabilities (issue 16, target 8).

``seqrec taac-generate`` draws its data from a known process (``seqrec.data.taac.simulate``): the next item
is the previous item's successor, a popular item of the user's cluster, one of the next cluster after a
drift, or a globally popular item; a share of targets is an unseen item of the cluster. This script rebuilds
that process from the generator's arguments and seed, scores every candidate of the evaluation directory
by its probability given the user's last item (the cluster taken from it), and reports HR@10, NDCG@10 and
the competition score of that "oracle" next to the rankings given on the command line (``result.jsonl``
files of ``seqrec taac-infer``) and the transition baseline, broken down by what the target was.

    python benchmarks/taac_oracle.py --data /tmp/taac2kb --items 3000 \
        runs/RUN/result.jsonl [more result.jsonl ...]

The generator's arguments must be the ones the data was written with (the seed defaults to 0, as there).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from seqrec.data.taac import simulate as sim
from seqrec.data.taac.layout import norm_cid
from seqrec.data.taac.predict import read_taac_predict, read_taac_targets
from seqrec.data.taac.reader import read_taac
from seqrec.data.taac.scoring import competition_score
from seqrec.data.taac.synthetic import synth_catalogue
from seqrec.evaluation.baselines import TransitionCounts, baseline_rankings, item_counts

KINDS = ("successor", "same cluster", "new item", "other")


def ranks_of(top10: list[list], targets: np.ndarray) -> np.ndarray:
    """1-based rank of each target in its list, 0 when absent."""
    out = np.zeros(len(targets), np.int64)
    for row, (ranked, target) in enumerate(zip(top10, targets, strict=True)):
        key = norm_cid(target)
        for r, cid in enumerate(ranked[:10], start=1):
            if norm_cid(cid) == key:
                out[row] = r
                break
    return out


def summary(ranks: np.ndarray) -> tuple[float, float, float]:
    hr = float((ranks > 0).mean()) if len(ranks) else 0.0
    ndcg = float((1.0 / np.log2(np.maximum(ranks, 1) + 1.0) * (ranks > 0)).mean()) if len(ranks) else 0.0
    return hr, ndcg, competition_score(hr, ndcg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="*", help="result.jsonl files of seqrec taac-infer")
    ap.add_argument("--data", required=True, help="the directory taac-generate wrote (train/ and eval/)")
    ap.add_argument("--items", type=int, required=True)
    ap.add_argument("--new-items", type=int, default=None, help="default: as taac-generate (items // 20)")
    ap.add_argument("--new-targets", type=float, default=0.05, help="as taac-generate's --new-targets")
    ap.add_argument("--seed", type=int, default=0, help="as taac-generate's --seed")
    ap.add_argument("--json", help="also write the table here (one object per ranking)")
    args = ap.parse_args()

    num_new = max(1, args.items // 20) if args.new_items is None else args.new_items
    world, creative_ids = synth_catalogue(np.random.default_rng(args.seed), args.items, num_new)
    synth_of = {int(c): i for i, c in enumerate(creative_ids.tolist()) if i > 0}
    train = read_taac(Path(args.data) / "train", progress=False)
    if {int(creative_ids[i]): i for i in range(1, args.items + 1)} != train.item_index:
        ap.error(f"{args.data} was not written by taac-generate with --items {args.items} --seed {args.seed}")
    predict = read_taac_predict(Path(args.data) / "eval", train, progress=False)
    _, targets = read_taac_targets(Path(args.data) / "eval")
    cand = predict.candidates
    cand_synth = np.array([synth_of[int(c)] for c in cand.creative_ids.tolist()])
    target_synth = np.array([synth_of[int(t)] for t in targets.tolist()])

    transitions = TransitionCounts(train.interactions.offsets, train.interactions.items)
    counts = np.bincount(train.interactions.items, minlength=args.items + 1)[1 : args.items + 1] + 1.0
    variants = {
        "oracle": world.popularity,  # the generator's popularity
        "oracle, counted popularity": counts / counts.sum(),  # what training counts can tell
        "oracle, no popularity": np.full(args.items, 1.0 / args.items),
    }
    lists: dict[str, list[list]] = {name: [] for name in variants}
    kinds = np.zeros(len(targets), np.int64)
    new = cand_synth > args.items
    new_cluster = world.cluster[cand_synth[new]]
    new_in = np.bincount(new_cluster, minlength=world.num_clusters)
    for p in range(predict.num_users):
        hi = predict.offsets[p + 1]
        last = int(predict.items[hi - 1]) or synth_of[int(predict.raw_items[hi - 1])]
        cluster = int(world.cluster[last])
        share = np.zeros(world.num_clusters)
        share[cluster] += 1 - sim._SYNTH_DRIFT
        share[(cluster + 1) % world.num_clusters] += sim._SYNTH_DRIFT
        for name, pop in variants.items():
            score = (1 - args.new_targets) * np.r_[world.next_probabilities(last, cluster, pop), np.zeros(num_new)][cand_synth]
            score[new] = args.new_targets * share[new_cluster] / np.maximum(new_in[new_cluster], 1)
            lists[name].append(cand.creative_ids[np.argsort(-score, kind="stable")[:10]].tolist())
        target = target_synth[p]
        if target > args.items:
            kinds[p] = 2
        elif 1 <= last <= args.items and target == world.successor[last]:
            kinds[p] = 0
        elif world.cluster[target] == cluster:
            kinds[p] = 1
        else:
            kinds[p] = 3
    # The project's baselines (seqrec taac-infer's): the last history item known in training.
    last_rows = np.zeros(predict.num_users, np.int64)
    for p in range(predict.num_users):
        known = predict.items[predict.offsets[p] : predict.offsets[p + 1]]
        known = known[known > 0]
        last_rows[p] = known[-1] if len(known) else 0
    ranked = baseline_rankings(cand.items, last_rows, item_counts(train.interactions.items, args.items),
                               transitions, 10)
    for name, found in ranked.items():
        lists[name] = [cand.creative_ids[r].tolist() for r in found]
    for path in args.results:
        with open(path, encoding="utf-8") as f:
            lists[Path(path).parent.name or path] = [json.loads(line)["creative_ids"] for line in f]

    print(f"{len(targets)} users; targets: " + ", ".join(
        f"{name} {int((kinds == i).sum())}" for i, name in enumerate(KINDS)))
    base = summary(ranks_of(lists["transitions"], targets))[2]
    header = f"{'ranking':28s} {'HR@10':>7s} {'NDCG@10':>8s} {'score':>7s} {'vs trans.':>9s}  " + "  ".join(
        f"{k + ' hr/ndcg':>22s}" for k in KINDS)
    print(header)
    table: dict[str, dict] = {}
    for name, top10 in lists.items():
        ranks = ranks_of(top10, targets)
        hr, ndcg, score = summary(ranks)
        parts = []
        table[name] = {"hr10": hr, "ndcg10": ndcg, "score": score, "vs_transitions": score / base - 1}
        for i, kind in enumerate(KINDS):
            h, n, _ = summary(ranks[kinds == i])
            parts.append(f"{h:10.3f}/{n:<11.3f}")
            table[name][kind] = {"users": int((kinds == i).sum()), "hr10": h, "ndcg10": n}
        print(f"{name:28s} {hr:7.4f} {ndcg:8.4f} {score:7.4f} {score / base - 1:+9.1%}  " + "  ".join(parts))
    if args.json:
        meta = {"data": args.data, "items": args.items, "new_items": num_new, "seed": args.seed}
        Path(args.json).write_text(json.dumps({"generator": meta, "rankings": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()
