"""Settings chosen from the data: what ``null`` means for ``model.maxlen``, ``model.hidden_dim``,
``model.num_blocks``, ``model.dropout``, ``model.tied_embeddings``, ``train.batch_size``, ``train.lr``,
``loss.history_mask`` and ``eval.filter_seen``.

The generic default (no ``--config``) leaves these unset; before a run starts they are fixed by
the rules below, which look only at the shape of the training data (never at a dataset's name), and the
resolved values are what ``config.yaml`` and the checkpoint record. Each rule, and the evidence behind it:

- ``model.maxlen`` = the median training-history length rounded up to a multiple of 10, within
  [50, 200]. Attention costs O(L^2) per sequence; half of the users fit entirely, and the other half
  keep their most recent items, which carry most of the next-item signal. On ML-1M (median 94) the
  session-3 screen measured maxlen 100 at +83% validation NDCG@10 over 200 for the same 9 minutes.
- ``model.dropout`` = 0.3 when the median training history is shorter than 20 items, else 0.2 (SASRec's
  MovieLens setting; Kang & McAuley 2018, sec. IV). SASRec used 0.5 on its sparse Amazon logs (with BCE and
  one negative); under the full-catalogue softmax that held the first epochs at the popularity level and
  ended lower. Beauty's generic default (session 11, seed 42, one thread): dropout 0.3 gave best validation
  NDCG@10 0.0720 and test 0.0548 / HR@10 0.0903 in 12.2 minutes, against 0.0689 and 0.0530 / 0.0878 in 18.9
  at 0.5 and 0.0704 (validation) at 0.2; its first epoch 2.8x popularity (0.0220) instead of 1.9x. A time
  budget (``train.max_minutes``) of at most 20 minutes takes 0.1 off: a short run sees too few epochs to
  overfit, and regularisation only slows it. On ML-1M (session 12, 2 threads alone, the preset's other
  settings): 10 minutes at 0.1 gave test NDCG@10 0.1849 / 0.1845 (seeds 42 / 43) against 0.1725 at 0.2
  (session 10, the earlier machine), while 58 minutes at 0.1 ended at 0.1917 / HR@10 0.3238 against
  0.1936 / 0.3315 at 0.2. Measured on that dense log only; the sparse side (0.3 -> 0.2) is the same step.
- ``model.num_blocks`` = 4 when the median training history is at least 20 items, else 2 (the same split).
  Long histories give a deeper encoder more to read: on ML-1M (median 94) the generic default with 4 blocks
  reached validation NDCG@10 0.2038 and test 0.1916 / HR@10 0.3248 (stopped itself after 51 minutes) against
  0.1911 and 0.1781 / 0.3060 with 2 (session 11 vs session 9, seed 42, one thread), as the ML-1M preset
  gained from 2 to 3 to 4 blocks (session 10). On Beauty (median 6) 4 blocks reached the same validation level
  twice as late (0.0725 at 18.5 minutes vs 0.0720 at 7.2) and tested lower (0.0541 vs 0.0548).
- ``train.lr`` = 1e-3 when the median training history is shorter than 20 items, else 3e-3: the same
  split as the dropout rule. A dense log needs the higher rate to leave the popularity level in its first
  epoch (the session-6 screen: ML-1M validation NDCG@10 0.0890 vs 0.0570 after one epoch); a sparse one
  overfits at it. Beauty's generic default (session 10, seed 42, one thread): lr 1e-3 gave test NDCG@10
  0.0530 / HR@10 0.0878 against 0.0488 / 0.0809 at 3e-3 (best validation 0.0689 vs 0.0643, 18.9 minutes in
  all), at the cost of a slower first epoch (validation 1.9x popularity instead of 2.2x).
- ``model.hidden_dim`` = 128 for a catalogue of up to 1M items, else 64. Measured (session 9, seed 42,
  one thread): 128 against 64 gave test NDCG@10 0.1833 vs 0.1765 on ML-1M (maxlen 200, the preset),
  0.0533 vs 0.0523 on Beauty (its preset) and 0.0488 vs 0.0462 for the generic default on Beauty. Beyond
  1M items the table and its two Adam moments would pass 1.5 GB at 128 (TencentGR's 4.8M items: 7.4 GB),
  so the width that the scale measurements used stays.
- ``train.batch_size`` = the largest power of two <= (training users / 150), within [32, 256]: at least
  ~150 optimizer steps per epoch. In the screen the number of steps per epoch was the strongest lever
  (batch 32 +96%, 64 +80% against 128 at the same time); below 32 a CPU step stops getting cheaper.
- ``loss.mode`` ``auto`` with ``train.sparse_embeddings`` is the note's pool: a full softmax would touch
  every row of the table, which is what sparse updates avoid.
- ``loss.history_mask`` and ``eval.filter_seen`` = false when at least 1% of the training events repeat
  an item earlier in the same user's sequence, else true. Where users come back to items (ads, music,
  groceries) their history holds next items, so neither the loss nor the ranking may hide it; where they
  do not (ML-1M and Beauty repeat nothing), hiding it spares the model a useless lesson. On synthetic
  TAAC data (15.6% repeats) keeping the history raised taac-infer's score from 0.505 to 0.526 (ids only,
  untied) and the model stopped ranking the last item first (BENCHMARKS.md, session 9).
- ``model.tied_embeddings`` = false for an item tower with ids (the candidate side gets its own fusing
  layer and output ids), true for an id-only model. A tower shared by both sides gives a candidate the
  vector that the encoder carries to the last position: on synthetic TAAC data the last history item
  ranked first for 70-80% of the users (the target for 2%); untied, taac-infer's score rose from 0.399
  to 0.532 together with the history rule. Id-only models keep the measured tied table.
"""

from __future__ import annotations

import math

import numpy as np

from seqrec.config import RunConfig, replace
from seqrec.model.features import default_tied

MIN_MAXLEN, MAX_MAXLEN = 50, 200
SPARSE_MEDIAN_LENGTH = 20
SHORT_BUDGET_MINUTES = 20  # a time budget up to this gets 0.1 less dropout (too few epochs to overfit)
REPEAT_SHARE = 0.01  # share of training events that repeat an item of the same user, from which history is kept
REPEAT_SAMPLE_EVENTS = 5_000_000  # larger logs: the share is estimated on their first users' events
MIN_BATCH, MAX_BATCH = 32, 256
WIDE_MAX_ITEMS = 1_000_000  # catalogues up to this size get hidden 128, larger ones 64
STEPS_PER_EPOCH = 150


def auto_maxlen(train_lengths: np.ndarray) -> int:
    median = float(np.median(train_lengths)) if len(train_lengths) else 0.0
    return int(min(MAX_MAXLEN, max(MIN_MAXLEN, 10 * math.ceil(median / 10))))


def is_sparse_log(train_lengths: np.ndarray) -> bool:
    """The median training history is shorter than ``SPARSE_MEDIAN_LENGTH`` items (the dropout, depth and lr rules)."""
    return (float(np.median(train_lengths)) if len(train_lengths) else 0.0) < SPARSE_MEDIAN_LENGTH


def auto_dropout(train_lengths: np.ndarray, max_minutes: float | None = None) -> float:
    base = 0.3 if is_sparse_log(train_lengths) else 0.2
    short = max_minutes is not None and max_minutes <= SHORT_BUDGET_MINUTES
    return round(base - 0.1, 2) if short else base


def auto_num_blocks(train_lengths: np.ndarray) -> int:
    return 2 if is_sparse_log(train_lengths) else 4


def auto_lr(train_lengths: np.ndarray) -> float:
    return 1e-3 if is_sparse_log(train_lengths) else 3e-3


def auto_hidden_dim(num_items: int) -> int:
    return 128 if num_items <= WIDE_MAX_ITEMS else 64


def auto_batch_size(num_train_users: int) -> int:
    target = max(num_train_users / STEPS_PER_EPOCH, 1.0)
    return int(min(MAX_BATCH, max(MIN_BATCH, 2 ** math.floor(math.log2(target)))))


def repeat_share(offsets: np.ndarray, items: np.ndarray, train_lengths: np.ndarray) -> float:
    """Share of training events whose item occurred earlier in the same user's training prefix.

    Args:
        offsets: (U + 1,) start of each user's events in ``items``; items: (E,) item ids in time order.
        train_lengths: (U,) training-prefix length per user.
    """
    if offsets[-1] > REPEAT_SAMPLE_EVENTS:  # an estimate from the first users is enough for a 1% threshold
        users = max(1, int(np.searchsorted(offsets, REPEAT_SAMPLE_EVENTS, side="right")) - 1)
        offsets, train_lengths = offsets[: users + 1], train_lengths[:users]
        items = items[: offsets[-1]]
    lengths = np.diff(offsets)
    within = np.arange(len(items)) - np.repeat(offsets[:-1], lengths)
    train = within < np.repeat(train_lengths, lengths)
    if not train.any():
        return 0.0
    keys = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)[train] * (int(items.max()) + 1) + items[train]
    return 1.0 - len(np.unique(keys)) / len(keys)


def resolve_auto(config: RunConfig, train_lengths: np.ndarray, repeats: float = 0.0,
                 item_tower: bool = False, num_items: int = 0) -> tuple[RunConfig, dict[str, object]]:
    """Fills the unset (``None``) data-dependent settings.

    Args:
        config: the run configuration; only ``None`` values are replaced.
        train_lengths: (U,) training-prefix length per user.
        repeats: ``repeat_share`` of the training data.
        item_tower: the model will embed items with side features.
        num_items: catalogue size.

    Returns:
        ``(config, chosen)``: the resolved configuration and ``{"section.key": value}`` of what was chosen.
    """
    users = train_lengths[train_lengths >= 2]  # the users that give training pairs
    chosen: dict[str, object] = {}
    model, train, loss, evaluation = {}, {}, {}, {}
    if config.model.maxlen is None:
        model["maxlen"] = chosen["model.maxlen"] = auto_maxlen(users)
    if config.model.hidden_dim is None:
        model["hidden_dim"] = chosen["model.hidden_dim"] = auto_hidden_dim(num_items)
    if config.model.dropout is None:
        model["dropout"] = chosen["model.dropout"] = auto_dropout(users, config.train.max_minutes)
    if config.model.num_blocks is None:
        model["num_blocks"] = chosen["model.num_blocks"] = auto_num_blocks(users)
    if config.train.batch_size is None:
        train["batch_size"] = chosen["train.batch_size"] = auto_batch_size(len(users))
    if config.train.lr is None:
        train["lr"] = chosen["train.lr"] = auto_lr(users)
    if config.model.tied_embeddings is None:
        model["tied_embeddings"] = chosen["model.tied_embeddings"] = default_tied(config.model, item_tower)
    keep_history = repeats >= REPEAT_SHARE
    if config.loss.history_mask is None:
        loss["history_mask"] = chosen["loss.history_mask"] = not keep_history
    if config.eval.filter_seen is None:
        evaluation["filter_seen"] = chosen["eval.filter_seen"] = not keep_history
    if config.train.sparse_embeddings and config.loss.mode == "auto":
        # sparse rows are for catalogues too large to score whole: the pool, whatever the size
        loss["mode"] = chosen["loss.mode"] = "pool"
    if not chosen:
        return config, chosen
    return replace(config, model=model, train=train, loss=loss, eval=evaluation), chosen
