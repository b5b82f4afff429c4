"""Hyperopt tuning: search spaces (validated on load), the bounded TPE search, and a tiny
per-series tuning run inside process_series (tuned on windows before the selection
windows, tuned values carried by model_json and reported in tuned_json)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from forecasting.config import from_dict, load_config
from forecasting.errors import ConfigError
from forecasting.models import MODELS
from forecasting.models.base import Forecaster, check_keys, normal_intervals
from forecasting.pipeline import process_series
from forecasting.tuning import (
    DEFAULT_SPACES,
    ParamSpec,
    decode,
    load_search_spaces,
    minimize,
    validate_search_spaces,
)

H = 24


# -- search spaces ---------------------------------------------------------------------
def test_default_search_spaces_load_and_cover_the_tunable_models():
    spaces = load_search_spaces()
    assert set(spaces) >= {"ets", "theta", "arima", "prophet", "global_nn", "global_gbm"}
    assert spaces["prophet"]["changepoint_prior_scale"] == ParamSpec("loguniform", (0.001, 0.5))
    assert {"changepoint_prior_scale", "seasonality_prior_scale", "seasonality_mode"} <= set(
        spaces["prophet"]
    )
    assert {"trend", "damped", "seasonal"} <= set(spaces["ets"])
    assert spaces["ets"]["max_history"].unit == "seasons"


def _write(tmp_path, text):
    path = tmp_path / "spaces.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, key, allowed",
    [
        ("etss:\n  trend: {choice: [add]}\n", "spaces.yaml: etss", "a model name among"),
        ("ets:\n  trendy: {choice: [add]}\n", "spaces.yaml: ets.trendy", "a value ets accepts"),
        ("ets:\n  seasonal: {choice: [add, cubic]}\n", "spaces.yaml: ets.seasonal", "a value ets accepts"),
        ("ets:\n  trend: {choose: [add]}\n", "spaces.yaml: ets.trend", "exactly one of choice"),
        ("ets:\n  trend: add\n", "spaces.yaml: ets.trend", "a mapping with one of"),
        ("theta:\n  theta: {uniform: [3, 1]}\n", "spaces.yaml: theta.theta.uniform", "lo < hi"),
        (
            "prophet:\n  changepoint_prior_scale: {loguniform: [0, 1]}\n",
            "spaces.yaml: prophet.changepoint_prior_scale.loguniform",
            "0 < lo < hi",
        ),
        ("arima:\n  fourier: {int: [0.5, 3]}\n", "spaces.yaml: arima.fourier.int", "[lo, hi] of integers"),
        (
            "ets:\n  max_history: {choice: [2, 4], unit: weeks}\n",
            "spaces.yaml: ets.max_history.unit",
            "seasons",
        ),
        ("ets: []\n", "spaces.yaml: ets", "a non-empty mapping"),
        ("- ets\n", "spaces.yaml", "a mapping of model name"),
    ],
)
def test_invalid_search_space_names_file_entry_and_what_is_allowed(tmp_path, text, key, allowed):
    with pytest.raises(ConfigError) as err:
        load_search_spaces(_write(tmp_path, text))
    assert err.value.key == key
    assert allowed in str(err.value)


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="an existing YAML file"):
        load_search_spaces(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="valid YAML"):
        load_search_spaces(_write(tmp_path, "ets: {trend: [\n"))


def test_config_checks_the_search_space_file_only_when_tuning(tmp_path):
    bad = _write(tmp_path, "ets:\n  trendy: {choice: [add]}\n")
    assert load_config(**{"tune.search_spaces": str(bad)}).tune.enabled is False  # not read
    with pytest.raises(ConfigError, match="trendy"):
        load_config(**{"tune.search_spaces": str(bad), "tune.enabled": True})
    for key, value in (
        ("tune.max_evals", 0),
        ("tune.windows", 0),
        ("tune.timeout_s", -1),
        ("tune.parallelism", 0),
    ):
        with pytest.raises(ConfigError) as err:
            load_config(**{key: value})
        assert err.value.key == key


def test_decode_scales_seasons_and_rounds_integers():
    space = validate_search_spaces(
        {"ets": {"max_history": {"choice": [2, 4], "unit": "seasons"}}, "arima": {"fourier": {"int": [0, 3]}}}
    )
    assert decode(space["ets"], {"max_history": 4}, longest_season=168) == {"max_history": 672}
    assert decode(space["arima"], {"fourier": 2.6}, longest_season=168) == {"fourier": 3}
    assert DEFAULT_SPACES.name == "search_spaces.yaml"


# -- the search ------------------------------------------------------------------------
SPACE = {"a": ParamSpec("uniform", (0.0, 4.0)), "b": ParamSpec("choice", ("x", "y"))}


def _objective(p):
    return (p["a"] - 1.0) ** 2 + (1.0 if p["b"] == "y" else 0.0)


def test_minimize_is_seeded_bounded_and_records_every_trial():
    one = minimize(_objective, SPACE, max_evals=12, timeout_s=60, seed=3, longest_season=24)
    two = minimize(_objective, SPACE, max_evals=12, timeout_s=60, seed=3, longest_season=24)
    assert one.evals == 12 == len(one.trials)
    assert [t["params"] for t in one.trials] == [t["params"] for t in two.trials]  # same seed, same path
    assert one.params == one.best and one.best["b"] == "x"
    assert one.loss == min(t["loss"] for t in one.trials)
    assert one.loss < 1.0


def test_minimize_keeps_the_untuned_values_when_they_are_better_and_survives_failures():
    def flaky(p):
        if p["b"] == "y":
            raise RuntimeError("this value breaks the model")
        return _objective(p)

    res = minimize(flaky, SPACE, max_evals=8, timeout_s=60, seed=0, longest_season=24, default_loss=-1.0)
    assert res.params == {} and res.loss == -1.0 and res.best  # best kept for the report only
    failed = [t for t in res.trials if t["status"] != "ok"]
    assert all("breaks the model" in t["error"] for t in failed)
    summary = res.summary()
    assert summary["params"] == {} and summary["default_loss"] == -1.0 and summary["evals"] == 8


def test_minimize_stops_at_the_time_budget():
    import time

    def slow(p):
        time.sleep(0.3)
        return _objective(p)

    res = minimize(slow, SPACE, max_evals=100, timeout_s=1.0, seed=0, longest_season=24)
    assert 1 <= res.evals < 10


# -- tuning inside process_series ------------------------------------------------------
class Tunable(Forecaster):
    """Seasonal naive plus a constant ``shift``: the best shift is the data's offset.
    Records the length of every history it is fitted on."""

    name = "fake_tunable"
    fits: list[int] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        check_keys(self.name, self.params, ("shift",))

    def fit(self, y, X=None, ts=None):
        Tunable.fits.append(len(y))
        self.last_ = np.asarray(y[-self.season_length :], dtype=float)
        return self

    def predict(self, h, X=None, level=(80, 95)):
        mean = self.last_[np.arange(h) % len(self.last_)] + float(self.params.get("shift", 0.0))
        return normal_intervals(mean, 1.0, level)

    def get_state(self):
        return {"last": self.last_.tolist()}

    def set_state(self, state):
        self.last_ = np.asarray(state["last"], dtype=float)


@pytest.fixture
def tunable(monkeypatch):
    monkeypatch.setitem(MODELS, Tunable.name, Tunable)
    Tunable.fits = []


def _series(n=24 * 12, trend=0.05):
    t = np.arange(n)
    y = 10 + 3 * np.sin(2 * np.pi * t / 24) + trend * t  # a level that keeps rising: shift > 0 helps
    return pd.DataFrame({"series_id": "s1", "ts": pd.date_range("2024-03-01", periods=n, freq="h"), "y": y})


def test_process_series_tunes_before_the_selection_windows_and_keeps_the_tuned_values(tmp_path, tunable):
    spaces = _write(tmp_path, "fake_tunable:\n  shift: {uniform: [0.0, 3.0]}\n")
    cfg = from_dict(
        {
            "horizon": H,
            "models": ["fake_tunable"],
            "backtest": {"windows": 2},
            "tune": {"enabled": True, "max_evals": 6, "search_spaces": str(spaces), "windows": 1},
        }
    )
    pdf = _series()
    out = process_series(pdf, cfg).iloc[0]
    assert out["status"] == "ok", out["reason"]
    tuned = json.loads(out["tuned_json"])["fake_tunable"]
    assert tuned["evals"] == 6 and tuned["default_loss"] is not None
    assert tuned["params"] and 0.0 <= tuned["params"]["shift"] <= 3.0
    assert tuned["loss"] < tuned["default_loss"]
    # the fitted model carries the tuned values
    assert json.loads(out["model_json"])["params"] == tuned["params"]
    # tuning never saw the selection windows: its fits end before the first selection cutoff
    first_cutoff = len(pdf) - 2 * H
    tuning_fits = Tunable.fits[: 1 + 6]  # the untuned run, then each trial (one window each)
    assert max(tuning_fits) <= first_cutoff - H
    # untuned, nothing is reported
    plain = process_series(pdf, cfg.replace(**{"tune.enabled": False})).iloc[0]
    assert plain["tuned_json"] == "{}"
    assert json.loads(plain["model_json"])["params"] == {}


def test_a_series_too_short_to_tune_says_so_and_still_trains(tmp_path, tunable):
    spaces = _write(tmp_path, "fake_tunable:\n  shift: {uniform: [0.0, 3.0]}\n")
    cfg = from_dict(
        {
            "horizon": H,
            "models": ["fake_tunable"],
            "backtest": {"windows": 1},
            "cleaning": {"min_length": 48},
            "tune": {"enabled": True, "max_evals": 3, "search_spaces": str(spaces)},
        }
    )
    out = process_series(_series(n=80), cfg).iloc[0]  # 72 points train the selection window, 80 < 96
    assert out["status"] == "ok"
    assert "history too short to tune" in json.loads(out["tuned_json"])["fake_tunable"]["skipped"]


def test_real_model_tuning_run_is_small_and_reported():
    """ETS with the shipped search space, 3 evaluations: tuned_json reports it and the
    chosen model's params are what was adopted."""
    cfg = from_dict(
        {
            "horizon": H,
            "models": ["ets"],
            "backtest": {"windows": 1},
            "tune": {"enabled": True, "max_evals": 3, "timeout_s": 60},
        }
    )
    out = process_series(_series(n=24 * 14, trend=0.0), cfg).iloc[0]
    assert out["status"] == "ok", out["reason"]
    tuned = json.loads(out["tuned_json"])["ets"]
    assert tuned["evals"] == 3
    assert json.loads(out["model_json"])["params"] == tuned["params"]
