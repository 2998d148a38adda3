"""Bad inputs that used to get through or were reported without file, line or field (issue 18).

Library-level and fast: no training, no command line (``test_reliability_inputs.py`` runs the CLI).
Every error is checked for its message and for the ``path``, ``line`` and ``field`` it carries.
"""

from __future__ import annotations

import gzip
import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest

from seqrec.config import DataConfig
from seqrec.data.readers import read_interactions
from seqrec.errors import DataError

DIGITS = "7" * 100_000  # int() refuses over 4,300 digits, with a message that names no file or line


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def read_error(path: Path, **settings) -> DataError:
    with pytest.raises(DataError) as info:
        read_interactions(DataConfig(path=str(path), **settings))
    return info.value


def assert_names(error: DataError, path: Path, line: int | None, field: str | None) -> None:
    assert (error.path, error.line, error.field) == (str(path), line, field)
    where = f"{path}:{line}" if line is not None else str(path)
    assert str(error).startswith(where), str(error)
    if field is not None:
        assert field in str(error)


# ---------------------------------------------------------------------------------------------------
# 1. ids of 100,000 digits
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, content, line, field",
    [
        ("item.txt", f"1 10\n1 {DIGITS}\n", 2, "item"),
        ("user.txt", f"1 10\n{DIGITS} 3\n", 2, "user"),
        ("item.csv", f"user_id,item_id\n1,10\n1,{DIGITS}\n", 3, "item_id"),
        ("user.tsv", f"user_id\titem_id\n1\t10\n-{DIGITS}\t3\n", 3, "user_id"),
        ("item.txt.gz", gzip.compress(f"1 10\n1 {DIGITS}\n".encode()), 2, "item"),
    ],
)
def test_an_id_of_100000_digits_is_a_data_error_naming_file_line_field(tmp_path, name, content, line, field):
    path = write(tmp_path / name, content)
    error = read_error(path)
    assert_names(error, path, line, field)
    assert "int64" in str(error) and "7777777777..." in str(error)
    assert len(str(error)) < 300  # the id is not echoed in full


def test_sasrec_id_just_beyond_int64_says_int64(tmp_path):
    path = write(tmp_path / "edge.txt", f"1 10\n1 {2**63}\n")
    error = read_error(path)
    assert_names(error, path, 2, "item")
    assert f"id {2**63} does not fit in 64 bits (ids are int64: at most {2**63 - 1}" in str(error)
    assert read_interactions(DataConfig(path=str(write(tmp_path / "max.txt", f"1 {2**63 - 1}\n")))).item_ids[1] == 2**63 - 1


def test_csv_integer_ids_beyond_int64_are_read_as_text_with_a_warning(tmp_path, caplog):
    path = write(tmp_path / "big.csv", f"user_id,item_id\n1,07\n1,{'9' * 25}\n")
    with caplog.at_level(logging.WARNING, logger="seqrec.data.readers"):
        inter = read_interactions(DataConfig(path=str(path)))
    assert inter.item_ids.tolist()[1:] == ["07", "9" * 25]  # text ids: "07" keeps its zero
    assert f"{path}: field item_id: id {'9' * 25} does not fit in int64; the column is read as text ids" in caplog.text


@pytest.mark.parametrize(
    "line, field",
    [
        (f"[[1, {DIGITS}, null, {{}}, 0, 5]]", "record 0 item_id"),
        (f"[[{DIGITS}, 2, null, {{}}, 0, 5]]", "record 0 user_id"),
        (f"[[-{DIGITS}, 2, null, {{}}, 0, 5]]", "record 0 user_id"),
        (f"[[1, 2, null, {{}}, 0, {DIGITS}]]", "record 0 timestamp"),
        (f'[[1, null, {{"103": {DIGITS}}}, null, null, 1]]', "record 0 user_feature['103']"),
        (f'[[1, null, {{"106": [1, {DIGITS}]}}, null, null, 1]]', "record 0 user_feature['106']"),
    ],
)
def test_taac_ints_of_100000_digits_name_their_field(tmp_path, line, field):
    from seqrec.data.taac.reader import read_taac
    from tests.test_taac import GOOD_LINE, _write_tiny

    directory = _write_tiny(tmp_path / "tiny")
    seq = write(directory / "seq.jsonl", json.dumps(GOOD_LINE) + "\n" + line + "\n")
    with pytest.raises(DataError) as info:
        read_taac(directory, progress=False)
    assert_names(info.value, seq, 2, field)
    assert "7" * 19 + "... (100,000 digits, beyond int64)" in str(info.value)


def test_taac_long_int_in_a_broken_line_reports_the_json_error(tmp_path):
    from seqrec.data.taac.reader import read_taac
    from tests.test_taac import GOOD_LINE, _write_tiny

    directory = _write_tiny(tmp_path / "tiny")
    seq = write(directory / "seq.jsonl", json.dumps(GOOD_LINE) + "\n" + f"[[1, {DIGITS}, null, {{}}, 0, 5]" + "\n")
    with pytest.raises(DataError) as info:
        read_taac(directory, progress=False)
    assert_names(info.value, seq, 2, "line")
    assert "not valid JSON, possibly truncated (Expecting ',' delimiter" in str(info.value)


def test_taac_item_features_and_indexer_with_huge_ints(tmp_path):
    from seqrec.data.taac.reader import read_taac
    from tests.test_taac import _write_tiny

    directory = _write_tiny(tmp_path / "tiny")
    items = write(directory / "item_feat_dict.json", '{\n"1": {"100": 1},\n"2": {"100": ' + DIGITS + "}\n}")
    with pytest.raises(DataError) as info:
        read_taac(directory, progress=False)
    assert_names(info.value, items, 3, "item '2'['100']")
    assert "(100,000 digits, beyond int64)" in str(info.value)
    directory = _write_tiny(tmp_path / "tiny2")
    indexer = write(directory / "indexer.pkl", pickle.dumps({"u": {"alice": 10**5000}, "i": {"9001": 1, 9002: 2, "9003": 3}}))
    with pytest.raises(DataError) as info:
        read_taac(directory, progress=False)
    assert_names(info.value, indexer, None, "['u']['alice']")
    assert "expected an int re-id, got int of 16,610 bits, beyond int64" in str(info.value)


def test_item_lookup_of_a_100000_digit_id_is_unknown_not_a_crash():
    from seqrec.retrieval.ids import ItemLookup

    ids, unknown = ItemLookup(np.array([0, 5, 7], dtype=np.int64)).lookup(["7", DIGITS, 5])
    assert ids.tolist() == [2, 1] and unknown == [DIGITS]
    ids, unknown = ItemLookup(np.array(["", "a", "7"], dtype=object)).lookup([7, DIGITS])
    assert ids.tolist() == [2] and unknown == [DIGITS]


# ---------------------------------------------------------------------------------------------------
# 2. NUL and other control characters in ids
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, content, line, field",
    [
        ("nul.csv", "user_id,item_id\n1,2\n1,1\x001\n", 3, "item_id"),
        ("nul_quoted.csv", 'user_id,item_id\n1,2\n"\x00",3\n', 3, "user_id"),
        ("nul.tsv", "user_id\titem_id\n1\t2\n7\t\x00\n", 3, "item_id"),
        ("nul_bare.csv", "1,2\n1,2\x00\n", 2, "column 1"),
    ],
)
def test_a_nul_byte_in_a_csv_id_is_refused(tmp_path, name, content, line, field):
    path = write(tmp_path / name, content)
    settings = {"header": False, "user_col": 0, "item_col": 1} if name.startswith("nul_bare") else {}
    error = read_error(path, **settings)
    assert_names(error, path, line, field)
    assert "id contains the control character '\\x00'" in str(error)


def test_parquet_text_ids_get_the_csv_checks_and_uint64_names_the_row(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "log.parquet"
    cases = [
        ({"user_id": ["a", "b\x00c", "d"], "item_id": [1, 2, 3]}, 2, "user_id", "id contains a control character"),
        ({"user_id": ["a", "b", "c"], "item_id": ["x", "y", " "]}, 3, "item_id", "empty id"),
        ({"user_id": ["a", "b"], "item_id": ["x", "y" * 1001]}, 2, "item_id", "id longer than 1,000 characters"),
        ({"user_id": ["a", "b"], "item_id": pa.array([1, 2**63], pa.uint64())}, 2, "item_id",
         f"id {2**63} does not fit in int64"),
    ]
    for columns, row, field, text in cases:
        pq.write_table(pa.table(columns), path)
        error = read_error(path)
        assert (error.path, error.line, error.field) == (str(path), row, field)
        assert str(error).startswith(f"{path}: row {row}: column {field!r}: {text}"), str(error)
    pq.write_table(pa.table({"user_id": pa.array(["a", "b"]).dictionary_encode(), "item_id": [1, 2]}), path)
    assert read_interactions(DataConfig(path=str(path))).user_ids.tolist() == ["a", "b"]


# ---------------------------------------------------------------------------------------------------
# 3. TAAC offsets that point into the middle of lines
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stem", ["seq", "predict_seq"])
def test_taac_offsets_into_the_middle_of_a_line_name_the_entry(tmp_path, stem):
    from seqrec.data.taac.reader import read_seq_offsets

    seq = write(tmp_path / f"{stem}.jsonl", "[[1]]\n[[2, 3]]\n[[4]]")  # no newline after the last line
    pkl = tmp_path / f"{stem}_offsets.pkl"
    pkl.write_bytes(pickle.dumps([0, 6, 15]))
    assert read_seq_offsets(pkl, seq).tolist() == [0, 6, 15]
    pkl.write_bytes(pickle.dumps([0, 6, 9]))
    with pytest.raises(DataError) as info:
        read_seq_offsets(pkl, seq)
    assert_names(info.value, pkl, None, "offsets[2]")
    assert str(info.value) == f"{pkl}: offsets[2]: byte 9 is inside line 2 of {seq}, not the start of line 3"
    pkl.write_bytes(pickle.dumps([0, 6, 20]))
    with pytest.raises(DataError, match=r"offsets\[2\]: byte 20 is past the end of .* \(20 bytes\)"):
        read_seq_offsets(pkl, seq)


# ---------------------------------------------------------------------------------------------------
# 4. The audit: errors that named the file or line only in their text, or not at all
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, content, settings, line, field, text",
    [
        ("f3.txt", "1 2\n1 2 3\n", {}, 2, None, "expected 2 fields 'user item', got 3"),
        ("zero.txt", "1 2\n0 2\n", {}, 2, "user", "id must be >= 1"),
        ("utf.txt", b"1 2\n1 \xff\n", {}, 2, None, "not valid UTF-8 text"),
        ("rows.csv", "user_id,item_id\n1,2\n1,2,3\n", {}, 3, None, "expected 2 fields, got 3"),
        ("cols.csv", "user,item_id\n1,2\n", {}, 1, "user_id", "missing column(s) 'user_id'"),
        ("twice.csv", "user_id,item_id,user_id\n1,2,3\n", {}, 1, "user_id", "column(s) 'user_id' appear more"),
        ("ts.csv", "user_id,item_id,ts\n1,2,soon\n", {"time_col": "ts"}, 2, "ts", "expected a numeric timestamp"),
        ("pos.csv", "1,2\n", {"header": False, "user_col": 0, "item_col": 5}, 1, "data.item_col", "out of range"),
        ("big.csv", "user_id,item_id\n1," + "x" * 200_000 + "\n", {}, 2, None, "malformed CSV row"),
        ("empty.txt", "\n\n", {}, None, None, "no interactions"),
        ("sas.txt", "1 2\n", {"time_col": "ts"}, None, "data.time_col", "SASRec text has no timestamp column"),
    ],
)
def test_reader_errors_carry_path_line_and_field(tmp_path, name, content, settings, line, field, text):
    path = write(tmp_path / name, content)
    error = read_error(path, **settings)
    assert_names(error, path, line, field)
    assert text in str(error)


def test_truncated_stream_names_the_line_after_the_last_good_one(tmp_path):
    whole = gzip.compress("".join(f"{u} {u + 1}\n" for u in range(1, 2000)).encode())
    path = write(tmp_path / "cut.txt.gz", whole[: len(whole) // 2])
    error = read_error(path)
    assert error.path == str(path) and error.line is not None and error.line > 1
    assert f"after line {error.line - 1}" in str(error)


def test_seqrec_directory_id_file_names_the_right_line(tmp_path):
    from seqrec.data.dataset import Interactions
    from seqrec.data.storage import load_interactions, save_interactions

    mixed = np.array([1, "u", 3], dtype=object)  # ints and strings: stored as JSON lines
    inter = Interactions(offsets=np.array([0, 1, 2, 3]), items=np.array([1, 2, 1]), user_ids=mixed,
                         item_ids=np.array([0, 5, 6]))
    directory = save_interactions(inter, tmp_path / "store")
    ids = directory / "user_ids.jsonl"
    lines = ids.read_text().splitlines()
    ids.write_text(lines[0] + "\n{broken\n")
    with pytest.raises(DataError) as info:
        load_interactions(directory)
    assert_names(info.value, ids, 2, None)  # was reported as line 3
    assert "not valid JSON" in str(info.value)


def test_other_file_readers_name_file_and_line(tmp_path):
    from seqrec.data.safe_pickle import safe_load_pickle
    from seqrec.report import read_run
    from seqrec.retrieval.ids import read_id_lines

    users = write(tmp_path / "users.txt", b"u1\nu2\nJos\xe9\n")
    with pytest.raises(DataError) as info:
        read_id_lines(users, file_kind="users", id_kind="user")
    assert_names(info.value, users, 3, None)
    run = tmp_path / "run"
    run.mkdir()
    metrics = write(run / "metrics.jsonl", '{"epoch": 1}\n{oops\n{"epoch": 3}\n')
    with pytest.raises(DataError) as info:
        read_run(run)
    assert_names(info.value, metrics, 2, None)
    bad = write(tmp_path / "bad.pkl", b"\x80\x05garbage")
    with pytest.raises(DataError) as info:
        safe_load_pickle(bad)
    assert_names(info.value, bad, None, None)
    assert "not a valid pickle" in str(info.value)


def test_beauty_attribute_file_with_a_huge_int_names_the_item(tmp_path):
    from seqrec.data.side_features import attribute_items

    path = write(tmp_path / "attrs.json", '{"5": [1, 2],\n"6": [3, ' + DIGITS + "]}")
    with pytest.raises(DataError) as info:
        attribute_items(path, np.array([0, 5, 6]))
    assert_names(info.value, path, None, "6")
    assert "item 6: expected a list of attribute ids >= 1 (int64)" in str(info.value)
    assert "(100,000 digits, beyond int64)" in str(info.value)
    path = write(tmp_path / "big.json", '{"5": [1, ' + str(2**63) + "]}")  # int() reads it; int64 does not
    with pytest.raises(DataError, match="item 5: expected a list of attribute ids >= 1 \\(int64\\)"):
        attribute_items(path, np.array([0, 5]))
    features, matched = attribute_items(write(tmp_path / "ok.json", '{"5": [1, 2]}'), np.array([0, 5, 6]))
    assert matched.tolist() == [False, True, False]
