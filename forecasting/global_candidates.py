"""Global models in the per-series step: the driver's results for one series, read from
its rows and scored as candidates.

The driver (:mod:`training.global_models`) trains each global model across all series
and puts, in the column :data:`GLOBAL_COLUMN` of one row per series, per global model
its backtest forecasts on this series' own windows, its fitted per-series
``model_json`` and the forecast that model_json gives. :func:`global_candidate` scores
those forecasts on the same windows and metrics as every other candidate.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pandas as pd

from forecasting.backtest import check_forecast, window_cutoffs
from forecasting.choice import CANDIDATE_FAILED, Candidate, scored
from forecasting.config import Config
from forecasting.errors import DataContractError, ModelError
from forecasting.metrics import evaluate
from forecasting.series import SeriesData

GLOBAL_COLUMN = "_global_candidates"  # driver-made global-model results (JSON), one row per series


def global_payload(pdf: pd.DataFrame) -> dict[str, Any]:
    """The driver-made global-model results in a series' rows (``{}`` when none)."""
    if GLOBAL_COLUMN not in pdf.columns:
        return {}
    values = pdf[GLOBAL_COLUMN].dropna()
    values = values[values.astype(str) != ""]
    if values.empty:
        return {}
    data = json.loads(values.iloc[0])
    if not isinstance(data, dict):
        raise DataContractError(f"{GLOBAL_COLUMN} holds {type(data).__name__}: expected a JSON object")
    return data


def arrays(forecast: dict[str, Any]) -> dict[str, np.ndarray]:
    """A forecast read from JSON, as float arrays."""
    return {k: np.asarray(v, dtype=float) for k, v in forecast.items()}


def global_candidate(name: str, entry: dict[str, Any] | None, data: SeriesData, config: Config) -> Candidate:
    """A global model's candidate: its driver-made backtest forecasts scored on this
    series' own windows (the same windows and metrics as every other candidate)."""
    if entry is None:
        return Candidate(
            name,
            CANDIDATE_FAILED,
            f"{name} is a global model and no forecasts of it came with this series: global models are "
            "trained across series by the train job (training.global_models) before the per-series step",
        )
    fit_s = float(entry.get("fit_s") or 0.0)
    if entry.get("status") != "ok":
        return Candidate(name, CANDIDATE_FAILED, str(entry.get("reason") or "failed"), fit_s=fit_s)
    horizon, levels, m = config.horizon, list(config.levels), data.season_length
    cutoffs = window_cutoffs(len(data.y), horizon, config.backtest.windows, config.backtest_step)
    expected = [data.cutoff_iso(c) for c in cutoffs]
    got = [w.get("cutoff") for w in entry.get("windows", [])]
    if got != expected:
        raise ModelError(
            f"{name}: backtest windows ending {got} do not match this series' windows ending {expected}"
        )
    windows = []
    for i, (cut, w) in enumerate(zip(cutoffs, entry["windows"])):
        forecast = check_forecast(arrays(w["forecast"]), horizon, levels, who=name)
        metrics = evaluate(data.y[cut : cut + horizon], forecast, data.y[:cut], m, levels)
        windows.append({"window": i, "cutoff": cut, **metrics, "forecast": forecast})
    return scored(name, windows, config.backtest.metric, fit_s=fit_s)
