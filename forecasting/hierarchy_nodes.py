"""The per-node function of a hierarchy: one aggregate series in, its forecasts out.

:func:`forecast_node` runs on each node of the aggregate levels exactly what a series
gets in training (:func:`forecasting.pipeline.process_series`: candidates, backtest,
choice, the chosen model refitted with its interval calibration), then, for the
reconciliation, the chosen model's forecast of each backtest window (refitted on the
window's history, :func:`forecasting.refit.refit`) next to the actuals, and its forecast
of the next horizon with intervals. Rows: :func:`forecasting.contract.node_result_schema`.
The engines map it over the nodes like any per-series function (it never raises: a node
that fails is one ``failed`` row with the reason).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from forecasting import contract as C
from forecasting.backtest import window_cutoffs
from forecasting.config import Config
from forecasting.frequency import future_timestamps
from forecasting.metrics import mase_scale
from forecasting.models import load_fitted
from forecasting.models.base import one_thread
from forecasting.models.global_models import is_global
from forecasting.pipeline import process_series
from forecasting.refit import refit
from forecasting.series import prepare, series_id_of
from forecasting.timeout import Alarm


def node_config(config: Config) -> Config:
    """The settings nodes are forecast with: the per-series candidates of ``models``
    (global models are trained across the series on the driver, not on a few nodes)."""
    models = [m for m in config.models if not is_global(m)] or ["seasonal_naive"]
    prefer = config.backtest.prefer if config.backtest.prefer in models else None
    return config.replace(models=models, **{"backtest.prefer": prefer})


def forecast_node(pdf: pd.DataFrame, config: Config) -> pd.DataFrame:
    """One node's rows (``series_id`` = its key, ``ts``, ``y``) -> its forecast, backtest
    and (on failure) failed rows."""
    levels = list(config.levels)
    schema = C.node_result_schema(levels)
    key = series_id_of(pdf)
    try:
        with one_thread(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rows = _node_rows(pdf[[C.SERIES_ID, C.TS, C.Y]], config)
    except (Exception, Alarm) as exc:  # noqa: BLE001 - a failed node is data
        rows = [{C.SERIES_ID: key, "kind": "failed", "window": -1, "step": 0, "reason": str(exc)[:300]}]
    frame = pd.DataFrame(rows)
    for name in schema.names:
        if name not in frame.columns:
            frame[name] = None
    return frame[schema.names]


def _node_rows(pdf: pd.DataFrame, config: Config) -> list[dict[str, Any]]:
    result = process_series(pdf, config).iloc[0]
    if result["status"] not in (C.OK, C.FALLBACK):
        raise ValueError(f"{result['status']}: {result['reason']}")
    data = prepare(pdf, config)
    h, levels = config.horizon, list(config.levels)
    key, model = data.series_id, str(result["model"])
    scale = mase_scale(data.y, data.season_length)
    base = {C.SERIES_ID: key, "model": model, "reason": "", "scale": scale}
    rows: list[dict[str, Any]] = []
    spec = {"model_json": result["model_json"]}
    cuts = window_cutoffs(len(data.y), h, config.backtest.windows, config.backtest_step)
    for w, cut in enumerate(cuts):
        fitted = refit(spec, data.head(cut), config)
        pred = fitted.predict(h, level=levels)
        actual = data.y[cut : cut + h]
        rows += _rows(base, "backtest", w, data.ts[cut : cut + h], actual, pred, levels)
    pred = load_fitted(str(result["model_json"])).predict(h, level=levels)
    future = future_timestamps(data.ts[-1:], data.freq, np.arange(1, h + 1)).ravel()
    rows += _rows(base, "forecast", -1, future, np.full(h, np.nan), pred, levels)
    return rows


def _rows(base, kind, window, ts, y, pred, levels) -> list[dict[str, Any]]:
    mean = np.asarray(pred["mean"], dtype=float)
    out = []
    for i in range(len(mean)):
        row = {**base, "kind": kind, "window": window, "step": i + 1, C.TS: pd.Timestamp(ts[i])}
        row[C.Y] = float(y[i])
        row["yhat"] = float(mean[i])
        for lv in levels:
            row[f"lo_{lv}"] = float(np.asarray(pred[f"lo-{lv}"])[i])
            row[f"hi_{lv}"] = float(np.asarray(pred[f"hi-{lv}"])[i])
        out.append(row)
    return out
