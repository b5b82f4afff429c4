"""``mmf train --engine spark`` after the engine, with the data kept on the executors:
the gate's comparison and the run's result artifacts (:mod:`training.jobs.train_gold`
calls these where the local engine reads batches on the driver).

* The gate (:func:`compare`), per batch of the plan: the executors read the batch's
  silver rows (silver/readings at the pinned version, its bucket range:
  :meth:`SparkEngine.read_batch`), the challenger's and the champion's ``gold/models``
  rows of the batch and the champion's ``gold/forecasts`` rows of those series. The
  TRAIN_RESULT rows of both runs are cogrouped with the forecasts by series and each
  series gets its comparison plan (:func:`forecasting.comparison.plan`, on that series'
  rows alone: a plan row only depends on its own series); the plan is cogrouped with
  the silver rows and each series runs :func:`forecasting.comparison.compare_series`
  (``attach_all`` first), as the local engine runs it. The rows are committed to
  gold/gate by delta-spark (the gate's :class:`~training.engines.base.Sink`); only their
  counts come to the driver. A champion trained before gold/models has its rows in its
  run's ``results.parquet`` only: those, read on the driver as before, are sent to Spark.
* The run's artifacts (:func:`log_run`): ``results.parquet`` and
  ``per_series.parquet`` are Parquet datasets (folders of part files) written by the
  executors straight into the run's artifact folder when the artifact store is a
  local or mounted path (what MLflow lists and downloads as the same artifacts as the
  local engine's single files; ``pandas.read_parquet`` reads either). With any other
  store (``s3://``, a tracking server's proxy) executors cannot write there: the
  datasets go to the lakehouse, under ``_runs/<run id>/``, and the run gets
  ``results.ref.json`` naming them and ``gold/models`` at its version for the run (the
  executors already write to the lakehouse, and a killed run's recovery recognises
  the reference as it recognises ``results.parquet``). ``gate_series.parquet`` is
  written the same way from the run's gold/gate rows. The plots need little: the error
  histogram's counts per bin (a Spark aggregation over bins made as matplotlib makes
  them) and the rows of the few sampled series (a Spark filter on their ids; the sample
  drawn by rank as the local engine draws it). ``per_series.json`` (an MLflow table of
  every series) is not made on Spark: its rows would pass through the driver.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Sequence

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame as SparkDataFrame
from pyspark.sql import functions as F

from forecasting import comparison
from forecasting import contract as C
from forecasting.config import Config
from forecasting.retrain import carry_rows
from registry.metrics import USABLE, chosen_backtest, per_series_table
from registry.plots import bin_edges, sample_ranks
from registry.promotion import GATE_SERIES_FILE
from registry.results import (
    PER_SERIES_FILE,
    RESULTS_FILE,
    local_artifact_dir,
    log_results_ref,
    log_summary_plots,
)
from training import checkpoints
from training.engines.base import SinkFn, TableBatch
from training.engines.spark import SparkEngine, group_udf, read_sources, rows_udf
from training.jobs import retrain
from training.jobs.train_plan import RESULT_COLUMNS, Plan, plotted_columns
from training.tables import GOLD_DRIFT, GOLD_FORECASTS, GOLD_GATE, GOLD_MODELS, SILVER_READINGS, Lakehouse
from training.tables.spark import spark_uri
from training.tables.spark_session import arrow_to_spark_schema, to_spark

SIDE, CHALLENGER, CHAMPION = "_side", "challenger", "champion"
ALL = (0, C.N_BUCKETS)
# a series' comparison plan (forecasting.comparison.plan's rows)
PLAN_SCHEMA = pa.schema(
    [
        (C.SERIES_ID, pa.string()),
        ("window_start", C.TS_TYPE),
        (comparison.PLAN_COLUMN, pa.string()),
        ("reason", pa.string()),
    ]
)
BIN = pa.schema([("bin", pa.int64()), ("n", pa.int64())])
ChampionRows = Callable[[tuple[int, int]], SparkDataFrame | None]


# -- the partial retrain ----------------------------------------------------------------
CARRY_SCHEMA = pa.schema([(C.SERIES_ID, pa.string()), (retrain.CARRY_COLUMN, pa.string())])


def retrain_frame(
    engine: SparkEngine, lake: Lakehouse, plan: Plan, i: int, ctx: retrain.Retrain
) -> SparkDataFrame:
    """Batch ``i``'s silver rows with each series' previous row appended
    (:func:`forecasting.retrain.carry_rows`), lazily: the executors read the base run's
    gold/models rows of the batch and the monitoring run's drifted series in it, join
    them and make the carry rows; only series in the batch's silver rows get one."""
    buckets = plan.ranges[i]
    silver = engine.read_batch(plan.batch(i)).withColumn(retrain.CARRY_COLUMN, F.lit(None).cast("string"))
    where = (("run_id", "=", ctx.base_run),)
    columns = tuple(retrain.previous_columns(lake))
    prev = engine.read_batch(TableBatch(lake, GOLD_MODELS, buckets, None, columns, where))
    if ctx.drift_version is not None:
        flagged = (("silver_version", "=", int(ctx.drift_version)), ("drifted", "=", True))
        drift = engine.read_batch(TableBatch(lake, GOLD_DRIFT, buckets, None, (C.SERIES_ID,), flagged))
        prev = prev.join(drift.distinct().withColumn("drifted", F.lit(True)), C.SERIES_ID, "left")
    else:
        prev = prev.withColumn("drifted", F.lit(False))
    carry = prev.mapInArrow(rows_udf(carry_rows, CARRY_SCHEMA), arrow_to_spark_schema(CARRY_SCHEMA))
    carry = carry.join(silver.select(C.SERIES_ID).distinct(), C.SERIES_ID, "left_semi")
    return silver.unionByName(carry, allowMissingColumns=True)


# -- the gate ---------------------------------------------------------------------------
def plan_udf(config: Config, known: bool) -> Callable[[pd.DataFrame, pd.DataFrame], pd.DataFrame]:
    """Per series, on an executor: its comparison plan from both runs' TRAIN_RESULT rows
    (``SIDE`` says whose) and the champion's Gold forecasts of it; nothing for a series
    without a usable challenger row. ``known``: the champion's rows could be read (else
    the plan is made as without them, ``None``)."""

    def run(sides: pd.DataFrame, forecasts: pd.DataFrame) -> pd.DataFrame:
        chal = sides[sides[SIDE] == CHALLENGER].drop(columns=SIDE)
        if not chal["status"].isin(comparison.USABLE).any():
            return PLAN_SCHEMA.empty_table().to_pandas()
        champ = sides[sides[SIDE] == CHAMPION].drop(columns=SIDE) if known else None
        out = comparison.plan(chal, champ, forecasts, config)
        return out.assign(window_start=pd.to_datetime(out["window_start"]))[PLAN_SCHEMA.names]

    return run


def compare_udf(config: Config) -> Callable[[pd.DataFrame, pd.DataFrame], pd.DataFrame]:
    """Per series, on an executor: its silver rows with its plan attached
    (:func:`forecasting.comparison.attach_all`) compared as the engines compare a group
    (an exception becomes the series' ``failed_comparison`` row; the ``spark_task``
    checkpoint first)."""
    on_error = partial(comparison.failed_comparison, config=config)
    compare = group_udf(
        comparison.compare_series, C.GATE_SERIES, config, C.SERIES_ID, on_error, checkpoints.installed()
    )

    def run(readings: pd.DataFrame, planned: pd.DataFrame) -> pd.DataFrame:
        rows = comparison.attach_all(readings, planned) if len(readings) and len(planned) else None
        return compare(rows) if rows is not None and len(rows) else C.GATE_SERIES.empty_table().to_pandas()

    return run


def champion_rows(
    engine: SparkEngine, lake: Lakehouse, run_id: str | None, legacy
) -> tuple[ChampionRows, bool]:
    """How to read the champion's TRAIN_RESULT rows of a bucket range as Spark rows, and
    whether it has any: its run's gold/models rows (read by the executors); for a
    champion trained before gold/models, ``legacy(run_id)`` (its ``results.parquet``,
    read once on the driver; ``None``: it cannot be read)."""
    where = (("run_id", "=", run_id),)
    if (
        run_id
        and engine.read_batch(TableBatch(lake, GOLD_MODELS, ALL, None, ("run_id",), where)).limit(1).count()
    ):
        return lambda buckets: engine.read_batch(
            TableBatch(lake, GOLD_MODELS, buckets, None, tuple(RESULT_COLUMNS), where)
        ), True
    whole = legacy(run_id) if run_id else None
    if whole is None:
        return lambda buckets: None, False
    ids = C.bucket_of(whole[C.SERIES_ID])

    def part(buckets: tuple[int, int]) -> SparkDataFrame:
        rows = whole[(ids >= buckets[0]) & (ids < buckets[1])]
        return to_spark(engine.spark, rows.reindex(columns=RESULT_COLUMNS), C.TRAIN_RESULT_CORE)

    return part, True


def batch_plan(
    engine: SparkEngine, lake: Lakehouse, config: Config, i: int, plan: Plan, versions: tuple, champion: tuple
) -> SparkDataFrame:
    """Batch ``i``'s comparison plan, lazily: the challenger's (run ``versions[0]``) and
    the champion's (``champion``: how to read its rows, whether it has any) rows and the
    champion's (version ``versions[1]``) Gold forecasts cogrouped by series."""
    run_id, version = versions
    rows, known = champion
    buckets = plan.ranges[i]
    where = (("run_id", "=", run_id),)
    sides = engine.read_batch(TableBatch(lake, GOLD_MODELS, buckets, None, tuple(RESULT_COLUMNS), where))
    sides = sides.withColumn(SIDE, F.lit(CHALLENGER))
    theirs = rows(buckets)
    if theirs is not None:
        sides = sides.unionByName(theirs.select(*RESULT_COLUMNS).withColumn(SIDE, F.lit(CHAMPION)))
    if lake.exists(GOLD_FORECASTS):
        own = (("model_version", "=", str(version)),)
        forecasts = engine.read_batch(TableBatch(lake, GOLD_FORECASTS, buckets, None, None, own))
    else:
        forecasts = engine.spark.createDataFrame([], arrow_to_spark_schema(lake.schema(GOLD_FORECASTS)))
    n = engine.partitions(max(1, plan.n_series() // max(plan.n, 1)))
    return (
        sides.repartition(n, C.SERIES_ID)
        .groupBy(C.SERIES_ID)
        .cogroup(forecasts.repartition(n, C.SERIES_ID).groupBy(C.SERIES_ID))
        .applyInPandas(plan_udf(config, known), schema=arrow_to_spark_schema(PLAN_SCHEMA))
    )


def compare(
    engine: SparkEngine,
    lake: Lakehouse,
    config: Config,
    plan: Plan,
    versions: tuple[str, str, str | None],
    todo: Sequence[int],
    sink: SinkFn,
    legacy,
) -> None:
    """The gate's comparison of the batches ``todo``, each computed and committed to
    gold/gate by the executors (``sink``: batch -> its commit); ``versions``: the
    challenger's run, the champion's version and run."""
    run_id, champion, champion_run = versions
    source = champion_rows(engine, lake, champion_run, legacy)
    n = engine.partitions(max(1, plan.n_series() // max(plan.n, 1)))
    for i in todo:
        planned = batch_plan(engine, lake, config, i, plan, (run_id, champion), source)
        readings = engine.read_batch(plan.batch(i))
        out = (
            readings.repartition(n, C.SERIES_ID)
            .groupBy(C.SERIES_ID)
            .cogroup(planned.groupBy(C.SERIES_ID))
            .applyInPandas(compare_udf(config), schema=arrow_to_spark_schema(C.GATE_SERIES))
        )
        engine.write(out, sink(i))


# -- the run's artifacts ------------------------------------------------------------------
def write_dataset(rows: SparkDataFrame, target: str, local: bool) -> None:
    """``rows`` as a Parquet dataset at ``target``, written by the executors; in a local
    artifact folder without Spark's marker and checksum files (not artifacts)."""
    rows.write.mode("overwrite").parquet(target)
    if local:
        for path in Path(target).iterdir():
            if path.name.startswith(("_", ".")):
                path.unlink()


def run_rows(engine: SparkEngine, lake: Lakehouse, plan: Plan, run_id: str) -> SparkDataFrame:
    """The run's TRAIN_RESULT rows (gold/models), a lazy read by the executors."""
    where = (("run_id", "=", run_id),)
    return read_sources(
        engine, [TableBatch(lake, GOLD_MODELS, r, None, tuple(RESULT_COLUMNS), where) for r in plan.ranges]
    )


def log_run(
    engine: SparkEngine, lake: Lakehouse, config: Config, plan: Plan, run_id: str, metrics: dict[str, float]
) -> dict[str, float]:
    """:func:`registry.results.log_results` for a run whose rows stay in gold/models:
    the metrics (summed up by Spark already), ``results.parquet`` and
    ``per_series.parquet`` written by the executors, the plots from a histogram and a
    sample (see the module's docstring)."""
    mlflow.log_metrics(metrics)
    rows = run_rows(engine, lake, plan, run_id)
    folder = local_artifact_dir()
    target = (
        str(folder) if folder is not None else spark_uri(f"{lake.root}/_runs/{run_id}", lake.storage_options)
    )
    write_dataset(rows, f"{target}/{RESULTS_FILE}", folder is not None)
    write_dataset(per_series(rows, metrics), f"{target}/{PER_SERIES_FILE}", folder is not None)
    if folder is None:
        ref = {"lakehouse": lake.root, "table": GOLD_MODELS, "version": lake.version(GOLD_MODELS)}
        where = {"results": f"{target}/{RESULTS_FILE}", "per_series": f"{target}/{PER_SERIES_FILE}"}
        log_results_ref({**ref, "run_id": run_id, **where})
    n_usable = int(sum(metrics.get(f"n_{s}", 0) for s in USABLE))  # the statuses sampled (registry.metrics)
    log_summary_plots(
        config,
        error_histogram(rows),
        metrics.get("metric_value_median"),
        sample(engine, lake, config, plan, rows, n_usable, run_id),
    )
    return metrics


def per_series(rows: SparkDataFrame, metrics: dict[str, float]) -> SparkDataFrame:
    """``per_series.parquet``'s rows (:func:`registry.metrics.per_series_table`) made by
    the executors. Its metric columns are those the run's metrics have a
    ``backtest.<m>`` of, in the order a usable row's backtest gives them (the local
    engine's order of first appearance; the others after it, sorted)."""
    names = sorted(k[len("backtest.") :] for k in metrics if k.startswith("backtest."))
    one = rows.where(F.col("status").isin(list(USABLE)) & (F.col("model") != "")).limit(1)
    first = [r.asDict() for r in one.select(C.SERIES_ID, "model", "backtest_json").collect()]
    order = [c for c in chosen_backtest(pd.DataFrame(first, columns=[C.SERIES_ID, "model", "backtest_json"]))]
    names = [c for c in order if c in names] + [c for c in names if c not in order]
    base = [C.SERIES_ID, "status", "reason", "model", "metric", "metric_value", "n_obs", "end"]
    schema = pa.schema([C.TRAIN_RESULT.field(c) for c in base] + [(c, pa.float64()) for c in names])
    return rows.mapInArrow(rows_udf(per_series_table, schema), arrow_to_spark_schema(schema))


def finite_values(rows: SparkDataFrame) -> SparkDataFrame:
    """The finite ``metric_value`` of the usable rows (``value``), as
    :func:`registry.metrics.finite_metric_values` keeps them."""
    v = F.col("metric_value").cast("double")
    finite = v.isNotNull() & ~F.isnan(v) & (F.abs(v) != F.lit(float("inf")))
    return rows.where(F.col("status").isin(list(USABLE)) & finite).select(v.alias("value"))


def error_histogram(rows: SparkDataFrame) -> tuple[np.ndarray, np.ndarray] | None:
    """The error histogram's ``(counts, edges)``: the values' range and count by a Spark
    aggregation, the bins as matplotlib makes them (:func:`registry.plots.bin_edges`),
    each partition's values binned by numpy on its executor and the counts summed by
    Spark (one row per bin comes to the driver); ``None`` without values."""
    values = finite_values(rows)
    n, low, high = values.agg(F.count("value"), F.min("value"), F.max("value")).first()
    if not n:
        return None
    edges = bin_edges(float(low), float(high), int(n))

    def count(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            counts, _ = np.histogram(batch.column(0).to_numpy(zero_copy_only=False), bins=edges)
            yield pa.RecordBatch.from_pydict({"bin": np.arange(len(counts)), "n": counts}, schema=BIN)

    summed = values.mapInArrow(count, arrow_to_spark_schema(BIN)).groupBy("bin").agg(F.sum("n").alias("n"))
    counts = np.zeros(len(edges) - 1, dtype=np.int64)
    for row in summed.collect():
        counts[int(row["bin"])] = int(row["n"])
    return counts, edges


def sample(
    engine: SparkEngine,
    lake: Lakehouse,
    config: Config,
    plan: Plan,
    rows: SparkDataFrame,
    n_usable: int,
    run_id: str,
) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The plotted series' TRAIN_RESULT rows (with their backtest forecasts, where
    gold/models has them) and silver rows: the usable series the local engine samples
    (:func:`registry.plots.sample_ranks`: ranks in id order, looked up by the
    executors), read by a Spark filter on their ids; ``None`` when none is drawn."""
    ranks = set(sample_ranks(n_usable, config))
    if not ranks:
        return None
    usable = rows.where(F.col("status").isin(list(USABLE))).select(C.SERIES_ID)
    ranked = usable.rdd.map(lambda r: str(r[0])).sortBy(lambda sid: sid).zipWithIndex()
    ids = tuple(sorted(sid for sid, k in ranked.filter(lambda p: p[1] in ranks).collect()))
    where = ((C.SERIES_ID, "in", ids),)
    run = (("run_id", "=", run_id), *where)
    picked = engine.read_batch(
        TableBatch(lake, GOLD_MODELS, ALL, None, tuple(plotted_columns(lake)), run)
    ).toPandas()
    history = engine.read_batch(TableBatch(lake, SILVER_READINGS, ALL, plan.version, None, where)).toPandas()
    return picked, history


def log_gate_series(engine: SparkEngine, lake: Lakehouse, run_id: str, sources: Sequence[TableBatch]) -> None:
    """``gate_series.parquet`` from the run's gold/gate rows, written by the executors
    where :func:`log_run` writes the results."""
    rows = read_sources(engine, sources).select(*C.GATE_SERIES.names)
    folder = local_artifact_dir()
    if folder is not None:
        write_dataset(rows, str(folder / GATE_SERIES_FILE), True)
        return
    target = spark_uri(f"{lake.root}/_runs/{run_id}/{GATE_SERIES_FILE}", lake.storage_options)
    write_dataset(rows, target, False)
    ref = {"lakehouse": lake.root, "table": GOLD_GATE, "run_id": run_id, "gate_series": target}
    mlflow.log_dict(ref, "gate_series.ref.json")
