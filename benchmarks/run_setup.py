"""What a training run builds before its first step, for the step-level benchmarks (step_flops, step_time).

The same order as ``train/loop.py``: read the data, split it, fill the data-chosen settings
(``train/auto.py``) and build the length-bucketed batch builder.
"""

from __future__ import annotations

from typing import Any

from seqrec.config import RunConfig, load_config
from seqrec.data.batches import BatchBuilder
from seqrec.data.features import read_dataset
from seqrec.data.split import make_split
from seqrec.model.features import has_item_tower
from seqrec.train.auto import repeat_share, resolve_auto


def resolved_run(config_path: str | None, data: str, sets: list[str]) -> tuple[RunConfig, Any, Any, Any, BatchBuilder]:
    """``(config, interactions, features, split, builder)`` with every data-chosen setting resolved."""
    config = load_config(config_path, [f"data.path={data}", *sets])
    inter, features = read_dataset(config.data, progress=False)
    split = make_split(inter, config.data)
    repeats = repeat_share(inter.offsets, inter.items, split.train_lengths)
    config, _ = resolve_auto(config, split.train_lengths, repeats, has_item_tower(config.model, features),
                             inter.num_items)
    tc, mc = config.train, config.model
    builder = BatchBuilder(inter.offsets, inter.items, split.train_lengths, inter.num_items, mc.maxlen,
                           config.loss.negatives_per_position, length_buckets=tc.length_buckets, window=tc.window)
    return config, inter, features, split, builder
