"""Theta method (Assimakopoulos & Nikolopoulos 2000) fitted by statsmodels ``ThetaModel``.

statsmodels estimates the drift ``b0`` (OLS on a time trend) and the SES smoothing
``alpha`` on the deseasonalized series; the forecast is rebuilt here from those numbers,
the SES level and the seasonal factors, which is all the state holds.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from forecasting.errors import ModelError
from forecasting.models.base import Field, Forecaster, Param, check_h, clean_y, normal_intervals, quiet_fit


class Theta(Forecaster):
    """Standard theta method: SES with drift on the seasonally adjusted series.

    The series is deseasonalized at ``season_length`` by classical decomposition
    (multiplicative when the data are positive and ``method="auto"``), unless
    statsmodels' 90% autocorrelation test finds no seasonality. Forecast:
    ``ses + (1 - 1/theta) * b0 * (h - 1 + 1/alpha - (1-alpha)^n / alpha)``, reseasonalized.

    Intervals use the SES / ARIMA(0,1,1) forecast variance
    ``sigma2 * (1 + (h-1) * alpha^2)`` with ``sigma2`` the mean squared one-step SES
    error on the adjusted series, scaled by the seasonal factor when multiplicative.

    Params:
        theta: weight of the trend line, >= 1 (default 2, the classic method).
        deseasonalize: remove the ``season_length`` season first (default ``True``).
        method: ``"auto"``, ``"additive"`` or ``"multiplicative"`` seasonal
            decomposition (default ``"auto"``).
        max_history: fit on at most this many trailing points (default
            ``4 * max(seasonalities)``); ``None`` uses everything.

    Raises:
        ModelError: fewer than two full seasons when deseasonalizing (set
            ``deseasonalize=False`` or give more history), or fewer than 10 points.
    """

    name = "theta"
    description = "Theta method: SES with drift on the deseasonalized series."

    parameters = (
        Param("theta", float, 2.0, within="[1, inf)"),
        Param("deseasonalize", bool, True),
        Param("method", str, "auto", choices=("auto", "additive", "multiplicative")),
        Param.max_history(4),
    )
    state_fields = (
        *(Field(key) for key in ("alpha", "b0", "level")),
        Field("nobs", "int"),
        Field("multiplicative", "bool"),
        Field("season", "array"),
        Field("sigma2"),
    )

    def check(self) -> None:
        if self.deseasonalize:
            self.need_season()

    def fit(self, y, X=None, ts=None):
        from statsmodels.tsa.forecasting.theta import ThetaModel

        y = clean_y(self.name, y, self.max_history)
        m = self.season_length
        min_len = max(10, 2 * m) if self.deseasonalize else 10
        if len(y) < min_len:
            raise ModelError(
                f"theta(deseasonalize={self.deseasonalize}) needs at least {min_len} points "
                f"(two full seasons of {m}); got {len(y)}. Use a longer history or "
                "deseasonalize=False."
            )
        method = self.method
        if method == "multiplicative" and np.min(y) <= 0:
            raise ModelError(
                "theta(method='multiplicative') needs strictly positive data; "
                f"the minimum is {np.min(y):g}. Use method='additive'."
            )
        try:
            with quiet_fit():
                model = ThetaModel(
                    y,
                    period=m if self.deseasonalize else None,
                    deseasonalize=self.deseasonalize,
                    method=method,
                )
                res = model.fit()
                comp = res.forecast_components(m if self.deseasonalize else 1)
        except (ValueError, np.linalg.LinAlgError) as exc:
            raise ModelError(f"theta fit failed on {len(y)} points: {exc}") from exc

        n = len(y)
        mult = self.deseasonalize and model.method.startswith("mul")
        # Factors for steps T+1..T+m; the pattern at in-sample index t is that of step
        # ((t - n) mod m) + 1.
        season = np.asarray(comp["seasonal"], dtype=float)
        if self.deseasonalize:
            in_sample = season[(np.arange(n) - n) % m]
            adjusted = y / in_sample if mult else y - in_sample
        else:
            adjusted = y
        self.alpha_ = float(res.params["alpha"])
        self.b0_ = float(res.params["b0"])
        self.level_ = float(np.asarray(comp["ses"])[0])
        self.nobs_ = n
        self.multiplicative_ = bool(mult)
        self.season_ = season if self.deseasonalize else np.zeros(0)
        self.sigma2_ = _ses_mse(adjusted, self.alpha_)
        values = [self.alpha_, self.b0_, self.level_, self.sigma2_, *self.season_]
        if not np.all(np.isfinite(values)):
            raise ModelError(f"theta fit on {n} points gave non-finite parameters")
        return self

    def predict(self, h, X=None, level: Sequence[int] = (80, 95)):
        h = check_h(h)
        alpha, theta = self.alpha_, self.theta
        steps = np.arange(h, dtype=float)  # h - 1
        if alpha > 0:
            steps += 1 / alpha - (1 - alpha) ** self.nobs_ / alpha
        mean = self.level_ + (theta - 1) / theta * self.b0_ * steps
        sigma = np.sqrt(self.sigma2_ * (1 + np.arange(h) * alpha**2))
        m = len(self.season_)
        if m:
            season = self.season_[np.arange(h) % m]
            if self.multiplicative_:
                mean, sigma = mean * season, sigma * season
            else:
                mean = mean + season
        return normal_intervals(mean, sigma, level)


def _ses_mse(x: np.ndarray, alpha: float) -> float:
    """Mean squared one-step error of SES with smoothing ``alpha`` started at ``x[0]``
    (the initialization statsmodels' ThetaModel uses)."""
    from scipy.signal import lfilter

    # level_t = alpha * x_t + (1 - alpha) * level_{t-1}, level_0 = x_0
    levels, _ = lfilter([alpha], [1.0, -(1.0 - alpha)], x[1:], zi=[(1.0 - alpha) * x[0]])
    prev = np.concatenate(([x[0]], levels[:-1]))
    return float(np.mean((x[1:] - prev) ** 2))
