"""Rolling-origin backtest of one model on one series.

Windows are counted in steps. A window's *cutoff* is the index where its training data
ends (exclusive): the model is fitted on ``y[:cutoff]`` and scored on
``y[cutoff:cutoff + horizon]``. The last window ends exactly at the end of the series;
each earlier one starts ``step`` steps before the next::

    n=100, horizon=10, windows=3, step=5  ->  cutoffs [80, 85, 90]
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from forecasting.errors import DataContractError, ModelError
from forecasting.metrics import evaluate
from forecasting.models.base import Forecaster


def _min_train(horizon: int, min_train: int | None) -> int:
    """The fewest training points of the oldest window: ``min_train``, else ``2 * horizon``."""
    return max(int(2 * horizon if min_train is None else min_train), 1)


def windows_held(n: int, horizon: int, step: int, min_train: int | None = None) -> int:
    """The most backtest windows a series of ``n`` observations holds under the rule of
    :func:`window_cutoffs` (0: not even one)."""
    room = n - _min_train(horizon, min_train) - horizon
    return room // step + 1 if room >= 0 else 0


def window_cutoffs(n: int, horizon: int, windows: int, step: int, min_train: int | None = None) -> list[int]:
    """Train-end indices (exclusive) of the backtest windows, oldest first.

    Args:
        n: length of the series.
        horizon: steps forecast in each window.
        windows: number of windows.
        step: steps between consecutive cutoffs.
        min_train: fewest training points the oldest window may have; default
            ``2 * horizon``.

    Raises:
        DataContractError: the series is shorter than
            ``min_train + horizon + step * (windows - 1)``.
        ValueError: a non-positive horizon, windows or step.
    """
    for key, value in (("horizon", horizon), ("windows", windows), ("step", step)):
        if int(value) < 1:
            raise ValueError(f"{key}={value!r}: expected an integer >= 1")
    min_train = _min_train(horizon, min_train)
    needed = min_train + horizon + step * (windows - 1)
    if n < needed:
        raise DataContractError(
            f"series has {n} observations but a backtest of {windows} window(s) of horizon "
            f"{horizon} with step {step} needs at least {needed} ({min_train} to train the "
            f"oldest window): use fewer backtest.windows, a smaller step or horizon, or "
            f"longer history"
        )
    last = n - horizon
    return [last - step * (windows - 1 - i) for i in range(windows)]


def check_forecast(forecast: Any, h: int, levels: Sequence[int], who: str = "model") -> dict[str, np.ndarray]:
    """The forecast dict as float arrays; raises :class:`ModelError` unless ``mean``
    and every interval bound have ``h`` finite values."""
    if not isinstance(forecast, dict) or "mean" not in forecast:
        raise ModelError(
            f"{who} returned {type(forecast).__name__} from predict: expected a dict with 'mean'"
        )
    out: dict[str, np.ndarray] = {}
    keys = ["mean"] + [f"{side}-{lv}" for lv in levels for side in ("lo", "hi")]
    for key in keys:
        if key not in forecast:
            raise ModelError(f"{who} forecast has no {key!r}: expected keys {keys}")
        arr = np.asarray(forecast[key], dtype=float).ravel()
        if arr.size != h:
            raise ModelError(f"{who} forecast {key!r} has {arr.size} values: expected {h}")
        if not np.all(np.isfinite(arr)):
            raise ModelError(f"{who} forecast {key!r} has non-finite values")
        out[key] = arr
    return out


def backtest(
    make_model: Callable[[], Forecaster],
    y: np.ndarray,
    X: np.ndarray | None,
    ts: np.ndarray | None,
    horizon: int,
    windows: int,
    step: int,
    levels: Sequence[int],
    m: int,
    min_train: int | None = None,
    future_X: Callable[[np.ndarray, int, int], np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """Fit a fresh model per window and score its forecast.

    Args:
        make_model: returns a new, unfitted model (called once per window).
        y: the whole history (1-d float).
        X: regressors (n x k) or ``None``; a window gets the rows of its training part
            at fit time and the rows of its forecast steps at predict time.
        ts: timestamps (n) or ``None``.
        horizon, windows, step, min_train: see :func:`window_cutoffs`.
        levels: interval levels scored.
        m: season length for the MASE scale.
        future_X: ``future_X(X, cutoff, horizon)``, the regressors of a window's forecast
            steps as known at its cutoff (declared covariates: never a value issued
            after it); default ``X[cutoff:cutoff + horizon]``.

    Returns:
        One dict per window, oldest first: ``window`` (0-based), ``cutoff`` (train-end
        index, exclusive), every :func:`forecasting.metrics.evaluate` metric, and
        ``forecast`` (the checked forecast arrays, for ensembles).

    Raises:
        DataContractError: the series is too short for the windows.
        ModelError: a forecast of the wrong length or with non-finite values; anything
            the model raises passes through.
    """
    y = np.asarray(y, dtype=float)
    rows: list[dict[str, Any]] = []
    for i, cut in enumerate(window_cutoffs(len(y), horizon, windows, step, min_train)):
        model = make_model()
        model.fit(
            y[:cut],
            None if X is None else X[:cut],
            None if ts is None else ts[:cut],
        )
        if X is None:
            ahead = None
        else:
            ahead = X[cut : cut + horizon] if future_X is None else future_X(X, cut, horizon)
        raw = model.predict(horizon, X=ahead, level=list(levels))
        forecast = check_forecast(
            raw, horizon, levels, who=getattr(model, "name", "") or type(model).__name__
        )
        metrics = evaluate(y[cut : cut + horizon], forecast, y[:cut], m, levels)
        rows.append({"window": i, "cutoff": cut, **metrics, "forecast": forecast})
    return rows
