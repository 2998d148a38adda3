"""A TAAC training directory as a run's data: its interactions and its features as a ``FeatureSet``."""

from __future__ import annotations

from seqrec.config import DataConfig
from seqrec.data.dataset import Interactions
from seqrec.data.feature_set import FeatureSet
from seqrec.data.taac.reader import TaacData, read_taac
from seqrec.errors import DataError


def taac_features(data: TaacData) -> FeatureSet:
    """The features of a ``TaacData``: item sparse/array/vectors, user sparse/array."""
    num_items, num_users = data.num_items, data.interactions.num_users
    used = {*data.item_sparse, *data.item_array, *data.user_sparse, *data.user_array}
    cardinality = {}
    for name in used:
        # The indexer may know more values than the training files use; the larger table wins.
        cardinality[name] = max(int(data.feature_cardinality.get(name, 1)), 1)
    return FeatureSet(
        num_items=num_items,
        num_users=num_users,
        item_categorical=dict(data.item_sparse),
        item_multi=dict(data.item_array),
        item_vectors=dict(data.item_vectors),
        user_categorical=dict(data.user_sparse),
        user_multi=dict(data.user_array),
        cardinality=cardinality,
    )


def read_taac_dataset(config: DataConfig, *, progress: bool = False) -> tuple[Interactions, FeatureSet | None]:
    """The interactions and features of the TAAC training directory ``config.path``.

    Raises:
        DataError: a data setting that does not apply to TAAC data (``data.kcore``, another feature source).
    """
    if config.kcore > 1:
        raise DataError(f"{config.path}: data.kcore is not applied to TAAC data", path=config.path, field="data.kcore")
    data = read_taac(config.path, progress=progress)
    features = None if config.features == "none" else taac_features(data)
    if config.features not in (None, "none", "taac"):
        raise DataError(f"data.features={config.features}: a TAAC directory carries its own features; "
                        "use null, taac or none", path=config.path, field="data.features")
    return data.interactions, features
