"""Prophet with country holidays and the temperature regressor (or every declared covariate).

The fitted model is Prophet's own JSON (``prophet.serialize.model_to_json``), kept as a
string in the state. ``predict`` always works from a model rebuilt from that string, so
a reloaded model forecasts exactly as the original did (Prophet's JSON rounds its
history frame, so the in-memory model would differ in the last digits).

Prediction intervals: Prophet draws ``uncertainty_samples`` paths from its posterior
predictive (trend changes + observation noise); ``lo-L`` / ``hi-L`` are the
``(100-L)/2`` and ``(100+L)/2`` percentiles of those same draws, so every level comes
from one set of samples and the intervals nest. The draws use a fixed ``seed`` (the
global NumPy RNG state is saved and restored around them), so forecasts are
reproducible.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Iterator, Sequence

import numpy as np

from forecasting.errors import ModelError
from forecasting.models.base import Field, Forecaster, Param, as_columns, check_finite, check_h, clean_y

_QUIET_LOGGERS = ("prophet", "prophet.plot", "prophet.models", "cmdstanpy")


class ProphetModel(Forecaster):
    """Prophet (Taylor & Letham 2018): piecewise-linear trend, Fourier daily/weekly
    seasonality (Prophet's automatic choice from the history length), country holidays
    and, when ``X`` is given, ``temperature`` (column 0 of ``X``) as a linear regressor.

    ``fit`` needs ``ts`` (datetime64, one per point); ``predict`` continues from the
    last timestamp at ``freq``.

    Params:
        country: holiday calendar for ``add_country_holidays`` (default ``"GB"``);
            ``None`` for no holidays.
        changepoint_prior_scale: trend flexibility (default 0.05, Prophet's default).
        seasonality_prior_scale: strength of the seasonal terms (default 10, Prophet's
            default).
        seasonality_mode: ``"additive"`` or ``"multiplicative"`` (default additive).
        uncertainty_samples: posterior predictive draws for the intervals (default 500).
        seed: seed of those draws (default 0).
        max_history: fit on at most this many trailing points (default
            ``4 * max(seasonalities)``, 672 for hourly data); ``None`` uses everything.
            Prophet's JSON holds this window, so it also bounds the state size.

    Raises:
        ModelError: no ``ts``, fewer than 10 points, non-finite regressors, a missing
            ``X`` in ``predict`` after fitting with one, or a failed fit.
    """

    name = "prophet"
    description = "Prophet with country holidays and a temperature regressor (slow)."
    supports_exog = True

    parameters = (
        Param("country", str, "GB", nullable=True, allowed="a country code like 'GB' or null"),
        Param("changepoint_prior_scale", float, 0.05, within="(0, inf)"),
        Param("seasonality_prior_scale", float, 10.0, within="(0, inf)"),
        Param("seasonality_mode", str, "additive", choices=("additive", "multiplicative")),
        Param("uncertainty_samples", int, 500, within="[50, inf)"),
        Param("seed", int, 0, within="[0, inf)"),
        Param.max_history(4),
    )
    state_fields = (Field("prophet_json", "str"), Field("last_ts", "str"), Field("has_temperature", "bool"))
    caches = ("_model",)

    def fit(self, y, X=None, ts=None):
        import pandas as pd

        y = clean_y(self.name, y, None)
        if ts is None:
            raise ModelError("prophet needs the timestamps: call fit(y, X, ts=...)")
        ts = pd.DatetimeIndex(pd.to_datetime(np.asarray(ts)))
        if len(ts) != len(y):
            raise ModelError(f"prophet: ts has {len(ts)} values for {len(y)} points")
        temperature = _temperature(X, len(y), "fit")
        if self.max_history is not None:
            y, ts = y[-self.max_history :], ts[-self.max_history :]
            if temperature is not None:
                temperature = temperature[-self.max_history :]
        if len(y) < 10:
            raise ModelError(f"prophet needs at least 10 points; got {len(y)}")

        df = pd.DataFrame({"ds": ts.tz_convert(None) if ts.tz else ts, "y": y})  # naive UTC
        with _quiet():
            from prophet import Prophet
            from prophet.serialize import model_to_json

            model = Prophet(
                changepoint_prior_scale=self.changepoint_prior_scale,
                seasonality_prior_scale=self.seasonality_prior_scale,
                seasonality_mode=self.seasonality_mode,
                uncertainty_samples=self.uncertainty_samples,
            )
            if self.country:
                try:
                    model.add_country_holidays(self.country)
                except (AttributeError, ValueError, NotImplementedError) as exc:
                    raise ModelError(f"prophet: unknown holiday country {self.country!r}") from exc
            if temperature is not None:
                for j, name in enumerate(_regressor_names(temperature)):
                    model.add_regressor(name)
                    df[name] = temperature if temperature.ndim == 1 else temperature[:, j]
            try:
                model.fit(df)
            except (RuntimeError, ValueError) as exc:
                raise ModelError(f"prophet fit failed on {len(y)} points: {exc}") from exc
            self.prophet_json_ = model_to_json(model)
        self.last_ts_ = df["ds"].iloc[-1].isoformat()
        self.has_temperature_ = temperature is not None
        self.forget()
        return self

    def predict(self, h, X=None, level: Sequence[int] = (80, 95)):
        import pandas as pd

        h = check_h(h)
        last = pd.Timestamp(self.last_ts_)
        future = pd.DataFrame({"ds": pd.date_range(last, periods=h + 1, freq=self.freq)[1:]})
        model = self._prophet()
        if self.has_temperature_:
            if X is None:
                raise ModelError(f"prophet was fitted with temperature: predict needs X of shape ({h}, k)")
            names = list(model.extra_regressors)
            values = _temperature(X, h, "predict", len(names))
            for j, name in enumerate(names):
                future[name] = values if values.ndim == 1 else values[:, j]
        with _quiet():
            n = model.uncertainty_samples
            model.uncertainty_samples = 0  # point forecast only; draws are taken below
            try:
                mean = model.predict(future)["yhat"].to_numpy(dtype=float)
            finally:
                model.uncertainty_samples = n
            rng_state = np.random.get_state()
            np.random.seed(self.seed)
            try:
                draws = model.predictive_samples(future)["yhat"]
            finally:
                np.random.set_state(rng_state)
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(draws))):
            raise ModelError("prophet forecast is not finite")
        out = {"mean": mean}
        for lv in level:
            lo, hi = np.percentile(draws, [50 - lv / 2, 50 + lv / 2], axis=1)
            # With a few hundred draws the percentile can miss the point forecast.
            out[f"lo-{lv}"] = np.minimum(lo, mean)
            out[f"hi-{lv}"] = np.maximum(hi, mean)
        return out

    def _prophet(self):
        if self._model is None:
            with _quiet():
                from prophet.serialize import model_from_json

                self._model = model_from_json(self.prophet_json_)
        return self._model


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Drop Prophet's and cmdstanpy's INFO chatter and the 'plotly' import error for the
    duration. A filter rather than a level, because cmdstanpy resets its logger's level
    the first time it configures it."""
    loggers = [logging.getLogger(name) for name in _QUIET_LOGGERS]
    for lg in loggers:
        lg.addFilter(_drop_chatter)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg in loggers:
            lg.removeFilter(_drop_chatter)


def _drop_chatter(record: logging.LogRecord) -> bool:
    if record.name == "prophet.plot":  # "Importing plotly failed": plots are not used
        return False
    return record.levelno >= logging.ERROR


def _temperature(X: Any, n: int, where: str, k: int | None = None) -> np.ndarray | None:
    """Column 0 of ``X`` (temperature), or all ``k`` columns (declared covariates: at
    fit, ``X`` with more than one column; at predict, the ``k`` regressors fitted)."""
    if X is None:
        return None
    X = as_columns(X)
    if X.ndim != 2 or X.shape[0] != n or X.shape[1] == 0:
        raise ModelError(f"prophet.{where}: X must have shape ({n}, k>=1); got {X.shape}")
    k = X.shape[1] if k is None else k
    if k == 1:
        check_finite(X[:, 0], f"prophet.{where}: temperature")
        return X[:, 0]
    if X.shape[1] < k:
        raise ModelError(f"prophet was fitted with {k} regressors: predict needs X of shape ({n}, {k})")
    check_finite(X[:, :k], f"prophet.{where}: X")
    return X[:, :k]


def _regressor_names(values: np.ndarray) -> list[str]:
    """Prophet's regressor names: ``temperature`` for one column, ``x0..`` for covariates."""
    return ["temperature"] if values.ndim == 1 else [f"x{j}" for j in range(values.shape[1])]
