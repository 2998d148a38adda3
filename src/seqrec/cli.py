"""Command line: argparse subcommands that parse and call the library, nothing more.

Exit codes (``seqrec.errors`` documents them): 0 success; 2 bad input or a failed run the user can act on
(a ``SeqrecError``, another ``ValueError``, an ``OSError``), reported in one line, with the traceback
under ``-v``; 130 interrupted. Anything else is an internal failure: it propagates with its traceback
(exit status 1).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import traceback
from pathlib import Path

from seqrec.config import DataConfig, config_from_dict, load_config
from seqrec.errors import SeqrecError

log = logging.getLogger("seqrec")

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def _data_config(stored: dict, data_path: str | None) -> DataConfig:
    values = dict(stored)
    if data_path is not None:
        values["path"] = data_path
        values["format"] = "auto"
    return config_from_dict({"data": values}).data


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """The command that runs ``seqrec <argv>`` in ``nproc`` local processes through torchrun.

    ``--nproc`` (also as ``--nproc=N`` or an argparse abbreviation) is removed from ``argv``.
    """
    rest, skip = [], False
    for token in argv:
        name = token.split("=", 1)[0]
        if skip:
            skip = False
        elif len(name) > 2 and "--nproc".startswith(name):
            skip = "=" not in token
        else:
            rest.append(token)
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "seqrec", *rest]


def cmd_train(args: argparse.Namespace) -> int:
    from seqrec.train.loop import train

    overrides = list(args.set or [])
    if args.data is not None:
        # As a JSON string, which YAML reads verbatim: a bare path such as "null", "123" or "a: b"
        # would otherwise be parsed into something that is not the path.
        overrides.append(f"data.path={json.dumps(args.data)}")
    config = load_config(args.config, overrides)  # a bad config fails here, once, before any process starts
    if args.nproc is not None:
        from seqrec.train.run_dir import check_run_dir

        if args.nproc < 1:
            raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
        if "LOCAL_RANK" in os.environ:
            raise ValueError("--nproc starts torchrun itself; it cannot be used inside torchrun")
        check_run_dir(Path(args.out), resume=args.resume, overwrite=args.overwrite)
        return subprocess.run(torchrun_command(args.nproc, sys.argv[1:] if args.argv is None else args.argv)).returncode
    result = train(config, args.out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet,
                   command=["seqrec", *sys.argv[1:]] if args.argv is None else ["seqrec", *args.argv])
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # every rank holds the same result; rank 0 prints it
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
    from seqrec.data.split import make_split
    from seqrec.evaluation.evaluate import evaluate_model, evaluate_popularity
    from seqrec.retrieval.recommend import load_model

    loaded = load_model(args.run)
    stored = loaded.state["config"]
    # The run's own choice (train/auto.py keeps the history where users repeat items), unless told to keep it.
    filter_seen = stored["eval"].get("filter_seen") is not False and not args.no_filter_seen
    eval_config = config_from_dict({"eval": {**stored["eval"], "filter_seen": filter_seen}}).eval
    inter = read_interactions(_data_config(stored["data"], args.data))
    if inter.num_items != loaded.model.num_items:
        raise ValueError(f"the data has {inter.num_items} items, the checkpoint {loaded.model.num_items}")
    split = make_split(inter, _data_config(stored["data"], args.data))
    out = {}
    for stage in ("valid", "test"):
        out[stage] = evaluate_model(loaded.model, split, stage, loaded.similarity, eval_config, progress=not args.quiet)
    out["popularity"] = {stage: evaluate_popularity(split, stage, eval_config) for stage in ("valid", "test")}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{loaded.state['path']}: {len(split.users('valid'))} / {len(split.users('test'))} validation / test users, {inter.num_items} items, "
              f"similarity {loaded.similarity}, history {'filtered' if eval_config.filter_seen else 'kept'}")
        print(_table({"valid": out["valid"], "test": out["test"], "popularity (valid)": out["popularity"]["valid"],
                      "popularity (test)": out["popularity"]["test"]}, eval_config.ks))
    return 0


def _read_user_list(users: list[str] | None, users_file: str | None) -> list | None:
    if users_file:
        from seqrec.retrieval.ids import read_id_lines

        return read_id_lines(users_file, file_kind="users", id_kind="user")
    return users or None


def cmd_recommend(args: argparse.Namespace) -> int:
    from seqrec.data.readers import read_interactions
    from seqrec.retrieval.ids import read_candidate_values
    from seqrec.retrieval.recommend import (
        load_model,
        recommend_batches,
        resolve_candidates,
        user_rows,
        write_recommendations,
    )
    from seqrec.retrieval.run_index import run_index

    if args.k < 1:  # before loading anything, so the mistake is reported at once
        raise ValueError(f"--k must be >= 1, got {args.k}")
    loaded = load_model(args.run)
    data = _data_config(loaded.state["config"]["data"], args.data)
    candidates = None
    if args.candidates:  # unknown ones are embedded from their features where the model and the data allow
        candidates = resolve_candidates(loaded, read_candidate_values(args.candidates), data, where=args.candidates)
    inter = read_interactions(data)
    rows = user_rows(inter, _read_user_list(args.users, args.users_file))
    index = None
    if candidates is None or not candidates.new_ids:  # new candidates are searched exactly over the candidate set
        index, _ = run_index(loaded, args.run, args.index, progress=not args.quiet)
    batches = recommend_batches(loaded, inter, rows, args.k, exclude_seen=not args.include_seen, progress=not args.quiet,
                                index=index, candidates=candidates)
    item_ids = inter.item_ids if candidates is None else candidates.item_ids(inter.item_ids)
    count = write_recommendations(args.out, batches, inter.user_ids, item_ids)
    if candidates is not None:
        print(candidates.summary())
    print(f"wrote top-{args.k} recommendations for {count} users to {args.out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from seqrec.data.readers import read_interactions
    from seqrec.retrieval.export import artifact_dir, export_embeddings, model_fingerprint
    from seqrec.retrieval.recommend import load_model

    loaded = load_model(args.run)
    inter = read_interactions(_data_config(loaded.state["config"]["data"], args.data))
    out = Path(args.out) if args.out else artifact_dir(args.run) / "export"
    fingerprint = model_fingerprint(loaded)
    result = export_embeddings(loaded, inter, out, fbin=args.fbin, batch_size=args.batch_size, progress=not args.quiet,
                               fingerprint=fingerprint)
    print(f"exported {result.num_items} item and {result.num_users} user vectors (dim {result.dim}) to {result.out}")
    for name in result.internal_id_files:
        print(f"note: {name} holds internal ids (raw ids are not non-negative integers); see meta.json")
    if args.onnx:
        from seqrec.retrieval.onnx_export import check_onnx, export_onnx

        path = export_onnx(loaded, out, fingerprint=fingerprint)
        diff = check_onnx(loaded, path, inter)
        checked = "onnxruntime not installed, not checked" if diff is None else f"onnxruntime vs torch: max |diff| {diff:.2e}"
        print(f"wrote the user encoder {path} (item ids (B, L) -> user vectors (B, {result.dim})); {checked}")
    return 0


def cmd_index_build(args: argparse.Namespace) -> int:
    from seqrec.retrieval.recommend import load_model
    from seqrec.retrieval.run_index import build_run_index, index_config

    config = index_config(args.kind, args.set or [])
    loaded = load_model(args.run)
    index, path = build_run_index(loaded, args.run, config, progress=not args.quiet)
    print(f"built a {config.kind} index over {index.ntotal} items: {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from seqrec.serving.admin import admin_token
    from seqrec.serving.app import serve
    from seqrec.serving.batcher import ServeConfig

    config = ServeConfig(index=args.index, max_k=args.max_k, max_history=args.max_history,
                         batch_window_ms=args.batch_window_ms, max_batch=args.max_batch, threads=args.threads,
                         workers=args.workers)
    token = admin_token(args.admin_token_file)  # a token is never a command-line argument (ps shows those)
    serve(args.run, host=args.host, port=args.port, config=config, access_log=args.access_log, progress=not args.quiet,
          admin_token=token)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from seqrec.report import write_report

    out = args.out or str(Path(args.runs[0]) / ("report" if len(args.runs) == 1 else "report-overlay"))
    png, page = write_report(args.runs, out)
    print(f"wrote {png} and {page}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from seqrec.data.scale import generate_tencentgr_like

    path = generate_tencentgr_like(args.out, num_users=args.users, num_items=args.items, mean_events=args.mean_events,
                                   max_events=args.max_events, seed=args.seed, overwrite=args.overwrite,
                                   progress=not args.quiet)
    print(f"wrote a TencentGR-like log ({args.users} users, {args.items} items) to {path}; train with --data {path}")
    return 0


def cmd_taac_infer(args: argparse.Namespace) -> int:
    from seqrec.serving.taac import taac_infer

    result = taac_infer(args.run, args.eval_dir, args.out, data_dir=args.data, k=args.k,
                        exclude_seen=args.exclude_seen, batch_size=args.batch_size, progress=not args.quiet)
    print(f"wrote the top-{args.k} creative_ids of {result.num_users} users to {result.out} "
          f"({result.num_candidates} candidates, {result.num_new_items} creatives unseen in training)")
    if result.score is not None:
        print(f"{'':<12} {'HR@10':>7} {'NDCG@10':>8} {'score':>7}   score = 0.31 * HR@10 + 0.69 * NDCG@10")
        rows = {"model": {"hr10": result.hr10, "ndcg10": result.ndcg10, "score": result.score}, **result.baselines}
        for name, m in rows.items():
            print(f"{name:<12} {m['hr10']:>7.4f} {m['ndcg10']:>8.4f} {m['score']:>7.4f}")
        if result.unseen_targets:
            print(f"HR@10 on the {result.unseen_targets} users whose target is a creative unseen in training: "
                  + ", ".join(f"{name} {hr:.4f}" for name, hr in result.unseen_hr10.items()))
    return 0


def cmd_taac_generate(args: argparse.Namespace) -> int:
    from seqrec.data.taac.synthetic import write_taac_synthetic

    dirs = write_taac_synthetic(args.out, num_users=args.users, num_items=args.items, seed=args.seed,
                                mean_length=args.mean_length, num_eval_users=args.eval_users,
                                new_target_fraction=args.new_targets, progress=not args.quiet)
    print(f"wrote synthetic TAAC data: training {dirs.train}, evaluation {dirs.eval}\n"
          f"next: seqrec train --data {dirs.train} --out RUN; seqrec taac-infer RUN --eval-dir {dirs.eval} --out result.jsonl")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqrec", description="Train, evaluate and serve next-item recommenders.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model; writes a run directory")
    p.add_argument("--config", help="YAML file with sections data/model/loss/train/eval")
    p.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE", help="override one config value (repeatable)")
    p.add_argument("--data", help="interaction log (SASRec text, CSV, TSV, Parquet) or a TAAC training "
                   "directory (trained with its features); default: built-in synthetic data")
    p.add_argument("--out", default="runs/latest", help="run directory (default: runs/latest)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a run that already exists in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="train with N local processes (DDP; re-runs this command through torchrun)")
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
    p.add_argument("--index", choices=("exact", "hnsw", "ivf"), default="exact",
                   help="index kind: the run's saved index when built for this model, else one built in memory")
    p.add_argument("--candidates", help="file with one raw item id per line; only these items are recommended. An id "
                   "the model was not trained on is embedded from its side features (data.features) when the model "
                   "has an item tower, else skipped with a warning")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_recommend)

    p = sub.add_parser("export", help="item and user embeddings with their raw ids (npy, optionally fbin)")
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("--out", help="output directory (default: RUN/export)")
    p.add_argument("--fbin", action="store_true", help="also write .fbin vectors and uint64 .u64 ids")
    p.add_argument("--onnx", action="store_true", help="also write user_encoder.onnx: left-padded item ids (B, L) -> "
                   "user vectors (B, D), and user_encoder.json (needs the onnx extra)")
    p.add_argument("--data", help="interaction log of the users (default: the one the model was trained on)")
    p.add_argument("--batch-size", type=int, default=1024, help="users per encoder batch (default 1024)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("index", help="nearest-neighbour indexes saved next to a run")
    index_sub = p.add_subparsers(dest="index_command", required=True)
    p = index_sub.add_parser("build", help="build RUN/index/<kind>.faiss over the exported item vectors")
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("--kind", choices=("exact", "hnsw", "ivf"), default="exact", help="index kind (default exact)")
    p.add_argument("--set", action="append", metavar="index.KEY=VALUE",
                   help="index parameter, e.g. index.hnsw_m=32, index.ivf_nprobe=16 (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_index_build)

    p = sub.add_parser("serve", help="HTTP API: POST /recommend, /similar, /admin/reload, GET /health, /openapi.json")
    p.add_argument("run", help="run directory or checkpoint file")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--index", choices=("exact", "hnsw", "ivf"), default="exact",
                   help="index kind: the run's saved index when built for this model, else one built in memory")
    p.add_argument("--max-k", type=int, default=1000, help="largest k a request may ask for (default 1000)")
    p.add_argument("--max-history", type=int, default=10_000, help="most history items per request (default 10000)")
    p.add_argument("--batch-window-ms", type=float, default=2.0, help="batching wait after a request (default 2)")
    p.add_argument("--max-batch", type=int, default=64, help="most requests per encoder/index batch (default 64)")
    p.add_argument("--threads", type=int, default=1, help="torch/faiss threads per batch (default 1)")
    p.add_argument("--workers", type=int, default=2,
                   help="batches run at once, each in its own thread (default 2: both cores of a 2-core machine)")
    p.add_argument("--admin-token-file", metavar="PATH",
                   help="file holding the token that turns on POST /admin/reload (default: the SEQREC_ADMIN_TOKEN "
                        "environment variable; neither: admin endpoints off)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("report", help="training curves, test metrics and config of runs: one PNG and an HTML page")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories; several overlay, one colour each")
    p.add_argument("--out", help="output path without suffix; writes OUT.png and OUT.html (default: RUN/report, "
                   "or RUN1/report-overlay for several runs)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("generate", help="write TencentGR-like synthetic data in the compact seqrec form")
    p.add_argument("--out", required=True, help="output directory (seqrec interactions format)")
    p.add_argument("--users", type=int, default=1_000_000, help="number of users (default 1000000)")
    p.add_argument("--items", type=int, default=4_800_000, help="number of items (default 4800000)")
    p.add_argument("--mean-events", type=float, default=91, help="mean events per user (default 91)")
    p.add_argument("--max-events", type=int, default=100, help="most events per user (default 100)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("taac-infer", help="TAAC: top-10 creative_ids per test user of an evaluation directory")
    p.add_argument("run", help="run directory or checkpoint trained on a TAAC training directory")
    p.add_argument("--eval-dir", required=True, help="directory with predict_seq.jsonl and predict_set.jsonl")
    p.add_argument("--out", required=True, help="result file: JSON lines {user_id, creative_ids}, input order")
    p.add_argument("--data", help="the TAAC training directory (default: the one the model was trained on)")
    p.add_argument("--k", type=int, default=10, help="creative_ids per user (default 10)")
    p.add_argument("--exclude-seen", action="store_true", help="never return a creative from the user's history")
    p.add_argument("--batch-size", type=int, default=512, help="users per encoder batch (default 512)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_taac_infer)

    p = sub.add_parser("taac-generate", help="write a small synthetic dataset in the TAAC layout (train/ and eval/)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--users", type=int, default=2000, help="training users (default 2000)")
    p.add_argument("--items", type=int, default=1000, help="training items (default 1000)")
    p.add_argument("--mean-length", type=int, default=20, help="mean item records per user (default 20)")
    p.add_argument("--eval-users", type=int, help="test users, 20%% of them unseen in training (default users / 10)")
    p.add_argument("--new-targets", type=float, default=0.05,
                   help="share of targets that are a creative unseen in training, of the user's current cluster "
                        "(default 0.05)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_taac_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader logs CPU-feature probing at INFO
    try:
        return args.func(args)
    except (SeqrecError, ValueError, OSError) as exc:
        # Input the user can fix (ValueError: the library's argument checks; OSError: a missing file, a
        # file where a directory is needed, a full or read-only disk, ...). Any other exception is a bug
        # and keeps its traceback.
        if args.verbose:
            traceback.print_exc()
        print(f"seqrec {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"seqrec {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
