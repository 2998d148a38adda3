"""Nothing runs code it shouldn't: malicious checkpoints, pickles and configs are refused, unexecuted.

Each payload would create a marker file when unpickled (or YAML-constructed) by an unsafe loader; the
tests first prove the payload is live with plain ``pickle``, then that seqrec refuses it and that the
marker never appears.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch

from seqrec.cli import main
from seqrec.config import ConfigError, load_config
from seqrec.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


class Payload:
    """Unpickling this object calls ``open(marker, "w")``: a stand-in for arbitrary code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plain_state() -> dict:
    return {
        "model": {"w": torch.zeros(3)}, "config": {}, "similarity": "cosine", "num_items": 2,
        "item_ids": [0, 1, 2], "user_ids": ["a"],
    }


def test_the_payload_is_live(tmp_path):
    marker = tmp_path / "proof"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists(), "the payload must really run under an unsafe loader, or the tests below prove nothing"


def _malicious_files(tmp_path: Path, marker: Path) -> dict[str, Path]:
    files = {}
    files["top_level"] = tmp_path / "top.pt"
    torch.save(Payload(marker), files["top_level"])
    files["inside_state"] = tmp_path / "inside.pt"
    torch.save({**plain_state(), "schema_version": 1, "extra": Payload(marker)}, files["inside_state"])
    files["in_weights"] = tmp_path / "weights.pt"
    torch.save({**plain_state(), "schema_version": 1, "model": {"w": Payload(marker)}}, files["in_weights"])
    files["legacy_format"] = tmp_path / "legacy.pt"
    torch.save({**plain_state(), "extra": Payload(marker)}, files["legacy_format"], _use_new_zipfile_serialization=False)
    files["raw_pickle"] = tmp_path / "raw.pt"
    files["raw_pickle"].write_bytes(pickle.dumps({**plain_state(), "x": Payload(marker)}, protocol=2))
    return files


def test_malicious_checkpoints_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    for name, path in _malicious_files(tmp_path, marker).items():
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        message = str(info.value)
        assert message.startswith(f"{path}: "), (name, message)
        if name != "raw_pickle":  # torch reads a bare pickle as a corrupt legacy file; refused either way
            assert "refused to load" in message and "nothing from it was executed" in message, (name, message)
            assert "open" in message  # names the global it refused
        assert "weights_only" not in message, "never advise turning the safety check off"
        assert not marker.exists(), name


def test_a_plain_checkpoint_still_loads(tmp_path):
    save_checkpoint(plain_state(), tmp_path / "ok.pt")
    assert load_checkpoint(tmp_path / "ok.pt")["similarity"] == "cosine"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("safety") / "run"
    assert main(["train", "--out", str(out), "--quiet", "--set", "train.epochs=1", "--set", "data.synthetic_users=100",
                 "--set", "model.hidden_dim=8", "--set", "model.maxlen=10", "--set", "train.num_threads=1"]) == 0
    return out


def test_cli_refuses_malicious_checkpoints(run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = _malicious_files(tmp_path, marker)["inside_state"]
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    for name in ("best.pt", "last.pt"):
        shutil.copy(evil, copy / "checkpoints" / name)
    recs = tmp_path / "recs.csv"
    cases = [
        (["recommend", str(copy), "--out", str(recs), "--quiet"], "recommend"),
        (["evaluate", str(copy), "--quiet"], "evaluate"),
        (["recommend", str(evil), "--out", str(recs), "--quiet"], "recommend"),
        (["train", "--out", str(copy), "--resume", "--quiet", "--set", "train.epochs=1", "--set", "data.synthetic_users=100",
          "--set", "model.hidden_dim=8", "--set", "model.maxlen=10", "--set", "train.num_threads=1"], "train"),
    ]
    for argv, command in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"seqrec {command}: error: ") and "refused to load" in err, err
        assert not marker.exists()
    assert not recs.exists()


def test_malicious_pickle_through_safe_load_pickle(tmp_path):
    safe_pickle = pytest.importorskip("seqrec.data.safe_pickle", reason="seqrec.data.safe_pickle not written yet")
    marker = tmp_path / "pwned"
    path = tmp_path / "indexer.pkl"
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        path.write_bytes(pickle.dumps({"u": {"a": 1}, "evil": Payload(marker)}, protocol=protocol))
        with pytest.raises(safe_pickle.UnsafePickleError) as info:
            safe_pickle.safe_load_pickle(path)
        assert str(path) in str(info.value)
        assert not marker.exists()


def test_malicious_offsets_pickle_through_the_taac_reader(tmp_path):
    taac = pytest.importorskip("seqrec.data.taac.reader", reason="seqrec.data.taac not written yet")
    marker = tmp_path / "pwned"
    path = tmp_path / "seq_offsets.pkl"
    path.write_bytes(pickle.dumps([0, 10, Payload(marker)]))
    with pytest.raises(ValueError, match="refused to load global"):
        taac.read_seq_offsets(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "text",
    [
        "!!python/object/apply:builtins.open ['{marker}', 'w']\n",
        "model: !!python/object/apply:builtins.open ['{marker}', 'w']\n",
        "model:\n  maxlen: !!python/object/new:builtins.open ['{marker}', 'w']\n",
    ],
)
def test_yaml_config_cannot_construct_objects(tmp_path, capsys, text):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(text.format(marker=marker))
    with pytest.raises(ConfigError, match="invalid YAML: could not determine a constructor"):
        load_config(path)
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    assert f"seqrec train: error: {path}: invalid YAML" in capsys.readouterr().err
    assert not marker.exists()
