"""Global models on the driver: tuned once, trained once per backtest window and once on
the full histories, then handed to each series as one more candidate.

For every global model in ``config.models`` (``global_nn``, ``global_gbm``):

1. The silver rows become a :class:`~forecasting.models.global_models.Panel` (each series
   prepared exactly as ``process_series`` prepares it).
2. With ``tune.enabled`` and a search space for it, Hyperopt searches its
   hyper-parameters (``hyperopt.Trials`` here, ``SparkTrials(parallelism=tune.parallelism)``
   on the Spark engine) on tuning windows that end where each series' selection windows
   begin, scoring the mean ``backtest.metric`` over series. Each trial becomes an MLflow
   child run of the training run (logged by the driver afterwards,
   :func:`registry.global_models.log_global_models`).
3. For each backtest window ``w``, the model is fitted on every series cut at its own
   window-``w`` cutoff, and forecasts each series' window. Then it is fitted on the full
   histories: that fit's weights are stored once (``global_models.npz``, an artifact of
   the many-models pyfunc) and each series gets its per-series state (weights id,
   scaling, last inputs) as a ``model_json``.
4. :meth:`GlobalReport.attach` puts each series' results (JSON) in the column
   :data:`forecasting.pipeline.GLOBAL_COLUMN` of one of its rows; ``process_series``
   scores them on the series' own windows and lets them compete.

``global_nn`` trains with :func:`training.deep.train`: ``deep.num_processes``
data-parallel processes, spawned locally or through TorchDistributor on Spark.
``global_gbm`` trains on the driver (LightGBM, all cores) on either engine.

A series too short for a model's input gets a failed entry (the reason says why), and
the model is still trained on the others. Leakage note: windows are defined per series
as in the per-series backtest; when series end at different times, the model fitted for
window ``w`` sees other series' data after one series' cutoff (by at most the spread of
the series' ends).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from forecasting import contract as C
from forecasting.backtest import window_cutoffs
from forecasting.choice import short_reason
from forecasting.config import Config
from forecasting.errors import ModelError
from forecasting.frequency import seasonalities_for
from forecasting.metrics import evaluate, score
from forecasting.models.global_models import (
    GLOBAL_MODELS,
    GlobalWeights,
    Panel,
    Spec,
    is_global,
    register,
    save,
    temperature_scaling,
)
from forecasting.models.global_models import gbm as gbm_mod
from forecasting.models.global_models import (
    load as load_store,
)
from forecasting.models.global_models import nn as nn_mod
from forecasting.pipeline import GLOBAL_COLUMN, prepare
from forecasting.tuning import load_search_spaces, minimize

log = logging.getLogger(__name__)
STORE_FILE = "global_models.npz"
ENTRIES_FILE = "global_entries.json"


def configured(config: Config) -> list[str]:
    """The global models among ``config.models``, in order."""
    return [n for n in dict.fromkeys(config.models) if is_global(n)]


def check(config: Config) -> None:
    """Build each configured global model once, so a bad ``model_params`` entry fails
    before any work starts (ConfigError)."""
    for name in configured(config):
        GLOBAL_MODELS[name](**config.model_params.get(name, {}))


# -- results --------------------------------------------------------------------------
@dataclass
class Fit:
    """One training of one global model."""

    label: str  # "window 0", ..., "full", "trial 3"
    seconds: float
    n_series: int
    losses: list[float] = field(default_factory=list)
    processes: int = 1
    launcher: str = "driver"
    device: str = "cpu"


@dataclass
class GlobalRun:
    """Everything one global model produced for the run."""

    name: str
    params: dict[str, Any]
    weights: GlobalWeights | None
    entries: dict[str, dict[str, Any]]
    fits: list[Fit] = field(default_factory=list)
    tune: Any = None  # forecasting.tuning.TuneResult
    trials_kind: str = ""
    seconds: float = 0.0
    error: str = ""

    @property
    def n_ok(self) -> int:
        return sum(1 for e in self.entries.values() if e.get("status") == "ok")


@dataclass
class GlobalReport:
    """The global models of a run; ``store_path`` (``global_models.npz``, the final
    weights of each, stored once) lives in a temporary folder removed with the report
    unless a ``workdir`` was given."""

    runs: dict[str, GlobalRun]
    store_path: Path | None
    _tmp: Any = field(default=None, repr=False)
    # why a series outside the training sample has no result (see train_global_models'
    # ``sampled``); "" when every series was in it
    outside: str = ""

    def attach(self, readings: pd.DataFrame) -> pd.DataFrame:
        """``readings`` with :data:`GLOBAL_COLUMN`: each series' results as JSON on its
        first row, null elsewhere; a series outside the training sample gets a failed
        entry per model saying so (:attr:`outside`)."""
        payload: dict[str, dict[str, Any]] = {}
        for run in self.runs.values():
            for sid, entry in run.entries.items():
                payload.setdefault(sid, {})[run.name] = entry
        if self.outside and len(readings):
            failed = {name: {"status": "failed", "reason": self.outside} for name in self.runs}
            for sid in readings[C.SERIES_ID].astype(str).unique():
                payload.setdefault(sid, failed)
        out = readings.copy()
        column = pd.Series(pd.NA, index=out.index, dtype="string")
        if len(out):
            first = ~out[C.SERIES_ID].astype(str).duplicated()
            sids = out.loc[first, C.SERIES_ID].astype(str)
            column.loc[first] = [
                json.dumps(payload[s], allow_nan=False) if s in payload else pd.NA for s in sids
            ]
        out[GLOBAL_COLUMN] = column
        return out

    def weights(self) -> list[GlobalWeights]:
        return [r.weights for r in self.runs.values() if r.weights is not None]

    def save(self, folder: str | Path) -> Path:
        """What a restarted job needs to go on with these models (each series' entries,
        the weights' store): ``entries.json`` and ``global_models.npz`` in ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        data = {"outside": self.outside, "runs": {n: r.entries for n, r in self.runs.items()}}
        (folder / ENTRIES_FILE).write_text(json.dumps(data, allow_nan=False))
        if self.store_path is not None:
            shutil.copyfile(self.store_path, folder / STORE_FILE)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> GlobalReport:
        """The report :meth:`save` kept in ``folder`` (copied to a folder of its own,
        the weights registered in this process); its runs hold only the entries."""
        tmp = tempfile.TemporaryDirectory(prefix="mmf-global-")
        data = json.loads((Path(folder) / ENTRIES_FILE).read_text())
        runs = {n: GlobalRun(n, {}, None, entries) for n, entries in data["runs"].items()}
        store = None
        if (Path(folder) / STORE_FILE).exists():
            store = Path(shutil.copyfile(Path(folder) / STORE_FILE, Path(tmp.name) / STORE_FILE))
            load_store(store)
        return cls(runs, store, tmp, data.get("outside", ""))


# -- the panel ------------------------------------------------------------------------
def build_panel(readings: pd.DataFrame, config: Config) -> tuple[Panel, dict[str, str]]:
    """Every series prepared as ``process_series`` prepares it; series that fail that
    are left out (their own step will fail them with the reason), listed with it."""
    ids, ys, tss, temps, views = [], [], [], [], []
    skipped: dict[str, str] = {}
    freq = config.freq
    for sid, rows in readings.groupby(C.SERIES_ID, sort=True):
        try:
            data = prepare(rows, config)
        except Exception as exc:  # noqa: BLE001
            skipped[str(sid)] = short_reason(exc)
            continue
        freq = freq or data.freq
        ids.append(data.series_id)
        ys.append(data.y)
        tss.append(data.ts)
        # one regressor as (n,) (temperature), declared covariates as (n, k)
        one = data.X is None or (data.X.shape[1] == 1 and data.covariates is None)
        temps.append(None if data.X is None else (data.X[:, 0] if one else data.X))
        views.append(data.covariates)
    freq = freq or "h"
    return Panel(ids, ys, tss, temps, freq, seasonalities_for(freq), views), skipped


# -- fitting --------------------------------------------------------------------------
FitFn = Callable[[str, Panel, Spec, dict[str, Any], int], tuple[GlobalWeights, Fit]]
Progress = Callable[[str, int, int], None]  # (step, done, total)


def make_fitter(
    config: Config, launcher: str, num_processes: int | None = None, progress: Progress | None = None
) -> FitFn:
    """``fit(name, panel, spec, params, seed) -> (weights, Fit)``; ``progress(step, done,
    total)`` is told the epochs of ``global_nn`` when it trains in this process."""
    n_proc = config.deep.num_processes if num_processes is None else num_processes
    use_gpu = config.deep.use_gpu
    if launcher == "spark":  # TorchDistributor runs on the active session: the engine's
        from training.tables.spark_session import get_spark

        get_spark(config)

    def fit(
        name: str, panel: Panel, spec: Spec, params: dict[str, Any], seed: int
    ) -> tuple[GlobalWeights, Fit]:
        start = time.perf_counter()
        if name == "global_gbm":
            weights = gbm_mod.fit(panel, spec, params, seed)
            return weights, Fit("", time.perf_counter() - start, len(panel))
        if name == "global_nn":
            from training import deep

            settings = nn_mod.settings(params, spec)
            meta = nn_mod.architecture(
                params, spec, use_temperature=panel.has_temperature, n_exog=panel.n_exog
            )
            if meta["use_temperature"]:
                meta["t_loc"], meta["t_scale"] = temperature_scaling(panel)
            samples = nn_mod.build_samples(panel, meta, int(settings["windows_per_series"]), seed)
            on_epoch = (lambda done, total: progress(f"{name} epochs", done, total)) if progress else None
            res = deep.train(
                samples,
                meta,
                settings,
                seed,
                num_processes=n_proc,
                launcher=launcher,
                use_gpu=use_gpu,
                on_epoch=on_epoch,
            )
            arrays = {k: np.asarray(v, dtype=np.float32) for k, v in res.arrays.items()}
            weights = GlobalWeights("global_nn", meta, arrays)
            return weights, Fit(
                "",
                time.perf_counter() - start,
                len(panel),
                res.losses,
                res.processes,
                res.launcher,
                res.device,
            )
        raise ModelError(f"{name} is not a global model: expected one of {', '.join(GLOBAL_MODELS)}")

    return fit


def _temps(panel: Panel, i: int, start: int, h: int) -> np.ndarray | None:
    """Series ``i``'s regressors of the ``h`` steps after ``start`` (a backtest cutoff: its
    declared covariates as known at the cutoff, never later issues)."""
    t = panel.temperature[i]
    if t is None:
        return None
    view = panel.views[i] if panel.views else None
    t2 = t.reshape(len(t), -1)
    if view is not None and 0 < start and start + h <= len(t2):
        return view.future_X(t2, start, h)
    block = t2[start : start + h]
    if len(block) < h:  # past the data (the final fit's check): repeat the last observed ones
        tail = t2[-h:] if len(t2) >= h else np.resize(t2, (h, t2.shape[1]))
        block = np.concatenate([block, tail[len(block) - h :]]) if len(block) else tail
    return block


def _forecast(
    cls,
    weights: GlobalWeights,
    panel: Panel,
    index: Sequence[int],
    ends: Sequence[int],
    h: int,
    levels: Sequence[int],
) -> tuple[dict[int, dict[str, np.ndarray]], dict[int, str]]:
    """Forecasts of series ``index`` from ``ends`` (exclusive), batched; series that
    cannot be forecast (too short for the input) get a reason instead."""
    ok, states, X, failed = [], [], [], {}
    for i, end in zip(index, ends):
        try:
            states.append(cls.series_state(weights, panel.y[i][:end], panel.ts[i][:end]))
        except ModelError as exc:
            failed[i] = short_reason(exc)
            continue
        ok.append(i)
        X.append(_temps(panel, i, end, h))
    out: dict[int, dict[str, np.ndarray]] = {}
    if ok:
        for i, fc in zip(ok, cls.forecast_many(weights, states, X, h, list(levels))):
            out[i] = fc
    return out, failed


def _lists(fc: dict[str, np.ndarray]) -> dict[str, list[float]]:
    """JSON-ready forecast arrays, 7 significant digits (float32 precision): these travel
    to the workers for scoring only; the fitted state keeps full precision."""
    return {k: [float(f"{v:.7g}") for v in np.asarray(a, dtype=float)] for k, a in fc.items()}


def _finite(fc: dict[str, np.ndarray]) -> bool:
    return all(np.all(np.isfinite(a)) for a in fc.values())


# -- tuning ---------------------------------------------------------------------------
def tune(
    name: str,
    panel: Panel,
    spec: Spec,
    params: dict[str, Any],
    config: Config,
    space: Any,
    tune_cutoffs: dict[int, list[int]],
    trials: Any,
    trials_kind: str,
):
    """Hyperopt search of ``name``'s hyper-parameters on the tuning windows."""
    metric = config.backtest.metric
    seed = config.seed
    cls = GLOBAL_MODELS[name]
    h = spec.horizon
    m = spec.seasonalities[0] if spec.seasonalities else 1
    # Trials may run on Spark executors: train there with one process.
    fitter = make_fitter(config, launcher="local", num_processes=1)
    n_windows = config.tune.windows

    def loss(sample: dict[str, Any]) -> float:
        scores = []
        index = sorted(tune_cutoffs)
        for j in range(n_windows):
            ends = {i: tune_cutoffs[i][j] for i in index}
            train_panel = panel.truncated([ends.get(i, 0) for i in range(len(panel))]).subset(index)
            weights, _ = fitter(name, train_panel, spec, {**params, **sample}, seed)
            fcs, _ = _forecast(cls, weights, panel, index, [ends[i] for i in index], h, spec.levels)
            for i, fc in fcs.items():
                e, y = ends[i], panel.y[i]
                scores.append(score(evaluate(y[e : e + h], fc, y[:e], m, list(spec.levels)), metric))
        values = np.asarray(scores, dtype=float)
        values = values[np.isfinite(values)]
        if not len(values):
            raise ModelError("no series could be scored on the tuning windows")
        return float(values.mean())

    try:
        default_loss = loss({})
    except Exception:  # noqa: BLE001
        default_loss = float("inf")
    return minimize(
        loss,
        space,
        max_evals=config.tune.max_evals,
        timeout_s=config.tune.global_timeout_s,
        seed=seed,
        longest_season=spec.longest_season,
        default_loss=default_loss if math.isfinite(default_loss) else float("inf"),
        trials=trials,
    )


def _trials(config: Config, engine: str) -> tuple[Any, str]:
    """``SparkTrials`` on the Spark engine, else ``Trials``."""
    from hyperopt import Trials

    if engine != "spark":
        return Trials(), "Trials"
    from hyperopt import SparkTrials

    from training.tables.spark_session import get_spark

    return SparkTrials(parallelism=config.tune.parallelism, spark_session=get_spark(config)), "SparkTrials"


# -- the driver step ------------------------------------------------------------------
def _panel_cutoffs(
    panel: Panel, config: Config
) -> tuple[dict[int, list[int]], dict[int, str], dict[int, list[int]]]:
    """Per series (panel index): the backtest cutoffs, why a series has none, and the
    tuning cutoffs (windows that end where the backtest windows begin)."""
    W, h, step = config.backtest.windows, config.horizon, config.backtest_step
    cutoffs: dict[int, list[int]] = {}
    not_backtestable: dict[int, str] = {}
    for i, y in enumerate(panel.y):
        try:
            cutoffs[i] = window_cutoffs(len(y), h, W, step)
        except Exception as exc:  # noqa: BLE001
            not_backtestable[i] = short_reason(exc)
    tune_cutoffs: dict[int, list[int]] = {}
    for i, cuts in cutoffs.items():
        try:
            tune_cutoffs[i] = window_cutoffs(cuts[0], h, config.tune.windows, step)
        except Exception:  # noqa: BLE001 - too short to tune on: left out of the search
            pass
    return cutoffs, not_backtestable, tune_cutoffs


def _store(runs: dict[str, GlobalRun], workdir: str | Path | None):
    """(path of global_models.npz or None, the temporary folder holding it or None)."""
    weights = [r.weights for r in runs.values() if r.weights is not None]
    if not weights:
        return None, None
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="mmf-global-")  # removed with the report
    folder = Path(workdir if workdir is not None else tmp.name)
    folder.mkdir(parents=True, exist_ok=True)
    return save(folder / STORE_FILE, weights), tmp


def train_global_models(
    readings: pd.DataFrame,
    config: Config,
    engine: str = "local",
    workdir: str | Path | None = None,
    progress: Progress | None = None,
) -> GlobalReport | None:
    """Tune and train every configured global model; ``None`` when there is none.

    Args:
        readings: the silver rows of the series to train on: the train job passes a
            bounded sample (the first batches of its plan up to ``batch_rows`` rows,
            :func:`training.jobs.train.global_sample`); the series outside it get the
            report's :attr:`GlobalReport.outside` reason as a failed candidate.
        config: the validated settings (``freq`` set).
        engine: ``local`` or ``spark``: picks the trials (Trials / SparkTrials) and the
            launcher of ``global_nn``'s data-parallel training.
        workdir: where ``global_models.npz`` is written (default: a temporary folder
            that lives as long as the report).
        progress: told ``(step, done, total)`` as each model's fits (backtest windows,
            then the full history) and ``global_nn``'s epochs finish.
    """
    names = configured(config)
    if not names:
        return None
    check(config)
    panel, skipped = build_panel(readings, config)
    spec = Spec(config.horizon, tuple(config.levels), panel.freq, panel.seasonalities)
    launcher = "spark" if engine == "spark" else "local"
    fitter = make_fitter(config, launcher, progress=progress)
    cutoffs, not_backtestable, tune_cutoffs = _panel_cutoffs(panel, config)

    spaces = {}
    if config.tune.enabled:
        spaces = load_search_spaces(config.tune.search_spaces)

    runs: dict[str, GlobalRun] = {}
    for name in names:
        start = time.perf_counter()
        cls = GLOBAL_MODELS[name]
        params = dict(config.model_params.get(name, {}))
        run = GlobalRun(name, params, None, {})
        runs[name] = run
        try:
            if name in spaces and tune_cutoffs:
                trials, kind = _trials(config, engine)
                run.trials_kind = kind
                run.tune = tune(name, panel, spec, params, config, spaces[name], tune_cutoffs, trials, kind)
                params = {**params, **run.tune.params}
                run.params = params
            fit = _counted(fitter, f"{name} fits", config.backtest.windows + 1, progress)
            _train_and_forecast(run, cls, panel, spec, params, config, fit, cutoffs, not_backtestable)
        except Exception as exc:  # noqa: BLE001 - the model fails for every series, the run goes on
            log.exception("global model %s failed", name)
            run.error = short_reason(exc)
            run.entries = {sid: {"status": "failed", "reason": run.error} for sid in panel.ids}
        run.seconds = time.perf_counter() - start
        share = run.seconds / max(1, len(panel))
        for entry in run.entries.values():
            entry["fit_s"] = round(share, 6)
            if run.tune is not None:
                entry["tuned"] = run.tune.summary()
    store_path, tmp = _store(runs, workdir)
    if skipped:
        log.warning(
            "%d series left out of the global models (their own step fails them): %s",
            len(skipped),
            ", ".join(list(skipped)[:5]),
        )
    return GlobalReport(runs, store_path, tmp)


def _counted(fitter: FitFn, step: str, total: int, progress: Progress | None) -> FitFn:
    """``fitter``, telling ``progress(step, done, total)`` before the first fit and after each."""
    if progress is None:
        return fitter
    done = 0
    progress(step, 0, total)

    def fit(*args: Any) -> tuple[GlobalWeights, Fit]:
        nonlocal done
        out = fitter(*args)
        done += 1
        progress(step, min(done, total), total)
        return out

    return fit


def _train_and_forecast(
    run: GlobalRun,
    cls,
    panel: Panel,
    spec: Spec,
    params: dict[str, Any],
    config: Config,
    fitter: FitFn,
    cutoffs: dict[int, list[int]],
    not_backtestable: dict[int, str],
) -> None:
    name, h, levels, seed = run.name, spec.horizon, spec.levels, config.seed
    windows: dict[int, list[dict[str, Any]]] = {i: [] for i in cutoffs}
    failed: dict[int, str] = dict(not_backtestable)
    for w in range(config.backtest.windows):
        index = [i for i in cutoffs if i not in failed]
        if not index:
            break
        ends = [cutoffs[i][w] for i in index]
        train_panel = panel.truncated(
            [cutoffs[i][w] if i in cutoffs else 0 for i in range(len(panel))]
        ).subset(index)
        weights, fit = fitter(name, train_panel, spec, params, seed)
        fit.label = f"window {w}"
        run.fits.append(fit)
        fcs, bad = _forecast(cls, weights, panel, index, ends, h, levels)
        failed.update(bad)
        for i, fc in fcs.items():
            if not _finite(fc):
                failed[i] = f"{name} forecast for backtest window {w} is not finite"
                continue
            end = cutoffs[i][w]
            windows[i].append(
                {"cutoff": pd.Timestamp(panel.ts[i][end - 1]).isoformat(), "forecast": _lists(fc)}
            )
    weights, fit = fitter(name, panel, spec, params, seed)
    fit.label = "full"
    run.fits.append(fit)
    register(weights)  # this process (plots, checks) can forecast with it from now on
    run.weights = weights
    everyone = list(range(len(panel)))
    finals, bad = _forecast(cls, weights, panel, everyone, [len(y) for y in panel.y], h, levels)
    for i in everyone:
        sid = panel.ids[i]
        why = failed.get(i) or bad.get(i)
        if why is None and i in finals and not _finite(finals[i]):
            why = f"{name} forecast on the full history is not finite"
        if why is not None:
            run.entries[sid] = {"status": "failed", "reason": why}
            continue
        model = cls.from_weights(
            weights,
            panel.y[i],
            panel.ts[i],
            season_length=spec.seasonalities[0] if spec.seasonalities else 1,
            seasonalities=spec.seasonalities,
            freq=spec.freq,
            params=params,
        )
        run.entries[sid] = {
            "status": "ok",
            "reason": "",
            "windows": windows.get(i, []),
            "model_json": json.dumps(model.to_dict()),
            "final": _lists(finals[i]),
        }
