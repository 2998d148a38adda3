"""Property: whatever bytes a data file holds, a reader returns valid Interactions or raises DataError
naming the file. No other exception (IndexError, OverflowError, csv.Error, zlib.error, ...) may escape.

Inputs: random bytes, token soup shaped like the format (ids, huge numbers, NaN, unicode digits, NUL,
quotes, BOMs, odd separators and line ends), valid files with random mutations (bit flips, inserted,
deleted and duplicated bytes, truncation), in plain text, gzip, xz and bz2, and Parquet (random column
types and values, and mutated Parquet bytes).

150 examples per reader by default (derandomized, so the suite is repeatable); set
SEQREC_HYPOTHESIS_EXAMPLES=N for a deeper random run (benchmarks/fuzz_readers.sh uses 10,000).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from seqrec.config import DataConfig
from seqrec.data.readers import DataError, read_interactions

_EXAMPLES = os.environ.get("SEQREC_HYPOTHESIS_EXAMPLES")
settings.register_profile(
    "seqrec-readers",
    max_examples=int(_EXAMPLES) if _EXAMPLES else 150,
    deadline=None,  # file I/O and decompression make timings noisy on shared machines
    derandomize=not _EXAMPLES,  # the default run is the same every time; the fuzz run explores
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
READERS = settings(settings.get_profile("seqrec-readers"))

# ---------------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------------

TOKENS = st.one_of(
    st.integers(-3, 40).map(str),
    st.sampled_from([
        "0", "-0", "+5", "007", "1.5", "1e3", "1e400", "nan", "NaN", "inf", "-inf", "", " ", "abc", "1_0",
        "\u0661", "\uff11", "99999999999999999999999", "9223372036854775807", "9223372036854775808",
        "-9223372036854775809", "\x00", "\ufeff1", '"', '"1"', '"a,b"', "'", "\\", "\x1c", "\u2028", "\x85",
        "user_id", "item_id", "ts",
    ]),
    st.text(max_size=6),
)
SEPARATORS = st.sampled_from([" ", "\t", ",", "  ", ";", "", ", "])
LINE_ENDS = st.sampled_from(["\n", "\n", "\n", "\r\n", "\r", ""])
LINE = st.builds(lambda tokens, sep, end: sep.join(tokens) + end, st.lists(TOKENS, max_size=4), SEPARATORS, LINE_ENDS)
ENCODINGS = st.sampled_from(["utf-8", "utf-8", "utf-8", "latin-1", "utf-16", "utf-8-sig"])


@st.composite
def soup(draw, header: bool = False) -> bytes:
    """Format-shaped token soup, sometimes with a plausible CSV header."""
    lines = draw(st.lists(LINE, max_size=12))
    if header and draw(st.booleans()):
        names = draw(st.lists(st.sampled_from(["user_id", "item_id", "ts", "x", "", "user_id "]), min_size=1, max_size=4))
        sep = draw(st.sampled_from([",", "\t", ";"]))
        lines.insert(0, sep.join(names) + "\n")
    return "".join(lines).encode(draw(ENCODINGS), errors="replace")


@st.composite
def valid_sasrec(draw) -> bytes:
    pairs = draw(st.lists(st.tuples(st.integers(1, 30), st.integers(1, 30)), min_size=1, max_size=30))
    return "".join(f"{u} {i}\n" for u, i in pairs).encode()


@st.composite
def valid_delimited(draw, sep: str) -> bytes:
    rows = draw(st.lists(st.tuples(st.integers(1, 30), st.text("abc", min_size=1, max_size=3), st.integers(0, 99)),
                         min_size=1, max_size=30))
    return (f"user_id{sep}item_id{sep}ts\n" + "".join(f"{u}{sep}{i}{sep}{t}\n" for u, i, t in rows)).encode()


MUTATION = st.tuples(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "duplicate"]),
                     st.integers(0, 1 << 20), st.integers(0, 255))


def mutate(data: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, position, value in mutations:
        if not out and kind != "insert":
            continue
        at = position % (len(out) + (kind == "insert"))
        if kind == "flip":
            out[at] ^= 1 << (value % 8)
        elif kind == "set":
            out[at] = value
        elif kind == "insert":
            out[at:at] = bytes([value])
        elif kind == "delete":
            del out[at : at + 1 + value % 8]
        elif kind == "truncate":
            del out[at:]
        else:
            out[at:at] = out[at : at + 1 + value % 16]
    return bytes(out)


def mutated(base: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.builds(mutate, base, st.lists(MUTATION, min_size=1, max_size=4))


def contents(valid: st.SearchStrategy[bytes], header: bool = False) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=300), soup(header=header), valid, mutated(valid), mutated(soup(header=header)))


COMPRESSORS = {".gz": gzip.compress, ".xz": lzma.compress, ".bz2": bz2.compress}


def compressed(plain: st.SearchStrategy[bytes], suffix: str) -> st.SearchStrategy[bytes]:
    """Compressed content, often damaged after compression (truncated streams, flipped bits), or junk."""
    packed = plain.map(COMPRESSORS[suffix])
    return st.one_of(packed, mutated(packed), st.binary(max_size=200))


# ---------------------------------------------------------------------------------------------------
# The property
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def check(path: Path, content: bytes, **config) -> None:
    """Reads ``content`` from ``path``: either valid Interactions or a DataError that names the file."""
    path.write_bytes(content)
    try:
        inter = read_interactions(DataConfig(path=str(path), **config))
    except DataError as exc:
        assert str(path) in str(exc), f"message does not name the file: {exc}"
        event("DataError")
        return
    event("read")
    n = len(inter.items)
    assert n > 0 and inter.offsets[0] == 0 and inter.offsets[-1] == n
    assert np.all(np.diff(inter.offsets) >= 1), "every user has at least one event"
    assert inter.items.min() >= 1 and inter.items.max() <= inter.num_items
    assert len(inter.user_ids) == inter.num_users and len(np.unique(inter.items)) == inter.num_items
    if inter.timestamps is not None:
        assert len(inter.timestamps) == n and np.all(np.isfinite(inter.timestamps))


@READERS
@given(content=contents(valid_sasrec()), skip=st.booleans())
def test_sasrec_plain(workdir, content, skip):
    check(workdir / "log.txt", content, on_bad_line="skip" if skip else "error")


@READERS
@given(content=compressed(contents(valid_sasrec()), ".gz"), skip=st.booleans())
def test_sasrec_gz(workdir, content, skip):
    check(workdir / "log.txt.gz", content, on_bad_line="skip" if skip else "error")


@READERS
@given(content=compressed(contents(valid_sasrec()), ".xz"), skip=st.booleans())
def test_sasrec_xz(workdir, content, skip):
    check(workdir / "log.txt.xz", content, on_bad_line="skip" if skip else "error")


@READERS
@given(content=compressed(contents(valid_sasrec()), ".bz2"))
def test_sasrec_bz2(workdir, content):
    check(workdir / "log.txt.bz2", content)


@READERS
@given(content=contents(valid_delimited(","), header=True), time_col=st.sampled_from([None, "ts"]),
       skip=st.booleans(), gz=st.booleans())
def test_csv(workdir, content, time_col, skip, gz):
    name = "log.csv.gz" if gz else "log.csv"
    check(workdir / name, gzip.compress(content) if gz else content, time_col=time_col,
          on_bad_line="skip" if skip else "error")


@READERS
@given(content=contents(valid_delimited("\t"), header=True), time_col=st.sampled_from([None, "ts"]), skip=st.booleans())
def test_tsv(workdir, content, time_col, skip):
    check(workdir / "log.tsv", content, time_col=time_col, on_bad_line="skip" if skip else "error")


# ---------------------------------------------------------------------------------------------------
# Parquet
# ---------------------------------------------------------------------------------------------------

def _parquet_columns() -> dict:
    import pyarrow as pa

    return {
        "int64": (pa.int64(), st.integers(-(2**63), 2**63 - 1)),
        "int8": (pa.int8(), st.integers(-128, 127)),
        "uint64": (pa.uint64(), st.integers(0, 2**64 - 1)),
        "string": (pa.string(), st.text(max_size=5)),
        "large_string": (pa.large_string(), st.text(max_size=5)),
        "float64": (pa.float64(), st.floats()),
        "bool": (pa.bool_(), st.booleans()),
        "binary": (pa.binary(), st.binary(max_size=5)),
        "list": (pa.list_(pa.int64()), st.lists(st.integers(0, 5), max_size=3)),
        "timestamp": (pa.timestamp("s"), st.integers(-(10**10), 10**10)),
        "date": (pa.date32(), st.integers(-(10**5), 10**5)),
        "null": (pa.null(), st.none()),
    }


@st.composite
def parquet_bytes(draw) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = _parquet_columns()
    names = draw(st.lists(st.sampled_from(["user_id", "item_id", "ts", "other"]), min_size=1, max_size=4, unique=True))
    rows = draw(st.integers(0, 8))
    table = {}
    for name in names:
        kind = draw(st.sampled_from(sorted(columns)))
        arrow_type, strategy = columns[kind]
        data = draw(st.lists(st.one_of(st.none(), strategy), min_size=rows, max_size=rows))
        array = pa.array(data, type=arrow_type)
        if kind == "string" and draw(st.booleans()):
            array = array.dictionary_encode()  # as pandas categoricals are written
        table[name] = array
    buffer = io.BytesIO()
    pq.write_table(pa.table(table), buffer)
    return buffer.getvalue()


@st.composite
def valid_parquet(draw) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = draw(st.integers(1, 20))
    users = draw(st.lists(st.integers(1, 9), min_size=n, max_size=n))
    items = draw(st.lists(st.text("xyz", min_size=1, max_size=2), min_size=n, max_size=n))
    times = draw(st.lists(st.floats(0, 100), min_size=n, max_size=n))
    buffer = io.BytesIO()
    pq.write_table(pa.table({"user_id": users, "item_id": items, "ts": times}), buffer)
    return buffer.getvalue()


@READERS
@given(data=st.data(), time_col=st.sampled_from([None, "ts"]))
def test_parquet(workdir, data, time_col):
    pytest.importorskip("pyarrow")
    content = data.draw(st.one_of(parquet_bytes(), valid_parquet(), mutated(valid_parquet()), st.binary(max_size=300)))
    check(workdir / "log.parquet", content, time_col=time_col)
