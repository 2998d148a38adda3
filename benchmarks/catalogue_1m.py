"""A 1M-item catalogue for the serving benchmarks: a random-weight SASRec checkpoint plus its HNSW index.

The checkpoint is written in the normal format (``checkpoints/best.pt`` of a run directory), so
``seqrec serve``, ``seqrec index build`` and ``load_model`` read it like a trained run. Raw item ids
are the ints 10,000,001..11,000,000. Building HNSW over 1M vectors takes minutes on two cores, so the
run directory (checkpoint, export, index) is cached and reused while the parameters are unchanged.

Usage (also imported by serve_load.py and batch_recommend.py):
    python benchmarks/catalogue_1m.py [--cache /tmp/seqrec-bench/catalogue-1m]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from seqrec.config import ModelConfig, RunConfig, config_to_dict
from seqrec.model.sasrec import SASRec
from seqrec.retrieval.index import IndexConfig
from seqrec.retrieval.recommend import load_model
from seqrec.retrieval.run_index import build_run_index, read_index_meta
from seqrec.train.checkpoint import save_checkpoint

DEFAULT_CACHE = Path("/tmp/seqrec-bench/catalogue-1m")
ID_OFFSET = 10_000_000


@dataclass(frozen=True)
class Catalogue:
    num_items: int = 1_000_000
    dim: int = 64
    maxlen: int = 50
    num_blocks: int = 2
    hnsw_m: int = 16
    hnsw_ef_construction: int = 100
    hnsw_ef_search: int = 64
    seed: int = 0

    def index_config(self) -> IndexConfig:
        return IndexConfig(kind="hnsw", hnsw_m=self.hnsw_m, hnsw_ef_construction=self.hnsw_ef_construction,
                           hnsw_ef_search=self.hnsw_ef_search)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def prepare(cache: Path = DEFAULT_CACHE, spec: Catalogue = Catalogue()) -> Path:
    """The cached run directory for ``spec``, creating the checkpoint and HNSW index if missing."""
    run = Path(cache)
    stamp = run / "catalogue.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == asdict(spec) and read_index_meta(run, "hnsw"):
        return run
    run.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    log(f"creating a {spec.num_items:,}-item SASRec checkpoint with random weights in {run}")
    torch.manual_seed(spec.seed)
    config = RunConfig(model=ModelConfig(maxlen=spec.maxlen, hidden_dim=spec.dim, num_blocks=spec.num_blocks,
                                         num_heads=1, dropout=0.0))
    model = SASRec(spec.num_items, config.model)
    item_ids = [0, *range(ID_OFFSET + 1, ID_OFFSET + spec.num_items + 1)]
    save_checkpoint({"model": model.state_dict(), "config": config_to_dict(config), "similarity": "cosine",
                     "num_items": spec.num_items, "item_ids": item_ids, "user_ids": [], "epoch": 0, "step": 0},
                    run / "checkpoints" / "best.pt")
    loaded = load_model(run)
    started = time.perf_counter()
    log(f"building HNSW {spec.index_config()} (minutes on 2 cores)")
    build_run_index(loaded, run, spec.index_config(), progress=True)
    log(f"HNSW built in {time.perf_counter() - started:.0f}s")
    stamp.write_text(json.dumps(asdict(spec)))
    return run


def random_histories(num: int, num_items: int, min_len: int, max_len: int, seed: int) -> list[np.ndarray]:
    """Random internal-id histories of uniformly drawn lengths (uniform items; repeats are possible)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, size=num)
    return [rng.integers(1, num_items + 1, size=n) for n in lengths]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    print(prepare(parser.parse_args().cache))
