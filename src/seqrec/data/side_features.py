"""Side-feature loaders of the public data sets, keyed by the raw ids of ``Interactions``.

- MovieLens-1M (``ml1m_features``): item genres (multi-valued, 18 genres), release year (categorical
  and, standardised, continuous) from ``movies.dat``; user gender, age, occupation and zip-code region
  from ``users.dat``; joined through ``sas_to_original_{items,users}.txt``, since the SASRec file's ids
  (the ``Interactions`` raw ids) are not the GroupLens ids.
- Amazon Beauty (``beauty_features``): the S3-Rec attributes (categories and brand, multi-valued) of
  ``Beauty_item2attributes.json``, keyed by the raw item id.

``ml1m_items`` and ``attribute_items`` describe any raw item ids, in the log or not (new candidates).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from pathlib import Path

import numpy as np

from seqrec.data.dataset import Interactions
from seqrec.data.feature_set import FeatureSet, csr_from_lists
from seqrec.data.taac.layout import BIG_INT_DECODER
from seqrec.errors import DataError

log = logging.getLogger(__name__)

_YEAR = re.compile(r"\((\d{4})\)\s*$")

ML1M_FILES = ("movies.dat", "users.dat", "sas_to_original_items.txt", "sas_to_original_users.txt")
BEAUTY_FILE = "Beauty_item2attributes.json"


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


def _is_id(text: str) -> bool:
    """ASCII digits that fit in 64 bits (int() would take non-ASCII digits and refuse over 4,300)."""
    return text.isascii() and text.isdigit() and len(text) <= 18


def _read_id_map(path: Path) -> dict[int, int]:
    """``<sasrec id> <original id>`` lines."""
    mapping: dict[int, int] = {}
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 text ({exc.reason} at byte {exc.start})",
                                path=path, line=lineno) from exc
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not all(_is_id(p) for p in parts):
                raise DataError(f"{path}:{lineno}: expected '<sasrec id> <original id>', got {line.strip()[:80]!r} "
                                "(ids: ASCII digits, at most 18)",
                                path=path, line=lineno)
            mapping[int(parts[0])] = int(parts[1])
    return mapping


def _dat_rows(path: Path, fields: int, numeric: tuple[int, ...] = (0,)) -> list[list[str]]:
    """``a::b::c`` lines of a GroupLens file (latin-1: movies.dat keeps accented titles); the fields at
    the ``numeric`` positions must be ids."""
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) != fields:
            raise DataError(f"{path}:{lineno}: expected {fields} '::'-separated fields, got {line[:80]!r}",
                            path=path, line=lineno)
        for k in numeric:
            if not _is_id(parts[k]):
                raise DataError(f"{path}:{lineno}: field {k + 1}: expected a non-negative integer of at most 18 digits, "
                                f"got {parts[k][:40]!r}",
                                path=path, line=lineno, field=str(k + 1))
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
    items, matched = ml1m_items(directory, inter.item_ids)
    unmatched = int((~matched[1:]).sum())
    if unmatched:
        log.warning("ml-1m features: %d of %d items have no movie in movies.dat", unmatched, inter.num_items)
    user_map = _read_id_map(directory / "sas_to_original_users.txt")

    users = {int(r[0]): r for r in _dat_rows(directory / "users.dat", 5, numeric=(0, 2, 3))}
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


def ml1m_items(directory: Path, raw_item_ids: np.ndarray) -> tuple[FeatureSet, np.ndarray]:
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
    features, matched = attribute_items(path, inter.item_ids, name)
    unmatched = int((~matched[1:]).sum())
    if unmatched:
        log.warning("%s: %d of %d items have no attributes", Path(path).name, unmatched, inter.num_items)
    return dataclasses.replace(features, num_users=inter.num_users)


def attribute_items(path: str | Path, raw_item_ids: np.ndarray, name: str = "attribute") -> tuple[FeatureSet, np.ndarray]:
    """The attribute lists of any raw item ids (``raw_item_ids[0]`` = padding) and, per row, whether the
    file lists the id. The table size is the largest attribute id among these items + 1."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"item attribute file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        try:
            table = json.loads(text)
        except json.JSONDecodeError:
            raise
        except ValueError:  # an int literal beyond int()'s 4,300 digits: the item's own check names it
            table = BIG_INT_DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not a JSON object of item id -> attribute ids ({exc.msg} at column "
                        f"{exc.colno})", path=path, line=exc.lineno) from exc
    except (ValueError, RecursionError) as exc:  # not UTF-8, nested too deeply
        raise DataError(f"{path}: not a JSON object of item id -> attribute ids ({exc})", path=path) from exc
    if not isinstance(table, dict):
        raise DataError(f"{path}: expected a JSON object of item id -> attribute ids", path=path)
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
        if not isinstance(values, list) or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v < 2**63 for v in values):
            # ids beyond int64 used to pass here and overflow in csr_from_lists; json.loads keeps every int printable
            raise DataError(f"{path}: item {raw}: expected a list of attribute ids >= 1 (int64), got {str(values)[:80]}",
                            path=path, field=str(raw))
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

