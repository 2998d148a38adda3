"""Item and user towers: side features -> one vector per item (or user), as in the TAAC 2025 baseline.

An item's vector is ``act(Linear(concat(parts)))`` where the parts are, in this order: its id embedding
(optional, ``model.use_item_id``), one embedding per categorical feature, the mean embedding of each
multi-valued feature (EmbeddingBag), the continuous scalars as they are, and each multimodal vector
projected by ``Linear(dim, hidden)``, with a learned "absent" vector in place of a missing one (a
missing vector says nothing, so it must not look like a real vector of zeros). An item unseen in
training, with no trained id embedding, still gets a vector from its features.

The feature arrays are buffers of the tower (the "catalogue": one row per item id, row 0 = padding), so
``tower(ids)`` is an id-only call and the same module embeds inputs, positives, negatives and retrieval
candidates. Each call embeds every distinct id once (``torch.unique`` then index), so a batch's
repeated negatives cost one row each. Buffers are saved with the model, except multimodal vectors wider
than ``model.vector_buffer_max_dim``: those would make checkpoints as large as the data set, so they are
not persistent and ``reload_vectors`` re-reads them from ``config.data``. The catalogue can be replaced
(``set_catalogue``) or extended (``extend_catalogue``: no trained id for the added items) to embed items
the model never saw, e.g. the TAAC candidates or ``recommend --candidates`` ids outside the log.

Deviations from the baseline: multi-valued features are averaged rather than summed (lists of different
lengths then give vectors of one scale); missing categorical values embed to zero (padding row).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seqrec.config import ModelConfig
from seqrec.data.dataset import PAD_ID
from seqrec.data.feature_set import FeatureSet, concat_items

log = logging.getLogger(__name__)

MAX_BAG_VALUES = 64  # values kept per multi-valued feature and row (longer lists are truncated, with a warning)
TABLE_CHUNK = 65536  # rows per tower call when the whole catalogue is embedded


def _activation(name: str):
    return {"relu": F.relu, "gelu": F.gelu, "none": lambda x: x}[name]


def _padded_bags(offsets: np.ndarray, values: np.ndarray, width: int, cardinality: int, name: str) -> np.ndarray:
    """CSR lists -> (R, width) int64 left-aligned, 0-padded; values outside the table become 0 (missing)."""
    lengths = offsets[1:] - offsets[:-1]
    if lengths.size and lengths.max() > width:
        log.warning("feature %s: %d rows have more than %d values; the rest are ignored",
                    name, int((lengths > width).sum()), width)
    cols = np.arange(width)
    idx = offsets[:-1, None] + cols[None, :]
    keep = cols[None, :] < lengths[:, None]
    out = np.where(keep, values[np.where(keep, idx, 0)] if len(values) else 0, 0).astype(np.int64)
    out[(out < 0) | (out >= cardinality)] = 0
    return out


def _known(values: np.ndarray, cardinality: int) -> np.ndarray:
    """Value ids outside the embedding table (unseen at training time) become 0, missing."""
    values = np.asarray(values, dtype=np.int64)
    return np.where((values >= 0) & (values < cardinality), values, 0)


class _Fused(nn.Module):
    """Shared part of both towers: categorical and multi-valued embeddings and the fusing layer."""

    def __init__(self, schema: dict[str, Any], hidden_dim: int, activation: str, extra_inputs: int):
        super().__init__()
        self.schema = schema
        d = hidden_dim
        self.cat_emb = nn.ModuleDict({name: nn.Embedding(card, d, padding_idx=PAD_ID) for name, card in schema["categorical"]})
        self.bag_emb = nn.ModuleDict(
            {name: nn.EmbeddingBag(card, d, mode="mean", padding_idx=PAD_ID) for name, card, _ in schema["multi"]}
        )
        for bag in self.bag_emb.values():  # EmbeddingBag keeps N(0, 1); match nn.Embedding's init in SASRec
            nn.init.normal_(bag.weight, std=d**-0.5)
            with torch.no_grad():
                bag.weight[PAD_ID].zero_()
        in_dim = d * (len(self.cat_emb) + len(self.bag_emb)) + extra_inputs
        self.fuse = nn.Linear(in_dim, d)
        self.act = _activation(activation)
        rows = schema["rows"]
        self.register_buffer("cat_values", torch.zeros(rows, len(self.cat_emb), dtype=torch.long))
        for name, _, width in schema["multi"]:
            self.register_buffer(f"bag_{name}", torch.zeros(rows, width, dtype=torch.long))

    def get_extra_state(self) -> dict[str, Any]:
        # The schema travels in the state dict (plain lists and ints), so a checkpoint rebuilds the tower.
        return self.schema

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if _comparable(state) != _comparable(self.schema):
            raise ValueError(f"feature schema of the checkpoint {state} differs from the model's {self.schema}")

    @property
    def num_rows(self) -> int:
        return self.cat_values.shape[0]

    def _sparse_parts(self, rows: torch.Tensor) -> list[torch.Tensor]:
        parts = []
        cats = self.cat_values[rows]  # (N, F)
        for j, emb in enumerate(self.cat_emb.values()):
            parts.append(emb(cats[:, j]))
        for name, bag in self.bag_emb.items():
            parts.append(bag(getattr(self, f"bag_{name}")[rows]))  # mean over the row's values, padding excluded
        return parts

    def _set_sparse(self, categorical: dict[str, np.ndarray], multi: dict[str, tuple[np.ndarray, np.ndarray]],
                    rows: int, device: torch.device) -> None:
        cats = np.zeros((rows, len(self.cat_emb)), dtype=np.int64)
        for j, (name, card) in enumerate(self.schema["categorical"]):
            if name in categorical:
                cats[:, j] = _known(categorical[name], card)
        self.cat_values = torch.from_numpy(cats).to(device)
        widths = []
        for name, card, _ in self.schema["multi"]:
            # The padded width follows the new rows' longest list: buffers are replaced whole anyway.
            width = _bag_width(multi[name][0]) if name in multi else 1
            bags = _padded_bags(*multi[name], width, card, name) if name in multi else np.zeros((rows, 1), np.int64)
            setattr(self, f"bag_{name}", torch.from_numpy(bags).to(device))
            widths.append([name, card, width])
        self.schema = {**self.schema, "rows": rows, "multi": widths}


def _comparable(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema without what a replaced catalogue changes (row count, list widths), tuples as lists."""
    def plain(value):
        return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value
    out = {k: plain(v) for k, v in schema.items() if k != "rows"}
    out["multi"] = [entry[:2] for entry in out["multi"]]
    return out


def _bag_width(offsets: np.ndarray) -> int:
    lengths = offsets[1:] - offsets[:-1]
    return int(min(max(int(lengths.max(initial=1)), 1), MAX_BAG_VALUES))


class ItemTower(_Fused):
    """Item id -> (D,) vector from the id embedding and the side features (see the module docstring).

    Args:
        schema: what ``item_schema`` returns; fixes every table and buffer shape.
        hidden_dim: D.
        activation: ``relu`` | ``gelu`` | ``none`` after the fusing Linear.
        id_dropout: in training, the chance that an id's embedding is zeroed, as an unseen item's is.
    """

    def __init__(self, schema: dict[str, Any], hidden_dim: int, activation: str = "relu", id_dropout: float = 0.0):
        extra = hidden_dim * (int(schema["use_item_id"]) + len(schema["vectors"])) + len(schema["continuous"])
        super().__init__(schema, hidden_dim, activation, extra)
        d = hidden_dim
        self.id_dropout = id_dropout
        self.id_emb = nn.Embedding(schema["num_ids"] + 1, d, padding_idx=PAD_ID) if schema["use_item_id"] else None
        # Untied (model.tied_embeddings=false): candidates also get an id vector of their own, added to their
        # features' vector, so an item can score high after another without looking like it (a successor
        # relation, which one shared table can only learn through the encoder's weights). Items without a trained id (row 0: unseen in training) still score by their features.
        self.out_id_emb = (nn.Embedding(schema["num_ids"] + 1, d, padding_idx=PAD_ID)
                           if schema.get("output_ids", False) else None)
        # Untied, the candidate side also fuses the same feature parts with a Linear of its own: with one
        # shared fusing layer an item's candidate vector carries its input vector, which the encoder's
        # residual stream carries to the last position, so the last history item ranks first (on synthetic
        # TAAC data: top-1 for 70-80% of the users, the target for 2%). Checkpoints whose schema has no
        # ``output_fuse`` (written before it) keep the shared layer.
        self.out_fuse = nn.Linear(self.fuse.in_features, d) if schema.get("output_fuse", False) else None
        self.vec_proj = nn.ModuleDict({name: nn.Linear(dim, d) for name, dim, _ in schema["vectors"]})
        self.vec_absent = nn.ParameterDict({name: nn.Parameter(torch.randn(d) * d**-0.5) for name, _, _ in schema["vectors"]})
        rows = schema["rows"]
        # id_rows maps a catalogue row to its id-embedding row: the identity in training, 0 (no trained
        # id) for items added at inference.
        self.register_buffer("id_rows", torch.arange(rows, dtype=torch.long))
        self.register_buffer("continuous", torch.zeros(rows, len(schema["continuous"])))
        self.unloaded_vectors: set[str] = set()
        for name, dim, persistent in schema["vectors"]:
            self.register_buffer(f"vec_{name}", torch.zeros(rows, dim), persistent=persistent)
            self.register_buffer(f"present_{name}", torch.zeros(rows, dtype=torch.bool), persistent=persistent)
            if not persistent:
                self.unloaded_vectors.add(name)

    @classmethod
    def from_features(cls, features: FeatureSet, num_ids: int, config: ModelConfig) -> ItemTower:
        tower = cls(item_schema(features, num_ids, config), config.hidden_dim, config.tower_activation,
                    config.item_id_dropout)
        tower.set_catalogue(features)
        return tower

    def set_catalogue(self, features: FeatureSet, id_rows: np.ndarray | None = None) -> None:
        """Replaces the per-item buffers by ``features``' items (row 0 = padding).

        Args:
            features: must hold the schema's features (a missing one is all-missing/absent); value ids
                outside a table (unseen in training) become missing.
            id_rows: (I' + 1,) id-embedding row of each item, 0 = no trained id; default the identity
                (the catalogue is the training catalogue).
        """
        rows = features.num_items + 1
        device = self.cat_values.device
        if id_rows is None:
            if rows != self.schema["num_ids"] + 1:
                raise ValueError(f"a catalogue of {rows - 1} items needs id_rows (the model knows {self.schema['num_ids']} ids)")
            id_rows = np.arange(rows)
        id_rows = np.asarray(id_rows, dtype=np.int64)
        if id_rows.shape != (rows,) or id_rows.min() < 0 or id_rows.max() > self.schema["num_ids"]:
            raise ValueError(f"id_rows must be ({rows},) ids in [0, {self.schema['num_ids']}]")
        self.id_rows = torch.from_numpy(id_rows).to(device)
        self._set_sparse(features.item_categorical, features.item_multi, rows, device)
        names = list(self.schema["continuous"])
        cont = np.zeros((rows, len(names)), dtype=np.float32)
        for j, name in enumerate(names):
            if name in features.continuous_names:
                cont[:, j] = features.item_continuous[:, features.continuous_names.index(name)]
        self.continuous = torch.from_numpy(cont).to(device)
        for name, dim, _ in self.schema["vectors"]:
            matrix = np.zeros((rows, dim), dtype=np.float32)
            present = np.zeros(rows, dtype=bool)
            if name in features.item_vectors:
                given, mask = features.item_vectors[name]
                if given.shape[1] != dim:
                    raise ValueError(f"vector feature {name}: dim {given.shape[1]}, the model expects {dim}")
                matrix, present = given.astype(np.float32, copy=False), mask.astype(bool, copy=False)
            present = present.copy()
            present[PAD_ID] = False
            setattr(self, f"vec_{name}", torch.from_numpy(np.ascontiguousarray(matrix)).to(device))
            setattr(self, f"present_{name}", torch.from_numpy(present).to(device))
        self.unloaded_vectors = set()

    def catalogue_features(self) -> FeatureSet:
        """The current catalogue as a FeatureSet (items only), the inverse of ``set_catalogue``."""
        if self.unloaded_vectors:
            raise RuntimeError(f"vector features {sorted(self.unloaded_vectors)} are not loaded; call reload_vectors")
        rows = self.num_rows
        cats = self.cat_values.cpu().numpy()
        categorical = {name: cats[:, j].copy() for j, (name, _) in enumerate(self.schema["categorical"])}
        multi = {}
        for name, _, _ in self.schema["multi"]:
            bags = getattr(self, f"bag_{name}").cpu().numpy()
            keep = bags != PAD_ID  # 0 is padding or missing: both ignored by the EmbeddingBag
            offsets = np.zeros(rows + 1, dtype=np.int64)
            np.cumsum(keep.sum(axis=1), out=offsets[1:])
            multi[name] = (offsets, bags[keep])
        names = tuple(self.schema["continuous"])
        vectors = {name: (getattr(self, f"vec_{name}").cpu().numpy(), getattr(self, f"present_{name}").cpu().numpy())
                   for name, _, _ in self.schema["vectors"]}
        return FeatureSet(
            num_items=rows - 1,
            num_users=0,
            item_categorical=categorical,
            item_multi=multi,
            item_continuous=self.continuous.cpu().numpy() if names else None,
            continuous_names=names,
            item_vectors=vectors,
            cardinality={name: card for name, card, *_ in [*self.schema["categorical"], *self.schema["multi"]]},
        )

    def extend_catalogue(self, new: FeatureSet, base: FeatureSet | None = None) -> np.ndarray:
        """Adds items unseen in training after ``base``'s: they have no trained id (id row 0), so their
        vectors come from their features alone. The one way both ``taac-infer`` and ``recommend
        --candidates`` embed unseen items.

        Args:
            new: the unseen items' features as items 1..n (values outside the trained tables become
                missing; its users are kept in the catalogue's FeatureSet but not used here).
            base: the catalogue they follow, whose items keep their id rows (the identity: the training
                catalogue); default the current catalogue, id rows included.

        Returns:
            (n,) int64 catalogue rows of the new items (``base.num_items + 1`` on).
        """
        if base is None:
            base, base_rows = self.catalogue_features(), self.id_rows.cpu().numpy()
        else:
            base_rows = np.arange(base.num_items + 1)
        self.set_catalogue(concat_items(base, new), np.concatenate([base_rows, np.zeros(new.num_items, dtype=np.int64)]))
        return np.arange(base.num_items + 1, base.num_items + 1 + new.num_items, dtype=np.int64)

    @contextmanager
    def catalogue_kept(self) -> Iterator[None]:
        """Restores the catalogue (buffers, schema) on exit, whatever ``set_catalogue`` did inside."""
        names = ["id_rows", "cat_values", "continuous", *(f"bag_{n}" for n, _, _ in self.schema["multi"]),
                 *(f"{prefix}_{n}" for n, _, _ in self.schema["vectors"] for prefix in ("vec", "present"))]
        saved = {name: getattr(self, name) for name in names}
        schema, unloaded = self.schema, set(self.unloaded_vectors)
        try:
            yield
        finally:
            for name, value in saved.items():
                setattr(self, name, value)
            self.schema, self.unloaded_vectors = schema, unloaded

    def encode_rows(self, rows: torch.Tensor, output: bool = False) -> torch.Tensor:
        """(N,) catalogue rows -> (N, D); row 0 (padding) gives zeros. ``output``: the candidate side
        (differs from the input side only when untied: its own fusing Linear and output id table)."""
        if self.unloaded_vectors:
            raise RuntimeError(f"vector features {sorted(self.unloaded_vectors)} are not loaded; call reload_vectors")
        parts = []
        if self.id_emb is not None:
            id_part = self.id_emb(self.id_rows[rows])
            if self.training and self.id_dropout > 0:
                # One draw per distinct id (rows are distinct): repeats of an id in a call share a vector,
                # as the InfoNCE pool's grouping by id requires. Zero is what an unseen item gets.
                keep = torch.rand(len(rows), device=rows.device) >= self.id_dropout
                id_part = id_part * keep.unsqueeze(-1).to(id_part.dtype)
            parts.append(id_part)
        parts += self._sparse_parts(rows)
        if self.continuous.shape[1]:
            parts.append(self.continuous[rows])
        for name, proj in self.vec_proj.items():
            projected = proj(getattr(self, f"vec_{name}")[rows])  # (N, D)
            present = getattr(self, f"present_{name}")[rows].unsqueeze(-1)
            parts.append(torch.where(present, projected, self.vec_absent[name].expand_as(projected)))
        fuse = self.out_fuse if output and self.out_fuse is not None else self.fuse
        out = self.act(fuse(torch.cat(parts, dim=-1)))
        if output and self.out_id_emb is not None:
            out = out + self.out_id_emb(self.id_rows[rows])
        return out * (rows != PAD_ID).unsqueeze(-1).to(out.dtype)

    def forward(self, ids: torch.Tensor, output: bool = False) -> torch.Tensor:
        """(...) catalogue rows -> (..., D); each distinct id is embedded once. Empty ``ids`` give (..., D).
        ``output``: candidate vectors (see ``encode_rows``)."""
        uniq, inverse = torch.unique(ids.reshape(-1), return_inverse=True)
        vectors = self.encode_rows(uniq, output)[inverse]  # (N, D)
        return vectors.view(*ids.shape, vectors.shape[-1])  # -1 would be ambiguous for N = 0

    def table(self, output: bool = True) -> torch.Tensor:
        """(R, D) candidate vectors (``output=False``: input vectors) of the whole catalogue, computed in
        chunks of TABLE_CHUNK rows."""
        device = self.cat_values.device
        chunks = [
            self.encode_rows(torch.arange(start, min(start + TABLE_CHUNK, self.num_rows), device=device), output)
            for start in range(0, self.num_rows, TABLE_CHUNK)
        ]
        return torch.cat(chunks)


class UserFeatures(_Fused):
    """User row -> (D,) vector from the user's categorical and multi-valued features.

    No user id embedding: the vector must exist for users unseen in training (TAAC's test users), whose
    rows are set with ``set_users``.
    """

    @classmethod
    def from_features(cls, features: FeatureSet, config: ModelConfig) -> UserFeatures:
        tower = cls(user_schema(features), config.hidden_dim, config.tower_activation, 0)
        tower.set_users(features)
        return tower

    def set_users(self, features: FeatureSet) -> None:
        """Replaces the per-user buffers by ``features``' users (rows 0..U-1)."""
        self._set_sparse(features.user_categorical, features.user_multi, features.num_users, self.cat_values.device)

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        """(B,) user rows -> (B, D)."""
        return self.act(self.fuse(torch.cat(self._sparse_parts(users), dim=-1)))


def item_schema(features: FeatureSet, num_ids: int, config: ModelConfig) -> dict[str, Any]:
    """Shapes of an item tower over ``features`` (plain lists, stored in the checkpoint)."""
    return {
        "rows": features.num_items + 1,
        "num_ids": num_ids,
        "use_item_id": config.use_item_id,
        "output_ids": not config.tied_embeddings,
        "output_fuse": not config.tied_embeddings,
        "categorical": [[name, features.cardinality[name]] for name in features.item_categorical],
        "multi": [[name, features.cardinality[name], _bag_width(offsets)] for name, (offsets, _) in features.item_multi.items()],
        "continuous": list(features.continuous_names),
        "vectors": [
            [name, int(matrix.shape[1]), int(matrix.shape[1]) <= config.vector_buffer_max_dim]
            for name, (matrix, _) in features.item_vectors.items()
        ],
    }


def user_schema(features: FeatureSet) -> dict[str, Any]:
    return {
        "rows": features.num_users,
        "categorical": [[name, features.cardinality[name]] for name in features.user_categorical],
        "multi": [[name, features.cardinality[name], _bag_width(offsets)] for name, (offsets, _) in features.user_multi.items()],
    }


# ----------------------------------------------------------------------------------------------------
# Building a model with towers: from data (training) or from a state dict (inference)
# ----------------------------------------------------------------------------------------------------


def has_item_tower(config: ModelConfig, features: FeatureSet | None) -> bool:
    """Whether ``build_model`` embeds items with a tower over ``features``."""
    return features is not None and features.has_item_features and config.item_features


def default_tied(config: ModelConfig, item_tower: bool) -> bool:
    """``model.tied_embeddings``, where unset: untied for an item tower with ids, tied otherwise."""
    if config.tied_embeddings is not None:
        return config.tied_embeddings
    return not (item_tower and config.use_item_id)


def build_model(num_items: int, config: ModelConfig, features: FeatureSet | None = None):
    """SASRec with the towers ``config`` asks for over ``features``.

    Raises:
        ValueError: ``use_item_id=false`` or ``user_features`` without the features they need, or an
            untied output table with an item tower and no item ids (``use_item_id=false``: nothing to untie).
    """
    from seqrec.model.sasrec import SASRec

    item_tower = user_tower = None
    with_tower = has_item_tower(config, features)
    config = dataclasses.replace(config, tied_embeddings=default_tied(config, with_tower))
    if with_tower:
        if not config.tied_embeddings and not config.use_item_id:
            raise ValueError("model.tied_embeddings=false needs model.use_item_id: with features alone the item "
                             "tower embeds inputs and candidates alike")
        item_tower = ItemTower.from_features(features, num_items, config)
    elif not config.use_item_id:
        raise ValueError("model.use_item_id=false needs item side features (data.features) and model.item_features")
    if config.user_features != "none":
        if features is None or not features.has_user_features:
            raise ValueError(f"model.user_features={config.user_features} needs user side features (data.features)")
        user_tower = UserFeatures.from_features(features, config)
    return SASRec(num_items, config, item_tower=item_tower, user_tower=user_tower)


def model_from_state(num_items: int, config: ModelConfig, state_dict: dict[str, Any]):
    """SASRec rebuilt from a saved state dict, towers included (their schemas are in the state dict).

    Vector features kept out of the checkpoint are left unloaded (see ``reload_vectors``).
    """
    from seqrec.model.sasrec import SASRec

    item_state = state_dict.get("item_tower._extra_state")
    user_state = state_dict.get("user_tower._extra_state")
    item_tower = (ItemTower(item_state, config.hidden_dim, config.tower_activation, config.item_id_dropout)
                  if item_state else None)
    user_tower = UserFeatures(user_state, config.hidden_dim, config.tower_activation, 0) if user_state else None
    model = SASRec(num_items, config, item_tower=item_tower, user_tower=user_tower)
    model.load_state_dict(state_dict)
    return model


@torch.no_grad()
def embed_unseen_items(model, new: FeatureSet) -> torch.Tensor:
    """(n, D) vectors of items the model never saw (``new``'s items 1..n), from their features alone.

    The item tower's catalogue is extended with them (``ItemTower.extend_catalogue``, as ``taac-infer``
    does) only while they are embedded, and restored after, so the model's catalogue is unchanged.

    Raises:
        ValueError: If the model has no item tower (an id-only model cannot embed an unseen item).
    """
    tower = getattr(model, "item_tower", None)
    if tower is None:
        raise ValueError("an id-only model (no item tower) cannot embed items unseen in training")
    with tower.catalogue_kept():
        rows = tower.extend_catalogue(new)
        return model.item_embeddings(torch.from_numpy(rows).to(tower.cat_values.device)).detach()


def reload_vectors(model, features: FeatureSet | None) -> None:
    """Fills the vectors that were not saved with the model from ``features`` (the training data)."""
    tower = getattr(model, "item_tower", None)
    if tower is None or not tower.unloaded_vectors:
        return
    if features is None:
        raise ValueError(f"vector features {sorted(tower.unloaded_vectors)} are not in the checkpoint and the data "
                         "has no features to re-read them from")
    id_rows = tower.id_rows.cpu().numpy()
    for name, dim, persistent in tower.schema["vectors"]:
        if persistent:
            continue
        if name not in features.item_vectors:
            raise ValueError(f"vector feature {name} is missing from the re-read data")
        matrix, present = features.item_vectors[name]
        if matrix.shape != (len(id_rows), dim):
            raise ValueError(f"vector feature {name}: re-read shape {matrix.shape}, expected {(len(id_rows), dim)}")
        present = present.copy()
        present[PAD_ID] = False
        device = tower.cat_values.device
        setattr(tower, f"vec_{name}", torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32)).to(device))
        setattr(tower, f"present_{name}", torch.from_numpy(present).to(device))
    tower.unloaded_vectors = set()
