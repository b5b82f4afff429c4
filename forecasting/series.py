"""One series ready for the models: its silver rows checked and turned into arrays
(:func:`prepare`), and one model backtested on it (:func:`backtest_model`).

Steps of :func:`prepare`: sort by ``ts``; take ``y``, the timestamps and (when complete)
the regressors of models that support them (``temperature``, or the declared
covariates: :func:`forecasting.covariates.series_regressors`); derive the season lengths
from the frequency; classify the demand of the observed readings (those not
``is_filled``, :func:`forecasting.demand.demand_class`), which picks the candidates.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Callable

import numpy as np
import pandas as pd

from forecasting.backtest import backtest
from forecasting.config import Config
from forecasting.contract import SERIES_ID, TS, Y
from forecasting.covariates import CovariateView, series_regressors
from forecasting.demand import demand_class, observed
from forecasting.errors import DataContractError
from forecasting.frequency import freq_of, seasonalities_for
from forecasting.models import Forecaster, model_class
from forecasting.timeout import run_seeded

EXOG_COLUMN = "temperature"


@dataclass
class SeriesData:
    """One series ready for the models."""

    series_id: str
    y: np.ndarray
    ts: np.ndarray  # datetime64[us]
    X: np.ndarray | None
    freq: str
    seasonalities: tuple[int, ...]
    demand_class: str | None = None  # forecasting.demand; None: no demand at all
    covariates: CovariateView | None = None  # declared covariates: what a backtest knows of their future

    @property
    def season_length(self) -> int:
        return self.seasonalities[0]

    def exog(self, model: str) -> np.ndarray | None:
        """The regressor for ``model``: ``X`` when there is one and the model takes it."""
        return self.X if self.X is not None and model_class(model).supports_exog else None

    def head(self, n: int) -> SeriesData:
        """The first ``n`` observations (same frequency and seasons)."""
        return replace(self, y=self.y[:n], ts=self.ts[:n], X=None if self.X is None else self.X[:n])

    def cutoff_iso(self, cutoff: int) -> str:
        """The ISO timestamp of the last training observation of a window cut at
        ``cutoff`` (the ``cutoff`` of ``backtest_json`` and ``gold/forecasts``)."""
        return pd.Timestamp(self.ts[cutoff - 1]).isoformat()


def prepare(pdf: pd.DataFrame, config: Config) -> SeriesData:
    """Sorted arrays of one series' silver rows.

    Raises:
        DataContractError: missing columns, no rows, missing or duplicate timestamps,
            or ``y`` values that are missing or not finite.
    """
    missing = [c for c in (SERIES_ID, TS, Y) if c not in pdf.columns]
    if missing:
        raise DataContractError(f"series rows lack column(s) {missing}: expected {SERIES_ID}, {TS}, {Y}")
    if len(pdf) == 0:
        raise DataContractError("series has no rows")
    in_order = is_naive_datetime(pdf[TS]) and pdf[TS].is_monotonic_increasing  # silver's usual order
    df = pdf if in_order else pdf.sort_values(TS, kind="mergesort")
    ts_idx = pd.DatetimeIndex(as_datetimes(df[TS]))
    if ts_idx.tz is not None:
        ts_idx = ts_idx.tz_convert("UTC").tz_localize(None)
    if ts_idx.hasnans:
        raise DataContractError(
            f"{int(ts_idx.isna().sum())} missing timestamp(s): expected a cleaned (silver) series"
        )
    if ts_idx.has_duplicates:
        raise DataContractError(
            f"{int(ts_idx.duplicated().sum())} duplicate timestamp(s): expected one row per ts (run refine first)"
        )
    ts = ts_idx.to_numpy().astype("datetime64[us]")
    y = df[Y].to_numpy(dtype=float)
    bad = ~np.isfinite(y)
    if bad.any():
        raise DataContractError(
            f"{int(bad.sum())} of {len(y)} y values are missing or not finite: expected a cleaned (silver) series"
        )
    X, view = series_regressors(df, config, ts)
    freq = config.freq or freq_of(ts)
    filled = df["is_filled"].fillna(False).to_numpy(dtype=bool) if "is_filled" in df.columns else None
    return SeriesData(
        series_id=str(df[SERIES_ID].iloc[0]),
        y=y,
        ts=ts,
        X=X,
        freq=freq,
        seasonalities=seasonalities_for(freq),
        demand_class=demand_class(observed(y, filled)),
        covariates=view,
    )


def is_naive_datetime(column: pd.Series) -> bool:
    """Whether ``column`` holds numpy (tz-naive) datetimes of any unit: its values are
    timestamps as they are, without ``pd.to_datetime`` (a millisecond a call on a series
    of 1,440 rows, which the per-series steps make several times)."""
    return isinstance(column.dtype, np.dtype) and column.dtype.kind == "M"


def as_datetimes(column: pd.Series) -> pd.Series:
    """``column`` as datetimes: itself when it holds them already
    (:func:`is_naive_datetime`), else ``pd.to_datetime`` of it."""
    return column if is_naive_datetime(column) else pd.to_datetime(column)


def series_id_of(pdf: pd.DataFrame) -> str:
    """The series id of the first row, ``""`` when there is none (the row still goes out)."""
    try:
        return str(pdf[SERIES_ID].iloc[0])
    except Exception:  # noqa: BLE001 - no id column or no rows
        return ""


def backtest_model(
    factory: Callable[[], Forecaster],
    data: SeriesData,
    X: np.ndarray | None,
    config: Config,
    windows: int,
) -> list[dict[str, Any]]:
    """``windows`` backtest windows of the models ``factory`` builds on ``data``,
    seeded with ``config.seed`` and stopped after ``config.model_timeout_s``."""
    run = partial(
        backtest,
        factory,
        data.y,
        X,
        data.ts,
        horizon=config.horizon,
        windows=windows,
        step=config.backtest_step,
        levels=list(config.levels),
        m=data.season_length,
        future_X=None if X is None or data.covariates is None else data.covariates.future_X,
    )
    return run_seeded(run, config.seed, config.model_timeout_s)
