"""SQL over the lakehouse: DuckDB over the Delta tables' Arrow datasets (embedded
default; nothing is downloaded at run time), Spark SQL with the Spark engine.

Read-only: one statement that reads (``SELECT``, ``WITH``, ``VALUES``, ``TABLE``,
``FROM``, ``SHOW``, ``DESCRIBE``, ``SUMMARIZE``, ``EXPLAIN``, ``PRAGMA table_info``);
anything else (``COPY``, ``ATTACH``, ``INSTALL``, ``LOAD``, ``CREATE``, ``INSERT``,
``UPDATE``, ``DELETE``, ``SET``, ``CALL``, ...) is refused before it runs. DuckDB sees
only the registered tables: external access (files, other databases, extensions) is
turned off and the configuration locked before the statement runs. Spark additionally
refuses file paths as tables (``csv.`/path```) and ``reflect``/``java_method``.
"""

from __future__ import annotations

import logging
import re

import duckdb
import pandas as pd

from forecasting.errors import MMFError, TableError
from training.tables import Lakehouse

log = logging.getLogger(__name__)


class SQLError(MMFError):
    """A statement ``mmf sql`` refuses, or one that failed."""


READS = (
    "SELECT",
    "WITH",
    "VALUES",
    "TABLE",
    "FROM",
    "SHOW",
    "DESCRIBE",
    "DESC",
    "SUMMARIZE",
    "EXPLAIN",
    "PRAGMA",
)
EXPLAIN_OPTIONS = {"ANALYZE", "EXTENDED", "CODEGEN", "COST", "FORMATTED"}
# words that make a statement write wherever they stand (Spark: WITH ... INSERT, FROM t INSERT ...)
WRITES = {"ALTER", "ATTACH", "COPY", "CREATE", "DELETE", "DROP", "INSERT", "INSTALL", "MERGE", "OVERWRITE"}
WRITES |= {"TRUNCATE", "UPDATE"}
JAVA_CALLS = {"REFLECT", "JAVA_METHOD", "TRY_REFLECT"}  # Spark SQL functions that call Java methods
PRAGMAS = ("table_info", "show_tables", "show_tables_expanded", "show")
_ALLOWED = "SELECT, WITH, VALUES, TABLE, FROM, SHOW, DESCRIBE, SUMMARIZE, EXPLAIN, PRAGMA table_info"
_TOKEN = re.compile(
    r"--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|`(?:[^`]|``)*`|[A-Za-z_][A-Za-z_0-9]*|\S",
    re.S,
)


def _refuse(what: str) -> SQLError:
    return SQLError(f"mmf sql runs read-only queries: {what} (allowed: one statement starting {_ALLOWED})")


def _statements(statement: str) -> list[list[str]]:
    """The tokens of each statement (split at ``;``), comments left out."""
    parts: list[list[str]] = [[]]
    for t in _TOKEN.findall(statement):
        if t == ";":
            parts.append([])
        elif not t.startswith(("--", "/*")):
            parts[-1].append(t)
    return [p for p in parts if p]


def check_read_only(statement: str, engine: str = "local") -> None:
    """Raise :class:`SQLError` unless ``statement`` is one statement that only reads."""
    parts = _statements(statement)
    if len(parts) != 1:
        raise _refuse(f"{len(parts)} statements given" if parts else "no statement given")
    tokens = parts[0]
    words = [t.upper() for t in tokens if t[0].isalpha() or t[0] == "_"]
    first = next((t for t in tokens if t != "("), "").upper()
    if first == "EXPLAIN":
        first = next((w for w in words[1:] if w not in EXPLAIN_OPTIONS), "")
        if first == "EXPLAIN":
            raise _refuse("EXPLAIN EXPLAIN is refused")
    if first not in READS or (first == "PRAGMA" and engine == "spark"):
        raise _refuse(f"{first or tokens[0]} is refused")
    if first == "PRAGMA" and (len(tokens) < 2 or tokens[1].lower() not in PRAGMAS):
        raise _refuse(f"PRAGMA {tokens[1] if len(tokens) > 1 else '(none)'} is refused")
    bad = sorted(WRITES.intersection(words))
    if bad:
        raise _refuse(f"{bad[0]} is refused")
    calls = [t for t, after in zip(tokens, tokens[1:]) if t.upper() in JAVA_CALLS and after == "("]
    if calls:
        raise _refuse(f"{calls[0]}() is refused")
    paths = [t for t in tokens if t.startswith("`") and ("/" in t or ":" in t)]
    if paths:
        raise _refuse(f"a file as a table ({paths[0]}) is refused")


def run_sql(lake: Lakehouse, statement: str, engine: str = "local") -> pd.DataFrame:
    """Run ``statement``; tables are named ``bronze.readings``, ``gold.forecasts``, ..."""
    check_read_only(statement, engine)
    if engine == "spark":
        from training.tables.spark import spark_sql

        return spark_sql(lake, statement)
    con = duckdb.connect()
    try:
        for name in lake.existing():
            layer, table = name.split("/")
            con.execute(f"CREATE SCHEMA IF NOT EXISTS {layer}")
            try:
                ds = lake.table(name).to_pyarrow_dataset()
            except TableError as exc:  # e.g. a corrupt commit: the other tables stay queryable
                log.warning("%s is left out: %s", name, exc)
                continue
            view = f"__{layer}_{table}"
            con.register(view, ds)
            con.execute(f"CREATE VIEW {layer}.{table} AS SELECT * FROM {view}")
        for setting in (
            "autoinstall_known_extensions",
            "autoload_known_extensions",
            "enable_external_access",
        ):
            con.execute(f"SET {setting} = false")
        con.execute("SET lock_configuration = true")
        return _run_duckdb(con, statement)
    finally:
        con.close()


def _run_duckdb(con: duckdb.DuckDBPyConnection, statement: str) -> pd.DataFrame:
    try:
        kinds = [s.type for s in con.extract_statements(statement)]
    except duckdb.Error as exc:
        raise SQLError(f"mmf sql: {str(exc).splitlines()[0]}") from None
    allowed = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN, duckdb.StatementType.PRAGMA}
    if len(kinds) != 1 or kinds[0] not in allowed:
        raise _refuse(f"{', '.join(k.name for k in kinds)} is refused")
    try:
        return con.execute(statement).df()
    except duckdb.PermissionException as exc:
        raise SQLError(f"mmf sql reads only the lakehouse tables: {str(exc).splitlines()[0]}") from None
    except duckdb.Error as exc:
        raise SQLError(f"mmf sql: {str(exc).splitlines()[0]}") from None
