"""BatchBuilder: windows, padding, positives, negatives, masks, determinism, trimming, K negatives.

``_reference_*`` below is the original (pre-optimisation) algorithm, kept here as the specification:
the optimised builder must give the very same batches, negatives included, for the same (seed, epoch, step).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqrec.data.batches import PAD_ID, BatchBuilder, UserItemSet, left_padded_windows, sample_negatives
from seqrec.data.split import leave_one_out
from seqrec.data.synthetic import generate_synthetic

# Three users; training prefixes (train_lengths) are [11 12 13 14 15], [21 22] and [31].
OFFSETS = np.array([0, 7, 11, 14])
ITEMS = np.array([11, 12, 13, 14, 15, 16, 17, 21, 22, 23, 24, 31, 32, 33])
TRAIN_LENGTHS = np.array([5, 2, 1])
NUM_ITEMS = 40


def _reference_batch(offsets, items, train_lengths, num_items, maxlen, k, trim, users, rng):
    """The original BatchBuilder.build: two windows, a global sorted key set, full re-test per round."""
    lengths = train_lengths
    u_all = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    starts_all = np.repeat(offsets[:-1], lengths)
    within = np.arange(len(u_all), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    stride = num_items + 1
    keys = np.unique(u_all * stride + items[starts_all + within])

    def contains(us, its):
        q = us * stride + its
        pos = np.minimum(np.searchsorted(keys, q), len(keys) - 1)
        return keys[pos] == q

    starts = offsets[users]
    ends = starts + train_lengths[users]
    input_ids = left_padded_windows(items, starts, ends - 1, maxlen)
    pos_ids = left_padded_windows(items, starts + 1, ends, maxlen)
    width = max(int((train_lengths[users] - 1).max(initial=1)), 1) if trim else maxlen
    width = min(width, maxlen)
    input_ids, pos_ids = input_ids[:, -width:], pos_ids[:, -width:]
    mask = pos_ids != PAD_ID
    shape = (len(users), width, k)
    users_b = users.reshape(-1, 1, 1)
    neg = rng.integers(1, num_items + 1, size=shape, dtype=np.int64)
    for _ in range(64):
        clash = contains(users_b, neg)
        if not clash.any():
            break
        neg[clash] = rng.integers(1, num_items + 1, size=int(clash.sum()), dtype=np.int64)
    neg[~mask] = PAD_ID
    return input_ids, pos_ids, neg, mask


def _builder(maxlen=4, k=1, trim=True) -> BatchBuilder:
    return BatchBuilder(OFFSETS, ITEMS, TRAIN_LENGTHS, NUM_ITEMS, maxlen, k, trim)


def test_windows_left_padding_and_positives_on_a_hand_made_example():
    b = _builder(maxlen=4).build(np.array([0, 1, 2]), np.random.default_rng(0))
    # user 0: inputs = last 4 of [11 12 13 14], positives = [12 13 14 15]; user 1: [21] -> [22]; user 2: none
    assert b.input_ids.tolist() == [[11, 12, 13, 14], [0, 0, 0, 21], [0, 0, 0, 0]]
    assert b.pos_ids.tolist() == [[12, 13, 14, 15], [0, 0, 0, 22], [0, 0, 0, 0]]
    assert b.users.tolist() == [0, 1, 2]
    for t in (b.users, b.input_ids, b.pos_ids, b.neg_ids):
        assert t.dtype == torch.int64

    b = _builder(maxlen=2).build(np.array([0, 1]), np.random.default_rng(0))  # windows cut to the last 2
    assert b.input_ids.tolist() == [[13, 14], [0, 21]]
    assert b.pos_ids.tolist() == [[14, 15], [0, 22]]


def test_only_users_with_a_training_pair_are_scheduled():
    builder = _builder()
    assert builder.users.tolist() == [0, 1]  # user 2 has one training event: no (input, next) pair
    assert sorted(builder.epoch_order(1, 0).tolist()) == [0, 1]


def test_loss_mask_marks_real_positives_and_negatives_are_padding_elsewhere():
    b = _builder(maxlen=6, trim=False).build(np.array([0, 1, 2]), np.random.default_rng(1))
    assert torch.equal(b.loss_mask, b.pos_ids != PAD_ID)
    assert b.loss_mask.sum(1).tolist() == [4, 1, 0]
    assert (b.neg_ids[~b.loss_mask] == PAD_ID).all()
    assert (b.neg_ids[b.loss_mask] != PAD_ID).all()
    assert b.input_ids.shape == (3, 6)


def test_negatives_never_in_the_training_prefix():
    inter = generate_synthetic(120, 25, min_len=5, max_len=24, seed=2)  # small catalogue: many clashes to reject
    split = leave_one_out(inter)
    builder = BatchBuilder(inter.offsets, inter.items, split.train_lengths, inter.num_items, 30, 3)
    for step, batch in enumerate(builder.epoch(seed=5, epoch=0, batch_size=16)):
        for row, u in enumerate(batch.users.tolist()):
            prefix = set(inter.items[inter.offsets[u] : inter.offsets[u] + split.train_lengths[u]].tolist())
            negs = batch.neg_ids[row][batch.loss_mask[row]].flatten().tolist()
            assert negs and not prefix.intersection(negs), (step, u)
            assert all(1 <= n <= inter.num_items for n in negs)


def test_user_who_saw_all_but_one_item_gets_that_item():
    offsets = np.array([0, 4])
    items = np.array([1, 2, 4, 3])
    builder = BatchBuilder(offsets, items, np.array([3]), 4, 5, 2)  # prefix {1, 2, 4}; only 3 is left
    batch = builder.batch(seed=0, epoch=0, step=0, batch_size=1)
    assert set(batch.neg_ids[batch.loss_mask].flatten().tolist()) == {3}


def test_deterministic_in_seed_epoch_step():
    inter = generate_synthetic(200, 60, seed=4)
    split = leave_one_out(inter)

    def make():
        return BatchBuilder(inter.offsets, inter.items, split.train_lengths, inter.num_items, 20, 2)

    a, b = make(), make()
    x, y = a.batch(3, 1, 2, 32), b.batch(3, 1, 2, 32)
    for f in ("users", "input_ids", "pos_ids", "neg_ids", "loss_mask"):
        assert torch.equal(getattr(x, f), getattr(y, f))
    # the same batch whether taken alone or while iterating the epoch (resume mid-epoch)
    from_epoch = list(a.epoch(3, 1, 32))[2]
    assert torch.equal(from_epoch.neg_ids, x.neg_ids) and torch.equal(from_epoch.users, x.users)
    resumed = next(b.epoch(3, 1, 32, start_step=2))
    assert torch.equal(resumed.neg_ids, x.neg_ids)
    # other step, epoch or seed: other users or other negatives
    assert not torch.equal(a.batch(3, 1, 3, 32).users, x.users)
    assert not torch.equal(a.batch(3, 2, 2, 32).users, x.users)
    assert not torch.equal(a.batch(4, 1, 2, 32).users, x.users)
    z = a.build(x.users.numpy(), np.random.default_rng([3, 1, 99, 1]))
    assert torch.equal(z.input_ids, x.input_ids) and not torch.equal(z.neg_ids, x.neg_ids)
    # an epoch covers every schedulable user exactly once
    seen = torch.cat([bt.users for bt in a.epoch(3, 0, 32)])
    assert sorted(seen.tolist()) == a.users.tolist()


def test_trimming_drops_all_padding_columns_only():
    b = _builder(maxlen=10).build(np.array([1, 2]), np.random.default_rng(0))
    assert b.input_ids.tolist() == [[21], [0]] and b.pos_ids.tolist() == [[22], [0]]
    full = _builder(maxlen=10, trim=False).build(np.array([0, 1]), np.random.default_rng(0))
    trimmed = _builder(maxlen=10).build(np.array([0, 1]), np.random.default_rng(0))
    assert full.input_ids.shape == (2, 10) and trimmed.input_ids.shape == (2, 4)
    assert torch.equal(full.input_ids[:, -4:], trimmed.input_ids)
    assert torch.equal(full.pos_ids[:, -4:], trimmed.pos_ids)
    assert (full.input_ids[:, :-4] == PAD_ID).all()
    assert trimmed.neg_ids.shape == (2, 4, 1)
    # never wider than maxlen
    assert _builder(maxlen=3).build(np.array([0]), np.random.default_rng(0)).input_ids.shape == (1, 3)


@pytest.mark.parametrize("k", [1, 4])
def test_k_negatives_per_position(k):
    b = _builder(maxlen=4, k=k).build(np.array([0, 1]), np.random.default_rng(0))
    assert b.neg_ids.shape == (2, 4, k)
    assert ((b.neg_ids != PAD_ID) == b.loss_mask[..., None]).all()
    prefix0 = {11, 12, 13, 14, 15}
    assert not prefix0.intersection(b.neg_ids[0].flatten().tolist())


@pytest.mark.parametrize(("users", "items", "maxlen", "k", "trim"), [
    (300, 60, 20, 1, True), (300, 25, 8, 3, True), (150, 400, 50, 2, False), (80, 12, 5, 1, True),
])
def test_same_batches_as_the_reference_algorithm(users, items, maxlen, k, trim):
    inter = generate_synthetic(users, items, min_len=3, max_len=40, seed=1)
    split = leave_one_out(inter)
    builder = BatchBuilder(inter.offsets, inter.items.astype(np.int32), split.train_lengths, items, maxlen, k, trim)
    order = builder.epoch_order(7, 1)
    for step in range(builder.num_batches(33)):
        batch = builder.batch(7, 1, step, 33, order)
        ref = _reference_batch(inter.offsets, inter.items, split.train_lengths, items, maxlen, k, trim,
                               order[step * 33 : (step + 1) * 33], np.random.default_rng([7, 1, step, 1]))
        for got, want in zip((batch.input_ids, batch.pos_ids, batch.neg_ids, batch.loss_mask), ref, strict=True):
            assert np.array_equal(got.numpy(), want), step


def test_user_item_set_matches_brute_force_across_build_chunks(monkeypatch):
    rng = np.random.default_rng(0)
    monkeypatch.setattr(UserItemSet, "_CHUNK_EVENTS", 7)  # many build passes, some users longer than a pass
    lengths = rng.integers(0, 20, size=40)
    offsets = np.zeros(41, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    items = rng.integers(1, 16, size=int(offsets[-1]))
    prefix = np.minimum(lengths, rng.integers(0, 20, size=40))
    seen = UserItemSet(offsets, items, prefix, 15)
    queries = np.arange(0, 18)[None, :]  # includes 0 and ids above the catalogue
    got = seen.contains(np.arange(40)[:, None], queries)
    want = np.array([[q in set(items[offsets[u] : offsets[u] + prefix[u]].tolist()) for q in range(18)] for u in range(40)])
    assert np.array_equal(got, want)
    assert seen.items.dtype == np.int32
    empty = UserItemSet(np.array([0, 0]), np.array([], dtype=np.int64), np.array([0]), 5)
    assert not empty.contains(np.array([0]), np.array([3])).any()


def test_sample_negatives_shape_and_range():
    seen = UserItemSet(OFFSETS, ITEMS, TRAIN_LENGTHS, NUM_ITEMS)
    neg = sample_negatives(np.random.default_rng(0), np.array([0, 1]), (2, 3, 5), NUM_ITEMS, seen)
    assert neg.shape == (2, 3, 5) and neg.dtype == np.int64
    assert neg.min() >= 1 and neg.max() <= NUM_ITEMS


def test_contains_rows_equals_contains_with_and_without_the_bitmap(monkeypatch):
    rng = np.random.default_rng(1)
    lengths = rng.integers(0, 60, size=30)
    offsets = np.zeros(31, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    items = rng.integers(1, 200, size=int(offsets[-1]))
    seen = UserItemSet(offsets, items, lengths, 199)
    users = rng.integers(0, 30, size=12)
    queries = np.concatenate([rng.integers(0, 202, size=(12, 40, 2)),
                              items[offsets[users]][:, None, None].repeat(2, 2)], axis=1)  # some sure hits
    want = seen.contains(users[:, None, None], queries)
    assert want.any() and np.array_equal(seen.contains_rows(users, queries), want)
    monkeypatch.setattr(UserItemSet, "_MAX_FILTER_BYTES", 0)  # the plain binary-search path
    assert np.array_equal(seen.contains_rows(users, queries), want)



def test_random_windows_stay_inside_the_prefix_and_cover_every_pair():
    # maxlen 2: user 0's prefix [11..15] has 5 events, so its window (3 events) can end at 13, 14 or 15;
    # user 1's prefix [21 22] fits whole and must be what the "last" mode gives.
    last = BatchBuilder(OFFSETS, ITEMS, TRAIN_LENGTHS, NUM_ITEMS, 2, 1, trim=False)
    rand = BatchBuilder(OFFSETS, ITEMS, TRAIN_LENGTHS, NUM_ITEMS, 2, 1, trim=False, window="random")
    users = np.array([0, 1])
    ref = last.build(users, np.random.default_rng(0))
    prefix = ITEMS[:5].tolist()
    ends, pairs = set(), set()
    for seed in range(60):
        b = rand.build(users, np.random.default_rng(seed))
        inp, pos = b.input_ids[0].tolist(), b.pos_ids[0].tolist()
        # a contiguous run of the training prefix, positives one step ahead of the inputs, no padding
        start = prefix.index(inp[0])
        assert inp == prefix[start : start + 2] and pos == prefix[start + 1 : start + 3]
        assert b.loss_mask[0].all()
        ends.add(pos[-1])
        pairs.update(zip(inp, pos, strict=True))
        assert torch.equal(b.input_ids[1], ref.input_ids[1]) and torch.equal(b.pos_ids[1], ref.pos_ids[1])
        assert torch.equal(b.loss_mask[1], ref.loss_mask[1])
    assert ends == {13, 14, 15}  # never past the prefix (16, 17 are validation/test), every end reached
    assert pairs == {(11, 12), (12, 13), (13, 14), (14, 15)}  # "last" only ever trains on (13,14), (14,15)
    assert set(zip(ref.input_ids[0].tolist(), ref.pos_ids[0].tolist(), strict=True)) == {(13, 14), (14, 15)}


def test_random_windows_are_deterministic_and_last_mode_is_the_default():
    inter = generate_synthetic(200, 60, seed=4)
    split = leave_one_out(inter)
    args = (inter.offsets, inter.items, split.train_lengths, inter.num_items, 8, 2)
    a, b = BatchBuilder(*args, window="random"), BatchBuilder(*args, window="random")
    x, y = a.batch(3, 1, 2, 32), b.batch(3, 1, 2, 32)
    for f in ("users", "input_ids", "pos_ids", "neg_ids", "loss_mask"):
        assert torch.equal(getattr(x, f), getattr(y, f))
    # another epoch draws other windows for the same users
    order = a.epoch_order(3, 1, 32)
    other = a.build(order[64:96], np.random.default_rng([3, 2, 2, 1]))
    assert not torch.equal(other.input_ids, x.input_ids)
    # "last" (the default) is the window of the most recent events
    default, last = BatchBuilder(*args), BatchBuilder(*args, window="last")
    assert torch.equal(default.batch(3, 1, 2, 32).input_ids, last.batch(3, 1, 2, 32).input_ids)
    with pytest.raises(ValueError, match="window"):
        BatchBuilder(*args, window="first")
