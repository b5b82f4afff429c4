"""MSTL: several seasons removed by statsmodels' MSTL, the rest forecast by ETS.

The seasonal components are repeated forward (last full cycle of each); the seasonally
adjusted series (trend + remainder) is forecast by a non-seasonal damped-trend ETS.
State: the last cycle of each component plus the ETS state.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from forecasting.errors import ConfigError, ModelError
from forecasting.models.base import Forecaster, check_h, check_keys, clean_y, max_history, quiet_fit
from forecasting.models.ets import ETS


class MSTL(Forecaster):
    """Multiple seasonal-trend decomposition by Loess, with an ETS(A,Ad,N) forecast of
    the seasonally adjusted series.

    Intervals: the ETS forecast variance, ``sigma2 * (1 + sum c_j^2)``, with ``sigma2``
    the mean squared one-step error when each seasonal component is taken one cycle
    back (as the forecast takes it) rather than the ETS residual variance, which is too
    small because the components were fitted to the same points. Hours with larger
    swings (peaks) still get too narrow intervals: the variance is one for all steps.

    Seasons come from ``seasonalities`` (e.g. 24 and 168 for hourly data). A season
    needs more than two full cycles in the fitted history; seasons that do not fit are
    dropped (a reduced model), and a series without two cycles of the shortest season
    is refused.

    Params:
        damped: damp the trend of the adjusted-series ETS (default ``True``).
        iterate: MSTL backfitting iterations (default 2).
        max_history: fit on at most this many trailing points (default
            ``4 * max(seasonalities)``, 672 for hourly data); ``None`` uses everything.

    Raises:
        ModelError: fewer than two cycles of the shortest season, or a failed fit.
    """

    name = "mstl"
    description = "MSTL decomposition (daily + weekly) with ETS on the adjusted series."

    def __init__(
        self,
        season_length: int = 24,
        seasonalities: Sequence[int] = (24, 168),
        freq: str = "h",
        **params: Any,
    ) -> None:
        super().__init__(season_length, seasonalities, freq, **params)
        check_keys(self.name, params, ("damped", "iterate", "max_history"))
        self.damped = bool(params.get("damped", True))
        self.iterate = params.get("iterate", 2)
        if isinstance(self.iterate, bool) or not isinstance(self.iterate, int) or self.iterate < 1:
            raise ConfigError("mstl.iterate", self.iterate, "an integer >= 1")
        periods = sorted(set(self.seasonalities or (self.season_length,)))
        if any(p < 2 for p in periods):
            raise ConfigError("seasonalities", list(self.seasonalities), "integers >= 2")
        self.periods = tuple(periods)
        self.max_history = max_history(self.name, params, 4 * max(self.periods))

    def _trend_model(self) -> ETS:
        return ETS(
            season_length=self.season_length,
            seasonalities=self.seasonalities,
            freq=self.freq,
            trend="add",
            damped=self.damped,
            seasonal=None,
            max_history=None,
        )

    def fit(self, y, X=None, ts=None):
        from statsmodels.tsa.seasonal import MSTL as _MSTL

        y = clean_y(self.name, y, self.max_history)
        periods = [p for p in self.periods if 2 * p < len(y)]  # statsmodels' own rule
        if not periods:
            raise ModelError(
                f"mstl needs more than two cycles of its shortest season "
                f"({2 * self.periods[0] + 1} points for season {self.periods[0]}); got "
                f"{len(y)}. Use a longer history or another model."
            )
        try:
            with quiet_fit():
                decomposition = _MSTL(y, periods=periods, iterate=self.iterate)
                res = decomposition.fit()
        except (ValueError, np.linalg.LinAlgError) as exc:
            raise ModelError(f"mstl decomposition failed on {len(y)} points: {exc}") from exc
        seasonal = np.asarray(res.seasonal, dtype=float).reshape(len(y), -1)
        periods = list(decomposition.periods)  # the seasons statsmodels kept, in column order
        # Each component repeats its last full cycle.
        self.seasons_ = [seasonal[-p:, i].copy() for i, p in enumerate(periods)]
        adjusted = y - seasonal.sum(axis=1)
        self.trend_ = self._trend_model().fit(adjusted)
        # The ETS errors alone are too small: each seasonal component was fitted to the
        # very points it explains (80% intervals covered ~55% in a backtest). Use the
        # one-step errors with every component taken one cycle back, as the forecast
        # takes it, for the interval variance.
        lag = max(periods)
        extrapolated = sum(seasonal[lag - p : len(y) - p, i] for i, p in enumerate(periods))
        errors = self.trend_.resid_[lag:] + seasonal[lag:].sum(axis=1) - extrapolated
        self.trend_.sigma2_ = float(np.mean(errors**2))
        if not all(np.all(np.isfinite(s)) for s in self.seasons_):
            raise ModelError(f"mstl decomposition on {len(y)} points is not finite")
        return self

    def predict(self, h, X=None, level: Sequence[int] = (80, 95)):
        h = check_h(h)
        out = self.trend_.predict(h, level=level)
        season = np.zeros(h)
        for s in self.seasons_:
            season += s[np.arange(h) % len(s)]
        return {key: values + season for key, values in out.items()}

    def get_state(self) -> dict[str, Any]:
        return {
            "periods": [len(s) for s in self.seasons_],
            "seasons": [s.tolist() for s in self.seasons_],
            "trend": self.trend_.get_state(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.seasons_ = [np.asarray(s, dtype=float) for s in state["seasons"]]
        self.trend_ = self._trend_model()
        self.trend_.set_state(state["trend"])
