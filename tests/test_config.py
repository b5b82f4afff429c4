"""Settings: conf/default.yaml mirrors the dataclass defaults, files and the environment
override only what they name, and every bad value fails naming key, value and what is
allowed."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from forecasting.config import Config, default_conf_path, load_config
from forecasting.errors import ConfigError
from forecasting.models import MODELS

ENV_KEYS = ("MMF_LAKEHOUSE", "MLFLOW_TRACKING_URI", "SPARK_MASTER", "MMF_API_KEY")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No override from the calling shell leaks into these tests."""
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)


def _conf(tmp_path: Path, text: str, name: str = "conf.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# -- defaults ---------------------------------------------------------------------------


def test_default_yaml_equals_dataclass_defaults():
    assert load_config(default_conf_path()) == Config().validate()
    assert load_config() == Config().validate()


def test_default_yaml_names_every_setting_and_nothing_else():
    raw = yaml.safe_load(default_conf_path().read_text())
    assert raw == Config().validate().to_dict()


# -- overrides --------------------------------------------------------------------------


def test_conf_file_overrides_only_the_keys_it_names(tmp_path):
    path = _conf(
        tmp_path,
        "horizon: 12\nbacktest:\n  windows: 3\ncleaning:\n  min_length: 100\nmodels: [ets]\n",
    )
    got = load_config(path).to_dict()

    expected = Config().validate().to_dict()
    expected["horizon"] = 12
    expected["backtest"]["windows"] = 3
    expected["cleaning"]["min_length"] = 100
    expected["models"] = ["ets"]
    assert got == expected
    # the untouched keys of a named section keep their defaults
    assert got["backtest"]["metric"] == "mase"
    assert got["cleaning"]["max_gap_fill"] == Config().cleaning.max_gap_fill


def test_empty_conf_file_and_empty_section_keep_defaults(tmp_path):
    assert load_config(_conf(tmp_path, "")) == Config().validate()
    assert load_config(_conf(tmp_path, "backtest:\n", "b.yaml")) == Config().validate()


def test_environment_overrides_file_and_defaults(tmp_path, monkeypatch):
    path = _conf(tmp_path, "lakehouse: /from/file\nmlflow:\n  experiment: exp\n")
    monkeypatch.setenv("MMF_LAKEHOUSE", str(tmp_path / "env-lake"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    cfg = load_config(path)
    assert cfg.lakehouse == str(tmp_path / "env-lake")
    assert cfg.mlflow.tracking_uri == "sqlite:///env.db"
    assert cfg.mlflow.experiment == "exp"  # the file still sets what the env does not
    assert cfg.mlflow_tracking_uri() == "sqlite:///env.db"


def test_environment_override_into_a_section_left_empty(tmp_path, monkeypatch):
    # `mlflow:` with every key commented out is None in YAML
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    cfg = load_config(_conf(tmp_path, "mlflow:\n"))
    assert cfg.mlflow.tracking_uri == "sqlite:///env.db"
    assert cfg.mlflow.experiment == Config().mlflow.experiment


def test_environment_override_into_a_section_that_is_not_a_mapping(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    with pytest.raises(ConfigError) as err:
        load_config(_conf(tmp_path, "mlflow: 3\n"))
    assert err.value.key == "mlflow"
    assert err.value.value == 3
    assert "mapping" in str(err.value)


def test_explicit_overrides_win_over_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MMF_LAKEHOUSE", "/from/env")
    cfg = load_config(lakehouse=str(tmp_path), horizon=7, **{"backtest.windows": 2, "freq": None})
    assert cfg.lakehouse == str(tmp_path)
    assert (cfg.horizon, cfg.backtest.windows, cfg.freq) == (7, 2, None)


def test_levels_are_sorted_and_deduplicated(tmp_path):
    assert load_config(_conf(tmp_path, "levels: [95, 80, 95]\n")).levels == [80, 95]


# -- invalid values ---------------------------------------------------------------------

INVALID = [
    # (yaml, key, value, fragment of what is allowed)
    ("horizon: 0", "horizon", 0, "an integer >= 1"),
    ("horizon: true", "horizon", True, "an integer >= 1"),
    ("engine: dask", "engine", "dask", "local, spark"),
    ("horizn: 12", "horizn", 12, "horizon"),
    ("backtest:\n  windwos: 2", "backtest.windwos", 2, "windows"),
    ("backtest:\n  metric: foo", "backtest.metric", "foo", "mase"),
    ("freq: banana", "freq", "banana", "h, 30min, D"),
    ("freq: H", "freq", "H", "h, 30min, D"),
    ("freq: 0h", "freq", "0h", "h, 30min, D"),
    ("levels: [150]", "levels", [150], "between 1 and 99"),
    ("levels: []", "levels", [], "between 1 and 99"),
    ("workers: 0", "workers", 0, "null or an integer >= 1"),
    ("cleaning:\n  max_missing_share: 1.5", "cleaning.max_missing_share", 1.5, "between 0 and 1"),
    ("cleaning:\n  duplicates: first", "cleaning.duplicates", "first", "last or mean"),
    ("cleaning:\n  max_points_per_series: 0", "cleaning.max_points_per_series", 0, "an integer >= 1"),
    ("cleaning: 3", "cleaning", 3, "a mapping of settings"),
]


@pytest.mark.parametrize(
    "text, key, value, allowed", INVALID, ids=[i[0].split("\n")[0] + "..." * ("\n" in i[0]) for i in INVALID]
)
def test_invalid_value_names_key_value_and_allowed(tmp_path, text, key, value, allowed):
    with pytest.raises(ConfigError) as err:
        load_config(_conf(tmp_path, text + "\n"))
    assert (err.value.key, err.value.value) == (key, value)
    msg = str(err.value)
    assert key in msg
    assert repr(value) in msg
    assert allowed in msg


def test_unknown_model_lists_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(_conf(tmp_path, "models: [seasonal_naive, prophett]\n"))
    assert err.value.key == "models"
    msg = str(err.value)
    assert "'prophett'" in msg
    for name in MODELS:
        assert name in msg


def test_unknown_key_lists_the_known_settings(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(_conf(tmp_path, "horizn: 12\n"))
    msg = str(err.value)
    for f in dataclasses.fields(Config):
        assert f.name in msg


def test_replace_validates_too():
    with pytest.raises(ConfigError, match="horizon"):
        Config().validate().replace(horizon=0)
    assert Config().validate().replace(**{"cleaning.min_length": 24}).cleaning.min_length == 24


# -- the file itself --------------------------------------------------------------------


@pytest.mark.parametrize("text", ["- horizon\n- 12\n", "42\n", "just a string\n"])
def test_conf_that_is_not_a_mapping(tmp_path, text):
    path = _conf(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == "--conf"
    assert str(path) in str(err.value)
    assert "mapping" in str(err.value)


def test_conf_that_is_not_yaml(tmp_path):
    path = _conf(tmp_path, "horizon: [12\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.key == "--conf"
    assert "valid YAML" in str(err.value)


def test_missing_conf_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(missing)
    assert err.value.key == "--conf"
    assert str(missing) in str(err.value)
    assert "an existing YAML file" in str(err.value)


def test_cli_refuses_bad_config_before_any_work(tmp_path):
    path = _conf(tmp_path, "horizon: 0\n")
    lake = tmp_path / "lake"
    env = {**os.environ, "MMF_LAKEHOUSE": str(lake)}
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("mmf")), "refine", "--conf", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "invalid config horizon=0: expected an integer >= 1" in proc.stderr
    assert not lake.exists()
