"""A registered model's per-series choice fitted again on newer data.

When the champion was trained on older data than the latest silver (the gate kept it,
or it was trained on an earlier silver version), its per-series models still forecast
the next horizon from the new data: the chosen model of each series, with the very
parameters training chose (tuned ones included, all in its ``model_json``), is fitted
again on the series' current history (:func:`refit_series`). Nothing is re-chosen and
nothing is backtested: the choice is the registered version's, only the fit is new.

* An ensemble refits each of its members and combines them with its own method.
* The interval calibration and bounds training stored in the ``model_json``
  (:mod:`forecasting.models.calibrated`) are kept: the refitted model carries them.
* A global model (``global_nn``, ``global_gbm``) is not retrained: its weights are the
  registered version's (stored once in the pyfunc), and the series' state (scaling and
  last inputs) is computed again from the new history, exactly as training computes it
  (:meth:`GlobalForecaster.series_state`). That is how the pyfunc forecasts a global
  model (from the inputs in the state), so the stored global model forecasts with the
  newest history; the weights' settings travel in the series' spec
  (:func:`refit_specs`), never the weights themselves.

:func:`refit_series` is what an engine maps over the series (one group of silver rows
each, the series' spec as JSON in :data:`SPEC_COLUMN` on its first row, see
:func:`with_specs`); like :func:`forecasting.pipeline.process_series` it never raises:
whatever goes wrong ends as a ``failed`` row with the reason.
"""

from __future__ import annotations

import json
import warnings
from functools import partial
from typing import Any

import pandas as pd
import pyarrow as pa

from forecasting.backtest import check_forecast
from forecasting.choice import ENSEMBLE, short_reason
from forecasting.config import Config
from forecasting.contract import FAILED, OK, REFIT_RESULT, SERIES_ID
from forecasting.errors import DataContractError, ModelError
from forecasting.models import EnsembleForecaster, Forecaster, load_fitted, model_class
from forecasting.models.base import check_format, one_thread
from forecasting.models.calibrated import with_adjustment
from forecasting.models.global_models import GlobalWeights, get
from forecasting.results import json_default
from forecasting.series import SeriesData, prepare, series_id_of
from forecasting.timeout import Alarm, run_seeded

SPEC_COLUMN = "_refit_spec"  # the series' spec (JSON) on its first row, null elsewhere


# -- the specs (on the driver) ---------------------------------------------------------
def _global_ids(data: dict[str, Any]) -> list[str]:
    """The weights ids a model_json refers to (its own, or its members')."""
    members = data.get("members") if data.get("model") == ENSEMBLE else [data]
    return [m["state"]["weights"] for m in members or [] if model_class(m["model"]).is_global]


def refit_specs(models: pd.DataFrame) -> dict[str, str]:
    """Per series of ``models`` (``series_id, model_json`` rows of a registered version),
    its refit spec: ``{"model_json", "global": {weights id: settings}}``. The settings of
    global weights are read from this process's store (the loaded pyfunc filled it)."""
    specs = {}
    for sid, text in zip(models[SERIES_ID], models["model_json"]):
        data = json.loads(text)
        settings = {wid: get(wid).meta for wid in _global_ids(data)}
        specs[str(sid)] = json.dumps({"model_json": text, "global": settings}, default=json_default)
    return specs


def with_specs(readings: pd.DataFrame, specs: dict[str, str]) -> pd.DataFrame:
    """``readings`` with :data:`SPEC_COLUMN`: each series' spec on its first row."""
    out = readings.copy()
    column = pd.Series(pd.NA, index=out.index, dtype="string")
    if len(out):
        first = ~out[SERIES_ID].astype(str).duplicated()
        sids = out.loc[first, SERIES_ID].astype(str)
        column.loc[first] = [specs.get(s, pd.NA) for s in sids]
    out[SPEC_COLUMN] = column
    return out


# -- the per-series function -----------------------------------------------------------
def refit_series(pdf: pd.DataFrame, config: Config) -> pd.DataFrame:
    """Fit one series' registered choice again on its rows.

    Args:
        pdf: the silver rows of one series (``series_id, ts, y`` and optionally
            ``temperature``), its spec in :data:`SPEC_COLUMN` on one row.
        config: the settings (``seed``, ``model_timeout_s``, ``horizon`` and ``levels``
            of the forecast check, ``freq``).

    Returns:
        One row with exactly the REFIT_RESULT columns: status ``ok`` with the refitted
        ``model_json`` and the ``end`` it was fitted to, or ``failed`` with the reason.
    """
    row: dict[str, Any] = {
        SERIES_ID: series_id_of(pdf),
        "status": FAILED,
        "reason": "",
        "model": "",
        "model_json": "",
        "end": None,
        "n_obs": int(len(pdf)),
    }
    try:
        with one_thread(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a fit is judged by its result, as in training
            spec = _spec(pdf)
            data = prepare(pdf.drop(columns=[SPEC_COLUMN]), config)
            model = refit(spec, data, config)
            text = json.dumps(model.to_dict(), default=json_default)
            _check(text, spec, data, config)
        row.update(
            status=OK,
            model=model.name,
            model_json=text,
            n_obs=int(len(data.y)),
            end=pd.Timestamp(data.ts[-1]).to_pydatetime(),
        )
    except (Exception, Alarm) as exc:  # noqa: BLE001 - failures are data
        row["reason"] = f"refit failed: {short_reason(exc)}"
    return pa.Table.from_pylist([row], schema=REFIT_RESULT).to_pandas()


def failed_refit(series_id: str, reason: str) -> pd.DataFrame:
    """The row of a series the engine could not refit at all (its worker died)."""
    row = {
        SERIES_ID: series_id,
        "status": FAILED,
        "reason": f"refit failed: {reason}",
        "model": "",
        "model_json": "",
        "end": None,
        "n_obs": 0,
    }
    return pa.Table.from_pylist([row], schema=REFIT_RESULT).to_pandas()


def _spec(pdf: pd.DataFrame) -> dict[str, Any]:
    if SPEC_COLUMN not in pdf.columns:
        raise DataContractError(f"series rows carry no {SPEC_COLUMN}: nothing to refit")
    values = pdf[SPEC_COLUMN].dropna()
    if values.empty:
        raise DataContractError(f"series rows carry no {SPEC_COLUMN}: nothing to refit")
    return json.loads(values.iloc[0])


def refit(spec: dict[str, Any], data: SeriesData, config: Config) -> Any:
    """The spec's model (or ensemble) fitted again on ``data``, with the interval
    calibration and bounds training gave it (kept as they are: nothing is backtested)."""
    model = json.loads(spec["model_json"])
    if model.get("model") == ENSEMBLE:
        check_format(model, "ensemble")
        members = [_refit_one(m, data, spec, config) for m in model["members"]]
        return with_adjustment(EnsembleForecaster(members, model["method"]), model)
    return with_adjustment(_refit_one(model, data, spec, config), model)


def _refit_one(member: dict[str, Any], data: SeriesData, spec: dict[str, Any], config: Config) -> Forecaster:
    """One model of a spec, with its stored season lengths, frequency and parameters."""
    check_format(member, f"model {member.get('model')!r}")
    cls = model_class(member["model"])
    settings = dict(
        season_length=member["season_length"],
        seasonalities=member["seasonalities"],
        freq=member["freq"],
        **member["params"],
    )
    if cls.is_global:
        wid = member["state"]["weights"]
        if wid not in spec.get("global", {}):
            raise ModelError(f"{cls.name}: the settings of its global weights {wid!r} are not in the spec")
        weights = GlobalWeights(cls.name, spec["global"][wid], {}, wid)  # the settings; no arrays needed
        model = cls(**settings)
        model.set_state(cls.series_state(weights, data.y, data.ts))
        return model
    fit = partial(_fit, cls(**settings), data)
    return run_seeded(fit, config.seed, config.model_timeout_s)


def refit_member(
    member: dict[str, Any], data: SeriesData, spec: dict[str, Any], config: Config
) -> Forecaster:
    """One model of a ``model_json`` (``member``: its dict) fitted again on ``data``
    with its stored season lengths, frequency and parameters (what a refit does to each
    model; :mod:`forecasting.retrain` uses it for the models whose state it cannot move on)."""
    return _refit_one(member, data, spec, config)


def _fit(model: Forecaster, data: SeriesData) -> Forecaster:
    return model.fit(data.y, data.exog(model.name), data.ts)


def _check(text: str, spec: dict[str, Any], data: SeriesData, config: Config) -> None:
    """The refitted model loads back and forecasts ``config.horizon`` finite steps
    (what training checks; models with a regressor or global weights are checked when
    the forecast job forecasts them, where the future regressor and the weights are)."""
    loaded = load_fitted(text)
    base = getattr(loaded, "base", loaded)  # an AdjustedForecaster's model
    members = base.members if isinstance(base, EnsembleForecaster) else [base]
    if any(type(m).is_global or data.exog(m.name) is not None for m in members):
        return
    levels = list(config.levels)
    check_forecast(loaded.predict(config.horizon, level=levels), config.horizon, levels, who=loaded.name)
