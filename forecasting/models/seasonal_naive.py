"""Seasonal naive: the value one season ago. The fallback for every series."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from forecasting.errors import ModelError
from forecasting.models.base import Field, Forecaster, Param, clean_y, normal_intervals


class SeasonalNaive(Forecaster):
    """``yhat[t+h] = y[t+h-m*k]``; intervals from the seasonal-difference residuals,
    widening with the number of seasons ahead (as in statsforecast's SeasonalNaive).

    Params: ``season`` overrides ``season_length``.
    """

    name = "seasonal_naive"
    description = "Repeats the last season; the fallback model (configurable season)."
    parameters = (Param("season", int, lambda model: model.season_length, within="[1, inf)"),)
    state_fields = (Field("last_season", "array"), Field("sigma"))

    def fit(self, y, X=None, ts=None):
        m = self.season
        y = clean_y(self.name, y, None)
        if len(y) == 0:
            raise ModelError("seasonal_naive needs at least one observation")
        m = min(m, len(y))
        self.last_season_ = y[-m:].copy()
        resid = y[m:] - y[:-m] if len(y) > m else np.zeros(1)
        self.sigma_ = float(np.sqrt(np.mean(resid**2))) if len(resid) else 0.0
        return self

    def predict(self, h, X=None, level: Sequence[int] = (80, 95)):
        m = len(self.last_season_)
        idx = np.arange(h)
        mean = self.last_season_[idx % m]
        k = idx // m + 1
        return normal_intervals(mean, self.sigma_ * np.sqrt(k), level)


class WeeklyNaive(SeasonalNaive):
    """Seasonal naive at the longest season (a week for sub-daily data): the value at
    the same time last week. For load with a weekly rhythm (weekends, opening hours) it
    is a strong, nearly free baseline.

    Params: ``season`` overrides the longest of ``seasonalities``.
    """

    name = "weekly_naive"
    description = "Repeats the last week (the longest season); a strong baseline for load."
    parameters = (Param("season", int, lambda model: model.longest_season, within="[1, inf)"),)

    def fit(self, y, X=None, ts=None):
        self.params = {**self.params, "season": self.season}  # the season used, in model_json
        return super().fit(y, X, ts)
