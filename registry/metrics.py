"""A training job's results summed up: per series and for the whole run (pure pandas,
nothing logged here; :mod:`registry.results` logs them)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from forecasting import contract as C
from forecasting.jsontext import loads

USABLE = (C.OK, C.FALLBACK, C.COLD_START)  # the statuses whose series get a model
# (cold_start: a profile of similar meters, no backtest: its metric_value is null)
_NOT_METRICS = {"model", "window", "cutoff"}


def chosen_backtest(results: pd.DataFrame) -> pd.DataFrame:
    """Per series, the chosen model's backtest metrics averaged over its windows
    (index ``series_id``; columns mae, rmse, ..., coverage_<lv>, pinball_<lv>)."""
    rows: list[dict[str, Any]] = []
    for sid, model, payload in zip(results[C.SERIES_ID], results["model"], results["backtest_json"]):
        if not model or not payload:
            continue
        sums: dict[str, list[float]] = {}
        for entry in loads(payload):
            if entry.get("model") != model:
                continue
            for key, value in entry.items():
                if key in _NOT_METRICS or isinstance(value, (str, bool)) or value is None:
                    continue
                if isinstance(value, (int, float)) and math.isfinite(value):
                    sums.setdefault(key, []).append(float(value))
        if sums:
            rows.append({C.SERIES_ID: sid, **{k: float(np.mean(v)) for k, v in sums.items()}})
    if not rows:
        return pd.DataFrame(index=pd.Index([], name=C.SERIES_ID, dtype=object))
    return pd.DataFrame(rows).set_index(C.SERIES_ID)


# per_series.parquet's first columns; the chosen model's backtest metrics follow them
PER_SERIES_BASE = (C.SERIES_ID, "status", "reason", "model", "metric", "metric_value", "n_obs", "end")


def per_series_table(results: pd.DataFrame, bt: pd.DataFrame | None = None) -> pd.DataFrame:
    """What ``per_series.parquet`` holds: one row per series with its status and the
    chosen model's mean backtest metrics (``bt``: :func:`chosen_backtest` of ``results``,
    when already computed)."""
    base = results[list(PER_SERIES_BASE)].copy()
    bt = chosen_backtest(results) if bt is None else bt
    if len(bt.columns):
        base = base.merge(bt, left_on=C.SERIES_ID, right_index=True, how="left")
    return base.reset_index(drop=True)


def finite_metric_values(results: pd.DataFrame) -> pd.Series:
    """The finite ``metric_value`` of the rows given."""
    values = pd.to_numeric(results["metric_value"], errors="coerce")
    return values[np.isfinite(values)]


def aggregate_metrics(results: pd.DataFrame, n_quarantined: int | None = None) -> dict[str, float]:
    """The run's aggregate metrics (see :func:`registry.results.log_results`)."""
    status = results["status"]
    out: dict[str, float] = {
        "n_series": float(len(results)),
        "n_ok": float((status == C.OK).sum()),
        "n_fallback": float((status == C.FALLBACK).sum()),
        "n_failed": float((status == C.FAILED).sum()),
        "n_cold_start": float((status == C.COLD_START).sum()),
    }
    if n_quarantined is not None:
        out["n_quarantined"] = float(n_quarantined)
    usable = results[status.isin(USABLE)]
    values = finite_metric_values(usable)
    if len(values):
        out["metric_value_mean"] = float(values.mean())
        out["metric_value_median"] = float(values.median())
    bt = chosen_backtest(usable)
    for col in bt.columns:
        mean = bt[col].mean()
        if pd.notna(mean) and math.isfinite(mean):
            out[f"backtest.{col}"] = float(mean)
    for model, count in usable["model"].value_counts().items():
        if model:
            out[f"chosen.{model}"] = float(count)
    return out


def gate_compared(series: pd.DataFrame) -> pd.DataFrame:
    """The rows of a gate comparison (GATE_SERIES) that were scored: at least one
    common point and a finite metric on both sides."""
    chal = pd.to_numeric(series["challenger_metric"], errors="coerce")
    champ = pd.to_numeric(series["champion_metric"], errors="coerce")
    keep = (series["n_points"].fillna(0) > 0) & np.isfinite(chal) & np.isfinite(champ)
    return series[keep.to_numpy()]
