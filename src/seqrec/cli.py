"""Command line: argparse subcommands that parse and call the library, nothing more."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from seqrec.config import ConfigError, DataConfig, config_from_dict, load_config

log = logging.getLogger("seqrec")


def _data_config(stored: dict, data_path: str | None) -> DataConfig:
    values = dict(stored)
    if data_path is not None:
        values["path"] = data_path
        values["format"] = "auto"
    return config_from_dict({"data": values}).data


def cmd_train(args: argparse.Namespace) -> int:
    from seqrec.train.loop import train

    overrides = list(args.set or [])
    if args.data is not None:
        overrides.append(f"data.path={args.data}")
    config = load_config(args.config, overrides)
    result = train(config, args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet,
                   command=["seqrec", *sys.argv[1:]] if args.argv is None else ["seqrec", *args.argv])
    sel = config.eval.select_metric
    print(f"run directory: {result.run_dir}")
    print(f"best epoch {result.best_epoch} of {result.epochs_run} ({result.train_seconds:.0f}s training); "
          f"valid {sel} {result.best_valid[sel]:.4f}")
    print(_table({"test": result.test, "popularity (test)": result.popularity_test}, config.eval.ks))
    return 0


def _table(rows: dict[str, dict[str, float]], ks: tuple[int, ...]) -> str:
    cols = [f"hr@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + ["mrr"]
    width = max(len(name) for name in rows)
    lines = [" " * width + "  " + "  ".join(f"{c:>8}" for c in cols)]
    for name, metrics in rows.items():
        lines.append(f"{name:<{width}}  " + "  ".join(f"{metrics[c]:8.4f}" for c in cols))
    return "\n".join(lines)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from seqrec.data.readers import read_interactions
    from seqrec.data.split import leave_one_out
    from seqrec.evaluation.evaluate import evaluate_model, evaluate_popularity
    from seqrec.retrieval.recommend import load_model

    loaded = load_model(args.run)
    stored = loaded.state["config"]
    eval_config = config_from_dict({"eval": {**stored["eval"], "filter_seen": not args.no_filter_seen}}).eval
    inter = read_interactions(_data_config(stored["data"], args.data))
    if inter.num_items != loaded.model.num_items:
        raise ValueError(f"the data has {inter.num_items} items, the checkpoint {loaded.model.num_items}")
    split = leave_one_out(inter)
    out = {}
    for stage in ("valid", "test"):
        out[stage] = evaluate_model(loaded.model, split, stage, loaded.similarity, eval_config, progress=not args.quiet)
    out["popularity"] = {stage: evaluate_popularity(split, stage, eval_config) for stage in ("valid", "test")}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{loaded.state['path']}: {len(split.eval_users)} users, {inter.num_items} items, "
              f"similarity {loaded.similarity}, history {'filtered' if eval_config.filter_seen else 'kept'}")
        print(_table({"valid": out["valid"], "test": out["test"], "popularity (valid)": out["popularity"]["valid"],
                      "popularity (test)": out["popularity"]["test"]}, eval_config.ks))
    return 0


def _read_user_list(users: list[str] | None, users_file: str | None) -> list | None:
    if users_file:
        path = Path(users_file)
        if not path.is_file():
            raise FileNotFoundError(f"users file not found: {path}")
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return users or None


def cmd_recommend(args: argparse.Namespace) -> int:
    from seqrec.data.readers import read_interactions
    from seqrec.retrieval.recommend import load_model, recommend_batches, user_rows, write_recommendations

    loaded = load_model(args.run)
    inter = read_interactions(_data_config(loaded.state["config"]["data"], args.data))
    rows = user_rows(inter, _read_user_list(args.users, args.users_file))
    batches = recommend_batches(loaded, inter, rows, args.k, exclude_seen=not args.include_seen, progress=not args.quiet)
    count = write_recommendations(args.out, batches, inter.user_ids, inter.item_ids)
    print(f"wrote top-{args.k} recommendations for {count} users to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqrec", description="Train, evaluate and serve next-item recommenders.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model; writes a run directory")
    p.add_argument("--config", help="YAML file with sections data/model/loss/train/eval")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one config value (repeatable)")
    p.add_argument("--data", help="interaction log (SASRec text, CSV, TSV, Parquet); default: built-in synthetic data")
    p.add_argument("--out", default="runs/latest", help="run directory (default: runs/latest)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run that already exists in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="full-catalogue ranking metrics on validation and test")
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("--data", help="interaction log (default: the one the model was trained on)")
    p.add_argument("--no-filter-seen", action="store_true", help="keep the user's history items in the ranking")
    p.add_argument("--json", action="store_true", help='print {"valid": {...}, "test": {...}, "popularity": {...}}')
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("recommend", help="top-K items per user, in raw ids")
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("--users", nargs="*", help="raw user ids (default: every user)")
    p.add_argument("--users-file", help="file with one raw user id per line")
    p.add_argument("--k", type=int, default=10, help="number of items per user (default 10)")
    p.add_argument("--out", required=True, help="output file: .csv (user_id,rank,item_id,score) or .jsonl")
    p.add_argument("--data", help="interaction log (default: the one the model was trained on)")
    p.add_argument("--include-seen", action="store_true", help="allow items the user already interacted with")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_recommend)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError, PermissionError, RuntimeError) as exc:
        print(f"seqrec {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"seqrec {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
