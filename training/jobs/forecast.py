"""``mmf forecast`` and the portfolio aggregate: the champion's forecasts into Gold.

The champion many-models pyfunc (``models:/<name>@champion``) forecasts ``horizon``
steps after each series' last training timestamp (its cutoff). Rows land in
``gold/forecasts`` with replace-where on the model version, so writing the same
(cutoff, model_version) again replaces and never duplicates. Future temperature, for
models that use it, is the same hour one week earlier (a persistence forecast; a
weather feed can replace it by passing its own frame).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from forecasting import contract as C
from forecasting.config import Config
from forecasting.errors import RegistryError
from forecasting.frequency import future_timestamps
from registry import pyfunc
from registry.aliases import champion_info
from registry.connection import configure
from training.checkpoints import checkpoint
from training.tables import (
    GOLD_FORECASTS,
    GOLD_PORTFOLIO,
    GOLD_SELECTION,
    SILVER_READINGS,
    SILVER_SERIES,
    Lakehouse,
)

log = logging.getLogger(__name__)
APP_FORECAST = "mmf-forecast"
APP_PORTFOLIO = "mmf-portfolio"


@dataclass
class ForecastReport:
    model_version: str
    run_id: str
    n_series: int
    n_rows: int
    table_version: int
    skipped: bool = False
    timings: dict[str, float] = field(default_factory=dict)  # load_s, score_s, gold_write_s


def champion_series(lake: Lakehouse, run_id: str) -> pd.DataFrame:
    """Series the champion holds a model for, with their cutoff (from gold/selection)."""
    sel = lake.read(GOLD_SELECTION, filters=[("run_id", "=", run_id)])
    return sel[sel["status"].isin([C.OK, C.FALLBACK])]


def future_frame(lake: Lakehouse, silver_version: int, ends: pd.Series, freq: str, horizon: int) -> pd.DataFrame:
    """Rows (series_id, horizon, ts, temperature) for every series and future step."""
    sids = ends.index.to_numpy()
    ts = future_timestamps(ends.to_numpy(dtype="datetime64[us]"), freq, np.arange(1, horizon + 1)).ravel()
    frame = pd.DataFrame({C.SERIES_ID: np.repeat(sids, horizon), "horizon": horizon, C.TS: ts})
    week = pd.Timedelta("7D")
    hist = lake.read(SILVER_READINGS, version=silver_version, columns=[C.SERIES_ID, C.TS, "temperature"],
                     filters=[(C.TS, ">", (ends.min() - week).to_pydatetime())])
    if hist["temperature"].notna().any():
        hist = hist.assign(**{C.TS: hist[C.TS] + week}).drop_duplicates([C.SERIES_ID, C.TS])
        frame = frame.merge(hist, on=[C.SERIES_ID, C.TS], how="left")
        # beyond one week ahead, repeat the last known week
        frame["temperature"] = frame.groupby(C.SERIES_ID)["temperature"].transform(
            lambda s: s.ffill().bfill() if s.isna().any() else s
        )
    return frame


def predict_by_series(
    model: Any,
    inputs: pd.DataFrame,
    params: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    chunks: int = 100,
) -> pd.DataFrame:
    """``model.predict(inputs, params)`` in about ``chunks`` calls on whole series, telling
    ``progress(series done, series in all)`` after each (a single call without progress)."""
    if progress is None or inputs.empty:
        return model.predict(inputs, params=params)
    codes, ids = pd.factorize(inputs[C.SERIES_ID])
    size = max(1, -(-len(ids) // chunks))
    parts = []
    for block, part in inputs.groupby(codes // size, sort=True):
        parts.append(model.predict(part, params=params))
        progress(min((int(block) + 1) * size, len(ids)), len(ids))
    return pd.concat(parts, ignore_index=True)


def forecast(
    lake: Lakehouse,
    config: Config,
    horizon: int | None = None,
    force: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> ForecastReport:
    """``progress(step, done, total)`` is told when forecasting starts and as series finish."""
    if progress:
        progress("forecast", 0, 0)
    configure(config)
    info = champion_info(config)
    if info is None:
        raise RegistryError(
            f"registered model {config.mlflow.registered_model!r} has no champion: run `mmf train` "
            "(the first version is promoted) or `mmf promote VERSION`"
        )
    version, run_id = str(info["version"]), info["run_id"]
    h = horizon or config.horizon
    app_version = int(version) * 100_000 + h
    if not force and lake.txn_version(GOLD_FORECASTS, APP_FORECAST) == app_version:
        n = len(lake.read(GOLD_FORECASTS, columns=[C.SERIES_ID], filters=[("model_version", "=", version)]))
        return ForecastReport(version, run_id, 0, n, lake.version(GOLD_FORECASTS), skipped=True)

    t0 = time.perf_counter()
    model = pyfunc.load_version(config, version)
    t1 = time.perf_counter()
    # The cutoffs are the champion's own training ends (its models.parquet), not today's
    # silver/series: a version trained on an earlier silver version (`mmf train
    # --silver-version N`) forecasts from where its data ended.
    series_info = model.unwrap_python_model().series_ends()
    if series_info.empty:
        raise RegistryError(f"champion version {version} (run {run_id}) holds no series with a usable model")
    freq = series_info["freq"].iloc[0]
    ends = series_info.set_index(C.SERIES_ID)["end"]
    silver_version = int(info.get("silver_version") or lake.version(SILVER_READINGS))
    inputs = future_frame(lake, silver_version, ends, freq, h)
    pred = predict_by_series(model, inputs, progress=(lambda d, t: progress("forecast", d, t)) if progress else None)
    t2 = time.perf_counter()
    checkpoint("before_forecast_commit")

    now = pd.Timestamp(dt.datetime.now(dt.timezone.utc)).as_unit("us")
    pred["model_version"] = version
    pred["run_id"] = run_id
    pred["cutoff"] = pred[C.SERIES_ID].map(ends).astype("datetime64[us]")
    pred["created_at"] = now
    table_version = lake.write(
        GOLD_FORECASTS, pred, mode="overwrite", predicate=f"model_version = '{version}'",
        app_id=APP_FORECAST, app_version=app_version, metadata={"mmf.run_id": run_id},
    )
    timings = {"load_s": t1 - t0, "score_s": t2 - t1, "gold_write_s": time.perf_counter() - t2}
    return ForecastReport(version, run_id, len(ends), len(pred), table_version, timings=timings)


def aggregate(lake: Lakehouse, config: Config, model_version: str | None = None) -> int:
    """gold/portfolio: daily forecast totals by region, site and overall for one model
    version (the latest in gold/forecasts by default); replace-where on the version."""
    fc = lake.read(GOLD_FORECASTS, columns=[C.SERIES_ID, C.TS, "yhat", "model_version", "cutoff"])
    if fc.empty:
        raise RegistryError("gold/forecasts is empty: run `mmf forecast` first")
    version = model_version or max(fc["model_version"].unique(), key=int)
    fc = fc[fc["model_version"] == version]
    attrs = lake.read(SILVER_SERIES, columns=[C.SERIES_ID, "site", "region"])
    fc = fc.merge(attrs, on=C.SERIES_ID, how="left")
    fc["day"] = fc[C.TS].dt.date
    fc["total"] = "all"
    parts = []
    for level in ("total", "region", "site"):
        keyed = fc.assign(key=fc[level].fillna("unknown"))
        agg = keyed.groupby(["key", "day"]).agg(yhat=("yhat", "sum"), n_series=(C.SERIES_ID, "nunique"), cutoff=("cutoff", "max"))
        parts.append(agg.reset_index().assign(level=level))
    out = pd.concat(parts, ignore_index=True)
    out["model_version"] = version
    out["created_at"] = pd.Timestamp(dt.datetime.now(dt.timezone.utc)).as_unit("us")
    return lake.write(GOLD_PORTFOLIO, out, mode="overwrite", predicate=f"model_version = '{version}'",
                      app_id=APP_PORTFOLIO, app_version=int(version))
