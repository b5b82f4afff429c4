"""The per-series function: one series' silver rows in, one TRAIN_RESULT row out.

:func:`process_series` is what every engine runs for each group (the local process
pool and Spark's ``applyInPandas`` call the very same function). It never raises for a
bad series: whatever goes wrong ends as a ``failed`` row with the reason.

Steps: sort by ``ts``; take ``y``, the timestamps and (when complete) ``temperature``
as the regressor of models that support one; derive the season lengths from the
frequency; backtest every configured model, each under ``config.model_timeout_s``;
add the ensemble candidate when enabled; choose (:mod:`forecasting.choice`); refit the
chosen model on the full history and serialize it.

Conventions of the result row:

* ``backtest_json``: a list of ``{model, window, cutoff, <metrics>}`` for every
  candidate that finished its backtest (ensemble included), in the order of
  ``config.models``; ``cutoff`` is the ISO timestamp of the *last training*
  observation of the window (statsforecast's ``cross_validation`` convention, and that
  of ``gold/forecasts.cutoff``); non-finite metrics are ``null``.
* ``candidates_json``: ``{model: {status, reason, score, fit_s}}`` with status ``ok``,
  ``failed`` or ``timeout``; ``fit_s`` is wall-clock time, the one field that is not
  reproducible from run to run.
* ``model_json``: ``Forecaster.to_dict()`` of the chosen model, or
  ``{"model": "ensemble", "format_version", "method", "members": [...]}``; read it
  back with :func:`load_fitted`. Empty for a failed series.
* ``tuned_json``: with ``tune.enabled``, per tuned model ``{params, best, loss,
  default_loss, evals, tune_s}`` (:meth:`forecasting.tuning.TuneResult.summary`), or
  ``{skipped: reason}``; ``params`` are the values used (``{}``: the configured ones
  stayed best on the tuning windows). ``"{}"`` when nothing was tuned.

Tuning (``tune.enabled``): a model with a search space is first tuned by Hyperopt on
``tune.windows`` backtest windows that end where the selection windows begin (see
:mod:`forecasting.tuning`), then backtested, chosen and refitted with the tuned values,
which ``model_json`` carries in its ``params``.

Global models (``global_nn``, ``global_gbm``): trained across all series on the driver
before this step (:mod:`training.global_models`). Each series' rows carry, in the
column :data:`GLOBAL_COLUMN` (one non-null value per series), per global model its
backtest forecasts on this series' own windows, its fitted per-series ``model_json``
(a reference to weights stored once, plus the series' scaling and last inputs) and the
forecast that model_json gives; they are scored and chosen here like any candidate.
Without that column a configured global model is a failed candidate.

Determinism: the global numpy and ``random`` generators are seeded with
``config.seed`` before every fit, and BLAS runs on one thread, so the same rows (in
any order) give the same result.
"""

from __future__ import annotations

import json
import math
import random
import signal
import threading
import time
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa

from forecasting.backtest import backtest, check_forecast, window_cutoffs
from forecasting.choice import (
    CANDIDATE_FAILED,
    CANDIDATE_TIMEOUT,
    ENSEMBLE,
    Candidate,
    decide,
    ensemble_candidate,
    mean_score,
    scored,
    short_reason,
)
from forecasting.config import Config
from forecasting.contract import FAILED, SERIES_ID, TRAIN_RESULT, TS, Y
from forecasting.errors import DataContractError, ModelError
from forecasting.frequency import freq_of, seasonalities_for
from forecasting.metrics import evaluate
from forecasting.models import EnsembleForecaster, Forecaster, get_model, load_fitted, load_model, model_class
from forecasting.models.base import one_thread
from forecasting.models.global_models import is_global

EXOG_COLUMN = "temperature"
GLOBAL_COLUMN = "_global_candidates"  # driver-made global-model results (JSON), one row per series

T = TypeVar("T")


# -- per-candidate time limit ----------------------------------------------------------
class CandidateTimeout(ModelError):
    """A candidate ran past ``config.model_timeout_s``."""


class _Alarm(BaseException):
    # BaseException so that a model's own ``except Exception`` cannot swallow it.
    pass


def run_with_timeout(fn: Callable[[], T], timeout_s: float | None) -> T:
    """``fn()`` stopped after ``timeout_s`` seconds with :class:`CandidateTimeout`.

    Uses ``SIGALRM``/``setitimer``, so the limit only applies in the main thread of a
    process (true in process-pool and Spark Python workers); elsewhere ``fn`` runs
    without a limit. The alarm is seen when control returns to Python, so a long call
    inside compiled code overruns until it returns. An alarm already pending (a test
    runner's own timeout) is honoured: if it is due first its handler runs then,
    otherwise it is re-armed with what is left of it afterwards.
    """
    if (
        not timeout_s
        or not hasattr(signal, "SIGALRM")
        or threading.current_thread() is not threading.main_thread()
    ):
        return fn()
    token = object()
    armed = [True]
    limit = float(timeout_s)
    old_handler = signal.getsignal(signal.SIGALRM)
    pending = signal.getitimer(signal.ITIMER_REAL)[0]  # someone else's alarm (pytest-timeout...)
    outer_first = 0 < pending <= limit

    def on_alarm(signum: int, frame: Any) -> None:
        if not armed[0]:
            return
        if outer_first and callable(old_handler):
            armed[0] = False
            old_handler(signum, frame)  # the earlier deadline is the one that came due
            return
        raise _Alarm(token)

    start = time.monotonic()
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, pending if outer_first else limit)
    try:
        return fn()
    except _Alarm as alarm:
        if alarm.args and alarm.args[0] is token:
            raise CandidateTimeout(f"timed out after {timeout_s:g} s (model_timeout_s)") from None
        raise
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if pending > 0 and not outer_first:  # give the earlier alarm back what is left of it
            left = max(pending - (time.monotonic() - start), 1e-6)
            signal.setitimer(signal.ITIMER_REAL, left)


# -- helpers ---------------------------------------------------------------------------
def _json_default(obj: Any) -> Any:
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


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pa.Table.from_pylist(rows, schema=TRAIN_RESULT).to_pandas()


@dataclass
class SeriesData:
    """One series ready for the models."""

    series_id: str
    y: np.ndarray
    ts: np.ndarray  # datetime64[us]
    X: np.ndarray | None
    freq: str
    seasonalities: tuple[int, ...]

    @property
    def season_length(self) -> int:
        return self.seasonalities[0]


def prepare(pdf: pd.DataFrame, config: Config) -> SeriesData:
    """Sorted arrays of one series' silver rows.

    Raises:
        DataContractError: missing columns, no rows, missing or duplicate timestamps,
            or ``y`` values that are missing or not finite.
    """
    missing = [c for c in (SERIES_ID, TS, Y) if c not in pdf.columns]
    if missing:
        raise DataContractError(f"series rows lack column(s) {missing}: expected {SERIES_ID}, {TS}, {Y}")
    if len(pdf) == 0:
        raise DataContractError("series has no rows")
    df = pdf.sort_values(TS, kind="mergesort")
    ts_idx = pd.DatetimeIndex(pd.to_datetime(df[TS]))
    if ts_idx.tz is not None:
        ts_idx = ts_idx.tz_convert("UTC").tz_localize(None)
    if ts_idx.hasnans:
        raise DataContractError(
            f"{int(ts_idx.isna().sum())} missing timestamp(s): expected a cleaned (silver) series"
        )
    if ts_idx.has_duplicates:
        raise DataContractError(
            f"{int(ts_idx.duplicated().sum())} duplicate timestamp(s): expected one row per ts (run refine first)"
        )
    ts = ts_idx.to_numpy().astype("datetime64[us]")
    y = df[Y].to_numpy(dtype=float)
    bad = ~np.isfinite(y)
    if bad.any():
        raise DataContractError(
            f"{int(bad.sum())} of {len(y)} y values are missing or not finite: expected a cleaned (silver) series"
        )
    X = None
    if EXOG_COLUMN in df.columns:
        temp = pd.to_numeric(df[EXOG_COLUMN], errors="coerce").to_numpy(dtype=float)
        if np.all(np.isfinite(temp)):
            X = temp.reshape(-1, 1)
    freq = config.freq or freq_of(ts)
    return SeriesData(
        series_id=str(df[SERIES_ID].iloc[0]),
        y=y,
        ts=ts,
        X=X,
        freq=freq,
        seasonalities=seasonalities_for(freq),
    )


def _seeded(seed: int, fn: Callable[[], T]) -> T:
    # Models that draw from the global generators get the same draws whatever ran before.
    np.random.seed(seed)
    random.seed(seed)
    return fn()


def _series_id(pdf: pd.DataFrame) -> str:
    try:
        return str(pdf[SERIES_ID].iloc[0])
    except Exception:  # noqa: BLE001 - no id column or no rows: the row still goes out
        return ""


def _iso(ts: np.datetime64) -> str:
    return pd.Timestamp(ts).isoformat()


def failed_result(series_id: str, reason: str, config: Config) -> pd.DataFrame:
    """The one-row result of a series that could not be processed at all (e.g. its
    worker died): the engines' ``on_error`` rows."""
    return _frame([_failed_row(series_id, config, reason)])


def _failed_row(series_id: str, config: Config, reason: str) -> dict[str, Any]:
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
    }


# -- the per-series function -----------------------------------------------------------
def process_series(pdf: pd.DataFrame, config: Config) -> pd.DataFrame:
    """Backtest, choose and fit one series' model.

    Args:
        pdf: the silver rows of one series (``series_id, ts, y`` and optionally
            ``temperature, is_filled, is_outlier``), in any order.
        config: the validated settings.

    Returns:
        One row with exactly the TRAIN_RESULT columns and dtypes.
    """
    row = _failed_row(_series_id(pdf), config, "")
    row["n_obs"] = int(len(pdf))
    try:
        with one_thread(), warnings.catch_warnings():
            # Convergence and similar warnings from thousands of fits are noise here:
            # a model that fits badly loses the backtest.
            warnings.simplefilter("ignore")
            _process(pdf, config, row)
    except (Exception, _Alarm) as exc:  # noqa: BLE001 - failures are data
        row["status"] = FAILED
        row["reason"] = short_reason(exc)
        row["model_json"] = ""
    try:
        return _frame([row])
    except Exception as exc:  # noqa: BLE001 - a value the schema refuses: still one row out
        return _frame([_failed_row(str(row[SERIES_ID]), config, short_reason(exc))])


def _process(pdf: pd.DataFrame, config: Config, row: dict[str, Any]) -> None:
    data = prepare(pdf, config)
    row[SERIES_ID] = data.series_id
    row["n_obs"] = int(len(data.y))
    row["end"] = pd.Timestamp(data.ts[-1]).to_pydatetime()

    levels = list(config.levels)
    horizon = config.horizon
    metric = config.backtest.metric
    m = data.season_length
    names = list(dict.fromkeys(config.models))  # a name listed twice runs once
    glob = global_payload(pdf)
    tuned: dict[str, dict[str, Any]] = {}  # model -> tuned params used
    tuned_report: dict[str, Any] = {}

    def build(name: str, extra: dict[str, Any] | None = None) -> Forecaster:
        params = {**config.model_params.get(name, {}), **tuned.get(name, {}), **(extra or {})}
        return get_model(name, season_length=m, seasonalities=data.seasonalities, freq=data.freq, **params)

    def exog(name: str) -> np.ndarray | None:
        return data.X if data.X is not None and model_class(name).supports_exog else None

    def run_backtest(name: str) -> list[dict[str, Any]]:
        return backtest(
            partial(build, name),
            data.y,
            exog(name),
            data.ts,
            horizon=horizon,
            windows=config.backtest.windows,
            step=config.backtest_step,
            levels=levels,
            m=m,
        )

    spaces = _search_spaces(config) if config.tune.enabled else {}
    candidates: list[Candidate] = []
    for name in names:
        start = time.perf_counter()
        if is_global(name):
            try:
                candidates.append(_global_candidate(name, glob.get(name), data, config))
            except Exception as exc:  # noqa: BLE001
                candidates.append(Candidate(name, CANDIDATE_FAILED, short_reason(exc)))
            if glob.get(name, {}).get("tuned"):
                tuned_report[name] = glob[name]["tuned"]
            continue
        if name in spaces:
            report = _tune(name, spaces[name], data, config, build, exog(name))
            tuned_report[name] = report
            if report.get("params"):
                tuned[name] = report["params"]
        try:
            windows = run_with_timeout(
                partial(_seeded, config.seed, partial(run_backtest, name)), config.model_timeout_s
            )
            candidates.append(scored(name, windows, metric, fit_s=time.perf_counter() - start))
        except CandidateTimeout as exc:
            candidates.append(Candidate(name, CANDIDATE_TIMEOUT, str(exc), fit_s=time.perf_counter() - start))
        except Exception as exc:  # noqa: BLE001 - a failing candidate is recorded and skipped
            candidates.append(
                Candidate(name, CANDIDATE_FAILED, short_reason(exc), fit_s=time.perf_counter() - start)
            )

    if config.ensemble.enabled:
        try:
            ens = ensemble_candidate(
                candidates,
                top_k=config.ensemble.top_k,
                method=config.ensemble.method,
                metric=metric,
                y=data.y,
                levels=levels,
                m=m,
                order=names,
            )
        except Exception as exc:  # noqa: BLE001
            ens = Candidate(ENSEMBLE, CANDIDATE_FAILED, short_reason(exc))
        if ens is not None:
            candidates.append(ens)

    def fit_full(name: str) -> Forecaster:
        if is_global(name):  # fitted on the driver: its per-series state came with the rows
            return load_model(json.loads(glob[name]["model_json"]))

        def fit() -> Forecaster:
            return build(name).fit(data.y, exog(name), data.ts)

        return run_with_timeout(partial(_seeded, config.seed, fit), config.model_timeout_s)

    def refit(cand: Candidate) -> str:
        members = cand.members if cand.name == ENSEMBLE else (cand.name,)
        if cand.name == ENSEMBLE:
            model: Any = EnsembleForecaster([fit_full(n) for n in members], config.ensemble.method)
        else:
            model = fit_full(cand.name)
        uses_x = any(exog(n) is not None for n in members)
        text = json.dumps(model.to_dict(), default=_json_default)
        loaded = load_fitted(text)  # what the forecast job will do: prove it works now
        for n in members:
            if is_global(n):  # weights live on the driver: check the forecast it made there
                check_forecast(_arrays(glob[n]["final"]), horizon, levels, who=n)
        # future regressors are unknown here; global weights are not loaded in workers
        if not uses_x and not any(is_global(n) for n in members):
            check_forecast(loaded.predict(horizon, level=levels), horizon, levels, who=cand.name)
        return text

    decision = decide(candidates, refit, order=names)

    bt_rows = []
    for cand in candidates:
        if not cand.ok:
            continue
        for w in cand.windows:
            entry = {"model": cand.name, "window": int(w["window"]), "cutoff": _iso(data.ts[w["cutoff"] - 1])}
            entry.update(
                {k: _finite_or_none(v) for k, v in w.items() if k not in ("window", "cutoff", "forecast")}
            )
            bt_rows.append(entry)

    row.update(
        status=decision.status,
        reason=decision.reason,
        model=decision.model,
        metric_value=float(decision.metric_value),
        backtest_json=json.dumps(bt_rows, allow_nan=False),
        candidates_json=json.dumps({c.name: c.summary() for c in candidates}, allow_nan=False),
        model_json=decision.fitted or "",
        tuned_json=json.dumps(tuned_report, default=_json_default, allow_nan=False),
    )


# -- tuning ----------------------------------------------------------------------------
_SPACES: dict[str | None, dict[str, Any]] = {}


def _search_spaces(config: Config) -> dict[str, Any]:
    """The validated search spaces of the per-series models (read once per process)."""
    from forecasting.tuning import load_search_spaces

    path = config.tune.search_spaces
    if path not in _SPACES:
        _SPACES[path] = load_search_spaces(path)
    return {k: v for k, v in _SPACES[path].items() if not is_global(k)}


def _tune(
    name: str,
    space: Any,
    data: SeriesData,
    config: Config,
    build: Callable[..., Forecaster],
    X: np.ndarray | None,
) -> dict[str, Any]:
    """Hyperopt search for one model on the windows before the selection windows; the
    ``tuned_json`` entry (``params`` empty when the configured values stayed best)."""
    from forecasting.tuning import minimize

    horizon, step = config.horizon, config.backtest_step
    try:
        first = window_cutoffs(len(data.y), horizon, config.backtest.windows, step)[0]
        window_cutoffs(first, horizon, config.tune.windows, step)  # room for the tuning windows?
    except (DataContractError, ValueError) as exc:
        return {"skipped": f"history too short to tune before the selection windows ({short_reason(exc)})"}
    y, ts = data.y[:first], data.ts[:first]
    Xt = None if X is None else X[:first]

    def loss(params: dict[str, Any]) -> float:
        def run() -> list[dict[str, Any]]:
            return backtest(
                partial(build, name, params),
                y,
                Xt,
                ts,
                horizon=horizon,
                windows=config.tune.windows,
                step=step,
                levels=list(config.levels),
                m=data.season_length,
            )

        windows = run_with_timeout(partial(_seeded, config.seed, run), config.model_timeout_s)
        return mean_score(windows, config.backtest.metric)

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


# -- global models ---------------------------------------------------------------------
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


def _arrays(forecast: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=float) for k, v in forecast.items()}


def _global_candidate(name: str, entry: dict[str, Any] | None, data: SeriesData, config: Config) -> Candidate:
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
    expected = [_iso(data.ts[c - 1]) for c in cutoffs]
    got = [w.get("cutoff") for w in entry.get("windows", [])]
    if got != expected:
        raise ModelError(
            f"{name}: backtest windows ending {got} do not match this series' windows ending {expected}"
        )
    windows = []
    for i, (cut, w) in enumerate(zip(cutoffs, entry["windows"])):
        forecast = check_forecast(_arrays(w["forecast"]), horizon, levels, who=name)
        metrics = evaluate(data.y[cut : cut + horizon], forecast, data.y[:cut], m, levels)
        windows.append({"window": i, "cutoff": cut, **metrics, "forecast": forecast})
    return scored(name, windows, config.backtest.metric, fit_s=fit_s)
