"""``global_gbm``: one LightGBM model for all series, direct multi-step, conformal
intervals.

Direct strategy with the step as a feature: one row per (series, origin, step ``k`` in
1..horizon) predicts ``y[origin + k - 1]`` from what is known at the origin, so one
model forecasts every step of the horizon in one call (no recursion, no model per
step). Features, in the series' own scale (``(y - loc) / scale``):

* ``k``; the last three values;
* per season ``s`` (24 and 168 for hourly data): the latest value at the target's phase
  (``y[t - s * ceil(k / s)]``, same hour yesterday / last week) and the mean of the
  last ``s`` values; the standard deviation of the last main season;
* the target's calendar (hour of day, day of week as sin/cos);
* the target's temperature, when every series has one.

Intervals are split-conformal: the last ``calibration_windows`` origins of every
series are held out of the fit, and the absolute scaled errors there give, per step
``k`` (made non-decreasing in ``k``), the half-width of each level.

Spark: the model trains on the driver from a capped sample (``windows_per_series``
origins per series), which stays small for thousands of series; LightGBM's own
distributed modes and SynapseML are not used (SynapseML has no Spark 4 build on PyPI).
The booster is stored once as LightGBM's text model (no pickle).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from forecasting.errors import ModelError
from forecasting.models.base import Param
from forecasting.models.global_models.common import (
    Forecasts,
    GlobalForecaster,
    GlobalWeights,
    Levels,
    Panel,
    Regressors,
    Spec,
    States,
    array_to_text,
    block_starts,
    cached,
    calendar,
    future_temperatures,
    future_ts,
    scaled_exog,
    series_scale,
    temperature_scaling,
    text_to_array,
    unpack_states,
)

OBJECTIVES = ("l1", "l2", "huber")
PARAMETERS = (
    Param("num_leaves", int, 31, within="[2, inf)"),
    Param("learning_rate", float, 0.05, within="(0, 1]"),
    Param("num_boost_round", int, 200, within="[1, inf)"),
    Param("min_data_in_leaf", int, 50, within="[1, inf)"),
    Param("feature_fraction", float, 0.9, within="(0, 1]"),
    Param("objective", str, "l1", choices=OBJECTIVES),
    Param("windows_per_series", int, 32, within="[1, inf)"),
    Param("calibration_windows", int, 2, within="[0, inf)"),
    # LightGBM threads; 0 = all cores (OpenMP threads thrash on a busy machine)
    Param("num_threads", int, 1, within="[0, inf)"),
)
DEFAULTS: dict[str, Any] = {p.name: p.default for p in PARAMETERS}


def settings(params: dict[str, Any]) -> dict[str, Any]:
    return {**DEFAULTS, **params}


def feature_names(meta: dict[str, Any]) -> list[str]:
    names = ["k", "lag1", "lag2", "lag3"]
    for s in meta["seasons"]:
        names += [f"same_phase_{s}", f"mean_{s}"]
    names += ["std_main", "hour_sin", "hour_cos", "dow_sin", "dow_cos"]
    if meta["use_temperature"]:
        k = int(meta.get("n_exog", 1))
        names += ["temperature"] if k == 1 else [f"exog_{j}" for j in range(k)]
    return names


def features(
    meta: dict[str, Any], hist: np.ndarray, first_ts: np.ndarray, temps: np.ndarray | None
) -> np.ndarray:
    """Rows for every (window, step): ``hist`` (n, L) scaled inputs ending at the
    origin, ``first_ts`` (n,) the first target's timestamp, ``temps`` (n, H) or None.
    Returns ``(n * H, n_features)``, window-major."""
    H, L = meta["horizon"], meta["input_size"]
    n = hist.shape[0]
    k = np.arange(1, H + 1)
    cols: list[np.ndarray] = [np.broadcast_to(k, (n, H))]
    for j in (1, 2, 3):
        cols.append(np.broadcast_to(hist[:, L - j][:, None], (n, H)))
    for s in meta["seasons"]:
        pos = L + (k - 1) - s * np.ceil(k / s).astype(int)  # latest value at the target's phase
        cols.append(hist[:, pos])
        cols.append(np.broadcast_to(hist[:, L - s :].mean(axis=1)[:, None], (n, H)))
    m = meta["seasons"][0]
    cols.append(np.broadcast_to(hist[:, L - m :].std(axis=1)[:, None], (n, H)))
    step = future_ts(np.datetime64("1970-01-01T00:00:00", "us"), meta["freq"], k) - np.datetime64(
        "1970-01-01T00:00:00", "us"
    )
    target_ts = first_ts.astype("datetime64[us]")[:, None] + (step - step[0])[None, :]
    cal = calendar(target_ts.ravel()).reshape(n, H, 4)
    cols += [cal[:, :, i] for i in range(4)]
    if meta["use_temperature"]:
        scaled = scaled_exog(temps, meta)  # (n, H), or (n, H, k) for declared covariates
        cols += [scaled] if scaled.ndim == 2 else [scaled[:, :, j] for j in range(scaled.shape[2])]
    return np.stack([np.asarray(c, dtype=float) for c in cols], axis=2).reshape(n * H, -1)


def _windows(panel: Panel, meta: dict[str, Any], origins_of) -> tuple[np.ndarray, np.ndarray]:
    """Features and scaled targets of the origins ``origins_of(i, n)`` of each series."""
    L, H = meta["input_size"], meta["horizon"]
    Xs, ys = [], []
    for i in range(len(panel)):
        y, ts = panel.y[i], panel.ts[i]
        origins = origins_of(i, len(y))
        if len(origins) == 0:
            continue
        loc, scale = series_scale(y, meta.get("scale_tail"))
        z = (y - loc) / scale
        hist = z[origins[:, None] + np.arange(-L, 0)[None, :]]
        tgt = origins[:, None] + np.arange(H)[None, :]
        temps = panel.temperature[i][tgt] if meta["use_temperature"] else None
        Xs.append(features(meta, hist, ts[origins], temps))
        ys.append(z[tgt].ravel())
    if not Xs:
        return np.zeros((0, len(feature_names(meta)))), np.zeros(0)
    return np.concatenate(Xs), np.concatenate(ys)


def fit(panel: Panel, spec: Spec, params: dict[str, Any], seed: int) -> GlobalWeights:
    """Train on every series of ``panel`` (the driver calls this once per backtest
    cutoff and once on the full histories)."""
    import lightgbm as lgb

    s = settings(params)
    seasons = sorted({int(x) for x in spec.seasonalities if int(x) >= 2}) or [2]
    L = max(max(seasons), 3)
    H = int(spec.horizon)
    use_t = panel.has_temperature
    t_loc, t_scale = temperature_scaling(panel) if use_t else (0.0, 1.0)
    meta = {
        "input_size": L,
        "horizon": H,
        "seasons": seasons,
        "freq": spec.freq,
        "levels": list(spec.levels),
        "use_temperature": bool(use_t),
        "n_exog": panel.n_exog if use_t else 0,
        "t_loc": t_loc,
        "t_scale": t_scale,
        "scale_tail": None,
    }
    C = int(s["calibration_windows"])
    rng = np.random.default_rng(seed)
    W = int(s["windows_per_series"])

    def train_origins(i: int, n: int) -> np.ndarray:
        last = n - H - C * H
        origins = np.arange(L, last + 1)
        if len(origins) > W:
            origins = np.sort(rng.choice(origins, size=W, replace=False))
        return origins

    def calib_origins(i: int, n: int) -> np.ndarray:
        return np.array([o for o in (n - H - c * H for c in range(C)) if o >= L], dtype=int)

    X, y = _windows(panel, meta, train_origins)
    if len(y) == 0:
        raise ValueError(
            f"no series has the {L + H + C * H} observations global_gbm needs (a week of input, the horizon "
            f"and {C} calibration window(s)): use longer histories or calibration_windows: 0"
        )
    objective = {"l1": "regression_l1", "l2": "regression", "huber": "huber"}[s["objective"]]
    lgb_params = {
        "objective": objective,
        "num_leaves": int(s["num_leaves"]),
        "learning_rate": float(s["learning_rate"]),
        "min_data_in_leaf": int(s["min_data_in_leaf"]),
        "feature_fraction": float(s["feature_fraction"]),
        "seed": int(seed),
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": int(s["num_threads"]),
        "verbose": -1,
    }
    booster = lgb.train(
        lgb_params,
        lgb.Dataset(X, y, feature_name=feature_names(meta), free_raw_data=True),
        num_boost_round=int(s["num_boost_round"]),
    )
    Xc, yc = _windows(panel, meta, calib_origins) if C else (X[:0], y[:0])
    if len(yc) == 0:  # nothing held out (short series or calibration_windows: 0): in-sample errors
        Xc, yc = X, y
    err = np.abs(yc - booster.predict(Xc)).reshape(-1, H)
    widths = np.zeros((len(spec.levels), H))
    for j, lv in enumerate(spec.levels):
        n = err.shape[0]
        q = min(1.0, lv / 100.0 * (1 + 1.0 / max(n, 1)))
        widths[j] = np.maximum.accumulate(np.quantile(err, q, axis=0))
    arrays = {"booster": text_to_array(booster.model_to_string()), "conformal": widths}
    return GlobalWeights(GlobalGBM.name, meta, arrays)


def _booster(weights: GlobalWeights):
    import lightgbm as lgb

    return cached(
        weights.id, "booster", lambda: lgb.Booster(model_str=array_to_text(weights.arrays["booster"]))
    )


def forecast_many(weights: GlobalWeights, states: States, X: Regressors, h: int, level: Levels) -> Forecasts:
    meta = weights.meta
    L, H = meta["input_size"], meta["horizon"]
    missing = [lv for lv in level if lv not in meta["levels"]]
    if missing:
        raise ModelError(
            f"level(s) {missing} were not calibrated: this global_gbm has intervals for levels {meta['levels']}"
        )
    booster = _booster(weights)
    n = len(states)
    loc, scale, last_y, last = unpack_states(states, L)
    hist = (last_y - loc[:, None]) / scale[:, None]
    k = int(meta.get("n_exog", 1))
    temps = future_temperatures(X, h, H, "global_gbm", k) if meta["use_temperature"] else None
    means = []
    for done, first in block_starts(last, meta["freq"], h, H):
        block_t = temps[:, done : done + H] if temps is not None else None
        pred = booster.predict(features(meta, hist[:, -L:], first, block_t)).reshape(n, H)
        means.append(pred)
        hist = np.concatenate([hist, pred], axis=1)
    mean_z = np.concatenate(means, axis=1)[:, :h]
    widths = np.asarray(weights.arrays["conformal"], dtype=float)
    # past the trained horizon the widths keep growing like sqrt(blocks)
    steps = np.arange(h)
    block = steps // H
    out = []
    for i in range(n):
        fc = {"mean": loc[i] + scale[i] * mean_z[i]}
        for lv in level:
            w = widths[meta["levels"].index(lv)][steps % H] * np.sqrt(block + 1)
            fc[f"lo-{lv}"] = fc["mean"] - scale[i] * w
            fc[f"hi-{lv}"] = fc["mean"] + scale[i] * w
        out.append(fc)
    return out


class GlobalGBM(GlobalForecaster):
    """Global LightGBM on lag, seasonal-lag, rolling, calendar and temperature features.

    Params (``model_params.global_gbm``): ``num_leaves`` (31), ``learning_rate`` (0.05),
    ``num_boost_round`` (200), ``min_data_in_leaf`` (50), ``feature_fraction`` (0.9),
    ``objective`` (``l1``; ``l2``, ``huber``), ``windows_per_series`` (32 training
    origins per series), ``calibration_windows`` (2 held-out origins per series for the
    conformal intervals), ``num_threads`` (1; 0 = all cores: faster on an idle driver, far slower
    on a busy one).
    """

    name = "global_gbm"
    description = "Global LightGBM across all series: lags, calendar, temperature; conformal intervals."
    requires = ("lightgbm",)
    parameters = PARAMETERS
    forecast_many = staticmethod(forecast_many)
