"""Top-K recommendations in raw ids from a trained checkpoint.

The user vector is the encoder output at the last position over the user's full history (every
event, the most recent included). User and item vectors are L2-normalised if and only if the
checkpoint's recorded similarity is ``cosine``; the search is inner product over those vectors, so the
ranking is the one ``evaluate`` scores.

Candidate sets (``resolve_candidates``): a candidate the model was not trained on is embedded from its
side features by the checkpoint's item tower (``embed_unseen_items``, the mechanism ``taac-infer``
uses), when the run's feature source describes it; the restricted search is then exact over the
candidate vectors, and such an item appears in results as catalogue row ``I + 1 + j`` (see
``Candidates.item_ids``). Candidates with neither a trained id nor features, and every unknown
candidate of an id-only model, are reported and skipped.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from seqrec.config import DataConfig, ModelConfig, config_from_dict
from seqrec.data.batches import left_padded_windows
from seqrec.data.dataset import Interactions
from seqrec.data.features import read_dataset, read_item_features
from seqrec.model.features import embed_unseen_items, model_from_state, reload_vectors
from seqrec.model.sasrec import SASRec
from seqrec.retrieval.ids import ItemLookup, shown
from seqrec.retrieval.index import IndexConfig, build_index
from seqrec.retrieval.search import search
from seqrec.train.checkpoint import CheckpointError, ids_from_list, load_checkpoint

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: SASRec
    similarity: str
    item_ids: np.ndarray  # (I + 1,) raw ids, [0] = padding placeholder
    user_ids: np.ndarray  # (U,) raw ids
    state: dict[str, Any]

    def item_vectors(self, ids: np.ndarray | None = None) -> np.ndarray:
        """(I, D) float32 vectors of items 1..I (row r = internal item r + 1), or (n, D) of internal
        ``ids``, normalised for cosine."""
        with torch.no_grad():
            if ids is None:
                vecs = self.model.item_embeddings()[1:]
            else:
                vecs = self.model.item_embeddings(torch.as_tensor(np.asarray(ids, dtype=np.int64)))
        return self._finish(vecs)

    def _finish(self, vecs: torch.Tensor) -> np.ndarray:
        vecs = vecs.detach().float()
        if self.similarity == "cosine":
            vecs = F.normalize(vecs, dim=-1)
        return np.ascontiguousarray(vecs.numpy(), dtype=np.float32)

    @torch.no_grad()
    def user_vectors(self, histories: torch.Tensor, users: torch.Tensor | None = None) -> np.ndarray:
        """(B, L) left-padded histories (and optional (B,) user rows for user features) -> (B, D) float32
        user vectors, normalised for cosine."""
        vecs = self.model.user_embeddings(histories, users).float()
        if self.similarity == "cosine":
            vecs = F.normalize(vecs, dim=-1)
        return np.ascontiguousarray(vecs.numpy(), dtype=np.float32)


def load_model(path: str | Path) -> LoadedModel:
    """Loads a run directory or checkpoint file into an eval-mode model with its id maps."""
    state = load_checkpoint(path)
    config = config_from_dict(state["config"], where=state["path"])
    similarity = state["similarity"]
    if similarity not in ("cosine", "dot"):
        raise ValueError(f"{state['path']}: unknown similarity {similarity!r} in checkpoint")
    try:  # the feature towers' shapes come from the state dict itself (see model/features.py)
        model = model_from_state(state["num_items"], ModelConfig(**vars(config.model)), state["model"])
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:  # missing, unexpected or mis-shaped weights
        reason = " ".join(str(exc).split())  # torch's message spans several lines
        raise CheckpointError(f"{state['path']}: the model weights do not match the stored config ({reason})") from exc
    if model.item_tower is not None and model.item_tower.unloaded_vectors:
        reload_vectors(model, read_dataset(config.data)[1])  # wide vectors are not kept in checkpoints
    model.eval()
    return LoadedModel(model, similarity, ids_from_list(state["item_ids"]), ids_from_list(state["user_ids"]), state)


def user_rows(inter: Interactions, users: list | None) -> np.ndarray:
    """Internal rows of the requested raw user ids (all users when None); unknown ids raise ValueError."""
    if users is None:
        return np.arange(inter.num_users)
    lookup = {raw: u for u, raw in enumerate(inter.user_ids.tolist())}
    rows, unknown = [], []
    for raw in users:
        key = raw
        if key not in lookup and isinstance(raw, str) and raw.lstrip("-").isdigit():
            key = int(raw)
        if key in lookup:
            rows.append(lookup[key])
        else:
            unknown.append(raw)
    if unknown:
        raise ValueError(f"unknown user id(s): {', '.join(map(str, unknown[:10]))}{' ...' if len(unknown) > 10 else ''}")
    return np.asarray(rows, dtype=np.int64)


@dataclass
class Candidates:
    """The items a recommendation may return (``resolve_candidates``).

    Attributes:
        ids: (K,) sorted unique internal ids of the candidates the model was trained on.
        new_ids: raw ids of candidates unseen in training, embedded from their side features; in results
            the j-th is catalogue row ``I + 1 + j`` (I = the model's items), see ``item_ids``.
        new_vectors: (n, D) float32 vectors of ``new_ids``, normalised for cosine checkpoints.
        skipped: raw ids with neither a trained id nor features (never returned).
        requested: distinct ids asked for.
    """

    ids: np.ndarray
    new_ids: list[Any]
    new_vectors: np.ndarray
    skipped: list[Any]
    requested: int

    def item_ids(self, item_ids: np.ndarray) -> np.ndarray:
        """Raw ids of catalogue rows 0..I + n: the model's ``item_ids`` followed by ``new_ids``."""
        if not self.new_ids:
            return item_ids
        out = np.empty(len(item_ids) + len(self.new_ids), dtype=object)
        out[: len(item_ids)] = item_ids.tolist()
        out[len(item_ids) :] = self.new_ids
        return out

    def summary(self) -> str:
        return (f"{self.requested} candidate ids: {len(self.ids)} known to the model, {len(self.new_ids)} embedded "
                f"from their features, {len(self.skipped)} skipped (no trained id, no features)")


def resolve_candidates(
    loaded: LoadedModel, values: list[Any], data: DataConfig | None = None, *, where: str = "the candidates",
    lookup: ItemLookup | None = None, warn: bool = True,
) -> Candidates:
    """Raw candidate ids -> the trained ones, plus the unseen ones embedded from their side features.

    A candidate the model has no trained id for is embedded by the checkpoint's item tower from the
    features ``data.features`` gives it (``read_item_features``: the ML-1M files and attribute JSON files
    can describe items outside the interaction log; a TAAC training directory cannot). A model without
    an item tower cannot embed it. Either way, those left are skipped with a warning naming them.

    Args:
        loaded: the model.
        values: raw item ids (ints or strings; ``"42"`` finds the raw int ``42``).
        data: where the features are read from; default the run's stored data config.
        where: names the source of ``values`` in messages.
        lookup: an ``ItemLookup`` of ``loaded.item_ids`` to reuse (built per call otherwise).
        warn: log skipped and embedded ids (the service reports them in its answer instead).

    Raises:
        ValueError: If no candidate is known to the model or embedded from features.
    """
    requested = len({(type(v).__name__, v) for v in values})
    ids, unknown = (lookup or ItemLookup(loaded.item_ids)).lookup(values)
    new_ids: list[Any] = []
    new_vectors = np.zeros((0, loaded.model.config.hidden_dim), dtype=np.float32)
    skipped = list(unknown)
    tower = loaded.model.item_tower
    if unknown and tower is not None:
        data = data if data is not None else config_from_dict(loaded.state["config"], where=loaded.state["path"]).data
        found = read_item_features(data, unknown)
        if found is not None and found[1].any():
            features, has = found
            rows = np.flatnonzero(has)
            new_vectors = loaded._finish(embed_unseen_items(loaded.model, features.take_items(np.r_[0, rows + 1])))
            integer = np.issubdtype(loaded.item_ids.dtype, np.integer)
            new_ids = [_raw_id(unknown[r], integer) for r in rows.tolist()]
            skipped = [v for v, ok in zip(unknown, has.tolist(), strict=True) if not ok]
    if not warn:
        pass
    elif tower is None and skipped:
        log.warning("%d of %d candidate ids in %s are unknown to the model and skipped: %s",
                    len(skipped), requested, where, shown(skipped))
    elif skipped:
        log.warning("%d of %d candidate ids in %s are unknown to the model: %d embedded from their features, "
                    "%d with neither a trained id nor features skipped: %s",
                    len(unknown), requested, where, len(new_ids), len(skipped), shown(skipped))
    elif new_ids:
        log.info("%d of %d candidate ids in %s are unknown to the model and embedded from their features",
                 len(new_ids), requested, where)
    if not len(ids) and not new_ids:
        raise ValueError(f"none of the {requested} candidate ids in {where} is known to the model"
                         + (" or has features" if tower is not None else ""))
    return Candidates(np.unique(ids), new_ids, new_vectors, skipped, requested)


def _raw_id(value: Any, integer: bool) -> Any:
    """A raw id as the catalogue spells its ids: an int for a decimal string when they are ints."""
    if integer and isinstance(value, str):
        text = value.strip()
        if text.lstrip("+-").isdigit() and text.isascii():
            return int(text)
    return value


def recommend_batches(
    loaded: LoadedModel,
    inter: Interactions,
    rows: np.ndarray,
    k: int,
    *,
    exclude_seen: bool = True,
    index_config: IndexConfig | None = None,
    batch_size: int = 1024,
    progress: bool = False,
    index: Any = None,
    candidates: np.ndarray | Candidates | None = None,
    user_features: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yields (user rows (b,), item ids (b, k) internal, scores (b, k)) batch by batch.

    ``index``: a faiss index over ``loaded.item_vectors()`` (row r = item r + 1) to search instead of
    building one from ``index_config``. ``candidates``: internal item ids, or a ``Candidates``; only
    these may be returned. Candidates embedded from features are searched exactly together with the
    trained ones (over the candidate vectors only; ``index`` is not used) and come out as catalogue rows
    ``I + 1 + j``: map them with ``Candidates.item_ids``. A user left with fewer than k eligible items
    gets id 0 (and score -inf) in the remaining slots. ``user_features=False``: the rows of ``inter``
    are not users of the run's data (histories sent by a caller), so no user-tower vector is used.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if inter.num_items != loaded.model.num_items:
        raise ValueError(
            f"the data has {inter.num_items} items but the checkpoint was trained on {loaded.model.num_items}"
        )
    if isinstance(candidates, Candidates) and candidates.new_ids:
        yield from _recommend_with_new(loaded, inter, rows, k, candidates, exclude_seen, batch_size, progress,
                                       user_features)
        return
    if isinstance(candidates, Candidates):
        candidates = candidates.ids
    if index is None:
        index = build_index(loaded.item_vectors(), index_config or IndexConfig(), progress=False)
    elif index.ntotal != loaded.model.num_items:
        raise ValueError(f"the index holds {index.ntotal} items but the checkpoint has {loaded.model.num_items}")
    allowed = None if candidates is None else np.asarray(candidates, dtype=np.int64) - 1
    maxlen = loaded.model.config.maxlen
    for start in _steps(len(rows), batch_size, progress):
        u = rows[start : start + batch_size]
        starts, ends = inter.offsets[u], inter.offsets[u + 1]
        width = int(min(max((ends - starts).max(initial=1), 1), maxlen))  # the encoder is padding-invariant
        window = torch.from_numpy(left_padded_windows(inter.items, starts, ends, width))
        queries = loaded.user_vectors(window, torch.from_numpy(u) if user_features else None)
        exclude = [inter.items[s:e] - 1 for s, e in zip(starts, ends, strict=True)] if exclude_seen else None
        scores, found = search(index, queries, k, exclude=exclude, allowed=allowed)
        yield u, found + 1, scores


def _recommend_with_new(
    loaded: LoadedModel, inter: Interactions, rows: np.ndarray, k: int, candidates: Candidates,
    exclude_seen: bool, batch_size: int, progress: bool, user_features: bool,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``recommend_batches`` over trained and feature-embedded candidates: exact search over their vectors."""
    num_items = loaded.model.num_items
    known = np.asarray(candidates.ids, dtype=np.int64)
    trained = loaded.item_vectors(known) if len(known) else np.zeros((0, candidates.new_vectors.shape[1]), np.float32)
    vectors = np.concatenate([trained, candidates.new_vectors])
    index = build_index(vectors, IndexConfig(kind="exact"), progress=False)
    catalogue_row = np.concatenate([known, num_items + 1 + np.arange(len(candidates.new_ids))])  # index row -> id
    position = np.full(num_items + 1, -1, dtype=np.int64)  # internal id -> index row (seen-item exclusion)
    position[known] = np.arange(len(known))
    maxlen = loaded.model.config.maxlen
    for start in _steps(len(rows), batch_size, progress):
        u = rows[start : start + batch_size]
        starts, ends = inter.offsets[u], inter.offsets[u + 1]
        width = int(min(max((ends - starts).max(initial=1), 1), maxlen))
        window = torch.from_numpy(left_padded_windows(inter.items, starts, ends, width))
        queries = loaded.user_vectors(window, torch.from_numpy(u) if user_features else None)
        exclude = None
        if exclude_seen:
            exclude = [(p := position[inter.items[s:e]])[p >= 0] for s, e in zip(starts, ends, strict=True)]
        scores, found = search(index, queries, k, exclude=exclude)
        yield u, np.where(found >= 0, catalogue_row[np.maximum(found, 0)], 0), scores


def _steps(count: int, batch_size: int, progress: bool) -> Any:
    """Batch starts, with a progress bar only when asked (a disabled tqdm still costs per call, which
    the service, one small call per batch, pays)."""
    starts = range(0, count, batch_size)
    return tqdm(starts, desc="recommend", unit="batch") if progress else starts


def write_recommendations(
    path: str | Path,
    batches: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]],
    user_ids: np.ndarray,
    item_ids: np.ndarray,
) -> int:
    """Streams recommendations to CSV (``user_id,rank,item_id,score``) or JSONL (by suffix); returns users written.

    Written to a temporary file and renamed at the end, so a failure never leaves a half file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    jsonl = path.suffix.lower() in (".jsonl", ".json")
    count = 0
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            writer = None if jsonl else csv.writer(handle)
            if writer:
                writer.writerow(["user_id", "rank", "item_id", "score"])
            for rows, items, scores in batches:
                for u, its, scs in zip(rows, items, scores, strict=True):
                    raw_user = _plain(user_ids[u])
                    valid = its > 0  # search pads with -1 (+1 = 0) when fewer than k candidates exist
                    raw_items = [_plain(item_ids[i]) for i in its[valid]]
                    if writer:
                        writer.writerows(
                            [raw_user, r + 1, it, f"{s:.6f}"] for r, (it, s) in enumerate(zip(raw_items, scs[valid], strict=True))
                        )
                    else:
                        handle.write(json.dumps({"user_id": raw_user, "items": raw_items,
                                                 "scores": [round(float(s), 6) for s in scs[valid]]}) + "\n")
                    count += 1
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:  # e.g. ENOSPC from write/fsync names no file
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise
    return count


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
