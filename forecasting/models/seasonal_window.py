"""Seasonal window: the median (or mean) of the same phase over the last ``k`` seasons.

For noisy loads (a household's half-hours) the value one season ago is a poor point
forecast: one evening's kettle is not the next evening's. The median of the same
half-hour over the last two or three weeks of days, pooled with its neighbouring steps,
is a robust estimate of the typical level at that time of day, and the median is what
an absolute error (MAE, MASE) rewards. Measured on days before the held-out EDRP week
(``benchmarks/results/real_data.md``) it was 26-27% better than the daily seasonal
naive on mean MASE, where ETS, Theta and MSTL were 5-12% better.

Load on Saturdays and Sundays is often not weekday load (offices, shops, some homes).
With ``daytype: split`` (sub-daily data whose season is one day, timestamps given) each
forecast step pools only the window's days of its own day type, Monday-Friday or
Saturday-Sunday: the "similar day" profile of load forecasting. ``auto`` splits a series
only where that forecasts its own window better, each day left out in turn and forecast
from the others (:meth:`SeasonalWindow._split_helps`): fewer days pooled are noisier, and
for most households the weekly rhythm is too weak to pay for it. Measured one day ahead
on the week before the held-out EDRP week (200 households) ``auto`` was level with
``ignore`` (mean MASE 0.6964 vs 0.6965; it split 4.5% of the fits) and on generated
meters with weekend profiles 21% better (0.600 vs 0.759; it split 83%); ``split``
everywhere was 1.6% worse on EDRP. In the nightly (``benchmarks.real_data``, 200 EDRP
households) ``auto`` was 0.4% worse than ``ignore`` on that week and 0.4% better on the
held-out one; it is the default (a model carried into the weekend keeps a weekday
profile otherwise).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from forecasting.errors import ModelError
from forecasting.frequency import is_calendar, step_of
from forecasting.models.base import Field, Forecaster, Param, check_h, clean_y
from forecasting.models.cold_profile import phases

DAY = np.timedelta64(1, "D")


class SeasonalWindow(Forecaster):
    """``yhat[t+h]`` = median (or mean) of the values at the same phase of the season in
    the last ``seasons`` seasons, each pooled with its ``spread`` neighbouring steps on
    either side (at most ``seasons * (2 * spread + 1)`` values per phase).

    Intervals: the empirical quantiles of the same pooled values (the 80% interval runs
    from their 10% to their 90% quantile), widened to contain the point forecast; they
    do not grow with the horizon (the forecast repeats the profile season after
    season). Conformal calibration (``intervals.calibration``) rescales them like any
    model's.

    Params:
        season: steps in the season (default ``season_length``: a day for sub-daily data).
        seasons: how many past seasons are pooled (default 14; fewer when the history is
            shorter, at least one).
        spread: neighbouring steps pooled on each side of a phase (default 1; 0 = the
            phase alone).
        method: ``median`` (default) or ``mean``.
        daytype: ``auto`` (default: split where leaving each day out shows it
            forecasts better), ``split`` (each forecast step pools the window's days of
            its own type: weekday or weekend) or ``ignore`` (every day pooled). Needs
            the timestamps and a season of one day of sub-daily steps; otherwise, or
            when the window holds no day of a step's type, every day is pooled.
        split_margin: ``auto`` splits only when that cuts the left-out days' absolute
            error by more than this share (default 0.03: a chance gain on a series
            without a weekly rhythm is not enough).
    """

    name = "seasonal_window"
    description = "Median of the same time of day over the last weeks; robust for noisy load."
    parameters = (
        Param("season", int, lambda model: model.season_length, within="[1, inf)"),
        Param("seasons", int, 14, within="[1, inf)"),
        Param("spread", int, 1, within="[0, inf)"),
        Param("method", str, "median", choices=("median", "mean")),
        Param("daytype", str, "auto", choices=("ignore", "split", "auto")),
        Param("split_margin", float, 0.03, within="[0, 1)"),
    )
    # next_phase: the step of the week (0 = Monday 00:00) of the first forecast step,
    # with daytype on; None: every day pooled alike
    state_fields = (Field("window", "array"), Field("next_phase", "int", optional=True))

    def fit(self, y, X=None, ts=None):
        y = clean_y(self.name, y, None)
        m = min(self.season, len(y))
        if m < 1:
            raise ModelError("seasonal_window needs at least one observation")
        k = max(1, min(self.seasons, len(y) // m))
        self.window_ = y[len(y) - k * m :].reshape(k, m).copy()  # oldest season first
        whole = m == self.season  # a shorter history: one partial season, no day types
        self.next_phase_ = self._next_phase(ts, len(y)) if self.daytype != "ignore" and whole else None
        if self.daytype == "auto" and self.next_phase_ is not None and not self._split_helps():
            self.next_phase_ = None
        return self

    def _split_helps(self) -> bool:
        """Whether each day of the window is forecast better from the other days of its
        own type than from all the other days (leave one day out, medians, absolute
        error): a weekly rhythm strong enough to pay for the fewer days pooled."""
        w = self.window_
        k, m = w.shape
        if k < 3:
            return False
        weekend = self._weekend()
        others = np.array([[j for j in range(k) if j != r] for r in range(k)])  # (k, k - 1)
        values = w[others]  # (k, k - 1, m): every other day of each day
        blind = np.median(values, axis=1)
        same = weekend[others] == weekend[:, None, :]
        (split,) = nan_quantiles(np.where(same, values, np.nan), [0.5], axis=1)
        split = np.where(np.isnan(split), blind, split)
        return float(np.abs(split - w).sum()) < (1.0 - self.split_margin) * float(np.abs(blind - w).sum())

    def _next_phase(self, ts, n: int) -> int | None:
        """The step of the week of the step after ``ts[-1]``, or None when day types do
        not apply (no timestamps, a calendar frequency, a season other than a day)."""
        if ts is None or len(ts) != n or n == 0 or is_calendar(self.freq):
            return None
        if self.season * step_of(self.freq).to_timedelta64() != DAY:
            return None
        week = 7 * self.season
        return int((phases(ts[-1:], self.freq, week)[0] + 1) % week)

    def _weekend(self) -> np.ndarray | None:
        """(k, m) booleans: each cell of the window on a Saturday or Sunday (None: day
        types off)."""
        if self.next_phase_ is None:
            return None
        k, m = self.window_.shape
        back = (np.arange(k)[:, None] - k) * m + np.arange(m)[None, :]  # steps from the next one
        day = ((self.next_phase_ + back) % (7 * m)) // m  # 0 = Monday
        return day >= 5

    def _pooled(self) -> np.ndarray:
        """(phase, values) of every phase's pooled window values."""
        w = self.window_
        k, m = w.shape
        s = min(self.spread, (m - 1) // 2)
        flat = w.ravel()
        cols = []
        for d in range(-s, s + 1):  # neighbours by position in time, clipped at the ends
            idx = np.clip(np.arange(k * m) + d, 0, k * m - 1)
            cols.append(flat[idx].reshape(k, m))
        return np.concatenate(cols, axis=0).T  # (m, k * (2s + 1))

    def predict(self, h, X=None, level: Sequence[int] = (80, 95)):
        h = check_h(h)
        pooled = self._pooled()
        m = pooled.shape[0]
        idx = np.arange(h) % m
        weekend = self._weekend()
        if weekend is None:
            return self._profile(pooled, level, idx)
        # each step from the days of its own type (a neighbour pooled follows its centre)
        k = weekend.shape[0]
        cells = np.tile(weekend.T, (1, pooled.shape[1] // k))  # (m, k * (2s + 1)) like pooled
        ahead = ((self.next_phase_ + np.arange(h)) % (7 * m)) // m >= 5
        out: dict[str, np.ndarray] = {}
        for kind in (False, True):
            steps = ahead == kind
            if not steps.any():
                continue
            mine = cells == kind
            values = pooled if not mine.any(axis=1).all() else np.where(mine, pooled, np.nan)
            part = self._profile(values, level, idx[steps])
            for key, v in part.items():
                out.setdefault(key, np.empty(h))[steps] = v
        return out

    def _profile(self, pooled: np.ndarray, level: Sequence[int], idx: np.ndarray) -> dict[str, np.ndarray]:
        """The point forecast and bounds of each phase's pooled values (NaN: left out),
        at the phases ``idx``."""
        qs = [q for lv in level for q in ((1.0 - lv / 100.0) / 2.0, (1.0 + lv / 100.0) / 2.0)]
        if np.isnan(pooled).any():
            median, *bounds = nan_quantiles(pooled, [0.5, *qs], axis=1)
            center = median if self.method == "median" else np.nanmean(pooled, axis=1)
        else:
            center = np.median(pooled, axis=1) if self.method == "median" else pooled.mean(axis=1)
            bounds = list(np.quantile(pooled, qs, axis=1)) if qs else []
        out = {"mean": center[idx]}
        for i, lv in enumerate(level):
            lo, hi = bounds[2 * i], bounds[2 * i + 1]
            out[f"lo-{lv}"] = np.minimum(lo, center)[idx]
            out[f"hi-{lv}"] = np.maximum(hi, center)[idx]
        return out


def nan_quantiles(values: np.ndarray, qs: Sequence[float], axis: int) -> list[np.ndarray]:
    """``np.nanquantile(values, q, axis)`` (linear interpolation) for each ``q``, by one
    sort (NaN last) and a gather: ``np.nanquantile`` runs a Python loop per slice, ~50x
    slower on the small (phases x pooled values) arrays here. All-NaN slices give NaN."""
    ordered = np.sort(values, axis=axis)
    n = np.sum(~np.isnan(values), axis=axis, keepdims=True)
    out = []
    for q in qs:
        pos = q * np.maximum(n - 1, 0)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, np.maximum(n - 1, 0))
        a = np.take_along_axis(ordered, lo, axis)
        b = np.take_along_axis(ordered, hi, axis)
        quantile = np.where(n > 0, a + (b - a) * (pos - lo), np.nan)
        out.append(np.squeeze(quantile, axis=axis))
    return out
