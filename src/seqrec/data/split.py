"""Splits of per-user sequences into training prefixes and validation/test targets.

Leave-one-out (``data.split: loo``, the papers' protocol): for a user with n >= 3 events the last item
is the test target, the second-to-last the validation target, the first n - 2 items are training data.
Users with n < 3 cannot be evaluated: their whole sequence is training data (n = 2 gives one training
pair, n = 1 none) and they appear in neither validation nor test.

Global time split (``data.split: time``, ``TimeSplit``): one cut for every user, so no model trains on
events that happen after the events it is tested on (Ji et al., "A Critical Study on Data Leakage in
Recommender System Offline Evaluation", TOIS 2023).

Every split is a prefix of the user's time-ordered sequence, so a split is just lengths. Both expose
``train_lengths``, ``users(stage)``, ``history_lengths(stage)`` and ``targets(stage)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seqrec.config import DataConfig
from seqrec.data.dataset import Interactions
from seqrec.errors import DataError


@dataclass
class LeaveOneOut:
    """Prefix lengths into ``interactions`` for each stage.

    Attributes:
        interactions: the full sequences.
        train_lengths: (U,) training prefix per user (n - 2, or n when n < 3).
        eval_users: (E,) users with at least 3 events, evaluated on validation and test.
    """

    interactions: Interactions
    train_lengths: np.ndarray
    eval_users: np.ndarray

    def users(self, stage: str) -> np.ndarray:
        """(E,) users evaluated in ``stage``; the same users in validation and test."""
        _check_stage(stage)
        return self.eval_users

    def history_lengths(self, stage: str) -> np.ndarray:
        """(E,) history length per evaluated user: the prefix before the stage's target."""
        n = self.interactions.lengths[self.eval_users]
        if stage == "valid":
            return n - 2
        if stage == "test":
            return n - 1
        raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")

    def targets(self, stage: str) -> np.ndarray:
        """(E,) internal item id of the stage's target per evaluated user."""
        ends = self.interactions.offsets[self.eval_users] + self.history_lengths(stage)
        return self.interactions.items[ends]


def leave_one_out(inter: Interactions) -> LeaveOneOut:
    n = inter.lengths
    train_lengths = np.where(n >= 3, n - 2, n)
    return LeaveOneOut(inter, train_lengths.astype(np.int64), np.flatnonzero(n >= 3).astype(np.int64))


@dataclass
class TimeSplit:
    """A global temporal split: two cuts in time, the same for every user.

    Events before the validation cut train. Validation targets lie in [valid cut, test cut), test
    targets at or after the test cut. Per stage, with cut c:

    - a user with events before c and one at or after c (inside the stage's slice) is evaluated on
      their first event at or after c, with everything before c as history (for the test stage this
      includes the validation slice, which is never trained on, as in leave-one-out);
    - a cold user, first seen at or after c, is evaluated through their in-slice history: their first
      event in the slice is the history, the second (still in the slice) the target; a cold user with
      one event in the slice cannot be evaluated.

    One target per user and stage, the next event after the cut: the next-item task of leave-one-out,
    asked at one moment for everyone. Validation and test users differ, so per-stage code takes
    ``users(stage)``.

    Attributes:
        interactions: the full sequences (time-ordered per user; timestamps required).
        cuts: (validation cut, test cut) in the data's time unit.
        train_lengths: (U,) events before the validation cut per user.
        stage_users: stage -> (E_s,) evaluated users, ascending.
        stage_history: stage -> (E_s,) history length (prefix before the target) per evaluated user.
        stage_cold: stage -> number of evaluated users that are cold (first seen at or after the cut).
    """

    interactions: Interactions
    cuts: tuple[float, float]
    train_lengths: np.ndarray
    stage_users: dict[str, np.ndarray]
    stage_history: dict[str, np.ndarray]
    stage_cold: dict[str, int]

    @property
    def eval_users(self) -> np.ndarray:
        """The test users. Validation users differ: code that evaluates a stage takes ``users(stage)``."""
        return self.stage_users["test"]

    def users(self, stage: str) -> np.ndarray:
        """(E_s,) users evaluated in ``stage``."""
        _check_stage(stage)
        return self.stage_users[stage]

    def history_lengths(self, stage: str) -> np.ndarray:
        """(E_s,) history length per evaluated user: the prefix before the stage's target."""
        _check_stage(stage)
        return self.stage_history[stage]

    def targets(self, stage: str) -> np.ndarray:
        """(E_s,) internal item id of the stage's target per evaluated user."""
        ends = self.interactions.offsets[self.users(stage)] + self.history_lengths(stage)
        return self.interactions.items[ends]

    def summary(self) -> str:
        """One line for the log: cuts, training events, evaluated (and cold) users per stage."""
        train = int(self.train_lengths.sum())
        stages = ", ".join(f"{s} {len(self.stage_users[s])} users ({self.stage_cold[s]} cold)" for s in STAGES)
        return (f"time split at {self.cuts[0]:g} / {self.cuts[1]:g}: {train} of {len(self.interactions.items)} "
                f"events train; {stages}")


STAGES = ("valid", "test")


def _check_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")


def time_split(
    inter: Interactions,
    quantiles: tuple[float, float] = (0.8, 0.9),
    times: tuple[float, float] | None = None,
) -> TimeSplit:
    """Global temporal split at two cuts: given ``times``, else the ``quantiles`` of all event times.

    Args:
        inter: sequences with ``timestamps`` (time-ordered per user, as every reader sorts them).
        quantiles: (q_valid, q_test), 0 < q_valid < q_test < 1: the share of events, counted over time,
            that lies before each cut (before ties at the cut).
        times: explicit (validation cut, test cut) timestamps; overrides ``quantiles``.

    Raises:
        ValueError: no timestamps, cuts out of order, or a slice (training, validation, test) empty.
    """
    ts = inter.timestamps
    if ts is None:
        raise ValueError("data.split=time needs event timestamps: set data.time_col for CSV/TSV/Parquet data or use "
                         "TAAC data (SASRec .txt files have none); or use data.split=loo")
    if len(ts) == 0:
        raise ValueError("data.split=time: the data has no events")
    if times is not None:
        cuts = (float(times[0]), float(times[1]))
    else:
        q_valid, q_test = quantiles
        if not 0 < q_valid < q_test < 1:
            raise ValueError(f"data.split_quantiles must satisfy 0 < q_valid < q_test < 1, got {quantiles}")
        cuts = (float(np.quantile(ts, q_valid)), float(np.quantile(ts, q_test)))
    if not cuts[0] < cuts[1]:
        raise ValueError(f"data.split=time: the validation cut ({cuts[0]:g}) must come before the test cut "
                         f"({cuts[1]:g}); with quantiles, many events share one timestamp")
    lengths = inter.lengths
    owner = np.repeat(np.arange(inter.num_users), lengths)  # (N,) user of each event
    if np.any(np.diff(ts)[np.diff(owner) == 0] < 0):
        raise ValueError("data.split=time: events are not in time order within a user")

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(owner[mask], minlength=inter.num_users).astype(np.int64)

    train_lengths = count(ts < cuts[0])
    users, history, cold = {}, {}, {}
    for stage, cut, end in (("valid", cuts[0], cuts[1]), ("test", cuts[1], np.inf)):
        before = count(ts < cut)  # the prefix before the cut
        in_slice = count((ts >= cut) & (ts < end))
        # Warm: the next event after the cut is in the slice; cold: the first two events are in it.
        warm = (before >= 1) & (in_slice >= 1)
        cold_ok = (before == 0) & (in_slice >= 2)
        chosen = np.flatnonzero(warm | cold_ok).astype(np.int64)
        users[stage] = chosen
        history[stage] = np.where(warm[chosen], before[chosen], 1).astype(np.int64)
        cold[stage] = int(cold_ok.sum())
    if train_lengths.sum() == 0:
        raise ValueError(f"data.split=time: no event lies before the validation cut {cuts[0]:g}")
    for stage in STAGES:
        if len(users[stage]) == 0:
            raise ValueError(f"data.split=time: no user can be evaluated in {stage} (cuts {cuts[0]:g} / {cuts[1]:g})")
    return TimeSplit(inter, cuts, train_lengths, users, history, cold)


def require_evaluable(split: LeaveOneOut | TimeSplit, source: str | None = None) -> None:
    """Raises ``DataError`` when a stage has no user to evaluate, so no metric could mean anything.

    Leave-one-out evaluates only users with 3 or more events; on data where everybody has 1 or 2, training
    would run and report NDCG 0 for an empty set of users. ``source`` names the data in the message.
    """
    for stage in STAGES:
        if len(split.users(stage)) == 0:
            where = f"{source}: " if source else ""
            if isinstance(split, LeaveOneOut):
                raise DataError(
                    f"{where}no user has 3 or more interactions, so nothing can be evaluated (leave-one-out "
                    "validates on a user's second-to-last event and tests on the last; users with 1 or 2 "
                    "events are training-only)", path=source)
            raise DataError(f"{where}no user can be evaluated in {stage}", path=source)


def make_split(inter: Interactions, config: DataConfig) -> LeaveOneOut | TimeSplit:
    """The split ``data.split`` names: ``loo`` (leave-one-out) or ``time`` (global time cuts)."""
    if config.split == "time":
        return time_split(inter, config.split_quantiles, config.split_times)
    return leave_one_out(inter)
