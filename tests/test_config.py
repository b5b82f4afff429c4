"""Settings: conf/default.yaml is rendered from the settings models, files and the
environment override only what they name, every bad value fails naming key, value and what
is allowed, and the engines are registered in one place."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from forecasting.config import (
    ENGINES,
    ENV_OVERRIDES,
    Config,
    default_conf_path,
    load_config,
    render_default_yaml,
)
from forecasting.config.__main__ import main as config_main
from forecasting.config.validation import allowed_text
from forecasting.errors import ConfigError
from forecasting.models import MODELS
from training.cli import cli
from training.engines import engine_class, get_engine
from training.engines.local import LocalEngine

ENV_KEYS = tuple(ENV_OVERRIDES)


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


def test_default_yaml_equals_model_defaults():
    assert load_config(default_conf_path()) == Config()
    assert load_config() == Config()


def test_default_yaml_names_every_setting_and_nothing_else():
    raw = yaml.safe_load(default_conf_path().read_text())
    assert raw == Config().to_dict()


def test_committed_default_yaml_is_the_rendered_one(capsys):
    """One source of truth: the file is rendered from the models (descriptions as comments)."""
    text = default_conf_path().read_text()
    assert text == render_default_yaml(), "run: python -m forecasting.config --write-default"
    assert config_main(["--check"]) == 0
    assert "is up to date" in capsys.readouterr().out
    for name, field in Config.model_fields.items():  # a section's comment sits beside it
        if field.description:
            assert f"{name}:" in text and f"# {field.description.splitlines()[0]}" in text
    for var in ENV_OVERRIDES:  # every environment override is named beside its key
        assert f"{var} overrides" in text


def test_rendered_yaml_keeps_the_comments_of_every_described_setting():
    text = render_default_yaml()
    lines = text.splitlines()
    cleaning = [line for line in lines if line.startswith("  outlier_z:")]
    assert cleaning == [
        "  outlier_z: 6.0              # robust z-score (median/MAD) of the residual to the same hour on nearby days"
    ]
    assert "  master: local[*]            # any cluster URL; SPARK_MASTER overrides" in lines
    assert "levels: [80, 95]              # prediction-interval levels, percent" in lines
    assert "# Candidate models tried on every series (`mmf models` lists them all). The default set" in lines


def test_every_setting_says_in_words_what_it_allows():
    def fields(model, prefix=""):
        for name, field in model.model_fields.items():
            yield prefix + name, field
            if isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields"):
                yield from fields(field.annotation, prefix + name + ".")

    said = {key: allowed_text(field) for key, field in fields(Config)}
    leaked = {
        k: w for k, w in said.items() if not w or any(t in w for t in ("<", "[", "Literal", "typing", "|"))
    }
    assert not leaked, leaked  # words, never a Python type
    assert said["backtest.metric"] == "one of mae, rmse, smape, mase, bias, rmsse, scaled_mae, pinball"
    assert said["tune.global_timeout_s"] == "a number > 0"
    assert said["nightly.max_failed_share"] == "a number between 0 and 1"


# -- overrides --------------------------------------------------------------------------


def test_conf_file_overrides_only_the_keys_it_names(tmp_path):
    path = _conf(
        tmp_path,
        "horizon: 12\nbacktest:\n  windows: 3\ncleaning:\n  min_length: 100\nmodels: [ets]\n",
    )
    got = load_config(path).to_dict()

    expected = Config().to_dict()
    expected["horizon"] = 12
    expected["backtest"]["windows"] = 3
    expected["cleaning"]["min_length"] = 100
    expected["models"] = ["ets"]
    assert got == expected
    # the untouched keys of a named section keep their defaults
    assert got["backtest"]["metric"] == "mase"
    assert got["cleaning"]["max_gap_fill"] == Config().cleaning.max_gap_fill


def test_empty_conf_file_and_empty_section_keep_defaults(tmp_path):
    assert load_config(_conf(tmp_path, "")) == Config()
    assert load_config(_conf(tmp_path, "backtest:\n", "b.yaml")) == Config()


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
    ("backtest: [1]", "backtest", [1], "a mapping of settings"),
    ("horizon: '12'", "horizon", "12", "an integer >= 1"),
    ("seed: 1.5", "seed", 1.5, "an integer"),
    ("ensemble:\n  method: mode", "ensemble.method", "mode", "mean or median"),
    ("ensemble:\n  top_k: 1", "ensemble.top_k", 1, "an integer >= 2"),
    ("ingest:\n  extra_columns: drop", "ingest.extra_columns", "drop", "ignore, refuse or add"),
    ("cleaning:\n  outlier_z: '6'", "cleaning.outlier_z", "6", "a number > 0"),
    ("cleaning:\n  clip_outliers: 1", "cleaning.clip_outliers", 1, "true or false"),
    ("tune:\n  timeout_s: yes", "tune.timeout_s", True, "a number > 0"),
    ("tune:\n  search_spaces: ' '", "tune.search_spaces", " ", "null or the path of a YAML file"),
    ("deep:\n  use_gpu: maybe", "deep.use_gpu", "maybe", "auto, true or false"),
    ("spark:\n  driver_memory: 4 GB", "spark.driver_memory", "4 GB", "a JVM size such as 4g"),
    ("spark:\n  shuffle_partitions: 0", "spark.shuffle_partitions", 0, "null or an integer >= 1"),
    ("serve:\n  port: 70000", "serve.port", 70000, "an integer between 0 and 65535"),
    ("mlflow:\n  registered_model: ' '", "mlflow.registered_model", " ", "a non-empty name"),
    ("storage_options:\n  allow_http: true", "storage_options", {"allow_http": True}, "strings"),
    ("model_params:\n  foo: {}", "model_params", "foo", "keys among"),
    # each model checks its own parameters when the config loads, not per series in training
    (
        "model_params:\n  seasonal_window: {daytype: sometimes}",
        "model_params.seasonal_window.daytype",
        "sometimes",
        "one of 'ignore', 'split', 'auto'",
    ),
    ("model_params:\n  ets: {damped: 1}", "model_params.ets.damped", 1, "true or false"),
    ("model_params:\n  theta: {thetta: 2}", "model_params.theta.thetta", 2, "one of theta, deseasonalize"),
    ("model_params:\n  global_gbm: {num_leaves: 0}", "model_params.global_gbm.num_leaves", 0, ">= "),
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
    for name in Config.model_fields:
        assert name in msg


def test_tuning_with_a_missing_search_space_file_fails_at_load(tmp_path):
    missing = tmp_path / "spaces.yaml"
    with pytest.raises(ConfigError) as err:
        load_config(_conf(tmp_path, f"tune:\n  enabled: true\n  search_spaces: {missing}\n"))
    assert err.value.key == "tune.search_spaces"
    assert str(missing) in str(err.value)


def test_numbers_keep_the_type_they_were_written_in(tmp_path):
    """30 stays 30 (not 30.0): the config hash and the MLflow params see what was written."""
    cfg = load_config(_conf(tmp_path, "tune:\n  timeout_s: 30\nmodel_timeout_s: 2.5\n"))
    assert type(cfg.tune.timeout_s) is int and type(cfg.model_timeout_s) is float
    assert type(Config().cleaning.outlier_z) is float


def test_a_config_does_not_change_after_validation():
    cfg = load_config()
    with pytest.raises(ValidationError):
        cfg.horizon = 0
    assert cfg.replace(horizon=12).horizon == 12 and cfg.horizon == Config().horizon


def test_spark_and_api_key_environment_overrides(monkeypatch):
    monkeypatch.setenv("SPARK_MASTER", "spark://host:7077")
    monkeypatch.setenv("MMF_API_KEY", "k3y")
    cfg = load_config()
    assert (cfg.spark.master, cfg.serve.api_key) == ("spark://host:7077", "k3y")


# -- the engine registry ----------------------------------------------------------------


def test_one_registry_of_engines():
    """The config's allowed engines, the CLI's --engine choices and get_engine agree."""
    choices = {p.name: p for p in cli.commands["refine"].params}["engine"].type.choices
    assert list(choices) == list(ENGINES)
    assert engine_class("local") is LocalEngine
    engine = get_engine(load_config(workers=3))
    assert isinstance(engine, LocalEngine) and engine.workers == 3
    with pytest.raises(ConfigError, match="one of local, spark"):
        engine_class("dask")


def test_replace_validates_too():
    with pytest.raises(ConfigError, match="horizon"):
        Config().replace(horizon=0)
    assert Config().replace(**{"cleaning.min_length": 24}).cleaning.min_length == 24


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
