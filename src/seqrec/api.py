"""The Python API: train a run, load it, and ask it for recommendations in raw ids.

    import seqrec

    run = seqrec.train("log.csv", out="runs/demo", overrides={"train.epochs": 5})
    rec = seqrec.load(run)
    rec.recommend([["i1", "i7", "i3"]], k=5)     # one list per history: [("i9", 0.83), ...]
    rec.recommend_users(["u42"], k=5)            # users of the run's data, their whole history
    rec.similar_items(["i7"], k=5)               # item-to-item neighbours

Everything here calls the functions the CLI calls (``train.loop.train``, ``retrieval.recommend``,
``retrieval.similar``), so results, warnings and errors are the CLI's: ``recommend_users`` returns what
``seqrec recommend --users ...`` writes; unknown user ids raise ValueError; candidates unknown to the
model are embedded from their side features where the model has an item tower, else skipped with a
warning (``resolve_candidates``); history ids unknown to the model are dropped with a warning, as
``POST /recommend`` drops them, and a history with none known is a ValueError.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from seqrec.config import RunConfig, config_from_dict, config_to_dict, load_config
from seqrec.data.dataset import Interactions
from seqrec.errors import ConfigError
from seqrec.retrieval.ids import ItemLookup, shown
from seqrec.retrieval.recommend import (
    LoadedModel,
    load_model,
    recommend_batches,
    resolve_candidates,
    user_rows,
)
from seqrec.retrieval.run_index import run_index
from seqrec.retrieval.similar import similar_items as _similar_items

log = logging.getLogger(__name__)

Ranked = list[list[tuple[Any, float]]]  # one list per input row of (raw item id, score), best first


def train(
    data: str | Path | None,
    out: str | Path | None = None,
    config: str | Path | RunConfig | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Trains a model, as ``seqrec train --data DATA --out OUT --config CONFIG --set KEY=VALUE ...`` does.

    Args:
        data: the interaction log (SASRec text, CSV/TSV, Parquet, a seqrec directory or a TAAC training
            directory); None trains on the built-in synthetic data (or the config's ``data.path``).
        out: the run directory; default ``runs/<YYYYmmdd-HHMMSS>`` (a new one each call).
        config: a YAML file as ``--config`` takes, or a ``RunConfig``; default the built-in defaults.
        overrides: ``--set`` keys with Python values, e.g. ``{"train.batch_size": 32, "loss.name": "bce"}``;
            applied after ``config``, and ``data`` after them, as on the command line.
        resume, overwrite: as ``--resume`` and ``--overwrite``.
        progress: progress lines on stderr.

    Returns:
        The run directory (``config.yaml``, ``checkpoints/``, ``metrics.jsonl``, ``results.json``).

    Raises:
        ConfigError: On an unknown section or key, a wrong type or an invalid value.
        RunDirError: If ``out`` already holds a run (and neither ``resume`` nor ``overwrite``).
        FileNotFoundError, DataError: On a missing or malformed data or config file.
    """
    from seqrec.train.loop import train as train_run

    resolved = resolve_config(data, config, overrides)
    run_dir = Path(out) if out is not None else _new_run_dir(Path("runs"))
    call = f"seqrec.train({data!r}, out={str(run_dir)!r}, config={config!r}, overrides={dict(overrides or {})!r})"
    result = train_run(resolved, run_dir, resume=resume, overwrite=overwrite, progress=progress, command=[call])
    return Path(result.run_dir)


def resolve_config(
    data: str | Path | None, config: str | Path | RunConfig | None, overrides: Mapping[str, Any] | None
) -> RunConfig:
    """The run config ``train`` trains with: ``config`` (a file or a RunConfig), ``overrides``, ``data``."""
    if isinstance(config, RunConfig):
        base, where = config, "config"
    else:
        base, where = load_config(config), "config" if config is None else str(config)
    values = config_to_dict(base)
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ConfigError(f"overrides must be a dict of 'section.key': value, got {type(overrides).__name__}")
    for key, value in (overrides or {}).items():
        section, dot, name = str(key).partition(".")
        if not isinstance(key, str) or not dot or not section or not name or "." in name:
            raise ConfigError(f"overrides: expected 'section.key' keys such as 'train.batch_size', got {key!r}")
        if not isinstance(values.get(section, {}), dict):
            raise ConfigError(f"overrides: {section} is not a config section")
        values.setdefault(section, {})[name] = value  # an unknown section or key: config_from_dict names it
    if overrides:
        where = f"{where} (with overrides)"
    if data is not None:
        values["data"]["path"] = str(data)
    return config_from_dict(values, where)


def _new_run_dir(root: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = root / stamp, 1
    while path.exists():
        n += 1
        path = root / f"{stamp}-{n}"
    return path


def load(run_dir: str | Path, index: str = "exact") -> Recommender:
    """Loads a run directory (or a checkpoint file) for inference.

    Args:
        run_dir: what ``train`` returned, or a checkpoint file.
        index: ``exact`` (default), ``hnsw`` or ``ivf``: the run's saved index of that kind when it was
            built for these weights (``seqrec index build``), else one built in memory, as the CLI does.
    """
    loaded = load_model(run_dir)
    faiss_index, _ = run_index(loaded, run_dir, index)
    return Recommender(Path(run_dir), loaded, faiss_index)


class Recommender:
    """A loaded run: top-K items for histories or for users of its data, and item neighbours.

    Build it with :func:`load`. Every method returns one list per input row of ``(raw item id, score)``
    pairs, best first; a row has fewer than ``k`` pairs when fewer items are eligible. Scores are the
    checkpoint's similarity (``self.similarity``: cosine or dot) of the user and item vectors.
    """

    def __init__(self, run: Path, loaded: LoadedModel, index: Any):
        self.run = run
        self.loaded = loaded
        self.index = index
        self.lookup = ItemLookup(loaded.item_ids)
        self._interactions: Interactions | None = None

    @property
    def similarity(self) -> str:
        return self.loaded.similarity

    @property
    def num_items(self) -> int:
        return self.loaded.model.num_items

    @property
    def interactions(self) -> Interactions:
        """The run's training data (read on first use): the histories ``recommend_users`` looks up."""
        if self._interactions is None:
            from seqrec.data.readers import read_interactions

            stored = self.loaded.state["config"]["data"]
            self._interactions = read_interactions(config_from_dict({"data": stored}).data)
        return self._interactions

    def recommend(
        self, histories: Sequence[Sequence[Any]], k: int = 10, candidates: Sequence[Any] | None = None,
        exclude_seen: bool = True,
    ) -> Ranked:
        """Top-``k`` items for each history of raw item ids (oldest first), as ``POST /recommend`` answers.

        Args:
            histories: one list of raw item ids per user; ints and decimal strings match either spelling.
            k: items per history.
            candidates: raw item ids; only these are returned (see ``resolve_candidates``).
            exclude_seen: never return an item of the history.

        Raises:
            TypeError: If ``histories`` is not a list of lists.
            ValueError: If ``k`` < 1, a history is empty or has no id the model knows, or no candidate
                is known to the model (nor embedded from its features).
        """
        inter = self._histories(histories)
        return self._rank(inter, np.arange(inter.num_users), k, candidates, exclude_seen, user_features=False)

    def recommend_users(
        self, user_ids: Sequence[Any], k: int = 10, candidates: Sequence[Any] | None = None,
        exclude_seen: bool = True,
    ) -> Ranked:
        """Top-``k`` items for users of the run's data over their whole history, as ``seqrec recommend``.

        Raises:
            ValueError: If a user id is not in the run's data (``unknown user id(s): ...``), ``k`` < 1,
                or no candidate is known.
        """
        if isinstance(user_ids, (str, bytes)) or not isinstance(user_ids, Sequence):
            raise TypeError(f"user_ids must be a list of raw user ids, got {type(user_ids).__name__}")
        inter = self.interactions
        rows = user_rows(inter, list(user_ids)) if len(user_ids) else np.zeros(0, dtype=np.int64)
        return self._rank(inter, rows, k, candidates, exclude_seen, user_features=True)

    def similar_items(self, item_ids: Sequence[Any], k: int = 10) -> Ranked:
        """The ``k`` items nearest to each item (itself excluded), by the checkpoint's similarity.

        Raises:
            ValueError: If an item id is unknown to the model (``unknown item id(s): ...``) or ``k`` < 1.
        """
        if isinstance(item_ids, (str, bytes)) or not isinstance(item_ids, Sequence):
            raise TypeError(f"item_ids must be a list of raw item ids, got {type(item_ids).__name__}")
        ids, unknown = self.lookup.lookup(list(item_ids))
        if unknown:
            raise ValueError(f"unknown item id(s): {shown(unknown, 10)}")
        items, scores = _similar_items(self.loaded, self.index, ids, k)
        return [self._pairs(self.loaded.item_ids, row, row_scores) for row, row_scores in zip(items, scores, strict=True)]

    def _histories(self, histories: Sequence[Sequence[Any]]) -> Interactions:
        """Raw-id histories -> an Interactions of their known ids (rows 0..n-1); unknown ids dropped."""
        if isinstance(histories, (str, bytes)) or not isinstance(histories, Sequence):
            raise TypeError(f"histories must be a list of lists of raw item ids, got {type(histories).__name__}")
        parts, dropped = [], []
        for r, history in enumerate(histories):
            if isinstance(history, (str, bytes)) or not isinstance(history, Sequence):
                raise TypeError(f"histories[{r}] is a {type(history).__name__}, not a list of raw item ids "
                                "(for one user, pass [history])")
            if not len(history):
                raise ValueError(f"histories[{r}] is empty: give at least one item id, oldest first")
            ids, unknown = self.lookup.lookup(list(history))
            if not len(ids):
                raise ValueError(f"histories[{r}]: none of the {len(unknown)} history item ids is known to the "
                                 f"model: {shown(unknown)}")
            parts.append(ids)
            dropped.extend(unknown)
        if dropped:
            log.warning("%d history item ids unknown to the model were dropped: %s", len(dropped), shown(dropped))
        lengths = np.array([len(p) for p in parts], dtype=np.int64)
        items = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return Interactions(offsets=np.r_[0, np.cumsum(lengths)].astype(np.int64), items=items.astype(np.int64),
                            user_ids=np.arange(len(parts)), item_ids=self.loaded.item_ids)

    def _rank(self, inter: Interactions, rows: np.ndarray, k: int, candidates: Sequence[Any] | None,
              exclude_seen: bool, *, user_features: bool) -> Ranked:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an integer >= 1, got {k!r}")
        resolved = None
        if candidates is not None:
            if isinstance(candidates, (str, bytes)) or not isinstance(candidates, Sequence):
                raise TypeError(f"candidates must be a list of raw item ids, got {type(candidates).__name__}")
            resolved = resolve_candidates(self.loaded, list(candidates))
        if not len(rows):
            return []
        # New (feature-embedded) candidates are searched exactly over the candidate vectors, as in the CLI.
        index = None if resolved is not None and resolved.new_ids else self.index
        raw_ids = self.loaded.item_ids if resolved is None else resolved.item_ids(self.loaded.item_ids)
        out: Ranked = []
        for _, items, scores in recommend_batches(self.loaded, inter, rows, int(k), exclude_seen=exclude_seen,
                                                  index=index, candidates=resolved, user_features=user_features):
            out.extend(self._pairs(raw_ids, row, row_scores) for row, row_scores in zip(items, scores, strict=True))
        return out

    @staticmethod
    def _pairs(raw_ids: np.ndarray, items: np.ndarray, scores: np.ndarray) -> list[tuple[Any, float]]:
        valid = items > 0  # 0 (score -inf) pads a row with fewer eligible items than k
        return [(_plain(raw_ids[i]), float(s)) for i, s in zip(items[valid].tolist(), scores[valid].tolist(), strict=True)]


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
