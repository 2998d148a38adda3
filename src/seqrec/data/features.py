"""Side features of items and users as NumPy arrays aligned with the internal ids, and their loaders.

Layout (``FeatureSet``): every item array has one row per internal item id 0..I, row 0 being padding
(no feature, no vector); every user array has one row per user row 0..U-1 of ``Interactions``. Value
ids of categorical and multi-valued features start at 1; 0 means missing (and, at inference, a value
unseen in training). A feature's embedding table has ``cardinality[name]`` rows (largest value + 1).

Loaders:
- MovieLens-1M (``ml1m_features``): item genres (multi-valued, 18 genres), release year (categorical
  and, standardised, continuous) from ``movies.dat``; user gender, age, occupation and zip-code region
  from ``users.dat``; joined through ``sas_to_original_{items,users}.txt``, since the SASRec file's ids
  (the ``Interactions`` raw ids) are not the GroupLens ids.
- Amazon Beauty (``beauty_features``): the S3-Rec attributes (categories and brand, multi-valued) of
  ``Beauty_item2attributes.json``, keyed by the raw item id.
- TAAC (``taac_features``): the sparse, array and multimodal features of a ``TaacData``.

``read_dataset`` reads the interactions and the features that ``DataConfig.features`` names together,
so a TAAC directory is parsed once.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from seqrec.config import DataConfig
from seqrec.data.dataset import Interactions

log = logging.getLogger(__name__)

_NAME = re.compile(r"[A-Za-z0-9_]+")  # feature names become module and buffer names in the item tower
_YEAR = re.compile(r"\((\d{4})\)\s*$")

ML1M_FILES = ("movies.dat", "users.dat", "sas_to_original_items.txt", "sas_to_original_users.txt")
BEAUTY_FILE = "Beauty_item2attributes.json"
TAAC_SEQ_FILE = "seq.jsonl"


@dataclass
class FeatureSet:
    """Item and user side features, indexed by internal item id (row 0 = padding) and by user row.

    Attributes:
        num_items: I; item arrays have I + 1 rows.
        num_users: U; user arrays have U rows.
        item_categorical: name -> (I + 1,) int64 value id, 0 = missing.
        item_multi: name -> (offsets (I + 2,) int64, values int64): item ``i``'s values are
            ``values[offsets[i]:offsets[i + 1]]`` (CSR); 0 values are ignored.
        item_continuous: (I + 1, C) float32 scalars (standardised by the loader, 0 = missing), or None.
        continuous_names: the C column names of ``item_continuous``.
        item_vectors: name -> ((I + 1, dim) float32, (I + 1,) bool present); a row without a vector is
            absent (not a zero vector that means something).
        user_categorical: name -> (U,) int64 value id, 0 = missing.
        user_multi: name -> (offsets (U + 1,), values) CSR lists.
        cardinality: name -> embedding table size (largest value id + 1) of every categorical and
            multi-valued feature, item and user alike; names are unique across both.
    """

    num_items: int
    num_users: int
    item_categorical: dict[str, np.ndarray] = field(default_factory=dict)
    item_multi: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    item_continuous: np.ndarray | None = None
    continuous_names: tuple[str, ...] = ()
    item_vectors: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    user_categorical: dict[str, np.ndarray] = field(default_factory=dict)
    user_multi: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    cardinality: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def has_item_features(self) -> bool:
        return bool(self.item_categorical or self.item_multi or self.continuous_names or self.item_vectors)

    @property
    def has_user_features(self) -> bool:
        return bool(self.user_categorical or self.user_multi)

    def validate(self) -> None:
        """Raises ValueError on a shape, name or value that breaks the layout above."""
        rows_i, rows_u = self.num_items + 1, self.num_users
        names = [*self.item_categorical, *self.item_multi, *self.user_categorical, *self.user_multi]
        if len(set(names)) != len(names):
            raise ValueError(f"feature names must be unique across items and users, got {names}")
        for name in [*names, *self.continuous_names, *self.item_vectors]:
            if not _NAME.fullmatch(name):
                raise ValueError(f"feature name {name!r}: use letters, digits and underscores only")
        for group, rows in ((self.item_categorical, rows_i), (self.user_categorical, rows_u)):
            for name, column in group.items():
                if column.shape != (rows,):
                    raise ValueError(f"feature {name}: expected ({rows},) values, got {column.shape}")
                self._check_values(name, column)
        for group, rows in ((self.item_multi, rows_i), (self.user_multi, rows_u)):
            for name, (offsets, values) in group.items():
                if offsets.shape != (rows + 1,) or offsets[0] != 0 or offsets[-1] != len(values):
                    raise ValueError(f"feature {name}: CSR offsets must have {rows + 1} entries from 0 to len(values)")
                self._check_values(name, values)
        if self.item_continuous is None:
            if self.continuous_names:
                raise ValueError("continuous_names given without item_continuous")
        elif self.item_continuous.shape != (rows_i, len(self.continuous_names)):
            raise ValueError(f"item_continuous: expected ({rows_i}, {len(self.continuous_names)}), "
                             f"got {self.item_continuous.shape}")
        for name, (matrix, present) in self.item_vectors.items():
            if matrix.ndim != 2 or len(matrix) != rows_i or present.shape != (rows_i,):
                raise ValueError(f"vector feature {name}: expected ({rows_i}, dim) and ({rows_i},), "
                                 f"got {matrix.shape} and {present.shape}")

    def _check_values(self, name: str, values: np.ndarray) -> None:
        if name not in self.cardinality:
            raise ValueError(f"feature {name}: no cardinality")
        if values.size and (values.min() < 0 or values.max() >= self.cardinality[name]):
            raise ValueError(f"feature {name}: value ids must lie in [0, {self.cardinality[name]})")

    def take_items(self, rows: np.ndarray) -> FeatureSet:
        """The item features of ``rows`` (internal ids, ``rows[0]`` = 0) as items 0..len(rows)-1; users kept."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0 or rows[0] != 0:
            raise ValueError("rows must start with the padding row 0")
        return FeatureSet(
            num_items=len(rows) - 1,
            num_users=self.num_users,
            item_categorical={k: v[rows] for k, v in self.item_categorical.items()},
            item_multi={k: csr_take(*v, rows) for k, v in self.item_multi.items()},
            item_continuous=None if self.item_continuous is None else self.item_continuous[rows],
            continuous_names=self.continuous_names,
            item_vectors={k: (m[rows], p[rows]) for k, (m, p) in self.item_vectors.items()},
            user_categorical=self.user_categorical,
            user_multi=self.user_multi,
            cardinality=self.cardinality,
        )


def csr_take(offsets: np.ndarray, values: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR lists of ``rows`` (any order, repeats allowed) as a new CSR."""
    lengths = (offsets[1:] - offsets[:-1])[rows]
    new_offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_offsets[1:])
    # Position j of the output comes from offsets[row] + (j - new_offsets[row's slot]).
    gather = np.repeat(offsets[rows] - new_offsets[:-1], lengths) + np.arange(int(new_offsets[-1]))
    return new_offsets, values[gather]


def csr_from_lists(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum([len(v) for v in lists], out=offsets[1:])
    values = np.fromiter((x for v in lists for x in v), dtype=np.int64, count=int(offsets[-1]))
    return offsets, values


# ----------------------------------------------------------------------------------------------------
# Loaders
# ----------------------------------------------------------------------------------------------------


def _id_lookup(raw_ids: np.ndarray) -> list[int | None]:
    """Raw ids as Python ints (None where a raw id is not an integer)."""
    out: list[int | None] = []
    for value in raw_ids.tolist():
        if isinstance(value, int):
            out.append(value)
        elif isinstance(value, str) and value.isascii() and value.isdigit():
            out.append(int(value))
        else:
            out.append(None)
    return out


def _read_id_map(path: Path) -> dict[int, int]:
    """``<sasrec id> <original id>`` lines."""
    mapping: dict[int, int] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"{path}:{lineno}: expected '<sasrec id> <original id>', got {line[:80]!r}")
        mapping[int(parts[0])] = int(parts[1])
    return mapping


def _dat_rows(path: Path, fields: int) -> list[list[str]]:
    """``a::b::c`` lines of a GroupLens file (latin-1: movies.dat keeps accented titles)."""
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) != fields or not parts[0].isdigit():
            raise ValueError(f"{path}:{lineno}: expected {fields} '::'-separated fields, got {line[:80]!r}")
        rows.append(parts)
    return rows


def ml1m_features(directory: str | Path, inter: Interactions) -> FeatureSet:
    """MovieLens-1M side features for the SASRec version of ML-1M.

    Args:
        directory: holds ``movies.dat``, ``users.dat`` and the two ``sas_to_original_*.txt`` maps.
        inter: interactions whose raw item and user ids are SASRec ids.

    Returns:
        Items: ``genre`` (multi-valued, genres numbered 1..18 in name order), ``year`` (categorical,
        years numbered in order) and the continuous ``year_std`` (standardised over movies.dat). Users:
        ``gender``, ``age``, ``occupation`` and ``zip_region`` (first zip digit), all categorical.
    """
    directory = Path(directory)
    missing = [name for name in ML1M_FILES if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory}: MovieLens-1M side files missing: {', '.join(missing)}")
    items, matched = _ml1m_items(directory, inter.item_ids)
    unmatched = int((~matched[1:]).sum())
    if unmatched:
        log.warning("ml-1m features: %d of %d items have no movie in movies.dat", unmatched, inter.num_items)
    user_map = _read_id_map(directory / "sas_to_original_users.txt")

    users = {int(r[0]): r for r in _dat_rows(directory / "users.dat", 5)}
    ages = {a: j + 1 for j, a in enumerate(sorted({int(r[2]) for r in users.values()}))}
    columns = {name: np.zeros(inter.num_users, dtype=np.int64) for name in ("gender", "age", "occupation", "zip_region")}
    unmatched = 0
    for u, raw in enumerate(_id_lookup(inter.user_ids)):
        record = users.get(user_map.get(raw)) if raw is not None else None
        if record is None:
            unmatched += 1
            continue
        columns["gender"][u] = {"F": 1, "M": 2}.get(record[1], 0)
        columns["age"][u] = ages[int(record[2])]
        columns["occupation"][u] = int(record[3]) + 1  # occupations are 0..20
        zip_code = record[4].strip()
        columns["zip_region"][u] = int(zip_code[0]) + 1 if zip_code[:1].isdigit() else 0
    if unmatched:
        log.warning("ml-1m features: %d of %d users have no record in users.dat", unmatched, inter.num_users)

    return dataclasses.replace(items, num_users=inter.num_users, user_categorical=columns, cardinality={
        **items.cardinality, "gender": 3, "age": len(ages) + 1, "occupation": 22, "zip_region": 11,
    })


def _ml1m_items(directory: Path, raw_item_ids: np.ndarray) -> tuple[FeatureSet, np.ndarray]:
    """The item half of ``ml1m_features`` for any SASRec item ids (``raw_item_ids[0]`` = padding).

    Genre and year numbering and the year standardisation come from movies.dat as a whole, so the
    features of an item do not depend on which other items are read with it.

    Returns:
        ``(features, matched)``: item features (no users) and, per row, whether the id has a movie.
    """
    item_map = _read_id_map(directory / "sas_to_original_items.txt")
    movies = {int(mid): (title, genres.split("|")) for mid, title, genres in _dat_rows(directory / "movies.dat", 3)}
    genre_ids = {g: j + 1 for j, g in enumerate(sorted({g for _, gs in movies.values() for g in gs if g}))}
    years = {mid: int(m.group(1)) for mid, (title, _) in movies.items() if (m := _YEAR.search(title))}
    year_ids = {y: j + 1 for j, y in enumerate(sorted(set(years.values())))}
    year_values = np.asarray(list(years.values()), dtype=np.float64)
    year_mean, year_std = year_values.mean(), max(year_values.std(), 1e-6)

    rows = len(raw_item_ids)
    genre_lists: list[list[int]] = [[] for _ in range(rows)]
    year = np.zeros(rows, dtype=np.int64)
    year_std_col = np.zeros((rows, 1), dtype=np.float32)
    matched = np.zeros(rows, dtype=bool)
    for i, raw in enumerate(_id_lookup(np.asarray(raw_item_ids))):
        if i == 0:
            continue
        movie = item_map.get(raw) if raw is not None else None
        if movie not in movies:
            continue
        matched[i] = True
        genre_lists[i] = [genre_ids[g] for g in movies[movie][1] if g]
        if movie in years:
            year[i] = year_ids[years[movie]]
            year_std_col[i, 0] = (years[movie] - year_mean) / year_std
    features = FeatureSet(
        num_items=rows - 1,
        num_users=0,
        item_categorical={"year": year},
        item_multi={"genre": csr_from_lists(genre_lists)},
        item_continuous=year_std_col,
        continuous_names=("year_std",),
        cardinality={"genre": len(genre_ids) + 1, "year": len(year_ids) + 1},
    )
    return features, matched


def item_attribute_features(path: str | Path, inter: Interactions, name: str = "attribute") -> FeatureSet:
    """One multi-valued item feature from a ``{raw_item_id: [attribute ids >= 1]}`` JSON file (S3-Rec style).

    Args:
        path: the JSON file, e.g. ``Beauty_item2attributes.json``.
        inter: interactions whose raw item ids are the file's keys.
        name: the feature's name.
    """
    features, matched = _attribute_items(path, inter.item_ids, name)
    unmatched = int((~matched[1:]).sum())
    if unmatched:
        log.warning("%s: %d of %d items have no attributes", Path(path).name, unmatched, inter.num_items)
    return dataclasses.replace(features, num_users=inter.num_users)


def _attribute_items(path: str | Path, raw_item_ids: np.ndarray, name: str = "attribute") -> tuple[FeatureSet, np.ndarray]:
    """The attribute lists of any raw item ids (``raw_item_ids[0]`` = padding) and, per row, whether the
    file lists the id. The table size is the largest attribute id among these items + 1."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"item attribute file not found: {path}")
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON object of item id -> attribute ids ({exc})") from exc
    if not isinstance(table, dict):
        raise ValueError(f"{path}: expected a JSON object of item id -> attribute ids")
    raw_item_ids = np.asarray(raw_item_ids)
    lists: list[list[int]] = [[] for _ in range(len(raw_item_ids))]
    matched = np.zeros(len(raw_item_ids), dtype=bool)
    largest = 0
    for i, raw in enumerate(raw_item_ids.tolist()):
        if i == 0:
            continue
        values = table.get(str(raw))
        if values is None:
            continue
        if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
            raise ValueError(f"{path}: item {raw}: expected a list of attribute ids >= 1, got {str(values)[:80]}")
        matched[i] = True
        lists[i] = values
        largest = max(largest, max(values, default=0))
    features = FeatureSet(
        num_items=len(raw_item_ids) - 1,
        num_users=0,
        item_multi={name: csr_from_lists(lists)},
        cardinality={name: largest + 1},
    )
    return features, matched


def beauty_features(directory: str | Path, inter: Interactions) -> FeatureSet:
    """Amazon Beauty (S3-Rec) item attributes: ``attribute``, multi-valued (637 ids: categories, brand)."""
    return item_attribute_features(Path(directory) / BEAUTY_FILE, inter)


def taac_features(data) -> FeatureSet:
    """The features of a ``seqrec.data.taac.TaacData``: item sparse/array/vectors, user sparse/array."""
    num_items, num_users = data.num_items, data.interactions.num_users
    used = {*data.item_sparse, *data.item_array, *data.user_sparse, *data.user_array}
    cardinality = {}
    for name in used:
        # The indexer may know more values than the training files use; the larger table wins.
        cardinality[name] = max(int(data.feature_cardinality.get(name, 1)), 1)
    return FeatureSet(
        num_items=num_items,
        num_users=num_users,
        item_categorical=dict(data.item_sparse),
        item_multi=dict(data.item_array),
        item_vectors=dict(data.item_vectors),
        user_categorical=dict(data.user_sparse),
        user_multi=dict(data.user_array),
        cardinality=cardinality,
    )


# ----------------------------------------------------------------------------------------------------
# Entry points: what DataConfig.features names
# ----------------------------------------------------------------------------------------------------


def is_taac_dir(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / TAAC_SEQ_FILE).is_file()


def _is_taac(config: DataConfig) -> bool:
    if config.path is None:
        return False
    return config.format == "taac" or (config.format == "auto" and is_taac_dir(config.path))


def _source(config: DataConfig) -> tuple[str, Path] | None:
    """What ``config.features`` names: ``("ml-1m", directory)`` | ``("attributes", json file)``, or None."""
    source = config.features
    if source is None or source == "none":
        return None
    if source in ("ml-1m", "beauty"):
        if config.path is None:
            raise ValueError(f"data.features={source} reads files next to data.path, which is not set")
        directory = Path(config.path).parent
        return ("ml-1m", directory) if source == "ml-1m" else ("attributes", directory / BEAUTY_FILE)
    if source == "taac" or is_taac_dir(source):
        raise ValueError("TAAC features come with a TAAC training directory: set data.path to it (read_dataset)")
    path = Path(source)
    if path.is_file():
        return "attributes", path
    if path.is_dir():
        if all((path / name).is_file() for name in ML1M_FILES):
            return "ml-1m", path
        if (path / BEAUTY_FILE).is_file():
            return "attributes", path / BEAUTY_FILE
        raise ValueError(f"data.features={source}: the directory holds neither the ML-1M side files "
                         f"({', '.join(ML1M_FILES)}) nor {BEAUTY_FILE}")
    raise FileNotFoundError(f"data.features={source}: not none/ml-1m/beauty/taac and no such file or directory")


def read_features(config: DataConfig, inter: Interactions) -> FeatureSet | None:
    """The side features ``config.features`` names, aligned with ``inter`` (see DataConfig.features).

    TAAC features come with the directory: use ``read_dataset`` for TAAC data.
    """
    source = _source(config)
    if source is None:
        return None
    kind, path = source
    return ml1m_features(path, inter) if kind == "ml-1m" else item_attribute_features(path, inter)


def read_item_features(config: DataConfig, raw_ids: Sequence) -> tuple[FeatureSet, np.ndarray] | None:
    """Item features of any raw item ids, from the source ``config.features`` names, in or out of the log.

    The ML-1M files and attribute JSON files are keyed by raw item id (for ML-1M: the SASRec ids of
    ``sas_to_original_items.txt``), so they can describe items the interaction log never names, e.g.
    items a k-core filter or a shorter log dropped. A TAAC training directory cannot: its feature file
    only lists the indexer's items, which are all in the training catalogue already.

    Args:
        config: the data config of the run.
        raw_ids: the items to read, as raw ids (ints or decimal strings).

    Returns:
        ``(features, found)``: features of ``raw_ids`` as items 1..n (row 0 = padding, no users) and an
        (n,) bool mask of the ids the source describes; None when the config names no item feature
        source that can describe items outside the training catalogue (none, TAAC).
    """
    if _is_taac(config) or config.features == "taac":
        return None
    source = _source(config)
    if source is None:
        return None
    kind, path = source
    rows = np.empty(len(raw_ids) + 1, dtype=object)
    rows[0] = None
    rows[1:] = list(raw_ids)
    features, matched = _ml1m_items(path, rows) if kind == "ml-1m" else _attribute_items(path, rows)
    return features, matched[1:]


def concat_items(base: FeatureSet, new: FeatureSet) -> FeatureSet:
    """A catalogue of ``base``'s items followed by ``new``'s items 1..n (as items I+1..I+n), users of ``new``.

    Used to embed items unseen in training next to the trained ones (``ItemTower.extend_catalogue``):
    the tables are ``base``'s, so a value of ``new`` outside them (unseen in training) becomes 0
    (missing), and a feature ``new`` lacks is missing (vectors: absent) for its items.

    Raises:
        ValueError: If a vector feature has another width in ``new`` than in ``base``.
    """
    card = base.cardinality
    n = new.num_items

    def known(values: np.ndarray, name: str) -> np.ndarray:
        values = np.asarray(values, dtype=np.int64)
        return np.where((values >= 0) & (values < card[name]), values, 0)

    categorical = {}
    for name, column in base.item_categorical.items():
        extra = known(new.item_categorical[name][1:], name) if name in new.item_categorical else np.zeros(n, np.int64)
        categorical[name] = np.concatenate([column, extra])
    multi = {}
    for name, (offsets, values) in base.item_multi.items():
        if name in new.item_multi:
            new_offsets, new_values = new.item_multi[name]
            start = new_offsets[1]  # new row 0 (padding) is dropped
            extra_offsets, extra_values = new_offsets[1:] - start, known(new_values[start:], name)
        else:
            extra_offsets, extra_values = np.zeros(n + 1, np.int64), np.zeros(0, np.int64)
        multi[name] = (np.concatenate([offsets, extra_offsets[1:] + offsets[-1]]), np.concatenate([values, extra_values]))
    continuous = None
    if base.item_continuous is not None:
        extra = np.zeros((n, len(base.continuous_names)), dtype=np.float32)
        for j, name in enumerate(base.continuous_names):
            if name in new.continuous_names:
                extra[:, j] = new.item_continuous[1:, new.continuous_names.index(name)]
        continuous = np.concatenate([base.item_continuous.astype(np.float32, copy=False), extra])
    vectors = {}
    for name, (matrix, present) in base.item_vectors.items():
        extra, extra_present = np.zeros((n, matrix.shape[1]), dtype=np.float32), np.zeros(n, dtype=bool)
        if name in new.item_vectors:
            given, mask = new.item_vectors[name]
            if given.shape[1] != matrix.shape[1]:
                raise ValueError(f"vector feature {name}: dim {given.shape[1]} for the new items, {matrix.shape[1]} trained")
            extra, extra_present = given[1:], mask[1:]
        vectors[name] = (np.concatenate([matrix, extra]), np.concatenate([present, extra_present]))
    return FeatureSet(
        num_items=base.num_items + n,
        num_users=new.num_users,
        item_categorical=categorical,
        item_multi=multi,
        item_continuous=continuous,
        continuous_names=base.continuous_names,
        item_vectors=vectors,
        user_categorical=new.user_categorical,
        user_multi=new.user_multi,
        cardinality={**new.cardinality, **card},
    )


def read_dataset(config: DataConfig, *, progress: bool = False) -> tuple[Interactions, FeatureSet | None]:
    """Interactions and side features of ``config``; a TAAC directory is read once for both."""
    if _is_taac(config):
        from seqrec.data.taac.reader import read_taac

        if config.kcore > 1:
            raise ValueError(f"{config.path}: data.kcore is not applied to TAAC data")
        data = read_taac(config.path, progress=progress)
        features = None if config.features == "none" else taac_features(data)
        if config.features not in (None, "none", "taac"):
            raise ValueError(f"data.features={config.features}: a TAAC directory carries its own features; "
                             "use null, taac or none")
        return data.interactions, features
    if config.features == "taac":
        raise ValueError("data.features=taac needs data.path to be a TAAC training directory (with seq.jsonl)")
    from seqrec.data.readers import read_interactions

    inter = read_interactions(config)
    return inter, read_features(config, inter)
