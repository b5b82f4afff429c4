"""The lakehouse table layer for the embedded default (Delta Lake through ``deltalake``).

Table names are the paths under the lakehouse root (``silver/readings``); the SQL form
``silver.readings`` is accepted too. Schemas come from :mod:`forecasting.contract`.
The root may be anything deltalake accepts (a local folder, ``az://``, ``abfss://``,
``s3://``): it is passed through unchanged, with ``storage_options``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import operator
import threading
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import CommitProperties, DeltaTable, Transaction, WriterProperties, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from forecasting import contract as C
from forecasting.errors import TableError
from training.tables import doctor

log = logging.getLogger(__name__)

_COMMIT_KEY = "mmf.commit_id"  # commit metadata: identifies the commit a write made
_USER_METADATA = "userMetadata"  # delta-spark's commit metadata (one string): a JSON object here

# The tables of a lakehouse: their names are declared here only.
DATASETS_KEPT = 16  # table snapshots whose dataset a Lakehouse keeps (Lakehouse._dataset)
BRONZE_READINGS = "bronze/readings"
SILVER_READINGS = "silver/readings"
SILVER_SERIES = "silver/series"
SILVER_QUARANTINE = "silver/quarantine"
GOLD_FORECASTS = "gold/forecasts"
GOLD_BACKTEST = "gold/backtest"
GOLD_BACKTEST_FORECASTS = "gold/backtest_forecasts"
GOLD_SELECTION = "gold/selection"
GOLD_PORTFOLIO = "gold/portfolio"
GOLD_SCORES = "gold/scores"
GOLD_GATE = "gold/gate"
GOLD_MODELS = "gold/models"
GOLD_ACCURACY = "gold/accuracy"
GOLD_DRIFT = "gold/drift"
GOLD_HIERARCHY = "gold/hierarchy"
BRONZE_COVARIATES = "bronze/covariates"
SILVER_COVARIATES = "silver/covariates"
TABLE_NAMES = (
    BRONZE_READINGS,
    SILVER_READINGS,
    SILVER_SERIES,
    SILVER_QUARANTINE,
    GOLD_FORECASTS,
    GOLD_BACKTEST,
    GOLD_SELECTION,
    GOLD_PORTFOLIO,
    GOLD_SCORES,
    GOLD_GATE,
    GOLD_MODELS,
    GOLD_ACCURACY,
    GOLD_DRIFT,
    GOLD_BACKTEST_FORECASTS,
    GOLD_HIERARCHY,
    BRONZE_COVARIATES,
    SILVER_COVARIATES,
)

# Tables whose contract gained columns since a lakehouse may have been created: written
# with schema merge, so an older table takes the new (nullable) columns on its next
# write; columns the contract holds keep their types (the data is cast to it first).
EVOLVING = (
    GOLD_FORECASTS,
    SILVER_READINGS,
    SILVER_SERIES,
    SILVER_QUARANTINE,
    GOLD_MODELS,
    GOLD_PORTFOLIO,
    GOLD_SELECTION,
)

# Rows per Parquet row group: small for bronze, whose files (one per ingest) hold every
# bucket, so that reading a range of buckets reads little more than that range.
ROW_GROUP_ROWS = {BRONZE_READINGS: 8192}
DEFAULT_ROW_GROUP_ROWS = 65536


def bucketed(schema: pa.Schema) -> bool:
    """Whether a table of ``schema`` carries the series bucket (:data:`C.BUCKET`)."""
    return C.BUCKET in schema.names


def with_buckets(data: pa.Table, sort: bool = False) -> pa.Table:
    """``data`` with its ``bucket`` column filled from the series ids (where null); with
    ``sort``, its rows sorted by bucket (stably), so each row group covers a narrow range
    (bronze, whose files hold every bucket; the other tables are written a bucket range
    at a time by the jobs, so their files cover narrow ranges as written)."""
    if data.num_rows == 0:
        return data
    col = data.column(C.BUCKET)
    if col.null_count:
        computed = pa.array(C.bucket_of(data.column(C.SERIES_ID)), pa.int32())
        col = pc.coalesce(col, computed) if col.null_count < len(col) else computed
        data = data.set_column(data.schema.get_field_index(C.BUCKET), C.BUCKET, col)
    if not sort:
        return data
    order = np.argsort(col.to_numpy(zero_copy_only=False), kind="stable")
    if np.any(order[1:] < order[:-1]):
        data = data.take(pa.array(order))
    return data


def bucket_ranges(n_rows: int, max_rows: int) -> list[tuple[int, int]]:
    """Equal ranges ``[lo, hi)`` of the bucket space, enough of them that each holds about
    ``max_rows`` of ``n_rows`` rows (the hash spreads series evenly; at least one)."""
    n = max(1, min(C.N_BUCKETS, -(-int(n_rows) // max(1, int(max_rows)))))
    edges = np.linspace(0, C.N_BUCKETS, n + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def table_schema(name: str, levels: Sequence[int] = (80, 95)) -> pa.Schema:
    return {
        BRONZE_READINGS: C.BRONZE_READINGS,
        SILVER_READINGS: C.SILVER_READINGS,
        SILVER_SERIES: C.SILVER_SERIES,
        SILVER_QUARANTINE: C.SILVER_QUARANTINE,
        GOLD_FORECASTS: C.forecast_schema(levels),
        GOLD_BACKTEST: C.backtest_schema(levels),
        GOLD_SELECTION: C.GOLD_SELECTION,
        GOLD_PORTFOLIO: C.portfolio_schema(levels),
        GOLD_SCORES: C.scores_schema(levels),
        GOLD_GATE: C.GOLD_GATE,
        GOLD_MODELS: C.GOLD_MODELS,
        GOLD_ACCURACY: C.accuracy_schema(levels),
        GOLD_DRIFT: C.drift_schema(levels),
        GOLD_BACKTEST_FORECASTS: C.backtest_forecasts_schema(levels),
        GOLD_HIERARCHY: C.hierarchy_schema(levels),
        BRONZE_COVARIATES: C.BRONZE_COVARIATES,
        SILVER_COVARIATES: C.COVARIATES,
    }[canonical(name)]


def user_metadata(metadata: Mapping[str, Any]) -> str:
    """Commit metadata as delta-spark records it (its one ``userMetadata`` string): a
    JSON object of strings, as deltalake's custom metadata holds them."""
    return json.dumps({str(k): str(v) for k, v in metadata.items()}, sort_keys=True)


def commit_info(commit: dict[str, Any]) -> dict[str, Any]:
    """A commit's info with the keys of its JSON ``userMetadata`` (a delta-spark commit's
    metadata, :func:`user_metadata`) next to the others, as deltalake's custom metadata
    keys are: the same ``mmf.*`` keys whichever layer committed (the commit's own keys
    win)."""
    raw = commit.get(_USER_METADATA)
    if not isinstance(raw, str) or not raw.startswith("{"):
        return commit
    try:
        extra = json.loads(raw)
    except ValueError:
        return commit
    if not isinstance(extra, dict):
        return commit
    return {**{str(k): v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()}, **commit}


def canonical(name: str) -> str:
    """``gold.forecasts`` or ``gold/forecasts`` -> ``gold/forecasts``; unknown names refused."""
    key = name.strip().replace(".", "/")
    if key not in TABLE_NAMES:
        raise TableError(f"unknown table {name!r}: expected one of {', '.join(TABLE_NAMES)}")
    return key


class TransactionConflict(TableError):
    """A conditional write (``Lakehouse.write(transactions=...)``) found one of its
    application transactions already committed by another writer. ``version`` is None
    when nothing was written; when set, the write was committed anyway, as that version
    (two writers created the table at once, which Delta does not refuse), and the caller
    must take back the rows of ``app_ids``."""

    def __init__(self, message: str, app_ids: list[str], version: int | None = None) -> None:
        super().__init__(message)
        self.app_ids, self.version = app_ids, version


def _recorded(table: DeltaTable, transactions: Sequence[tuple[str, int]]) -> list[str]:
    """The app ids among ``transactions`` that ``table``'s snapshot already holds."""
    return [a for a, v in transactions if (table.transaction_version(a) or -1) >= v]


def to_arrow(df: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """Frame -> Arrow table with exactly ``schema`` (missing nullable columns become null)."""
    cols = {}
    for f in schema:
        if f.name in df.columns:
            cols[f.name] = pa.array(df[f.name], type=f.type, from_pandas=True)
        else:
            cols[f.name] = pa.nulls(len(df), type=f.type)
    return pa.table(cols, schema=schema)


def _prepare(
    name: str, df: pd.DataFrame | pa.Table, schema: pa.Schema, new_columns: Sequence[str]
) -> pa.Table:
    """The rows to write, cast to the table's contract ``schema`` (plus bronze's
    ``new_columns``), bucketed and sorted by bucket where the table carries one."""
    if new_columns and canonical(name) != BRONZE_READINGS:
        raise TableError(
            f"new columns {list(new_columns)} refused: only bronze/readings takes columns outside the contract"
        )
    data = df if isinstance(df, pa.Table) else to_arrow(df, schema)
    extra = (
        data.select(list(new_columns)).cast(pa.schema([(c, pa.string()) for c in new_columns]))
        if new_columns
        else None
    )
    data = data.select(schema.names).cast(schema)
    for f in extra.schema if extra is not None else []:
        data = data.append_column(f, extra.column(f.name))
    return with_buckets(data, sort=canonical(name) in ROW_GROUP_ROWS) if bucketed(schema) else data


def _add_actions(t: DeltaTable) -> pa.Table:
    """The snapshot's add actions (one row per data file, with its statistics) in pyarrow."""
    return pa.table(t.get_add_actions(flatten=True))


def _writer_properties(name: str) -> WriterProperties:
    rows = ROW_GROUP_ROWS.get(canonical(name), DEFAULT_ROW_GROUP_ROWS)
    return WriterProperties(max_row_group_size=rows, compression="SNAPPY")


# The operators of a ``(column, op, value)`` read filter (``Lakehouse.read``, ``TableBatch``).
FILTER_OPS = {"=": operator.eq, "==": operator.eq, "!=": operator.ne, ">=": operator.ge, "<=": operator.le}
FILTER_OPS.update({">": operator.gt, "<": operator.lt})


def condition(column: Any, op: str, val: Any) -> Any:
    """``column op val`` for one ``(column, op, value)`` filter, on any column object
    that overloads the comparisons and has ``isin`` (a pyarrow field, a Spark column)."""
    if op == "in":
        return column.isin(list(val))
    if op not in FILTER_OPS:
        raise TableError(f"unknown filter operator {op!r}: expected one of {', '.join([*FILTER_OPS, 'in'])}")
    return FILTER_OPS[op](column, val)


def _expression(col: str, op: str, val: Any) -> pc.Expression:
    """A pyarrow filter expression of one ``(column, op, value)`` filter."""
    return condition(pc.field(col), op, val)


class Lakehouse:
    """Tables under one root."""

    def __init__(
        self,
        root: str,
        storage_options: dict[str, str] | None = None,
        levels: Sequence[int] = (80, 95),
    ) -> None:
        self.root = root.rstrip("/") if "://" in root else str(Path(root).resolve())
        self.storage_options = dict(storage_options or {}) or None
        self.levels = tuple(levels)
        self._datasets: OrderedDict[tuple[str, str, int], ds.Dataset] = OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # sent to workers: without the datasets
        return {k: v for k, v in self.__dict__.items() if k not in ("_datasets", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._datasets, self._lock = OrderedDict(), threading.Lock()

    @classmethod
    def from_config(cls, config: Any) -> "Lakehouse":
        return cls(config.lakehouse, config.storage_options, config.levels)

    def __repr__(self) -> str:  # storage options hold credentials: never shown
        return f"Lakehouse({self.root!r})"

    # -- locations -------------------------------------------------------------------
    def uri(self, name: str) -> str:
        return f"{self.root}/{canonical(name)}"

    def schema(self, name: str) -> pa.Schema:
        return table_schema(name, self.levels)

    def stored_columns(self, name: str) -> set[str]:
        """The column names table ``name`` holds now (its Delta schema, not
        :meth:`schema`'s: a table written by an older release may lack newer columns)."""
        return {f.name for f in self.table(name).schema().to_arrow()}

    def table(self, name: str, version: int | str | dt.datetime | None = None) -> DeltaTable:
        if isinstance(version, int) and not isinstance(version, bool):
            try:  # straight at the version: one log replay instead of the latest's and then the version's
                return DeltaTable(self.uri(name), version=version, storage_options=self.storage_options)
            except Exception:
                pass  # no such table or version, or a corrupt commit: the checks below say which
        try:
            t = DeltaTable(self.uri(name), storage_options=self.storage_options)
        except TableNotFoundError:
            raise TableError(
                f"table {canonical(name)} does not exist under {self.root}: run the step that "
                "writes it first (ingest -> refine -> train -> forecast)"
            ) from None
        except DeltaError as exc:  # a corrupt commit file, most often
            if isinstance(version, int) and doctor.loads_at(self.uri(name), version, self.storage_options):
                return DeltaTable(self.uri(name), version=version, storage_options=self.storage_options)
            raise TableError(self._unreadable(name, exc)) from None
        if version is not None:
            try:
                t.load_as_version(version)
            except Exception as exc:
                raise TableError(
                    f"table {canonical(name)} has no version {version!r} (latest is {t.version()}): {exc}"
                ) from None
        return t

    def _unreadable(self, name: str, exc: Exception) -> str:
        """The message for a table deltalake cannot load: the corrupt commit file and the fix."""
        d = self.diagnose(name)
        if not d.bad:
            return f"table {d.name} cannot be read: {str(exc).strip().splitlines()[0]}; `mmf doctor` checks every table"
        b = d.bad[0]
        fix = (
            f"run `mmf repair {d.name}` to move it aside and read the table at version {b.version - 1}"
            if b.version > 0
            else "no earlier version to keep: restore the table's folder from a backup"
        )
        return f"table {d.name} cannot be read: commit file {b.path} (version {b.version}) is corrupt ({b.why}); {fix}"

    def diagnose(self, name: str) -> doctor.Diagnosis:
        """The health of a table's commit log (``mmf doctor``)."""
        return doctor.diagnose(self.uri(name), canonical(name), self.storage_options)

    def repair(self, name: str) -> tuple[list[str], int]:
        """Move the corrupt commit files at the end of a table's log into
        ``<root>/_repair/<table>/<UTC time>/`` (``mmf repair``); returns the moved files and
        the version the table now reads at."""
        key = canonical(name)
        moved = doctor.repair(self.uri(key), key, f"{self.root}/_repair/{key}", self.storage_options)
        with self._lock:  # the versions moved aside may be written again with other rows
            self._datasets.clear()
        return moved, self.table(key).version()

    def exists(self, name: str) -> bool:
        return DeltaTable.is_deltatable(self.uri(name), storage_options=self.storage_options)

    def version(self, name: str) -> int | None:
        return self.table(name).version() if self.exists(name) else None

    # -- reading ---------------------------------------------------------------------
    def read(
        self,
        name: str,
        version: int | str | dt.datetime | None = None,
        columns: Sequence[str] | None = None,
        filters: list[tuple[str, str, Any]] | None = None,
    ) -> pd.DataFrame:
        """Rows of a table (at a version or timestamp), as pandas; an absent table is an
        empty frame with the declared schema."""
        if not self.exists(name):
            if version is not None:
                raise TableError(f"table {canonical(name)} does not exist: no version {version!r}")
            schema = self.schema(name)
            empty = schema.empty_table()
            return (empty.select(list(columns)) if columns else empty).to_pandas()
        return self.arrow(name, version, columns, filters).to_pandas()

    def arrow(self, name, version=None, columns=None, filters=None) -> pa.Table:
        t = self.table(name, version)
        expr = None
        for col, op, val in filters or []:
            e = _expression(col, op, val)
            expr = e if expr is None else expr & e
        return self._dataset(name, t).to_table(columns=list(columns) if columns else None, filter=expr)

    def _dataset(self, name: str, t: DeltaTable) -> ds.Dataset:
        """The pyarrow dataset over ``t``'s snapshot, built once per table and version
        (a job reads one snapshot batch by batch: building it costs ~0.6 ms a file, so
        at 216 batches of 100,000 series, one per batch read made every pass over the
        batches quadratic). Keyed by the table's id too: a table created again under the
        same path starts its versions over."""
        key = (canonical(name), t.metadata().id, t.version())
        with self._lock:
            found = self._datasets.get(key)
            if found is not None:
                self._datasets.move_to_end(key)
                return found
        built = t.to_pyarrow_dataset()
        with self._lock:
            self._datasets[key] = built
            while len(self._datasets) > DATASETS_KEPT:
                self._datasets.popitem(last=False)
        return built

    def scan(
        self, name: str, columns: Sequence[str], where: pc.Expression, version: int | None = None
    ) -> Iterator[pa.RecordBatch]:
        """The rows of a table where ``where`` holds, record batch by record batch (a
        streaming scan: what a caller looking for the first match holds is one batch)."""
        if not self.exists(name):
            return iter(())
        dataset = self._dataset(name, self.table(name, version))
        return iter(dataset.scanner(columns=list(columns), filter=where).to_batches())

    def n_rows(self, name: str, version: int | None = None) -> int:
        """Rows of a table at a version, from the Delta log's file statistics (no data read)."""
        if not self.exists(name):
            return 0
        actions = _add_actions(self.table(name, version))
        return int(pc.sum(actions.column("num_records")).as_py() or 0) if actions.num_rows else 0

    def batches(self, name: str, version: int | None, max_rows: int) -> list[tuple[int, int]]:
        """The bucket ranges ``[lo, hi)`` a job reads a table in, about ``max_rows`` rows each."""
        return bucket_ranges(self.n_rows(name, version), max_rows)

    def read_buckets(
        self,
        name: str,
        buckets: tuple[int, int],
        version: int | str | dt.datetime | None = None,
        columns: Sequence[str] | None = None,
        filters: list[tuple[str, str, Any]] | None = None,
    ) -> pd.DataFrame:
        """The rows of the series whose bucket is in ``[lo, hi)``: only the files and row
        groups of that range are read. Rows written before tables carried the bucket
        (null there) are read too and bucketed here."""
        lo, hi = buckets
        if not self.exists(name):
            return self.read(name, version, columns)
        t = self.table(name, version)
        names = [f.name for f in t.schema().to_arrow()]
        cols = list(columns) if columns else names
        extra = [c for c in (C.BUCKET, C.SERIES_ID) if c in names and c not in cols]
        in_range = (pc.field(C.BUCKET) >= lo) & (pc.field(C.BUCKET) < hi)
        if C.BUCKET not in names:
            expr = None
        else:
            expr = in_range | pc.field(C.BUCKET).is_null() if self._has_unbucketed(t) else in_range
        for col, op, val in filters or []:
            e = _expression(col, op, val)
            expr = e if expr is None else expr & e
        table = self._dataset(name, t).to_table(columns=cols + extra, filter=expr)
        if C.BUCKET not in names or table.column(C.BUCKET).null_count:
            table = self._bucket_legacy(table, lo, hi)
        return table.select(cols).to_pandas()

    @staticmethod
    def _has_unbucketed(t: DeltaTable) -> bool:
        """Whether any file of the snapshot may hold rows without a bucket."""
        actions = _add_actions(t)
        key = f"null_count.{C.BUCKET}"
        if not actions.num_rows:
            return False
        if key not in actions.column_names:
            return True
        nulls = actions.column(key)
        return bool(nulls.null_count) or bool(pc.any(pc.greater(nulls, 0)).as_py())

    @staticmethod
    def _bucket_legacy(table: pa.Table, lo: int, hi: int) -> pa.Table:
        buckets = C.bucket_of(table.column(C.SERIES_ID))
        keep = (buckets >= lo) & (buckets < hi)
        return table.filter(pa.array(keep))

    def history(self, name: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The table's commits, newest first (the last ``limit`` only), each with its
        metadata keys whichever layer wrote it (:func:`commit_info`)."""
        return [commit_info(c) for c in self.table(name).history(limit)]

    # -- writing ---------------------------------------------------------------------
    def as_written(self, name: str, df: pd.DataFrame) -> pd.DataFrame:
        """``df`` as :meth:`write` stores it in ``name`` and a read gives it back: cast to
        the table's contract, bucketed and ordered as written (no read of the table)."""
        return _prepare(name, df, self.schema(name), ()).to_pandas()

    def write(
        self,
        name: str,
        df: pd.DataFrame | pa.Table,
        mode: str = "append",
        predicate: str | None = None,
        app_id: str | None = None,
        app_version: int | None = None,
        metadata: dict[str, str] | None = None,
        new_columns: Sequence[str] = (),
        transactions: Sequence[tuple[str, int]] = (),
    ) -> int:
        """Append or overwrite (optionally only where ``predicate`` holds); returns the
        table version this write committed (not a version another writer committed
        meanwhile). ``app_id``/``app_version`` record a Delta application
        transaction so a retried step can tell it already committed; ``transactions``
        records more ``(app_id, version)`` pairs, and makes the write conditional: see
        :class:`TransactionConflict`. A replace-where
        (``mode="overwrite"`` with a ``predicate``) on an absent table creates it.

        Every table is written with exactly its contract schema, so a schema change is
        an error, never silent; the exceptions: ``new_columns`` of ``bronze/readings``
        (``ingest.extra_columns: add``), extra nullable string columns merged into
        bronze's schema, and the tables of :data:`EVOLVING`, whose contract gained
        columns: a table written before takes them on its next write (null in its
        older rows)."""
        exists = self.exists(name)
        if predicate is not None and not exists:
            mode, predicate = "append", None  # nothing to replace yet: create the table
        schema = self.schema(name)
        bronze = canonical(name) == BRONZE_READINGS
        data = _prepare(name, df, schema, new_columns)
        # bronze may hold columns added earlier (ingest.extra_columns: add): rows without
        # them are merged in as nulls; contract columns are cast above, so their types
        # cannot change
        schema_mode = "merge" if bronze or canonical(name) in EVOLVING else None
        # A marker in the commit lets us find *our* version when the table is created,
        # even if another writer committed right after us.
        marker = uuid.uuid4().hex
        pairs = [(app_id, app_version or 0)] if app_id else []
        txns = [Transaction(a, int(v)) for a, v in [*pairs, *transactions]]
        props = CommitProperties(
            app_transactions=txns or None,
            custom_metadata={**{k: str(v) for k, v in (metadata or {}).items()}, _COMMIT_KEY: marker},
        )
        if exists:
            return self._write_loaded(name, data, mode, predicate, props, schema_mode, transactions, marker)
        try:
            write_deltalake(
                self.uri(name),
                data,
                mode=mode,
                predicate=predicate,
                storage_options=self.storage_options,
                commit_properties=props,
                schema_mode=schema_mode,
                writer_properties=_writer_properties(name),
            )
        except CommitFailedError as exc:
            if not transactions:
                raise
            why = str(exc).splitlines()[0]
            raise TransactionConflict(
                f"{canonical(name)}: created by another writer meanwhile ({why})", []
            ) from None
        version = self._committed_version(name, marker)
        self._check_created(name, version, transactions)
        return version

    def _write_loaded(self, name, data, mode, predicate, props, schema_mode, transactions, marker) -> int:
        """Write through the loaded table (the table exists)."""
        # Writing through a loaded table leaves it at the version this write
        # committed; re-reading the latest version could return another
        # writer's commit (concurrent ingests).
        target = self.table(name)
        done = _recorded(target, transactions)
        if done:
            raise TransactionConflict(
                f"{canonical(name)}: {len(done)} transaction(s) committed already", done
            )
        try:
            write_deltalake(
                target,
                data,
                mode=mode,
                predicate=predicate,
                commit_properties=props,
                schema_mode=schema_mode,
                writer_properties=_writer_properties(name),
            )
        except CommitFailedError as exc:
            if not transactions:
                raise
            why = str(exc).splitlines()[0]
            raise TransactionConflict(
                f"{canonical(name)}: another writer committed meanwhile ({why})", []
            ) from None
        if target.version() >= 0:
            return target.version()
        # loaded while another writer was creating the table (no commit yet): the
        # object was not advanced, so look the commit up
        version = self._committed_version(name, marker)
        self._check_created(name, version, transactions)
        return version

    def _check_created(self, name: str, version: int, transactions: Sequence[tuple[str, int]]) -> None:
        """Delta checks a new table's first commit for nothing but its version number: a
        writer that lost the race to create the table is committed after the winner
        unchecked. Raise if one of its transactions was committed before it."""
        if not transactions or version == 0:
            return
        done = _recorded(self.table(name, version - 1), transactions)
        if done:
            raise TransactionConflict(
                f"{canonical(name)}: version {version} repeats {len(done)} transaction(s) of an earlier version",
                done,
                version,
            )

    def _committed_version(self, name: str, marker: str) -> int:
        """The version of the commit carrying ``marker`` (only when creating a table)."""
        for _ in range(10):
            t = self.table(name)
            latest = t.version()
            commits = t.history()  # newest first
            # deltalake numbers the listed commits down from the version it loaded, but
            # lists up to the newest commit: trust the numbers only if none landed meanwhile
            if self.table(name).version() != latest:
                continue
            for commit in commits:
                if commit.get(_COMMIT_KEY) == marker:
                    return int(commit["version"])
            break
        return self.table(name).version()  # pragma: no cover - our commit is in the log

    def delete(self, name: str, predicate: str, tries: int = 5) -> int:
        """Delete the rows where ``predicate`` holds; returns the version committed."""
        for attempt in range(1, tries + 1):
            target = self.table(name)
            try:
                target.delete(predicate)
                return target.version()
            except CommitFailedError:
                if attempt == tries:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def txn_version(self, name: str, app_id: str) -> int | None:
        """The last application-transaction version committed under ``app_id``."""
        if not self.exists(name):
            return None
        return self.table(name).transaction_version(app_id)

    def restore(self, name: str, version: int) -> int:
        t = self.table(name)
        latest = t.version()
        if not 0 <= version <= latest:
            raise TableError(
                f"cannot restore {canonical(name)} to version {version}: versions are 0..{latest}"
            )
        t.restore(version)
        return self.table(name).version()

    def vacuum(self, name: str, retention_hours: int, force: bool = False) -> list[str]:
        return self.table(name).vacuum(
            retention_hours=retention_hours,
            dry_run=False,
            enforce_retention_duration=not force,
        )

    def existing(self, names: Iterable[str] = TABLE_NAMES) -> list[str]:
        return [n for n in names if self.exists(n)]
