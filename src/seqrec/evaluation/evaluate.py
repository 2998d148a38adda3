"""Full-catalogue ranking evaluation under leave-one-out.

Protocol: every item of the catalogue is ranked (no sampled negatives); the user's history items are
removed from the ranking (``filter_seen``), except the target itself should it also occur in the
history; ties count against the target (pessimistic rank = 1 + number of other candidates scoring
>= the target). Deterministic.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from seqrec.config import EvalConfig
from seqrec.data.batches import left_padded_windows
from seqrec.data.dataset import PAD_ID
from seqrec.data.split import LeaveOneOut, TimeSplit
from seqrec.evaluation.metrics import ranking_metrics
from seqrec.model.sasrec import SASRec, score_items


def ranks_from_scores(
    scores: torch.Tensor, targets: torch.Tensor, seen: torch.Tensor | None = None
) -> torch.Tensor:
    """Pessimistic 1-based rank of each target.

    Args:
        scores: (B, I + 1) scores over the catalogue; column 0 (padding) is never a candidate.
        targets: (B,) int64 target item ids.
        seen: optional (B, I + 1) bool, items removed from the ranking (the target never is).

    Returns:
        (B,) int64 ranks.
    """
    scores = scores.clone()
    target_scores = scores.gather(1, targets[:, None])  # (B, 1)
    excluded = torch.zeros_like(scores, dtype=torch.bool)
    excluded[:, PAD_ID] = True
    if seen is not None:
        excluded |= seen
    excluded.scatter_(1, targets[:, None], True)  # the target is not its own competitor
    better_or_tied = (scores >= target_scores) & ~excluded
    return better_or_tied.sum(1) + 1


def seen_mask(histories: torch.Tensor, num_items: int) -> torch.Tensor:
    """(B, H) padded item histories -> (B, I + 1) bool membership mask."""
    mask = torch.zeros(histories.shape[0], num_items + 1, dtype=torch.bool, device=histories.device)
    mask.scatter_(1, histories, True)
    mask[:, PAD_ID] = False
    return mask


def _full_histories(split: LeaveOneOut | TimeSplit, users: np.ndarray, lengths: np.ndarray) -> torch.Tensor:
    inter = split.interactions
    starts = inter.offsets[users]
    width = max(int(lengths.max()), 1)
    return torch.from_numpy(left_padded_windows(inter.items, starts, starts + lengths, width))


@torch.no_grad()
def model_ranks(
    model: SASRec,
    split: LeaveOneOut | TimeSplit,
    stage: str,
    similarity: str,
    config: EvalConfig,
    *,
    device: torch.device | str = "cpu",
    progress: bool = False,
    share: slice = slice(None),
    bf16: bool = False,
) -> np.ndarray:
    """Ranks of the ``stage`` ('valid' or 'test') targets, one per evaluated user.

    ``share`` selects a contiguous part of ``split.eval_users`` (a distributed rank's share); the ranks
    come back in that order. ``bf16``: the encoder runs under bfloat16 autocast (the validations of a
    ``train.precision=bf16`` run; scoring and ranking stay float32).
    """
    was_training = model.training
    model.eval()
    users = split.users(stage)[share]
    lengths = split.history_lengths(stage)[share]
    targets = split.targets(stage)[share]
    inter = split.interactions
    maxlen = model.config.maxlen
    items = model.item_embeddings().to(device)
    out = np.empty(len(users), dtype=np.int64)
    # Users sorted by history length share a batch with users of similar length, so trimming the batch
    # to its longest history removes nearly all padding (the ranks are exact either way).
    by_length = np.argsort(lengths, kind="stable")
    batches = range(0, len(users), config.batch_size)
    for start in tqdm(batches, desc=f"evaluate {stage}", disable=not progress, leave=False):
        sl = by_length[start : start + config.batch_size]
        u, n = users[sl], lengths[sl]
        starts = inter.offsets[u]
        width = int(min(max(n.max(initial=1), 1), maxlen))  # padding-invariant encoder: trim to the longest
        window = torch.from_numpy(left_padded_windows(inter.items, starts, starts + n, width)).to(device)
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            queries = model.user_embeddings(window, torch.from_numpy(u).to(device))
        scores = score_items(queries.float(), items, similarity)  # (b, I + 1)
        seen = seen_mask(_full_histories(split, u, n).to(device), inter.num_items) if config.filter_seen is not False else None
        t = torch.from_numpy(targets[sl]).to(device)
        out[sl] = ranks_from_scores(scores, t, seen).cpu().numpy()
    model.train(was_training)
    return out


def popularity_ranks(split: LeaveOneOut | TimeSplit, stage: str, config: EvalConfig) -> np.ndarray:
    """Ranks under the popularity baseline: items scored by their training-set frequency."""
    inter = split.interactions
    within = np.arange(len(inter.items)) - np.repeat(inter.offsets[:-1], inter.lengths)
    train_events = inter.items[within < np.repeat(split.train_lengths, inter.lengths)]
    counts = torch.from_numpy(np.bincount(train_events, minlength=inter.num_items + 1).astype(np.float32))
    users = split.users(stage)
    lengths = split.history_lengths(stage)
    targets = split.targets(stage)
    out = np.empty(len(users), dtype=np.int64)
    for start in range(0, len(users), config.batch_size):
        sl = slice(start, start + config.batch_size)
        scores = counts.expand(len(users[sl]), -1)
        seen = seen_mask(_full_histories(split, users[sl], lengths[sl]), inter.num_items) if config.filter_seen is not False else None
        out[sl] = ranks_from_scores(scores, torch.from_numpy(targets[sl]), seen).numpy()
    return out


def evaluate_model(
    model: SASRec,
    split: LeaveOneOut | TimeSplit,
    stage: str,
    similarity: str,
    config: EvalConfig,
    *,
    device: torch.device | str = "cpu",
    progress: bool = False,
    bf16: bool = False,
) -> dict[str, float]:
    ranks = model_ranks(model, split, stage, similarity, config, device=device, progress=progress, bf16=bf16)
    return ranking_metrics(ranks, config.ks)


def evaluate_popularity(split: LeaveOneOut | TimeSplit, stage: str, config: EvalConfig) -> dict[str, float]:
    return ranking_metrics(popularity_ranks(split, stage, config), config.ks)
