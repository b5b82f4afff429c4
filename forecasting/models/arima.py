"""ARIMA with a small automatic order search, fitted by statsmodels' SARIMAX.

The fitted model is its orders, its parameter vector and the (bounded) history it was
fitted on. ``predict`` always re-runs the Kalman filter with those fixed parameters
over that window, both right after ``fit`` and after loading, so a reloaded model
forecasts exactly as the original did.
"""

from __future__ import annotations

import importlib
from typing import Any, Sequence

import numpy as np

from forecasting.errors import ModelError
from forecasting.models.base import (
    Field,
    Forecaster,
    Param,
    as_columns,
    check_finite,
    check_h,
    clean_y,
    normal_intervals,
    quiet_fit,
)

# Non-seasonal (p, q) candidates, as in the first step of auto.arima's stepwise search.
_CANDIDATES = ((2, 2), (0, 0), (1, 0), (0, 1), (1, 1))
# With a seasonal part each fit costs ~10x more, so only the two workhorses.
_SEASONAL_CANDIDATES = ((1, 0), (1, 1))


class ARIMA(Forecaster):
    """ARIMA(p, d, q) [x (P, D, Q)m] with optional exogenous regressors.

    ``d`` comes from a KPSS test (5% level, at most 1) unless given; ``(p, q)`` is the
    lowest-AIC fit among (2,2), (0,0), (1,0), (0,1), (1,1) — or (1,0), (1,1) when
    seasonal. A constant is included only when the model has no differencing (no
    drift). Intervals are the Gaussian ones from the state-space forecast variance.

    Params:
        seasonal: add a seasonal part at ``season_length`` (default ``False``; about
            10x slower).
        seasonal_order: ``[P, D, Q]`` of the seasonal part (default ``[0, 1, 1]``).
        d: order of differencing, or ``None`` to choose by KPSS test (default).
        fourier: number of sine/cosine pairs per season in ``seasonalities`` added as
            regressors (dynamic harmonic regression; default 0 = none). Gives a
            non-seasonal ARIMA the daily and weekly shape, at ~4x the fit time for 3.
        max_history: fit on at most this many trailing points (default
            ``2 * max(seasonalities)``, 336 for hourly data); ``None`` uses everything.
            This window is stored in the fitted state.

    Regressors: ``X`` (n x k) in ``fit`` makes ``X`` (h x k) required in ``predict``.

    Raises:
        ModelError: too short a series (fewer than 20 points, or than two seasons + 10
            when seasonal), non-finite regressors, or no candidate could be fitted.
    """

    name = "arima"
    description = "ARIMA with a small AIC order search and optional regressors."
    supports_exog = True

    parameters = (
        Param("seasonal", bool, False),
        Param(
            "seasonal_order",
            list,
            [0, 1, 1],
            allowed="[P, D, Q] in 0..2",
            check=lambda v: len(v) == 3 and all(isinstance(x, int) and 0 <= x <= 2 for x in v),
        ),
        Param("d", int, None, within="[0, 2]", nullable=True, allowed="null (automatic) or 0, 1, 2"),
        Param("fourier", int, 0, within="[0, inf)"),
        Param.max_history(2),
    )
    state_fields = (
        Field("order", "ints"),
        Field("seasonal_order", "ints"),
        Field("trend", "str"),
        Field("params", "array"),
        Field("aic"),
        Field("y", "array"),
        Field("X", "array", optional=True),
    )
    caches = ("_filtered",)

    def check(self) -> None:
        if self.seasonal:
            self.need_season()

    # -- fit ----------------------------------------------------------------------
    def fit(self, y, X=None, ts=None):
        _import_statsmodels()
        y = clean_y(self.name, y, None)
        X = _clean_X(X, len(y), "fit")
        if self.max_history is not None:
            y = y[-self.max_history :]
            X = X[-self.max_history :] if X is not None else None
        m = self.season_length
        min_len = 2 * m + 10 if self.seasonal else 20
        if len(y) < min_len:
            raise ModelError(
                f"arima(seasonal={self.seasonal}) needs at least {min_len} points; got "
                f"{len(y)}. Use a longer history or a simpler model."
            )
        seasonal_order = [*self.seasonal_order, m] if self.seasonal else [0, 0, 0, 0]
        d = self.d if self.d is not None else _kpss_d(y, m if seasonal_order[1] else 0)
        trend = "c" if d + seasonal_order[1] == 0 else "n"
        exog = self._exog(X, 0, len(y))
        candidates = _SEASONAL_CANDIDATES if self.seasonal else _CANDIDATES
        best, errors = None, []
        with quiet_fit():
            for p, q in candidates:
                try:
                    res = _sarimax(y, exog, [p, d, q], seasonal_order, trend).fit(disp=False, maxiter=50)
                except (ValueError, RuntimeError, np.linalg.LinAlgError) as exc:
                    errors.append(f"({p},{d},{q}): {exc}")
                    continue
                ok = np.isfinite(res.aic) and np.all(np.isfinite(res.params))
                if ok and (best is None or res.aic < best[0]):
                    best = (float(res.aic), [p, d, q], np.asarray(res.params, dtype=float))
        if best is None:
            raise ModelError(
                f"arima: no candidate order could be fitted on {len(y)} points "
                f"({'; '.join(errors) or 'non-finite likelihood'})"
            )
        self.aic_, self.order_, self.params_ = best
        self.seasonal_order_ = seasonal_order
        self.trend_ = trend
        self.y_ = y
        self.X_ = X
        self.forget()
        return self

    # -- predict ------------------------------------------------------------------
    def predict(self, h, X=None, level: Sequence[int] = (80, 95)):
        h = check_h(h)
        n_exog = 0 if self.X_ is None else self.X_.shape[1]
        if n_exog:
            if X is None:
                raise ModelError(
                    f"arima was fitted with {n_exog} regressor(s): predict needs X of shape ({h}, {n_exog})"
                )
            X = _clean_X(X, h, "predict")
            if X.shape[1] != n_exog:
                raise ModelError(f"arima was fitted with {n_exog} regressor(s); predict got {X.shape[1]}")
        else:
            X = None
        exog = self._exog(X, len(self.y_), h)
        _import_statsmodels()
        with quiet_fit():
            fc = self._results().get_forecast(h, exog=exog)
            mean = np.asarray(fc.predicted_mean, dtype=float)
            se = np.asarray(fc.se_mean, dtype=float)
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(se))):
            raise ModelError(f"arima{tuple(self.order_)} forecast is not finite")
        return normal_intervals(mean, se, level)

    def _results(self):
        """Kalman filter over the stored window with the stored parameters (cached)."""
        if self._filtered is None:
            exog = self._exog(self.X_, 0, len(self.y_))
            model = _sarimax(self.y_, exog, self.order_, self.seasonal_order_, self.trend_)
            self._filtered = model.filter(self.params_)
        return self._filtered

    def _exog(self, X: np.ndarray | None, start: int, n: int) -> np.ndarray | None:
        """User regressors plus Fourier terms for time steps ``start .. start+n-1`` of
        the fitted window."""
        parts = [] if X is None else [X]
        if self.fourier:
            t = np.arange(start, start + n, dtype=float)
            for period in sorted(set(self.seasonalities)):
                for k in range(1, min(self.fourier, period // 2) + 1):
                    w = 2 * np.pi * k * t / period
                    if 2 * k < period:  # at the Nyquist frequency the sine is all zeros
                        parts.append(np.sin(w)[:, None])
                    parts.append(np.cos(w)[:, None])
        return np.hstack(parts) if parts else None


def _import_statsmodels() -> None:
    """Import statsmodels before entering ``_quiet_fit`` (see there why)."""
    importlib.import_module("statsmodels.tsa.statespace.sarimax")
    importlib.import_module("statsmodels.tsa.stattools")


def _sarimax(y, exog, order, seasonal_order, trend):
    from statsmodels.tsa.statespace.sarimax import SARIMAX

    return SARIMAX(y, exog=exog, order=tuple(order), seasonal_order=tuple(seasonal_order), trend=trend)


def _kpss_d(y: np.ndarray, m: int) -> int:
    """1 if the KPSS test rejects level stationarity at 5% (after a seasonal difference
    at ``m`` when ``m``), else 0."""
    from statsmodels.tsa.stattools import kpss

    x = y[m:] - y[:-m] if m else y
    if np.ptp(x) == 0:
        return 0
    with quiet_fit():
        p_value = kpss(x, regression="c", nlags="auto")[1]
    return int(p_value < 0.05)


def _clean_X(X: Any, n: int, where: str) -> np.ndarray | None:
    if X is None:
        return None
    X = as_columns(X)
    if X.ndim != 2 or X.shape[0] != n:
        raise ModelError(f"arima.{where}: X must have shape ({n}, k); got {X.shape}")
    if X.shape[1] == 0:
        return None
    check_finite(X, f"arima.{where}: X")
    return X
