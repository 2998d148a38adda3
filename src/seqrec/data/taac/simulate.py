"""The latent process behind the synthetic TAAC data: item clusters, successor chains, users and vectors."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from seqrec.data.taac.layout import (
    USER_ARRAY_FEATURES,
)

# Value counts from TencentGR-1M (111 is not listed there; 1,000 stands in); capped by the item count.
SYNTH_ITEM_SIZES = {
    "100": 6, "101": 51, "102": 90_709, "111": 1_000, "112": 30, "114": 20, "115": 691, "116": 18,
    "117": 497, "118": 1_426, "119": 4_191, "120": 3_392, "121": 2_135_891, "122": 90_919,
}  # fmt: skip
_SYNTH_CLUSTER_FEATURES = ("101", "112", "117", "118")  # follow the item's cluster: features carry signal
_SYNTH_GROUP_FEATURES = ("102", "121", "122")  # advertiser-like: a few neighbouring items share a value
SYNTH_USER_SIZES = {"103": 86, "104": 2, "105": 7, "109": 3, "106": 14, "107": 19, "108": 4, "110": 2}
_SYNTH_DRIFT = 0.08  # chance per step that a user moves on to the next cluster
_SYNTH_FOLLOW = 0.5  # chance that the next item is the previous item's successor in its cluster
_SYNTH_NOISE = 0.08  # chance of a globally popular item instead
_SYNTH_MISSING_FEATURE = 0.03


@dataclass
class SynthWorld:
    """Latent structure of the synthetic catalogue: clusters, a successor chain per cluster, popularity."""

    num_clusters: int
    cluster: np.ndarray  # (num_items + num_new + 1,) cluster of every synthetic item; [0] unused
    successor: np.ndarray  # (num_items + 1,) next item in the same cluster's chain
    grouped: np.ndarray  # training items ordered by cluster
    cdf_keys: np.ndarray  # cluster + within-cluster popularity CDF, ascending along ``grouped``
    popularity: np.ndarray  # (num_items,) probability of items 1..num_items

    def sample_in(self, rng: np.random.Generator, clusters: np.ndarray) -> np.ndarray:
        at = np.searchsorted(self.cdf_keys, clusters + rng.random(len(clusters)), side="right")
        return self.grouped[np.minimum(at, len(self.grouped) - 1)]

    def step(
        self, rng: np.random.Generator, previous: np.ndarray, clusters: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        n = len(previous)
        drift = rng.random(n) < _SYNTH_DRIFT
        clusters = np.where(drift, (clusters + 1) % self.num_clusters, clusters)
        draw = rng.random(n)
        following = (draw < _SYNTH_FOLLOW) & ~drift
        chosen = np.where(following, self.successor[previous], self.sample_in(rng, clusters))
        noisy = draw >= 1.0 - _SYNTH_NOISE
        if noisy.any():
            chosen[noisy] = 1 + rng.choice(len(self.popularity), size=int(noisy.sum()), p=self.popularity)
        return chosen, clusters

    def next_probabilities(
        self, previous: int, cluster: int, popularity: np.ndarray | None = None
    ) -> np.ndarray:
        """(num_items + 1,) probability that ``step`` picks each training item after ``previous`` in
        ``cluster`` ([0] is 0): the process's own next-item distribution, which no ranking can expect to beat.

        ``popularity`` (num_items,) replaces the item popularity, e.g. by counts a learner could see.
        """
        pop = self.popularity if popularity is None else np.asarray(popularity, dtype=np.float64)
        train_cluster = self.cluster[1 : len(pop) + 1]
        mass = np.bincount(train_cluster, weights=pop, minlength=self.num_clusters)

        def within(c: int) -> np.ndarray:
            return np.where(train_cluster == c, pop, 0.0) / max(mass[c], 1e-300)

        stay = 1.0 - _SYNTH_DRIFT
        probs = np.zeros(len(pop) + 1)
        probs[1:] = (
            stay * (1.0 - _SYNTH_FOLLOW - _SYNTH_NOISE) * within(cluster)
            + _SYNTH_DRIFT * (1.0 - _SYNTH_NOISE) * within((cluster + 1) % self.num_clusters)
            + _SYNTH_NOISE * pop
        )
        if 1 <= previous < len(self.successor):
            probs[self.successor[previous]] += stay * _SYNTH_FOLLOW
        return probs

    def simulate(
        self, rng: np.random.Generator, clusters: np.ndarray, steps: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(items, cluster states), both (n, steps), for n users starting in ``clusters``."""
        items = np.zeros((len(clusters), steps), np.int64)
        states = np.zeros((len(clusters), steps), np.int64)
        items[:, 0], states[:, 0] = self.sample_in(rng, clusters), clusters
        for t in range(1, steps):
            items[:, t], states[:, t] = self.step(rng, items[:, t - 1], states[:, t - 1])
        return items, states


def synth_world(rng: np.random.Generator, num_items: int, num_new_items: int) -> SynthWorld:
    num_clusters = max(2, min(num_items // 10, round(math.sqrt(num_items))))
    cluster = np.zeros(num_items + num_new_items + 1, np.int64)
    # A permutation of i % K gives every cluster at least one item.
    cluster[1 : num_items + 1] = rng.permutation(np.arange(num_items) % num_clusters)
    cluster[num_items + 1 :] = rng.integers(num_clusters, size=num_new_items)
    grouped = np.argsort(cluster[1 : num_items + 1], kind="stable") + 1
    counts = np.bincount(cluster[grouped], minlength=num_clusters)
    starts = np.cumsum(counts) - counts
    position = np.arange(num_items) - starts[cluster[grouped]]
    successor = np.zeros(num_items + 1, np.int64)
    successor[grouped] = grouped[starts[cluster[grouped]] + (position + 1) % counts[cluster[grouped]]]

    weights = 1.0 / (rng.permutation(num_items) + 1.0) ** 0.9
    popularity = weights / weights.sum()
    grouped_weights = weights[grouped - 1]
    cumulative = np.cumsum(grouped_weights)
    before = (cumulative - grouped_weights)[starts]  # weight of all earlier clusters, per cluster
    totals = np.add.reduceat(grouped_weights, starts)
    cdf = (cumulative - before[cluster[grouped]]) / totals[cluster[grouped]]
    cdf[starts + counts - 1] = 1.0  # exact 1 so rounding never spills into the next cluster
    return SynthWorld(
        num_clusters=num_clusters,
        cluster=cluster,
        successor=successor,
        grouped=grouped,
        cdf_keys=cluster[grouped] + cdf,
        popularity=popularity,
    )


def synth_item_features(
    rng: np.random.Generator, cluster: np.ndarray, sizes: dict[str, int], first_new: int
) -> list[dict[str, Any]]:
    """Feature dict per synthetic item ([0] unused); unseen items get string values for group features."""
    count = len(cluster)
    ids = np.arange(count)
    columns: dict[str, np.ndarray] = {}
    for feature, size in sizes.items():
        if feature in _SYNTH_CLUSTER_FEATURES:
            values = 1 + (cluster * (int(feature) % 7 + 1)) % size
            noisy = rng.random(count) < 0.1
            values[noisy] = rng.integers(1, size + 1, size=int(noisy.sum()))
        elif feature in _SYNTH_GROUP_FEATURES:
            values = 1 + (ids // 3) % size
        else:
            values = rng.integers(1, size + 1, size=count)
        columns[feature] = values.tolist()
    present = {feature: (rng.random(count) >= _SYNTH_MISSING_FEATURE).tolist() for feature in sizes}
    unseen_value = {feature: (rng.random(count) < 0.5).tolist() for feature in _SYNTH_GROUP_FEATURES}
    features: list[dict[str, Any]] = [{}]
    for i in range(1, count):
        item: dict[str, Any] = {}
        for feature in sizes:
            if not present[feature][i]:
                continue
            if i >= first_new and feature in unseen_value and unseen_value[feature][i]:
                item[feature] = f"new_{feature}_{i}"
            else:
                item[feature] = columns[feature][i]
        features.append(item)
    return features


@dataclass
class SynthUsers:
    """Simulated users: profiles and (count, steps) item, cluster, action and timestamp arrays."""

    profiles: list[dict[str, Any]]
    lengths: np.ndarray  # (count,) item records written for each user
    items: np.ndarray
    states: np.ndarray
    actions: np.ndarray
    stamps: np.ndarray


def synth_users(
    rng: np.random.Generator,
    world: SynthWorld,
    count: int,
    mean_length: int,
    max_length: int,
    click_rate: float,
    *,
    unseen: bool,
) -> SynthUsers:
    """Simulate ``count`` users; unseen (test-only) users get one extra step, their target."""
    homes = rng.integers(world.num_clusters, size=count)
    lengths = np.minimum(max_length, 1 + rng.poisson(mean_length - 1, size=count))
    steps = (int(lengths.max()) if count else 1) + int(unseen)
    items, states = world.simulate(rng, homes, steps)
    start = 1_745_000_000 if unseen else 1_740_000_000
    return SynthUsers(
        profiles=_synth_user_features(rng, homes, unseen=unseen),
        lengths=lengths,
        items=items,
        states=states,
        actions=(rng.random((count, steps)) < click_rate).astype(np.int64),
        stamps=rng.integers(start, start + 5_000_000, size=(count, 1))
        + np.cumsum(rng.integers(5, 4_000, size=(count, steps)), axis=1),
    )


def _synth_user_features(
    rng: np.random.Generator, homes: np.ndarray, *, unseen: bool
) -> list[dict[str, Any]]:
    """Profile features per user; 103 and 107 follow the home cluster. Unseen users get some string values."""
    sizes = SYNTH_USER_SIZES
    count = len(homes)
    draws = {f: rng.integers(1, sizes[f] + 1, size=(count, 3)).tolist() for f in sizes}
    list_lengths = rng.integers(1, 4, size=(count, len(USER_ARRAY_FEATURES))).tolist()
    unseen_103 = (rng.random(count) < 0.5).tolist()
    unseen_106 = (rng.random(count) < 0.3).tolist()
    homes_list = homes.tolist()
    users: list[dict[str, Any]] = []
    for u in range(count):
        home = homes_list[u]
        profile: dict[str, Any] = {
            "103": f"new_103_{u}" if unseen and unseen_103[u] else 1 + home % sizes["103"],
            "104": draws["104"][u][0],
            "105": draws["105"][u][0],
            "109": draws["109"][u][0],
        }
        for j, feature in enumerate(USER_ARRAY_FEATURES):
            values = sorted(set(draws[feature][u][: list_lengths[u][j]]))
            if feature == "107":
                values = [1 + home % sizes["107"]] + values[:1]
            if feature == "106" and unseen and unseen_106[u]:
                values = values + [f"new_106_{u}"]
            profile[feature] = values
        users.append(profile)
    return users


def synth_vectors(
    rng: np.random.Generator, cluster: np.ndarray, dims: dict[str, int], coverage: float
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """feature -> (rounded vectors (count, dim), present mask); vectors lie near a per-cluster centre."""
    count = len(cluster)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for feature, dim in dims.items():
        centres = rng.normal(size=(int(cluster.max()) + 1, dim))
        vectors = np.round(centres[cluster] + 0.5 * rng.normal(size=(count, dim)), 5).astype(np.float32)
        present = rng.random(count) < coverage
        present[0] = False
        out[feature] = (vectors, present)
    return out
