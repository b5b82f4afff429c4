"""``mmf refine --engine spark``: bronze read, cleaned and written to silver by the executors.

The refine job (:mod:`training.jobs.refine`) keeps its plan, its commit protocol and its
per-series functions; this module only moves the data through Spark, so no bronze or
silver row passes through the driver:

* :func:`series_steps`: the frequency pass, one ``applyInPandas`` over bronze at the
  pinned version (:func:`forecasting.frequency.modal_step` per series); the driver gets
  one small row per series (its modal step and first ingestion), as the local pass keeps.
* :func:`clean_batch`: a batch (a bucket range of bronze) read from Delta by the
  executors, each series cleaned there by the job's group function, which returns the
  series' rows of all three silver tables at once (a ``kind`` column names the table);
  the result is persisted once and counted by kind, the only thing the driver collects.
* :meth:`SilverBatch.write`: the rows of one kind committed to that silver table by
  delta-spark (mode, application transaction and commit metadata as the job says); a
  kind without rows in the batch is an empty commit made through deltalake (delta-spark
  commits nothing for an empty append), as the local engine's.

The local engine numbers a batch's bronze rows in the order deltalake reads them (its
data files in the order of the snapshot's add actions, each file's rows in order):
cleaning breaks ties of ``_ingested_at`` with it, and a series' attributes are its last
non-null ones in it. The Spark read carries that order as :data:`ORDER`: the file's
place in that list, the byte offset of the split read, and the row's place in its task,
which sort the rows of a series the same way.
"""

from __future__ import annotations

from typing import Any, Sequence
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame as SparkDataFrame
from pyspark.sql import functions as F

from forecasting import contract as C
from forecasting.frequency import modal_step
from training.engines.base import GroupJob, TableBatch, concat
from training.engines.spark import SparkEngine
from training.tables import BRONZE_READINGS, Lakehouse
from training.tables.spark import SparkTables
from training.tables.spark_session import arrow_to_spark_schema, to_spark

ORDER = ("_file", "_block", "_pos")  # a bronze row's place in the local engine's read order
KIND = "kind"  # the silver table a row of the batch belongs to
_STEPS = "series_id string, step long, first long"


def file_order(engine: SparkEngine, lake: Lakehouse, version: int) -> SparkDataFrame:
    """Bronze's data files at ``version`` as deltalake reads them (the order of the
    snapshot's add actions), as ``(_file_name, _file)`` rows: one per file, from the
    Delta log."""
    actions = pa.table(lake.table(BRONZE_READINGS, version).get_add_actions(flatten=True))
    names = [unquote(str(p).rsplit("/", 1)[-1]) for p in actions.column("path").to_pylist()]
    return engine.spark.createDataFrame(
        [(name, i) for i, name in enumerate(names)], "_file_name string, _file long"
    )


def read_bronze(
    engine: SparkEngine,
    lake: Lakehouse,
    version: int,
    buckets: tuple[int, int],
    columns: Sequence[str],
    exclude: Sequence[str] = (),
) -> SparkDataFrame:
    """A batch of bronze as the executors read it from Delta: ``columns`` and the
    :data:`ORDER` columns, without the series of ``exclude``."""
    df = engine.read_batch(TableBatch(lake, BRONZE_READINGS, buckets, version))
    df = df.select(
        *columns,
        F.col("_metadata.file_name").alias("_file_name"),
        F.col("_metadata.file_block_start").alias("_block"),
    ).withColumn("_pos", F.monotonically_increasing_id())  # in the scan's task: its read order
    if exclude:
        df = df.where(~F.col(C.SERIES_ID).isin(list(exclude)))
    files = F.broadcast(file_order(engine, lake, version))
    return df.join(files, on="_file_name", how="left").drop("_file_name")


def _steps_of(pdf: pd.DataFrame) -> pd.DataFrame:
    """One series' modal step and first ingestion (nanoseconds; no step: null)."""
    step = modal_step(pdf[C.TS])
    first = pd.Timestamp(pdf["_ingested_at"].min())
    return pd.DataFrame(
        {
            C.SERIES_ID: [str(pdf[C.SERIES_ID].iloc[0])],
            "step": pd.array([None if step is None else step.value], dtype="Int64"),
            "first": [first.value],
        }
    )


def series_steps(
    engine: SparkEngine, lake: Lakehouse, version: int, plan: list[tuple[int, int]]
) -> tuple[dict[str, pd.Timedelta | None], dict[str, pd.Timestamp], list[int]]:
    """The refine's frequency pass on the executors: per series its modal step and first
    ingestion, and the number of series of each batch of ``plan`` (what
    :func:`training.jobs.refine.series_steps` gives). Reads bronze's series id, time and
    ingestion time there; one row per series comes to the driver."""
    columns = (C.SERIES_ID, C.TS, "_ingested_at")
    df = engine.read_batch(TableBatch(lake, BRONZE_READINGS, (0, C.N_BUCKETS), version, columns))
    rows = df.groupBy(C.SERIES_ID).applyInPandas(_steps_of, schema=_STEPS).toArrow().to_pydict()
    ids, steps, firsts = rows[C.SERIES_ID], rows["step"], rows["first"]
    step = {s: None if v is None else pd.Timedelta(int(v), unit="ns") for s, v in zip(ids, steps)}
    first = {s: pd.Timestamp(int(v), unit="ns", tz="UTC") for s, v in zip(ids, firsts)}
    starts = np.array([lo for lo, _ in plan])
    where = np.searchsorted(starts, C.bucket_of(np.array(ids, dtype=object)), side="right") - 1
    sizes = np.bincount(where, minlength=len(plan)) if len(ids) else np.zeros(len(plan), int)
    return step, first, [int(n) for n in sizes]


class SilverBatch:
    """One batch's silver rows (the job's union schema, :data:`KIND` naming each row's
    table), computed once by the executors and kept there (memory and disk) until
    :meth:`close`; the driver holds their counts by kind and the batch's groups."""

    def __init__(self, engine: SparkEngine, lake: Lakehouse, rows: SparkDataFrame, groups: int) -> None:
        self.engine, self.lake, self.rows, self.groups = engine, lake, rows, groups
        self.counts = {str(r[0]): int(r[1]) for r in rows.groupBy(KIND).count().collect()}

    def write(self, name: str, **how: Any) -> int:
        """The batch's rows of table ``name`` in one commit (``how``: the
        :meth:`~training.tables.Lakehouse.write` keywords ``mode``, ``app_id``,
        ``app_version``, ``metadata``): by delta-spark from the executors, or, without
        rows, an empty commit through deltalake. Returns the version committed."""
        if not self.counts.get(name):
            return self.lake.write(name, self.lake.schema(name).empty_table(), **how)
        tables = SparkTables(self.lake, self.engine.spark, self.engine.config)
        return tables.write(name, self.rows.where(F.col(KIND) == name), **how)

    def close(self) -> None:
        self.rows.unpersist()

    def __enter__(self) -> SilverBatch:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def clean_batch(
    engine: SparkEngine,
    lake: Lakehouse,
    version: int,
    buckets: tuple[int, int],
    job: GroupJob,
    columns: Sequence[str],
    exclude: Sequence[str] = (),
    driver_rows: Sequence[pd.DataFrame] = (),
) -> SilverBatch:
    """Batch ``buckets`` of bronze cleaned by ``job`` (its ``fn`` per series, on the
    executors, over :func:`read_bronze`'s rows), with the small ``driver_rows`` made by
    the job itself (the series of ``exclude``, e.g.) and those the engine sets aside (too
    large to ship): all of ``job.schema``, persisted once."""
    parts = list(driver_rows)
    frame = read_bronze(engine, lake, version, buckets, columns, exclude)
    out, groups = engine.plan(frame, job, parts)
    if any(len(p) for p in parts):
        extra = to_spark(engine.spark, concat(parts, job.schema), job.schema)
        out = extra if out is None else out.unionByName(extra)
    if out is None:
        out = engine.spark.createDataFrame([], arrow_to_spark_schema(job.schema))
    return SilverBatch(engine, lake, out.persist(StorageLevel.MEMORY_AND_DISK), groups)


__all__ = ["ORDER", "SilverBatch", "clean_batch", "read_bronze", "series_steps"]
