"""Top-K recommendations in raw ids from a trained checkpoint.

The user vector is the encoder output at the last position over the user's full history (every
event, the most recent included). User and item vectors are L2-normalised if and only if the
checkpoint's recorded similarity is ``cosine``; the search is inner product over those vectors, so the
ranking is the one ``evaluate`` scores.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from seqrec.config import ModelConfig, config_from_dict
from seqrec.data.batches import left_padded_windows
from seqrec.data.dataset import Interactions
from seqrec.data.features import read_dataset
from seqrec.model.features import model_from_state, reload_vectors
from seqrec.model.sasrec import SASRec
from seqrec.retrieval.index import IndexConfig, build_index, search
from seqrec.train.checkpoint import CheckpointError, ids_from_list, load_checkpoint


@dataclass
class LoadedModel:
    model: SASRec
    similarity: str
    item_ids: np.ndarray  # (I + 1,) raw ids, [0] = padding placeholder
    user_ids: np.ndarray  # (U,) raw ids
    state: dict[str, Any]

    def item_vectors(self) -> np.ndarray:
        """(I, D) float32 vectors of items 1..I (row r = internal item r + 1), normalised for cosine."""
        with torch.no_grad():
            vecs = self.model.item_embeddings()[1:].detach().float()
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
    candidates: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yields (user rows (b,), item ids (b, k) internal, scores (b, k)) batch by batch.

    ``index``: a faiss index over ``loaded.item_vectors()`` (row r = item r + 1) to search instead of
    building one from ``index_config``. ``candidates``: internal item ids; only these may be returned.
    A user left with fewer than k eligible items gets id 0 (and score -inf) in the remaining slots.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if inter.num_items != loaded.model.num_items:
        raise ValueError(
            f"the data has {inter.num_items} items but the checkpoint was trained on {loaded.model.num_items}"
        )
    if index is None:
        index = build_index(loaded.item_vectors(), index_config or IndexConfig(), progress=False)
    elif index.ntotal != loaded.model.num_items:
        raise ValueError(f"the index holds {index.ntotal} items but the checkpoint has {loaded.model.num_items}")
    allowed = None if candidates is None else np.asarray(candidates, dtype=np.int64) - 1
    maxlen = loaded.model.config.maxlen
    for start in tqdm(range(0, len(rows), batch_size), desc="recommend", disable=not progress, unit="batch"):
        u = rows[start : start + batch_size]
        starts, ends = inter.offsets[u], inter.offsets[u + 1]
        width = int(min(max((ends - starts).max(initial=1), 1), maxlen))  # the encoder is padding-invariant
        window = torch.from_numpy(left_padded_windows(inter.items, starts, ends, width))
        queries = loaded.user_vectors(window, torch.from_numpy(u))
        exclude = [inter.items[s:e] - 1 for s, e in zip(starts, ends, strict=True)] if exclude_seen else None
        scores, found = search(index, queries, k, exclude=exclude, allowed=allowed)
        yield u, found + 1, scores


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
