"""The stages of ``mmf train`` after the engine trained the batches: the run's metrics,
the gate and the run's rows in ``gold/gate``, ``gold/backtest_forecasts`` and
``gold/selection``, each through the engine, so that on Spark the per-series rows stay
on the executors and the driver gets only counts and sums.

* The run's metrics (:func:`record_run`) are summed up by the engine over the run's
  ``gold/models`` rows (:meth:`Engine.aggregate` of :func:`registry.aggregates.run_facts`:
  a Spark aggregation on Spark, exact sums batch by batch locally) and logged with the
  run's artifacts (:func:`registry.results.log_results`, which reads the rows back a
  batch at a time for ``results.parquet``, ``per_series.parquet`` and the plots; on
  Spark :func:`training.jobs.train_spark.log_run`: the executors write them).
* The gate (:func:`gate_run`): without a champion the challenger's mean metric, summed
  up the same way; with one, the engine maps :func:`forecasting.comparison.compare_series`
  over each batch's series and commits each batch's comparison rows to ``gold/gate``
  itself (a :class:`Sink`: ``promoted`` still null, commit metadata ``mmf.gate_run``
  and the batch; a restarted gate skips the batches the table holds), then sums them up
  (:class:`registry.aggregates.GateSummary`) for :func:`registry.promotion.decide`. The
  run's ``gate_series.parquet`` is copied from those ``gold/gate`` rows a batch at a
  time. On Spark the executors read the batch's silver rows and both runs' rows
  themselves, plan and compare per series, and write ``gate_series.parquet``
  (:mod:`training.jobs.train_spark`): nothing per series passes through the driver.
  Once decided, the run's ``gold/gate`` rows get ``promoted`` in one replace-where
  commit made by the engine (:func:`finish_gold_gate`: application transaction
  ``mmf-gate``, ``mmf.run_id``).
* ``gold/backtest_forecasts`` (:func:`derive_backtest_forecasts`): per batch the
  engine derives the rows from the ``forecasts_json`` of the run's ``gold/models`` rows
  (on Spark the executors read and write them) and commits them (``mmf.train_run``, the
  batch), as the batch commits in the training loop, like gold/backtest;
  :func:`write_gold_backtest_forecasts` after the engine does the batches the table
  holds no rows of (a killed job's), so a restart never duplicates and redoes none.
* ``gold/selection`` (:func:`write_gold_selection`): with the run's parts (the local
  engine, :mod:`training.jobs.train_parts`), the staged selection rows of consecutive
  batches and their ``silver/quarantine`` rows in one commit per group (at most
  :data:`SELECTION_ROWS` rows); otherwise per batch the engine derives the rows from the
  run's ``gold/models`` rows and the batch's ``silver/quarantine`` rows
  (:meth:`Engine.derive_all`) and commits them. The last commit carries the application
  transaction ``mmf-train`` and ``mmf.run_id``.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Callable

import pandas as pd
from mlflow.exceptions import MlflowException

from forecasting import comparison
from forecasting import contract as C
from forecasting.config import Config
from forecasting.results import backtest_forecast_rows
from registry import promotion, pyfunc
from registry.aggregates import (
    METRIC_VALUE,
    Totals,
    challenger_facts,
    gate_facts,
    gate_summary,
    run_facts,
    run_metrics,
)
from registry.results import load_results, log_results
from training.checkpoints import checkpoint
from training.engines import get_engine
from training.engines.base import Engine, Sink, TableBatch, concat, conform_rows
from training.jobs.train_plan import (
    APP_GATE,
    APP_ID,
    SELECTION_COLUMNS,
    Plan,
    batch_rows,
    done_batches,
    models_source,
    now,
    retrain_columns,
    run_batches,
    run_rows,
)
from training.tables import (
    GOLD_BACKTEST_FORECASTS,
    GOLD_FORECASTS,
    GOLD_GATE,
    GOLD_MODELS,
    GOLD_SELECTION,
    SILVER_QUARANTINE,
    Lakehouse,
)

if TYPE_CHECKING:
    from training.jobs.train_parts import RunParts

log = logging.getLogger(__name__)
SELECTION_ROWS = 200_000  # most staged rows in one gold/selection commit (bounds what it holds)
SERIES_IN_REPORT = 20_000  # a decision's per-series rows read back for the report up to this many series
METRIC_COLUMNS = (C.SERIES_ID, "status", "model", "metric", "metric_value", "backtest_json")
QUARANTINE_COLUMNS = (C.SERIES_ID, "reason", "detail")


def run_sources(lake: Lakehouse, run_id: str, plan: Plan, table: str, columns) -> list[TableBatch]:
    """The run's rows of ``table`` (only ``columns``), one source per batch of the plan."""
    where = (("run_id", "=", run_id),)
    return [TableBatch(lake, table, r, None, tuple(columns), where) for r in plan.ranges]


# -- the run's metrics -----------------------------------------------------------------
def record_run(
    lake: Lakehouse, cfg: Config, engine: Engine, plan: Plan, run_id: str, parts=None
) -> dict[str, float]:
    """The run's metrics, summed up by the engine over its gold/models rows, logged to
    the active run with its artifacts; returns them. With the run's ``parts``
    (:class:`~training.jobs.train_parts.RunParts`, the local engine): the artifacts
    copied from them and the metrics counted from their per-series rows."""
    n_quarantined = plan.n_quarantined()
    if parts is not None:
        return log_results(
            parts.results(plan),
            cfg,
            history=plan.history,
            n_quarantined=n_quarantined,
            lookup=partial(run_rows, lake, run_id),
        )
    stats = engine.aggregate(
        run_sources(lake, run_id, plan, GOLD_MODELS, METRIC_COLUMNS), run_facts, medians=[METRIC_VALUE]
    )
    if engine.name == "spark":  # the run's rows stay on the executors
        from training.jobs import train_spark  # the optional pyspark

        return train_spark.log_run(engine, lake, cfg, plan, run_id, run_metrics(stats, n_quarantined))
    return log_results(
        run_batches(lake, run_id, plan),
        cfg,
        history=plan.history,
        n_quarantined=n_quarantined,
        lookup=partial(run_rows, lake, run_id),
        metrics=run_metrics(stats, n_quarantined),
    )


# -- the gate --------------------------------------------------------------------------
def gate_run(lake: Lakehouse, cfg: Config, engine: Engine, plan: Plan, run_id: str, version: str, parts=None):
    """The gate on ``version``: with a champion, on the comparison of each batch's
    series the engine committed to gold/gate, summed up by the engine; without one, on
    the challenger's metric (from the run's ``parts`` when staged)."""
    metric = cfg.backtest.metric
    found = promotion.champion_run(cfg, version)
    if found is None:
        if parts is not None:
            totals = Totals()
            totals.add(parts.challenger_facts(plan))
            stats = totals.stats()
        else:
            sources = run_sources(lake, run_id, plan, GOLD_MODELS, METRIC_COLUMNS)
            stats = engine.aggregate(sources, partial(challenger_facts, metric=metric))
        first = stats["challenger_metric"].mean if "challenger_metric" in stats else None
        return promotion.decide(cfg, version, first)
    compare_with_champion(lake, cfg, engine, plan, run_id, version, found)
    stats = {}
    if lake.exists(GOLD_GATE):
        sources = run_sources(lake, run_id, plan, GOLD_GATE, C.GATE_SERIES.names)
        stats = engine.aggregate(sources, partial(gate_facts, metric=metric))
        log_gate_series(engine, lake, run_id, sources)
    return promotion.decide(cfg, version, None, found[0], gate_summary(stats))


def compare_with_champion(
    lake: Lakehouse, cfg: Config, engine: Engine, plan: Plan, run_id: str, version: str, found
) -> None:
    """The challenger (run ``run_id``, model ``version``) and the champion (``found``:
    its version and run, :func:`registry.promotion.champion_run`) scored per series on
    the champion's window (:mod:`forecasting.comparison`), batch by batch: each batch's
    plan from the two runs' results and the champion's Gold forecasts of the batch's
    series, the refits mapped over its series by the engine, which commits the batch's
    rows to gold/gate (:func:`gate_sink`); a batch with no series to refit (all carried
    from the champion, new or without actuals yet) has its rows committed to the same
    sink without the engine. The batches gold/gate holds are skipped."""
    champion, champion_run = found
    done = done_batches(lake, GOLD_GATE, run_id, plan) if lake.exists(GOLD_GATE) else set()
    sink = partial(gate_sink, lake, run_id, plan, (str(version), champion, cfg.backtest.metric, now()))
    if engine.name == "spark":  # the executors read the batches and the champion's rows
        from training.jobs import train_spark  # the optional pyspark

        todo = [i for i in range(plan.n) if i not in done]
        versions = (run_id, champion, champion_run)
        train_spark.compare(engine, lake, cfg, plan, versions, todo, sink, partial(legacy_results, cfg))
        return
    champion_of = champion_results(lake, cfg, champion_run)

    def planned(i: int) -> pd.DataFrame:
        chal = batch_rows(lake, run_id, plan.ranges[i])
        ids = chal.loc[chal["status"].isin(comparison.USABLE), C.SERIES_ID].tolist()
        where = [("model_version", "=", champion), (C.SERIES_ID, "in", ids)]
        # a batch without a usable series (or none at all) reads nothing: an empty "in" list fails in Arrow
        forecasts = lake.read(GOLD_FORECASTS, filters=where) if ids else _no_forecasts(lake)
        return comparison.plan(chal, champion_of(plan.ranges[i]), forecasts, cfg)

    def batches():
        """The batches with a series to compare, for the engine; a batch whose series
        are all left out (a partial retrain's carried series, new ones) gets its rows
        committed here as it comes, without the engine's per-series calls."""
        for i in range(plan.n):
            if i in done:
                continue
            rows = planned(i)
            if rows[comparison.PLAN_COLUMN].notna().any():
                yield i, partial(_attached, plan, i, rows)
            else:
                sink(i).commit(comparison.left_out(rows))

    on_error = partial(comparison.failed_comparison, config=cfg)
    stream = engine.map_batches(
        batches(), C.SERIES_ID, comparison.compare_series, C.GATE_SERIES, cfg, on_error=on_error, sink=sink
    )
    for _ in stream:
        pass


def _attached(plan: Plan, i: int, planned: pd.DataFrame) -> pd.DataFrame:
    """Batch ``i``'s silver rows with its comparison plan, read when the engine is ready."""
    return comparison.attach_all(plan.load(i), planned)


def _no_forecasts(lake: Lakehouse) -> pd.DataFrame:
    return lake.schema(GOLD_FORECASTS).empty_table().to_pandas()


def gate_sink(lake: Lakehouse, run_id: str, plan: Plan, context: tuple, i: int) -> Sink:
    """Where batch ``i``'s comparison rows go: gold/gate, with the run, the versions
    compared, the metric and ``context``'s time (``promoted`` null until the gate
    decided), in a commit of their own."""
    challenger, champion, metric, created = context
    columns = {
        "run_id": run_id,
        "challenger_version": challenger,
        "champion_version": champion,
        "metric": metric,
        "promoted": None,
        "created_at": created,
    }
    return Sink(lake, GOLD_GATE, columns, {"mmf.gate_run": run_id, "mmf.batch": i, "mmf.batches": plan.n})


def champion_results(
    lake: Lakehouse, cfg: Config, run_id: str | None
) -> Callable[[tuple[int, int]], pd.DataFrame | None]:
    """The champion's TRAIN_RESULT rows of a bucket range: from its run's gold/models
    rows; for a champion trained before gold/models, from its run's ``results.parquet``
    (read once); ``None`` when they cannot be read."""
    if run_id and len(lake.read(GOLD_MODELS, columns=["batch"], filters=[("run_id", "=", run_id)])):
        return partial(batch_rows, lake, run_id)
    whole = legacy_results(cfg, run_id) if run_id else None
    if whole is None:
        return lambda buckets: None
    ids = C.bucket_of(whole[C.SERIES_ID])
    return lambda buckets: whole[(ids >= buckets[0]) & (ids < buckets[1])]


def legacy_results(cfg: Config, run_id: str) -> pd.DataFrame | None:
    """The TRAIN_RESULT rows of a run trained before gold/models, from its
    ``results.parquet`` (read whole); ``None`` when they cannot be read."""
    try:
        return load_results(cfg, run_id)
    except (MlflowException, OSError) as exc:
        log.warning("cannot read the results of the champion's run %s: %s", run_id, exc)
        return None


def log_gate_series(engine: Engine, lake: Lakehouse, run_id: str, sources: list[TableBatch]) -> None:
    """The run's ``gate_series.parquet`` from its gold/gate rows: copied a batch at a
    time here, written by the executors on Spark."""
    if engine.name == "spark":
        from training.jobs import train_spark  # the optional pyspark

        train_spark.log_gate_series(engine, lake, run_id, sources)
        return
    promotion.log_gate_series(src() for src in sources)


def kept(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows as they are (a derive that only sets its sink's constant columns)."""
    return rows


def finish_gold_gate(engine: Engine, lake: Lakehouse, run_id: str, decision) -> None:
    """The decision's ``promoted`` on the run's gold/gate rows: one replace-where commit
    on ``run_id`` made by the engine, with the application transaction ``mmf-gate``
    (the challenger version) and ``mmf.run_id``; nothing when there was no champion to
    compare with."""
    if decision is None or decision.champion_version in (None, decision.challenger_version):
        return
    if not lake.exists(GOLD_GATE):
        return
    source = TableBatch(lake, GOLD_GATE, (0, C.N_BUCKETS), None, None, (("run_id", "=", run_id),))
    sink = Sink(
        lake,
        GOLD_GATE,
        {"promoted": bool(decision.promoted)},
        {"mmf.run_id": run_id},
        predicate=f"run_id = '{run_id}'",
        app_id=APP_GATE,
        app_version=int(decision.challenger_version),
        always=True,
    )
    engine.derive(source, kept, lake.schema(GOLD_GATE), sink)


def with_series(lake: Lakehouse, plan: Plan, run_id: str, decision):
    """``decision`` with its per-series rows read back from gold/gate (sorted by
    series), for small runs (up to :data:`SERIES_IN_REPORT` series; tests, benchmarks)."""
    if decision is None or decision.series is not None or not lake.exists(GOLD_GATE):
        return decision
    if decision.champion_version in (None, decision.challenger_version) or plan.n_series() > SERIES_IN_REPORT:
        return decision
    rows = lake.read(GOLD_GATE, columns=C.GATE_SERIES.names, filters=[("run_id", "=", run_id)])
    decision.series = rows.sort_values(C.SERIES_ID, ignore_index=True)
    return decision


# -- Gold ------------------------------------------------------------------------------
def write_gold_training(
    lake: Lakehouse,
    cfg: Config,
    run_id: str,
    plan: Plan,
    decision=None,
    engine: Engine | None = None,
    parts: RunParts | None = None,
) -> None:
    """The run's gold/backtest_forecasts rows, the gate's ``promoted`` on its gold/gate
    rows and its gold/selection rows (each: the batches the table does not hold yet;
    gold/selection from the run's ``parts`` when staged); gold/backtest was written with
    the batches. A retry never duplicates."""
    engine = get_engine(cfg) if engine is None else engine
    write_gold_backtest_forecasts(engine, lake, cfg, run_id, plan)
    finish_gold_gate(engine, lake, run_id, decision)
    checkpoint("after_gold_backtest")
    write_gold_selection(engine, lake, run_id, plan, now(), pyfunc.versions_by_run(cfg), parts)


def write_gold_backtest_forecasts(
    engine: Engine, lake: Lakehouse, cfg: Config, run_id: str, plan: Plan
) -> None:
    """The run's backtest forecasts (``backtest.store_forecasts``) in
    gold/backtest_forecasts of the batches the table holds no rows of yet: each batch's
    are derived as it commits (:func:`derive_backtest_forecasts`, from the training
    loop), so this only catches up what a killed job left (or a batch without rows)."""
    if not stores_backtest_forecasts(lake, cfg):
        return
    done = (
        done_batches(lake, GOLD_BACKTEST_FORECASTS, run_id, plan)
        if lake.exists(GOLD_BACKTEST_FORECASTS)
        else set()
    )
    for i in range(plan.n):
        if i not in done:
            derive_backtest_forecasts(engine, lake, cfg, run_id, plan, i)


def stores_backtest_forecasts(lake: Lakehouse, cfg: Config) -> bool:
    """Whether the run's gold/models rows give gold/backtest_forecasts rows: the config
    keeps them and gold/models has the column (a table older than it has none)."""
    if cfg.backtest.store_forecasts == "none" or not lake.exists(GOLD_MODELS):
        return False
    return C.FORECASTS_JSON in lake.stored_columns(GOLD_MODELS)


def derive_backtest_forecasts(
    engine: Engine,
    lake: Lakehouse,
    cfg: Config,
    run_id: str,
    plan: Plan,
    i: int,
    version: int | None = None,
    kept: pd.DataFrame | None = None,
) -> None:
    """Batch ``i``'s gold/backtest_forecasts rows, derived by the engine from the
    ``forecasts_json`` of the run's gold/models rows of the batch (at ``version``: the
    commit that wrote them; ``None``: the latest; on Spark the executors read and write
    them; or ``kept``: those rows, kept by the local engine as it committed them), in a
    commit of their own (``mmf.train_run`` and the batch)."""
    rows = partial(backtest_forecast_rows, run_id=run_id, levels=tuple(cfg.levels))
    source = models_source(lake, run_id, plan, i, version, (C.SERIES_ID, C.FORECASTS_JSON), kept)
    meta = {"mmf.train_run": run_id, "mmf.batch": i, "mmf.batches": plan.n}
    engine.derive(
        source, rows, lake.schema(GOLD_BACKTEST_FORECASTS), Sink(lake, GOLD_BACKTEST_FORECASTS, metadata=meta)
    )


def write_gold_selection(
    engine: Engine,
    lake: Lakehouse,
    run_id: str,
    plan: Plan,
    created: pd.Timestamp,
    versions: dict[str, str] | None = None,
    parts: RunParts | None = None,
) -> None:
    """The run's gold/selection rows of the batches the table does not hold yet, the
    last commit carrying the application transaction ``mmf-train`` and ``mmf.run_id``.
    ``versions`` (run id -> its registered version) gives ``from_version``. With the
    run's ``parts`` (the local engine), from the staged selection rows, several batches a
    commit (:func:`selection_groups`); otherwise a commit per batch derived by the engine
    from the run's gold/models rows (on Spark the executors read and write them)."""
    done = done_batches(lake, GOLD_SELECTION, run_id, plan) if lake.exists(GOLD_SELECTION) else set()
    schema = lake.schema(GOLD_SELECTION)
    todo = [i for i in range(plan.n) if i not in done]
    if parts is not None:
        for group in selection_groups(todo, parts.selection_rows, SELECTION_ROWS):
            _commit_selection_group(lake, run_id, plan, group, created, versions or {}, parts, schema)
        return
    extra = tuple(retrain_columns(lake)) if todo else ()  # looked up once per run
    for i in todo:
        engine.derive_all(
            selection_sources(lake, run_id, plan, i, versions or {}, extra),
            schema,
            selection_sink(lake, run_id, plan, i, created),
        )


def selection_groups(todo: list[int], rows_of: Callable[[int], int], limit: int) -> list[list[int]]:
    """``todo``'s batches in groups of consecutive batches committed together, each of at
    most ``limit`` staged rows (``rows_of(i)``; a larger batch alone)."""
    groups: list[list[int]] = []
    size = 0
    for i in todo:
        n = rows_of(i)
        if groups and groups[-1][-1] == i - 1 and size + n <= limit:
            groups[-1].append(i)
            size += n
        else:
            groups.append([i])
            size = n
    return groups


def _commit_selection_group(
    lake: Lakehouse,
    run_id: str,
    plan: Plan,
    group: list[int],
    created: pd.Timestamp,
    versions: dict[str, str],
    parts: RunParts,
    schema,
) -> None:
    """One gold/selection commit of consecutive batches ``group``: their staged rows and
    their silver/quarantine rows (one read over the group's buckets)."""
    frames = [conform_rows(selected(parts.selection(group), versions, run_id), schema)]
    if lake.exists(SILVER_QUARANTINE):
        rows = plan.quarantine_batch(group[0], QUARANTINE_COLUMNS, last=group[-1])()
        frames.append(conform_rows(quarantined(rows), schema))
    selection_sink(lake, run_id, plan, group[-1], created).commit(concat(frames, schema))


def selection_sources(
    lake: Lakehouse, run_id: str, plan: Plan, i: int, versions: dict[str, str], extra: tuple[str, ...]
) -> list:
    """Where batch ``i``'s gold/selection rows come from: the run's gold/models rows of
    the batch (with ``extra``: the retrain columns gold/models has) and the batch's
    silver/quarantine rows, each with how to make them."""
    where = (("run_id", "=", run_id),)
    source = TableBatch(lake, GOLD_MODELS, plan.ranges[i], None, (*SELECTION_COLUMNS, *extra), where)
    parts = [(source, partial(selected, versions=versions, run_id=run_id))]
    if lake.exists(SILVER_QUARANTINE):
        parts.append((plan.quarantine_batch(i, QUARANTINE_COLUMNS), quarantined))
    return parts


def selection_sink(lake: Lakehouse, run_id: str, plan: Plan, i: int, created: pd.Timestamp) -> Sink:
    """Batch ``i``'s gold/selection commit: the run, the silver version and ``created``
    on each row; the last batch's commit is made even without rows and carries the
    application transaction and ``mmf.run_id`` (what says the run is in Gold)."""
    columns = {"run_id": run_id, "silver_version": plan.version, "created_at": created}
    meta = {"mmf.batch": i, "mmf.batches": plan.n}
    if i < plan.n - 1:
        return Sink(lake, GOLD_SELECTION, columns, {"mmf.train_run": run_id, **meta})
    return Sink(
        lake,
        GOLD_SELECTION,
        columns,
        {**meta, "mmf.run_id": run_id},
        app_id=APP_ID,
        app_version=plan.version,
        always=True,
    )


def selected(rows: pd.DataFrame, versions: dict[str, str] | None = None, run_id: str = "") -> pd.DataFrame:
    """gold/selection rows of TRAIN_RESULT rows of run ``run_id``; with the retrain
    columns, ``refit`` and ``from_version``: the registered version (``versions``: by
    run id) of ``from_run``, of ``run_id`` itself where it is null (fitted in it)."""
    out = rows[SELECTION_COLUMNS]
    if "refit" not in rows.columns:
        return out
    runs = rows["from_run"] if "from_run" in rows.columns else pd.Series(None, index=rows.index)
    found = [(versions or {}).get(r if isinstance(r, str) and r else run_id) for r in runs]
    origin = pd.Series(found, index=rows.index, dtype=object)
    return out.assign(refit=rows["refit"], from_version=origin)


def quarantined(rows: pd.DataFrame) -> pd.DataFrame:
    """gold/selection rows of silver/quarantine rows: status ``quarantined``, the reason
    with its detail."""
    return pd.DataFrame(
        {
            C.SERIES_ID: rows[C.SERIES_ID],
            "status": C.QUARANTINED,
            "reason": rows["reason"] + ": " + rows["detail"].fillna(""),
        }
    )
