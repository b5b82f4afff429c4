"""``mmf train``: every series in silver gets its own model, chosen on its own backtest.

Silver is read at a pinned Delta version (recorded in the MLflow run, so the exact data
can be re-read by time travel), in batches: the bucket ranges of
:meth:`Lakehouse.batches` (about ``batch_rows`` rows of whole series each), each read on
its own (:meth:`Lakehouse.read_buckets`). The engine maps
:func:`forecasting.pipeline.process_series` over the series of a stream of batches
(:meth:`Engine.map_batches`); as each batch completes, the engine commits its
TRAIN_RESULT rows to ``gold/models`` (with the run id, silver version and batch index:
a sink, :class:`training.engines.base.Sink`) and derives its backtest rows in
``gold/backtest`` and its backtest forecasts in ``gold/backtest_forecasts`` from them
(:meth:`Engine.derive`), each in a commit of its own (on Spark all three are written by
the executors: no result comes to the driver), so a restarted job redoes none of the
committed batches' work. Then the
stages after the engine (:mod:`training.jobs.train_gold`), each through the engine: the
MLflow run's metrics, summed up by the engine over the run's ``gold/models`` rows
(:meth:`Engine.aggregate`; a Spark aggregation on Spark), logged with the run's
artifacts (:func:`registry.results.log_results`, which reads the rows back a batch at a
time), one many-models pyfunc registered as ``challenger`` (promoted to ``champion`` by
the gate), the gate, and the run's rows in ``gold/gate`` and ``gold/selection`` (derived
from ``gold/models`` by the engine, a commit per batch; the application transaction
``mmf-train`` and the ``mmf.run_id`` commit metadata only on the last one: that commit is
what says the run is in Gold).

The gate compares the challenger with the champion on the same window
(:mod:`forecasting.comparison`, :mod:`registry.promotion`): the engine maps
:func:`forecasting.comparison.compare_series` over the series the champion forecast and
whose actuals have since arrived, batch by batch (the champion's results and Gold
forecasts of the batch's series only; one refit of the challenger's chosen model per
series, and of the champion's only where its Gold forecasts are missing), and commits
each batch's comparison rows to ``gold/gate`` itself (``promoted`` null until the gate
decided); the gate decides on their sums (:class:`registry.aggregates.GateSummary`),
the run gets them as ``gate_series.parquet`` (copied from ``gold/gate`` a batch at a
time) and, once decided, the run's ``gold/gate`` rows get ``promoted`` in one
replace-where commit with the application transaction ``mmf-gate``.

With ``retrain.policy`` ``changed`` or ``drifted+stale`` (:mod:`training.jobs.retrain`,
:mod:`forecasting.retrain`) the engine maps :func:`forecasting.retrain.retrain_series`
over batches that also carry each series' previous ``gold/models`` row (of the last
complete run): a series is fitted again when it is new, failed, drifted, stale or its
history was revised; every other series keeps its previous row, its model's state moved
on to the new readings. Either way the run's ``gold/models`` rows hold every series, so
everything after the engine is unchanged; batches holding drifted series go first.

Cold start (:mod:`training.jobs.cold_start`): when silver holds series too short for
per-series models, the profiles of the established meters are counted batch by batch
before the per-series step, and each batch's short series get theirs on their rows
(status ``cold_start``, :mod:`forecasting.cold_start`).

Global models need data across series: they are trained on a bounded sample, the first
batches of the plan up to ``batch_rows`` rows in all (every series when silver holds no
more), before the per-series step; the series outside that sample get the global models
as failed candidates with the reason (see :func:`global_sample`).

Restart: a job killed at any point leaves its run (``FAILED`` by
:func:`registry.recovery.mark_orphans_failed`). The next job on the same silver version,
config hash and batch plan re-opens THAT run (:func:`registry.recovery.find_resumable`,
:func:`registry.recovery.resume_run`); there is never a second run for one job:

* killed while training batches: only the batches missing from ``gold/models`` are
  trained; a batch in ``gold/models`` but not in ``gold/backtest`` (killed between the
  two commits) gets its backtest rows from ``gold/models``; the global models' entries
  and weights come back from the run (``resume/``), not trained again;
* killed after registering its model version: nothing is trained or registered again;
  the gate (unless it already decided: then its recorded comparison) and the Gold rows
  still missing are written;
* killed after its last ``gold/selection`` commit: its run is only closed
  (:func:`close_killed_run`).

Each table's done-set is read back from the table itself (``gold/models``: the run's
``batch`` values; ``gold/backtest`` and ``gold/selection``: the buckets of the run's
series), so a kill between two tables' commits of one batch never duplicates. A restart
therefore ends with the tables and registry state of an uninterrupted run: one run, one
version, the same aliases.
"""

from __future__ import annotations

import logging
import tempfile
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Sequence

import pandas as pd
from mlflow.exceptions import MlflowException

from forecasting import contract as C
from forecasting.config import Config
from forecasting.covariates import enabled as covariates_enabled
from forecasting.errors import DataContractError, TableError
from forecasting.frequency import alias, modal_step
from registry import promotion, pyfunc, recovery, runs
from registry.connection import configure, set_uris
from registry.global_models import log_global_models
from registry.results import load_results
from training import global_models
from training.checkpoints import checkpoint
from training.engines import get_engine
from training.engines.base import Engine, KeptSink, Sink
from training.jobs import cold_start, retrain
from training.jobs.covariates import with_covariates
from training.jobs.refine import refine_in_progress
from training.jobs.train_gold import (  # noqa: F401 - the after-engine stages, importable from here too
    champion_results,
    compare_with_champion,
    derive_backtest_forecasts,
    gate_run,
    record_run,
    stores_backtest_forecasts,
    with_series,
    write_gold_selection,
    write_gold_training,
)
from training.jobs.train_parts import RunParts
from training.jobs.train_plan import (  # noqa: F401 - what the stages share, importable from here too
    APP_GATE,
    APP_ID,
    RESULT_COLUMNS,
    SELECTION_COLUMNS,
    Plan,
    backtest_rows,
    batch_rows,
    done_batches,
    models_source,
    now,
    run_batches,
    run_results,
    run_rows,
)
from training.tables import (
    GOLD_BACKTEST,
    GOLD_MODELS,
    GOLD_SELECTION,
    SILVER_READINGS,
    Lakehouse,
)

log = logging.getLogger(__name__)
OUTSIDE_SAMPLE = (
    "outside the global models' training sample (the first batches of silver, up to batch_rows rows): "
    "raise batch_rows to train them on more series"
)


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
    timings: dict[str, float] = field(default_factory=dict)  # engine_s, mlflow_s, gold_write_s
    lake: Lakehouse | None = field(default=None, repr=False, compare=False)

    @property
    def failed_share(self) -> float:
        return _failed_share(self.status_counts)

    @property
    def results(self) -> pd.DataFrame | None:
        """The run's TRAIN_RESULT rows, read from ``gold/models`` when asked: the whole
        run in one frame, for small runs (tests, benchmarks); jobs read it by batch."""
        return run_results(self.lake, self.run_id) if self.lake is not None else None


def read_silver(
    lake: Lakehouse, version: int | None, series_ids: Sequence[str] | None = None
) -> tuple[int, pd.DataFrame]:
    """Silver/readings at ``version`` (the latest when ``None``) in one frame: for jobs
    on a few series (``mmf reproduce``); training reads it by batch (:class:`Plan`)."""
    v = pin_silver(lake, version, series_ids)
    filters = [(C.SERIES_ID, "in", list(series_ids))] if series_ids else None
    return v, lake.read(SILVER_READINGS, version=v, filters=filters)


def pin_silver(lake: Lakehouse, version: int | None, series_ids: Sequence[str] | None = None) -> int:
    """The silver/readings version to read (the latest when ``None``); every id of
    ``series_ids`` must be in it."""
    if not lake.exists(SILVER_READINGS):
        raise TableError("silver/readings does not exist: run `mmf refine` first")
    rebuilding = refine_in_progress(lake) if version is None else None
    if rebuilding:
        raise TableError(rebuilding)
    v = lake.version(SILVER_READINGS) if version is None else version
    if series_ids:
        filters = [(C.SERIES_ID, "in", list(series_ids))]
        found = set(
            lake.read(SILVER_READINGS, version=v, columns=[C.SERIES_ID], filters=filters)[C.SERIES_ID]
        )
        unknown = sorted(set(series_ids) - found)
        if unknown:
            raise DataContractError(
                f"series id(s) not in silver/readings version {v}: {', '.join(unknown[:10])}"
            )
    return v


def data_freq(config: Config, frame: pd.DataFrame) -> str:
    if config.freq:
        return config.freq
    if frame.empty:
        raise DataContractError(
            "silver/readings is empty: every series was quarantined (see silver/quarantine)"
        )
    first = frame[C.SERIES_ID].iloc[0]
    return alias(modal_step(frame.loc[frame[C.SERIES_ID] == first, C.TS].to_numpy()))


def plan_freq(config: Config, plan: Plan) -> str:
    """``config.freq``, or the step of the first series of the plan's first non-empty batch."""
    if config.freq:
        return config.freq
    for i in range(plan.n):
        frame = plan.load(i)
        if len(frame):
            return data_freq(config, frame)
    return data_freq(config, pd.DataFrame({C.SERIES_ID: []}))


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
    version = pin_silver(lake, silver_version, series_ids)
    ids = list(series_ids) if series_ids else None
    plan = Plan(lake, version, lake.batches(SILVER_READINGS, version, config.batch_rows), ids)
    cfg = config.replace(freq=plan_freq(config, plan))
    engine = get_engine(cfg)
    global_models.check(cfg)  # a bad global model setting fails before any work
    configure(cfg)
    recovery.mark_orphans_failed(cfg)
    prior = recovery.find_resumable(cfg, version, ids, plan.n)
    if prior is not None:
        run, mv = prior
        run_id = run.info.run_id
        if selection_done(lake, run_id):
            recovery.close_recovered(cfg, run_id, "closed after a restart: its Gold rows were written")
            RunParts.of(lake, cfg, run_id).remove()
        elif mv is None:
            return _train(lake, cfg, plan, engine, progress, resume=run_id)
        else:
            return _resume(lake, cfg, plan, run, mv, engine)
    return _train(lake, cfg, plan, engine, progress)


def _train(
    lake: Lakehouse, cfg: Config, plan: Plan, engine: Engine, progress, resume: str | None = None
) -> TrainReport:
    """Train the plan's batches in a new run, or in the killed job's run ``resume`` (only
    the batches it has not committed to gold/models), then record the run."""
    tell = progress or _silent
    timings: dict[str, float] = {}
    lap = _stopwatch(timings)
    with _open_run(cfg, plan, engine, resume) as run:
        run_id = run.info.run_id
        lap("mlflow_s")
        # Global models train once on the driver, on a sample; each series gets their results in its rows.
        glob = _global_models(cfg, plan, engine, run_id, progress, resumed=resume is not None)
        if glob is not None:
            lap("global_s")
        cold = cold_start.prepare(lake, cfg, plan, engine, tell)  # None: no series too short
        # the local engine's batches leave what the steps below need of them in the run's parts
        parts = RunParts.of(lake, cfg, run_id) if engine.name != "spark" else None
        train_batches(
            lake, cfg, plan, engine, run_id, glob, tell, resumed=resume is not None, cold=cold, parts=parts
        )
        lap("engine_s")
        tell("MLflow run, registry and gold tables", 0, 0)
        if parts is not None:
            parts.catch_up(lake, run_id, plan)
        metrics = record_run(lake, cfg, engine, plan, run_id, parts)
        metrics.update(retrain.log_counts(lake, engine, plan, run_id, parts))
        checkpoint("before_register")
        mv = _register(lake, cfg, plan, run_id, metrics, glob, parts)
        checkpoint("after_register")
        decision = (
            gate_run(lake, cfg, engine, plan, run_id, str(mv.version), parts) if mv is not None else None
        )
        checkpoint("after_gate")
        lap("mlflow_s")
        write_gold_training(lake, cfg, run_id, plan, decision, engine, parts)
        checkpoint("after_gold_selection")
        if parts is not None:
            parts.remove()
        lap("gold_write_s")
    return _report(lake, run_id, plan, cfg, mv, decision, metrics, timings)


def _open_run(cfg: Config, plan: Plan, engine: Engine, resume: str | None) -> AbstractContextManager:
    """The job's one run: a new one (tagged with its plan), or the killed job's, re-opened."""
    if resume is not None:
        log.warning("resuming run %s of a killed job: training the batches missing from gold/models", resume)
        note = "resumed after a restart: its batches in gold/models kept, the others trained"
        return recovery.resume_run(cfg, resume, note)
    run = runs.start_training_run(
        cfg, silver_version=plan.version, engine=engine.name, series_ids=plan.series_ids, batches=plan.n
    )
    if plan.series_ids:
        runs.log_series_subset(list(plan.series_ids))
    return run


def _stopwatch(timings: dict[str, float]) -> Callable[[str], None]:
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = timings.get(name, 0.0) + now - clock
        clock = now

    return lap


def _silent(step: str, done: int, total: int) -> None:
    pass


def series_step(config: Config) -> str:
    """The name of the per-series stage in progress reports."""
    return "tune, fit and backtest" if config.tune.enabled else "fit and backtest"


# -- the batches -----------------------------------------------------------------------
def train_batches(
    lake, cfg, plan: Plan, engine: Engine, run_id: str, glob, tell, resumed: bool, cold=None, parts=None
) -> None:
    """Map ``process_series`` over the plan's batches not in gold/models yet; the engine
    commits each batch's rows to gold/models as it completes (:func:`models_sink`), then
    derives its gold/backtest rows from them (:func:`derive_backtest`) and its
    gold/backtest_forecasts rows (:func:`derive_backtest_forecasts`): on Spark none
    comes back to the driver. ``parts``: the run's :class:`RunParts`, each committed
    batch staged there (the local engine)."""
    done = done_batches(lake, GOLD_MODELS, run_id, plan) if resumed else set()
    if resumed:  # a batch killed between its two commits: its backtest rows from gold/models
        for i in sorted(done - done_batches(lake, GOLD_BACKTEST, run_id, plan)):
            derive_backtest(engine, lake, run_id, plan, i)
    ctx = retrain.context(lake, cfg, plan, run_id)  # retrain.policy: the previous models carried
    todo = retrain.order(lake, ctx, plan, [i for i in range(plan.n) if i not in done])
    step, total = series_step(cfg), plan.n_series()
    committed = len(done)

    def on_progress(n_done: int, n_total: int) -> None:
        if 0 < n_done < n_total:
            checkpoint("mid_train", batches_done=committed)
        tell(step, n_done, n_total)

    tell(step, 0, total)
    # the local engine (parts): each batch's committed rows kept here for what is derived
    # from them (gold/backtest, gold/backtest_forecasts, the parts) instead of read back
    kept: dict[int, pd.DataFrame] = {}
    sink = (
        partial(models_sink, lake, run_id, plan)
        if parts is None
        else partial(_kept_sink, lake, run_id, plan, kept)
    )
    batches = ((i, batch_source(lake, cfg, plan, engine, (glob, ctx, cold), i)) for i in todo)
    if cold is not None:  # the cold-start series' profiles joined to their rows
        batches = ((i, cold.batch(engine, plan, i, source)) for i, source in batches)
    stream = engine.map_batches(
        batches,
        C.SERIES_ID,
        retrain.group_fn(),
        C.RETRAIN_RESULT,
        cfg,
        on_error=retrain.on_error(cfg),
        progress=on_progress,
        total=total,
        sink=sink,
    )
    with_forecasts = None  # gold/models' schema is known once the first batch committed
    for i, written in stream:
        rows = kept.pop(i, None)  # None (no parts): derived from gold/models at the batch's commit
        if written.version is not None:
            derive_backtest(engine, lake, run_id, plan, i, written.version, rows)
            if with_forecasts is None:
                with_forecasts = stores_backtest_forecasts(lake, cfg)
            if with_forecasts:
                derive_backtest_forecasts(engine, lake, cfg, run_id, plan, i, written.version, rows)
            if parts is not None:  # with parts the sink kept every batch it committed
                parts.stage(i, parts.select(lake, rows))
        committed += 1
        if committed < plan.n:
            checkpoint("mid_train", batches_done=committed)


def batch_source(lake: Lakehouse, cfg: Config, plan: Plan, engine: Engine, joined: tuple, i: int):
    """How the engine gets batch ``i``: its silver rows (read by the engine itself when
    nothing is joined to them), with the covariates, the global models' results and, for
    a partial retrain, each series' previous row (:mod:`training.jobs.retrain`; on Spark
    joined by the executors unless something else is joined on the driver).
    ``joined``: the global models, the retrain context and the cold start."""
    glob, ctx, cold = joined
    plain = glob is None and not covariates_enabled(cfg)
    if plain and not ctx.partial:
        return plan.batch(i)
    if plain and engine.name == "spark" and cold is None:
        from training.jobs import train_spark  # the optional pyspark

        return partial(train_spark.retrain_frame, engine, lake, plan, i, ctx)
    return partial(_batch_frame, lake, cfg, plan, glob, ctx, i)


def _batch_frame(lake: Lakehouse, cfg: Config, plan: Plan, glob, ctx, i: int) -> pd.DataFrame:
    """Batch ``i``'s rows with what is joined to them here (see :func:`batch_source`)."""
    rows = with_covariates(lake, cfg, plan.load(i))
    rows = rows if glob is None else glob.attach(rows)
    return retrain.batch_frame(lake, ctx, plan, i, rows)


def models_sink(lake: Lakehouse, run_id: str, plan: Plan, i: int) -> Sink:
    """Where batch ``i``'s TRAIN_RESULT rows go: gold/models, with the run, the silver
    version and the batch, in a commit of their own (commit metadata: the run and the
    batch); an empty batch commits only to create the table."""
    columns = {
        "run_id": run_id,
        "silver_version": plan.version,
        "batch": i,
        "created_at": now(),
        C.BUCKET: None,
    }
    meta = {"mmf.run_id": run_id, "mmf.batch": i, "mmf.batches": plan.n}
    return Sink(lake, GOLD_MODELS, columns, meta, create=True)


def _kept_sink(lake: Lakehouse, run_id: str, plan: Plan, kept: dict, i: int) -> KeptSink:
    """:func:`models_sink` keeping the rows it commits in ``kept`` (under ``i``)."""
    return KeptSink.keeping(models_sink(lake, run_id, plan, i), kept, i)


def derive_backtest(
    engine: Engine,
    lake: Lakehouse,
    run_id: str,
    plan: Plan,
    i: int,
    version: int | None = None,
    kept: pd.DataFrame | None = None,
) -> None:
    """Batch ``i``'s gold/backtest rows (when it has any), in a commit of their own,
    derived by the engine from the run's gold/models rows of the batch (at ``version``:
    the commit that wrote them; ``None``: the latest; or ``kept``: those rows, kept by
    the local engine as it committed them)."""
    source = models_source(lake, run_id, plan, i, version, (C.SERIES_ID, "backtest_json"), kept)
    meta = {"mmf.train_run": run_id, "mmf.batch": i, "mmf.batches": plan.n}
    rows = partial(backtest_rows, run_id=run_id)
    engine.derive(source, rows, lake.schema(GOLD_BACKTEST), Sink(lake, GOLD_BACKTEST, metadata=meta))


def write_backtest(lake: Lakehouse, run_id: str, plan: Plan, i: int, results: pd.DataFrame) -> None:
    """Batch ``i``'s backtest rows appended to gold/backtest (when it has any)."""
    bt = backtest_rows(results, run_id)
    if len(bt):
        lake.write(
            GOLD_BACKTEST, bt, metadata={"mmf.train_run": run_id, "mmf.batch": i, "mmf.batches": plan.n}
        )


# -- global models ---------------------------------------------------------------------
def global_sample(plan: Plan, max_rows: int) -> tuple[pd.DataFrame, bool]:
    """The global models' training data: the plan's first batches while they hold at
    most ``max_rows`` rows together (the first batch always), and whether that is every
    batch. Bounded by ``batch_rows`` like every other step; the hash spreads series
    evenly over buckets, so the first batches are an unbiased sample of the series."""
    frames: list[pd.DataFrame] = []
    rows = 0
    for i in range(plan.n):
        frame = plan.load(i)
        if frames and rows + len(frame) > max_rows:
            return pd.concat(frames, ignore_index=True), False
        frames.append(frame)
        rows += len(frame)
    return (pd.concat(frames, ignore_index=True) if frames else plan.load(0)), True


def _global_models(cfg: Config, plan: Plan, engine: Engine, run_id: str, progress, resumed: bool):
    """The run's global models: trained on :func:`global_sample` and logged (with what a
    restart needs, under the run's ``resume/``), or, for a re-opened run that logged
    them, read back from it; ``None`` when none is configured."""
    if not global_models.configured(cfg):
        return None
    if resumed:
        with tempfile.TemporaryDirectory(prefix="mmf-resume-") as tmp:
            folder = recovery.load_resume_state(cfg, run_id, tmp)
            if folder is not None and (folder / global_models.ENTRIES_FILE).exists():
                return global_models.GlobalReport.load(folder)
    sample, complete = global_sample(plan, cfg.batch_rows)
    sample = with_covariates(plan.lake, cfg, sample)
    glob = global_models.train_global_models(sample, cfg, engine=engine.name, progress=progress)
    del sample
    if glob is None:
        return None
    if not complete:
        glob.outside = OUTSIDE_SAMPLE
    log_global_models(glob)
    with tempfile.TemporaryDirectory(prefix="mmf-resume-") as tmp:
        recovery.log_resume_state(glob.save(tmp))
    return glob


def _register(
    lake: Lakehouse, cfg: Config, plan: Plan, run_id: str, metrics: dict[str, float], glob, parts=None
):
    """The run's many-models version (``None`` when no series has a usable model);
    an embedded bundle from the run's ``parts`` when staged."""
    if not sum(metrics.get(f"n_{s}", 0) for s in (C.OK, C.FALLBACK, C.COLD_START)):
        return None
    store = glob.store_path if glob is not None else None  # global weights, stored once in the pyfunc
    if pyfunc.bundle_kind(cfg) == pyfunc.REFERENCE:  # the version refers to the run's gold/models rows
        ref = pyfunc.ModelsRef(lake.root, run_id, int(lake.version(GOLD_MODELS)))
        return pyfunc.log_many_models(None, cfg, plan.version, global_store=store, reference=ref)
    rows = parts.models(plan) if parts is not None else run_batches(lake, run_id, plan)
    return pyfunc.log_many_models(rows, cfg, silver_version=plan.version, global_store=store)


def _report(lake, run_id, plan: Plan, cfg: Config, mv, decision, metrics, timings) -> TrainReport:
    counts = {s: int(metrics.get(f"n_{s}", 0)) for s in (C.OK, C.FALLBACK, C.FAILED, C.COLD_START)}
    counts[C.QUARANTINED] = int(metrics.get("n_quarantined", 0))
    chosen = {k[len("chosen.") :]: int(v) for k, v in metrics.items() if k.startswith("chosen.")}
    return TrainReport(
        run_id=run_id,
        silver_version=plan.version,
        freq=cfg.freq,
        model_version=str(mv.version) if mv is not None else None,
        promoted=bool(decision and decision.promoted),
        status_counts={k: v for k, v in counts.items() if v},
        metrics=metrics,
        chosen=chosen,
        decision=with_series(lake, plan, run_id, decision),
        timings=timings,
        lake=lake,
    )


# -- restart ---------------------------------------------------------------------------
def selection_done(lake: Lakehouse, run_id: str) -> bool:
    """Whether the run's last gold/selection commit (the one naming it, ``mmf.run_id``)
    is in the table: its job recorded everything."""
    if not lake.exists(GOLD_SELECTION):
        return False
    return any(c.get("mmf.run_id") == run_id for c in lake.history(GOLD_SELECTION))


def last_trained_run(lake: Lakehouse) -> str | None:
    """The run of the last complete training recorded in gold/selection (the newest
    commit carrying ``mmf.run_id``: a killed job's batch commits do not)."""
    table = lake.table(GOLD_SELECTION)
    last = table.history(1)
    if last and last[0].get("mmf.run_id"):
        return last[0]["mmf.run_id"]
    return next((c["mmf.run_id"] for c in table.history() if c.get("mmf.run_id")), None)


def _resume(lake: Lakehouse, cfg: Config, plan: Plan, run, mv, engine: Engine) -> TrainReport:
    """Finish a killed job's run whose model version is registered: the gate (unless it
    already decided) and the Gold rows still missing, from the run's gold/models rows;
    no retraining."""
    run_id, model_version = run.info.run_id, str(mv.version)
    log.warning(
        "resuming run %s of a killed job: model version %s is registered; writing what is left",
        run_id,
        model_version,
    )
    note = f"finished after a restart: model version {model_version} was registered, its Gold rows were not"
    with recovery.resume_run(cfg, run_id, note):
        if not done_batches(lake, GOLD_MODELS, run_id, plan):
            _adopt_results(lake, cfg, plan, run_id)
        for i in sorted(
            done_batches(lake, GOLD_MODELS, run_id, plan) - done_batches(lake, GOLD_BACKTEST, run_id, plan)
        ):
            write_backtest(lake, run_id, plan, i, batch_rows(lake, run_id, plan.ranges[i]))
        tags = mv.tags or {}
        if "mmf.n_series" not in tags or not any(k.startswith(pyfunc.HASH_TAG) for k in tags):
            # killed between registering and tagging the version
            pyfunc.tag_version(cfg, model_version, run_id, run_batches(lake, run_id, plan), plan.version)
        decision = promotion.recorded_decision(cfg, model_version) or gate_run(
            lake, cfg, engine, plan, run_id, model_version
        )
        checkpoint("after_gate")
        write_gold_training(lake, cfg, run_id, plan, decision, engine)
        checkpoint("after_gold_selection")
    RunParts.of(lake, cfg, run_id).remove()  # what the killed job staged
    metrics = {k: float(v) for k, v in run.data.metrics.items()}
    return _report(lake, run_id, plan, cfg, mv, decision, metrics, {})


def _adopt_results(lake: Lakehouse, cfg: Config, plan: Plan, run_id: str) -> None:
    """A run registered before training wrote gold/models: its ``results.parquet``
    committed there batch by batch (read once, whole, as that release wrote it)."""
    results = load_results(cfg, run_id)
    buckets = C.bucket_of(results[C.SERIES_ID])
    for i, (lo, hi) in enumerate(plan.ranges):
        part = results[(buckets >= lo) & (buckets < hi)]
        rows = part.assign(run_id=run_id, silver_version=plan.version, batch=i, created_at=now())
        lake.write(
            GOLD_MODELS, rows.assign(**{C.BUCKET: None}), metadata={"mmf.run_id": run_id, "mmf.batch": i}
        )


def training_due(lake: Lakehouse, config: Config, silver_version: int) -> str | None:
    """Why the nightly must train on ``silver_version``; ``None`` when training is current.

    Current means: gold/selection records a run on this silver version (its Delta
    application transaction ``mmf-train``), that run is in the MLflow store, and it
    failed at most ``nightly.max_failed_share`` of its series (a run over that share made
    its nightly fail, so it is not taken as done: the next nightly trains again).
    ``""``: nothing trained on this silver version yet."""
    if lake.txn_version(GOLD_SELECTION, APP_ID) != silver_version:
        return ""
    run_id = last_trained_run(lake)
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


def close_killed_run(lake: Lakehouse, config: Config) -> str | None:
    """When training is current: end the run of the job that wrote gold/selection last if
    it was killed before ending it (all its work is recorded), and mark any other
    orphaned run failed. Returns the id of the run closed, if any."""
    if not lake.exists(GOLD_SELECTION):
        return None
    run_id = last_trained_run(lake)
    configure(config)
    closed = bool(run_id) and recovery.close_recovered(
        config, run_id, "closed after a restart: its Gold rows were written"
    )
    recovery.mark_orphans_failed(config)
    return run_id if closed else None
