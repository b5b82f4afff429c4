"""Conformal calibration of a series' prediction intervals from its backtest.

The chosen model's own intervals were 12.6 points too wide at 80% on held-out EDRP
nights (and a model's Gaussian intervals can as well be too narrow). Its backtest
windows already hold what is needed to correct them: the forecast (with its intervals)
and the actuals of every step of every window.

Per step the *conformity score* is the absolute error in units of the interval's
half-width on the error's side::

    e = y - mean;  r = e / (hi - mean) if e >= 0 else -e / (mean - lo)

so ``r <= f`` exactly when the actual lies inside the interval with both sides scaled
by ``f`` about the mean. The factor of a level ``a`` (a fraction) is the split-conformal
quantile of the ``n`` scores pooled over the windows: the ``ceil((n + 1) * a)``-th
smallest. A series with fewer than ``min_residuals`` scores, or with fewer than that
quantile needs (``ceil((n + 1) * a) > n``), or whose quantile is not finite (a
zero-width interval that missed), gets no factor for that level and keeps the model's
own interval; so does the fallback model, which has no backtest.

The factors are then shrunk toward 1 (the model's own intervals) as ``f ** strength``
(``intervals.strength``, :func:`shrunk`). The chosen model won the choice on the very
windows whose errors calibrate it, so those errors are optimistic, and one day of a
household is a noisy sample of the next: pure per-series conformal factors
(``strength: 1``) covered 75.9% at 80% (93.8% at 95%) on the next day of 125 EDRP
households x 3 days *before* the held-out week of ``benchmarks.nights``; ``0.8``
covered 80.4% (94.6%), which is the default (see ``benchmarks/results/intervals.md``).

The factors applied travel with the fitted model in its ``model_json``
(:mod:`forecasting.models.calibrated`).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np


def conformity_scores(y: np.ndarray, forecast: Mapping[str, Any], level: int) -> np.ndarray:
    """Per step, the absolute error over the half-width on the error's side of the
    ``level`` interval (0 for an exact forecast, ``inf`` for a miss of a zero width)."""
    y = np.asarray(y, dtype=float)
    mean = np.asarray(forecast["mean"], dtype=float)
    err = y - mean
    width = np.where(
        err >= 0,
        np.asarray(forecast[f"hi-{level}"], dtype=float) - mean,
        mean - np.asarray(forecast[f"lo-{level}"], dtype=float),
    )
    miss = np.abs(err)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(width > 0, miss / np.where(width > 0, width, 1.0), np.where(miss > 0, np.inf, 0.0))
    return ratio


def conformal_factor(scores: np.ndarray, level: int) -> float | None:
    """The ``ceil((n + 1) * level / 100)``-th smallest of ``scores``, or ``None``
    when ``n`` is too small for it or it is not finite."""
    scores = np.sort(np.asarray(scores, dtype=float).ravel())
    n = scores.size
    k = math.ceil((n + 1) * level / 100.0 - 1e-12)
    if n == 0 or k > n:
        return None
    value = float(scores[k - 1])
    return value if math.isfinite(value) else None


def conformal_factors(
    windows: Sequence[Mapping[str, Any]], y: np.ndarray, levels: Sequence[int], min_residuals: int
) -> tuple[dict[int, float], int]:
    """Per level, the conformal factor of a candidate's backtest ``windows`` (each with
    ``cutoff`` and ``forecast``) on the series ``y``; and the number of residuals used.
    Levels without a factor (too few residuals, a non-finite quantile) are absent."""
    y = np.asarray(y, dtype=float)
    pairs = []
    for w in windows:
        forecast = w.get("forecast")
        if forecast is None:
            continue
        cut = int(w["cutoff"])
        h = len(forecast["mean"])
        pairs.append((y[cut : cut + h], forecast))
    n = sum(len(actual) for actual, _ in pairs)
    if n < max(int(min_residuals), 1):
        return {}, n
    factors: dict[int, float] = {}
    for lv in levels:
        scores = np.concatenate([conformity_scores(actual, fc, lv) for actual, fc in pairs])
        f = conformal_factor(scores, lv)
        if f is not None:
            factors[int(lv)] = f
    return factors, n


def shrunk(factors: Mapping[int, float], strength: float) -> dict[int, float]:
    """``factors`` shrunk toward 1 in log space: ``f ** strength``."""
    return {lv: float(f) ** float(strength) for lv, f in factors.items()}
