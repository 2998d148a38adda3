"""Item titles for people to read (the service's page): MovieLens-1M's movies.dat where the run has it.

A run knows titles when its data is the SASRec ML-1M file with the GroupLens side files next to it (or
in ``data.features``): ``movies.dat`` and ``sas_to_original_items.txt``, the map from the SASRec ids
(the raw ids of the log) to the GroupLens movie ids. Anything else has no titles and is shown by id.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from seqrec.config import DataConfig
from seqrec.data.side_features import _dat_rows, _id_lookup, _read_id_map
from seqrec.errors import SeqrecError

log = logging.getLogger(__name__)

_FILES = ("movies.dat", "sas_to_original_items.txt")


def titles_directory(data: DataConfig) -> Path | None:
    """Where the ML-1M title files of ``data`` are: ``data.features`` if it is such a directory (or
    ``ml-1m``, next to the log), else next to ``data.path``; None if neither holds both files."""
    places = []
    if data.features not in (None, "none", "ml-1m", "beauty", "taac"):
        places.append(Path(data.features))
    if data.path is not None:
        places.append(Path(data.path).parent)
    for place in places:
        if all((place / name).is_file() for name in _FILES):
            return place
    return None


def item_titles(data: DataConfig, item_ids: np.ndarray) -> list[str | None] | None:
    """Titles of ``item_ids`` (row i = internal item i; ``[0]`` padding, None), None for an item without
    a movie; None when the data has no titles. Unreadable title files are logged and give None."""
    directory = titles_directory(data)
    if directory is None:
        return None
    try:
        item_map = _read_id_map(directory / "sas_to_original_items.txt")
        movies = {int(row[0]): row[1] for row in _dat_rows(directory / "movies.dat", 3)}
    except (OSError, ValueError, SeqrecError) as exc:
        log.warning("item titles off: %s", exc)
        return None
    titles: list[str | None] = [None]
    for raw in _id_lookup(np.asarray(item_ids)[1:]):
        movie = item_map.get(raw) if raw is not None else None
        titles.append(movies.get(movie) if movie is not None else None)
    if not any(titles):
        return None
    return titles
