"""The lakehouse table layer for the embedded default (Delta Lake through ``deltalake``).

Table names are the paths under the lakehouse root (``silver/readings``); the SQL form
``silver.readings`` is accepted too. Schemas come from :mod:`forecasting.contract`.
The root may be anything deltalake accepts (a local folder, ``az://``, ``abfss://``,
``s3://``): it is passed through unchanged, with ``storage_options``.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd
import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import TableNotFoundError

from forecasting import contract as C
from forecasting.errors import TableError

log = logging.getLogger(__name__)

_COMMIT_KEY = "mmf.commit_id"  # commit metadata: identifies the commit a write made

# The tables of a lakehouse: their names are declared here only.
BRONZE_READINGS = "bronze/readings"
SILVER_READINGS = "silver/readings"
SILVER_SERIES = "silver/series"
SILVER_QUARANTINE = "silver/quarantine"
GOLD_FORECASTS = "gold/forecasts"
GOLD_BACKTEST = "gold/backtest"
GOLD_SELECTION = "gold/selection"
GOLD_PORTFOLIO = "gold/portfolio"
GOLD_SCORES = "gold/scores"
GOLD_GATE = "gold/gate"
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
)


def table_schema(name: str, levels: Sequence[int] = (80, 95)) -> pa.Schema:
    return {
        BRONZE_READINGS: C.BRONZE_READINGS,
        SILVER_READINGS: C.SILVER_READINGS,
        SILVER_SERIES: C.SILVER_SERIES,
        SILVER_QUARANTINE: C.SILVER_QUARANTINE,
        GOLD_FORECASTS: C.forecast_schema(levels),
        GOLD_BACKTEST: C.backtest_schema(levels),
        GOLD_SELECTION: C.GOLD_SELECTION,
        GOLD_PORTFOLIO: C.GOLD_PORTFOLIO,
        GOLD_SCORES: C.scores_schema(levels),
        GOLD_GATE: C.GOLD_GATE,
    }[canonical(name)]


def canonical(name: str) -> str:
    """``gold.forecasts`` or ``gold/forecasts`` -> ``gold/forecasts``; unknown names refused."""
    key = name.strip().replace(".", "/")
    if key not in TABLE_NAMES:
        raise TableError(f"unknown table {name!r}: expected one of {', '.join(TABLE_NAMES)}")
    return key


def to_arrow(df: pd.DataFrame, schema: pa.Schema) -> pa.Table:
    """Frame -> Arrow table with exactly ``schema`` (missing nullable columns become null)."""
    cols = {}
    for f in schema:
        if f.name in df.columns:
            cols[f.name] = pa.array(df[f.name], type=f.type, from_pandas=True)
        else:
            cols[f.name] = pa.nulls(len(df), type=f.type)
    return pa.table(cols, schema=schema)


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

    def table(self, name: str, version: int | str | dt.datetime | None = None) -> DeltaTable:
        try:
            t = DeltaTable(self.uri(name), storage_options=self.storage_options)
        except TableNotFoundError:
            raise TableError(
                f"table {canonical(name)} does not exist under {self.root}: run the step that "
                "writes it first (ingest -> refine -> train -> forecast)"
            ) from None
        if version is not None:
            try:
                t.load_as_version(version)
            except Exception as exc:
                raise TableError(
                    f"table {canonical(name)} has no version {version!r} "
                    f"(latest is {t.version()}): {exc}"
                ) from None
        return t

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
        ds = t.to_pyarrow_dataset()
        expr = None
        for col, op, val in filters or []:
            import pyarrow.compute as pc

            field = pc.field(col)
            e = {
                "=": field == val,
                "==": field == val,
                "in": field.isin(list(val)) if op == "in" else None,
                ">=": field >= val,
                "<=": field <= val,
                ">": field > val,
                "<": field < val,
            }[op]
            expr = e if expr is None else expr & e
        return ds.to_table(columns=list(columns) if columns else None, filter=expr)

    def history(self, name: str) -> list[dict[str, Any]]:
        return self.table(name).history()

    # -- writing ---------------------------------------------------------------------
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
    ) -> int:
        """Append or overwrite (optionally only where ``predicate`` holds); returns the
        table version this write committed (not a version another writer committed
        meanwhile). ``app_id``/``app_version`` record a Delta application
        transaction so a retried step can tell it already committed. A replace-where
        (``mode="overwrite"`` with a ``predicate``) on an absent table creates it.

        Every table is written with exactly its contract schema, so a schema change is
        an error, never silent; the one exception is ``new_columns`` of
        ``bronze/readings`` (``ingest.extra_columns: add``): extra nullable string
        columns merged into bronze's schema."""
        exists = self.exists(name)
        if predicate is not None and not exists:
            mode, predicate = "append", None  # nothing to replace yet: create the table
        schema = self.schema(name)
        bronze = canonical(name) == BRONZE_READINGS
        if new_columns and not bronze:
            raise TableError(f"new columns {list(new_columns)} refused: only bronze/readings takes columns outside the contract")
        data = df if isinstance(df, pa.Table) else to_arrow(df, schema)
        extra = data.select(list(new_columns)).cast(pa.schema([(c, pa.string()) for c in new_columns])) if new_columns else None
        data = data.select(schema.names).cast(schema)
        for f in extra.schema if extra is not None else []:
            data = data.append_column(f, extra.column(f.name))
        # bronze may hold columns added earlier (ingest.extra_columns: add): rows without
        # them are merged in as nulls; contract columns are cast above, so their types
        # cannot change
        schema_mode = "merge" if bronze else None
        # A marker in the commit lets us find *our* version when the table is created,
        # even if another writer committed right after us.
        marker = uuid.uuid4().hex
        props = CommitProperties(
            app_transactions=[Transaction(app_id, int(app_version or 0))] if app_id else None,
            custom_metadata={**{k: str(v) for k, v in (metadata or {}).items()}, _COMMIT_KEY: marker},
        )
        if exists:
            # Writing through a loaded table leaves it at the version this write
            # committed; re-reading the latest version could return another
            # writer's commit (concurrent ingests).
            target = self.table(name)
            write_deltalake(target, data, mode=mode, predicate=predicate, commit_properties=props, schema_mode=schema_mode)
            if target.version() >= 0:
                return target.version()
            # loaded while another writer was creating the table (no commit yet): the
            # object was not advanced, so look the commit up
            return self._committed_version(name, marker)
        write_deltalake(
            self.uri(name),
            data,
            mode=mode,
            predicate=predicate,
            storage_options=self.storage_options,
            commit_properties=props,
            schema_mode=schema_mode,
        )
        return self._committed_version(name, marker)

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

    def txn_version(self, name: str, app_id: str) -> int | None:
        """The last application-transaction version committed under ``app_id``."""
        if not self.exists(name):
            return None
        return self.table(name).transaction_version(app_id)

    def restore(self, name: str, version: int) -> int:
        t = self.table(name)
        latest = t.version()
        if not 0 <= version <= latest:
            raise TableError(f"cannot restore {canonical(name)} to version {version}: versions are 0..{latest}")
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
