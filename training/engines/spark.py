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
  ``local[N,F]`` in local mode). Side effects never happen in a worker: results come back
  to the driver, which commits them once.

Test hook: with ``MMF_TEST_FAIL_FIRST_ATTEMPT`` set (read on the driver when a job is
planned, shipped in the UDF's closure), the first attempt of every task raises, so a
test can check that Spark's retries leave no trace in the results. When its value is an
existing folder, each injected failure also leaves a marker file there.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame as SparkDataFrame
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from forecasting.config import Config
from forecasting.errors import MMFError
from training.engines.base import Engine, ErrorFn, GroupFn, conform
from training.tables.spark_session import arrow_to_spark_schema, get_spark, to_pandas, to_spark

log = logging.getLogger(__name__)

FAIL_FIRST_ATTEMPT_ENV = "MMF_TEST_FAIL_FIRST_ATTEMPT"
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

    def map_groups(
        self,
        frame: pd.DataFrame | SparkDataFrame,
        by: str,
        fn: GroupFn,
        schema: pa.Schema,
        config: Any,
        on_error: ErrorFn | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> pd.DataFrame:
        """``fn(group, config)`` per group of ``by``; the results as pandas with ``schema``.
        ``frame`` may be a pandas frame (sent to Spark through Arrow) or a Spark DataFrame
        (read by the executors, e.g. from Delta)."""
        parts: list[pd.DataFrame] = []
        out = self.map_groups_spark(frame, by, fn, schema, config, on_error, progress, driver_rows=parts)
        if out is not None:
            parts.append(to_pandas(out, schema))
        if progress:
            total = getattr(self, "_last_total", 0)
            progress(total, total)
        parts = [p for p in parts if len(p)]
        if not parts:
            return schema.empty_table().to_pandas()
        result = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        return result.sort_values(by, kind="stable", ignore_index=True)

    def map_groups_spark(
        self,
        frame: pd.DataFrame | SparkDataFrame,
        by: str,
        fn: GroupFn,
        schema: pa.Schema,
        config: Any,
        on_error: ErrorFn | None = None,
        progress: Callable[[int, int], None] | None = None,
        driver_rows: list[pd.DataFrame] | None = None,
    ) -> SparkDataFrame | None:
        """As :meth:`map_groups`, but the worker results stay a (lazy) Spark DataFrame;
        rows made on the driver for groups too large to ship go to ``driver_rows`` (as
        pandas, with ``schema``'s columns). ``None`` when no group is left for the workers."""
        spark = self.spark
        local = isinstance(frame, pd.DataFrame)
        if local:  # counted here: no Spark job for it
            counts = {str(k): int(n) for k, n in frame[by].value_counts(sort=False).items()}
        else:
            counts = {str(r[0]): int(r[1]) for r in frame.groupBy(by).count().collect()}
        self._last_total = total = len(counts)
        if progress:
            progress(0, total)
        if total == 0:
            return None
        limit = _max_points(config)
        too_large = sorted(k for k, n in counts.items() if limit is not None and n > limit)
        if too_large:
            if on_error is None:
                raise MMFError(
                    f"{len(too_large)} group(s) of {by} exceed cleaning.max_points_per_series={limit} "
                    f"(first: {too_large[0]} with {counts[too_large[0]]} rows): raise the limit or drop them"
                )
            log.warning(
                "%d series above cleaning.max_points_per_series=%s: not sent to a worker",
                len(too_large),
                limit,
            )
            for key in too_large:
                rows = on_error(
                    key, f"{TOO_LARGE}: {counts[key]} rows > cleaning.max_points_per_series={limit}"
                )
                if driver_rows is not None:
                    driver_rows.append(conform(rows, schema))
            if local:
                frame = frame[~frame[by].astype(str).isin(too_large)]
            else:
                frame = frame.where(~F.col(by).isin(too_large))
        n_left = total - len(too_large)
        if n_left == 0:
            return None
        sdf = to_spark(spark, frame) if local else frame
        udf = group_udf(fn, schema, config, by, on_error, os.environ.get(FAIL_FIRST_ATTEMPT_ENV) or None)
        # An explicit partition count (not AQE's coalescing, which sizes partitions by
        # bytes and would put all of a CPU-bound job's tiny groups into one task).
        return (
            sdf.repartition(self.partitions(n_left), by)
            .groupBy(by)
            .applyInPandas(udf, schema=arrow_to_spark_schema(schema))
        )


def _max_points(config: Config | None) -> int | None:
    return config.cleaning.max_points_per_series if config is not None else None


def group_udf(
    fn: GroupFn,
    schema: pa.Schema,
    config: Any,
    by: str,
    on_error: ErrorFn | None,
    fail_first: str | None = None,
) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """The function each Python worker runs per group: ``fn``, with an exception turned
    into ``on_error`` rows, conformed to ``schema``. Captures nothing but its arguments
    (no session, no table handle), so it pickles to any executor."""

    def run(pdf: pd.DataFrame) -> pd.DataFrame:
        if fail_first:
            _inject_failure(fail_first)
        key = str(pdf[by].iloc[0]) if len(pdf) else ""
        try:
            out = fn(pdf, config)
        except Exception as exc:  # noqa: BLE001 - failures are data
            if on_error is None:
                raise
            out = on_error(key, f"{type(exc).__name__}: {exc}")
        return conform(out, schema)

    return run


def _inject_failure(marker: str) -> None:
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is None or ctx.attemptNumber() != 0:
        return
    folder = Path(marker)
    if folder.is_dir():
        (folder / f"stage{ctx.stageId()}-part{ctx.partitionId()}-attempt0").touch()
    raise RuntimeError(
        f"{FAIL_FIRST_ATTEMPT_ENV}: injected failure of task {ctx.partitionId()} (stage {ctx.stageId()}), attempt 0"
    )


__all__ = ["SparkEngine", "partitions_for"]
