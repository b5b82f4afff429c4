"""Rolling-origin windows and the per-window backtest."""

from __future__ import annotations

import numpy as np
import pytest

from forecasting.backtest import backtest, check_forecast, window_cutoffs
from forecasting.errors import DataContractError, ModelError
from forecasting.models import get_model
from forecasting.models.base import Forecaster, normal_intervals


def test_cutoffs_oldest_first_last_window_ends_at_n():
    assert window_cutoffs(100, 10, 3, 5) == [80, 85, 90]
    assert window_cutoffs(100, 10, 1, 10) == [90]
    assert window_cutoffs(100, 10, 3, 10) == [70, 80, 90]


def test_cutoffs_exact_minimum_and_too_short():
    # min_train 2*h = 20, + h 10, + 2 steps of 5 -> 40
    assert window_cutoffs(40, 10, 3, 5) == [20, 25, 30]
    with pytest.raises(DataContractError, match=r"39 observations.*at least 40"):
        window_cutoffs(39, 10, 3, 5)
    assert window_cutoffs(15, 10, 1, 1, min_train=5) == [5]
    with pytest.raises(DataContractError):
        window_cutoffs(14, 10, 1, 1, min_train=5)


@pytest.mark.parametrize("args", [(100, 0, 1, 1), (100, 10, 0, 1), (100, 10, 1, 0)])
def test_cutoffs_refuse_non_positive_arguments(args):
    with pytest.raises(ValueError, match=">= 1"):
        window_cutoffs(*args)


class Recorder(Forecaster):
    """Repeats the last value; records what each fit and predict received."""

    name = "recorder"
    supports_exog = True
    calls: list = []

    def fit(self, y, X=None, ts=None):
        self.last_ = float(y[-1])
        Recorder.calls.append(
            ("fit", id(self), len(y), None if X is None else X.shape, None if ts is None else len(ts))
        )
        return self

    def predict(self, h, X=None, level=(80, 95)):
        Recorder.calls.append(("predict", id(self), h, None if X is None else X.shape))
        return normal_intervals(np.full(h, self.last_), 1.0, level)

    def get_state(self):
        return {"last": self.last_}

    def set_state(self, state):
        self.last_ = state["last"]


def test_backtest_fresh_model_per_window_and_slices():
    Recorder.calls = []
    n, h = 60, 5
    y = np.arange(n, dtype=float)
    X = np.arange(n, dtype=float).reshape(-1, 1)
    ts = np.arange(n).astype("datetime64[h]")
    rows = backtest(Recorder, y, X, ts, horizon=h, windows=3, step=5, levels=[80], m=1)
    assert [r["cutoff"] for r in rows] == [45, 50, 55]
    assert [r["window"] for r in rows] == [0, 1, 2]
    fits = [c for c in Recorder.calls if c[0] == "fit"]
    preds = [c for c in Recorder.calls if c[0] == "predict"]
    assert len({c[1] for c in fits}) == 3  # a new model each window
    assert [c[2:] for c in fits] == [(45, (45, 1), 45), (50, (50, 1), 50), (55, (55, 1), 55)]
    assert [c[2:] for c in preds] == [(h, (h, 1))] * 3
    # last value repeated on a unit trend: errors 1..5, so MAE 3 and bias -3; lag-1 scale 1
    for r in rows:
        assert r["mae"] == pytest.approx(3.0)
        assert r["bias"] == pytest.approx(-3.0)
        assert r["mase"] == pytest.approx(3.0)
        assert set(r["forecast"]) == {"mean", "lo-80", "hi-80"}
        assert len(r["forecast"]["mean"]) == h


def test_backtest_seasonal_naive_exact_on_periodic_series():
    y = np.tile(np.arange(24, dtype=float), 10)
    rows = backtest(
        lambda: get_model("seasonal_naive", season_length=24), y, None, None, 24, 2, 24, [80, 95], 24
    )
    assert len(rows) == 2
    assert all(r["mae"] == 0.0 and r["mase"] == 0.0 and r["coverage_95"] == 1.0 for r in rows)


def test_backtest_too_short_raises_data_contract_error():
    with pytest.raises(DataContractError):
        backtest(Recorder, np.ones(10), None, None, 5, 1, 5, [80], 1)


def test_check_forecast_refuses_bad_output():
    good = {"mean": [1.0, 2.0], "lo-80": [0.0, 1.0], "hi-80": [2.0, 3.0]}
    assert check_forecast(good, 2, [80])["mean"].dtype == float
    with pytest.raises(ModelError, match="expected 3"):
        check_forecast(good, 3, [80])
    with pytest.raises(ModelError, match="'lo-95'"):
        check_forecast(good, 2, [95])
    with pytest.raises(ModelError, match="non-finite"):
        check_forecast({**good, "mean": [1.0, np.nan]}, 2, [80])
    with pytest.raises(ModelError, match="dict"):
        check_forecast([1.0, 2.0], 2, [80])
