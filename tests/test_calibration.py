"""Conformal interval calibration and non-negative bounds: the factors, the adjusted
model, its model_json, and every consumer that forecasts from it (training's check,
load_fitted, the nightly refit)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forecasting.calibration import conformal_factor, conformal_factors, conformity_scores, shrunk
from forecasting.config import from_dict
from forecasting.errors import ModelError
from forecasting.models import AdjustedForecaster, get_model, load_fitted
from forecasting.models.base import Forecaster
from forecasting.pipeline import process_series
from forecasting.refit import SPEC_COLUMN, refit_series, refit_specs, with_specs

GOLDEN = Path(__file__).parent / "golden" / "models_v1"
H = 24


def _fc(mean, lo80, hi80, lo95, hi95):
    return {
        "mean": np.asarray(mean, float),
        "lo-80": np.asarray(lo80, float),
        "hi-80": np.asarray(hi80, float),
        "lo-95": np.asarray(lo95, float),
        "hi-95": np.asarray(hi95, float),
    }


# -- the factors -----------------------------------------------------------------------
def test_conformity_score_uses_the_half_width_on_the_errors_side():
    fc = _fc([10, 10, 10, 10], [9, 9, 9, 9], [12, 12, 12, 12], [8, 8, 8, 8], [14, 14, 14, 14])
    y = np.array([11.0, 9.5, 10.0, 16.0])
    # +1 over an upper half-width of 2; -0.5 over a lower half-width of 1; exact; +6 over 2
    np.testing.assert_allclose(conformity_scores(y, fc, 80), [0.5, 0.5, 0.0, 3.0])
    np.testing.assert_allclose(conformity_scores(y, fc, 95), [0.25, 0.25, 0.0, 1.5])
    zero = _fc([1, 1], [1, 1], [1, 1], [1, 1], [1, 1])
    assert list(conformity_scores(np.array([1.0, 2.0]), zero, 80)) == [0.0, np.inf]


def test_conformal_factor_is_the_finite_sample_quantile():
    scores = np.arange(1, 11) / 10.0  # 0.1 .. 1.0, shuffled below
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(scores)
    assert conformal_factor(shuffled, 80) == pytest.approx(0.9)  # ceil(11 * 0.8) = 9th
    assert conformal_factor(shuffled, 50) == pytest.approx(0.6)  # ceil(5.5) = 6th
    assert conformal_factor(shuffled, 95) is None  # ceil(10.45) = 11th of 10
    assert conformal_factor(np.arange(1, 20) / 19.0, 95) == pytest.approx(1.0)  # 19th of 19
    assert conformal_factor(np.array([0.1, np.inf, 0.2]), 50) == pytest.approx(0.2)
    assert conformal_factor(np.array([0.1, np.inf, 0.2]), 80) is None  # the quantile is a miss at 0 width


def test_conformal_factors_pool_the_windows():
    # two windows of 5 steps on a series of 20; forecast 0 with half-widths 1 (80) and 2 (95)
    y = np.zeros(20)
    y[10:15] = [0.1, -0.2, 0.3, -0.4, 0.5]
    y[15:20] = [-0.6, 0.7, -0.8, 0.9, -1.0]
    fc = _fc(np.zeros(5), -np.ones(5), np.ones(5), -2 * np.ones(5), 2 * np.ones(5))
    windows = [{"cutoff": 10, "forecast": fc}, {"cutoff": 15, "forecast": fc}]
    factors, n = conformal_factors(windows, y, [80, 95], min_residuals=10)
    assert n == 10
    # scores at 80: 0.1 .. 1.0 -> the 9th, 0.9; at 95 the 11th of 10 is needed: no factor
    assert factors == pytest.approx({80: 0.9})
    assert conformal_factors(windows, y, [80], min_residuals=11) == ({}, 10)
    assert conformal_factors([], y, [80], min_residuals=1) == ({}, 0)
    assert shrunk({80: 0.25, 95: 4.0}, 0.5) == pytest.approx({80: 0.5, 95: 2.0})
    assert shrunk({80: 0.25}, 0) == {80: 1.0} and shrunk({80: 0.25}, 1) == {80: 0.25}


# -- the adjusted model ----------------------------------------------------------------
class Flat(Forecaster):
    """A constant forecast with fixed half-widths 1 (80) and 2 (95)."""

    name = "fake_flat"
    LEVEL = 0.2

    def fit(self, y, X=None, ts=None):
        self.level_ = float(self.LEVEL)
        return self

    def predict(self, h, X=None, level=(80, 95)):
        mean = np.full(h, self.level_)
        out = {"mean": mean}
        for lv in level:
            half = 1.0 if lv == 80 else 2.0
            out[f"lo-{lv}"], out[f"hi-{lv}"] = mean - half, mean + half
        return out

    def get_state(self):
        return {"level": self.level_}

    def set_state(self, state):
        self.level_ = float(state["level"])


@pytest.fixture
def flat(monkeypatch):
    from forecasting.models import MODELS

    monkeypatch.setitem(MODELS, Flat.name, Flat)
    return Flat().fit(np.zeros(3))


def test_adjusted_widths_are_the_base_widths_times_the_factors(flat):
    model = AdjustedForecaster(flat, {80: 0.5, 95: 1.5})
    fc = model.predict(4, level=[80, 95])
    np.testing.assert_allclose(fc["mean"], 0.2)
    np.testing.assert_allclose(fc["hi-80"] - fc["mean"], 0.5)  # 1 x 0.5
    np.testing.assert_allclose(fc["mean"] - fc["lo-80"], 0.5)
    np.testing.assert_allclose(fc["hi-95"] - fc["mean"], 3.0)  # 2 x 1.5
    assert model.name == "fake_flat" and model.members == [flat]
    # a level without a factor is the model's own
    fc = model.predict(4, level=[50, 80])
    np.testing.assert_allclose(fc["hi-50"] - fc["mean"], 2.0)  # Flat's "else" half-width
    # a wider level is never narrower than a narrower one
    fc = AdjustedForecaster(flat, {80: 3.0, 95: 1.0}).predict(2, level=[80, 95])
    np.testing.assert_allclose(fc["hi-95"], fc["hi-80"])
    np.testing.assert_allclose(fc["lo-95"], fc["lo-80"])


def test_nonnegative_bounds_clip_everything_at_zero(flat):
    fc = AdjustedForecaster(flat, {80: 0.5}, "nonnegative").predict(3, level=[80, 95])
    np.testing.assert_allclose(fc["mean"], 0.2)
    np.testing.assert_allclose(fc["lo-80"], 0.0)  # 0.2 - 0.5
    np.testing.assert_allclose(fc["hi-80"], 0.7)
    np.testing.assert_allclose(fc["lo-95"], 0.0)
    np.testing.assert_allclose(fc["hi-95"], 2.2)
    with pytest.raises(ModelError, match="bounds"):
        AdjustedForecaster(flat, {}, "positive")
    with pytest.raises(ModelError, match="factor"):
        AdjustedForecaster(flat, {80: float("nan")})


def test_round_trip_through_model_json(flat):
    model = AdjustedForecaster(flat, {80: 0.75, 95: 1.25}, "nonnegative", n_residuals=48)
    text = json.dumps(model.to_dict())
    data = json.loads(text)
    # the model's own keys stay at the top, the adjustment beside them
    assert data["model"] == "fake_flat" and data["state"] == {"level": 0.2}
    assert data["calibration"] == {
        "method": "conformal",
        "factors": {"80": 0.75, "95": 1.25},
        "n_residuals": 48,
    }
    assert data["bounds"] == "nonnegative"
    loaded = load_fitted(text)
    assert isinstance(loaded, AdjustedForecaster)
    assert loaded.factors == {80: 0.75, 95: 1.25} and loaded.bounds == "nonnegative"
    for key, value in model.predict(5).items():
        np.testing.assert_array_equal(loaded.predict(5)[key], value)
    assert json.loads(json.dumps(loaded.to_dict())) == data


def test_ensemble_round_trip_keeps_members_at_the_top():
    y = 5 + np.sin(np.arange(24 * 7) * 2 * np.pi / 24) + np.random.default_rng(1).normal(0, 0.2, 24 * 7)
    members = [get_model("seasonal_naive", season_length=24).fit(y), get_model("weekly_naive").fit(y)]
    from forecasting.models import EnsembleForecaster

    model = AdjustedForecaster(EnsembleForecaster(members, "mean"), {80: 0.5})
    data = json.loads(json.dumps(model.to_dict()))
    assert data["model"] == "ensemble" and len(data["members"]) == 2 and "calibration" in data
    loaded = load_fitted(json.dumps(data))
    base = EnsembleForecaster(members, "mean").predict(H)
    got = loaded.predict(H)
    np.testing.assert_allclose(got["hi-80"] - got["mean"], 0.5 * (base["hi-80"] - base["mean"]))


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.json")), ids=lambda p: p.stem)
def test_old_model_json_loads_unadjusted(path):
    if path.stem == "prophet":
        pytest.importorskip("prophet")
    loaded = load_fitted(path.read_text())
    assert not isinstance(loaded, AdjustedForecaster)


# -- training --------------------------------------------------------------------------
def _series(n=24 * 12, base=10.0, noise=0.3, sid="m-1", seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    y = base + 3 * np.sin(2 * np.pi * t / 24) + rng.normal(0, noise, n)
    ts = pd.date_range("2024-03-01", periods=n, freq="h")
    return pd.DataFrame({"series_id": sid, "ts": ts, "y": y})


def _cfg(**kw):
    data = {"horizon": H, "models": ["seasonal_naive"], "backtest": {"windows": 2}, "model_timeout_s": 30}
    data.update(kw)
    return from_dict(data)


def test_training_stores_the_factors_of_the_chosen_models_backtest():
    pdf = _series()
    row = process_series(pdf, _cfg(intervals={"strength": 1})).iloc[0]
    assert row.status == "ok"
    data = json.loads(row.model_json)
    assert data["model"] == "seasonal_naive" and "bounds" not in data
    # the same factors, computed from the same backtest by hand
    from forecasting.backtest import backtest

    y = pdf["y"].to_numpy()
    windows = backtest(
        lambda: get_model("seasonal_naive", season_length=24, seasonalities=(24, 168), freq="h"),
        y,
        None,
        None,
        horizon=H,
        windows=2,
        step=H,
        levels=[80, 95],
        m=24,
    )
    want, n = conformal_factors(windows, y, [80, 95], 24)
    assert n == 48 and data["calibration"]["n_residuals"] == 48
    assert {int(k): v for k, v in data["calibration"]["factors"].items()} == pytest.approx(want)
    # and the stored model's widths are the plain model's times those factors
    plain = load_fitted(json.dumps({k: v for k, v in data.items() if k != "calibration"}))
    assert not isinstance(plain, AdjustedForecaster)
    got, base = load_fitted(row.model_json).predict(H), plain.predict(H)
    for lv in (80, 95):
        np.testing.assert_allclose(
            got[f"hi-{lv}"] - got["mean"], want[lv] * (base[f"hi-{lv}"] - base["mean"])
        )


def test_calibration_none_and_too_few_residuals_leave_model_json_as_before():
    off = process_series(_series(), _cfg(intervals={"calibration": "none"})).iloc[0]
    assert set(json.loads(off.model_json)) == {
        "model",
        "format_version",
        "season_length",
        "seasonalities",
        "freq",
        "params",
        "state",
    }
    few = process_series(_series(), _cfg(intervals={"min_residuals": 49})).iloc[0]
    assert "calibration" not in json.loads(few.model_json)
    assert _cfg().intervals.calibration == "conformal"  # the default


def test_nonnegative_bounds_hold_on_a_series_near_zero():
    pdf = _series(base=0.3, noise=0.4)
    pdf["y"] = pdf["y"].clip(lower=0.0)
    raw = load_fitted(process_series(pdf, _cfg()).iloc[0].model_json).predict(H)
    assert min(v.min() for v in raw.values()) < 0  # without bounds, the intervals go below 0
    row = process_series(pdf, _cfg(bounds="nonnegative")).iloc[0]
    assert json.loads(row.model_json)["bounds"] == "nonnegative"
    fc = load_fitted(row.model_json).predict(H)
    assert all(np.all(v >= 0) for v in fc.values())
    # clipping moves only what was below zero
    for key in raw:
        np.testing.assert_allclose(fc[key], np.maximum(raw[key], 0.0))


# -- the nightly refit -----------------------------------------------------------------
def test_refit_keeps_the_calibration_and_bounds_from_training():
    pdf = _series(base=0.3, noise=0.4)
    config = _cfg(bounds="nonnegative")
    trained = process_series(pdf.iloc[:-H], config)  # trained a day earlier
    data = json.loads(trained.iloc[0].model_json)
    assert data["calibration"]["factors"] and data["bounds"] == "nonnegative"
    specs = refit_specs(trained[["series_id", "model_json"]])
    out = refit_series(with_specs(pdf, specs), config).iloc[0]
    assert out.status == "ok", out.reason
    again = json.loads(out.model_json)
    assert again["calibration"] == data["calibration"] and again["bounds"] == "nonnegative"
    assert again["state"] != data["state"]  # fitted on the newer data
    refitted = load_fitted(out.model_json)
    fc, base = refitted.predict(H), refitted.base.predict(H)
    f80 = data["calibration"]["factors"]["80"]
    want_hi = np.maximum(base["mean"] + f80 * (base["hi-80"] - base["mean"]), 0.0)
    np.testing.assert_allclose(fc["hi-80"], want_hi)
    assert all(np.all(v >= 0) for v in fc.values())
    assert SPEC_COLUMN not in out.index
