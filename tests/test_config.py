from pathlib import Path

import pytest

from seqrec.config import ConfigError, RunConfig, config_from_dict, config_to_dict, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_defaults_round_trip():
    cfg = RunConfig()
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert cfg.loss.name == "infonce" and cfg.loss.temperature == 0.07


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert path.read_text().startswith("#"), "each preset starts with a comment naming its command"


def test_overrides_and_type_coercion(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  hidden_dim: 32\ntrain:\n  lr: 1\n")
    cfg = load_config(f, ["model.hidden_dim=48", "eval.ks=[1, 10]", "loss.pool_size=null", "train.betas=[0.9, 0.99]"])
    assert cfg.model.hidden_dim == 48 and cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.eval.ks == (1, 10) and cfg.train.betas == (0.9, 0.99)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.hidden_dimm=3"], "unknown key"),
        (["modell.hidden_dim=3"], "unknown section"),
        (["model.hidden_dim=abc"], "expected an integer"),
        (["model.hidden_dim=1.5"], "expected an integer"),
        (["model.norm_first=1"], "expected true/false"),
        (["loss.temperature=0"], "temperature must be > 0"),
        (["loss.temperature=-1"], "temperature must be > 0"),
        (["model.maxlen=0"], "maxlen must be >= 1"),
        (["model.hidden_dim=64", "model.num_heads=3"], "must divide"),
        (["loss.name=softmax"], "must be one of"),
        (["loss.name=bce", "loss.mode=full"], "apply to infonce only"),
        (["eval.select_metric=ndcg@7"], "select_metric"),
        (["train.lr=0"], "lr must be > 0"),
        (["model.dropout=1.0"], "dropout"),
        (["nodot=1"], "section.key=value"),
    ],
)
def test_bad_settings_are_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)
