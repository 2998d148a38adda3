"""Leave-one-out split over per-user sequences.

For a user with n >= 3 events: the last item is the test target, the second-to-last the validation
target, the first n - 2 items are training data. Users with n < 3 cannot be evaluated: their whole
sequence is training data (n = 2 gives one training pair, n = 1 none) and they appear in neither
validation nor test. Every split is a prefix of the user's sequence, so a split is just lengths.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seqrec.data.dataset import Interactions


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
