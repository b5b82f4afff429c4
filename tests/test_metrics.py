"""Metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from forecasting import metrics as M


def test_point_metrics_by_hand():
    y, yhat = [1, 2, 3], [2, 2, 2]
    assert M.mae(y, yhat) == pytest.approx(2 / 3)
    assert M.rmse(y, yhat) == pytest.approx(math.sqrt(2 / 3))
    assert M.bias(y, yhat) == pytest.approx(0.0)
    # |1-2|/(1+2) + 0 + |3-2|/(3+2) = 1/3 + 1/5, averaged, times 200
    assert M.smape(y, yhat) == pytest.approx(200 * (1 / 3 + 1 / 5) / 3)


def test_bias_sign_means_over_forecast():
    assert M.bias([1, 1], [2, 4]) == pytest.approx(2.0)
    assert M.bias([2, 4], [1, 1]) == pytest.approx(-2.0)


def test_smape_zero_over_zero_is_zero():
    assert M.smape([0, 0, 1], [0, 1, 1]) == pytest.approx(200 / 3)
    assert M.smape([0, 0], [0, 0]) == 0.0
    assert M.smape([0], [5]) == pytest.approx(200.0)


def test_mase_with_known_scale():
    # lag-2 naive errors in sample: |2-0|, |12-10| -> scale 2; forecast MAE 2
    assert M.naive_scale([0, 10, 2, 12], 2) == pytest.approx(2.0)
    assert M.mase([4, 14], [2, 12], [0, 10, 2, 12], 2) == pytest.approx(1.0)
    # lag 1 on a unit trend: scale 1
    assert M.mase([6, 7], [7, 9], [1, 2, 3, 4, 5], 1) == pytest.approx(1.5)


def test_mase_falls_back_to_lag_one_when_history_is_short():
    assert M.naive_scale([1, 3], 24) == pytest.approx(2.0)
    assert M.mase([5], [4], [1, 3], 24) == pytest.approx(0.5)


def test_mase_zero_scale_and_too_short():
    flat = [3, 3, 3, 3]
    assert M.mase([3, 3], [3, 3], flat, 1) == 0.0
    # a flat history: the error relative to its level (MAE 0.5 / mean 3)
    assert M.mase([3, 4], [3, 3], flat, 1) == pytest.approx(0.5 / 3)
    assert math.isnan(M.mase([1], [1], [5], 1))


def test_zero_scales_fall_back_in_order_and_never_divide_by_zero():
    # perfectly seasonal at lag 2: the lag-2 naive is exact, lag 1 is not (scale 10)
    seasonal = [0, 10, 0, 10, 0, 10]
    assert M.naive_scale(seasonal, 2) == 0.0
    assert M.mase([0, 10], [5, 5], seasonal, 2) == pytest.approx(0.5)
    # an all-zero history (a backtest window before an item's first sale): scale 1
    zeros = [0.0] * 8
    assert M.mase([0, 2], [0, 0], zeros, 7) == pytest.approx(1.0)
    assert M.rmsse([0, 2], [0, 0], zeros) == pytest.approx(math.sqrt(2))
    assert M.scaled_mae([0, 2], [0, 0], zeros) == pytest.approx(1.0)
    for f in (
        M.mase([0, 0], [0, 0], zeros, 7),
        M.rmsse([0, 0], [0, 0], zeros),
        M.scaled_mae([0], [0], zeros),
    ):
        assert f == 0.0
    assert M.scale_chain(0.0, float("nan"), 4.0) == 4.0
    assert M.scale_chain(0.0) == 1.0


def test_rmsse_and_scaled_mae_by_hand_on_intermittent_demand():
    history = [0, 0, 3, 0, 0, 0, 1, 0]  # lag-1 squared diffs: 9 + 9 + 1 + 1 = 20 over 7
    y, yhat = [0, 2, 0, 0], [0.5, 0.5, 0.5, 0.5]
    mse = (0.25 + 2.25 + 0.25 + 0.25) / 4
    assert M.rmsse(y, yhat, history) == pytest.approx(math.sqrt(mse / (20 / 7)))
    assert M.scaled_mae(y, yhat, history) == pytest.approx(((0.5 * 3 + 1.5) / 4) / (4 / 8))
    assert math.isnan(M.rmsse([1], [1], [5]))
    # sMAPE on zeros is defined: a step with both 0 scores 0, one zero 200
    assert M.smape([0, 0], [0, 1]) == pytest.approx(100.0)


def test_evaluate_reports_the_scaled_metrics_and_the_config_accepts_them():
    from forecasting.config import METRIC_NAMES

    out = M.evaluate([0, 2], {"mean": np.array([1.0, 1.0])}, [0, 1, 0, 3], 1, [])
    assert {"rmsse", "scaled_mae"} <= set(out) and {"rmsse", "scaled_mae"} <= set(METRIC_NAMES)
    assert M.score(out, "scaled_mae") == pytest.approx(1.0 / 1.0)


def test_coverage_closed_interval():
    y = [1, 2, 3, 4]
    assert M.coverage(y, [0, 2, 4, 0], [2, 2, 5, 3]) == pytest.approx(0.5)


def test_pinball_by_hand():
    assert M.pinball([10], [8], 0.9) == pytest.approx(1.8)
    assert M.pinball([10], [12], 0.9) == pytest.approx(0.2)
    y, q = np.array([1.0, 5.0, 2.0]), np.array([2.0, 2.0, 2.0])
    assert M.pinball(y, q, 0.5) == pytest.approx(0.5 * M.mae(y, q))
    with pytest.raises(ValueError, match="tau"):
        M.pinball([1], [1], 1.0)


def test_length_mismatch_is_refused():
    with pytest.raises(ValueError, match="equal lengths"):
        M.mae([1, 2], [1])


def test_evaluate_keys_and_level_pinball():
    forecast = {"mean": np.array([10.0]), "lo-80": np.array([8.0]), "hi-80": np.array([12.0])}
    out = M.evaluate([10.0], forecast, [1.0, 2.0, 3.0], 1, [80, 95])
    assert list(out) == [
        "mae",
        "rmse",
        "smape",
        "mase",
        "bias",
        "rmsse",
        "scaled_mae",
        "coverage_80",
        "pinball_80",
        "coverage_95",
        "pinball_95",
    ]
    assert out["coverage_80"] == 1.0
    # lower bound at tau 0.1: 0.1 * 2; upper at tau 0.9: 0.1 * 2; mean 0.2
    assert out["pinball_80"] == pytest.approx(0.2)
    assert math.isnan(out["coverage_95"]) and math.isnan(out["pinball_95"])


def test_score_is_smaller_is_better():
    m = {
        "mae": 2.0,
        "bias": -3.0,
        "pinball_80": 1.0,
        "pinball_95": 3.0,
        "coverage_80": 0.7,
        "coverage_95": 0.95,
    }
    assert M.score(m, "mae") == 2.0
    assert M.score(m, "bias") == 3.0
    assert M.score(m, "pinball") == pytest.approx(2.0)
    assert M.score(m, "coverage") == pytest.approx(0.05)
    assert math.isnan(M.score(m, "rmse"))
