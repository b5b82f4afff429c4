"""ETS (exponential smoothing state space) with additive errors, fitted by statsmodels.

statsmodels' ``ETSModel`` estimates the smoothing parameters by maximum likelihood; the
forecast and its variance are then computed here from the final state vector, so the
fitted model is a handful of numbers: parameters, final level/trend, the last season
and the residual variance.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from forecasting.errors import ModelError
from forecasting.models.base import Field, Forecaster, Param, check_h, clean_y, normal_intervals, quiet_fit


class ETS(Forecaster):
    """ETS(A, T, S): additive errors, optional (damped) additive trend, optional additive
    or multiplicative seasonality at ``season_length``.

    Parameters are estimated by statsmodels ``ETSModel`` (heuristic initial states, which
    keeps the fit to a 4-parameter optimisation). Point forecasts and prediction
    intervals come from the final states (Hyndman et al. 2008, ch. 6): exact for the
    all-additive models, a first-order (delta method) approximation for
    multiplicative seasonality.

    Params:
        trend: ``None`` or ``"add"`` (default ``"add"``).
        damped: damp the trend (default ``True``; ignored without a trend).
        seasonal: ``None``, ``"add"`` or ``"mul"`` (default ``"add"``); ``"mul"`` needs
            strictly positive data.
        max_history: fit on at most this many trailing points (default
            ``4 * max(seasonalities)``, 672 for hourly data); ``None`` uses everything.

    Raises:
        ModelError: a seasonal model on fewer than two full seasons (use
            ``seasonal=None`` or a longer history), fewer than 10 points, or a failed fit.
    """

    name = "ets"
    description = "Exponential smoothing (ETS) with damped trend and daily season."

    parameters = (
        Param("trend", default="add", choices=(None, "add")),
        Param("damped", bool, True),
        Param("seasonal", default="add", choices=(None, "add", "mul")),
        Param.max_history(4),
    )
    state_fields = (
        *(Field(key) for key in ("alpha", "beta", "gamma", "phi", "level", "slope")),
        Field("season", "array"),
        Field("sigma2"),
    )

    def check(self) -> None:
        if self.seasonal is not None:
            self.need_season()

    def fit(self, y, X=None, ts=None):
        from statsmodels.tsa.exponential_smoothing.ets import ETSModel

        y = clean_y(self.name, y, self.max_history)
        m = self.season_length if self.seasonal else 0
        min_len = max(10, 2 * m, 10 + 2 * (m // 2)) if m else 10
        if len(y) < min_len:
            what = f"two full seasons of {m}" if m else "10 observations"
            raise ModelError(
                f"ets(seasonal={self.seasonal!r}) needs at least {min_len} points "
                f"({what}); got {len(y)}. Use a longer history or seasonal=None."
            )
        if self.seasonal == "mul" and np.min(y) <= 0:
            raise ModelError(
                "ets(seasonal='mul') needs strictly positive data; "
                f"the minimum is {np.min(y):g}. Use seasonal='add'."
            )
        has_trend = self.trend is not None
        try:
            with quiet_fit():
                model = ETSModel(
                    y,
                    error="add",
                    trend=self.trend,
                    damped_trend=self.damped and has_trend,
                    seasonal=self.seasonal,
                    seasonal_periods=m or None,
                    initialization_method="heuristic",
                )
                res = model.fit(disp=False, maxiter=200)
        except (ValueError, np.linalg.LinAlgError) as exc:
            raise ModelError(f"ets fit failed on {len(y)} points: {exc}") from exc

        states = np.asarray(res.states, dtype=float)
        self.alpha_ = float(res.smoothing_level)
        self.beta_ = float(res.smoothing_trend) if has_trend else 0.0
        self.gamma_ = float(res.smoothing_seasonal) if m else 0.0
        self.phi_ = float(res.damping_trend) if (has_trend and self.damped) else 1.0
        self.level_ = float(states[-1, 0])
        self.slope_ = float(states[-1, 1]) if has_trend else 0.0
        # The season for steps T+1..T+m is s_{T-m+1..T}: the last m seasonal states.
        self.season_ = states[-m:, -1].copy() if m else np.zeros(0)
        self.resid_ = np.asarray(res.resid, dtype=float)  # one-step errors; not part of the state
        self.sigma2_ = float(np.mean(self.resid_**2))
        values = [self.alpha_, self.beta_, self.gamma_, self.phi_, self.level_]
        values += [self.slope_, self.sigma2_, *self.season_]
        if not np.all(np.isfinite(values)):
            raise ModelError(f"ets fit on {len(y)} points gave non-finite parameters")
        if self.seasonal == "mul" and np.min(self.season_) <= 0:
            raise ModelError("ets(seasonal='mul') ended with a seasonal factor <= 0. Use seasonal='add'.")
        return self

    def predict(self, h, X=None, level: Sequence[int] = (80, 95)):
        h = check_h(h)
        steps = np.arange(1, h + 1)
        # phi_h = phi + phi^2 + ... + phi^h (= h without damping)
        phi_pow = self.phi_ ** np.arange(1, h + 1)
        phi_cum = np.cumsum(phi_pow)
        lvl = self.level_ + phi_cum * self.slope_  # l_T + phi_h b_T
        m = len(self.season_)
        season = self.season_[(steps - 1) % m] if m else np.zeros(h)
        mean = lvl * season if self.seasonal == "mul" else lvl + season
        return normal_intervals(mean, np.sqrt(self.sigma2_ * self._rel_var(h, lvl, season)), level)

    def _rel_var(self, h: int, lvl: np.ndarray, season: np.ndarray) -> np.ndarray:
        """Var(y_{T+h} - yhat) / sigma2 = 1 + sum_{j<h} c_j^2, with c_j the effect of the
        error at T+h-j on y_{T+h}."""
        if h == 1:
            return np.ones(1)
        alpha, beta, gamma, phi = self.alpha_, self.beta_, self.gamma_, self.phi_
        m = len(self.season_)
        out = np.ones(h)
        j = np.arange(1, h)  # lags
        phi_j = np.cumsum(phi**j)
        if self.seasonal != "mul":
            c = alpha + beta * phi_j + (gamma * (j % m == 0) if m else 0.0)
            out[1:] += np.cumsum(c**2)
            return out
        # Multiplicative season, additive error: l and b move by (alpha, beta) * e / S,
        # s by gamma * e / L, where S and L are the season and level met at that step
        # (t = T+1..T+h along the forecast path). Linearised, so approximate.
        # lvl[i] is the expected L_{T+i+1} = l_T + phi_{i+1} b_T.
        for k in range(1, h):  # 0-based target step
            src = k - j[:k]  # 0-based step where the error enters
            c = season[k] / season[src] * (alpha + beta * phi_j[:k])
            c = c + gamma * (j[:k] % m == 0) * lvl[k] / lvl[src]
            out[k] += np.sum(c**2)
        return out
