"""Training batches: windows, left padding, positives and random negatives, fully vectorised.

For a training prefix ``s`` of length m the input is ``s[:-1]`` and the positive at each position is
the next item ``s[1:]``, both cut to the last ``maxlen`` positions and left-padded with ``PAD_ID``.
Negatives are drawn uniformly from the items the user never interacted with in the training prefix,
fresh every epoch. All randomness of a batch is derived from (seed, epoch, step), so any step of any
epoch can be rebuilt exactly (resume mid-epoch) and in any worker process.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from seqrec.data.dataset import PAD_ID

_MAX_REJECTION_ROUNDS = 64


@dataclass
class Batch:
    """One training batch; B sequences, L = maxlen positions, K negatives per position.

    Attributes:
        users: (B,) int64 user rows.
        input_ids: (B, L) int64 item ids fed to the encoder, left-padded with 0; L <= maxlen is the
            longest window in the batch when trimming is on.
        pos_ids: (B, L) int64 next item per position (0 where there is none).
        neg_ids: (B, L, K) int64 random negatives (0 where there is no positive).
        loss_mask: (B, L) bool, True where the position has a real next item.
    """

    users: torch.Tensor
    input_ids: torch.Tensor
    pos_ids: torch.Tensor
    neg_ids: torch.Tensor
    loss_mask: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in (
            self.users, self.input_ids, self.pos_ids, self.neg_ids, self.loss_mask)))

    def pin_memory(self) -> Batch:
        return Batch(*(t.pin_memory() for t in (
            self.users, self.input_ids, self.pos_ids, self.neg_ids, self.loss_mask)))


def left_padded_windows(items: np.ndarray, starts: np.ndarray, ends: np.ndarray, length: int) -> np.ndarray:
    """The last ``length`` items of each ``items[starts[r]:ends[r]]``, left-padded with PAD_ID.

    Args:
        items: (N,) flat item ids.
        starts, ends: (R,) half-open ranges into ``items``.
        length: window length.

    Returns:
        (R, length) int64.
    """
    idx = ends[:, None] - length + np.arange(length)[None, :]  # (R, length)
    valid = idx >= starts[:, None]
    return np.where(valid, items[np.where(valid, idx, 0)], PAD_ID).astype(np.int64)


class UserItemSet:
    """Membership test "did user u interact with item i" over training prefixes, vectorised.

    Keys ``u * (num_items + 1) + i`` are sorted once; a batch query is one ``searchsorted``.
    """

    def __init__(self, offsets: np.ndarray, items: np.ndarray, lengths: np.ndarray, num_items: int):
        self.stride = num_items + 1
        users = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
        starts = np.repeat(offsets[:-1], lengths)
        within = np.arange(len(users), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        self.keys = np.unique(users * self.stride + items[starts + within])

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Element-wise membership; ``users`` broadcasts against ``items``."""
        keys = users * self.stride + items
        pos = np.searchsorted(self.keys, keys)
        pos = np.minimum(pos, len(self.keys) - 1)
        return self.keys[pos] == keys


def sample_negatives(
    rng: np.random.Generator, users: np.ndarray, shape: tuple[int, ...], num_items: int, seen: UserItemSet
) -> np.ndarray:
    """Uniform negatives in 1..num_items avoiding each row's seen items (vectorised rejection sampling).

    Args:
        users: (B,) user rows; ``shape`` starts with B.

    Returns:
        int64 array of ``shape``.
    """
    users_b = users.reshape((-1,) + (1,) * (len(shape) - 1))
    neg = rng.integers(1, num_items + 1, size=shape, dtype=np.int64)
    for _ in range(_MAX_REJECTION_ROUNDS):
        clash = seen.contains(users_b, neg)
        if not clash.any():
            break
        neg[clash] = rng.integers(1, num_items + 1, size=int(clash.sum()), dtype=np.int64)
    # A user who has seen (nearly) every item keeps the few remaining clashes rather than looping forever.
    return neg


class BatchBuilder:
    """Builds the training batches of an epoch from training prefixes.

    Args:
        offsets, items: CSR sequences (``Interactions.offsets`` / ``.items``).
        train_lengths: (U,) training prefix length per user.
        num_items: catalogue size I (ids 1..I).
        maxlen: window length L.
        negatives_per_position: K.
        trim: drop leading columns that are padding in every row of a batch (exact; see ``build``).
    """

    def __init__(
        self,
        offsets: np.ndarray,
        items: np.ndarray,
        train_lengths: np.ndarray,
        num_items: int,
        maxlen: int,
        negatives_per_position: int = 1,
        trim: bool = True,
    ):
        self.offsets = offsets
        self.items = items
        self.train_lengths = train_lengths
        self.num_items = num_items
        self.maxlen = maxlen
        self.k = negatives_per_position
        self.trim = trim
        self.users = np.flatnonzero(train_lengths >= 2).astype(np.int64)  # need at least one (input, next) pair
        self.seen = UserItemSet(offsets, items, train_lengths, num_items)

    def num_batches(self, batch_size: int) -> int:
        return -(-len(self.users) // batch_size)

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        return np.random.default_rng([seed, epoch]).permutation(self.users)

    def build(self, users: np.ndarray, rng: np.random.Generator) -> Batch:
        starts = self.offsets[users]
        ends = starts + self.train_lengths[users]
        input_ids = left_padded_windows(self.items, starts, ends - 1, self.maxlen)
        pos_ids = left_padded_windows(self.items, starts + 1, ends, self.maxlen)
        # The encoder is padding-invariant, so columns that are padding in every row can be dropped:
        # short sequences then cost O(longest in batch), not O(maxlen).
        width = max(int((self.train_lengths[users] - 1).max(initial=1)), 1) if self.trim else self.maxlen
        width = min(width, self.maxlen)
        input_ids, pos_ids = input_ids[:, -width:], pos_ids[:, -width:]
        mask = pos_ids != PAD_ID
        neg = sample_negatives(rng, users, (len(users), width, self.k), self.num_items, self.seen)
        neg[~mask] = PAD_ID
        return Batch(
            users=torch.from_numpy(users),
            input_ids=torch.from_numpy(input_ids),
            pos_ids=torch.from_numpy(pos_ids),
            neg_ids=torch.from_numpy(neg),
            loss_mask=torch.from_numpy(mask),
        )

    def batch(self, seed: int, epoch: int, step: int, batch_size: int, order: np.ndarray | None = None) -> Batch:
        """Batch number ``step`` of ``epoch``; deterministic in (seed, epoch, step)."""
        if order is None:
            order = self.epoch_order(seed, epoch)
        users = order[step * batch_size : (step + 1) * batch_size]
        return self.build(users, np.random.default_rng([seed, epoch, step, 1]))

    def epoch(self, seed: int, epoch: int, batch_size: int, start_step: int = 0) -> Iterator[Batch]:
        order = self.epoch_order(seed, epoch)
        for step in range(start_step, self.num_batches(batch_size)):
            yield self.batch(seed, epoch, step, batch_size, order)
