"""The per-series function: one series' silver rows in, one TRAIN_RESULT row out.

:func:`process_series` is what every engine runs for each group (the local process
pool and Spark's ``applyInPandas`` call the very same function). It never raises for a
bad series: whatever goes wrong ends as a ``failed`` row with the reason.

Steps, one function each, in this order: clean (:func:`forecasting.series.prepare`:
sorted arrays, the ``temperature`` regressor when complete, the season lengths of the
frequency, the demand class); fit candidates (:func:`_candidate`: ``config.models``, or
``intermittent.models`` for a series whose demand class is in ``intermittent.classes``
(:meth:`Config.candidates`); tune a model when ``tune.enabled``, then backtest it under ``config.model_timeout_s``; a global model is scored from the
driver's forecasts); add the ensemble candidate when enabled (:func:`_with_ensemble`);
choose (:mod:`forecasting.choice`, shrunk toward ``backtest.prefer``); forecast (:func:`_forecast`: refit the chosen
model on the full history, add its interval calibration and bounds (:func:`_adjusted`),
serialize it and check that it forecasts).

Conventions of the result row:

* ``backtest_json``: a list of ``{model, window, cutoff, <metrics>}`` for every
  candidate that finished its backtest (ensemble included), in the order of
  its candidates; ``cutoff`` is the ISO timestamp of the *last training*
  observation of the window (statsforecast's ``cross_validation`` convention, and that
  of ``gold/forecasts.cutoff``); non-finite metrics are ``null``.
* ``candidates_json``: ``{model: {status, reason, score, fit_s}}`` with status ``ok``,
  ``failed`` or ``timeout``; ``fit_s`` is wall-clock time, the one field that is not
  reproducible from run to run.
* ``model_json``: ``Forecaster.to_dict()`` of the chosen model, or
  ``{"model": "ensemble", "format_version", "method", "members": [...]}``, with
  ``calibration`` (``intervals.calibration: conformal``: per-level factors from the
  chosen candidate's backtest errors, :mod:`forecasting.calibration`) and ``bounds``
  (``bounds: nonnegative``) beside those keys when they apply
  (:mod:`forecasting.models.calibrated`); read it back with :func:`load_fitted`, which
  applies them. Empty for a failed series.
* ``forecasts_json``: the backtest forecasts kept (``backtest.store_forecasts``: the
  chosen model's windows, every candidate's, or ``[]``): a list of windows ``{window,
  cutoff, ts: [...], y: [...], models: {model: {mean, lo-<lv>, hi-<lv>}}}`` (the times
  and actuals of the window's steps, each model's forecast of them), what
  ``gold/backtest_forecasts`` is derived from (:func:`forecasting.results.backtest_forecast_rows`).
* ``tuned_json``: with ``tune.enabled``, per tuned model ``{params, best, loss,
  default_loss, evals, tune_s}`` (:meth:`forecasting.tuning.TuneResult.summary`), or
  ``{skipped: reason}``; ``params`` are the values used (``{}``: the configured ones
  stayed best on the tuning windows). ``"{}"`` when nothing was tuned.

Tuning (``tune.enabled``): a model with a search space is first tuned by Hyperopt on
``tune.windows`` backtest windows that end where the selection windows begin (see
:mod:`forecasting.pipeline_tuning` and :mod:`forecasting.tuning`), then backtested,
chosen and refitted with the tuned values, which ``model_json`` carries in its ``params``.

Global models (``global_nn``, ``global_gbm``): trained across all series on the driver
before this step (:mod:`training.global_models`). Each series' rows carry, in the
column :data:`GLOBAL_COLUMN` (one non-null value per series), per global model its
backtest forecasts on this series' own windows, its fitted per-series ``model_json``
(a reference to weights stored once, plus the series' scaling and last inputs) and the
forecast that model_json gives; they are scored and chosen here like any candidate
(:mod:`forecasting.global_candidates`). Without that column a configured global
model is a failed candidate.

Cold start: a series whose rows carry a cold-start profile (training attaches one to
each series with fewer observed readings than ``cleaning.min_length``, let through by
cleaning when ``cold_start.enabled``) skips the candidates: its row gets status
``cold_start`` and that profile (:mod:`forecasting.cold_start`), fitted to its level.

Determinism: the global numpy and ``random`` generators are seeded with
``config.seed`` before every fit (:func:`forecasting.timeout.run_seeded`), and BLAS
runs on one thread, so the same rows (in any order) give the same result.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Sequence

import pandas as pd

from forecasting import cold_start
from forecasting.backtest import check_forecast
from forecasting.calibration import conformal_factors, shrunk
from forecasting.choice import (
    CANDIDATE_FAILED,
    CANDIDATE_TIMEOUT,
    ENSEMBLE,
    Candidate,
    Decision,
    decide,
    ensemble_candidate,
    scored,
    short_reason,
)
from forecasting.config import Config
from forecasting.contract import FAILED, SERIES_ID
from forecasting.global_candidates import GLOBAL_COLUMN as GLOBAL_COLUMN
from forecasting.global_candidates import arrays, global_candidate, global_payload
from forecasting.models import AdjustedForecaster, Forecaster, get_model, load_model
from forecasting.models import EnsembleForecaster as EnsembleForecaster
from forecasting.models import load_fitted as load_fitted
from forecasting.models.base import one_thread
from forecasting.models.global_models import is_global
from forecasting.pipeline_tuning import search_spaces, tune_model
from forecasting.results import failed_result as failed_result
from forecasting.results import failed_row, json_default, outcome_fields, result_frame
from forecasting.results import result_frame_empty as result_frame_empty
from forecasting.series import EXOG_COLUMN as EXOG_COLUMN
from forecasting.series import SeriesData, backtest_model, prepare, series_id_of
from forecasting.timeout import Alarm, CandidateTimeout, run_seeded
from forecasting.timeout import run_with_timeout as run_with_timeout
from forecasting.tuning import SearchSpace


# -- the per-series function -----------------------------------------------------------
@dataclass
class SeriesRun:
    """One series on its way through the steps: its data, the settings, and what the
    driver and tuning add to its models."""

    data: SeriesData
    config: Config
    names: list[str]  # the candidates in order (Config.candidates of its demand class)
    glob: dict[str, Any]  # driver-made global-model results (GLOBAL_COLUMN)
    spaces: dict[str, SearchSpace]  # search spaces of the models tuned here
    tuned: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> tuned params used
    tuned_report: dict[str, Any] = field(default_factory=dict)  # the tuned_json


def process_series(pdf: pd.DataFrame, config: Config) -> pd.DataFrame:
    """Backtest, choose and fit one series' model.

    Args:
        pdf: the silver rows of one series (``series_id, ts, y`` and optionally
            ``temperature, is_filled, is_outlier``), in any order.
        config: the validated settings.

    Returns:
        One row with exactly the TRAIN_RESULT columns and dtypes.
    """
    row = failed_row(series_id_of(pdf), config, "")
    row["n_obs"] = int(len(pdf))
    try:
        with one_thread(), warnings.catch_warnings():
            # Convergence and similar warnings from thousands of fits are noise here:
            # a model that fits badly loses the backtest.
            warnings.simplefilter("ignore")
            _process(pdf, config, row)
    except (Exception, Alarm) as exc:  # noqa: BLE001 - failures are data
        row["status"] = FAILED
        row["reason"] = short_reason(exc)
        row["model_json"] = ""
    try:
        return result_frame([row])
    except Exception as exc:  # noqa: BLE001 - a value the schema refuses: still one row out
        return result_frame([failed_row(str(row[SERIES_ID]), config, short_reason(exc))])


def _process(pdf: pd.DataFrame, config: Config, row: dict[str, Any]) -> None:
    """The steps, top to bottom; ``row`` gets each step's columns as it ends."""
    run = _clean(pdf, config, row)
    if cold_start.carried(pdf):  # training found it too short: the profile of similar meters
        row.update(cold_start.cold_fields(run.data, pdf, config))
        return
    candidates = [_candidate(run, name) for name in run.names]
    candidates = _with_ensemble(run, candidates)
    decision = _choose(run, candidates)
    row.update(
        outcome_fields(run.data, candidates, decision, run.tuned_report, config.backtest.store_forecasts)
    )


# -- clean -----------------------------------------------------------------------------
def _clean(pdf: pd.DataFrame, config: Config, row: dict[str, Any]) -> SeriesRun:
    """The series as arrays (its id, length and end go in ``row``), with the driver's
    global-model results and the search spaces of the models to tune."""
    data = prepare(pdf, config)
    row[SERIES_ID] = data.series_id
    row["n_obs"] = int(len(data.y))
    row["end"] = pd.Timestamp(data.ts[-1]).to_pydatetime()
    return SeriesRun(
        data=data,
        config=config,
        names=config.candidates(data.demand_class),
        glob=global_payload(pdf),
        spaces=search_spaces(config) if config.tune.enabled else {},
    )


def _build(run: SeriesRun, name: str, extra: dict[str, Any] | None = None) -> Forecaster:
    """An unfitted ``name``: configured params, then tuned ones, then ``extra``."""
    params = {**run.config.model_params.get(name, {}), **run.tuned.get(name, {}), **(extra or {})}
    data = run.data
    return get_model(
        name, season_length=data.season_length, seasonalities=data.seasonalities, freq=data.freq, **params
    )


# -- fit candidates and backtest them --------------------------------------------------
def _candidate(run: SeriesRun, name: str) -> Candidate:
    """One configured model as a candidate: tuned (with a search space), then
    backtested; a global model scored from the driver's forecasts."""
    if is_global(name):
        return _global(run, name)
    start = time.perf_counter()
    if name in run.spaces:
        _tune(run, name)
    return _backtest(run, name, start)


def _global(run: SeriesRun, name: str) -> Candidate:
    try:
        cand = global_candidate(name, run.glob.get(name), run.data, run.config)
    except Exception as exc:  # noqa: BLE001
        cand = Candidate(name, CANDIDATE_FAILED, short_reason(exc))
    if run.glob.get(name, {}).get("tuned"):
        run.tuned_report[name] = run.glob[name]["tuned"]
    return cand


def _tune(run: SeriesRun, name: str) -> None:
    """Tune ``name``: its report goes in the tuned_json, adopted values in ``run.tuned``."""
    report = tune_model(
        run.spaces[name], run.data, run.config, partial(_build, run, name), run.data.exog(name)
    )
    run.tuned_report[name] = report
    if report.get("params"):
        run.tuned[name] = report["params"]


def _backtest(run: SeriesRun, name: str, start: float) -> Candidate:
    """``name`` scored on the selection windows; ``fit_s`` counts from ``start``."""
    config = run.config
    try:
        windows = backtest_model(
            partial(_build, run, name), run.data, run.data.exog(name), config, config.backtest.windows
        )
        return scored(name, windows, config.backtest.metric, fit_s=time.perf_counter() - start)
    except CandidateTimeout as exc:
        return Candidate(name, CANDIDATE_TIMEOUT, str(exc), fit_s=time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - a failing candidate is recorded and skipped
        return Candidate(name, CANDIDATE_FAILED, short_reason(exc), fit_s=time.perf_counter() - start)


def _with_ensemble(run: SeriesRun, candidates: list[Candidate]) -> list[Candidate]:
    """``candidates`` and, when enabled and possible, the ensemble of the best."""
    config = run.config
    if not config.ensemble.enabled:
        return candidates
    try:
        ens = ensemble_candidate(
            candidates,
            top_k=config.ensemble.top_k,
            method=config.ensemble.method,
            metric=config.backtest.metric,
            y=run.data.y,
            levels=list(config.levels),
            m=run.data.season_length,
            order=run.names,
        )
    except Exception as exc:  # noqa: BLE001
        ens = Candidate(ENSEMBLE, CANDIDATE_FAILED, short_reason(exc))
    return candidates if ens is None else [*candidates, ens]


# -- choose and forecast ---------------------------------------------------------------
def _choose(run: SeriesRun, candidates: Sequence[Candidate]) -> Decision:
    """The best candidate that refits and forecasts (:func:`forecasting.choice.decide`)."""
    bt = run.config.backtest
    return decide(
        candidates, partial(_forecast, run), order=run.names, prefer=bt.prefer, prefer_margin=bt.prefer_margin
    )


def _forecast(run: SeriesRun, cand: Candidate) -> str:
    """``cand`` refitted on the full history, as ``model_json``, once it is shown to
    load back and forecast (raises when it does not)."""
    horizon, levels = run.config.horizon, list(run.config.levels)
    members = cand.members if cand.name == ENSEMBLE else (cand.name,)
    if cand.name == ENSEMBLE:
        model: Any = EnsembleForecaster([_fit_full(run, n) for n in members], run.config.ensemble.method)
    else:
        model = _fit_full(run, cand.name)
    model = _adjusted(run, cand, model)
    uses_x = any(run.data.exog(n) is not None for n in members)
    text = json.dumps(model.to_dict(), default=json_default)
    loaded = load_fitted(text)  # what the forecast job will do: prove it works now
    for n in members:
        if is_global(n):  # weights live on the driver: check the forecast it made there
            check_forecast(arrays(run.glob[n]["final"]), horizon, levels, who=n)
    # future regressors are unknown here; global weights are not loaded in workers
    if not uses_x and not any(is_global(n) for n in members):
        check_forecast(loaded.predict(horizon, level=levels), horizon, levels, who=cand.name)
    return text


def _adjusted(run: SeriesRun, cand: Candidate, model: Any) -> Any:
    """``model`` with the interval factors of ``cand``'s backtest (``intervals.calibration:
    conformal``) and the configured ``bounds``; ``model`` itself when neither applies."""
    config = run.config
    factors: dict[int, float] = {}
    n = 0
    if config.intervals.calibration == "conformal":
        factors, n = conformal_factors(
            cand.windows, run.data.y, config.levels, config.intervals.min_residuals
        )
        factors = shrunk(factors, config.intervals.strength)
    if not factors and config.bounds is None:
        return model
    return AdjustedForecaster(model, factors, config.bounds, n)


def _fit_full(run: SeriesRun, name: str) -> Forecaster:
    if is_global(name):  # fitted on the driver: its per-series state came with the rows
        return load_model(json.loads(run.glob[name]["model_json"]))
    return run_seeded(partial(_fit, run, name), run.config.seed, run.config.model_timeout_s)


def _fit(run: SeriesRun, name: str) -> Forecaster:
    return _build(run, name).fit(run.data.y, run.data.exog(name), run.data.ts)
