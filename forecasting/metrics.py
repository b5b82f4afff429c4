"""Forecast accuracy metrics on plain numpy arrays.

Point metrics: :func:`mae`, :func:`rmse`, :func:`smape` (0..200 scale), :func:`mase`
(scaled by the in-sample MAE of a seasonal naive forecast), :func:`bias`
(``mean(yhat - y)``: positive means over-forecasting), and the two scaled errors retail
forecasters compare on, which stay defined on series with many zeros: :func:`rmsse`
(the M5 competition's root mean squared scaled error) and :func:`scaled_mae` (the MAE
over the in-sample mean, Kourentzes' "MAE/mean"). Interval metrics:
:func:`coverage` and :func:`pinball` (quantile loss). :func:`evaluate` computes all of
them for one forecast dict as a model's ``predict`` returns it, and :func:`score`
turns one metric into a "smaller is better" number for model choice.

Edge cases are decided here, once:

* sMAPE counts a step where both actual and forecast are 0 as a perfect step (0/0 := 0);
  a step where only one of them is 0 counts 200 (the maximum). sMAPE is therefore
  defined on intermittent series but says little there: prefer ``scaled_mae`` or
  ``rmsse``.
* A scale that is 0 never divides: each scaled metric falls back, in order, to the next
  scale of the same kind that is not 0 (:func:`scale_chain`):

  - MASE: the seasonal-naive in-sample MAE at lag ``m``; else the lag-1 naive MAE (a
    perfectly seasonal history can still move step to step); else the in-sample mean
    absolute value (a flat history: the error relative to its level); else 1 (an
    all-zero history, e.g. a backtest window before an item's first sale: the MAE
    itself, in the units of ``y``).
  - RMSSE: the in-sample mean squared lag-1 difference; else the mean square of the
    history; else 1 (the RMSE itself).
  - scaled MAE: the in-sample mean absolute value; else 1 (the MAE itself).

  So a perfect forecast scores 0.0 and any other a finite number, and the candidates of
  a series rank by their error whatever its history. A history too short for a lag-1
  difference (fewer than 2 points) gives ``nan`` for MASE and RMSSE (no scale can be
  judged), as before.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

POINT_METRICS = ("mae", "rmse", "smape", "mase", "bias", "rmsse", "scaled_mae")


def _pair(y, yhat) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=float).ravel()
    yhat = np.asarray(yhat, dtype=float).ravel()
    if y.shape != yhat.shape:
        raise ValueError(
            f"actuals have {y.size} values but the forecast has {yhat.size}: expected equal lengths"
        )
    return y, yhat


def mae(y, yhat) -> float:
    """Mean absolute error."""
    y, yhat = _pair(y, yhat)
    return float(np.mean(np.abs(y - yhat)))


def rmse(y, yhat) -> float:
    """Root mean squared error."""
    y, yhat = _pair(y, yhat)
    return float(np.sqrt(np.mean((y - yhat) ** 2)))


def smape(y, yhat) -> float:
    """Symmetric MAPE on the 0..200 scale: ``200 * mean(|y - yhat| / (|y| + |yhat|))``.

    A step where both ``y`` and ``yhat`` are 0 counts as 0 (a perfect forecast of zero
    consumption is not an error).
    """
    y, yhat = _pair(y, yhat)
    num = np.abs(y - yhat)
    den = np.abs(y) + np.abs(yhat)
    ratio = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    return float(200.0 * np.mean(ratio))


def naive_scale(insample, m: int) -> float:
    """In-sample MAE of the seasonal naive forecast at lag ``m``; lag 1 when the history
    has no more than ``m`` points; ``nan`` with fewer than 2 points."""
    x = np.asarray(insample, dtype=float).ravel()
    lag = int(m) if m and int(m) >= 1 and x.size > int(m) else 1
    if x.size <= lag:
        return float("nan")
    return float(np.mean(np.abs(x[lag:] - x[:-lag])))


def scale_chain(*scales: float) -> float:
    """The first of ``scales`` that is neither 0 nor ``nan``; 1.0 when none is (the
    fallback rule of the module docstring)."""
    for value in scales:
        if np.isfinite(value) and value > 0.0:
            return float(value)
    return 1.0


def _insample(insample) -> np.ndarray:
    return np.asarray(insample, dtype=float).ravel()


def mase_scale(insample, m: int) -> float:
    """The denominator of :func:`mase` for this history: the seasonal naive in-sample
    MAE at lag ``m``; when that is 0, the lag-1 naive MAE, then the in-sample mean
    absolute value, then 1 (:func:`scale_chain`); ``nan`` for fewer than 2 points."""
    x = _insample(insample)
    scale = naive_scale(x, m)
    if np.isnan(scale):
        return float("nan")
    return scale_chain(scale, naive_scale(x, 1), float(np.mean(np.abs(x))))


def mase(y, yhat, insample, m: int) -> float:
    """Mean absolute scaled error: ``mae(y, yhat) / mase_scale(insample, m)``.

    A zero scale falls back to the lag-1 naive MAE, then the in-sample mean absolute
    value, then 1; fewer than 2 in-sample points give ``nan`` (module docstring).
    """
    return float(mae(y, yhat) / mase_scale(insample, m))


def rmsse(y, yhat, insample) -> float:
    """Root mean squared scaled error (M5): ``sqrt(mean((y - yhat)^2) / mean(diff(insample)^2))``
    with the lag-1 naive forecast's in-sample squared error as the scale, as in the M5
    competition. A zero scale falls back to the history's mean square, then 1; fewer
    than 2 in-sample points give ``nan`` (module docstring)."""
    y, yhat = _pair(y, yhat)
    x = _insample(insample)
    if x.size < 2:
        return float("nan")
    scale = scale_chain(float(np.mean(np.diff(x) ** 2)), float(np.mean(x**2)))
    return float(np.sqrt(np.mean((y - yhat) ** 2) / scale))


def scaled_mae(y, yhat, insample) -> float:
    """MAE over the in-sample mean absolute value (the "MAE/mean" of intermittent-demand
    studies): defined whenever the history has a demand, and never divided by a zero
    naive error. An all-zero (or empty) history scales by 1 (module docstring)."""
    err = mae(y, yhat)
    x = _insample(insample)
    return float(err / scale_chain(float(np.mean(np.abs(x))) if x.size else 0.0))


def bias(y, yhat) -> float:
    """Mean forecast error ``mean(yhat - y)``; positive means over-forecasting."""
    y, yhat = _pair(y, yhat)
    return float(np.mean(yhat - y))


def coverage(y, lo, hi) -> float:
    """Share of actuals inside the closed interval ``[lo, hi]``."""
    y, lo = _pair(y, lo)
    _, hi = _pair(y, hi)
    return float(np.mean((y >= lo) & (y <= hi)))


def pinball(y, q, tau: float) -> float:
    """Mean quantile (pinball) loss of quantile forecast ``q`` at probability ``tau``."""
    if not 0.0 < tau < 1.0:
        raise ValueError(f"tau={tau!r}: expected a probability strictly between 0 and 1")
    y, q = _pair(y, q)
    d = y - q
    return float(np.mean(np.maximum(tau * d, (tau - 1.0) * d)))


def evaluate(
    y, forecast: Mapping[str, np.ndarray], insample, m: int, levels: Sequence[int]
) -> dict[str, float]:
    """Every metric for one forecast.

    Args:
        y: actuals of the forecast steps.
        forecast: ``{"mean", "lo-<lv>", "hi-<lv>"}`` arrays as ``predict`` returns them.
        insample: the training history (for the scales of MASE, RMSSE and scaled MAE).
        m: season length for the MASE scale.
        levels: interval levels (percent).

    Returns:
        ``mae, rmse, smape, mase, bias, rmsse, scaled_mae`` then ``coverage_<lv>, pinball_<lv>`` per level.
        The pinball loss of a level is the mean of the losses of its lower bound (at
        ``tau = 0.5 - lv/200``) and its upper bound (``tau = 0.5 + lv/200``). A level
        the forecast has no interval for gets ``nan`` for both.
    """
    mean = forecast["mean"]
    out = {
        "mae": mae(y, mean),
        "rmse": rmse(y, mean),
        "smape": smape(y, mean),
        "mase": mase(y, mean, insample, m),
        "bias": bias(y, mean),
        "rmsse": rmsse(y, mean, insample),
        "scaled_mae": scaled_mae(y, mean, insample),
    }
    for lv in levels:
        lo, hi = forecast.get(f"lo-{lv}"), forecast.get(f"hi-{lv}")
        if lo is None or hi is None:
            out[f"coverage_{lv}"] = out[f"pinball_{lv}"] = float("nan")
            continue
        out[f"coverage_{lv}"] = coverage(y, lo, hi)
        out[f"pinball_{lv}"] = 0.5 * (pinball(y, lo, 0.5 - lv / 200.0) + pinball(y, hi, 0.5 + lv / 200.0))
    return out


def score(metrics: Mapping[str, float], metric_name: str) -> float:
    """One metric from :func:`evaluate` output as "smaller is better".

    ``bias`` scores ``abs(bias)``; ``pinball`` scores the mean of every ``pinball_<lv>``
    present; ``coverage`` scores the mean of ``|coverage_<lv> - lv/100|``; the other
    names score their value as is. A missing metric scores ``nan``.
    """
    if metric_name == "bias":
        return abs(float(metrics.get("bias", float("nan"))))
    if metric_name in ("pinball", "coverage"):
        prefix = metric_name + "_"
        values = []
        for key, value in metrics.items():
            if key.startswith(prefix):
                v = float(value)
                if metric_name == "coverage":
                    v = abs(v - int(key[len(prefix) :]) / 100.0)
                values.append(v)
        return float(np.mean(values)) if values else float("nan")
    return float(metrics.get(metric_name, float("nan")))
