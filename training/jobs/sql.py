"""SQL over the lakehouse: DuckDB over the Delta tables' Arrow datasets (embedded
default; nothing is downloaded at run time), Spark SQL with the Spark engine."""

from __future__ import annotations

import pandas as pd

from training.tables import Lakehouse


def run_sql(lake: Lakehouse, statement: str, engine: str = "local") -> pd.DataFrame:
    """Run ``statement``; tables are named ``bronze.readings``, ``gold.forecasts``, ..."""
    if engine == "spark":
        from training.tables.spark import spark_sql

        return spark_sql(lake, statement)
    import duckdb

    con = duckdb.connect()
    for name in lake.existing():
        layer, table = name.split("/")
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {layer}")
        ds = lake.table(name).to_pyarrow_dataset()
        view = f"__{layer}_{table}"
        con.register(view, ds)
        con.execute(f"CREATE VIEW {layer}.{table} AS SELECT * FROM {view}")
    try:
        return con.execute(statement).df()
    finally:
        con.close()
