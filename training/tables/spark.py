"""The lakehouse table layer for Spark: bronze/silver/gold through delta-spark.

Same tables, same places: every path is :meth:`training.tables.Lakehouse.uri`, every
schema is the contract's (:func:`training.tables.table_schema`), so a table written by
one layer is read by the other (naive timestamps are Delta ``timestamp_ntz`` in both,
tz-aware ones Delta ``timestamp``). Delta application transactions are the same Delta
``txn`` action in both layers, so idempotency markers written by one are honoured by the
other.

Who writes what:

* the jobs (``ingest``, ``refine``, ``train``, ``forecast``, ``nightly``) commit through
  :class:`~training.tables.Lakehouse` (deltalake) on the driver, with either engine: the
  results of the group mapping come back to the driver and are committed once;
* this layer writes where the data never comes to the driver: the Spark engine's sinks
  (``train``'s ``gold/models`` and ``gold/backtest`` batches, a delta-spark commit each,
  its commit metadata as ``userMetadata``), ``refine --engine spark``'s silver batches
  (:mod:`training.engines.spark_refine`), ``mmf score --engine
  spark`` (``gold/scores`` by replace-where, or ``gold/forecasts`` by MERGE) and
  ``mmf stream`` (``gold/forecasts`` by MERGE, one Delta application transaction per
  micro-batch);
* either layer reads anything.

Remote roots: ``az://container/path`` (with ``storage_options`` ``account_name``) is read
as ``abfss://container@<account>.dfs.core.windows.net/path`` and ``s3://`` as ``s3a://``;
credentials from ``storage_options`` go into the session's Hadoop settings, never into a
log line. The cluster needs the matching jars (``hadoop-azure``, ``hadoop-aws``).
"""

from __future__ import annotations

import logging
import re
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

import pandas as pd
import pyarrow as pa
from pyspark.sql import Column, SparkSession
from pyspark.sql import DataFrame as SparkDataFrame
from pyspark.sql import functions as F

from forecasting import contract as C
from forecasting.errors import TableError
from training.tables.lakehouse import (
    EVOLVING,
    TABLE_NAMES,
    Lakehouse,
    bucketed,
    canonical,
    to_arrow,
    user_metadata,
    with_buckets,
)
from training.tables.spark_session import arrow_to_spark_schema, get_spark, to_pandas, to_spark

log = logging.getLogger(__name__)

_TXN_APP_ID = "spark.databricks.delta.write.txnAppId"
_TXN_VERSION = "spark.databricks.delta.write.txnVersion"
_TXN_RESET = "spark.databricks.delta.write.txnVersion.autoReset.enabled"
_AUTO_MERGE = "spark.databricks.delta.schema.autoMerge.enabled"  # MERGE may add columns
_DML_LOCK = threading.Lock()  # the DML transaction settings are session-wide


def spark_bucket(series_id: Column) -> Column:
    """:func:`forecasting.contract.bucket_of` in Spark: CRC-32 of the id's UTF-8 bytes
    modulo :data:`~forecasting.contract.N_BUCKETS`, as an int."""
    return (F.crc32(series_id.cast("string")) % C.N_BUCKETS).cast("int")


def spark_uri(uri: str, storage_options: dict[str, str] | None = None) -> str:
    """The URI Hadoop's file systems know for a deltalake-style URI."""
    opts = {k.lower(): v for k, v in (storage_options or {}).items()}
    if uri.startswith(("az://", "azure://")):
        container, _, path = uri.split("://", 1)[1].partition("/")
        account = opts.get("account_name") or opts.get("azure_storage_account_name")
        if not account:
            raise TableError(f"{uri}: Spark needs the storage account: set storage_options.account_name")
        return f"abfss://{container}@{account}.dfs.core.windows.net/{path}".rstrip("/")
    if uri.startswith("s3://"):
        return "s3a://" + uri[len("s3://") :]
    return uri


def hadoop_settings(storage_options: dict[str, str] | None, uri: str) -> dict[str, str]:
    """Hadoop settings for the credentials in ``storage_options`` (never logged)."""
    opts = {k.lower(): v for k, v in (storage_options or {}).items()}
    out: dict[str, str] = {}
    account = opts.get("account_name") or opts.get("azure_storage_account_name")
    key = opts.get("account_key") or opts.get("azure_storage_account_key")
    if account and key:
        out[f"fs.azure.account.key.{account}.dfs.core.windows.net"] = key
    if uri.startswith(("s3://", "s3a://")):
        pairs = {
            "aws_access_key_id": "fs.s3a.access.key",
            "access_key_id": "fs.s3a.access.key",
            "aws_secret_access_key": "fs.s3a.secret.key",
            "secret_access_key": "fs.s3a.secret.key",
            "aws_session_token": "fs.s3a.session.token",
            "aws_endpoint_url": "fs.s3a.endpoint",
            "endpoint": "fs.s3a.endpoint",
            "aws_region": "fs.s3a.endpoint.region",
            "region": "fs.s3a.endpoint.region",
        }
        for src, dst in pairs.items():
            if opts.get(src):
                out[dst] = opts[src]
    return out


class SparkTables:
    """The lakehouse's tables as Spark DataFrames (read) and Delta commits (write)."""

    def __init__(self, lake: Lakehouse, spark: SparkSession | None = None, config: Any = None) -> None:
        self.lake = lake
        self._spark = spark
        self._config = config
        self._configured = False

    @classmethod
    def from_config(cls, config: Any, spark: SparkSession | None = None) -> "SparkTables":
        return cls(Lakehouse.from_config(config), spark, config)

    def __repr__(self) -> str:  # the lakehouse's storage options hold credentials
        return f"SparkTables({self.lake.root!r})"

    @property
    def spark(self) -> SparkSession:
        if self._spark is None:
            self._spark = get_spark(self._config)
        if not self._configured:
            for key, value in hadoop_settings(self.lake.storage_options, self.lake.root).items():
                self._spark.conf.set(key, value)
            self._configured = True
        return self._spark

    # -- locations -------------------------------------------------------------------
    def uri(self, name: str) -> str:
        return spark_uri(self.lake.uri(name), self.lake.storage_options)

    def exists(self, name: str) -> bool:
        # deltalake answers without a Spark job; the paths are the same
        return self.lake.exists(name)

    def version(self, name: str) -> int | None:
        return self.lake.version(name)

    def txn_version(self, name: str, app_id: str) -> int | None:
        return self.lake.txn_version(name, app_id)

    # -- reading ---------------------------------------------------------------------
    def read(
        self,
        name: str,
        version: int | None = None,
        columns: Sequence[str] | None = None,
    ) -> SparkDataFrame:
        """A table (at a version) as a lazy Spark DataFrame; an absent table is an empty
        frame with the declared schema."""
        if not self.exists(name):
            if version is not None:
                raise TableError(f"table {canonical(name)} does not exist: no version {version!r}")
            schema = self.lake.schema(name)
            df = self.spark.createDataFrame([], arrow_to_spark_schema(schema))
        else:
            reader = self.spark.read.format("delta")
            if version is not None:
                reader = reader.option("versionAsOf", int(version))
            df = reader.load(self.uri(name))
        return df.select(*columns) if columns else df

    def read_pandas(
        self, name: str, version: int | None = None, columns: Sequence[str] | None = None
    ) -> pd.DataFrame:
        """A table as pandas with the contract's dtypes (as :meth:`Lakehouse.read` gives)."""
        schema = self.lake.schema(name)
        if columns:
            schema = pa.schema([schema.field(c) for c in columns])
        return to_pandas(self.read(name, version, columns), schema)

    def read_series(self, name: str, series_ids: Sequence[str], key: str = "series_id") -> SparkDataFrame:
        """The rows of the given series (a broadcast semi-join), with ``_row``: the row's
        position in read order (``clean_series`` breaks ties of ``_ingested_at`` with it)."""
        ids = self.spark.createDataFrame([(str(s),) for s in series_ids], f"`{key}` string")
        return (
            self.read(name)
            .join(F.broadcast(ids), on=key, how="left_semi")
            .withColumn("_row", F.monotonically_increasing_id())
        )

    @staticmethod
    def distinct(df: SparkDataFrame, column: str) -> list[str]:
        """The distinct values of one column, on the driver."""
        return [str(r[0]) for r in df.select(column).distinct().collect()]

    def stream(
        self,
        name: str,
        on_batch: Callable[[SparkDataFrame, int], None],
        checkpoint: str,
        once: bool = False,
        starting_version: int | None = None,
        interval_s: float = 60,
        timeout_s: float | None = None,
        query_name: str | None = None,
    ) -> None:
        """Read ``name`` as a Delta streaming source and call ``on_batch(rows, batch_id)``
        for each micro-batch (``foreachBatch``, on the driver), with its progress in
        ``checkpoint``. ``once``: everything not yet processed, then return (Spark's
        ``availableNow``); otherwise a batch every ``interval_s`` seconds until
        ``timeout_s`` (``None``: until interrupted). A failed batch stops the query and
        raises :class:`TableError`; running again resumes from the checkpoint."""
        reader = self.spark.readStream.format("delta")
        if starting_version is not None:
            reader = reader.option("startingVersion", int(starting_version))
        writer = (
            reader.load(self.uri(name))
            .writeStream.foreachBatch(on_batch)
            .option("checkpointLocation", spark_uri(checkpoint, self.lake.storage_options))
        )
        if query_name:
            writer = writer.queryName(query_name)
        writer = (
            writer.trigger(availableNow=True)
            if once
            else writer.trigger(processingTime=f"{max(interval_s, 1):g} seconds")
        )
        query = writer.start()
        try:
            if timeout_s is None:
                query.awaitTermination()
            elif not query.awaitTermination(timeout_s):
                query.stop()
        except KeyboardInterrupt:
            query.stop()
        except Exception as exc:
            query.stop()
            raise TableError(
                f"stream over {canonical(name)} stopped: a micro-batch failed ({_first_line(exc)}); "
                f"run it again to resume from {checkpoint}"
            ) from exc

    def register_views(
        self, names: Sequence[str] = TABLE_NAMES, views: Mapping[str, str] | None = None
    ) -> list[str]:
        """A temporary view ``<layer>_<table>`` per existing table, then one per entry of
        ``views`` (``gold/current_forecasts`` -> a query naming tables ``gold.forecasts``
        style) whose tables all exist; returns the tables and views registered."""
        existing = [n for n in names if self.exists(n)]
        for name in existing:
            self.read(name).createOrReplaceTempView(view_name(name))
        registered = list(existing)
        for name, query in (views or {}).items():
            used = [t for t in TABLE_NAMES if re.search(rf"\b{re.escape(t.replace('/', '.'))}\b", query)]
            if all(t in existing for t in used):
                body = rewrite_table_names(query, existing)
                self.spark.sql(f"CREATE OR REPLACE TEMPORARY VIEW {view_name(name)} AS {body}")
                registered.append(name)
        return registered

    # -- writing ---------------------------------------------------------------------
    def frame(self, name: str, data: pd.DataFrame | pa.Table | SparkDataFrame) -> SparkDataFrame:
        """``data`` with exactly the table's columns and types."""
        schema = self.lake.schema(name)
        if isinstance(data, SparkDataFrame):
            target = arrow_to_spark_schema(schema)
            cols = []
            for field in target:
                col = F.col(field.name) if field.name in data.columns else F.lit(None)
                if field.name == C.BUCKET:
                    col = F.coalesce(col.cast("int"), spark_bucket(F.col(C.SERIES_ID)))
                cols.append(col.cast(field.dataType).alias(field.name))
            out = data.select(*cols)
            return out.sortWithinPartitions(C.BUCKET) if bucketed(schema) else out
        if bucketed(schema) and not isinstance(data, pa.Table):
            data = to_arrow(data, schema)
        return to_spark(self.spark, with_buckets(data) if bucketed(schema) else data, schema)

    def write(
        self,
        name: str,
        data: pd.DataFrame | pa.Table | SparkDataFrame,
        mode: str = "append",
        replace_where: str | None = None,
        app_id: str | None = None,
        app_version: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> int:
        """Append or overwrite (only where ``replace_where`` holds, when given). With
        ``app_id``/``app_version`` the commit records a Delta application transaction and
        a write whose version was already committed under that id is skipped (Delta's
        ``txnAppId``/``txnVersion``). ``metadata`` goes into the commit as its
        ``userMetadata`` (a JSON object of strings), which
        :meth:`~training.tables.Lakehouse.history` reads as the keys deltalake's custom
        metadata would be. A replace-where on an absent table creates it. The table's
        schema evolves as the deltalake layer's does (``mergeSchema``): a table written
        before its contract gained a column (``silver/series.demand_class``) takes it on
        this write, null in its older rows; the contract's columns are cast to their
        types first, so no type changes. Returns the table's version after the write."""
        df = self.frame(name, data)
        if replace_where is not None and not self.exists(name):
            mode, replace_where = "append", None
        writer = df.write.format("delta").mode(mode).option("mergeSchema", "true")
        if replace_where is not None:
            writer = writer.option("replaceWhere", replace_where)
        if canonical(name) in EVOLVING and self.exists(name):
            # an older table takes the contract's new columns (as the deltalake layer does)
            writer = writer.option("mergeSchema", "true")
        if app_id:
            writer = writer.option("txnAppId", app_id).option("txnVersion", int(app_version or 0))
        if metadata:
            writer = writer.option("userMetadata", user_metadata(metadata))
        if canonical(name) in EVOLVING:  # an older table takes the contract's new columns
            writer = writer.option("mergeSchema", "true")
        writer.save(self.uri(name))
        return int(self.lake.version(name))

    def merge(
        self,
        name: str,
        data: pd.DataFrame | pa.Table | SparkDataFrame,
        keys: Sequence[str],
        app_id: str | None = None,
        app_version: int | None = None,
    ) -> int:
        """Upsert ``data`` on ``keys`` (a row whose keys exist replaces it; others are
        inserted), so writing the same rows twice leaves one copy. With
        ``app_id``/``app_version`` the MERGE commit records that application transaction
        (and is skipped when that version was already committed). An absent table is
        created; an existing one takes the contract's new columns (Delta's schema
        auto-merge, for this MERGE only). Returns the table's version after the write."""
        from delta.tables import DeltaTable

        df = self.frame(name, data).dropDuplicates(list(keys))
        if not self.exists(name):
            return self.write(name, df, app_id=app_id, app_version=app_version)
        target = DeltaTable.forPath(self.spark, self.uri(name))
        on = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
        with self._dml_transaction(app_id, app_version, evolve=True):
            (
                target.alias("t")
                .merge(df.alias("s"), on)
                .whenMatchedUpdateAll()
                .whenNotMatchedInsertAll()
                .execute()
            )
        return int(self.lake.version(name))

    @contextmanager
    def _dml_transaction(
        self, app_id: str | None, app_version: int | None, evolve: bool = False
    ) -> Iterator[None]:
        """The session settings of one DML commit (they are session-wide, hence the
        lock): its application transaction, and with ``evolve`` schema auto-merge."""
        if not app_id and not evolve:
            yield
            return
        with _DML_LOCK:
            conf = self.spark.conf
            keys = []
            if app_id:
                conf.set(_TXN_APP_ID, app_id)
                conf.set(_TXN_VERSION, str(int(app_version or 0)))
                conf.set(_TXN_RESET, "true")
                keys += [_TXN_APP_ID, _TXN_VERSION]
            if evolve:
                conf.set(_AUTO_MERGE, "true")
                keys.append(_AUTO_MERGE)
            try:
                yield
            finally:
                for key in keys:
                    conf.unset(key)


def _first_line(exc: BaseException) -> str:
    """The line of a (Py4J-wrapped) streaming error that names the root cause: the last
    ``SomeError: message`` line of the Python traceback inside it, else its first line."""
    import re

    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    causes = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception): ", ln)]
    if causes:
        return causes[-1][:300]
    return lines[0][:300] if lines else type(exc).__name__


__all__ = ["SparkTables", "hadoop_settings", "spark_uri"]


# -- SQL -------------------------------------------------------------------------------
_QUOTED = re.compile(r"('(?:[^']|'')*'|`[^`]*`|\"[^\"]*\")")


def view_name(table: str) -> str:
    """``gold/forecasts`` -> ``gold_forecasts``."""
    return table.replace("/", "_")


def rewrite_table_names(statement: str, tables: list[str]) -> str:
    """``gold.forecasts`` -> ``gold_forecasts`` outside quoted text, for the given tables."""
    names = {t.replace("/", "."): view_name(t) for t in tables}
    if not names:
        return statement
    pattern = re.compile(
        r"(?<![\w.`])("
        + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
        + r")(?![\w`])",
        re.IGNORECASE,
    )
    parts = _QUOTED.split(statement)
    for i in range(0, len(parts), 2):  # even indexes are outside quotes
        parts[i] = pattern.sub(lambda m: names[m.group(1).lower()], parts[i])
    return "".join(parts)


def spark_sql(lake: Any, statement: str, views: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Run ``statement`` with Spark SQL over the lakehouse's tables: each existing table is
    a temporary view named ``<layer>_<table>`` (``gold_forecasts``), as is each of
    ``views`` (see :meth:`SparkTables.register_views`), and ``gold.forecasts`` style
    names are rewritten to those views."""
    tables = SparkTables(lake)
    existing = tables.register_views(views=views)
    df = tables.spark.sql(rewrite_table_names(statement, existing))
    return df.toArrow().to_pandas()
