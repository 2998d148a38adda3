import gzip
import lzma

import numpy as np
import pytest

from seqrec.config import DataConfig
from seqrec.data.readers import DataError, read_interactions
from seqrec.data.split import leave_one_out

SASREC = "1 10\n1 11\n1 12\n2 11\n2 13\n1 14\n3 10\n"


@pytest.mark.parametrize("suffix, opener", [(".txt", open), (".txt.gz", gzip.open), (".txt.xz", lzma.open)])
def test_sasrec_text_keeps_file_order(tmp_path, suffix, opener):
    path = tmp_path / f"log{suffix}"
    with opener(path, "wt") as handle:
        handle.write(SASREC)
    inter = read_interactions(DataConfig(path=str(path)))
    assert inter.user_ids.tolist() == [1, 2, 3]
    assert inter.item_ids.tolist()[1:] == [10, 11, 12, 13, 14]
    raw = [inter.item_ids[inter.sequence(u)].tolist() for u in range(3)]
    assert raw == [[10, 11, 12, 14], [11, 13], [10]]


def test_csv_with_timestamps_sorts_stably_per_user(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("uid,iid,ts\nalice,b,5\nbob,a,1\nalice,a,3\nalice,c,5\nalice,d,1\n")
    inter = read_interactions(DataConfig(path=str(path), user_col="uid", item_col="iid", time_col="ts"))
    alice = inter.user_ids.tolist().index("alice")
    # sorted by time; the tie at t=5 keeps file order (b before c)
    assert inter.item_ids[inter.sequence(alice)].tolist() == ["d", "a", "b", "c"]


def test_csv_without_timestamps_keeps_file_order(tmp_path):
    path = tmp_path / "log.tsv"
    path.write_text("user_id\titem_id\nx\t3\ny\t1\nx\t2\n")
    inter = read_interactions(DataConfig(path=str(path)))
    assert inter.item_ids[inter.sequence(0)].tolist() == [3, 2]


def test_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": [5, 5, 6], "item_id": ["a", "b", "a"], "t": [2.0, 1.0, 0.0]}), path)
    inter = read_interactions(DataConfig(path=str(path), time_col="t"))
    assert inter.item_ids[inter.sequence(0)].tolist() == ["b", "a"]


def test_kcore(tmp_path):
    path = tmp_path / "log.txt"
    path.write_text("1 1\n1 2\n2 1\n2 2\n3 1\n3 3\n")
    inter = read_interactions(DataConfig(path=str(path), kcore=2))
    assert inter.user_ids.tolist() == [1, 2] and inter.item_ids.tolist()[1:] == [1, 2]


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "empty"),
        ("1 2\n3\n", ":2: expected 2 fields"),
        ("1 2\n1 x\n", ":2: field item"),
        ("1 2\n0 3\n", ":2: field user: id must be >= 1"),
        ("1 2\n-4 3\n", ":2: field user"),
        ("1 2\n1 2 3\n", ":2: expected 2 fields"),
    ],
)
def test_sasrec_errors_name_file_line_and_field(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as info:
        read_interactions(DataConfig(path=str(path)))
    assert "bad.txt" in str(info.value)


def test_bad_bytes_and_truncated_streams(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes(b"1 2\n1 \xe9\n")
    with pytest.raises(DataError, match="latin.txt:2: not valid UTF-8"):
        read_interactions(DataConfig(path=str(path)))
    full = lzma.compress(SASREC.encode() * 200)
    trunc = tmp_path / "t.txt.xz"
    trunc.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_interactions(DataConfig(path=str(trunc)))


def test_csv_errors(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user,item\n1,2\n")
    with pytest.raises(DataError, match="log.csv:1: missing column"):
        read_interactions(DataConfig(path=str(path)))
    path.write_text("user_id,item_id,ts\n1,2,3\n1,3,yesterday\n")
    with pytest.raises(DataError, match="log.csv:3: field ts: expected a numeric timestamp"):
        read_interactions(DataConfig(path=str(path), time_col="ts"))
    with pytest.raises(FileNotFoundError):
        read_interactions(DataConfig(path=str(tmp_path / "nope.csv")))


def test_skip_bad_lines_is_explicit_and_reported(tmp_path, caplog):
    path = tmp_path / "log.txt"
    path.write_text("1 2\nbroken\n1 3\n")
    inter = read_interactions(DataConfig(path=str(path), on_bad_line="skip"))
    assert len(inter.items) == 2
    assert "skipped 1 malformed line" in caplog.text


def test_split_short_users(tmp_path):
    path = tmp_path / "log.txt"
    path.write_text("1 1\n2 1\n2 2\n3 1\n3 2\n3 3\n4 4\n4 1\n4 2\n4 3\n")
    split = leave_one_out(read_interactions(DataConfig(path=str(path))))
    # 1 event: training only (no pair); 2 events: training only; >= 3: evaluated
    assert split.train_lengths.tolist() == [1, 2, 1, 2]
    assert split.eval_users.tolist() == [2, 3]
    assert split.targets("valid").tolist() == [2, 2] and split.targets("test").tolist() == [3, 3]
    assert split.history_lengths("test").tolist() == [2, 3]
    with pytest.raises(ValueError):
        split.targets("train")


def test_ml1m_is_read_as_published():
    path = "../shared/data/ml-1m/ml-1m.txt.xz"
    import os

    if not os.path.exists(path):
        pytest.skip("shared data not present")
    inter = read_interactions(DataConfig(path=path))
    assert (inter.num_users, inter.num_items, len(inter.items)) == (6040, 3416, 999611)
    assert np.array_equal(inter.item_ids[1:], np.arange(1, 3417))


def test_no_path_says_it_trains_on_the_synthetic_data(caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="seqrec.data.readers"):
        inter = read_interactions(DataConfig(synthetic_users=30, synthetic_items=20))
    assert inter.num_users == 30
    assert "built-in synthetic data, 30 users and 20 items" in caplog.text
