"""Global temporal split: nothing at or after the cut reaches training; targets and histories per stage."""

from __future__ import annotations

import numpy as np
import pytest

from seqrec.config import ConfigError, DataConfig, load_config
from seqrec.data.batches import BatchBuilder
from seqrec.data.dataset import Interactions
from seqrec.data.split import LeaveOneOut, TimeSplit, leave_one_out, make_split, time_split


def unique_item_log(seed: int = 0, users: int = 60) -> Interactions:
    """Random time-ordered sequences where every event has its own item id, so an id names one event."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 15, size=users)
    starts = rng.uniform(0, 80, size=users)  # some users start after the cuts: cold users
    times = np.concatenate([np.sort(s + rng.exponential(4.0, size=n)) for s, n in zip(starts, lengths, strict=True)])
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    n = int(offsets[-1])
    return Interactions(offsets=offsets, items=np.arange(1, n + 1, dtype=np.int64), user_ids=np.arange(users),
                        item_ids=np.arange(n + 1), timestamps=np.round(times, 1))


def test_no_training_position_sees_an_event_at_or_after_the_cut():
    inter = unique_item_log()
    split = time_split(inter, (0.6, 0.8))
    cut = split.cuts[0]
    time_of = np.concatenate([[-np.inf], inter.timestamps])  # item id -> its event's time (0: padding)
    builder = BatchBuilder(inter.offsets, inter.items, split.train_lengths, inter.num_items, maxlen=16,
                           negatives_per_position=2)
    rng = np.random.default_rng(0)
    seen_inputs, seen_targets = set(), set()
    for users in np.array_split(builder.users, 4):
        batch = builder.build(users, rng)
        inputs, positives = batch.input_ids.numpy(), batch.pos_ids.numpy()
        assert (time_of[inputs[inputs > 0]] < cut).all()
        assert (time_of[positives[batch.loss_mask.numpy()]] < cut).all()
        seen_inputs |= set(inputs[inputs > 0].tolist())
        seen_targets |= set(positives[batch.loss_mask.numpy()].tolist())
    # ... and every event before the cut is trained on (as an input or a target), none left out.
    before = set(np.flatnonzero(inter.timestamps < cut) + 1)
    users_of = np.repeat(np.arange(inter.num_users), inter.lengths)
    trainable = {i + 1 for i in np.flatnonzero(inter.timestamps < cut) if split.train_lengths[users_of[i]] >= 2}
    assert trainable <= seen_inputs | seen_targets <= before


def test_stage_targets_and_histories_follow_the_cuts():
    inter = unique_item_log(seed=1, users=200)
    split = time_split(inter, (0.7, 0.85))
    valid_cut, test_cut = split.cuts
    assert valid_cut == pytest.approx(np.quantile(inter.timestamps, 0.7))
    ts = inter.timestamps
    for stage, cut, end in (("valid", valid_cut, test_cut), ("test", test_cut, np.inf)):
        users, hist, targets = split.users(stage), split.history_lengths(stage), split.targets(stage)
        assert len(users) == len(hist) == len(targets) > 0 and (np.diff(users) > 0).all()
        cold = 0
        for u, h, t in zip(users, hist, targets, strict=True):
            seq_ts = ts[inter.offsets[u] : inter.offsets[u + 1]]
            target_time = ts[t - 1]  # item id t is event t - 1
            assert cut <= target_time < end and inter.items[inter.offsets[u] + h] == t
            if seq_ts[0] >= cut:  # cold: the first in-slice event is the history
                cold += 1
                assert h == 1
            else:  # warm: the history is everything before the cut, the target the next event
                assert h == int((seq_ts < cut).sum())
        assert cold == split.stage_cold[stage] > 0
        # Every user with a qualifying event in the slice is evaluated.
        expected = []
        for u in range(inter.num_users):
            seq_ts = ts[inter.offsets[u] : inter.offsets[u + 1]]
            before, inside = (seq_ts < cut).sum(), ((seq_ts >= cut) & (seq_ts < end)).sum()
            if (before >= 1 and inside >= 1) or (before == 0 and inside >= 2):
                expected.append(u)
        assert users.tolist() == expected
    assert split.eval_users is split.users("test")
    assert (split.train_lengths == np.bincount(np.repeat(np.arange(200), inter.lengths)[ts < valid_cut],
                                               minlength=200)).all()
    assert "cold" in split.summary()


def test_explicit_times_and_errors():
    inter = unique_item_log(seed=2)
    split = time_split(inter, times=(30.0, 50.0))
    assert split.cuts == (30.0, 50.0)
    with pytest.raises(ValueError, match="needs event timestamps"):
        time_split(Interactions(inter.offsets, inter.items, inter.user_ids, inter.item_ids))
    with pytest.raises(ValueError, match="must come before"):
        time_split(inter, times=(50.0, 50.0))
    with pytest.raises(ValueError, match="no event lies before"):
        time_split(inter, times=(-2.0, -1.0))
    with pytest.raises(ValueError, match="no user can be evaluated in test"):
        time_split(inter, times=(30.0, 1e9))
    shuffled = Interactions(inter.offsets, inter.items, inter.user_ids, inter.item_ids, inter.timestamps[::-1].copy())
    with pytest.raises(ValueError, match="not in time order"):
        time_split(shuffled)


def test_config_and_make_split():
    inter = unique_item_log(seed=3)
    assert isinstance(make_split(inter, DataConfig()), LeaveOneOut)
    config = load_config(None, ["data.split=time", "data.split_quantiles=[0.5, 0.75]"]).data
    split = make_split(inter, config)
    assert isinstance(split, TimeSplit) and split.cuts[0] == pytest.approx(np.quantile(inter.timestamps, 0.5))
    assert make_split(inter, DataConfig(split="time", split_times=(30.0, 50.0))).cuts == (30.0, 50.0)
    for bad, match in ((["data.split=random"], "must be one of"), (["data.split_quantiles=[0.9, 0.8]"], "0 < validation"),
                       (["data.split_times=[5, 1]"], "must come before")):
        with pytest.raises(ConfigError, match=match):
            load_config(None, bad)
    loo = leave_one_out(inter)
    assert loo.users("valid") is loo.users("test") is loo.eval_users
    with pytest.raises(ValueError, match="stage"):
        loo.users("train")
