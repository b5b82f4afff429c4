"""The table layer: every Delta table of the lakehouse, for the jobs, scoring, serving and SQL.

* :mod:`training.tables.lakehouse` — :class:`Lakehouse`, the tables through ``deltalake``
  (no JVM): pinned-version reads, idempotent writes (application transactions,
  replace-where), time travel, restore, vacuum.
* :mod:`training.tables.lock` — :func:`lakehouse_lock`, one writing job per local
  lakehouse at a time.
* :mod:`training.tables.spark_session` — the one Spark session of a process and the
  Arrow/Spark conversions (``spark`` extra).
* :mod:`training.tables.spark` — the same tables through delta-spark (``spark`` extra).

Nothing here imports the engines, the jobs, MLflow or serving.
"""

from training.tables.lakehouse import (
    BRONZE_COVARIATES,
    BRONZE_READINGS,
    GOLD_ACCURACY,
    GOLD_BACKTEST,
    GOLD_BACKTEST_FORECASTS,
    GOLD_DRIFT,
    GOLD_FORECASTS,
    GOLD_GATE,
    GOLD_HIERARCHY,
    GOLD_MODELS,
    GOLD_PORTFOLIO,
    GOLD_SCORES,
    GOLD_SELECTION,
    SILVER_COVARIATES,
    SILVER_QUARANTINE,
    SILVER_READINGS,
    SILVER_SERIES,
    TABLE_NAMES,
    Lakehouse,
    TransactionConflict,
    bucket_ranges,
    canonical,
    table_schema,
    to_arrow,
)
from training.tables.lock import LockedError, lakehouse_lock

__all__ = [
    "BRONZE_READINGS",
    "GOLD_ACCURACY",
    "GOLD_BACKTEST",
    "GOLD_BACKTEST_FORECASTS",
    "GOLD_DRIFT",
    "GOLD_HIERARCHY",
    "BRONZE_COVARIATES",
    "SILVER_COVARIATES",
    "GOLD_FORECASTS",
    "GOLD_GATE",
    "GOLD_MODELS",
    "GOLD_PORTFOLIO",
    "GOLD_SCORES",
    "GOLD_SELECTION",
    "SILVER_QUARANTINE",
    "SILVER_READINGS",
    "SILVER_SERIES",
    "TABLE_NAMES",
    "Lakehouse",
    "LockedError",
    "TransactionConflict",
    "bucket_ranges",
    "canonical",
    "lakehouse_lock",
    "table_schema",
    "to_arrow",
]
