"""Write a small seeded dataset in the TAAC layout (``write_taac_synthetic``) from the process in ``simulate``."""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from seqrec.data.taac.layout import (
    INDEXER_FILE,
    ITEM_FEATURES_FILE,
    PREDICT_SEQ_FILE,
    PREDICT_SEQ_OFFSETS_FILE,
    PREDICT_SET_FILE,
    PREDICT_TARGETS_FILE,
    SEQ_FILE,
    SEQ_OFFSETS_FILE,
    VECTOR_DIR,
)
from seqrec.data.taac.simulate import (
    SYNTH_ITEM_SIZES,
    SYNTH_USER_SIZES,
    SynthUsers,
    SynthWorld,
    synth_item_features,
    synth_users,
    synth_vectors,
    synth_world,
)

logger = logging.getLogger(__name__)

_SYNTH_NEW_IN_HISTORY = 0.03  # evaluation events replaced by an item unseen in training (of the same cluster)


@dataclass(frozen=True)
class TaacSyntheticDirs:
    """Where ``write_taac_synthetic`` put its output.

    Attributes:
        train: the training directory (``read_taac``).
        eval: the evaluation directory (``read_taac_predict``, ``read_taac_targets``).
    """

    train: Path
    eval: Path


def write_taac_synthetic(
    directory: str | Path,
    *,
    num_users: int,
    num_items: int,
    seed: int = 0,
    mean_length: int = 20,
    max_length: int = 100,
    num_eval_users: int | None = None,
    unseen_user_fraction: float = 0.2,
    num_new_items: int | None = None,
    new_target_fraction: float = 0.05,
    candidate_fraction: float = 0.5,
    click_rate: float = 0.1,
    vector_coverage: float = 0.9,
    vector_dims: dict[str, int] | None = None,
    progress: bool = False,
) -> TaacSyntheticDirs:
    """Write a small seeded dataset in the TAAC layout, with a learnable sequential signal.

    Items fall into clusters; each cluster chains its items in a fixed successor order. A user starts in
    a home cluster, now and then drifts to the next cluster, and mostly picks either the successor of
    the previous item or a popular item of the current cluster (popularity is Zipf-like), sometimes a
    globally popular item. Item features, user feature 103 and the multimodal vectors follow the
    clusters, so they are informative. About ``click_rate`` of the events are clicks; each line holds
    one user-profile record at a random position; vectors cover about ``vector_coverage`` of items.

    The evaluation directory holds ``predict_seq.jsonl`` (training users by re-id with their training
    history, plus unseen users as raw strings; a few events are items unseen in training, written as
    their raw creative_id with string feature values), ``predict_set.jsonl`` (every target, a sample of
    training items and every unseen item), ``predict_targets.jsonl`` (see the package docstring),
    ``indexer.pkl`` and ``creative_emb/``. Each target is the next step of the user's process, a click.

    Items unseen in training belong to clusters too (their features and vectors follow the cluster, as
    every item's do). Where an evaluation event or a target is replaced by one (about 3% of the events,
    ``new_target_fraction`` of the targets), it is an unseen item of the cluster the user is in at that
    step, drawn uniformly among that cluster's unseen items (left as it was when the cluster has none), so
    a ranking can find it from the history and the features; it is never a uniform draw over the catalogue.

    Args:
        directory: created if needed; output goes to ``directory/train`` and ``directory/eval``.
        num_users: training users (>= 1).
        num_items: training items (>= 2).
        seed: seed of everything random.
        mean_length: mean item records per training sequence (1..max_length).
        max_length: most item records per sequence (the real data has 100).
        num_eval_users: test users; default ``max(2, num_users // 10)``.
        unseen_user_fraction: share of test users unseen in training.
        num_new_items: items unseen in training; default ``max(1, num_items // 20)``.
        new_target_fraction: share of targets replaced by an unseen item of the user's current cluster
            (fewer where a cluster has no unseen item). Measuring the unseen-creative case needs some
            hundred such users: raise this or ``num_eval_users``.
        candidate_fraction: share of training items among the candidates (besides targets and new items).
        click_rate: share of events that are clicks (the rest are exposures).
        vector_coverage: share of items with a vector, per multimodal feature.
        vector_dims: multimodal feature id -> dim; default ``{"81": 32, "82": 16}``. Feature 81 is
            written as a pickle, the others as folders of JSON-lines parts.
        progress: show tqdm progress while writing.

    Returns:
        The two directories.

    Raises:
        ValueError: an argument is out of range.
    """
    dims = {"81": 32, "82": 16} if vector_dims is None else {str(k): int(v) for k, v in vector_dims.items()}
    num_eval_users = max(2, num_users // 10) if num_eval_users is None else num_eval_users
    num_new_items = max(1, num_items // 20) if num_new_items is None else num_new_items
    _check_synthetic_args(
        num_users, num_items, mean_length, max_length, num_eval_users, unseen_user_fraction, num_new_items,
        candidate_fraction, click_rate, vector_coverage, dims, new_target_fraction,
    )  # fmt: skip
    rng = np.random.default_rng(seed)
    root = Path(directory)
    train_dir, eval_dir = root / "train", root / "eval"
    train_dir.mkdir(parents=True, exist_ok=True)
    eval_dir.mkdir(parents=True, exist_ok=True)

    # Synthetic ids 1..num_items are training items, the new ones follow.
    world, creative_ids = synth_catalogue(rng, num_items, num_new_items)
    item_sizes = {f: min(size, max(2, num_items // 2)) for f, size in SYNTH_ITEM_SIZES.items()}
    item_features = synth_item_features(rng, world.cluster, item_sizes, first_new=num_items + 1)
    item_json = [""] + [json.dumps(features) for features in item_features[1:]]
    users = synth_users(rng, world, num_users, mean_length, max_length, click_rate, unseen=False)

    # Training: user u (0-based) has re-id u + 1; lines follow a shuffled order, so row != re-id - 1.
    train_tokens = [""] + [f"{i}, null, {item_json[i]}" for i in range(1, num_items + 1)]
    line_users = rng.permutation(num_users)
    profile_at = rng.integers(0, users.lengths + 1)

    def train_lines() -> Iterator[str]:
        for u in tqdm(line_users.tolist(), desc=SEQ_FILE, disable=not progress, leave=False):
            n = int(users.lengths[u])
            yield _synth_line(
                str(u + 1),
                json.dumps(users.profiles[u]),
                int(profile_at[u]),
                [train_tokens[i] for i in users.items[u, :n].tolist()],
                users.actions[u, :n].tolist(),
                users.stamps[u, :n].tolist(),
            )

    _write_lines(train_dir / SEQ_FILE, train_dir / SEQ_OFFSETS_FILE, train_lines())
    with open(train_dir / ITEM_FEATURES_FILE, "w", encoding="utf-8") as f:
        # One member a line: the reader has to cope with this as well as with one-line files.
        f.write("{\n" + ",\n".join(f'"{i}": {item_json[i]}' for i in range(1, num_items + 1)) + "\n}\n")
    raw_users = [f"user_{x}" for x in rng.choice(10 * num_users, size=num_users, replace=False).tolist()]
    indexer = {
        "u": {raw: u + 1 for u, raw in enumerate(raw_users)},
        "i": {int(creative_ids[i]): i for i in range(1, num_items + 1)},
        "f": {
            feature: {f"{feature}:{v}": v for v in range(1, size + 1)}
            for feature, size in {**item_sizes, **SYNTH_USER_SIZES}.items()
        },
    }
    vectors = synth_vectors(rng, world.cluster, dims, vector_coverage)
    for target_dir in (train_dir, eval_dir):
        with open(target_dir / INDEXER_FILE, "wb") as f:
            pickle.dump(indexer, f, protocol=4)
        _write_synth_vectors(target_dir / VECTOR_DIR, creative_ids, vectors)

    num_unseen = min(num_eval_users, int(round(num_eval_users * unseen_user_fraction)))
    seen = rng.choice(num_users, size=min(num_users, num_eval_users - num_unseen), replace=False)
    unseen = synth_users(rng, world, num_unseen, mean_length, max_length, click_rate, unseen=True)
    _write_synth_eval(
        rng,
        eval_dir,
        world,
        creative_ids,
        item_features,
        users,
        seen,
        unseen,
        num_items,
        candidate_fraction,
        new_target_fraction,
        progress,
    )
    logger.info("wrote synthetic TAAC data to %s (%d users, %d items)", root, num_users, num_items)
    return TaacSyntheticDirs(train=train_dir, eval=eval_dir)


def synth_catalogue(
    rng: np.random.Generator, num_items: int, num_new_items: int
) -> tuple[SynthWorld, np.ndarray]:
    """The world and the (num_items + num_new_items + 1,) creative_id of every synthetic item ([0] unused):
    the first draws of ``write_taac_synthetic``, so ``np.random.default_rng(seed)`` rebuilds its data's."""
    world = synth_world(rng, num_items, num_new_items)
    total_items = num_items + num_new_items
    creative_ids = np.zeros(total_items + 1, np.int64)
    # Every creative_id exceeds num_items, as unseen ones must in predict_seq.jsonl.
    creative_ids[1:] = num_items + 1 + rng.choice(20 * total_items, size=total_items, replace=False)
    return world, creative_ids


def _check_synthetic_args(
    num_users: int,
    num_items: int,
    mean_length: int,
    max_length: int,
    num_eval_users: int,
    unseen_user_fraction: float,
    num_new_items: int,
    candidate_fraction: float,
    click_rate: float,
    vector_coverage: float,
    dims: dict[str, int],
    new_target_fraction: float,
) -> None:
    if num_users < 1:
        raise ValueError(f"num_users must be >= 1, got {num_users}")
    if num_items < 2:
        raise ValueError(f"num_items must be >= 2, got {num_items}")
    if not 1 <= mean_length <= max_length:
        raise ValueError(f"need 1 <= mean_length <= max_length, got {mean_length} and {max_length}")
    if num_eval_users < 1 or num_new_items < 1:
        raise ValueError(
            f"num_eval_users and num_new_items must be >= 1, got {num_eval_users}, {num_new_items}"
        )
    for name, value in (
        ("unseen_user_fraction", unseen_user_fraction),
        ("candidate_fraction", candidate_fraction),
        ("click_rate", click_rate),
        ("vector_coverage", vector_coverage),
        ("new_target_fraction", new_target_fraction),
    ):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
    for feature, dim in dims.items():
        if not (feature.isascii() and feature.isdigit()) or dim < 1:
            raise ValueError(f"vector_dims: feature {feature!r} -> {dim}: need a numeric id and dim >= 1")


def _write_synth_vectors(
    directory: Path, creative_ids: np.ndarray, vectors: dict[str, tuple[np.ndarray, np.ndarray]]
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for feature, (matrix, present) in vectors.items():
        rows = np.flatnonzero(present)
        dim = matrix.shape[1]
        if feature == "81":
            table = {int(creative_ids[i]): matrix[i].tolist() for i in rows.tolist()}
            with open(directory / f"emb_{feature}_{dim}.pkl", "wb") as f:
                pickle.dump(table, f, protocol=4)
            continue
        folder = directory / f"emb_{feature}_{dim}"
        folder.mkdir(exist_ok=True)
        for part, chunk in enumerate(np.array_split(rows, 2)):
            with open(folder / f"part-{part:05d}.json", "w", encoding="utf-8") as f:
                for i in chunk.tolist():
                    f.write(
                        json.dumps({"anonymous_cid": int(creative_ids[i]), "emb": matrix[i].tolist()}) + "\n"
                    )


def _synth_line(
    user: str, profile: str, profile_at: int, tokens: list[str], actions: list[int], stamps: list[int]
) -> str:
    """One ``seq.jsonl`` line; ``tokens`` hold each event's ``item_id, null, item_feature`` text."""
    records = [f"[{user}, {token}, {a}, {t}]" for token, a, t in zip(tokens, actions, stamps, strict=True)]
    stamp = stamps[min(profile_at, len(stamps) - 1)] if stamps else "null"
    records.insert(profile_at, f"[{user}, null, {profile}, null, null, {stamp}]")
    return "[" + ", ".join(records) + "]\n"


def _write_lines(path: Path, offsets_path: Path, lines: Iterable[str]) -> None:
    offsets: list[int] = []
    position = 0
    with open(path, "wb") as f:
        for line in lines:
            data = line.encode("utf-8")
            offsets.append(position)
            f.write(data)
            position += len(data)
    with open(offsets_path, "wb") as f:
        pickle.dump(offsets, f, protocol=4)


def _new_item_in(
    rng: np.random.Generator, world: SynthWorld, num_items: int, clusters: np.ndarray
) -> np.ndarray:
    """An item unseen in training (> num_items) of each of ``clusters``, uniform among that cluster's unseen
    items; 0 where a cluster has none."""
    new_clusters = world.cluster[num_items + 1 :]
    order = np.argsort(new_clusters, kind="stable")
    ordered = new_clusters[order]
    low = np.searchsorted(ordered, clusters, side="left")
    count = np.searchsorted(ordered, clusters, side="right") - low
    at = np.minimum(low + (rng.random(len(clusters)) * count).astype(np.int64), max(len(order) - 1, 0))
    return np.where(count > 0, num_items + 1 + order[at] if len(order) else 0, 0).astype(np.int64)


def _write_synth_eval(
    rng: np.random.Generator,
    eval_dir: Path,
    world: SynthWorld,
    creative_ids: np.ndarray,
    item_features: list[dict[str, Any]],
    train: SynthUsers,
    seen: np.ndarray,
    unseen: SynthUsers,
    num_items: int,
    candidate_fraction: float,
    new_target_fraction: float,
    progress: bool,
) -> None:
    """Test users ``seen`` (training users, by index) then ``unseen``; their targets; the candidates."""
    total_items = len(creative_ids) - 1
    num_unseen = len(unseen.lengths)
    # Seen users keep their training history; the target is the next step of their process.
    last = train.lengths[seen] - 1
    seen_targets, seen_clusters = world.step(rng, train.items[seen, last], train.states[seen, last])
    # Unseen users: the step after the written history is the target.
    rows = np.arange(num_unseen)
    targets = np.concatenate([seen_targets, unseen.items[rows, unseen.lengths]])
    target_clusters = np.concatenate([seen_clusters, unseen.states[rows, unseen.lengths]])
    new_target = rng.random(len(targets)) < new_target_fraction
    drawn = _new_item_in(rng, world, num_items, target_clusters[new_target])
    targets[new_target] = np.where(drawn > 0, drawn, targets[new_target])

    # Items unseen in training keep their raw creative_id (> num_items) and may carry string values.
    tokens = [""] + [
        f"{i if i <= num_items else int(creative_ids[i])}, null, {json.dumps(item_features[i])}"
        for i in range(1, total_items + 1)
    ]
    user_tokens: list[str] = []

    def eval_lines() -> Iterator[str]:
        for row in tqdm(range(len(targets)), desc=PREDICT_SEQ_FILE, disable=not progress, leave=False):
            if row < len(seen):
                users, u = train, int(seen[row])
                user = str(u + 1)
            else:
                users, u = unseen, row - len(seen)
                user = json.dumps(f"new_user_{u}")
            n = int(users.lengths[u])
            history = users.items[u, :n].copy()
            replaced = rng.random(n) < _SYNTH_NEW_IN_HISTORY
            drawn = _new_item_in(rng, world, num_items, users.states[u, :n][replaced])
            history[replaced] = np.where(drawn > 0, drawn, history[replaced])
            user_tokens.append(user)
            yield _synth_line(
                user,
                json.dumps(users.profiles[u]),
                int(rng.integers(0, n + 1)),
                [tokens[i] for i in history.tolist()],
                users.actions[u, :n].tolist(),
                users.stamps[u, :n].tolist(),
            )

    _write_lines(eval_dir / PREDICT_SEQ_FILE, eval_dir / PREDICT_SEQ_OFFSETS_FILE, eval_lines())
    with open(eval_dir / PREDICT_TARGETS_FILE, "w", encoding="utf-8") as f:
        for user, target in zip(user_tokens, targets.tolist(), strict=True):
            f.write(f'{{"user_id": {user}, "creative_id": {int(creative_ids[target])}}}\n')

    sampled = np.flatnonzero(rng.random(num_items) < candidate_fraction) + 1
    pool = np.unique(np.concatenate([targets, sampled, np.arange(num_items + 1, total_items + 1)]))
    pool = pool[rng.permutation(len(pool))]
    retrieval_ids = rng.permutation(len(pool)) + 1
    with open(eval_dir / PREDICT_SET_FILE, "w", encoding="utf-8") as f:
        for i, retrieval in zip(pool.tolist(), retrieval_ids.tolist(), strict=True):
            candidate = {
                "creative_id": int(creative_ids[i]),
                "retrieval_id": retrieval,
                "features": item_features[i],
            }
            f.write(json.dumps(candidate) + "\n")
