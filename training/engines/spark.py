"""The Spark engine: ``groupBy(by).applyInPandas(fn)`` on any Spark master.

The very same per-series functions as the local engine (``clean_series``,
``process_series``) run inside Spark's Python workers, one group per series; only
*where* they run changes. The session and the Arrow/Spark conversions
live in :mod:`training.tables.spark_session`, the Delta tables in :mod:`training.tables.spark`:

* :class:`SparkEngine` implements ``map_groups``. Before anything is grouped it counts the
  rows of every group and never ships a group larger than
  ``cleaning.max_points_per_series`` to a worker: such groups get
  ``on_error(key, "too_large: ...")`` rows on the driver instead (one huge series must not
  take a Python worker or an executor down). An exception inside ``fn`` becomes
  ``on_error`` rows too; a task that dies is retried by Spark (``spark.task.maxFailures``;
  ``local[N,F]`` in local mode). Side effects never happen in a group function:
  without a sink, results come back to the driver, which commits them once; with one
  (``map_batches(..., sink=...)``, ``derive``), each batch's results are written to
  Delta by the executors in one delta-spark commit (a failed task is retried before
  anything commits) and only counts come back.

Each group passes the checkpoint ``spark_task`` (:mod:`training.checkpoints`) in its task,
with the hook installed on the driver when the job was planned (shipped in the UDF's
closure).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import threading
from dataclasses import replace
from functools import reduce
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import pandas as pd
import pyarrow as pa
from pyspark import SparkFiles, StorageLevel, TaskContext
from pyspark.sql import Column, SparkSession
from pyspark.sql import DataFrame as SparkDataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from forecasting import contract as C
from forecasting.config import Config
from forecasting.errors import MMFError
from registry.aggregates import FACTS, KEY, VALUE, Stat
from training import checkpoints
from training.engines.base import (
    STATUS,
    Batch,
    Engine,
    ErrorFn,
    GroupFn,
    GroupJob,
    RowsFn,
    Sink,
    SinkFn,
    Summary,
    TableBatch,
    concat,
    conform,
)
from training.tables import to_arrow
from training.tables.lakehouse import condition
from training.tables.spark import SparkTables, spark_bucket
from training.tables.spark_session import (
    arrow_to_spark_schema,
    get_spark,
    normalize_arrow,
    to_pandas,
    to_spark,
)

log = logging.getLogger(__name__)

TOO_LARGE = "too_large"


# -- the engine ------------------------------------------------------------------------
def partitions_for(n_series: int, parallelism: int, configured: int | None = None) -> int:
    """Shuffle partitions for ``n_series`` groups: the configured number, else about four
    tasks per core (never more tasks than series, at least one)."""
    if configured:
        return int(configured)
    return max(1, min(int(n_series), 4 * max(1, int(parallelism)), 4096))


class SparkEngine(Engine):
    name = "spark"

    def __init__(self, config: Config | None = None, spark: SparkSession | None = None) -> None:
        self.config = config
        self._spark = spark

    @classmethod
    def from_config(cls, config: Config) -> SparkEngine:
        return cls(config)

    @property
    def spark(self) -> SparkSession:
        if self._spark is None:
            self._spark = get_spark(self.config)
        return self._spark

    def partitions(self, n_series: int) -> int:
        configured = self.config.spark.shuffle_partitions if self.config is not None else None
        return partitions_for(n_series, self.spark.sparkContext.defaultParallelism, configured)

    def run(self, frame: pd.DataFrame | SparkDataFrame, job: GroupJob) -> pd.DataFrame:
        """``frame`` may be a pandas frame (sent to Spark through Arrow) or a Spark
        DataFrame (read by the executors, e.g. from Delta); the results come back sorted
        by ``job.by``."""
        parts: list[pd.DataFrame] = []
        out, total = self.plan(frame, job, driver_rows=parts)
        if out is not None:
            parts.append(to_pandas(out, job.schema))
        job.report(total, total)
        result = concat(parts, job.schema)
        return result.sort_values(job.by, kind="stable", ignore_index=True) if len(result) else result

    def stream(
        self, batches: Iterable[Batch], job: GroupJob, total: int
    ) -> Iterator[tuple[Any, pd.DataFrame]]:
        """Batch after batch, each one's results collected to the driver."""

        def collect(_key: Any, out: SparkDataFrame | None, parts: list[pd.DataFrame]) -> pd.DataFrame:
            if out is not None:
                parts.append(to_pandas(out, job.schema))
            return concat(parts, job.schema)

        return self._batches(batches, job, total, collect)

    def stream_into(
        self, batches: Iterable[Batch], job: GroupJob, total: int, sink: SinkFn
    ) -> Iterator[tuple[Any, Summary]]:
        """Batch after batch, each one's results written to Delta by the executors
        (:meth:`write`); only their counts come to the driver."""

        def write(key: Any, out: SparkDataFrame | None, parts: list[pd.DataFrame]) -> Summary:
            if parts:  # the rows of the groups too large to ship, made on the driver
                rows = to_spark(self.spark, concat(parts, job.schema), job.schema)
                out = rows if out is None else out.unionByName(rows)
            if out is None:
                out = self.spark.createDataFrame([], arrow_to_spark_schema(job.schema))
            return self.write(out, sink(key))

        return self._batches(batches, job, total, write)

    def _batches(
        self,
        batches: Iterable[Batch],
        job: GroupJob,
        total: int,
        finish: Callable[[Any, SparkDataFrame | None, list[pd.DataFrame]], Any],
    ) -> Iterator[tuple[Any, Any]]:
        """Batch after batch: ``finish(key, worker results, driver rows)`` on each
        planned batch (:meth:`plan`); a :class:`TableBatch` is read from Delta by the
        executors (delta-spark at its pinned version, only its bucket range), never by
        the driver."""
        done = 0
        for key, load in batches:
            frame = self.read_batch(load) if isinstance(load, TableBatch) else load()
            parts: list[pd.DataFrame] = []
            out, n = self.plan(frame, job.after(done, total), parts)
            result = finish(key, out, parts)
            done += n
            job.report(done, max(total, done))
            yield key, result

    def derive(self, source: TableBatch, fn: RowsFn, schema: pa.Schema, sink: Sink) -> Summary:
        """``fn`` over ``source``'s rows on the executors (``mapInArrow`` over the Delta
        read of :meth:`read_batch`), its rows written to Delta by them too."""
        rows = self.read_batch(source).mapInArrow(rows_udf(fn, schema), arrow_to_spark_schema(schema))
        return self.write(rows, sink)

    def write(self, rows: SparkDataFrame, sink: Sink) -> Summary:
        """``rows`` with ``sink``'s constant columns committed to its table by delta-spark
        (its metadata as the commit's ``userMetadata``). The rows are computed once:
        persisted (executors' memory and disk) while a Spark aggregation counts them for
        the driver, then written from there."""
        tables = SparkTables(sink.lake, self.spark, self.config)
        types = {f.name: f.dataType for f in arrow_to_spark_schema(sink.lake.schema(sink.table))}
        constants = {k: _literal(v, types.get(k)) for k, v in sink.columns.items()}
        rows = (rows.withColumns(constants) if constants else rows).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            summary = count_rows(rows)
            if sink.commits(summary.rows):
                summary = replace(summary, version=commit_rows(tables, rows, sink))
        finally:
            rows.unpersist()
        return summary

    def derive_all(
        self, parts: Sequence[tuple[TableBatch, RowsFn]], schema: pa.Schema, sink: Sink
    ) -> Summary:
        """:meth:`derive` from several sources: each ``fn`` over its source's rows on the
        executors, their union written by them in one commit."""
        spark_schema = arrow_to_spark_schema(schema)
        frames = [self.read_batch(src).mapInArrow(rows_udf(fn, schema), spark_schema) for src, fn in parts]
        return self.write(reduce(SparkDataFrame.unionByName, frames), sink)

    def aggregate(
        self, sources: Sequence[TableBatch], facts: RowsFn, medians: Sequence[str] = ()
    ) -> dict[str, Stat]:
        """The facts of ``sources``' rows made on the executors (``mapInArrow``) and summed
        up per key by a Spark aggregation (``percentile`` for the medians: exact, as
        numpy's); only one row per key comes to the driver."""
        if not sources:
            return {}
        facts_df = read_sources(self, sources).mapInArrow(
            rows_udf(facts, FACTS), arrow_to_spark_schema(FACTS)
        )
        value = F.col(VALUE)
        median = (
            F.percentile(F.when(F.col(KEY).isin(list(medians)), value), F.lit(0.5))
            if medians
            else F.lit(None).cast("double")
        )
        rows = (
            facts_df.groupBy(KEY)
            .agg(
                F.count(F.lit(1)).alias("count"),
                F.count(value).alias("n"),
                F.sum(value).alias("total"),
                median.alias("median"),
            )
            .collect()
        )
        return {
            str(r[KEY]): Stat(
                int(r["count"]),
                int(r["n"]),
                float(r["total"] or 0.0),
                None if r["median"] is None else float(r["median"]),
            )
            for r in rows
        }

    def read_batch(self, batch: TableBatch) -> SparkDataFrame:
        """``batch``'s rows as a lazy Spark DataFrame over the Delta table."""
        tables = SparkTables(batch.lake, self.spark, self.config)
        df = tables.read(batch.table, batch.version)
        lo, hi = batch.buckets
        bucket = spark_bucket(F.col(C.SERIES_ID))  # a table written before buckets
        if C.BUCKET in df.columns:  # the stored column first: Delta skips files by it
            df = df.where((F.col(C.BUCKET) >= lo) & (F.col(C.BUCKET) < hi) | F.col(C.BUCKET).isNull())
            bucket = F.coalesce(F.col(C.BUCKET), bucket)
        df = df.where((bucket >= lo) & (bucket < hi))
        for col, op, val in batch.filters:
            df = df.where(_condition(col, op, val))
        return df.select(*batch.columns) if batch.columns else df

    def plan(
        self, frame: pd.DataFrame | SparkDataFrame, job: GroupJob, driver_rows: list[pd.DataFrame]
    ) -> tuple[SparkDataFrame | None, int]:
        """The worker results of ``job`` as a (lazy) Spark DataFrame (``None`` when no
        group is left for the workers) and the number of groups; rows made on the driver
        for groups too large to ship go to ``driver_rows`` (with ``job.schema``'s columns)."""
        spark = self.spark
        by = job.by
        local = isinstance(frame, pd.DataFrame)
        if local:  # counted here: no Spark job for it
            counts = {str(k): int(n) for k, n in frame[by].value_counts(sort=False).items()}
        else:
            counts = {str(r[0]): int(r[1]) for r in frame.groupBy(by).count().collect()}
        total = len(counts)
        job.report(0, total)
        too_large = _set_aside_too_large(counts, job, driver_rows)
        if total == len(too_large):
            return None, total
        if too_large:
            frame = (
                frame[~frame[by].astype(str).isin(too_large)]
                if local
                else frame.where(~F.col(by).isin(too_large))
            )
        sdf = to_spark(spark, frame) if local else frame
        udf = group_udf(job.fn, job.schema, job.config, by, job.on_error, checkpoints.installed())
        # An explicit partition count (not AQE's coalescing, which sizes partitions by
        # bytes and would put all of a CPU-bound job's tiny groups into one task).
        out = (
            sdf.repartition(self.partitions(total - len(too_large)), by)
            .groupBy(by)
            .applyInPandas(udf, schema=arrow_to_spark_schema(job.schema))
        )
        return out, total


def read_sources(engine: SparkEngine, sources: Sequence[TableBatch]) -> SparkDataFrame:
    """The rows of several batches of a table as one lazy Spark DataFrame: one read of
    their whole bucket range when they differ only by contiguous ranges (a plan's
    batches), else the union of their reads."""
    first = sources[0]
    if all(replace(s, buckets=first.buckets) == first for s in sources):
        ranges = sorted(s.buckets for s in sources)
        if all(a[1] == b[0] for a, b in zip(ranges, ranges[1:])):
            return engine.read_batch(replace(first, buckets=(ranges[0][0], ranges[-1][1])))
    return reduce(SparkDataFrame.unionByName, [engine.read_batch(s) for s in sources])


def commit_rows(tables: SparkTables, rows: SparkDataFrame, sink: Sink) -> int:
    """``rows`` committed by delta-spark as ``sink`` says (append, or replace-where on
    its predicate; its metadata; its application transaction). delta-spark skips a write
    whose transaction version its table already holds (or a later one), where
    :meth:`~training.tables.Lakehouse.write` records it and writes: such rows are written
    without the transaction, and a later version held is set back by an empty commit
    with it (through the lakehouse), as the local engine leaves it. Returns the version
    of the commit."""
    held = tables.txn_version(sink.table, sink.app_id) if sink.app_id else None
    wanted = int(sink.app_version or 0)
    skipped = held is not None and held >= wanted
    version = tables.write(
        sink.table,
        rows,
        mode="overwrite" if sink.predicate else "append",
        replace_where=sink.predicate,
        app_id=None if skipped else sink.app_id,
        app_version=sink.app_version,
        metadata=sink.metadata,
    )
    if skipped and held != wanted:
        empty = sink.lake.schema(sink.table).empty_table()
        version = sink.lake.write(
            sink.table, empty, app_id=sink.app_id, app_version=wanted, metadata=dict(sink.metadata)
        )
    return int(version)


def count_rows(rows: SparkDataFrame) -> Summary:
    """The rows of a Spark DataFrame counted by a Spark aggregation (by ``status`` when
    it has that column): only the counts come to the driver."""
    if STATUS not in rows.columns:
        return Summary(int(rows.count()))
    counts = {r[0]: int(r[1]) for r in rows.groupBy(STATUS).count().collect()}
    return Summary(sum(counts.values()), {str(k): n for k, n in counts.items() if k is not None})


def _literal(value: Any, dtype: T.DataType | None) -> Column:
    """A constant column (``value`` cast to the table's type of that column, when it has one)."""
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    col = F.lit(value)
    return col.cast(dtype) if dtype is not None else col


def rows_udf(fn: RowsFn, schema: pa.Schema) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The function each Python worker runs over its piece of a :meth:`SparkEngine.derive`
    source: ``fn`` on each Arrow batch as pandas, its rows given exactly ``schema`` (as
    :meth:`~training.tables.Lakehouse.write` gives them: missing columns null)."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            out = fn(batch.to_pandas())
            if len(out):
                yield from normalize_arrow(to_arrow(out, schema)).to_batches()

    return run


def _condition(col: str, op: str, val: Any) -> Column:
    """A Spark condition of one ``(column, op, value)`` filter (as Lakehouse.read takes)."""
    return condition(F.col(col), op, val)


def _set_aside_too_large(counts: dict[str, int], job: GroupJob, driver_rows: list[pd.DataFrame]) -> list[str]:
    """The groups above ``cleaning.max_points_per_series``, never shipped to a worker:
    their ``on_error`` rows go to ``driver_rows`` (no ``on_error``: an error)."""
    limit = _max_points(job.config)
    too_large = sorted(k for k, n in counts.items() if limit is not None and n > limit)
    if not too_large:
        return too_large
    if job.on_error is None:
        raise MMFError(
            f"{len(too_large)} group(s) of {job.by} exceed cleaning.max_points_per_series={limit} "
            f"(first: {too_large[0]} with {counts[too_large[0]]} rows): raise the limit or drop them"
        )
    log.warning(
        "%d series above cleaning.max_points_per_series=%s: not sent to a worker",
        len(too_large),
        limit,
    )
    for key in too_large:
        rows = job.on_error(key, f"{TOO_LARGE}: {counts[key]} rows > cleaning.max_points_per_series={limit}")
        driver_rows.append(job.conform(rows))
    return too_large


def _max_points(config: Config | None) -> int | None:
    return config.cleaning.max_points_per_series if config is not None else None


def group_udf(
    fn: GroupFn,
    schema: pa.Schema,
    config: Any,
    by: str,
    on_error: ErrorFn | None,
    hook: checkpoints.Hook | None = None,
) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """The function each Python worker runs per group: ``fn``, with an exception turned
    into ``on_error`` rows, conformed to ``schema``; before it, the checkpoint
    ``spark_task`` with the driver's ``hook``. Captures nothing but its arguments (no
    session, no table handle), so it pickles to any executor."""

    def run(pdf: pd.DataFrame) -> pd.DataFrame:
        key = str(pdf[by].iloc[0]) if len(pdf) else ""
        if hook is not None:
            _task_checkpoint(hook, key)
        try:
            out = fn(pdf, config)
        except Exception as exc:  # noqa: BLE001 - failures are data
            if on_error is None:
                raise
            out = on_error(key, f"{type(exc).__name__}: {exc}")
        return conform(out, schema)

    return run


def _task_checkpoint(hook: checkpoints.Hook, key: str) -> None:
    ctx = TaskContext.get()
    checkpoints.set_hook(hook)
    checkpoints.checkpoint(
        "spark_task",
        key=key,
        stage=ctx.stageId() if ctx else None,
        partition=ctx.partitionId() if ctx else None,
        attempt=ctx.attemptNumber() if ctx else None,
    )


__all__ = ["SparkEngine", "partitions_for"]


# -- folders shipped to the executors ----------------------------------------------------
_SHIPPED: dict[tuple[int, str], str] = {}
_SHIP_LOCK = threading.Lock()


def ship_folder(spark: SparkSession, path: str) -> str:
    """A local folder (a model's artifacts) sent to every executor once per session: as a
    zip archive (``SparkContext.addArchive``), since ``addFile`` takes a directory only in
    local mode. Returns the name :func:`shipped_folder` finds it by on an executor."""
    key = (id(spark.sparkContext), str(Path(path).resolve()))
    with _SHIP_LOCK:
        if key not in _SHIPPED:
            digest = hashlib.sha1(key[1].encode()).hexdigest()[:10]
            base = Path(tempfile.mkdtemp(prefix="mmf-ship-")) / f"{Path(path).name}-{digest}"
            archive = shutil.make_archive(str(base), "zip", root_dir=path)
            spark.sparkContext.addArchive(archive)
            _SHIPPED[key] = Path(archive).name
        return _SHIPPED[key]


def shipped_folder(name: str) -> str:
    """On an executor: the unpacked folder :func:`ship_folder` sent as ``name``."""
    return SparkFiles.get(name)
