"""Forecast accuracy metrics on plain numpy arrays.

Point metrics: :func:`mae`, :func:`rmse`, :func:`smape` (0..200 scale), :func:`mase`
(scaled by the in-sample MAE of a seasonal naive forecast) and :func:`bias`
(``mean(yhat - y)``: positive means over-forecasting). Interval metrics:
:func:`coverage` and :func:`pinball` (quantile loss). :func:`evaluate` computes all of
them for one forecast dict as a model's ``predict`` returns it, and :func:`score`
turns one metric into a "smaller is better" number for model choice.

Edge cases are decided here, once:

* sMAPE counts a step where both actual and forecast are 0 as a perfect step (0/0 := 0).
* MASE with a zero scale (a perfectly flat, or perfectly seasonal, history) is 0.0 when
  the forecast errors are all 0 too, and ``inf`` otherwise: any error is infinitely
  worse than the naive forecast, which was perfect in sample. A history too short for
  even a lag-1 difference (fewer than 2 points) gives ``nan``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

POINT_METRICS = ("mae", "rmse", "smape", "mase", "bias")


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


def mase(y, yhat, insample, m: int) -> float:
    """Mean absolute scaled error: ``mae(y, yhat) / naive_scale(insample, m)``.

    A zero scale gives 0.0 when the forecast is exact and ``inf`` otherwise; see the
    module docstring.
    """
    err = mae(y, yhat)
    scale = naive_scale(insample, m)
    if np.isnan(scale):
        return float("nan")
    if scale == 0.0:
        return 0.0 if err == 0.0 else float("inf")
    return float(err / scale)


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
        insample: the training history (for the MASE scale).
        m: season length for the MASE scale.
        levels: interval levels (percent).

    Returns:
        ``mae, rmse, smape, mase, bias`` then ``coverage_<lv>, pinball_<lv>`` per level.
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
