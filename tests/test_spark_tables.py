"""The Spark table layer and the deltalake one share the lakehouse: a table written by
either is read by the other with the same values and types (timestamps included), Gold
replace-where, MERGE and application transactions mean the same in both, and
``mmf sql --engine spark`` sees every table."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

pytest.importorskip("pyspark")

from forecasting import contract as C  # noqa: E402
from forecasting.errors import MMFError  # noqa: E402
from training.jobs.sql import run_sql  # noqa: E402
from training.tables import Lakehouse  # noqa: E402
from training.tables.spark import SparkTables, hadoop_settings, spark_uri  # noqa: E402

pytestmark = pytest.mark.spark
NOW = pd.Timestamp("2026-01-02 03:04:05.123456", tz="UTC")


def _forecasts(version: str, series=("a", "b"), h: int = 3, shift: float = 0.0) -> pd.DataFrame:
    ts = pd.date_range("2024-01-01", periods=h, freq="h")
    rows = []
    for i, sid in enumerate(series):
        for k, t in enumerate(ts):
            y = 10.0 * i + k + shift
            rows.append(
                {
                    C.SERIES_ID: sid,
                    C.TS: t,
                    "yhat": y,
                    "yhat_lower_80": y - 1,
                    "yhat_upper_80": y + 1,
                    "yhat_lower_95": y - 2,
                    "yhat_upper_95": y + 2,
                    "model": "theta",
                    "model_version": version,
                    "run_id": f"run-{version}",
                    "cutoff": pd.Timestamp("2023-12-31 23:00"),
                    "created_at": NOW,
                }
            )
    return pd.DataFrame(rows)


@pytest.fixture
def tables(lake_root, spark):
    return SparkTables(Lakehouse(str(lake_root)), spark)


def _key(df):
    return df.sort_values([C.SERIES_ID, C.TS, "model_version"], ignore_index=True)


def test_written_by_one_layer_read_by_the_other(tables):
    lake = tables.lake
    a = _forecasts("1")
    lake.write("gold/forecasts", a)  # deltalake
    got = tables.read_pandas("gold/forecasts")  # Spark
    pd.testing.assert_frame_equal(_key(got), _key(lake.read("gold/forecasts")))
    assert got[C.TS].dtype == "datetime64[us]" and str(got["created_at"].dtype) == "datetime64[us, UTC]"
    assert got["created_at"].iloc[0] == NOW  # microseconds and the instant survive
    assert got[C.TS].min() == pd.Timestamp("2024-01-01 00:00")  # naive wall time, no zone shift

    b = _forecasts("2", shift=0.5)
    tables.write("gold/forecasts", b)  # Spark appends to a deltalake table
    # deltalake reads Spark's commit (the columns the frames carry; silver_version and fit are null)
    back = lake.read("gold/forecasts", columns=list(a.columns))
    pd.testing.assert_frame_equal(_key(back), _key(pd.concat([a, b]).astype(back.dtypes.to_dict())))
    lake.write("gold/forecasts", _forecasts("3"))  # and deltalake still writes after Spark
    assert tables.read("gold/forecasts").count() == 18

    # a table Spark creates is read and written by deltalake (dates and tz-aware too)
    pf = pd.DataFrame(
        {
            "level": ["total"],
            "key": ["all"],
            "day": [dt.date(2024, 1, 1)],
            "yhat": [1.5],
            "n_series": [2],
            "model_version": ["1"],
            "cutoff": [pd.Timestamp("2023-12-31 23:00")],
            "created_at": [NOW],
        }
    )
    tables.write("gold/portfolio", pf)
    lake.write("gold/portfolio", pf.assign(model_version="2"))
    read = lake.read("gold/portfolio").sort_values("model_version", ignore_index=True)
    assert read["day"].tolist() == [dt.date(2024, 1, 1)] * 2 and read["created_at"].tolist() == [NOW, NOW]
    assert len(tables.read_pandas("gold/portfolio")) == 2


def test_time_travel_in_both_layers(tables):
    lake = tables.lake
    tables.write("gold/forecasts", _forecasts("1"))
    lake.write("gold/forecasts", _forecasts("2"))
    assert len(tables.read_pandas("gold/forecasts", version=0)) == 6
    assert len(lake.read("gold/forecasts", version=0)) == 6
    assert len(tables.read_pandas("gold/forecasts", version=1)) == 12


def test_gold_replace_where_and_transactions_are_idempotent(tables):
    lake = tables.lake
    lake.write("gold/forecasts", _forecasts("1"))
    where = "model_version = '2'"
    v1 = tables.write(
        "gold/forecasts",
        _forecasts("2"),
        mode="overwrite",
        replace_where=where,
        app_id="mmf-forecast",
        app_version=2,
    )
    # the same write again (a retried job) commits nothing: Delta's txnAppId/txnVersion
    v2 = tables.write(
        "gold/forecasts",
        _forecasts("2", shift=9),
        mode="overwrite",
        replace_where=where,
        app_id="mmf-forecast",
        app_version=2,
    )
    assert v1 == v2
    assert lake.txn_version("gold/forecasts", "mmf-forecast") == 2  # deltalake sees Spark's txn
    # a new version of the same key replaces only its rows
    tables.write("gold/forecasts", _forecasts("2", shift=1), mode="overwrite", replace_where=where)
    got = lake.read("gold/forecasts")
    assert got.groupby("model_version").size().to_dict() == {"1": 6, "2": 6}
    assert np.allclose(
        got.loc[got["model_version"] == "2", "yhat"].sort_values(),
        _forecasts("2", shift=1)["yhat"].sort_values(),
    )
    # and deltalake's replace-where on the same rows agrees
    lake.write("gold/forecasts", _forecasts("2", shift=2), mode="overwrite", predicate=where)
    assert tables.read("gold/forecasts").where("model_version = '2'").count() == 6


def test_merge_upserts_once_and_records_the_batch(tables):
    lake = tables.lake
    keys = [C.SERIES_ID, C.TS, "cutoff", "model_version"]
    tables.merge("gold/forecasts", _forecasts("1"), keys, app_id="stream", app_version=0)  # creates the table
    tables.merge(
        "gold/forecasts", _forecasts("1", series=("b", "c"), shift=5), keys, app_id="stream", app_version=1
    )
    got = lake.read("gold/forecasts").set_index([C.SERIES_ID, C.TS]).sort_index()
    assert len(got) == 9 and not got.index.duplicated().any()
    assert got.loc["a", "yhat"].tolist() == [0.0, 1.0, 2.0]  # untouched
    assert got.loc["b", "yhat"].tolist() == [5.0, 6.0, 7.0]  # replaced
    assert lake.txn_version("gold/forecasts", "stream") == 1
    before = lake.version("gold/forecasts")
    tables.merge(
        "gold/forecasts", _forecasts("1", series=("d",)), keys, app_id="stream", app_version=1
    )  # a replay
    assert lake.version("gold/forecasts") == before and len(lake.read("gold/forecasts")) == 9


def test_spark_writes_evolve_an_old_schema(tables):
    """A silver/series written before demand_class existed, and a gold/forecasts before
    silver_version and fit: Spark's append, replace-where and MERGE add the new columns
    (null in the old rows), as the deltalake layer does."""
    from deltalake import write_deltalake

    lake = tables.lake
    old = pa.schema([f for f in C.SILVER_SERIES if f.name != "demand_class"])
    row = {
        C.SERIES_ID: ["OLD"],
        "site": ["s"],
        "region": ["r"],
        "freq": ["D"],
        "start": [dt.datetime(2024, 1, 1)],
        "end": [dt.datetime(2024, 3, 1)],
        "n_obs": [60],
        "n_filled": [0],
        "n_outliers": [0],
        "n_duplicates": [0],
        "bronze_version": [0],
        C.BUCKET: [7],
    }
    write_deltalake(lake.uri("silver/series"), pa.table(row, schema=old))
    new = pd.DataFrame({**row, C.SERIES_ID: ["NEW"], C.BUCKET: [8], "demand_class": ["lumpy"]})
    tables.write("silver/series", new)
    got = lake.read("silver/series").set_index(C.SERIES_ID)
    assert got["demand_class"].to_dict() == {"OLD": None, "NEW": "lumpy"}
    tables.write("silver/series", new.assign(n_obs=61), mode="overwrite", replace_where="series_id = 'NEW'")
    got = lake.read("silver/series").set_index(C.SERIES_ID)
    assert got.loc["NEW", "n_obs"] == 61 and len(got) == 2

    fields = [
        f
        for f in lake.schema("gold/forecasts")
        if f.name not in ("silver_version", "fit", "covariate_fallback")
    ]
    write_deltalake(
        lake.uri("gold/forecasts"), pa.Table.from_pandas(_forecasts("1"), schema=pa.schema(fields))
    )
    keys = [C.SERIES_ID, C.TS, "cutoff", "model_version"]
    tables.merge("gold/forecasts", _forecasts("1", series=("b",), shift=5).assign(fit="refit"), keys)
    got = lake.read("gold/forecasts").set_index([C.SERIES_ID, C.TS]).sort_index()
    assert got.loc["a", "fit"].isna().all() and (got.loc["b", "fit"] == "refit").all()
    assert got.loc["b", "yhat"].tolist() == [5.0, 6.0, 7.0]
    assert tables.spark.conf.get("spark.databricks.delta.schema.autoMerge.enabled", None) in (None, "false")


def test_sql_with_spark_sees_every_table(tables):
    lake = tables.lake
    lake.write("gold/forecasts", _forecasts("1"))
    lake.write("gold/forecasts", _forecasts("2"))
    out = run_sql(
        lake,
        "SELECT model_version, count(*) AS n, 'gold.forecasts' AS src FROM gold.forecasts GROUP BY 1 ORDER BY 1",
        engine="spark",
    )
    assert out.to_dict("list") == {"model_version": ["1", "2"], "n": [6, 6], "src": ["gold.forecasts"] * 2}
    view = run_sql(lake, "SELECT min(ts) AS t FROM gold_forecasts", engine="spark")
    assert view["t"].iloc[0] == pd.Timestamp("2024-01-01")
    local = run_sql(lake, "SELECT model_version, count(*) AS n FROM gold.forecasts GROUP BY 1 ORDER BY 1")
    assert local["n"].tolist() == out["n"].tolist()


def test_spark_sql_current_views_show_tables_and_one_line_errors(tables):
    """The same current views as DuckDB's (version 1, the champion, wins the shared
    cutoff; the newest run's selection without a champion), SHOW TABLES by the names a
    query uses, and an error in one line naming ``gold.forecasts`` as written."""
    lake = tables.lake
    lake.write("gold/forecasts", _forecasts("1"))
    lake.write("gold/forecasts", _forecasts("2", shift=5.0))
    sel = [
        {"run_id": run, C.SERIES_ID: sid, "status": "ok", "reason": "", "model": "theta", "metric": "mase"}
        | {"metric_value": 1.0, "silver_version": 0, "created_at": NOW + pd.Timedelta(minutes=k)}
        for k, run in enumerate(("run-1", "run-2"))
        for sid in ("a", "b")
    ]
    lake.write("gold/selection", pd.DataFrame(sel))
    q = "SELECT model_version, run_id, count(*) AS n FROM gold.current_{} GROUP BY 1, 2"
    for champion, version in ((("1", "run-1"), "1"), (None, "2")):
        spark = run_sql(
            lake, q.format("forecasts").replace("run_id", "run_id AS r"), "spark", champion=champion
        )
        local = run_sql(lake, q.format("forecasts").replace("run_id", "run_id AS r"), champion=champion)
        assert (
            spark.to_dict("list")
            == local.to_dict("list")
            == {"model_version": [version], "r": [f"run-{version}"], "n": [6]}
        )
    picked = run_sql(lake, "SELECT DISTINCT run_id FROM gold.current_selection", engine="spark")
    assert picked["run_id"].tolist() == ["run-2"]
    shown = run_sql(lake, "SHOW TABLES", engine="spark")["name"].tolist()
    assert shown == ["gold.current_forecasts", "gold.current_selection", "gold.forecasts", "gold.selection"]
    with pytest.raises(MMFError) as err:
        run_sql(lake, "SELECT nope FROM gold.forecasts", engine="spark")
    assert "\n" not in str(err.value) and str(err.value).startswith("mmf sql: [UNRESOLVED_COLUMN")
    assert "gold_forecasts" not in str(err.value), str(err.value)


def test_remote_uris_and_credentials_for_spark():
    opts = {"account_name": "acct", "account_key": "s3cr3t"}
    assert (
        spark_uri("az://box/lake/gold/forecasts", opts)
        == "abfss://box@acct.dfs.core.windows.net/lake/gold/forecasts"
    )
    assert spark_uri("s3://bucket/lake") == "s3a://bucket/lake"
    assert spark_uri("/tmp/lake") == "/tmp/lake"
    assert hadoop_settings(opts, "az://box/lake") == {
        "fs.azure.account.key.acct.dfs.core.windows.net": "s3cr3t"
    }
    s3 = hadoop_settings(
        {"aws_access_key_id": "AK", "aws_secret_access_key": "SK", "aws_endpoint_url": "http://minio:9000"},
        "s3://b/l",
    )
    assert s3 == {
        "fs.s3a.access.key": "AK",
        "fs.s3a.secret.key": "SK",
        "fs.s3a.endpoint": "http://minio:9000",
    }
    assert "s3cr3t" not in repr(SparkTables(Lakehouse("az://box/lake", opts)))
