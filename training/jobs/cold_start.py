"""The cold-start hook of ``mmf train`` (see :mod:`forecasting.cold_start`).

Before the per-series step, when silver holds a series too short for per-series models
(fewer observed readings than ``cleaning.min_length``): the profiles of the
established meters, counted batch by batch over the plan's bucket ranges (silver/readings
at the pinned version with each series' ``site`` and ``region`` from silver/series) and
summed per source, phase and bin (:class:`~forecasting.cold_start.ProfileCounts`:
bounded by the number of sites and regions, never by the meters). With the Spark
engine the executors count (one ``applyInPandas`` per series, a Spark sum over the
cells; only the cells come to the driver). Without any short series nothing is read.

Each batch of the training stream then carries its cold-start series' profiles
(:meth:`ColdStart.batch`): the batch's silver/series rows give the short series and
their attributes, :func:`~forecasting.cold_start.payload_rows` the profile each one
takes, joined to the row of its first reading; on Spark both are read and joined by the
executors.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable

import pandas as pd
import pyarrow.compute as pc

from forecasting import cold_start
from forecasting import contract as C
from forecasting.config import Config
from training.engines.base import Engine, TableBatch
from training.jobs.train_plan import Plan
from training.tables import SILVER_READINGS, SILVER_SERIES, Lakehouse

READ_COLUMNS = (C.SERIES_ID, C.TS, C.Y, "is_filled")


@dataclass
class ColdStart:
    """A run's profiles (``(source, key) -> profile``) and how each batch gets them."""

    lake: Lakehouse
    config: Config
    profiles: dict[tuple[str, str], dict[str, Any]]

    def attrs(self, buckets: tuple[int, int]) -> TableBatch:
        """The silver/series rows of a bucket range that :func:`payload_rows` needs."""
        return TableBatch(self.lake, SILVER_SERIES, buckets, None, tuple(cold_start.ATTR_COLUMNS))

    def payloads(self, attrs: pd.DataFrame, rows: pd.DataFrame | None = None) -> pd.DataFrame:
        return cold_start.payload_rows(attrs, self.profiles, self.config, rows)

    def batch(self, engine: Engine, plan: Plan, i: int, source: Any) -> Callable[[], Any]:
        """Batch ``i``'s rows (``source``: a :class:`TableBatch` or a loader) with the
        cold-start series' profiles attached: on Spark, a table batch stays on the
        executors (a lazy join); otherwise pandas."""
        if engine.name == "spark" and isinstance(source, TableBatch):
            from training.jobs import cold_start_spark  # the optional pyspark

            return partial(cold_start_spark.attached, engine, self, plan.ranges[i], source)
        return partial(self._attached, plan.ranges[i], source)

    def _attached(self, buckets: tuple[int, int], source: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        rows = source()
        return cold_start.attach(rows, self.payloads(self.attrs(buckets)(), rows))


def any_cold(lake: Lakehouse, config: Config, plan: Plan) -> bool:
    """Whether silver/series holds a series cold start forecasts: fewer observed (not
    filled) points than ``cleaning.min_length``; one streaming scan of two columns,
    stopped at the first match."""
    if not config.cold_start.enabled or not lake.exists(SILVER_SERIES):
        return False
    observed = pc.subtract(pc.coalesce(pc.field("n_obs"), 0), pc.coalesce(pc.field("n_filled"), 0))
    short = pc.less(observed, config.cleaning.min_length)
    return any(b.num_rows for b in lake.scan(SILVER_SERIES, ["n_obs"], short))


def with_attrs(lake: Lakehouse, plan: Plan, buckets: tuple[int, int]) -> pd.DataFrame:
    """A bucket range's silver rows with their series' ``site`` and ``region``."""
    rows = lake.read_buckets(SILVER_READINGS, buckets, plan.version, list(READ_COLUMNS))
    attrs = lake.read_buckets(SILVER_SERIES, buckets, columns=[C.SERIES_ID, "site", "region"])
    return rows.merge(attrs.drop_duplicates(C.SERIES_ID), on=C.SERIES_ID, how="left")


def prepare(lake: Lakehouse, config: Config, plan: Plan, engine: Engine, tell=None) -> ColdStart | None:
    """The run's :class:`ColdStart`, or ``None`` when no series needs it."""
    if not any_cold(lake, config, plan):
        return None
    if tell:
        tell("cold-start profiles", 0, plan.n)
    counts = cold_start.ProfileCounts(cold_start.period_for(str(config.freq), config))
    if engine.name == "spark":
        from training.jobs import cold_start_spark  # the optional pyspark

        cold_start_spark.count(engine, lake, config, plan, counts)
    else:
        for i, buckets in enumerate(plan.ranges):
            counts.add(cold_start.reference_counts(with_attrs(lake, plan, buckets), config))
            if tell:
                tell("cold-start profiles", i + 1, plan.n)
    return ColdStart(lake, config, cold_start.profiles_for(counts, config))
