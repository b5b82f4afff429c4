"""The cold-start model: a profile of similar meters scaled to a new meter's level.

A meter too short for per-series models (fewer observed readings than
``cleaning.min_length``) is forecast from the *profile* of meters like it
(:mod:`forecasting.cold_start` builds the profiles from the established meters and
picks one per meter: same site, else same region, else the fleet). A profile is, per
phase of the longest season (the hour of the week for hourly data), the median of the
similar meters' normalised readings (each meter's reading over its mean level over its
recent history) and quantiles of them, which give the intervals.

``fit`` estimates the new meter's level from its own readings (the level that matches
them best on the phases they fall on: ``sum(y) / sum(shape[phase])``) and where its
history ends in the season; ``predict`` is ``level * shape`` over the next phases, the
interval bounds ``level * quantile``. The profile travels in the model's ``params`` (so a
refit on newer data keeps it and only re-estimates the level); the state is the level
and the phase of the first forecast step. Phases are taken from the timestamps (steps
since Monday 1970-01-05), so a meter that starts on a Wednesday afternoon gets the
Wednesday-afternoon part of the profile.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from forecasting.errors import ModelError
from forecasting.frequency import is_calendar, step_of
from forecasting.models.base import Field, Forecaster

EPOCH = np.datetime64("1970-01-05T00:00:00", "us")  # a Monday: phase 0 of the weekly season
NAME = "cold_profile"


def phases(ts: np.ndarray, freq: str, period: int) -> np.ndarray:
    """The phase (0..period-1) of each timestamp in a season of ``period`` steps of
    ``freq`` (a calendar frequency has one phase: 0)."""
    ts = np.asarray(ts, dtype="datetime64[us]")
    if period <= 1 or is_calendar(freq):
        return np.zeros(len(ts), dtype=np.int64)
    step = np.timedelta64(step_of(freq).value // 1000, "us")
    return ((ts - EPOCH) // step % period).astype(np.int64)


class ColdProfile(Forecaster):
    """``yhat = level * shape[phase]``, intervals ``level * lo/hi[phase]``.

    Params (set by :mod:`forecasting.cold_start`, not by a config): ``source`` (site,
    region, fleet or own), ``key`` (the site or region), ``n_meters``, ``period``,
    ``shape`` (``period`` values), ``lo`` and ``hi`` (per interval level, ``period``
    values each).
    """

    name = NAME
    description = "Cold start: the profile of similar meters scaled to a new meter's level."
    state_fields = (Field("level"), Field("next_phase", "int"))

    def _profile(self) -> tuple[int, np.ndarray]:
        try:
            period = int(self.params["period"])
            shape = np.asarray(self.params["shape"], dtype=float)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{NAME}: its params hold no profile ({exc})") from None
        if period < 1 or len(shape) != period or not np.all(np.isfinite(shape)):
            raise ModelError(f"{NAME}: a profile of {len(shape)} values for a season of {period}")
        return period, shape

    def fit(self, y, X=None, ts=None):
        y = np.asarray(y, dtype=float)
        if len(y) == 0 or not np.all(np.isfinite(y)):
            raise ModelError(f"{NAME} needs at least one finite reading")
        if ts is None or len(ts) != len(y):
            raise ModelError(f"{NAME} needs the readings' timestamps")
        period, shape = self._profile()
        ph = phases(ts, self.freq, period)
        weight = float(shape[ph].sum())
        level = float(y.sum()) / weight if weight > 0 else float(y.mean())
        self.level_ = max(level, 0.0) if np.all(y >= 0) else level
        self.next_phase_ = int((ph[-1] + 1) % period)
        return self

    def predict(self, h, X=None, level: Sequence[int] = (80, 95)) -> dict[str, np.ndarray]:
        period, shape = self._profile()
        idx = (self.next_phase_ + np.arange(int(h))) % period
        out = {"mean": self.level_ * shape[idx]}
        for lv in level:
            lo, hi = self.params.get("lo", {}).get(str(lv)), self.params.get("hi", {}).get(str(lv))
            if lo is None or hi is None:
                raise ModelError(
                    f"{NAME}: the profile has no {lv}% interval (it has {sorted(self.params.get('lo', {}))})"
                )
            bounds = (
                self.level_ * np.asarray(lo, dtype=float)[idx],
                self.level_ * np.asarray(hi, dtype=float)[idx],
            )
            out[f"lo-{lv}"] = np.minimum(np.minimum(*bounds), out["mean"])
            out[f"hi-{lv}"] = np.maximum(np.maximum(*bounds), out["mean"])
        return out


def profile_params(payload: dict[str, Any]) -> dict[str, Any]:
    """The model's params from a profile payload (:func:`forecasting.cold_start.payload`)."""
    keys = ("source", "key", "n_meters", "period", "shape", "lo", "hi")
    return {k: payload[k] for k in keys}


def steps_per_day(freq: str) -> int:
    """Steps of ``freq`` in a day (at least 1; 1 for a calendar frequency)."""
    if is_calendar(freq):
        return 1
    return max(1, int(pd.Timedelta("1D") // step_of(freq)))
