"""TencentGR-sized synthetic data, generated vectorised and written straight into the compact form.

``generate_tencentgr_like`` mimics the shape of the TAAC 2025 TencentGR-1M log (1M users, 4.8M items,
about 91 events per user, at most 100) with a learnable sequential signal:

- **Popularity**: every item has a global popularity rank; draws by popularity follow a continuous
  power law ``p(rank) ~ (rank + offset) ** -exponent`` (Zipf-like), sampled by inverting its CDF in
  closed form (no 4.8M-entry CDF search per draw).
- **Clusters**: the item of rank ``r`` belongs to cluster ``r % C`` with within-cluster rank ``r // C``,
  so every cluster has popular and rare items. Each item has three successors in its own cluster
  (drawn once, biased towards the cluster's popular items).
- **Users** hold one to three interest clusters. At every step a user follows a successor of the
  current item (``p_follow``), picks a globally popular item (``p_global``) or otherwise a popular item
  of one of its interest clusters. Repeats are allowed (as in exposure logs).
- **Actions**: about ``click_rate`` of the events are clicks (1), the rest exposures (0); a step that
  follows a successor is clicked more often than a random one, so actions carry signal too.
- **Timestamps**: int64 seconds, increasing per user: exponential gaps with occasional session breaks.
- **Item features**: four categorical columns saved as ``item_feat_<id>.npy`` (0 = missing):
  ``100`` coarse category (from the cluster), ``101`` fine category (the cluster), ``102`` popularity
  bucket (log2 of the rank), ``112`` a random attribute with 10% missing values.

Users are simulated in chunks (all users of a chunk advance one step per NumPy operation, so there is
a loop over positions but none over events); the per-event arrays are written into memory-mapped
``.npy`` files, so peak memory is one chunk plus the item tables. Output is deterministic in the
arguments (including ``chunk_users``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from seqrec.data.storage import (
    AtomicDirectory,
    base_meta,
    fsync_file,
    items_dtype,
    write_array,
    write_ids,
    write_item_feature,
    write_meta,
)

_T0 = 1_725_000_000  # 2024-08-30, seconds
_SPAN = 60 * 86_400  # users start within 60 days
_MEAN_GAP = 600.0  # seconds between events of a session
_SESSION_BREAK = 0.03  # probability that a gap is a session break
_MEAN_BREAK = 86_400.0
_FOLLOW_CLICK_BOOST = 1.5  # click probability multiplier on steps that follow a successor


@dataclass
class _World:
    num_items: int
    num_clusters: int
    rank_to_item: np.ndarray  # (I,) int32 internal item id (1..I) of each popularity rank
    cluster_size: np.ndarray  # (C,) int64 items per cluster
    successors: np.ndarray  # (I, 3) int32 successor ranks, by rank
    cluster_p_exponent: float
    exponent: float
    offset: float


def power_law_ranks(u: np.ndarray, n: np.ndarray | int, exponent: float, offset: float) -> np.ndarray:
    """Inverse-CDF draws of ranks in 0..n-1 with density ``~ (rank + offset) ** -exponent``.

    Args:
        u: uniform [0, 1) draws.
        n: number of ranks (scalar or an array broadcasting against ``u``).
        exponent: power-law exponent (>= 0; 1 is the Zipf case).
        offset: > 0; flattens the head.

    Returns:
        int64 ranks of ``u``'s shape.
    """
    n_f = np.asarray(n, dtype=np.float64)
    if abs(exponent - 1.0) < 1e-9:
        x = offset * np.power((n_f + offset) / offset, u) - offset
    else:
        e = 1.0 - exponent
        a = offset**e
        b = np.power(n_f + offset, e)
        x = np.power(a + u * (b - a), 1.0 / e) - offset
    return np.minimum(x.astype(np.int64), np.asarray(n, dtype=np.int64) - 1).clip(min=0)


def _build_world(
    rng: np.random.Generator, num_items: int, num_clusters: int, exponent: float, offset: float, succ_exponent: float
) -> _World:
    rank_to_item = (rng.permutation(num_items) + 1).astype(items_dtype(num_items))
    c = np.arange(num_clusters, dtype=np.int64)
    cluster_size = (num_items - c + num_clusters - 1) // num_clusters
    ranks = np.arange(num_items, dtype=np.int64)
    successors = np.empty((num_items, 3), dtype=items_dtype(num_items))
    step = 1 << 22
    for start in range(0, num_items, step):
        r = ranks[start : start + step]
        cl = r % num_clusters
        j = power_law_ranks(rng.random((len(r), 3)), cluster_size[cl][:, None], succ_exponent, 5.0)
        successors[start : start + step] = j * num_clusters + cl[:, None]
    return _World(num_items, num_clusters, rank_to_item, cluster_size, successors, 0.8, exponent, offset)


def _lengths(rng: np.random.Generator, num_users: int, mean_events: float, max_events: int, min_events: int) -> np.ndarray:
    """Lengths in [min_events, max_events] with mean about ``mean_events``: max minus a geometric deficit."""
    deficit = max_events - mean_events
    if deficit <= 0:
        return np.full(num_users, max_events, dtype=np.int64)
    short = rng.geometric(1.0 / (deficit + 1.0), size=num_users) - 1
    return np.clip(max_events - short, min_events, max_events).astype(np.int64)


def _simulate(
    rng: np.random.Generator, world: _World, lengths: np.ndarray, p_follow: float, p_global: float, click_rate: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Items (internal ids), timestamps and actions of one chunk of users, flattened user by user."""
    m, steps = len(lengths), int(lengths.max())
    C, sizes = world.num_clusters, world.cluster_size
    rows = np.arange(m)
    n_interests = rng.integers(1, 4, size=m)
    interests = power_law_ranks(rng.random((m, 3)), C, world.cluster_p_exponent, 1.0)
    boost = min(_FOLLOW_CLICK_BOOST, 1.0 / max(p_follow, 1e-9))
    click_follow = click_rate * boost
    click_other = click_rate * (1.0 - p_follow * boost) / max(1.0 - p_follow, 1e-9)

    ranks = np.empty((m, steps), dtype=np.int64)
    clicks = np.empty((m, steps), dtype=np.int8)
    current = np.zeros(m, dtype=np.int64)
    for t in range(steps):
        draw = rng.random(m)
        follow = draw < p_follow if t > 0 else np.zeros(m, dtype=bool)
        popular = draw >= 1.0 - p_global
        succ = world.successors[current, rng.integers(0, 3, size=m)]
        cluster = interests[rows, (rng.random(m) * n_interests).astype(np.int64)]
        in_cluster = power_law_ranks(rng.random(m), sizes[cluster], world.exponent, world.offset) * C + cluster
        global_pick = power_law_ranks(rng.random(m), world.num_items, world.exponent, world.offset)
        current = np.where(follow, succ, np.where(popular, global_pick, in_cluster))
        ranks[:, t] = current
        clicks[:, t] = rng.random(m) < np.where(follow, click_follow, click_other)

    gaps = np.floor(rng.exponential(_MEAN_GAP, size=(m, steps))).astype(np.int64) + 1
    breaks = rng.random((m, steps)) < _SESSION_BREAK
    gaps[breaks] += np.floor(rng.exponential(_MEAN_BREAK, size=int(breaks.sum()))).astype(np.int64)
    gaps[:, 0] = _T0 + rng.integers(0, _SPAN, size=m)
    times = np.cumsum(gaps, axis=1)

    valid = np.arange(steps)[None, :] < lengths[:, None]
    return world.rank_to_item[ranks[valid]], times[valid], clicks[valid]


def _item_features(rng: np.random.Generator, world: _World) -> dict[str, np.ndarray]:
    """Per-item categorical columns indexed by internal item id (row 0 = padding = 0)."""
    n_items, C = world.num_items, world.num_clusters
    ranks = np.arange(n_items, dtype=np.int64)
    cluster = ranks % C
    by_rank = {
        "100": cluster // max(1, C // 50) + 1,
        "101": cluster + 1,
        "102": np.floor(np.log2(ranks + 1)).astype(np.int64) + 1,
        "112": np.where(rng.random(n_items) < 0.1, 0, rng.integers(1, 33, size=n_items)),
    }
    out = {}
    for feature_id, values in by_rank.items():
        column = np.zeros(n_items + 1, dtype=np.int32)
        column[world.rank_to_item] = values
        out[feature_id] = column
    return out


def generate_tencentgr_like(
    out_dir: str | Path,
    num_users: int = 1_000_000,
    num_items: int = 4_800_000,
    mean_events: float = 91,
    max_events: int = 100,
    seed: int = 0,
    *,
    min_events: int = 3,
    num_clusters: int | None = None,
    p_follow: float = 0.6,
    p_global: float = 0.1,
    click_rate: float = 0.1,
    exponent: float = 1.0,
    offset: float = 10.0,
    successor_exponent: float = 0.8,
    chunk_users: int = 65_536,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Writes a TencentGR-like dataset as a compact interactions directory (``load_interactions``).

    Args:
        out_dir: destination directory (written atomically; must not exist unless ``overwrite``).
        num_users, num_items: U and I (internal item ids 1..I; raw ids: users 1..U, items 1..I, int64).
        mean_events, max_events, min_events: sequence lengths are ``max_events`` minus a geometric
            deficit, clipped to ``[min_events, max_events]``; the mean is about ``mean_events``.
        seed: everything is deterministic in the arguments.
        num_clusters: item clusters (default: one per 2000 items).
        p_follow: probability that a step follows a successor of the previous item.
        p_global: probability that a step picks a globally popular item; the rest picks a popular
            item of one of the user's interest clusters.
        click_rate: share of click events (action 1); the rest are exposures (action 0).
        exponent, offset: the popularity power law ``(rank + offset) ** -exponent``.
        successor_exponent: skew of the successors towards a cluster's popular items.
        chunk_users: users simulated per NumPy pass (memory ~ chunk_users x max_events x 30 bytes).
        progress: tqdm progress bar over users.

    Returns:
        The output directory.
    """
    if num_users < 1 or num_items < 2:
        raise ValueError(f"need num_users >= 1 and num_items >= 2, got {num_users} and {num_items}")
    if not 1 <= min_events <= mean_events <= max_events:
        raise ValueError(f"need 1 <= min_events <= mean_events <= max_events, got {min_events}, {mean_events}, {max_events}")
    if not (0 <= p_follow and 0 <= p_global and p_follow + p_global <= 1):
        raise ValueError("p_follow and p_global must be >= 0 with p_follow + p_global <= 1")
    if not 0 <= click_rate <= 1 or chunk_users < 1 or offset <= 0 or exponent < 0:
        raise ValueError("need 0 <= click_rate <= 1, chunk_users >= 1, offset > 0, exponent >= 0")
    num_clusters = num_clusters or max(1, num_items // 2000)
    num_clusters = min(num_clusters, num_items)
    rng = np.random.default_rng([seed, 0])
    world = _build_world(rng, num_items, num_clusters, exponent, offset, successor_exponent)
    lengths = _lengths(rng, num_users, mean_events, max_events, min_events)
    offsets = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    n_events = int(offsets[-1])
    params: dict[str, Any] = {
        "generator": "seqrec.data.scale.generate_tencentgr_like", "seed": seed, "num_clusters": num_clusters,
        "mean_events": mean_events, "max_events": max_events, "min_events": min_events, "p_follow": p_follow,
        "p_global": p_global, "click_rate": click_rate, "exponent": exponent, "offset": offset,
        "successor_exponent": successor_exponent, "chunk_users": chunk_users,
    }
    with AtomicDirectory(out_dir, overwrite=overwrite) as tmp:
        meta = base_meta(num_users, num_items, n_events)
        write_array(tmp / "offsets.npy", offsets, np.int64)
        items = np.lib.format.open_memmap(tmp / "items.npy", mode="w+", dtype=items_dtype(num_items), shape=(n_events,))
        times = np.lib.format.open_memmap(tmp / "timestamps.npy", mode="w+", dtype=np.int64, shape=(n_events,))
        actions = np.lib.format.open_memmap(tmp / "actions.npy", mode="w+", dtype=np.int8, shape=(n_events,))
        clicks = 0
        with tqdm(total=num_users, desc="generate", unit="user", disable=not progress, unit_scale=True) as bar:
            for chunk, start in enumerate(range(0, num_users, chunk_users)):
                stop = min(start + chunk_users, num_users)
                chunk_rng = np.random.default_rng([seed, 1, chunk])
                it, ts, ac = _simulate(chunk_rng, world, lengths[start:stop], p_follow, p_global, click_rate)
                lo, hi = offsets[start], offsets[stop]
                items[lo:hi], times[lo:hi], actions[lo:hi] = it, ts, ac
                clicks += int(ac.sum())
                bar.update(stop - start)
        for array in (items, times, actions):
            array.flush()
        del items, times, actions
        for name in ("items.npy", "timestamps.npy", "actions.npy"):
            fsync_file(tmp / name)
        meta.update(has_timestamps=True, has_actions=True)
        meta["user_ids"] = write_ids(tmp, "user_ids", np.arange(1, num_users + 1, dtype=np.int64))
        meta["item_ids"] = write_ids(tmp, "item_ids", np.arange(num_items + 1, dtype=np.int64))
        features = _item_features(np.random.default_rng([seed, 2]), world)
        meta["item_features"] = {fid: write_item_feature(tmp, fid, col, num_items) for fid, col in features.items()}
        params["measured"] = {"mean_events": n_events / num_users, "click_share": clicks / max(n_events, 1)}
        meta["extra"] = params
        write_meta(tmp, meta)
    return Path(out_dir)
