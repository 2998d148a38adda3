"""Bad input gets a clear error: every case names the file (and line/field where there is one).

Each case goes through the library call and, where a user would meet it, through ``seqrec.cli.main``
(exit code 2, ``seqrec <cmd>: error: ...`` naming the location, nothing that existed overwritten).
The table in docs/reliability.md lists every case with the message the user sees.
"""

from __future__ import annotations

import bz2
import gzip
import json
import logging
import lzma
import os
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from seqrec.cli import main
from seqrec.config import ConfigError, DataConfig, load_config
from seqrec.data.readers import DataError, read_interactions
from seqrec.data.split import leave_one_out
from seqrec.retrieval.recommend import load_model, recommend_batches, user_rows
from seqrec.train.checkpoint import SCHEMA_VERSION, CheckpointError, load_checkpoint
from seqrec.train.loop import RunDirError, train
from tests.conftest import tiny_config

# A training run small enough to finish in a couple of seconds (only reached by the cases that train).
FAST = [
    "--quiet", "--set", "model.maxlen=10", "--set", "model.hidden_dim=8", "--set", "model.num_blocks=1",
    "--set", "train.epochs=1", "--set", "train.batch_size=64", "--set", "train.num_threads=1",
    "--set", "data.synthetic_users=120", "--set", "data.synthetic_items=30",
]


def data_error(path: Path, **config) -> str:
    """Reads ``path`` expecting a DataError that names the file; returns the message."""
    with pytest.raises(DataError) as info:
        read_interactions(DataConfig(path=str(path), **config))
    message = str(info.value)
    assert str(path) in message, message
    return message


def cli(argv: list[str], capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def cli_error(argv: list[str], capsys, command: str = "train") -> str:
    """Runs the CLI expecting exit code 2 and a one-line ``seqrec <cmd>: error: ...`` (no traceback)."""
    code, err = cli(argv, capsys)
    assert code == 2, err
    assert err.startswith(f"seqrec {command}: error: "), err
    assert "Traceback" not in err
    return err


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


# ---------------------------------------------------------------------------------------------------
# Readers: empty files, columns, malformed lines
# ---------------------------------------------------------------------------------------------------

SASREC = "1 10\n1 11\n1 12\n2 11\n2 13\n2 10\n3 10\n3 12\n3 14\n"
CSV = "user_id,item_id,ts\nu1,a,3\nu1,b,1\nu2,a,2\nu2,c,5\nu2,b,4\n"


@pytest.mark.parametrize(
    "name, content, config, expected",
    [
        ("empty.txt", "", {}, ": no interactions (empty file"),
        ("blank.txt", "\n  \n\t\n", {}, ": no interactions (empty file or blank lines only)"),
        ("empty.csv", "", {}, ": empty file (expected a header row)"),
        ("header_only.csv", "user_id,item_id\n", {}, ": no interactions (header only)"),
        ("header_only.tsv", "user_id\titem_id\n\n", {}, ": no interactions (header only)"),
    ],
)
def test_empty_files(tmp_path, capsys, name, content, config, expected):
    path = write(tmp_path / name, content)
    assert expected in data_error(path, **config)
    err = cli_error(["train", "--data", str(path), "--out", str(tmp_path / "run"), *FAST], capsys)
    assert str(path) in err and expected in err
    assert not (tmp_path / "run").exists(), "a failed start must not create the run directory"


@pytest.mark.parametrize(
    "name, content, config, expected",
    [
        ("missing.csv", "user_id,ts\n1,2\n", {}, ":1: missing column(s) 'item_id'; header has ['user_id', 'ts']"),
        ("misnamed.csv", "user,item\n1,2\n", {}, ":1: missing column(s) 'user_id', 'item_id'"),
        ("wrong_case.csv", "User_Id,Item_Id\n1,2\n", {}, ":1: missing column(s) 'user_id', 'item_id'"),
        ("no_time.csv", "user_id,item_id\n1,2\n", {"time_col": "ts"}, ":1: missing column(s) 'ts'"),
        # a TSV file named .csv: the header is one field, so the columns are reported missing
        ("tabs.csv", "user_id\titem_id\n1\t2\n", {}, "header has ['user_id\\titem_id']"),
        ("twice.csv", "user_id,item_id,user_id\n1,2,3\n", {}, ":1: column(s) 'user_id' appear more than once"),
    ],
)
def test_missing_or_misnamed_columns(tmp_path, capsys, name, content, config, expected):
    path = write(tmp_path / name, content)
    assert expected in data_error(path, **config)
    sets = [a for key, value in config.items() for a in ("--set", f"data.{key}={value}")]
    err = cli_error(["train", "--data", str(path), "--out", str(tmp_path / "run"), *sets, *FAST], capsys)
    assert f"{path}:1: " in err


def test_missing_parquet_column(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user": [1, 2], "item_id": [3, 4]}), path)
    assert "missing column(s) 'user_id'" in data_error(path)


@pytest.mark.parametrize(
    "content, expected",
    [
        ("1 10\n2\n", ":2: expected 2 fields 'user item', got 1"),
        ("1 10\n2 11 12\n", ":2: expected 2 fields 'user item', got 3"),
        ("1 10\n2,11\n", ":2: expected 2 fields 'user item', got 1"),
        ("1 10\nalice 11\n", ":2: field user: expected a positive integer id, got 'alice'"),
        ("1 10\n2 pizza\n", ":2: field item: expected a positive integer id, got 'pizza'"),
        ("1 10\n2 1.5\n", ":2: field item: expected a positive integer id, got '1.5'"),
        ("1 10\n2 1e3\n", ":2: field item: expected a positive integer id, got '1e3'"),
        ("1 10\n1_0 11\n", ":2: field user: expected a positive integer id, got '1_0'"),
        ("1 10\n\u0661 11\n", ":2: field user: expected a positive integer id, got '\u0661'"),  # Arabic-Indic 1
        ("1 10\n2\x00 11\n", ":2: field user: expected a positive integer id, got '2\\x00'"),
        ("1 10\n99999999999999999999999 11\n", ":2: field user: id 99999999999999999999999 does not fit in 64 bits"),
    ],
)
def test_sasrec_malformed_lines(tmp_path, capsys, content, expected):
    path = write(tmp_path / "log.txt", content)
    assert expected in data_error(path)
    err = cli_error(["train", "--data", str(path), "--out", str(tmp_path / "run"), *FAST], capsys)
    assert f"{path}:2: " in err


@pytest.mark.parametrize(
    "content, expected",
    [
        ("0 10\n", ":1: field user: id must be >= 1 (0 is reserved for padding), got 0"),
        ("1 0\n", ":1: field item: id must be >= 1 (0 is reserved for padding), got 0"),
        ("-3 10\n", ":1: field user: id must be >= 1 (0 is reserved for padding), got -3"),
        ("1 -7\n", ":1: field item: id must be >= 1 (0 is reserved for padding), got -7"),
    ],
)
def test_sasrec_zero_and_negative_ids(tmp_path, capsys, content, expected):
    path = write(tmp_path / "log.txt", SASREC + content)
    message = data_error(path)
    assert f"{path}:10{expected[2:]}" in message
    err = cli_error(["train", "--data", str(path), "--out", str(tmp_path / "run"), *FAST], capsys)
    assert f"{path}:10: field" in err


@pytest.mark.parametrize(
    "content, expected",
    [
        ("user_id,item_id\n1,2\n1,2,3\n", ":3: expected 2 fields, got 3"),
        ("user_id,item_id\n1,2\n1\n", ":3: expected 2 fields, got 1"),
        ("user_id,item_id\n1,2\n,3\n", ":3: field user_id: empty id"),
        ("user_id,item_id\n1,2\n4, \n", ":3: field item_id: empty id"),
        ("user_id,item_id\n1,2\n" + "x" * 200_000 + ",3\n", ":3: malformed CSV row (field larger than field limit"),
    ],
)
def test_csv_malformed_lines(tmp_path, capsys, content, expected):
    path = write(tmp_path / "log.csv", content)
    assert expected in data_error(path)
    err = cli_error(["train", "--data", str(path), "--out", str(tmp_path / "run"), *FAST], capsys)
    assert f"{path}:3: " in err


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("stray.txt", b"1 10\n1 1\xff1\n", ":2: not valid UTF-8 text (invalid start byte at byte 3)"),
        ("latin1.csv", "user_id,item_id\nJosé,caf\u00e9\n".encode("latin-1"), ":2: not valid UTF-8 text"),
        ("utf16.txt", "1 10\n2 11\n".encode("utf-16"), ":1: not valid UTF-8 text (invalid start byte at byte 0)"),
        ("utf16.csv", "user_id,item_id\n1,2\n".encode("utf-16"), ":1: not valid UTF-8 text"),
        ("binary.txt", bytes(range(256)), ":1: "),
    ],
)
def test_wrong_encoding_and_stray_bytes(tmp_path, capsys, name, content, expected):
    path = write(tmp_path / name, content)
    assert expected in data_error(path)
    err = cli_error(["train", "--data", str(path), "--out", str(tmp_path / "run"), *FAST], capsys)
    assert f"{path}:" in err


def test_utf8_bom_and_blank_lines_are_accepted(tmp_path):
    # Documented leniency: a leading UTF-8 byte-order mark (spreadsheet export) and blank lines carry no event.
    csv_path = write(tmp_path / "bom.csv", "\ufeffuser_id,item_id\n1,2\n\n1,3\n")
    assert read_interactions(DataConfig(path=str(csv_path))).items.tolist() == [1, 2]
    txt = write(tmp_path / "bom.txt", "\ufeff1 5\n1 6\n\n")
    assert read_interactions(DataConfig(path=str(txt))).item_ids.tolist()[1:] == [5, 6]


def test_skip_mode_reports_what_it_skipped(tmp_path, caplog):
    path = write(tmp_path / "log.txt", "1 10\n1 x\n1 11\n0 3\n2 1 1\n")
    with caplog.at_level(logging.WARNING):
        inter = read_interactions(DataConfig(path=str(path), on_bad_line="skip"))
    assert len(inter.items) == 2
    assert f"{path}: skipped 3 malformed line(s)" in caplog.text


# ---------------------------------------------------------------------------------------------------
# Short users and duplicate events: documented behaviour, not errors
# ---------------------------------------------------------------------------------------------------


def test_users_with_one_or_two_events_are_training_only(tmp_path):
    path = write(tmp_path / "log.txt", "1 10\n2 10\n2 11\n3 10\n3 11\n3 12\n")
    split = leave_one_out(read_interactions(DataConfig(path=str(path))))
    assert split.train_lengths.tolist() == [1, 2, 1]  # 1 event: no pair; 2 events: one pair; 3: training prefix
    assert split.eval_users.tolist() == [2]  # only the user with >= 3 events is evaluated


def test_data_where_nobody_has_a_training_pair_is_refused(tmp_path, capsys):
    path = write(tmp_path / "log.txt", "1 10\n2 11\n3 12\n")
    with pytest.raises(ValueError, match="no user has two or more training interactions"):
        train(tiny_config(data={"path": str(path)}), tmp_path / "lib", progress=False, command=["t"])
    err = cli_error(["train", "--data", str(path), "--out", str(tmp_path / "run"), *FAST], capsys)
    assert "nothing to train on" in err
    assert not (tmp_path / "run").exists()


def test_duplicate_events_are_kept_as_repeat_consumption(tmp_path, caplog):
    path = write(tmp_path / "log.txt", "1 10\n1 10\n1 11\n1 10\n")
    with caplog.at_level(logging.INFO, logger="seqrec.data.readers"):
        inter = read_interactions(DataConfig(path=str(path)))
    assert inter.item_ids[inter.sequence(0)].tolist() == [10, 10, 11, 10]
    assert "2 repeated (user, item) events kept as repeat consumption" in caplog.text


# ---------------------------------------------------------------------------------------------------
# Timestamps
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("yesterday", "field ts: expected a numeric timestamp, got 'yesterday'"),
        ("2024-01-01", "field ts: expected a numeric timestamp, got '2024-01-01'"),
        ("", "field ts: expected a numeric timestamp, got ''"),
        ("nan", "field ts: timestamp must be finite, got 'nan'"),
        ("NaN", "field ts: timestamp must be finite, got 'NaN'"),
        ("inf", "field ts: timestamp must be finite, got 'inf'"),
        ("-Infinity", "field ts: timestamp must be finite, got '-Infinity'"),
        ("1e400", "field ts: timestamp must be finite, got '1e400'"),
    ],
)
def test_garbage_timestamps(tmp_path, capsys, value, expected):
    path = write(tmp_path / "log.csv", f"user_id,item_id,ts\n1,2,5\n1,3,{value}\n")
    assert f"{path}:3: {expected}" in data_error(path, time_col="ts")
    err = cli_error(["train", "--data", str(path), "--set", "data.time_col=ts", "--out", str(tmp_path / "run"), *FAST], capsys)
    assert f"{path}:3: field ts" in err


def test_parquet_timestamps_and_ids(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": [1, 1], "item_id": [2, 3], "ts": [1.0, float("nan")]}), path)
    assert "row 2: column 'ts': timestamp is not finite" in data_error(path, time_col="ts")
    pq.write_table(pa.table({"user_id": [1, 1], "item_id": [2, 3], "ts": ["a", "b"]}), path)
    assert "column 'ts': not numeric timestamps" in data_error(path, time_col="ts")
    pq.write_table(pa.table({"user_id": [1, None], "item_id": [2, 3]}), path)
    assert "row 2: column 'user_id': null id (1 null id(s) in the column)" in data_error(path)
    pq.write_table(pa.table({"user_id": [1.5, 2.0], "item_id": [2, 3]}), path)
    assert "column 'user_id': ids must be integers or strings, got type double" in data_error(path)
    pq.write_table(pa.table({"user_id": pa.array([], pa.int64()), "item_id": pa.array([], pa.int64())}), path)
    assert "no interactions (0 rows)" in data_error(path)
    write(path, b"PAR1 this is not parquet PAR1")
    assert "not a readable Parquet file" in data_error(path)


def test_parquet_with_invalid_utf8_in_a_string_column(tmp_path):
    # Found by the reader fuzzing: pyarrow reads such a file, then fails in to_numpy with a bare
    # ArrowException ("Wrapping ... failed") unless the table is validated first.
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": [1, 2], "item_id": ["qqqq", "b"]}), path, compression="none",
                   use_dictionary=False, write_statistics=False)
    raw = path.read_bytes()
    assert raw.count(b"qqqq") == 1
    path.write_bytes(raw.replace(b"qqqq", b"q\xffqq"))
    assert "not a readable Parquet file (Column 1: In chunk 0: Invalid: Invalid UTF8 sequence" in data_error(path)


def test_sasrec_text_with_a_time_column_is_refused(tmp_path):
    path = write(tmp_path / "log.txt", SASREC)
    assert "SASRec text has no timestamp column; unset data.time_col" in data_error(path, time_col="ts")


def test_kcore_that_removes_everything_names_the_file(tmp_path):
    path = write(tmp_path / "log.txt", SASREC)
    assert "5-core filtering removed every interaction (data.kcore=5)" in data_error(path, kcore=5)


# ---------------------------------------------------------------------------------------------------
# Truncated files and compressed streams
# ---------------------------------------------------------------------------------------------------


def test_plain_files_truncated_mid_line(tmp_path, capsys):
    cut = SASREC.index("3 14") + 2  # the last line loses its item
    path = write(tmp_path / "log.txt", SASREC[:cut])
    assert ":9: expected 2 fields 'user item', got 1" in data_error(path)
    csv_path = write(tmp_path / "log.csv", CSV[: CSV.rindex(",")])  # last row loses its timestamp
    assert ":6: expected 3 fields, got 2" in data_error(csv_path, time_col="ts")
    err = cli_error(["train", "--data", str(path), "--out", str(tmp_path / "run"), *FAST], capsys)
    assert f"{path}:9: expected 2 fields" in err


@pytest.mark.parametrize("suffix, compress", [(".txt.gz", gzip.compress), (".txt.xz", lzma.compress), (".txt.bz2", bz2.compress)])
@pytest.mark.parametrize("fraction", [0.3, 0.9])
def test_compressed_stream_truncated(tmp_path, capsys, suffix, compress, fraction):
    payload = compress((SASREC * 400).encode())
    path = write(tmp_path / f"log{suffix}", payload[: int(len(payload) * fraction)])
    assert "compressed stream is truncated or corrupt" in data_error(path)
    err = cli_error(["train", "--data", str(path), "--out", str(tmp_path / "run"), *FAST], capsys)
    assert re.search(re.escape(f"{path}: compressed stream is truncated or corrupt ") + r"(after line \d+|before the first line)", err)


def test_corrupt_and_misnamed_compressed_files(tmp_path):
    payload = bytearray(gzip.compress((SASREC * 50).encode()))
    payload[len(payload) // 2] ^= 0xFF  # a flipped byte inside the deflate stream
    path = write(tmp_path / "flipped.txt.gz", bytes(payload))
    assert "compressed stream is truncated or corrupt" in data_error(path)
    path = write(tmp_path / "plain.txt.gz", SASREC)  # not gzip at all
    assert ": compressed stream is truncated or corrupt before the first line (Not a gzipped file" in data_error(path)
    path = write(tmp_path / "plain.txt.xz", SASREC)
    assert ": compressed stream is truncated or corrupt before the first line" in data_error(path)
    path = write(tmp_path / "trailing.txt.gz", gzip.compress(SASREC.encode()) + b"garbage!")
    assert "compressed stream is truncated or corrupt" in data_error(path)
    path = write(tmp_path / "csv.csv.gz", gzip.compress(CSV.encode())[:-6])
    assert "truncated or corrupt" in data_error(path, time_col="ts")


# ---------------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------------


def test_directory_passed_as_data_file(tmp_path, capsys):
    (tmp_path / "logs").mkdir()
    # auto: a directory may be a saved seqrec interactions directory, and this one is not
    assert "not a seqrec interactions directory" in data_error(tmp_path / "logs")
    assert "is a directory; expected an interaction log file" in data_error(tmp_path / "logs", format="sasrec")
    err = cli_error(["train", "--data", str(tmp_path / "logs"), "--out", str(tmp_path / "run"), *FAST], capsys)
    assert f"{tmp_path / 'logs'}: not a seqrec interactions directory" in err


def test_nonexistent_data_path(tmp_path, capsys):
    missing = tmp_path / "nope" / "log.txt"
    with pytest.raises(FileNotFoundError, match=f"data file not found: {missing}"):
        read_interactions(DataConfig(path=str(missing)))
    err = cli_error(["train", "--data", str(missing), "--out", str(tmp_path / "run"), *FAST], capsys)
    assert f"data file not found: {missing}" in err


def test_data_path_is_taken_verbatim_not_as_yaml(tmp_path, capsys, monkeypatch):
    # "null" used to become None (= the synthetic data!), "123" an int and "a: b" a mapping.
    monkeypatch.chdir(tmp_path)
    for name in ("null", "123", "a: b", "[x"):
        err = cli_error(["train", "--data", name, "--out", str(tmp_path / "run"), *FAST], capsys)
        assert f"data file not found: {name}" in err


# ---------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("modle:\n  maxlen: 5\n", "unknown section(s) modle; known: data, model, loss, train, eval"),
        ("model:\n  max_len: 5\n", "model: unknown key(s) max_len; known: dropout, hidden_dim"),
        ("1: 2\n", "unknown section(s) 1"),
        ("model:\n  hidden_dim: big\n", "model.hidden_dim: expected an integer, got str 'big'"),
        ("model:\n  hidden_dim: 1.5\n", "model.hidden_dim: expected an integer, got float 1.5"),
        ("model:\n  norm_first: 1\n", "model.norm_first: expected true/false, got int 1"),
        ("train:\n  lr: 1e-3\n", "train.lr: expected a number, got str '1e-3' (YAML reads 1e-3 as text; write 1.0e-3)"),
        ("train:\n  lr: .nan\n", "train.lr: expected a finite number, got nan"),
        ("train:\n  max_minutes: .inf\n", "train.max_minutes: expected a finite number, got inf"),
        ("train:\n  betas: 0.9\n", "train.betas: expected a list, got float 0.9"),
        ("train:\n  betas: [0.9]\n", "train.betas: expected 2 values, got 1"),
        ("data:\n  path: 5\n", "data.path: expected a string, got int 5"),
        ("loss:\n  name: bce\n  mode: full\n", "apply to infonce only"),
        ("model:\n  hidden_dim: 10\n  num_heads: 3\n", "model.num_heads (3) must divide model.hidden_dim (10)"),
        ("eval:\n  ks: [1, 5]\n  select_metric: ndcg@10\n", "select_metric must be mrr or ndcg@K/hr@K with K in eval.ks"),
        ("loss:\n  temperature: 0\n", "loss.temperature must be > 0, got 0.0"),
        ("data:\n  on_bad_line: ignore\n", "data.on_bad_line must be one of error, skip; got 'ignore'"),
        ("- model\n- train\n", "expected a mapping of sections at the top level, got list"),
        ("just a string\n", "expected a mapping of sections at the top level, got str"),
        ("model: []\n", "section model must be a mapping, got list []"),
        ("model: 0\n", "section model must be a mapping, got int 0"),
        ("model:\n  maxlen: 5\n  maxlen: 6\n", ":3: key 'maxlen' appears more than once in the same mapping"),
        ("model: [1, 2\n", "invalid YAML"),
    ],
)
def test_bad_config_files_name_the_file(tmp_path, capsys, text, expected):
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert expected in str(info.value) and str(path) in str(info.value)
    err = cli_error(["train", "--config", str(path), "--out", str(tmp_path / "run"), "--quiet"], capsys)
    assert f"{path}" in err and expected in err
    assert not (tmp_path / "run").exists()


def test_config_file_problems(tmp_path, capsys):
    missing = tmp_path / "missing.yaml"
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(missing)
    err = cli_error(["train", "--config", str(missing), "--out", str(tmp_path / "run")], capsys)
    assert f"config file not found: {missing}" in err
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    latin = write(tmp_path / "latin.yaml", "data:\n  path: caf\u00e9.txt\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin.yaml: not UTF-8 text"):
        load_config(latin)
    empty = write(tmp_path / "empty.yaml", "")
    assert load_config(empty) == load_config(None)  # an empty file is an empty mapping: all defaults


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model.maxlen", "--set expects section.key=value"),
        ("maxlen=5", "--set expects section.key=value"),
        ("model.maxlen=[1", "cannot parse value"),
        ("model.maxlen=0", "model.maxlen must be >= 1, got 0"),
        ("train.seed=true", "train.seed: expected an integer, got bool True"),
    ],
)
def test_bad_overrides(tmp_path, capsys, override, expected):
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[")):
        load_config(None, [override])
    err = cli_error(["train", "--set", override, "--out", str(tmp_path / "run")], capsys)
    assert expected in err


def test_override_error_names_file_and_overrides(tmp_path):
    path = write(tmp_path / "c.yaml", "model:\n  maxlen: 5\n")
    with pytest.raises(ConfigError, match=r"c.yaml \(with --set overrides\): model.maxlen must be >= 1"):
        load_config(path, ["model.maxlen=0"])


# ---------------------------------------------------------------------------------------------------
# Run directories
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny finished run (synthetic users u0..u119) used by the run-directory and inference cases."""
    out = tmp_path_factory.mktemp("trained") / "run"
    assert main(["train", "--out", str(out), *FAST]) == 0
    return out


def test_unwritable_out(tmp_path, capsys):
    blocker = write(tmp_path / "file.txt", "I am a file")
    out = blocker / "run"  # a directory under a regular file can never be created, even by root
    with pytest.raises(RunDirError, match=f"run directory {out} is not writable"):
        train(tiny_config(), out, progress=False, command=["t"])
    err = cli_error(["train", "--out", str(out), *FAST], capsys)
    assert f"run directory {out} is not writable" in err
    assert blocker.read_text() == "I am a file"


def test_out_is_a_file(tmp_path, capsys):
    out = write(tmp_path / "results.csv", "precious")
    err = cli_error(["train", "--out", str(out), *FAST], capsys)
    assert f"{out} exists and is not a directory" in err
    assert out.read_text() == "precious"


def test_read_only_out(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: a read-only directory is still writable (see test_unwritable_out)")
        err = cli_error(["train", "--out", str(locked / "run"), *FAST], capsys)
        assert "is not writable" in err
    finally:
        locked.chmod(0o700)


def test_existing_run_is_never_overwritten(trained, capsys):
    before = snapshot(trained)
    err = cli_error(["train", "--out", str(trained), *FAST], capsys)
    assert f"{trained} already holds a run; pass --resume to continue it or --overwrite to replace it" in err
    err = cli_error(["train", "--out", str(trained), "--resume", "--overwrite", *FAST], capsys)
    assert "--resume and --overwrite contradict each other" in err
    with pytest.raises(RunDirError, match="contradict"):
        train(tiny_config(), trained, resume=True, overwrite=True, progress=False)
    assert snapshot(trained) == before


def test_overwrite_with_bad_data_keeps_the_old_run(trained, tmp_path, capsys):
    bad = write(tmp_path / "bad.txt", "1 2\n1 x\n")
    before = snapshot(trained)
    err = cli_error(["train", "--out", str(trained), "--overwrite", "--data", str(bad), *FAST], capsys)
    assert f"{bad}:2: field item" in err
    assert snapshot(trained) == before, "--overwrite may delete the old run only once the new one can start"


def test_resume_without_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    err = cli_error(["train", "--out", str(out), "--resume", *FAST], capsys)
    assert f"--resume: no checkpoint at {out / 'checkpoints' / 'last.pt'}" in err
    (out / "checkpoints").mkdir(parents=True)
    write(out / "config.yaml", "model: {}\n")
    err = cli_error(["train", "--out", str(out), "--resume", *FAST], capsys)
    assert "--resume: no checkpoint" in err
    assert (out / "config.yaml").read_text() == "model: {}\n"


def test_resume_with_a_different_config(trained, capsys):
    before = snapshot(trained)
    err = cli_error(["train", "--out", str(trained), "--resume", *FAST, "--set", "train.lr=0.5"], capsys)
    assert "--resume: the configuration differs from the one stored in" in err
    assert snapshot(trained) == before


# ---------------------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------------------


def test_unknown_users(trained, tmp_path, capsys):
    loaded = load_model(trained)
    inter = read_interactions(DataConfig(synthetic_users=120, synthetic_items=30))
    with pytest.raises(ValueError, match="unknown user id\\(s\\): nobody, u999"):
        user_rows(inter, ["u1", "nobody", "u999"])
    out = write(tmp_path / "recs.csv", "old\n")
    err = cli_error(["recommend", str(trained), "--users", "u1", "nobody", "--out", str(out), "--quiet"], capsys, "recommend")
    assert "unknown user id(s): nobody" in err
    assert out.read_text() == "old\n"
    users = write(tmp_path / "users.txt", "u1\nghost\n")
    err = cli_error(["recommend", str(trained), "--users-file", str(users), "--out", str(out), "--quiet"], capsys, "recommend")
    assert "unknown user id(s): ghost" in err
    assert loaded.similarity == "cosine"


def test_users_file_problems(trained, tmp_path, capsys):
    out = tmp_path / "recs.csv"
    err = cli_error(["recommend", str(trained), "--users-file", str(tmp_path / "none.txt"), "--out", str(out)], capsys, "recommend")
    assert f"users file not found: {tmp_path / 'none.txt'}" in err
    latin = write(tmp_path / "latin.txt", "Jos\u00e9\n".encode("latin-1"))
    err = cli_error(["recommend", str(trained), "--users-file", str(latin), "--out", str(out)], capsys, "recommend")
    assert f"{latin}:1: not UTF-8 text" in err
    assert not out.exists()


@pytest.mark.parametrize("k", [0, -3])
def test_k_must_be_positive(trained, tmp_path, capsys, k):
    loaded = load_model(trained)
    inter = read_interactions(DataConfig(synthetic_users=120, synthetic_items=30))
    with pytest.raises(ValueError, match=f"k must be >= 1, got {k}"):
        next(recommend_batches(loaded, inter, np.arange(3), k))
    out = tmp_path / "recs.csv"
    err = cli_error(["recommend", str(trained), "--k", str(k), "--out", str(out), "--quiet"], capsys, "recommend")
    assert f"--k must be >= 1, got {k}" in err
    assert not out.exists()


def test_recommend_to_an_unwritable_place(trained, tmp_path, capsys):
    blocker = write(tmp_path / "file.txt", "x")
    err = cli_error(["recommend", str(trained), "--users", "u1", "--out", str(blocker / "recs.csv"), "--quiet"], capsys, "recommend")
    assert str(blocker) in err
    (tmp_path / "adir").mkdir()
    err = cli_error(["recommend", str(trained), "--users", "u1", "--out", str(tmp_path / "adir"), "--quiet"], capsys, "recommend")
    assert str(tmp_path / "adir") in err


def _bad_checkpoints(trained: Path, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = (trained / "checkpoints" / "best.pt").read_bytes()
    state = torch.load(trained / "checkpoints" / "best.pt", weights_only=True)
    cases: dict[str, tuple[Path, str]] = {}

    def add(name: str, expected: str, data: bytes | None = None, obj: object = None) -> None:
        path = tmp_path / f"{name}.pt"
        if data is not None:
            path.write_bytes(data)
        else:
            torch.save(obj, path)
        cases[name] = (path, expected)

    add("garbage", "corrupt", data=random.Random(0).randbytes(4096))
    add("empty", "empty file (0 bytes), not a checkpoint", data=b"")
    add("text", "corrupt", data=b"model weights go here\n")
    add("truncated", "corrupt or truncated checkpoint", data=good[: len(good) // 2])
    add("truncated_tail", "corrupt", data=good[:-100])
    add("list", "not a seqrec checkpoint (top level is list)", obj=[1, 2, 3])
    add("tensor", "not a seqrec checkpoint (top level is Tensor)", obj=torch.zeros(3))
    add("newer", f"checkpoint schema {SCHEMA_VERSION + 1} is newer than this seqrec understands ({SCHEMA_VERSION}); upgrade seqrec",
        obj={**state, "schema_version": SCHEMA_VERSION + 1})
    add("no_schema", "not a seqrec checkpoint (schema_version=None)", obj={k: v for k, v in state.items() if k != "schema_version"})
    add("missing_keys", "checkpoint lacks similarity, item_ids",
        obj={k: v for k, v in state.items() if k not in ("similarity", "item_ids")})
    add("wrong_type", "checkpoint field 'num_items' has type str", obj={**state, "num_items": "many"})
    add("bad_similarity", "unknown similarity 'euclid' in checkpoint", obj={**state, "similarity": "euclid"})
    weights = dict(state["model"])
    weights.pop(next(iter(weights)))
    add("missing_weight", "the model weights do not match the stored config", obj={**state, "model": weights})
    bad_config = {**state["config"], "model": {**state["config"]["model"], "hidden_dim": "wide"}}
    add("bad_config", "model.hidden_dim: expected an integer", obj={**state, "config": bad_config})
    return cases


def test_bad_checkpoints_through_library_and_cli(trained, tmp_path, capsys):
    cases = _bad_checkpoints(trained, tmp_path)
    for name, (path, expected) in cases.items():
        with pytest.raises((CheckpointError, ValueError)) as info:
            load_model(path)
        assert str(path) in str(info.value) and expected in str(info.value), (name, str(info.value))
        for command in ("recommend", "evaluate"):
            extra = ["--out", str(tmp_path / "recs.csv")] if command == "recommend" else []
            err = cli_error([command, str(path), *extra, "--quiet"], capsys, command)
            assert str(path) in err and expected in err, (name, command, err)
        assert not (tmp_path / "recs.csv").exists()
    # load_checkpoint alone refuses the ones it can judge without building a model
    for name in ("garbage", "truncated", "list", "newer", "missing_keys", "wrong_type"):
        with pytest.raises(CheckpointError):
            load_checkpoint(cases[name][0])


def test_nonexistent_run_or_checkpoint(tmp_path, capsys):
    err = cli_error(["recommend", str(tmp_path / "nowhere.pt"), "--out", str(tmp_path / "r.csv")], capsys, "recommend")
    assert f"checkpoint not found: {tmp_path / 'nowhere.pt'}" in err
    (tmp_path / "emptyrun").mkdir()
    err = cli_error(["evaluate", str(tmp_path / "emptyrun")], capsys, "evaluate")
    assert f"no checkpoint in run directory {tmp_path / 'emptyrun'}" in err


def test_resume_from_a_garbage_checkpoint(trained, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    write(run / "checkpoints" / "last.pt", b"\x00garbage" * 100)
    before = snapshot(run)
    err = cli_error(["train", "--out", str(run), "--resume", *FAST], capsys)
    assert f"{run / 'checkpoints' / 'last.pt'}: corrupt" in err
    assert snapshot(run) == before


def test_evaluate_on_data_that_does_not_match(trained, tmp_path, capsys):
    other = write(tmp_path / "other.txt", SASREC)
    err = cli_error(["evaluate", str(trained), "--data", str(other), "--quiet"], capsys, "evaluate")
    assert "items" in err


def test_metrics_file_with_garbage_in_the_middle_is_refused_on_resume(trained, tmp_path, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    write(run / "metrics.jsonl", "\n".join(["{not json", *lines]) + "\n")
    err = cli_error(["train", "--out", str(run), "--resume", *FAST], capsys)
    assert f"{run / 'metrics.jsonl'}:1: not a JSON record" in err
    assert json.loads(lines[0])["epoch"] == 1


# ---------------------------------------------------------------------------------------------------
# Inputs that used to get through (issue 18)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, content",
    [
        ("short.txt", "1 10\n1 11\n2 10\n3 12\n3 10\n"),  # users with 2, 1 and 2 events
        ("short.csv", "user_id,item_id\nu1,a\nu1,b\nu2,a\nu3,c\nu3,a\n"),
    ],
)
def test_data_where_nobody_can_be_evaluated_is_refused(tmp_path, capsys, name, content):
    # Training used to "succeed" and report NDCG@10 0.0000 over an empty set of users.
    path = write(tmp_path / name, content)
    expected = f"{path}: no user has 3 or more interactions, so nothing can be evaluated"
    with pytest.raises(DataError) as info:
        train(tiny_config(data={"path": str(path)}), tmp_path / "lib", progress=False, command=["t"])
    assert str(info.value).startswith(expected) and info.value.path == str(path)
    assert not (tmp_path / "lib").exists()
    err = cli_error(["train", "--data", str(path), "--out", str(tmp_path / "run"), *FAST], capsys)
    assert expected in err and "users with 1 or 2 events are training-only" in err
    assert not (tmp_path / "run").exists()


def test_an_id_of_100000_digits_names_file_line_and_field(tmp_path, capsys):
    # Python's int() refuses over 4,300 digits with a message that names no file or line.
    digits = "7" * 100_000
    sasrec = write(tmp_path / "huge.txt", f"1 10\n1 {digits}\n")
    assert (f"{sasrec}:2: field item: id of 100,000 digits (77777777777777777777...) does not fit in 64 bits"
            in data_error(sasrec))
    csv_path = write(tmp_path / "huge.csv", f"user_id,item_id\n1,10\n1,{digits}\n")
    assert f"{csv_path}:3: field item_id: id of 100,000 characters is longer than 1,000" in data_error(csv_path)
    for path, line in ((sasrec, 2), (csv_path, 3)):
        err = cli_error(["train", "--data", str(path), "--out", str(tmp_path / "run"), *FAST], capsys)
        assert f"{path}:{line}: field item" in err and len(err) < 500  # the id is not echoed in full
    # leading zeros do not count, and 1,000 characters is still an id (a text id: it has no int64 value)
    assert read_interactions(DataConfig(path=str(write(tmp_path / "z.txt", "0" * 5000 + "7 3\n")))).user_ids.tolist() == [7]
    inter = read_interactions(DataConfig(path=str(write(tmp_path / "long.csv", f"user_id,item_id\n1,{digits[:1000]}\n1,2\n"))))
    assert inter.item_ids.tolist()[1:] == ["2", digits[:1000]]


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("nul.csv", "user_id,item_id\n1,2\n1,1\x001\n", ":3: field item_id: id contains the control character '\\x00' at position 2"),
        ("nul.tsv", "user_id\titem_id\n1\t2\n\x00\t3\n", ":3: field user_id: id contains the control character '\\x00' at position 1"),
        ("quoted.csv", 'user_id,item_id\n1,2\n"a\x00",3\n', ":3: field user_id: id contains the control character '\\x00'"),
        ("bell.csv", "user_id,item_id\n1,2\n1,b\x07\n", ":3: field item_id: id contains the control character '\\x07'"),
    ],
)
def test_control_characters_in_csv_ids_are_refused(tmp_path, capsys, name, content, expected):
    # A NUL inside an id field used to be kept as part of the id.
    path = write(tmp_path / name, content)
    assert f"{path}{expected}" in data_error(path)
    err = cli_error(["train", "--data", str(path), "--out", str(tmp_path / "run"), *FAST], capsys)
    assert f"{path}{expected}" in err
    # a tab inside a quoted CSV id is kept: it is the one control character a text field may hold
    inter = read_interactions(DataConfig(path=str(write(tmp_path / "tab.csv", 'user_id,item_id\n"a\tb",1\n'))))
    assert inter.user_ids.tolist() == ["a\tb"]


CSV_ROWS = "u1,a,3\nu1,b,1\nu2,a,2\nu2,c,5\nu2,b,4\n"
POSITIONS = ["data.header=false", "data.user_col=0", "data.item_col=1", "data.time_col=2"]


def test_csv_without_a_header_row_reads_by_column_position(tmp_path):
    headed = read_interactions(DataConfig(path=str(write(tmp_path / "h.csv", "user_id,item_id,ts\n" + CSV_ROWS)), time_col="ts"))
    bare = write(tmp_path / "bare.csv", "\n" + CSV_ROWS)  # blank lines carry no event, the first one too
    for data in (load_config(None, [*POSITIONS, f"data.path={bare}"]).data,
                 DataConfig(path=str(bare), header=False, user_col=0, item_col=1, time_col=2)):
        got = read_interactions(data)
        for field in ("offsets", "items", "user_ids", "item_ids", "timestamps"):
            np.testing.assert_array_equal(getattr(got, field), getattr(headed, field), err_msg=field)
    # positions work with a header too, and pick any column
    swapped = read_interactions(DataConfig(path=str(tmp_path / "h.csv"), user_col=1, item_col="user_id"))
    assert swapped.user_ids.tolist() == ["a", "b", "c"] and swapped.item_ids.tolist()[1:] == ["u1", "u2"]
    tsv = write(tmp_path / "bare.tsv", CSV_ROWS.replace(",", "\t"))
    assert read_interactions(DataConfig(path=str(tsv), header=False, user_col=2, item_col=0)).num_users == 5


def test_csv_header_setting_mistakes(tmp_path, capsys):
    bare = write(tmp_path / "bare.csv", CSV_ROWS)
    with pytest.raises(ConfigError, match="data.header=false: data.user_col must be a 0-based column position "
                                          "\\(an integer\\), got the name 'user_id'"):
        load_config(None, ["data.header=false"])
    with pytest.raises(ConfigError, match="data.item_col must be a column name or a 0-based position >= 0, got -1"):
        load_config(None, ["data.item_col=-1"])
    with pytest.raises(ConfigError, match="must name different columns"):
        load_config(None, ["data.header=false", "data.user_col=0", "data.item_col=0"])
    assert (f"{bare}:1: data.time_col=3 is out of range: the row has 3 field(s) (positions 0..2)"
            in data_error(bare, header=False, user_col=0, item_col=1, time_col=3))
    ragged = write(tmp_path / "ragged.csv", "1,2,3\n1,,4\n1,2\n")
    assert f"{ragged}:2: field column 1: empty id" in data_error(ragged, header=False, user_col=0, item_col=1)
    sets = [a for value in POSITIONS[:3] for a in ("--set", value)]
    err = cli_error(["train", "--data", str(ragged), "--out", str(tmp_path / "run"), *sets, *FAST], capsys)
    assert f"{ragged}:2: field column 1: empty id" in err
    # a header-less file read with a header: its first row is reported, with the way out
    numbers = write(tmp_path / "numbers.csv", "1,10\n1,11\n")
    err = cli_error(["train", "--data", str(numbers), "--out", str(tmp_path / "run"), *FAST], capsys)
    assert (f"{numbers}:1: missing column(s) 'user_id', 'item_id'; header has ['1', '10']; if the file has no "
            "header row, set data.header=false and the columns by position") in err
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"u": [1, 1], "i": [2, 3]}), path)
    assert read_interactions(DataConfig(path=str(path), user_col=0, item_col=1)).item_ids.tolist()[1:] == [2, 3]
    assert "column position(s) 5 out of range: the file has 2 column(s)" in data_error(path, user_col=0, item_col=5)
    assert "data.header=false applies to CSV/TSV" in data_error(path, header=False, user_col=0, item_col=1)


def test_taac_offsets_are_checked_against_the_file_they_index(tmp_path):
    import pickle

    from seqrec.data.taac.reader import read_seq_offsets

    lines = ['[[1, null, {"103": 1}, null, null, 5]]', '[[2, 7, null, {"100": 1}, 0, 6]]']
    seq = write(tmp_path / "seq.jsonl", "".join(line + "\n" for line in lines))
    second, size = len(lines[0]) + 1, seq.stat().st_size
    pkl = tmp_path / "seq_offsets.pkl"

    def offsets(values: list[int], seq_path: Path | None = seq):
        pkl.write_bytes(pickle.dumps(values))
        return read_seq_offsets(pkl, seq_path)

    assert offsets([0, second]).tolist() == [0, second]
    assert offsets([0, 5], seq_path=None).tolist() == [0, 5]  # without the file there is nothing to check
    cases = {
        (0, 5): f"{pkl}: offsets[1]: byte 5 is inside line 1 of {seq}, not the start of line 2",
        (3, second): f"{pkl}: offsets[0]: byte 3 is inside line 1 of {seq}, not the start of line 1",
        (0, second + 4): f"{pkl}: offsets[1]: byte {second + 4} is inside line 2 of {seq}, not the start of line 2",
        (0, size): f"{pkl}: offsets[1]: byte {size} is past the end of {seq} ({size} bytes)",
        (0,): f"{pkl}: offsets: 1 offsets for the 2 lines of {seq}",
        (0, second, size + 9): f"{pkl}: offsets: 3 offsets for the 2 lines of {seq}",
    }
    for values, expected in cases.items():
        with pytest.raises(DataError) as info:
            offsets(list(values))
        assert str(info.value) == expected
