"""The one Spark session of a process, and the conversions between Arrow and Spark.

* :func:`get_spark` is the one place a ``SparkSession`` is built (cached per process):
  Delta Lake's SQL extension and catalog, the Delta jars (``spark.jars.packages``, from
  Maven Central into the Ivy cache, as ``delta.configure_spark_with_delta_pip`` names
  them), ``PYSPARK_PYTHON``/``PYSPARK_DRIVER_PYTHON`` = this interpreter, Arrow, UTC.
* :func:`arrow_to_spark_schema` turns the contract's Arrow schemas into Spark
  ``StructType`` s (naive timestamps are ``TimestampNTZ``, so both engines see the same
  wall-clock UTC values; tz-aware ones are ``Timestamp`` in a UTC session).
* :func:`to_spark` / :func:`to_pandas` move frames between the driver and Spark (results
  come back through Parquet files in a folder the driver and the executors share, see
  :func:`results_dir`, or else through ``toArrow()``).

The Spark engine (:mod:`training.engines.spark`) and the Spark table layer
(:mod:`training.tables.spark`) both stand on this module.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark.sql import DataFrame as SparkDataFrame
from pyspark.sql import Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from forecasting.errors import MMFError
from training.tables.lakehouse import to_arrow

log = logging.getLogger(__name__)

DELTA_PACKAGE_ENV = "MMF_DELTA_PACKAGE"  # Maven coordinate overriding the pip-derived one
DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
# A folder the driver and every executor share, for results coming back (see results_dir)
RESULTS_DIR_CONF = "spark.mmf.resultsDir"
RESULTS_DIR_ENV = "MMF_SPARK_RESULTS_DIR"

_LOCK = threading.RLock()
_SESSION: SparkSession | None = None


# -- schemas -------------------------------------------------------------------------
def arrow_to_spark_type(t: pa.DataType) -> T.DataType:
    """The Spark type of one Arrow type (the types the data contract uses, and a few more)."""
    if pa.types.is_timestamp(t):
        return T.TimestampType() if t.tz else T.TimestampNTZType()
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return T.StringType()
    if pa.types.is_boolean(t):
        return T.BooleanType()
    if pa.types.is_int64(t) or pa.types.is_uint32(t):
        return T.LongType()
    if pa.types.is_int32(t) or pa.types.is_uint16(t):
        return T.IntegerType()
    if pa.types.is_int16(t) or pa.types.is_uint8(t):
        return T.ShortType()
    if pa.types.is_int8(t):
        return T.ByteType()
    if pa.types.is_float64(t):
        return T.DoubleType()
    if pa.types.is_float32(t):
        return T.FloatType()
    if pa.types.is_date(t):
        return T.DateType()
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return T.BinaryType()
    if pa.types.is_decimal(t):
        return T.DecimalType(t.precision, t.scale)
    if pa.types.is_null(t):
        return T.StringType()  # an all-null column: a nullable string
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return T.ArrayType(arrow_to_spark_type(t.value_type), True)
    if pa.types.is_dictionary(t):
        return arrow_to_spark_type(t.value_type)
    raise TypeError(
        f"Arrow type {t} has no Spark equivalent here: expected a contract type (string, int64, float64, bool, timestamp, date)"
    )


def arrow_to_spark_schema(schema: pa.Schema) -> T.StructType:
    """Spark ``StructType`` of an Arrow schema: every field nullable (as Delta stores them)."""
    return T.StructType([T.StructField(f.name, arrow_to_spark_type(f.type), True) for f in schema])


def normalize_arrow(table: pa.Table) -> pa.Table:
    """Types Spark reads exactly: microsecond timestamps (tz-aware ones in UTC), plain
    strings, and all-null columns as strings."""
    fields = []
    for f in table.schema:
        t = f.type
        if pa.types.is_timestamp(t):
            t = pa.timestamp("us", tz="UTC" if t.tz else None)
        elif pa.types.is_large_string(t) or pa.types.is_dictionary(t) or pa.types.is_null(t):
            t = pa.string()
        fields.append(pa.field(f.name, t))
    target = pa.schema(fields)
    return table if target.equals(table.schema) else table.cast(target)


# -- the session -----------------------------------------------------------------------
def with_delta_jars(builder: SparkSession.Builder) -> SparkSession.Builder:
    """``builder`` with the Delta jars in ``spark.jars.packages``: the coordinate
    ``delta.configure_spark_with_delta_pip`` derives from the installed delta-spark and
    pyspark versions, or ``MMF_DELTA_PACKAGE`` when set (a release whose jars are not on
    Maven Central yet, a mirror, extra packages such as hadoop-azure)."""
    override = os.environ.get(DELTA_PACKAGE_ENV)
    if override:
        return builder.config("spark.jars.packages", override)
    from delta import configure_spark_with_delta_pip

    return configure_spark_with_delta_pip(builder)


def _local_driver_gib() -> int:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2
    return max(1, min(16, int(total / 4 / 2**30)))


def session_conf(config: Any = None) -> dict[str, str]:
    """Every setting :func:`get_spark` puts on a new session (without the jars)."""
    spark_cfg = getattr(config, "spark", None)
    master = getattr(spark_cfg, "master", None) or os.environ.get("SPARK_MASTER") or "local[*]"
    conf = {
        "spark.master": master,
        "spark.app.name": "mmf",
        "spark.sql.extensions": DELTA_EXTENSION,
        "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
        # One clock: the session is UTC and naive timestamps are TIMESTAMP_NTZ, so wall
        # times read and written by either engine never shift (JVM options are left to
        # the cluster's own settings).
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.timestampType": "TIMESTAMP_NTZ",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.pyspark.fallback.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        # Models pin BLAS to one thread themselves; OpenMP pools stay small too.
        "spark.executorEnv.OMP_NUM_THREADS": "1",
        "spark.executorEnv.OPENBLAS_NUM_THREADS": "1",
        "spark.executorEnv.MKL_NUM_THREADS": "1",
    }
    shuffle = getattr(spark_cfg, "shuffle_partitions", None)
    if shuffle:
        conf["spark.sql.shuffle.partitions"] = str(shuffle)
    memory = getattr(spark_cfg, "driver_memory", None)
    if memory:
        conf["spark.driver.memory"] = str(memory)
    if master.startswith("local"):
        # A single machine: a few partitions for Delta's log replay instead of 50.
        conf.setdefault("spark.sql.shuffle.partitions", "8")
        conf["spark.databricks.delta.snapshotPartitions"] = "4"
        # The driver JVM is the whole cluster here; Spark's 1g default is too small for
        # the silver rows of 10,000 hourly meters.
        conf.setdefault("spark.driver.memory", f"{_local_driver_gib()}g")
    return conf


def get_spark(config: Any = None, conf: Mapping[str, str] | None = None) -> SparkSession:
    """The process's SparkSession, built on the first call (later calls return it, and
    their ``config``/``conf`` no longer matter). ``config.spark.master`` (or
    ``SPARK_MASTER``) picks the master; ``conf`` adds or overrides settings (tests use it
    for a small driver and no UI). A session that already runs (``spark-submit``, a
    notebook) is used as it is."""
    global _SESSION
    with _LOCK:
        if _SESSION is not None and _alive(_SESSION):
            return _SESSION
        active = SparkSession.getActiveSession()
        if active is not None and _alive(active):
            for key in ("spark.sql.session.timeZone", "spark.sql.execution.arrow.pyspark.enabled"):
                active.conf.set(key, session_conf(config)[key])
            _SESSION = active
            return active
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        settings = {**session_conf(config), **dict(conf or {})}
        builder = SparkSession.builder
        for key, value in settings.items():
            builder = builder.config(key, value)
        builder = with_delta_jars(builder)
        package = builder._options.get("spark.jars.packages")  # noqa: SLF001 - for the message only
        try:
            session = builder.getOrCreate()
        except Exception as exc:
            raise MMFError(
                f"could not start Spark (master {settings['spark.master']!r}, Delta package {package!r}): {exc}. "
                "Spark needs Java 17+ (`java -version`); the Delta jars come from Maven Central on first use "
                f"(cached in ~/.ivy2*). If that version is not published, set {DELTA_PACKAGE_ENV} to one that is "
                "(e.g. io.delta:delta-spark_4.2_2.13:4.4.0)"
            ) from exc
        session.sparkContext.setLogLevel("ERROR")
        _SESSION = session
        return session


def _alive(session: SparkSession) -> bool:
    try:
        return session.sparkContext._jsc is not None  # noqa: SLF001 - stopped sessions drop it
    except Exception:  # noqa: BLE001
        return False


def stop_spark() -> None:
    """Stop the cached session (tests and the CLI's end; a new one is built on demand)."""
    global _SESSION
    with _LOCK:
        if _SESSION is not None:
            _SESSION.stop()
        _SESSION = None


# -- frames ----------------------------------------------------------------------------
def to_spark(
    spark: SparkSession, frame: pd.DataFrame | pa.Table, schema: pa.Schema | None = None
) -> SparkDataFrame:
    """A pandas frame or Arrow table as a Spark DataFrame, through Arrow. With ``schema``
    the data is first given exactly those columns and types (absent ones as nulls)."""
    if isinstance(frame, pd.DataFrame):
        if schema is not None:
            table = to_arrow(frame, schema)
        else:
            table = pa.Table.from_pandas(frame, preserve_index=False)
    else:
        table = frame.select(schema.names).cast(schema) if schema is not None else frame
    table = normalize_arrow(table.replace_schema_metadata(None))
    return spark.createDataFrame(table, schema=arrow_to_spark_schema(table.schema))


def results_dir(spark: SparkSession) -> str | None:
    """The folder :func:`to_pandas` stages results in as Parquet files, or ``None`` to
    collect them with ``toArrow()``.

    ``spark.mmf.resultsDir`` (a Spark setting) or ``MMF_SPARK_RESULTS_DIR`` names a folder
    that the driver and every executor reach at the same local path (one machine, NFS, a
    FUSE mount); without one, a ``local`` master uses the system's temporary folder (driver
    and executors are one process) and any other master collects through ``toArrow()``.
    """
    configured = spark.conf.get(RESULTS_DIR_CONF, None) or os.environ.get(RESULTS_DIR_ENV)
    if configured:
        return configured
    return tempfile.gettempdir() if spark.sparkContext.master.startswith("local") else None


def to_pandas(df: SparkDataFrame, schema: pa.Schema) -> pd.DataFrame:
    """A Spark DataFrame as pandas with exactly the Arrow ``schema``'s columns and dtypes
    (so both engines hand the jobs the same frame).

    Where :func:`results_dir` names a folder, the rows go through Parquet files there
    rather than ``toArrow()``: large collected task results live in the driver's block
    manager, and at 10,000 hourly meters x 90 days (21.6M cleaned rows) they were evicted
    before the driver fetched them (``TaskResultLost``). Otherwise (a cluster without a
    shared folder) it is ``toArrow()``: size ``spark.driver.maxResultSize`` and the
    driver's memory for it."""
    df = df.select(*schema.names)
    folder = results_dir(df.sparkSession)
    if folder is None:
        return df.toArrow().cast(schema).to_pandas()
    return _through_parquet(df, schema, folder)


def _through_parquet(df: SparkDataFrame, schema: pa.Schema, folder: str) -> pd.DataFrame:
    """``df`` written by the executors as Parquet files under ``folder`` and read back on
    the driver. The rows written are counted in the same Spark job (an observed metric),
    so a folder the executors do not share with the driver is an error, not an empty
    result."""
    if folder.startswith("file:"):
        folder = urlparse(folder).path
    os.makedirs(folder, exist_ok=True)
    written = Observation(f"mmf_results_{uuid.uuid4().hex}")  # one per job, even on threads
    with tempfile.TemporaryDirectory(prefix="mmf-spark-out-", dir=folder, ignore_cleanup_errors=True) as tmp:
        out = Path(tmp) / "out"
        df.observe(written, F.count(F.lit(1)).alias("rows")).write.mode("overwrite").parquet(out.as_uri())
        has_files = out.is_dir() and any(p.suffix == ".parquet" for p in out.iterdir())
        table = pq.read_table(out) if has_files else schema.empty_table()
        expected = int(written.get["rows"])
        if table.num_rows != expected:
            raise MMFError(
                f"Spark wrote {expected:,} result rows but the driver found {table.num_rows:,} under {folder}: "
                f"the executors do not share that folder with the driver. Set {RESULTS_DIR_CONF} "
                f"(or {RESULTS_DIR_ENV}) to a folder they all reach at the same path, or leave it unset "
                "on a cluster (results then come back through toArrow())"
            )
        return table.select(schema.names).cast(schema).to_pandas()
