"""The cold-start hook on Spark (:mod:`training.jobs.cold_start`): the profiles counted
and each batch's profiles attached by the executors; only the summed cells (sources x
phases x bins) come to the driver."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
from pyspark.sql import DataFrame as SparkDataFrame
from pyspark.sql import functions as F

from forecasting import cold_start
from forecasting import contract as C
from forecasting.config import Config
from training.engines.base import TableBatch
from training.engines.spark import SparkEngine, read_sources
from training.jobs.train_plan import Plan
from training.tables import SILVER_READINGS, SILVER_SERIES, Lakehouse
from training.tables.spark_session import arrow_to_spark_schema

READ = (C.SERIES_ID, C.TS, C.Y, "is_filled")

if TYPE_CHECKING:
    from training.jobs.cold_start import ColdStart


def count(
    engine: SparkEngine, lake: Lakehouse, config: Config, plan: Plan, counts: cold_start.ProfileCounts
) -> None:
    """The profiles' counts of every established meter added to ``counts``: silver read
    and joined to the series' attributes by the executors, counted per series
    (:func:`~forecasting.cold_start.reference_counts`) and summed by Spark."""
    readings = read_sources(
        engine,
        [
            TableBatch(lake, SILVER_READINGS, r, plan.version, ("series_id", "ts", "y", "is_filled"))
            for r in plan.ranges
        ],
    )
    attrs = read_sources(
        engine,
        [TableBatch(lake, SILVER_SERIES, r, None, (C.SERIES_ID, "site", "region")) for r in plan.ranges],
    )
    joined = readings.join(attrs.dropDuplicates([C.SERIES_ID]), on=C.SERIES_ID, how="left")

    def fn(pdf: pd.DataFrame) -> pd.DataFrame:  # a function (Spark reads its type hints)
        return cold_start.reference_counts(pdf, config)

    cells = (
        joined.repartition(engine.partitions(max(1, plan.n_series())), C.SERIES_ID)
        .groupBy(C.SERIES_ID)
        .applyInPandas(fn, schema=arrow_to_spark_schema(cold_start.COUNTS))
    )
    summed = cells.groupBy("source", "key", "phase", "bin").agg(F.sum("n").cast("long").alias("n"))
    counts.add(summed.toPandas())


def attached(
    engine: SparkEngine, cold: ColdStart, buckets: tuple[int, int], source: TableBatch
) -> SparkDataFrame:
    """A batch's silver rows (read by the executors) with the cold-start series' profiles
    joined to the row of their first reading (a lazy Spark DataFrame)."""
    readings = engine.read_batch(source)
    config, profiles = cold.config, cold.profiles
    observed = F.col("n_obs") - F.coalesce(F.col("n_filled"), F.lit(0))
    short = engine.read_batch(cold.attrs(buckets)).where(observed < F.lit(config.cleaning.min_length))
    attr_names = list(cold_start.ATTR_COLUMNS)

    def fn(pdf: pd.DataFrame) -> pd.DataFrame:  # one short series: its readings and attributes
        attrs = pdf[attr_names].drop_duplicates(C.SERIES_ID)
        return cold_start.payload_rows(attrs, profiles, config, pdf)

    rows = readings.select(*READ).join(short, on=C.SERIES_ID, how="inner")
    payloads = rows.groupBy(C.SERIES_ID).applyInPandas(fn, schema=arrow_to_spark_schema(cold_start.PAYLOADS))
    return readings.join(payloads, on=[C.SERIES_ID, C.TS], how="left")
