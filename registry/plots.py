"""The two plots of a training run: the error distribution over series and a sample of
series' forecasts against actuals (their last backtest window, as the backtest forecast
it) and their next horizon (PNG files; :mod:`registry.results` logs
them under ``plots/``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from forecasting import contract as C
from forecasting.comparison import refit
from forecasting.config import Config
from forecasting.frequency import future_timestamps
from forecasting.models import load_fitted
from forecasting.series import prepare
from registry.metrics import USABLE, finite_metric_values

HISTORY_TAIL_SEASONS = 3  # history drawn before the forecast, in horizons


def _figure(width: float, height: float):
    # The object API renders with Agg without touching pyplot's global backend/state.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def plot_errors(results: pd.DataFrame, config: Config, path: Path) -> None:
    """Histogram of ``metric_value`` over ok and fallback series."""
    values = finite_metric_values(results[results["status"].isin(USABLE)]).to_numpy(dtype=float)
    fig = _figure(7, 4)
    ax = fig.add_subplot()
    if len(values):
        ax.hist(values, bins=n_bins(len(values)), color="#4C72B0")
    _error_axes(ax, len(values), float(np.median(values)) if len(values) else None, config)
    fig.savefig(path, dpi=100)


def n_bins(n_values: int) -> int:
    """The error histogram's number of bins for ``n_values`` values."""
    return min(50, max(5, n_values // 5))


def bin_edges(low: float, high: float, n_values: int) -> np.ndarray:
    """The error histogram's bin edges for ``n_values`` values from ``low`` to ``high``,
    as :func:`numpy.histogram` (matplotlib's ``hist``) makes them."""
    if low == high:
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, n_bins(n_values) + 1)


def plot_error_histogram(
    counts: np.ndarray, edges: np.ndarray, median: float | None, config: Config, path: Path
) -> None:
    """:func:`plot_errors` drawn from the histogram's counts per bin (summed up where the
    values are, e.g. by a Spark aggregation) and the values' median."""
    fig = _figure(7, 4)
    ax = fig.add_subplot()
    n = int(np.sum(counts))
    if n:
        ax.hist(edges[:-1], bins=edges, weights=counts, color="#4C72B0")
    _error_axes(ax, n, median, config)
    fig.savefig(path, dpi=100)


def _error_axes(ax, n: int, median: float | None, config: Config) -> None:
    """The error histogram's median line, labels and title (its text without values)."""
    metric = config.backtest.metric
    if n and median is not None:
        ax.axvline(median, color="k", linestyle="--", label=f"median {median:.3g}")
        ax.legend()
    else:
        ax.text(
            0.5, 0.5, "no series with a backtest metric", ha="center", va="center", transform=ax.transAxes
        )
    ax.set_xlabel(f"backtest {metric} of the chosen model")
    ax.set_ylabel("series")
    ax.set_title(f"{metric} over {n} series")


def sample_series(results: pd.DataFrame, config: Config) -> list[str]:
    """``config.mlflow.sample_plots`` usable series, drawn with ``config.seed``."""
    ids = sorted(results.loc[results["status"].isin(USABLE), C.SERIES_ID].astype(str))
    return [ids[i] for i in sample_ranks(len(ids), config)]


def sample_ranks(n_usable: int, config: Config) -> list[int]:
    """The ranks (in series id order) of the usable series :func:`sample_series` draws
    out of ``n_usable``: where the ids are not at hand (on Spark), they are looked up
    by rank."""
    n = min(config.mlflow.sample_plots, n_usable)
    if n <= 0:
        return []
    picked = np.random.default_rng(config.seed).choice(n_usable, size=n, replace=False)
    return [int(i) for i in sorted(picked)]


def _model_freq(data: dict[str, Any]) -> str | None:
    if data.get("freq"):
        return data["freq"]
    for member in data.get("members") or []:
        if member.get("freq"):
            return member["freq"]
    return None


def backtest_cutoff(row: pd.Series, config: Config) -> pd.Timestamp | None:
    """The cutoff of the chosen model's last backtest window (``backtest_json``)."""
    try:
        windows = json.loads(row.get("backtest_json") or "[]")
    except (TypeError, ValueError):
        return None
    cutoffs = [w["cutoff"] for w in windows if w.get("model") == row["model"] and w.get("cutoff")]
    return pd.Timestamp(max(cutoffs)) if cutoffs else None


def stored_backtest(row: pd.Series, config: Config) -> pd.DataFrame | None:
    """The chosen model's last backtest window as the backtest forecast it
    (``forecasts_json``, kept under ``backtest.store_forecasts``): ``ts, y, mean,
    lo-<lv>, hi-<lv>``; ``None`` when the row has no such window or lacks a level."""
    try:
        windows = json.loads(row.get(C.FORECASTS_JSON) or "[]")
    except (TypeError, ValueError):
        return None
    model = row.get("model")
    windows = [w for w in windows if model in (w.get("models") or {}) and w.get("ts")]
    if not windows:
        return None
    last = max(windows, key=lambda w: pd.Timestamp(w["cutoff"]))
    forecast = last["models"][model]
    keys = ["mean", *(f"{side}-{lv}" for lv in sorted(config.levels) for side in ("lo", "hi"))]
    if any(len(forecast.get(k) or []) != len(last["ts"]) for k in keys):
        return None
    values = {k: np.asarray(forecast[k], dtype=float) for k in keys}  # null (non-finite) -> NaN
    ts = pd.to_datetime(pd.Series(last["ts"])).to_numpy()
    return pd.DataFrame({C.TS: ts, C.Y: np.asarray(last["y"], dtype=float), **values})


def backtest_forecast(row: pd.Series, g: pd.DataFrame, config: Config) -> pd.DataFrame | None:
    """The chosen model's forecast of its last backtest window: ``ts, mean, lo-<lv>,
    hi-<lv>`` beside the actuals (``y``). The backtest's own forecast where the row keeps
    it (:func:`stored_backtest`); else the chosen model (model and parameters) fitted
    again up to that window's cutoff. ``None`` without a cutoff or actuals after it."""
    stored = stored_backtest(row, config)
    if stored is not None:
        return stored
    cutoff = backtest_cutoff(row, config)
    if cutoff is None:
        return None
    ts = pd.to_datetime(g[C.TS])
    before, after = g[ts <= cutoff], g[ts > cutoff].head(config.horizon)
    if before.empty or after.empty:
        return None
    fc = refit(row["model_json"], prepare(before, config), len(after), sorted(config.levels), config)
    return pd.DataFrame({C.TS: pd.to_datetime(after[C.TS]).to_numpy(), C.Y: after[C.Y].to_numpy(), **fc})


def _bands(ax, x, fc, levels: list[int], color: str, label: str) -> None:
    ax.plot(x, fc["mean"], color=color, lw=1.2, label=label)
    for lv, alpha in zip(reversed(levels), np.linspace(0.15, 0.35, len(levels))):
        ax.fill_between(x, fc[f"lo-{lv}"], fc[f"hi-{lv}"], color=color, alpha=alpha, lw=0)


def _future(row: pd.Series, g: pd.DataFrame | None, config: Config) -> tuple[pd.DatetimeIndex, Any]:
    """The chosen model's next ``config.horizon`` steps after the training end. A model
    that needs future regressors gets the last observed ones repeated (plot only)."""
    h, levels = config.horizon, sorted(config.levels)
    fitted = load_fitted(row["model_json"])
    try:
        fc = fitted.predict(h, level=levels)
    except Exception:
        if g is None or "temperature" not in g or not g["temperature"].notna().any():
            raise
        last = g["temperature"].ffill().to_numpy(dtype=float)[-h:]
        fc = fitted.predict(h, X=np.resize(last, h).reshape(-1, 1), level=levels)
    freq = _model_freq(json.loads(row["model_json"])) or config.freq
    return pd.DatetimeIndex(future_timestamps(pd.Timestamp(row["end"]), freq, np.arange(1, h + 1))), fc


def _panel(ax, sid: str, row: pd.Series, g: pd.DataFrame | None, config: Config) -> None:
    """One series: its actuals, the backtest forecast against them, the next horizon."""
    levels, h = sorted(config.levels), config.horizon
    title = f"{sid}: {row['model']} ({row['status']})"
    if g is not None and len(g):
        tail = g.tail((HISTORY_TAIL_SEASONS + 1) * h)
        ax.plot(pd.to_datetime(tail[C.TS]), tail[C.Y], color="k", lw=1, label="actual")
    try:
        bt = backtest_forecast(row, g, config) if g is not None and len(g) else None
        if bt is not None:
            _bands(ax, bt[C.TS], bt, levels, "#4C72B0", "backtest forecast")
            title += f", backtest {config.backtest.metric} {float(row['metric_value']):.3g}"
    except Exception as exc:  # noqa: BLE001 - a plot never fails the run
        title += f" - no backtest: {str(exc)[:40]}"
    try:
        future, fc = _future(row, g, config)
        _bands(ax, future, fc, levels, "#C44E52", "forecast")
    except Exception as exc:  # noqa: BLE001 - a plot never fails the run
        title += f" - no forecast: {str(exc)[:60]}"
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)


def plot_forecasts(results: pd.DataFrame, config: Config, history: pd.DataFrame, path: Path) -> None:
    """Forecasts against actuals for a sample of series: per series, its last readings,
    the chosen model's forecast of its last backtest window (:func:`backtest_forecast`,
    intervals shaded) over the actuals of that window, and its forecast of the next
    ``config.horizon`` steps after the data."""
    ids = sample_series(results, config)
    if not ids:
        return
    rows = results.set_index(results[C.SERIES_ID].astype(str))
    hist = history[history[C.SERIES_ID].astype(str).isin(ids)]
    groups = {str(k): g.sort_values(C.TS) for k, g in hist.groupby(C.SERIES_ID, sort=False)}
    ncols = 2 if len(ids) > 1 else 1
    nrows = math.ceil(len(ids) / ncols)
    fig = _figure(6 * ncols, 3 * nrows)
    for i, sid in enumerate(ids):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        _panel(ax, sid, rows.loc[sid], groups.get(sid), config)
        if i == 0:
            ax.legend(fontsize=7)
    fig.savefig(path, dpi=90)
