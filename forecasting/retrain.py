"""Retrain only what changed: per series, fit again or carry the previous model over.

``retrain.policy`` (:class:`forecasting.config.settings.Retrain`):

* ``full``: every series is backtested, chosen and fitted again
  (:func:`forecasting.pipeline.process_series`), ``refit = full``;
* ``changed``: a series is fitted again when it is ``new`` (no previous model),
  it was forecast by a ``cold_start`` profile last time (it may have graduated), its
  previous model ``failed``, it ``drifted`` (gold/drift of the latest monitoring),
  its history was ``changed`` (its silver rows up to the previous model's end hash to
  another value than that model's ``history_hash``: a revision of history, not the
  readings appended after it) or it is ``stale`` (its silver end is more than
  ``retrain.max_model_age_days`` after the end of the data its parameters were
  estimated on, ``fitted_end``), in that order of precedence; every other series is
  ``carried``: it keeps its previous row (status, chosen model, backtest, parameters)
  and only its model's state is brought up to the new readings (:func:`carry`);
* ``drifted+stale``: as ``changed`` without the revision check.

Under a partial policy a series fitted again is chosen on more backtest windows than
``full`` uses (:func:`chosen_on`: by default those covering a week), since its model is
then carried for days, over weekdays and weekends.

Carrying a model over (:func:`carry`): each model of the chosen one (each member of an
ensemble) is updated with the readings after its end, without estimating anything:

* ``ets``: the ETS(A, T, S) recursions run over the new readings from the stored final
  state with the stored smoothing parameters (``alpha, beta, gamma, phi``; ``sigma2``
  kept);
* ``theta``: the SES level runs over the new seasonally adjusted readings with the
  stored ``alpha`` (the drift ``b0``, the seasonal factors, rotated, and ``sigma2`` kept);
* every other model is fitted again on the series' history with its stored parameters
  (:func:`forecasting.refit.refit_member`): for ``seasonal_naive``, ``weekly_naive``
  and ``seasonal_window`` that fit is the state update (their state is the last
  seasons of data, nothing is estimated); ``mstl``, ``arima``, ``prophet`` and the
  intermittent models re-estimate their parameters (their state cannot be moved on
  without it); a model using global weights is never carried (the weights are trained
  again with every run, and the new version stores only the new ones): ``refit = new``
  weights, see :func:`decide`.

The interval calibration and bounds stay those of the previous model. The engines map
:func:`retrain_series` over the series; the previous row travels in its series' group
as one extra row (:data:`CARRY_COLUMN` set, ``ts`` and ``y`` null: see
:func:`carry_rows`), so it is read by whoever reads the series (on Spark, the executors).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from forecasting import contract as C
from forecasting.backtest import check_forecast, windows_held
from forecasting.choice import ENSEMBLE
from forecasting.config import Config
from forecasting.errors import FrequencyError
from forecasting.frequency import freq_of
from forecasting.jsontext import loads
from forecasting.models import EnsembleForecaster, load_fitted, model_class
from forecasting.models.base import one_thread
from forecasting.models.calibrated import AdjustedForecaster
from forecasting.pipeline import failed_result, process_series
from forecasting.refit import refit_member
from forecasting.results import json_default
from forecasting.series import SeriesData, as_datetimes, prepare

CARRY_COLUMN = "_carry"  # the previous row of the series (JSON), on an extra row of its group
CARRY_FIELDS = [*C.TRAIN_RESULT.names, "run_id", "from_run", "fitted_end", "history_hash"]
UPDATED = ("ets", "theta")  # models whose state is moved on without estimating anything
HASHED = (C.TS, C.Y, "temperature")  # the silver columns a history hash covers
FLAGS = ("is_filled", "is_outlier")  # the boolean silver columns
DAY = pd.Timedelta("1D")


# -- the carry rows (where the batch is read) ------------------------------------------
def carry_rows(prev: pd.DataFrame) -> pd.DataFrame:
    """One row per series of ``prev`` (its previous gold/models rows, CARRY_FIELDS, and
    ``drifted``: whether gold/drift flagged it): ``series_id`` and the JSON of the row
    in :data:`CARRY_COLUMN` (``ts``, ``y`` null), to add to the series' silver rows."""
    out = pd.DataFrame({C.SERIES_ID: prev[C.SERIES_ID].astype(str)})
    records = prev.reindex(columns=[*CARRY_FIELDS, "drifted"]).to_dict("records")
    out[CARRY_COLUMN] = [json.dumps({k: _plain(v) for k, v in r.items()}) for r in records]
    return out.reset_index(drop=True)


def _plain(value: Any) -> Any:
    """A value of a gold/models row as JSON holds it: timestamps as ISO text, missing
    values as null, numpy scalars as Python ones."""
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, (pd.Timestamp, np.datetime64)):
        return None if pd.isna(value) else pd.Timestamp(value).isoformat()
    if pd.isna(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def with_carry(readings: pd.DataFrame, carry: pd.DataFrame) -> pd.DataFrame:
    """``readings`` with the carry rows of its series appended (:func:`carry_rows`)."""
    carry = carry[carry[C.SERIES_ID].isin(readings[C.SERIES_ID].unique())]
    # flags False on the carry rows: a null would make the columns objects, which each
    # group would have to turn back into booleans (:func:`split`; Spark's rows still do)
    carry = carry.assign(**{f: False for f in FLAGS if f in readings.columns})
    out = readings.assign(**{CARRY_COLUMN: pd.Series(pd.NA, index=readings.index, dtype="string")})
    return pd.concat([out, carry.astype({CARRY_COLUMN: "string"})], ignore_index=True)


def split(pdf: pd.DataFrame) -> tuple[dict[str, Any] | None, pd.DataFrame]:
    """A group's previous row (``None``: none) and its silver rows."""
    if CARRY_COLUMN not in pdf.columns:
        return None, pdf
    is_carry = pdf[CARRY_COLUMN].notna().to_numpy()
    rows = pdf.take(np.flatnonzero(~is_carry))  # one copy (loc[mask, columns] made two)
    del rows[CARRY_COLUMN]
    for flag in FLAGS:  # the carry row's null made them objects: booleans again (null: False)
        if flag in rows.columns and rows[flag].dtype == object:
            rows[flag] = rows[flag].to_numpy() == True  # noqa: E712 - elementwise: None is False
    if not is_carry.any():
        return None, rows
    return loads(pdf.loc[is_carry, CARRY_COLUMN].iloc[0]), rows


# -- the decision ----------------------------------------------------------------------
def history_hash(rows: pd.DataFrame, upto: Any) -> str:
    """A content hash of a series' silver rows with ``ts <= upto`` (by time; ``ts``,
    ``y`` and ``temperature``): the same rows give the same hash in any process."""
    ts = as_datetimes(rows[C.TS]).to_numpy().astype("datetime64[us]")
    if upto is not None:
        (where,) = np.nonzero(ts <= pd.Timestamp(upto).to_datetime64())
    else:
        where = np.arange(len(ts))
    where = where[np.argsort(ts[where], kind="stable")]
    digest = hashlib.sha1()
    digest.update(ts[where].astype("int64").tobytes())
    for col in HASHED[1:]:
        if col not in rows.columns:
            digest.update(np.full(len(where), np.nan).tobytes())
            continue
        values = rows[col]
        if not pd.api.types.is_numeric_dtype(values):
            values = pd.to_numeric(values, errors="coerce")
        digest.update(values.to_numpy(float, na_value=np.nan)[where].tobytes())
    return digest.hexdigest()


def _uses_global(model_json: str) -> bool:
    data = loads(model_json)
    members = data.get("members") if data.get("model") == ENSEMBLE else [data]
    return any(model_class(m["model"]).is_global for m in members or [])


def decide(prev: dict[str, Any] | None, rows: pd.DataFrame, config: Config) -> str:
    """Why the series is fitted in this run (a reason of :data:`RETRAIN_REASONS`), or
    ``carried``; see the module."""
    policy = config.retrain.policy
    if policy == C.FULL:
        return C.FULL
    if prev is None:
        return C.NEW
    if prev.get("status") == C.COLD_START:
        return C.COLD_START_REFIT
    if prev.get("status") not in (C.OK, C.FALLBACK) or not prev.get("model_json"):
        return C.PREVIOUS_FAILED
    if _uses_global(prev["model_json"]):
        return C.NEW  # global weights are trained again: the model refers to the new ones
    if prev.get("drifted"):
        return C.DRIFTED
    end = as_datetimes(rows[C.TS]).max()
    prev_end = pd.Timestamp(prev["end"]) if prev.get("end") else None
    if prev_end is None or end < prev_end:
        return C.CHANGED
    if policy == "changed" and history_hash(rows, prev_end) != prev.get("history_hash"):
        return C.CHANGED
    fitted_end = pd.Timestamp(prev.get("fitted_end") or prev_end)
    max_age = config.retrain.max_model_age_days
    if max_age is not None and end - fitted_end > max_age * DAY:
        return C.STALE
    return C.CARRIED


# -- the per-series function -----------------------------------------------------------
def retrain_series(pdf: pd.DataFrame, config: Config) -> pd.DataFrame:
    """One series' RETRAIN_RESULT row: trained (:func:`process_series`; ``from_run``
    null: this run) or its previous row carried over (:func:`carried`), with the reason
    and the retrain columns. Never raises (a carry that fails trains the series:
    reason ``failed``)."""
    prev, rows = split(pdf)
    reason = decide(prev, rows, config) if len(rows) else C.NEW
    out = None
    if reason == C.CARRIED:
        try:
            out = carried(prev, rows, config)
        except Exception:  # noqa: BLE001 - the series is trained instead
            reason = C.PREVIOUS_FAILED
    if out is None:
        out = process_series(rows, chosen_on(config, rows)).iloc[0].to_dict()
        out.update(from_run=None, fitted_end=out["end"])
    out["refit"] = reason
    out["history_hash"] = history_hash(rows, out["end"]) if out.get("end") is not None and len(rows) else None
    return pa.Table.from_pylist([_clean(out)], schema=C.RETRAIN_RESULT).to_pandas()


_WINDOWED: dict[tuple[int, int], tuple[Config, Config]] = {}


def chosen_on(config: Config, rows: pd.DataFrame) -> Config:
    """``config`` with the backtest windows a series fitted under a partial policy is
    chosen on (:meth:`~forecasting.config.settings.Config.selection_windows`: a week of
    windows by default), as many as its ``rows`` hold but at least ``backtest.windows``
    (a series too short for those fails as under ``full``; with ``tune.enabled`` the
    tuning windows keep their room before them). Its model is carried for
    days after this choice, over weekdays and weekends, while ``full`` chooses again
    every night on the latest windows."""
    base = config.backtest.windows
    if config.retrain.policy == C.FULL or len(rows) == 0:
        return config
    ts = np.sort(as_datetimes(rows[C.TS]).to_numpy().astype("datetime64[us]"))
    try:
        want = config.selection_windows(config.freq or freq_of(ts))
    except FrequencyError:  # too short to tell: process_series says what is wrong
        return config
    h, step = config.horizon, config.backtest_step
    # with tuning, its windows keep their room before the oldest selection window
    room = 3 * h + step * (config.tune.windows - 1) if config.tune.enabled else None
    windows = max(base, min(want, windows_held(len(ts), h, step, room)))
    if windows == base:
        return config
    key = (id(config), windows)
    if key not in _WINDOWED:  # one validated copy per run's config and count, not per series
        if len(_WINDOWED) > 16:
            _WINDOWED.clear()
        _WINDOWED[key] = (config, config.replace(**{"backtest.windows": windows}))
    return _WINDOWED[key][1]


def failed_retrain(series_id: str, reason: str, config: Config) -> pd.DataFrame:
    """The row of a series whose worker died (the engines' ``on_error``)."""
    row = failed_result(series_id, reason, config=config).iloc[0].to_dict()
    row.update(refit=C.PREVIOUS_FAILED, from_run=None, fitted_end=None, history_hash=None)
    return pa.Table.from_pylist([_clean(row)], schema=C.RETRAIN_RESULT).to_pandas()


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    """``row``'s values as Arrow takes them (NaN/NaT -> null, timestamps as datetimes)."""
    out = {}
    for name in C.RETRAIN_RESULT.names:
        value = row.get(name)
        if value is not None and not isinstance(value, (str, list, dict)) and pd.isna(value):
            value = None
        if name in ("end", "fitted_end") and value is not None:
            value = pd.Timestamp(value).tz_localize(None).to_pydatetime()
        out[name] = value
    return out


def carried(prev: dict[str, Any], rows: pd.DataFrame, config: Config) -> dict[str, Any]:
    """The previous row with its model brought up to ``rows`` (:func:`carry`): the
    chosen model, backtest and scores kept; ``end`` and ``n_obs`` those of the rows."""
    with one_thread(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = prepare(rows, config)
        text = carry(prev["model_json"], data, pd.Timestamp(prev["end"]), config)
    out = {k: prev.get(k) for k in C.TRAIN_RESULT.names}
    out.update(
        model_json=text,
        end=pd.Timestamp(data.ts[-1]).to_pydatetime(),
        n_obs=int(len(data.y)),
        from_run=prev.get("from_run") or prev.get("run_id"),
        fitted_end=prev.get("fitted_end") or prev.get("end"),
    )
    return out


def carry(model_json: str, data: SeriesData, prev_end: pd.Timestamp, config: Config) -> str:
    """``model_json`` (a TRAIN_RESULT model) brought up to ``data``'s end: each model
    updated with the readings after ``prev_end`` (ETS, theta) or fitted again with its
    stored parameters (the others); calibration and bounds kept. Raises when the result
    does not forecast."""
    loaded = load_fitted(model_json)
    base = loaded.base if isinstance(loaded, AdjustedForecaster) else loaded
    new = data.ts > np.datetime64(prev_end.tz_localize(None) if prev_end.tzinfo else prev_end)
    if isinstance(base, EnsembleForecaster):
        members = [_moved_on(m, data, new, config) for m in base.members]
        base = EnsembleForecaster(members, base.method)
    else:
        base = _moved_on(base, data, new, config)
    if isinstance(loaded, AdjustedForecaster):
        loaded.base = base
        model: Any = loaded
    else:
        model = base
    text = json.dumps(model.to_dict(), default=json_default)
    if not any(data.exog(m.name) is not None for m in getattr(base, "members", [base])):
        levels = list(config.levels)
        check_forecast(
            load_fitted(text).predict(config.horizon, level=levels), config.horizon, levels, who="carry"
        )
    return text


def _moved_on(model: Any, data: SeriesData, new: np.ndarray, config: Config) -> Any:
    """One model with the new readings ``data.y[new]``: updated in place (ETS, theta),
    else fitted again with its parameters."""
    if not new.any():
        return model
    if model.name == "ets":
        return update_ets(model, data.y[new])
    if model.name == "theta":
        return update_theta(model, data.y[new])
    return refit_member(model.to_dict(), data, {}, config)


def update_ets(model: Any, y_new: np.ndarray) -> Any:
    """The ETS(A, T, S) state (level, slope, the last season) moved on over ``y_new``
    with the fitted smoothing parameters (Hyndman et al. 2008, additive errors)."""
    alpha, beta, gamma, phi = model.alpha_, model.beta_, model.gamma_, model.phi_
    level, slope, season = model.level_, model.slope_, list(np.asarray(model.season_, float))
    mul = model.seasonal == "mul"
    for y in np.asarray(y_new, float):
        base = level + phi * slope
        s = season.pop(0) if season else (1.0 if mul else 0.0)
        e = y - (base * s if mul else base + s)
        level = base + alpha * (e / s if mul else e)
        slope = phi * slope + beta * (e / s if mul else e)
        if model.season_.size:
            season.append(s + gamma * (e / base if mul else e))
    model.level_, model.slope_ = float(level), float(slope)
    model.season_ = np.asarray(season, float) if model.season_.size else np.zeros(0)
    model.forget()
    return model


def update_theta(model: Any, y_new: np.ndarray) -> Any:
    """The theta model's SES level moved on over the seasonally adjusted ``y_new`` with
    its fitted ``alpha``; the seasonal factors rotate with the steps, ``nobs`` grows."""
    season = np.asarray(model.season_, float)
    m = len(season)
    level = model.level_
    for k, y in enumerate(np.asarray(y_new, float)):
        s = season[k % m] if m else (1.0 if model.multiplicative_ else 0.0)
        x = y / s if model.multiplicative_ else y - s
        level = model.alpha_ * x + (1 - model.alpha_) * level
    if m:
        model.season_ = np.roll(season, -len(y_new))
    model.level_ = float(level)
    nobs = model.nobs_ + len(y_new)
    model.nobs_ = int(min(nobs, model.max_history) if model.max_history else nobs)
    model.forget()
    return model
