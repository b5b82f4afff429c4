"""``mmf train``: every series in silver gets its own model, chosen on its own backtest.

Silver is read at a pinned Delta version (recorded in the MLflow run, so the exact data
can be re-read by time travel). The engine maps :func:`forecasting.pipeline.process_series`
over the series; then, on the driver and once: one MLflow run with the results, one
many-models pyfunc registered as ``challenger`` (promoted to ``champion`` by the gate),
and the run's rows in ``gold/gate``, ``gold/backtest`` and ``gold/selection``.

The gate compares the challenger with the champion on the same window
(:mod:`forecasting.comparison`, :mod:`registry.promotion`): the engine maps
:func:`forecasting.comparison.compare_series` over the series the champion forecast and
whose actuals have since arrived (one refit of the challenger's chosen model per series,
and of the champion's only where its Gold forecasts are missing); the comparison per
series goes to the run (``gate_series.parquet``) and to ``gold/gate``.

Restart: a job killed after registering its model version is not trained again. The
next job finds its run (same silver version and config hash, a registered version; see
:func:`registry.recovery.find_resumable`), re-opens it and finishes what is left from the
run's ``results.parquet``: the gate (unless it already decided: then its recorded
comparison) and the Gold rows (replace-where on the run id). A job killed before
registering leaves a run marked ``FAILED`` (orphaned) and is trained again; one killed
after its Gold rows only has its run closed (:func:`close_killed_run`). So a restart
ends with the registry state of an uninterrupted run: one version, the same aliases.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Sequence

import pandas as pd
from mlflow.exceptions import MlflowException

from forecasting import comparison
from forecasting import contract as C
from forecasting.config import Config
from forecasting.errors import DataContractError, TableError
from forecasting.frequency import alias, modal_step
from forecasting.pipeline import failed_result, process_series
from registry import promotion, pyfunc, recovery, runs
from registry.connection import configure, set_uris
from registry.global_models import log_global_models
from registry.results import load_results, log_results
from training import global_models
from training.checkpoints import checkpoint
from training.engines import get_engine
from training.engines.base import Engine
from training.jobs.refine import refine_in_progress
from training.tables import (
    GOLD_BACKTEST,
    GOLD_FORECASTS,
    GOLD_GATE,
    GOLD_SELECTION,
    SILVER_QUARANTINE,
    SILVER_READINGS,
    Lakehouse,
)

log = logging.getLogger(__name__)
APP_ID = "mmf-train"
APP_GATE = "mmf-gate"


@dataclass
class TrainReport:
    run_id: str
    silver_version: int
    freq: str
    model_version: str | None
    promoted: bool
    status_counts: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    chosen: dict[str, int] = field(default_factory=dict)
    decision: object | None = None
    results: pd.DataFrame | None = None
    timings: dict[str, float] = field(default_factory=dict)  # engine_s, mlflow_s, gold_write_s

    @property
    def failed_share(self) -> float:
        return _failed_share(self.status_counts)


def read_silver(
    lake: Lakehouse, version: int | None, series_ids: Sequence[str] | None = None
) -> tuple[int, pd.DataFrame]:
    if not lake.exists(SILVER_READINGS):
        raise TableError("silver/readings does not exist: run `mmf refine` first")
    rebuilding = refine_in_progress(lake) if version is None else None
    if rebuilding:
        raise TableError(rebuilding)
    v = lake.version(SILVER_READINGS) if version is None else version
    filters = [(C.SERIES_ID, "in", list(series_ids))] if series_ids else None
    frame = lake.read(SILVER_READINGS, version=v, filters=filters)
    if series_ids:
        unknown = sorted(set(series_ids) - set(frame[C.SERIES_ID].unique()))
        if unknown:
            raise DataContractError(
                f"series id(s) not in silver/readings version {v}: {', '.join(unknown[:10])}"
            )
    return v, frame


def data_freq(config: Config, frame: pd.DataFrame) -> str:
    if config.freq:
        return config.freq
    if frame.empty:
        raise DataContractError(
            "silver/readings is empty: every series was quarantined (see silver/quarantine)"
        )
    first = frame[C.SERIES_ID].iloc[0]
    return alias(modal_step(frame.loc[frame[C.SERIES_ID] == first, C.TS].to_numpy()))


def _quarantine(lake: Lakehouse, series_ids: Sequence[str] | None) -> pd.DataFrame:
    """silver/quarantine, of ``series_ids`` only when given."""
    quarantine = lake.read(SILVER_QUARANTINE)
    return quarantine[quarantine[C.SERIES_ID].isin(series_ids)] if series_ids else quarantine


def _register(results: pd.DataFrame, cfg: Config, version: int, glob):
    """The many-models version of ``results`` (``None`` when no series has a usable model)."""
    if not results["status"].isin([C.OK, C.FALLBACK]).any():
        return None
    store = glob.store_path if glob is not None else None  # global weights, stored once in the pyfunc
    return pyfunc.log_many_models(results, cfg, silver_version=version, global_store=store)


def train(
    lake: Lakehouse,
    config: Config,
    silver_version: int | None = None,
    series_ids: Sequence[str] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> TrainReport:
    """``progress(step, done, total)`` is told as each stage starts and as series (and
    global-model fits) finish; see :func:`series_step`."""
    tell = progress or _silent
    tell("train", 0, 0)
    version, readings = read_silver(lake, silver_version, series_ids)
    cfg = config.replace(freq=data_freq(config, readings))
    engine = get_engine(cfg)
    global_models.check(cfg)  # a bad global model setting fails before any work
    configure(cfg)
    recovery.mark_orphans_failed(cfg)
    quarantine = _quarantine(lake, series_ids)
    ids = list(series_ids) if series_ids else None
    prior = recovery.find_resumable(cfg, version, ids)
    if prior is not None:
        run, mv = prior
        if not _in_gold(lake, run.info.run_id):
            return _resume(lake, cfg, run, mv, version, quarantine, engine, readings)
        recovery.close_recovered(cfg, run.info.run_id, "closed after a restart: its Gold rows were written")

    def on_progress(done: int, total: int) -> None:
        if 0 < done < total:
            checkpoint("mid_train")
        tell(step, done, total)

    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + now - clock
        clock = now

    with runs.start_training_run(cfg, silver_version=version, engine=engine.name, series_ids=ids) as run:
        run_id = run.info.run_id
        if series_ids:
            runs.log_series_subset(list(series_ids))
        lap("mlflow_s")
        # Global models train once on the driver; each series gets their results in its rows.
        glob = global_models.train_global_models(readings, cfg, engine=engine.name, progress=progress)
        inputs = glob.attach(readings) if glob is not None else readings
        if glob is not None:
            log_global_models(glob)
            lap("global_s")
        step = series_step(cfg)
        tell(step, 0, int(readings[C.SERIES_ID].nunique()))
        results = engine.map_groups(
            inputs,
            C.SERIES_ID,
            process_series,
            C.TRAIN_RESULT,
            cfg,
            on_error=partial(failed_result, config=cfg),
            progress=on_progress,
        )
        del inputs
        lap("engine_s")
        tell("MLflow run, registry and gold tables", 0, 0)
        metrics = log_results(results, cfg, history=readings, n_quarantined=len(quarantine))
        checkpoint("before_register")
        mv = _register(results, cfg, version, glob)
        checkpoint("after_register")
        decision = _gate(lake, cfg, engine, readings, results, str(mv.version)) if mv is not None else None
        checkpoint("after_gate")
        lap("mlflow_s")
        write_gold_training(lake, cfg, run_id, version, results, quarantine, decision)
        checkpoint("after_gold_selection")
        lap("gold_write_s")
    return _report(run_id, version, cfg, mv, decision, results, quarantine, metrics, timings)


def _silent(step: str, done: int, total: int) -> None:
    pass


def series_step(config: Config) -> str:
    """The name of the per-series stage in progress reports."""
    return "tune, fit and backtest" if config.tune.enabled else "fit and backtest"


def _report(run_id, version, cfg, mv, decision, results, quarantine, metrics, timings) -> TrainReport:
    usable = results["status"].isin([C.OK, C.FALLBACK])
    counts = results["status"].value_counts().to_dict()
    if len(quarantine):
        counts[C.QUARANTINED] = len(quarantine)
    return TrainReport(
        run_id=run_id,
        silver_version=version,
        freq=cfg.freq,
        model_version=str(mv.version) if mv is not None else None,
        promoted=bool(decision and decision.promoted),
        status_counts={k: int(v) for k, v in counts.items()},
        metrics=metrics,
        chosen=results.loc[usable, "model"].value_counts().to_dict(),
        decision=decision,
        results=results,
        timings=timings,
    )


def _in_gold(lake: Lakehouse, run_id: str) -> bool:
    """Whether gold/selection holds rows of this run (its job got that far)."""
    if not lake.exists(GOLD_SELECTION):
        return False
    return len(lake.read(GOLD_SELECTION, columns=["run_id"], filters=[("run_id", "=", run_id)])) > 0


def _resume(
    lake: Lakehouse,
    cfg: Config,
    run,
    mv,
    version: int,
    quarantine: pd.DataFrame,
    engine: Engine,
    readings: pd.DataFrame,
) -> TrainReport:
    """Finish a killed job's run whose model version is registered: the gate (unless it
    already decided; ``engine`` and ``readings`` for its comparison) and the Gold rows,
    from the run's own results; no retraining."""
    run_id, model_version = run.info.run_id, str(mv.version)
    log.warning(
        "resuming run %s of a killed job: model version %s is registered; writing what is left",
        run_id,
        model_version,
    )
    results = load_results(cfg, run_id)
    note = f"finished after a restart: model version {model_version} was registered, its Gold rows were not"
    with recovery.resume_run(cfg, run_id, note):
        pyfunc.tag_version(cfg, model_version, run_id, results, version)
        decision = promotion.recorded_decision(cfg, model_version) or _gate(
            lake, cfg, engine, readings, results, model_version
        )
        checkpoint("after_gate")
        write_gold_training(lake, cfg, run_id, version, results, quarantine, decision)
        checkpoint("after_gold_selection")
    metrics = {k: float(v) for k, v in run.data.metrics.items()}
    return _report(run_id, version, cfg, mv, decision, results, quarantine, metrics, {})


def training_due(lake: Lakehouse, config: Config, silver_version: int) -> str | None:
    """Why the nightly must train on ``silver_version``; ``None`` when training is current.

    Current means: gold/selection records a run on this silver version (its Delta
    application transaction ``mmf-train``), that run is in the MLflow store, and it
    failed at most ``nightly.max_failed_share`` of its series (a run over that share made
    its nightly fail, so it is not taken as done: the next nightly trains again).
    ``""``: nothing trained on this silver version yet."""
    if lake.txn_version(GOLD_SELECTION, APP_ID) != silver_version:
        return ""
    last = lake.table(GOLD_SELECTION).history(1)
    run_id = last[0].get("mmf.run_id") if last else None
    if run_id and not _run_exists(config, run_id):
        return (
            f"training again: run {run_id}, which gold/selection records for silver version {silver_version}, "
            "is not in the MLflow store (lost or replaced?); gold/selection and gold/backtest keep its rows "
            "under that run id"
        )
    sel = lake.read(GOLD_SELECTION, columns=["status"], filters=[("run_id", "=", run_id)]) if run_id else None
    share = _failed_share(sel["status"].value_counts().to_dict()) if sel is not None else 0.0
    if share > config.nightly.max_failed_share:
        return (
            f"training again: run {run_id} on silver version {silver_version} failed {share:.0%} of its series "
            f"> nightly.max_failed_share={config.nightly.max_failed_share}"
        )
    return None


def _failed_share(counts: dict[str, int]) -> float:
    n = sum(v for k, v in counts.items() if k != C.QUARANTINED)
    return counts.get(C.FAILED, 0) / n if n else 0.0


def _run_exists(config: Config, run_id: str) -> bool:
    """Whether the MLflow store holds the run (and it is not deleted)."""
    try:
        run = set_uris(config).get_run(run_id)
    except MlflowException:
        return False
    return run.info.lifecycle_stage != "deleted"


def _gate(
    lake: Lakehouse, cfg: Config, engine: Engine, readings: pd.DataFrame, results: pd.DataFrame, version: str
) -> promotion.Decision:
    """The gate on ``version``, with its comparison with the champion."""
    compared = compare_with_champion(lake, cfg, engine, readings, results, version)
    return promotion.gate(cfg, version, results, compared)


def compare_with_champion(
    lake: Lakehouse, cfg: Config, engine: Engine, readings: pd.DataFrame, results: pd.DataFrame, version: str
) -> comparison.Comparison | None:
    """The challenger ``version`` (its ``results``) and the champion scored per series
    on the champion's window (:mod:`forecasting.comparison`), the refits mapped over the
    series by the engine; ``None`` when there is no other champion."""
    found = promotion.champion_to_compare(cfg, version)
    if found is None:
        return None
    champion, champion_results = found
    forecasts = lake.read(GOLD_FORECASTS, filters=[("model_version", "=", champion)])
    planned = comparison.plan(results, champion_results, forecasts, cfg)
    inputs = comparison.attach(readings, planned)
    compared = comparison.gate_frame([])
    if len(inputs):
        on_error = partial(comparison.failed_comparison, config=cfg)
        compared = engine.map_groups(
            inputs, C.SERIES_ID, comparison.compare_series, C.GATE_SERIES, cfg, on_error=on_error
        )
    return comparison.Comparison(champion, comparison.combine(planned, compared))


def close_killed_run(lake: Lakehouse, config: Config) -> str | None:
    """When training is current: end the run of the job that wrote gold/selection last if
    it was killed before ending it (all its work is recorded), and mark any other
    orphaned run failed. Returns the id of the run closed, if any."""
    if not lake.exists(GOLD_SELECTION):
        return None
    last = lake.table(GOLD_SELECTION).history(1)
    run_id = last[0].get("mmf.run_id") if last else None
    configure(config)
    closed = bool(run_id) and recovery.close_recovered(
        config, run_id, "closed after a restart: its Gold rows were written"
    )
    recovery.mark_orphans_failed(config)
    return run_id if closed else None


def backtest_rows(results: pd.DataFrame, run_id: str) -> pd.DataFrame:
    rows = []
    for sid, payload in zip(results[C.SERIES_ID], results["backtest_json"]):
        for r in json.loads(payload or "[]"):
            rows.append({**r, C.SERIES_ID: sid, "run_id": run_id})
    frame = pd.DataFrame(rows)
    if len(frame):
        frame["cutoff"] = pd.to_datetime(frame["cutoff"]).astype("datetime64[us]")
    return frame


def write_gold_gate(lake: Lakehouse, run_id: str, decision, now: pd.Timestamp) -> None:
    """The gate's comparison per series in gold/gate (replace-where on run_id, with an
    application transaction), when the decision has one."""
    series = getattr(decision, "series", None)
    if series is None or (series.empty and not lake.exists(GOLD_GATE)):
        return
    rows = series.assign(
        run_id=run_id,
        challenger_version=decision.challenger_version,
        champion_version=decision.champion_version,
        metric=decision.metric,
        promoted=bool(decision.promoted),
        created_at=now,
    )
    lake.write(
        GOLD_GATE,
        rows,
        mode="overwrite",
        predicate=f"run_id = '{run_id}'",
        app_id=APP_GATE,
        app_version=int(decision.challenger_version),
        metadata={"mmf.run_id": run_id},
    )


def write_gold_training(lake, cfg, run_id, silver_version, results, quarantine, decision=None) -> None:
    """This run's rows in gold/gate, gold/backtest and gold/selection, replacing any
    earlier attempt of the same run (replace-where on run_id), so a retry never
    duplicates."""
    now = pd.Timestamp(dt.datetime.now(dt.timezone.utc)).as_unit("us")
    where = f"run_id = '{run_id}'"
    write_gold_gate(lake, run_id, decision, now)
    bt = backtest_rows(results, run_id)
    lake.write(GOLD_BACKTEST, bt, mode="overwrite", predicate=where)
    checkpoint("after_gold_backtest")
    sel = results[[C.SERIES_ID, "status", "reason", "model", "metric", "metric_value"]].copy()
    q = quarantine.rename(columns={"detail": "_detail"})
    if len(q):
        q = pd.DataFrame(
            {
                C.SERIES_ID: q[C.SERIES_ID],
                "status": C.QUARANTINED,
                "reason": q["reason"] + ": " + q["_detail"].fillna(""),
            }
        )
        sel = pd.concat([sel, q], ignore_index=True)
    sel["run_id"] = run_id
    sel["silver_version"] = silver_version
    sel["created_at"] = now
    lake.write(
        GOLD_SELECTION,
        sel,
        mode="overwrite",
        predicate=where,
        app_id=APP_ID,
        app_version=silver_version,
        metadata={"mmf.run_id": run_id},
    )
