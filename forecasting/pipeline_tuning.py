"""Tuning in the per-series step (``tune.enabled``): one model's Hyperopt search on the
backtest windows that end where the selection windows begin.

The search itself, and the search-space files, are :mod:`forecasting.tuning`; this
module cuts the series' tuning history, scores a parameter set on it and reports the
outcome as the model's ``tuned_json`` entry. Global models are tuned on the driver
(:mod:`training.global_models`), not here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import numpy as np

from forecasting.backtest import window_cutoffs
from forecasting.choice import mean_score, short_reason
from forecasting.config import Config
from forecasting.errors import DataContractError
from forecasting.models import Forecaster
from forecasting.models.global_models import is_global
from forecasting.series import SeriesData, backtest_model
from forecasting.tuning import SearchSpace, load_search_spaces, minimize

_SPACES: dict[str | None, dict[str, SearchSpace]] = {}


def search_spaces(config: Config) -> dict[str, SearchSpace]:
    """The validated search spaces of the per-series models (read once per process)."""
    path = config.tune.search_spaces
    if path not in _SPACES:
        _SPACES[path] = load_search_spaces(path)
    return {k: v for k, v in _SPACES[path].items() if not is_global(k)}


@dataclass
class TuningHistory:
    """What one parameter set is scored on: the series before its selection windows."""

    build: Callable[[dict[str, Any]], Forecaster]  # tuned values -> unfitted model
    history: SeriesData
    X: np.ndarray | None
    config: Config


def tuning_loss(tuning: TuningHistory, params: dict[str, Any]) -> float:
    """The mean ``backtest.metric`` of the model with ``params`` on the tuning windows."""
    windows = backtest_model(
        partial(tuning.build, params), tuning.history, tuning.X, tuning.config, tuning.config.tune.windows
    )
    return mean_score(windows, tuning.config.backtest.metric)


def tune_model(
    space: SearchSpace,
    data: SeriesData,
    config: Config,
    build: Callable[[dict[str, Any]], Forecaster],
    X: np.ndarray | None,
) -> dict[str, Any]:
    """Hyperopt search for one model on the windows before the selection windows; the
    ``tuned_json`` entry (``params`` empty when the configured values stayed best).

    ``build(params)`` makes the model with ``params`` over its configured values; ``X``
    is its regressor on the whole series (or ``None``).
    """
    horizon, step = config.horizon, config.backtest_step
    try:
        first = window_cutoffs(len(data.y), horizon, config.backtest.windows, step)[0]
        window_cutoffs(first, horizon, config.tune.windows, step)  # room for the tuning windows?
    except (DataContractError, ValueError) as exc:
        return {"skipped": f"history too short to tune before the selection windows ({short_reason(exc)})"}
    tuning = TuningHistory(build, data.head(first), None if X is None else X[:first], config)
    loss = partial(tuning_loss, tuning)
    try:
        default_loss = loss({})
    except Exception:  # noqa: BLE001 - the configured values fail here: any tuned value is better
        default_loss = float("inf")
    if not math.isfinite(default_loss):
        default_loss = float("inf")
    result = minimize(
        loss,
        space,
        max_evals=config.tune.max_evals,
        timeout_s=config.tune.timeout_s,
        seed=config.seed,
        longest_season=max(data.seasonalities),
        default_loss=default_loss,
    )
    return result.summary()
