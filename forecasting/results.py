"""The TRAIN_RESULT row of one series: its failed form, its JSON columns, and the frame
that carries it (exactly the TRAIN_RESULT columns and dtypes).

See :mod:`forecasting.pipeline` for what each column holds.
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from forecasting.choice import Candidate, Decision
from forecasting.config import Config
from forecasting.contract import FAILED, FORECASTS_JSON, SERIES_ID, TRAIN_RESULT
from forecasting.jsontext import loads
from forecasting.series import SeriesData


def json_default(obj: Any) -> Any:
    """``json.dumps`` ``default``: numpy arrays and scalars as lists and numbers."""
    if isinstance(obj, (np.ndarray, np.generic)):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def result_frame_empty() -> pd.DataFrame:
    """An empty frame with the TRAIN_RESULT columns and dtypes."""
    return TRAIN_RESULT.empty_table().to_pandas()


def result_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """``rows`` as a frame with the TRAIN_RESULT columns and dtypes."""
    return pa.Table.from_pylist(rows, schema=TRAIN_RESULT).to_pandas()


def failed_row(series_id: str, config: Config, reason: str) -> dict[str, Any]:
    """The row of a series with nothing fitted: status ``failed`` and ``reason``."""
    return {
        SERIES_ID: series_id,
        "status": FAILED,
        "reason": reason,
        "model": "",
        "metric": str(config.backtest.metric),
        "metric_value": float("nan"),
        "n_obs": 0,
        "end": None,
        "backtest_json": "[]",
        "candidates_json": "{}",
        "model_json": "",
        "tuned_json": "{}",
        "forecasts_json": "[]",
    }


def failed_result(series_id: str, reason: str, config: Config) -> pd.DataFrame:
    """The one-row result of a series that could not be processed at all (e.g. its
    worker died): the engines' ``on_error`` rows."""
    return result_frame([failed_row(series_id, config, reason)])


def backtest_rows(candidates: Sequence[Candidate], data: SeriesData) -> list[dict[str, Any]]:
    """The ``backtest_json`` entries: every window of every candidate that finished its
    backtest, metrics without the forecast, non-finite metrics as ``None``."""
    rows = []
    for cand in candidates:
        if not cand.ok:
            continue
        for w in cand.windows:
            entry = {"model": cand.name, "window": int(w["window"]), "cutoff": data.cutoff_iso(w["cutoff"])}
            entry.update(
                {k: _finite_or_none(v) for k, v in w.items() if k not in ("window", "cutoff", "forecast")}
            )
            rows.append(entry)
    return rows


def forecast_windows(candidates: Sequence[Candidate], data: SeriesData, models: Sequence[str]) -> list:
    """The ``forecasts_json`` entries: per backtest window of the candidates named in
    ``models`` (those that finished their backtest), its cutoff, the times and actuals of
    its forecast steps and each model's forecast (``mean``, ``lo-<lv>``, ``hi-<lv>``)."""
    windows: dict[int, dict[str, Any]] = {}
    for cand in candidates:
        if not cand.ok or cand.name not in models:
            continue
        for w in cand.windows:
            forecast = w.get("forecast")
            if forecast is None:
                continue
            cut, h = int(w["cutoff"]), len(forecast["mean"])
            entry = windows.setdefault(
                int(w["window"]),
                {
                    "window": int(w["window"]),
                    "cutoff": data.cutoff_iso(cut),
                    "ts": [pd.Timestamp(t).isoformat() for t in data.ts[cut : cut + h]],
                    "y": [_finite_or_none(float(v)) for v in data.y[cut : cut + h]],
                    "models": {},
                },
            )
            entry["models"][cand.name] = {
                k: [_finite_or_none(float(v)) for v in a] for k, a in forecast.items()
            }
    return [windows[k] for k in sorted(windows)]


def stored_forecasts(
    candidates: Sequence[Candidate], data: SeriesData, decision: Decision, store: str
) -> str:
    """The ``forecasts_json`` of ``backtest.store_forecasts``: every candidate's windows
    (``all``), the chosen model's (``chosen``) or none."""
    if store == "all":
        return json.dumps(forecast_windows(candidates, data, [c.name for c in candidates]), allow_nan=False)
    if store == "chosen" and decision.model:
        return json.dumps(forecast_windows(candidates, data, [decision.model]), allow_nan=False)
    return "[]"


def backtest_forecast_rows(results: pd.DataFrame, run_id: str, levels: Sequence[int]) -> pd.DataFrame:
    """gold/backtest_forecasts rows of TRAIN_RESULT rows (``series_id``,
    ``forecasts_json``): one per series, model, window and step (``lead`` 1..h)."""
    cols: dict[str, list] = {k: [] for k in ("series_id", "model", "window", "cutoff", "lead", "ts", "y")}
    bounds = {
        f"yhat_{side}_{lv}": f"{key}-{lv}"
        for lv in levels
        for side, key in (("lower", "lo"), ("upper", "hi"))
    }
    values: dict[str, list] = {"yhat": [], **{c: [] for c in bounds}}
    for sid, payload in zip(results[SERIES_ID], results[FORECASTS_JSON]):
        for w in loads(payload or "[]"):
            h = len(w["ts"])
            for model, forecast in w["models"].items():
                cols["series_id"] += [sid] * h
                cols["model"] += [model] * h
                cols["window"] += [w["window"]] * h
                cols["cutoff"] += [w["cutoff"]] * h
                cols["lead"] += list(range(1, h + 1))
                cols["ts"] += w["ts"]
                cols["y"] += w["y"]
                values["yhat"] += forecast["mean"]
                for col, key in bounds.items():
                    values[col] += forecast.get(key, [None] * h)
    frame = pd.DataFrame({**cols, **values})
    for c in ("cutoff", "ts"):
        frame[c] = pd.to_datetime(frame[c]).astype("datetime64[us]")
    return frame.assign(run_id=run_id).astype({"window": "int64", "lead": "int64"})


def outcome_fields(
    data: SeriesData,
    candidates: Sequence[Candidate],
    decision: Decision,
    tuned_report: dict[str, Any],
    store: str = "none",
) -> dict[str, Any]:
    """The row's columns once the series is decided: status, model, metric and JSON
    (the backtest forecasts as ``store``: ``backtest.store_forecasts``)."""
    return dict(
        status=decision.status,
        reason=decision.reason,
        model=decision.model,
        metric_value=float(decision.metric_value),
        backtest_json=json.dumps(backtest_rows(candidates, data), allow_nan=False),
        candidates_json=json.dumps({c.name: c.summary() for c in candidates}, allow_nan=False),
        model_json=decision.fitted or "",
        tuned_json=json.dumps(tuned_report, default=json_default, allow_nan=False),
        forecasts_json=stored_forecasts(candidates, data, decision, store),
    )
