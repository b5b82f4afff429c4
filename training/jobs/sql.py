"""SQL over the lakehouse: DuckDB over the Delta tables' Arrow datasets (embedded
default; nothing is downloaded at run time), Spark SQL with the Spark engine.

Read-only: one statement that reads (``SELECT``, ``WITH``, ``VALUES``, ``TABLE``,
``FROM``, ``SHOW``, ``DESCRIBE``, ``SUMMARIZE``, ``EXPLAIN``, ``PRAGMA table_info``);
anything else (``COPY``, ``ATTACH``, ``INSTALL``, ``LOAD``, ``CREATE``, ``INSERT``,
``UPDATE``, ``DELETE``, ``SET``, ``CALL``, ...) is refused before it runs. DuckDB sees
only the registered tables: external access (files, other databases, extensions) is
turned off and the configuration locked before the statement runs. Spark additionally
refuses file paths as tables (``csv.`/path```) and ``reflect``/``java_method``.

Besides the tables, the views ``gold.current_forecasts``, ``gold.current_selection``,
``gold.current_portfolio`` and ``gold.current_backtest_forecasts`` hold the champion's current rows (:func:`current_views`; the
champion from the MLflow registry alias). Each table is a DuckDB view of its Arrow dataset
with no helper name in the catalog, so ``SHOW ALL TABLES`` and ``information_schema``
list the lakehouse's names only; ``SHOW TABLES`` lists them (``gold.forecasts``, ...) in
both engines. A refused or failed statement raises :class:`SQLError` with one line.
"""

from __future__ import annotations

import logging
import re
import sqlite3
from typing import Mapping

import duckdb
import pandas as pd
from mlflow.exceptions import MlflowException

from forecasting.config import Config
from forecasting.errors import MMFError, TableError
from registry.aliases import champion_info
from registry.connection import sqlite_path, store_state
from training.tables import (
    GOLD_BACKTEST_FORECASTS,
    GOLD_FORECASTS,
    GOLD_HIERARCHY,
    GOLD_PORTFOLIO,
    GOLD_SELECTION,
    Lakehouse,
)

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


# -- the current views -------------------------------------------------------------------
Champion = tuple[str, str]  # (model version, run id) behind the registry's champion alias
CURRENT = (
    "gold/current_forecasts",
    "gold/current_selection",
    "gold/current_portfolio",
    "gold/current_backtest_forecasts",
    "gold/current_hierarchy",
)
_NEEDS = dict(
    zip(
        CURRENT,
        (
            (GOLD_FORECASTS,),
            (GOLD_SELECTION,),
            (GOLD_PORTFOLIO,),
            (GOLD_BACKTEST_FORECASTS, GOLD_SELECTION),
            (GOLD_HIERARCHY,),
        ),
    )
)


def champion_of(config: Config) -> Champion | None:
    """The champion's (model version, run id) from the MLflow registry alias; ``None``
    when there is no champion, or no store to ask (a SQLite store that was never made
    is not created: ``mmf sql`` only reads)."""
    try:
        path = sqlite_path(config.mlflow_tracking_uri())
        if path is not None and store_state(path)[0] != "complete":
            return None
        info = champion_info(config)
    except (MlflowException, MMFError, OSError, sqlite3.Error) as exc:
        log.warning("the champion is unknown (%s): the current views show the newest rows", exc)
        return None
    return (str(info["version"]), str(info["run_id"])) if info else None


def _literal(value: str | None) -> str:
    return "NULL" if value is None else "'" + str(value).replace("'", "''") + "'"


def current_views(champion: Champion | None) -> dict[str, str]:
    """``gold/current_*`` -> the query defining it (DuckDB and Spark SQL alike), over
    ``gold.forecasts``, ``gold.selection`` and ``gold.portfolio``:

    * ``current_forecasts``: per series, the rows of its newest cutoff; when more than one
      model version forecast that cutoff, the champion's rows (else the version written
      last): one row per (series_id, ts), the next horizon as last delivered;
    * ``current_selection``: the champion's training run's rows, one per series (the
      run written last when the table has no row of the champion's run);
    * ``current_portfolio``: the totals of the newest cutoff's delivery, the champion's
      when its delivery shares that cutoff (the same rows ``current_forecasts`` sums);
    * ``current_backtest_forecasts``: the backtest forecasts of the run
      ``current_selection`` shows (gold.backtest_forecasts; its run's windows against
      their actuals);
    * ``current_hierarchy``: the coherent levels of the newest delivery (by silver
      version), the champion's when its delivery is among the newest.

    Without a champion (``None``) the version or run written last stands in for it."""
    version, run_id = champion or (None, None)
    v, r = _literal(version), _literal(run_id)
    forecasts = (
        "SELECT f.* FROM gold.forecasts AS f JOIN ("
        " SELECT series_id, cutoff, model_version FROM ("
        "  SELECT series_id, cutoff, model_version, row_number() OVER (PARTITION BY series_id ORDER BY"
        f"   cutoff DESC, CASE WHEN model_version = {v} THEN 0 ELSE 1 END, written DESC, model_version DESC"
        "  ) AS pick FROM ("
        "   SELECT series_id, cutoff, model_version, max(created_at) AS written FROM gold.forecasts"
        "   GROUP BY series_id, cutoff, model_version) AS w) AS ranked"
        " WHERE pick = 1) AS k"
        " ON f.series_id = k.series_id AND f.cutoff = k.cutoff AND f.model_version = k.model_version"
    )
    current_run = (
        "SELECT run_id FROM ("
        f" SELECT run_id, max(CASE WHEN run_id = {r} THEN 1 ELSE 0 END) AS champion,"
        " max(created_at) AS written FROM gold.selection GROUP BY run_id) AS runs"
        " ORDER BY champion DESC, written DESC, run_id DESC LIMIT 1"
    )
    selection = f"SELECT s.* FROM gold.selection AS s WHERE s.run_id = ({current_run})"
    backtest_forecasts = f"SELECT b.* FROM gold.backtest_forecasts AS b WHERE b.run_id = ({current_run})"
    portfolio = (
        "SELECT p.* FROM gold.portfolio AS p WHERE p.model_version = (SELECT model_version FROM ("
        " SELECT model_version, max(cutoff) AS cutoff,"
        f" max(CASE WHEN model_version = {v} THEN 1 ELSE 0 END) AS champion,"
        " max(created_at) AS written FROM gold.portfolio GROUP BY model_version) AS versions"
        " ORDER BY cutoff DESC, champion DESC, written DESC, model_version DESC LIMIT 1)"
    )
    hierarchy = (
        "SELECT h.* FROM gold.hierarchy AS h WHERE h.delivery = (SELECT delivery FROM ("
        " SELECT delivery, max(silver_version) AS silver,"
        f" max(CASE WHEN model_version = {v} THEN 1 ELSE 0 END) AS champion,"
        " max(created_at) AS written FROM gold.hierarchy GROUP BY delivery) AS deliveries"
        " ORDER BY silver DESC, champion DESC, written DESC, delivery DESC LIMIT 1)"
    )
    return dict(zip(CURRENT, (forecasts, selection, portfolio, backtest_forecasts, hierarchy)))


def _mentions_current(statement: str) -> bool:
    return any(t.lower().startswith("current_") for p in _statements(statement) for t in p)


def _is_show_tables(statement: str) -> bool:
    parts = _statements(statement)
    return len(parts) == 1 and [t.upper() for t in parts[0]] == ["SHOW", "TABLES"]


def _tables_frame(names) -> pd.DataFrame:
    """What ``SHOW TABLES`` answers: the tables and views as a query names them."""
    return pd.DataFrame({"name": sorted(n.replace("/", ".") for n in names)})


# -- running a statement -----------------------------------------------------------------
def run_sql(
    lake: Lakehouse,
    statement: str,
    engine: str = "local",
    config: Config | None = None,
    champion: Champion | None = None,
) -> pd.DataFrame:
    """Run ``statement``; tables are named ``bronze.readings``, ``gold.forecasts``, ...,
    and the views ``gold.current_forecasts``, ``gold.current_selection``,
    ``gold.current_portfolio``, ``gold.current_backtest_forecasts`` and ``gold.current_hierarchy``
    (:func:`current_views`) are defined for ``champion``, or
    for the champion ``config``'s registry names when the statement uses them.
    ``SHOW TABLES`` lists the tables and views by those names. Raises :class:`SQLError`
    (one line) for a refused or failed statement."""
    check_read_only(statement, engine)
    if champion is None and config is not None and _mentions_current(statement):
        champion = champion_of(config)
    views = current_views(champion)
    if engine == "spark":
        return _run_spark(lake, statement, views)
    con = duckdb.connect()
    try:
        names = _register(con, lake, views)
        for setting in (
            "autoinstall_known_extensions",
            "autoload_known_extensions",
            "enable_external_access",
        ):
            con.execute(f"SET {setting} = false")
        con.execute("SET lock_configuration = true")
        if _is_show_tables(statement):
            return _tables_frame(names)
        return _run_duckdb(con, statement)
    finally:
        con.close()


def _register(con: duckdb.DuckDBPyConnection, lake: Lakehouse, views: Mapping[str, str]) -> list[str]:
    """Each table as the view ``<layer>.<table>`` of its Arrow dataset (a relation view:
    no helper name is left in the catalog), then the ``views`` whose table is there;
    returns the names registered."""
    names = []
    for name in lake.existing():
        layer, table = name.split("/")
        try:
            ds = lake.table(name).to_pyarrow_dataset()
        except TableError as exc:  # e.g. a corrupt commit: the other tables stay queryable
            log.warning("%s is left out: %s", name, exc)
            continue
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {layer}")
        con.execute(f"USE memory.{layer}")
        con.from_arrow(ds).create_view(table)
        names.append(name)
    con.execute("USE memory.main")
    for name, query in views.items():
        if all(t in names for t in _NEEDS[name]):
            con.execute(f"CREATE VIEW {name.replace('/', '.')} AS {query}")
            names.append(name)
    return names


def _one_line(exc: BaseException) -> str:
    """An engine's message in one line: its first line, and a "Did you mean" hint."""
    lines = [x.strip() for x in str(exc).strip().splitlines() if x.strip()]
    hints = [x for x in lines[1:] if x.lower().startswith("did you mean")]
    return " ".join(lines[:1] + hints[:1]) or type(exc).__name__


def _run_duckdb(con: duckdb.DuckDBPyConnection, statement: str) -> pd.DataFrame:
    try:
        kinds = [s.type for s in con.extract_statements(statement)]
    except duckdb.Error as exc:
        raise SQLError(f"mmf sql: {_one_line(exc)}") from None
    allowed = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN, duckdb.StatementType.PRAGMA}
    if len(kinds) != 1 or kinds[0] not in allowed:
        raise _refuse(f"{', '.join(k.name for k in kinds)} is refused")
    try:
        return con.execute(statement).df()
    except duckdb.PermissionException as exc:
        raise SQLError(f"mmf sql reads only the lakehouse tables: {_one_line(exc)}") from None
    except duckdb.Error as exc:
        raise SQLError(f"mmf sql: {_one_line(exc)}") from None


def _run_spark(lake: Lakehouse, statement: str, views: Mapping[str, str]) -> pd.DataFrame:
    """Spark SQL (the spark extra); its errors as one line naming tables as written."""
    from pyspark.errors import PySparkException

    from training.tables.spark import SparkTables, spark_sql, view_name

    try:
        if _is_show_tables(statement):
            return _tables_frame(SparkTables(lake).register_views(views=views))
        return spark_sql(lake, statement, views)
    except PySparkException as exc:
        line = _one_line(exc)
        for name in sorted({*lake.existing(), *views}, key=len, reverse=True):
            line = line.replace(f"`{view_name(name)}`", f"`{name.replace('/', '.')}`")
        raise SQLError(f"mmf sql: {line}") from None
