"""TAAC 2025 inference: a trained run + an evaluation directory -> the top-10 creative_ids per test user.

Everything the model needs comes from the run's checkpoint (architecture, weights, feature tables)
and from the training directory named in its config (the indexer and the training items' features,
needed to read the evaluation files, which use the training re-ids); nothing is repeated by hand.

Items unseen in training (candidates, and history events the evaluation files name by raw creative_id)
join the catalogue after the training items: they have no trained id embedding, so the item tower
embeds them from their features (the candidate's ``features`` and vectors, or the event's item
features). Histories are used whole (the baseline's reader dropped the most recent item by mistake)
and cut to the last ``model.maxlen`` items. Candidates are scored by inner product of the normalised
(cosine models) or raw (dot models) vectors with an exact FAISS index, and each user gets the 10 best
distinct creative_ids, in ``predict_seq.jsonl`` order. When the directory holds
``predict_targets.jsonl`` (our synthetic data), the score ``0.31 * HR@10 + 0.69 * NDCG@10`` is computed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from seqrec.config import config_from_dict
from seqrec.data.batches import left_padded_windows
from seqrec.data.feature_set import FeatureSet, concat_items, csr_take
from seqrec.data.taac.dataset import taac_features
from seqrec.data.taac.layout import PREDICT_TARGETS_FILE
from seqrec.data.taac.predict import TaacPredict, read_taac_predict, read_taac_targets
from seqrec.data.taac.reader import TaacData, read_taac
from seqrec.data.taac.scoring import competition_score, hit_ndcg_at_10
from seqrec.evaluation.baselines import TransitionCounts, baseline_rankings, item_counts
from seqrec.model.features import model_from_state
from seqrec.retrieval.index import IndexConfig, build_index
from seqrec.retrieval.search import search
from seqrec.train.checkpoint import load_checkpoint


@dataclass
class TaacInference:
    """What ``taac_infer`` wrote and, when the targets are known, how well it did."""

    out: Path
    num_users: int
    num_candidates: int  # distinct candidate creative_ids
    num_new_items: int  # creatives unseen in training, embedded from their features
    hr10: float | None = None
    ndcg10: float | None = None
    score: float | None = None  # 0.31 * HR@10 + 0.69 * NDCG@10
    # With known targets: {"popularity" | "transitions": {"hr10", "ndcg10", "score"}}, the count-based
    # baselines (evaluation/baselines.py) ranking the same candidates under the same rules.
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    # Users whose target is a creative unseen in training, and HR@10 on them ("model" and each baseline).
    unseen_targets: int = 0
    unseen_hr10: dict[str, float] = field(default_factory=dict)


def _key(value: Any) -> int | str:
    """One key per creative: ints (NumPy too) and decimal strings compare equal, as in the reader."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    text = str(value)
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else text


def _column(sparse: dict, arrays: dict, name: str, rows: np.ndarray, cardinality: int) -> np.ndarray:
    """One categorical value per row (an array feature gives its first value); unknown values -> 0."""
    if name in sparse:
        values = sparse[name][rows]
    elif name in arrays:
        offsets, flat = arrays[name]
        has = offsets[rows + 1] > offsets[rows]
        values = np.where(has, flat[np.minimum(offsets[rows], max(len(flat) - 1, 0))] if len(flat) else 0, 0)
    else:
        values = np.zeros(len(rows), dtype=np.int64)
    values = np.asarray(values, dtype=np.int64)
    return np.where((values >= 0) & (values < cardinality), values, 0)


def _lists(sparse: dict, arrays: dict, name: str, rows: np.ndarray, cardinality: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR lists per row (a sparse feature gives a one-value list); unknown values -> 0 (ignored)."""
    if name in arrays:
        offsets, values = csr_take(*arrays[name], rows)
    else:
        single = sparse[name][rows] if name in sparse else np.zeros(len(rows), dtype=np.int64)
        offsets = np.arange(len(rows) + 1, dtype=np.int64)
        values = np.asarray(single, dtype=np.int64)
    return offsets, np.where((values >= 0) & (values < cardinality), values, 0)


def _concat_csr(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([a[0], b[0][1:] + a[0][-1]]), np.concatenate([a[1], b[1]])


def unseen_items(
    train_features: FeatureSet, train: TaacData, predict: TaacPredict
) -> tuple[FeatureSet, np.ndarray, np.ndarray]:
    """Every creative of the evaluation files unseen in training, to follow the training items.

    Returns:
        ``(new, history_rows, candidate_rows)``: the unseen creatives' features as items 1..n, values
        in the training tables (users: the evaluation users), and the catalogue row of every history
        event and of every candidate once ``new`` follows the training items (``extend_catalogue``).
    """
    num_items = train.num_items
    cand = predict.candidates
    new_rows: dict[int | str, int] = {}
    from_candidate: list[int] = []  # candidate index of each new row, or -1
    from_event: list[int] = []  # event index of each new row, or -1
    candidate_rows = cand.items.astype(np.int64).copy()
    for c in np.flatnonzero(cand.items == 0).tolist():
        key = _key(cand.creative_ids[c])
        if key not in new_rows:
            new_rows[key] = num_items + 1 + len(new_rows)
            from_candidate.append(c)
            from_event.append(-1)
        candidate_rows[c] = new_rows[key]
    history_rows = predict.items.astype(np.int64).copy()
    for e in np.flatnonzero(predict.items == 0).tolist():
        key = _key(predict.raw_items[e])
        if key not in new_rows:
            new_rows[key] = num_items + 1 + len(new_rows)
            from_candidate.append(-1)
            from_event.append(e)
        history_rows[e] = new_rows[key]
    by_cand = np.asarray(from_candidate, dtype=np.int64)
    by_event = np.asarray(from_event, dtype=np.int64)
    use_cand = by_cand >= 0
    card = train_features.cardinality

    def new_column(name: str) -> np.ndarray:
        out = np.zeros(len(by_cand), dtype=np.int64)
        out[use_cand] = _column(cand.sparse, cand.array, name, by_cand[use_cand], card[name])
        out[~use_cand] = _column(predict.event_sparse, predict.event_array, name, by_event[~use_cand], card[name])
        return out

    def new_lists(name: str) -> tuple[np.ndarray, np.ndarray]:
        # New rows in order: each from a candidate or an event, so interleave the two CSR sources.
        c_off, c_val = _lists(cand.sparse, cand.array, name, by_cand[use_cand], card[name])
        e_off, e_val = _lists(predict.event_sparse, predict.event_array, name, by_event[~use_cand], card[name])
        lists: list[np.ndarray] = []
        ci = ei = 0
        for is_cand in use_cand.tolist():
            if is_cand:
                lists.append(c_val[c_off[ci] : c_off[ci + 1]])
                ci += 1
            else:
                lists.append(e_val[e_off[ei] : e_off[ei + 1]])
                ei += 1
        offsets = np.zeros(len(lists) + 1, dtype=np.int64)
        np.cumsum([len(v) for v in lists], out=offsets[1:])
        return offsets, np.concatenate(lists) if lists else np.zeros(0, dtype=np.int64)

    vectors = {}
    for name, (matrix, _) in train_features.item_vectors.items():
        new_matrix = np.zeros((len(by_cand) + 1, matrix.shape[1]), dtype=np.float32)  # row 0: padding
        new_present = np.zeros(len(by_cand) + 1, dtype=bool)
        if name in cand.vectors:  # history-only new items have no vector: absent
            c_matrix, c_present = cand.vectors[name]
            new_matrix[1:][use_cand] = c_matrix[by_cand[use_cand]]
            new_present[1:][use_cand] = c_present[by_cand[use_cand]]
        vectors[name] = (new_matrix, new_present)

    num_users = predict.num_users
    users = np.arange(num_users)
    padding = (np.zeros(2, dtype=np.int64), np.zeros(0, dtype=np.int64))  # row 0: one empty list
    new = FeatureSet(
        num_items=len(by_cand),
        num_users=num_users,
        item_categorical={n: np.r_[0, new_column(n)] for n in train_features.item_categorical},
        item_multi={n: _concat_csr(padding, new_lists(n)) for n in train_features.item_multi},
        item_vectors=vectors,
        user_categorical={
            n: _column(predict.user_sparse, predict.user_array, n, users, card[n]) for n in train_features.user_categorical
        },
        user_multi={n: _lists(predict.user_sparse, predict.user_array, n, users, card[n]) for n in train_features.user_multi},
        cardinality=card,
    )
    return new, history_rows, candidate_rows


def inference_catalogue(
    train_features: FeatureSet, train: TaacData, predict: TaacPredict
) -> tuple[FeatureSet, np.ndarray, np.ndarray, np.ndarray]:
    """The training items followed by every creative of the evaluation files unseen in training.

    Returns:
        ``(features, id_rows, history_rows, candidate_rows)``: item features of the extended catalogue
        (users: the evaluation users), the id-embedding row of every catalogue row (0 for new items),
        the catalogue row of every history event and of every candidate.
    """
    new, history_rows, candidate_rows = unseen_items(train_features, train, predict)
    id_rows = np.concatenate([np.arange(train.num_items + 1), np.zeros(new.num_items, dtype=np.int64)])
    return concat_items(train_features, new), id_rows, history_rows, candidate_rows


@torch.no_grad()
def taac_infer(
    run: str | Path,
    eval_dir: str | Path,
    out: str | Path,
    *,
    data_dir: str | Path | None = None,
    k: int = 10,
    exclude_seen: bool = False,
    batch_size: int = 512,
    progress: bool = False,
) -> TaacInference:
    """Writes ``out`` (JSON lines ``{"user_id": ..., "creative_ids": [...]}``, predict_seq.jsonl order).

    Args:
        run: run directory or checkpoint of a model trained on a TAAC training directory.
        eval_dir: holds ``predict_seq.jsonl`` and ``predict_set.jsonl`` (optionally ``creative_emb/``,
            ``predict_targets.jsonl``).
        out: the result file.
        data_dir: the training directory (default: the one in the run's config).
        k: creatives per user.
        exclude_seen: never return a creative already in the user's history (the competition does not).
        batch_size: users per encoder batch.
        progress: show progress bars.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    state = load_checkpoint(run)
    config = config_from_dict(state["config"], where=state["path"])
    data_dir = data_dir if data_dir is not None else config.data.path
    if data_dir is None:
        raise ValueError(f"{state['path']}: the run was not trained on a TAAC directory; pass its training directory")
    model = model_from_state(state["num_items"], config.model, state["model"]).eval()
    tower = model.item_tower
    wanted = [name for name, _, _ in tower.schema["vectors"]] if tower is not None else []
    train = read_taac(data_dir, progress=progress, vector_features=wanted)
    if train.num_items != state["num_items"]:
        raise ValueError(f"{data_dir} has {train.num_items} items, the checkpoint {state['num_items']}")
    predict = read_taac_predict(eval_dir, train, progress=progress, vector_features=wanted)
    train_features = taac_features(train)
    new_items, history_rows, candidate_rows = unseen_items(train_features, train, predict)
    if tower is not None:
        tower.extend_catalogue(new_items, base=train_features)  # unseen creatives: from their features
    else:  # an id-only model has no vector for an unseen creative: it is dropped from histories, scores 0
        history_rows = np.where(history_rows > train.num_items, 0, history_rows)
        candidate_rows = np.where(candidate_rows > train.num_items, 0, candidate_rows)
    if model.user_tower is not None:
        model.user_tower.set_users(new_items)  # the evaluation users

    # Distinct candidates, first occurrence wins.
    keys = [_key(c) for c in predict.candidates.creative_ids.tolist()]
    first: dict[int | str, int] = {}
    for c, key in enumerate(keys):
        first.setdefault(key, c)
    chosen = np.fromiter(first.values(), dtype=np.int64, count=len(first))
    cand_keys = [keys[c] for c in chosen]
    cand_vecs = model.item_embeddings(torch.from_numpy(candidate_rows[chosen])).float()
    similarity = state["similarity"]
    if similarity == "cosine":
        cand_vecs = F.normalize(cand_vecs, dim=-1)
    index = build_index(cand_vecs.numpy(), IndexConfig(kind="exact"), progress=False)
    row_of = {int(r): j for j, r in enumerate(candidate_rows[chosen].tolist())}  # catalogue row -> index row

    keep = history_rows > 0
    offsets = np.zeros(predict.num_users + 1, dtype=np.int64)
    owner = np.repeat(np.arange(predict.num_users), np.diff(predict.offsets))  # user of every event
    np.cumsum(np.bincount(owner[keep], minlength=predict.num_users), out=offsets[1:])
    rows = history_rows[keep]
    maxlen = model.config.maxlen
    top: list[list[int | str]] = []
    excludes: list[np.ndarray] = []
    for start in tqdm(range(0, predict.num_users, batch_size), desc="taac-infer", disable=not progress, unit="batch"):
        users = np.arange(start, min(start + batch_size, predict.num_users))
        starts, ends = offsets[users], offsets[users + 1]
        width = int(min(max((ends - starts).max(initial=1), 1), maxlen))
        window = torch.from_numpy(left_padded_windows(rows, starts, ends, width))
        queries = model.user_embeddings(window, torch.from_numpy(users)).float()
        if similarity == "cosine":
            queries = F.normalize(queries, dim=-1)
        exclude = None
        if exclude_seen:
            exclude = [np.asarray([row_of[r] for r in rows[s:e].tolist() if r in row_of], dtype=np.int64)
                       for s, e in zip(starts, ends, strict=True)]
            excludes.extend(exclude)
        _, found = search(index, queries.numpy(), min(k, len(chosen)), exclude=exclude)
        top.extend([cand_keys[j] for j in found_row if j >= 0] for found_row in found.tolist())

    out = Path(out)
    _write_results(out, predict.user_ids.tolist(), top)
    result = TaacInference(out, predict.num_users, len(chosen), new_items.num_items)
    if (Path(eval_dir) / PREDICT_TARGETS_FILE).is_file():
        target_users, targets = read_taac_targets(eval_dir)
        if [_key(u) for u in target_users.tolist()] != [_key(u) for u in predict.user_ids.tolist()]:
            raise ValueError(f"{eval_dir}: {PREDICT_TARGETS_FILE} does not list the users of predict_seq.jsonl in order")
        result.hr10, result.ndcg10 = hit_ndcg_at_10(top, targets.tolist())
        result.score = competition_score(result.hr10, result.ndcg10)
        _score_baselines(result, train, targets.tolist(), top, cand_keys, candidate_rows[chosen], rows, offsets, k,
                         excludes if exclude_seen else None)
    return result


def last_known_items(rows: np.ndarray, offsets: np.ndarray, num_items: int) -> np.ndarray:
    """(U,) each user's most recent history row known in training (1..num_items), 0 if none.

    The transition baseline counts successors of training items only; creatives unseen in training (rows
    past ``num_items``, kept in the histories of item-tower models, dropped for id-only ones) are skipped,
    so the baseline ranks the same lists whichever model it stands next to.
    """
    known = (rows > 0) & (rows <= num_items)
    owner = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    at = np.flatnonzero(known)  # events in user order, oldest first within a user
    users = owner[at]
    final = np.r_[users[1:] != users[:-1], True] if len(at) else np.zeros(0, dtype=bool)  # a user's last one
    last = np.zeros(len(offsets) - 1, dtype=np.int64)
    last[users[final]] = rows[at[final]]
    return last


def _score_baselines(result: TaacInference, train: TaacData, targets: list, top: list[list[int | str]],
                     cand_keys: list, cand_rows: np.ndarray, rows: np.ndarray, offsets: np.ndarray, k: int,
                     excludes: list[np.ndarray] | None) -> None:
    """Fills ``result.baselines`` and the unseen-target HR@10 of the model and of each baseline."""
    inter = train.interactions
    last = last_known_items(rows, offsets, train.num_items)
    ranked = baseline_rankings(cand_rows, last, item_counts(inter.items, train.num_items),
                               TransitionCounts(inter.offsets, inter.items), k, exclude=excludes)
    lists = {"model": top} | {name: [[cand_keys[j] for j in r] for r in found] for name, found in ranked.items()}
    for name in ranked:
        hr, ndcg = hit_ndcg_at_10(lists[name], targets)
        result.baselines[name] = {"hr10": hr, "ndcg10": ndcg, "score": competition_score(hr, ndcg)}
    row_of_key = dict(zip(cand_keys, cand_rows.tolist(), strict=True))
    unseen = [i for i, t in enumerate(targets) if row_of_key.get(_key(t), 0) > train.num_items]
    result.unseen_targets = len(unseen)
    for name, found in lists.items() if unseen else ():
        result.unseen_hr10[name] = hit_ndcg_at_10([found[i] for i in unseen], [targets[i] for i in unseen])[0]


def _write_results(path: Path, users: list, top: list[list[int | str]]) -> None:
    """JSON lines, written to a temporary file and renamed, so a failure leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            for user, creatives in zip(users, top, strict=True):
                handle.write(json.dumps({"user_id": _plain(user), "creative_ids": creatives}) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
