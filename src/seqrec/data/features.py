"""The side features a run's ``DataConfig`` names, read together with its interactions.

``read_dataset`` reads the interactions and the features that ``DataConfig.features`` names together,
so a TAAC directory is parsed once; ``read_item_features`` describes items outside the training log.
The arrays' layout is ``feature_set.FeatureSet``; the loaders are in ``side_features`` and
``taac/dataset``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from seqrec.config import DataConfig
from seqrec.data.dataset import Interactions
from seqrec.data.feature_set import FeatureSet
from seqrec.data.readers import read_interactions
from seqrec.data.side_features import (
    BEAUTY_FILE,
    ML1M_FILES,
    attribute_items,
    item_attribute_features,
    ml1m_features,
    ml1m_items,
)
from seqrec.data.taac.dataset import read_taac_dataset
from seqrec.data.taac.layout import SEQ_FILE


def is_taac_dir(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / SEQ_FILE).is_file()


def _is_taac(config: DataConfig) -> bool:
    if config.path is None:
        return False
    return config.format == "taac" or (config.format == "auto" and is_taac_dir(config.path))


def _source(config: DataConfig) -> tuple[str, Path] | None:
    """What ``config.features`` names: ``("ml-1m", directory)`` | ``("attributes", json file)``, or None."""
    source = config.features
    if source is None or source == "none":
        return None
    if source in ("ml-1m", "beauty"):
        if config.path is None:
            raise ValueError(f"data.features={source} reads files next to data.path, which is not set")
        directory = Path(config.path).parent
        return ("ml-1m", directory) if source == "ml-1m" else ("attributes", directory / BEAUTY_FILE)
    if source == "taac" or is_taac_dir(source):
        raise ValueError("TAAC features come with a TAAC training directory: set data.path to it (read_dataset)")
    path = Path(source)
    if path.is_file():
        return "attributes", path
    if path.is_dir():
        if all((path / name).is_file() for name in ML1M_FILES):
            return "ml-1m", path
        if (path / BEAUTY_FILE).is_file():
            return "attributes", path / BEAUTY_FILE
        raise ValueError(f"data.features={source}: the directory holds neither the ML-1M side files "
                         f"({', '.join(ML1M_FILES)}) nor {BEAUTY_FILE}")
    raise FileNotFoundError(f"data.features={source}: not none/ml-1m/beauty/taac and no such file or directory")


def read_features(config: DataConfig, inter: Interactions) -> FeatureSet | None:
    """The side features ``config.features`` names, aligned with ``inter`` (see DataConfig.features).

    TAAC features come with the directory: use ``read_dataset`` for TAAC data.
    """
    source = _source(config)
    if source is None:
        return None
    kind, path = source
    return ml1m_features(path, inter) if kind == "ml-1m" else item_attribute_features(path, inter)


def read_item_features(config: DataConfig, raw_ids: Sequence) -> tuple[FeatureSet, np.ndarray] | None:
    """Item features of any raw item ids, from the source ``config.features`` names, in or out of the log.

    The ML-1M files and attribute JSON files are keyed by raw item id (for ML-1M: the SASRec ids of
    ``sas_to_original_items.txt``), so they can describe items the interaction log never names, e.g.
    items a k-core filter or a shorter log dropped. A TAAC training directory cannot: its feature file
    only lists the indexer's items, which are all in the training catalogue already.

    Args:
        config: the data config of the run.
        raw_ids: the items to read, as raw ids (ints or decimal strings).

    Returns:
        ``(features, found)``: features of ``raw_ids`` as items 1..n (row 0 = padding, no users) and an
        (n,) bool mask of the ids the source describes; None when the config names no item feature
        source that can describe items outside the training catalogue (none, TAAC).
    """
    if _is_taac(config) or config.features == "taac":
        return None
    source = _source(config)
    if source is None:
        return None
    kind, path = source
    rows = np.empty(len(raw_ids) + 1, dtype=object)
    rows[0] = None
    rows[1:] = list(raw_ids)
    features, matched = ml1m_items(path, rows) if kind == "ml-1m" else attribute_items(path, rows)
    return features, matched[1:]



def read_dataset(config: DataConfig, *, progress: bool = False) -> tuple[Interactions, FeatureSet | None]:
    """Interactions and side features of ``config``; a TAAC directory is read once for both."""
    if _is_taac(config):
        return read_taac_dataset(config, progress=progress)
    if config.features == "taac":
        raise ValueError("data.features=taac needs data.path to be a TAAC training directory (with seq.jsonl)")
    inter = read_interactions(config)
    return inter, read_features(config, inter)
