"""Count-based baselines: transition counts and rankings against brute-force counting."""

from __future__ import annotations

from collections import Counter

import numpy as np

from seqrec.evaluation.baselines import TransitionCounts, baseline_rankings, item_counts, top_k


def _brute_transitions(seqs):
    pairs = Counter()
    for s in seqs:
        for a, b in zip(s[:-1], s[1:], strict=True):
            pairs[(a, b)] += 1
    return pairs


def test_transition_counts_match_brute_force():
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(1, 9, rng.integers(0, 12))) for _ in range(40)]
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])])
    items = np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs])
    counts = TransitionCounts(offsets, items)
    brute = _brute_transitions(seqs)
    rows = np.arange(0, 12)  # 0 and 9..11 never occur: count 0
    for prev in range(0, 12):
        np.testing.assert_array_equal(counts(prev, rows), [brute.get((prev, int(r)), 0) for r in rows])


def test_a_pair_never_spans_two_sequences():
    counts = TransitionCounts(np.array([0, 2, 4]), np.array([1, 2, 3, 4]))
    assert counts(2, np.array([3]))[0] == 0 and counts(1, np.array([2]))[0] == 1


def test_rankings_follow_transitions_then_popularity():
    # training: 5 -> 7 twice, 5 -> 6 once; item 8 is the most popular overall
    offsets = np.array([0, 2, 4, 6, 10])
    items = np.array([5, 7, 5, 7, 5, 6, 8, 8, 8, 8])
    cand_rows = np.array([6, 7, 8, 20])  # row 20: a creative unseen in training
    ranked = baseline_rankings(cand_rows, np.array([5, 0, 20]), item_counts(items, 30),
                               TransitionCounts(offsets, items), k=3)
    assert [list(r) for r in ranked["popularity"]] == [[2, 1, 0]] * 3
    assert list(ranked["transitions"][0]) == [1, 0, 2]  # 5 -> 7 (2), 5 -> 6 (1), then popularity
    assert list(ranked["transitions"][1]) == [2, 1, 0] == list(ranked["transitions"][2])  # no known last item
    excluded = baseline_rankings(cand_rows, np.array([5]), item_counts(items, 30), TransitionCounts(offsets, items),
                                 k=4, exclude=[np.array([1])])
    assert list(excluded["transitions"][0]) == [0, 2, 3]


def test_top_k_breaks_ties_by_index():
    assert list(top_k(np.array([1.0, 3.0, 3.0, 0.0]), 3)) == [1, 2, 0]


def test_transition_baseline_starts_from_the_last_item_known_in_training():
    from seqrec.serving.taac import last_known_items

    # 5 training items; rows past 5 are creatives unseen in training (kept by item-tower models), 0 padding.
    rows = np.array([3, 9, 0, 2, 8, 1, 5, 7])
    offsets = np.array([0, 2, 2, 4, 7, 8])
    np.testing.assert_array_equal(last_known_items(rows, offsets, 5), [3, 0, 2, 5, 0])
    # Dropping the unseen rows (what an id-only model does) gives the same starting items.
    keep = rows <= 5
    owner = np.repeat(np.arange(5), np.diff(offsets))
    kept_offsets = np.r_[0, np.cumsum(np.bincount(owner[keep], minlength=5))]
    np.testing.assert_array_equal(last_known_items(rows[keep], kept_offsets, 5), [3, 0, 2, 5, 0])
