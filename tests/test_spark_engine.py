"""The Spark engine: schema conversion, session settings, ``map_groups`` agreeing with the
local engine, failures as rows, and the too-large guard before grouping."""

from __future__ import annotations

import uuid
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

pytest.importorskip("pyspark")

from pyspark.sql import types as T  # noqa: E402

from forecasting import contract as C  # noqa: E402
from forecasting.cleaning import REFINE_OUT, clean_series  # noqa: E402
from forecasting.config import load_config  # noqa: E402
from forecasting.errors import ConfigError  # noqa: E402
from forecasting.generator import generate  # noqa: E402
from training.engines import get_engine  # noqa: E402
from training.engines.local import LocalEngine  # noqa: E402
from training.engines.spark import SparkEngine, partitions_for  # noqa: E402
from training.jobs.refine import engine_error  # noqa: E402
from training.tables import to_arrow  # noqa: E402
from training.tables.spark import rewrite_table_names  # noqa: E402
from training.tables.spark_session import arrow_to_spark_schema, session_conf, to_spark  # noqa: E402

pytestmark = pytest.mark.spark
BRONZE_IN = pa.schema([*C.BRONZE_READINGS, ("_row", pa.int64())])


def test_arrow_to_spark_schema_covers_the_contract():
    s = arrow_to_spark_schema(C.forecast_schema([80]))
    types = {f.name: f.dataType for f in s}
    assert types["ts"] == T.TimestampNTZType()  # naive UTC stays naive
    assert types["created_at"] == T.TimestampType()  # tz-aware is an instant
    assert types["yhat"] == T.DoubleType() and types["series_id"] == T.StringType()
    p = {f.name: f.dataType for f in arrow_to_spark_schema(C.GOLD_PORTFOLIO)}
    assert p["day"] == T.DateType() and p["n_series"] == T.LongType()
    assert {f.name: f.dataType for f in arrow_to_spark_schema(REFINE_OUT)}["is_filled"] == T.BooleanType()
    assert all(f.nullable for f in s)
    with pytest.raises(TypeError, match="no Spark equivalent"):
        arrow_to_spark_schema(pa.schema([("x", pa.struct([("a", pa.int8())]))]))


def test_session_settings(monkeypatch):
    monkeypatch.delenv("SPARK_MASTER", raising=False)
    conf = session_conf(load_config())
    assert conf["spark.master"] == "local[*]"
    assert conf["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    assert conf["spark.sql.catalog.spark_catalog"] == "org.apache.spark.sql.delta.catalog.DeltaCatalog"
    assert conf["spark.sql.session.timeZone"] == "UTC"
    assert conf["spark.sql.execution.arrow.pyspark.enabled"] == "true"
    monkeypatch.setenv("SPARK_MASTER", "spark://head:7077")
    cluster = session_conf(load_config(**{"spark.shuffle_partitions": 64}))
    assert cluster["spark.master"] == "spark://head:7077"
    assert cluster["spark.sql.shuffle.partitions"] == "64"
    assert "spark.databricks.delta.snapshotPartitions" not in cluster  # local-only tuning
    assert "spark.driver.memory" not in cluster  # a cluster's own setting is left alone
    assert conf["spark.driver.memory"].endswith("g") and int(conf["spark.driver.memory"][:-1]) >= 1
    sized = session_conf(load_config(**{"spark.driver_memory": "6g"}))
    assert sized["spark.driver.memory"] == "6g"


def test_bad_driver_memory_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"spark.driver_memory.*lots.*4g"):
        load_config(**{"spark.driver_memory": "lots"})


def test_partitions_follow_the_number_of_series():
    assert partitions_for(3, parallelism=8) == 3  # never more tasks than series
    assert partitions_for(10_000, parallelism=8) == 32  # ~4 tasks per core
    assert partitions_for(10_000, parallelism=8, configured=100) == 100
    assert partitions_for(0, parallelism=8) == 1


def test_sql_names_are_rewritten_outside_quotes():
    sql = "SELECT 'gold.forecasts' AS t, count(*) FROM gold.forecasts JOIN Silver.Series s USING (series_id)"
    out = rewrite_table_names(sql, ["gold/forecasts", "silver/series"])
    assert (
        out
        == "SELECT 'gold.forecasts' AS t, count(*) FROM gold_forecasts JOIN silver_series s USING (series_id)"
    )
    assert (
        rewrite_table_names("SELECT * FROM gold.forecastsx", ["gold/forecasts"])
        == "SELECT * FROM gold.forecastsx"
    )


def test_get_engine_builds_the_spark_engine(spark):
    engine = get_engine(load_config(engine="spark"))
    assert isinstance(engine, SparkEngine) and engine.name == "spark"
    assert engine.spark is spark  # one session per process


def _bronze(n_series: int = 5, days: int = 4, seed: int = 2) -> pd.DataFrame:
    data = generate(n_series=n_series, days=days, freq="h", seed=seed, fault_share=0.4)
    b = data.readings.copy()
    b["_ingested_at"] = pd.Timestamp("2024-03-01", tz="UTC")
    b["_row"] = np.arange(len(b))
    return to_arrow(b, BRONZE_IN).to_pandas()


def _cfg(**changes):
    return load_config(
        horizon=24, models=["seasonal_naive"], **{"cleaning.min_length": 48, **changes}
    ).replace(freq="h")


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return to_arrow(df, REFINE_OUT).to_pandas().sort_values([C.SERIES_ID, C.TS], ignore_index=True)


def test_map_groups_matches_local_and_accepts_spark_frames(spark):
    bronze, cfg = _bronze(), _cfg()
    local = LocalEngine(workers=1).map_groups(
        bronze, C.SERIES_ID, clean_series, REFINE_OUT, cfg, on_error=engine_error
    )
    engine = SparkEngine(cfg)
    seen = []
    out = engine.map_groups(
        bronze,
        C.SERIES_ID,
        clean_series,
        REFINE_OUT,
        cfg,
        on_error=engine_error,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert list(out.columns) == REFINE_OUT.names
    assert out[C.TS].dtype == "datetime64[us]"  # the same dtypes as the local engine
    pd.testing.assert_frame_equal(_sorted(out), _sorted(local))
    assert seen[0] == (0, 5) and seen[-1] == (5, 5)
    # a Spark DataFrame in (e.g. read from Delta by the executors): the same result
    from_spark = engine.map_groups(
        to_spark(spark, bronze), C.SERIES_ID, clean_series, REFINE_OUT, cfg, on_error=engine_error
    )
    pd.testing.assert_frame_equal(_sorted(from_spark), _sorted(local))


def test_too_large_series_are_not_sent_to_workers(spark):
    bronze = _bronze(n_series=3, days=3)
    sizes = bronze.groupby(C.SERIES_ID).size()
    big = sizes.idxmax()
    bronze = pd.concat(
        [bronze, bronze[bronze[C.SERIES_ID] == big].assign(_row=lambda d: d["_row"] + 10_000)],
        ignore_index=True,
    )
    limit = int(sizes.max()) + 5  # only the doubled series is above it
    cfg = _cfg(**{"cleaning.max_points_per_series": limit})
    calls = []

    def guarded(pdf, config):  # runs in a worker: must never see the big series
        if len(pdf) > limit:
            raise MemoryError("the big series reached a worker")
        calls.append(1)
        return clean_series(pdf, config)

    out = SparkEngine(cfg).map_groups(bronze, C.SERIES_ID, guarded, REFINE_OUT, cfg, on_error=engine_error)
    q = out[out["_reason"].notna()].set_index(C.SERIES_ID)
    assert q.loc[big, "_reason"] == "too_large"
    # the same quarantine row the local path (clean_series itself) writes
    local = LocalEngine(workers=1).map_groups(
        bronze, C.SERIES_ID, clean_series, REFINE_OUT, cfg, on_error=engine_error
    )
    lq = local[local["_reason"].notna()].set_index(C.SERIES_ID)
    assert q.loc[big, "_detail"] == lq.loc[big, "_detail"]
    pd.testing.assert_frame_equal(_sorted(out), _sorted(local))
    # without on_error the job refuses up front, naming the series
    with pytest.raises(Exception, match="max_points_per_series"):
        SparkEngine(cfg).map_groups(bronze, C.SERIES_ID, guarded, REFINE_OUT, cfg)


def test_worker_errors_become_rows(spark):
    def _boom(pdf, config):  # local, so that it pickles by value to the workers
        sid = str(pdf[C.SERIES_ID].iloc[0])
        if sid.endswith("2"):
            raise ValueError(f"cannot fit {sid}")
        return pd.DataFrame({C.SERIES_ID: [sid], "n": [len(pdf)]})

    frame = pd.DataFrame({C.SERIES_ID: ["s1", "s1", "s2", "s3"], "v": [1.0, 2.0, 3.0, 4.0]})
    schema = pa.schema([(C.SERIES_ID, pa.string()), ("n", pa.int64())])
    cfg = _cfg()
    out = SparkEngine(cfg).map_groups(
        frame,
        C.SERIES_ID,
        _boom,
        schema,
        cfg,
        on_error=lambda sid, why: pd.DataFrame({C.SERIES_ID: [sid], "n": [-1]}),
    )
    assert out.set_index(C.SERIES_ID)["n"].to_dict() == {"s1": 2, "s2": -1, "s3": 1}
    with pytest.raises(Exception, match="cannot fit s2"):
        SparkEngine(cfg).map_groups(frame, C.SERIES_ID, _boom, schema, cfg)
    empty = SparkEngine(cfg).map_groups(frame.iloc[:0], C.SERIES_ID, _boom, schema, cfg)
    assert empty.empty and list(empty.columns) == schema.names


def test_table_batches_are_read_by_the_executors_and_match_local(spark, tmp_path):
    """A TableBatch: the Spark engine reads the bucket range from Delta itself (at the
    pinned version), with the same results per batch as the local engine reading it."""
    from training.engines.base import TableBatch
    from training.tables import BRONZE_READINGS, Lakehouse

    lake, cfg = Lakehouse(str(tmp_path / "lake")), _cfg()
    bronze = _bronze(n_series=12)
    lake.write(BRONZE_READINGS, bronze.drop(columns=["_row"]))
    version = lake.version(BRONZE_READINGS)
    lake.write(BRONZE_READINGS, bronze.drop(columns=["_row"]).iloc[:10])  # not in the pinned version
    ranges = lake.batches(BRONZE_READINGS, version, max_rows=len(bronze) // 3)
    assert len(ranges) >= 3
    cols = tuple(
        c for c in C.BRONZE_READINGS.names if c not in ("_source_file", "_content_hash", "_batch_id")
    )
    batches = [(i, TableBatch(lake, BRONZE_READINGS, r, version, cols)) for i, r in enumerate(ranges)]

    def clean(pdf, config):  # read order is not kept by a Spark read: number rows per group
        return clean_series(pdf.assign(_row=np.arange(len(pdf))), config)

    local = dict(
        LocalEngine(workers=1).map_batches(
            batches, C.SERIES_ID, clean, REFINE_OUT, cfg, on_error=engine_error
        )
    )
    engine = SparkEngine(cfg)
    assert not isinstance(engine.read_batch(batches[0][1]), pd.DataFrame)  # lazy, on the executors
    remote = dict(engine.map_batches(batches, C.SERIES_ID, clean, REFINE_OUT, cfg, on_error=engine_error))
    assert sorted(remote) == sorted(local) == list(range(len(ranges)))
    for key in local:
        pd.testing.assert_frame_equal(_sorted(remote[key]), _sorted(local[key]))
    everything = pd.concat(local.values())
    assert everything[C.SERIES_ID].nunique() == 12 and not everything.duplicated([C.SERIES_ID, C.TS]).any()


JUDGED = pa.schema(
    [
        (C.SERIES_ID, pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("metric_value", pa.float64()),
    ]
)


def test_a_sink_commits_each_batch_from_the_executors_once(spark, tmp_path):
    """``map_batches(..., sink=...)``: each batch committed by the engine in a commit of
    its own (Spark: by delta-spark, the group function run once per series although the
    rows are both counted and written), the same rows, counts and commit metadata as the
    local engine's; a series too large to ship gets its on_error rows committed with them."""
    from training.engines.base import Sink, TableBatch
    from training.tables import BRONZE_READINGS, GOLD_SELECTION, Lakehouse

    bronze, cfg = _bronze(n_series=9).drop(columns=["_row"]), _cfg()
    when = pd.Timestamp("2024-03-02", tz="UTC")
    out: dict[str, tuple[Lakehouse, dict]] = {}
    for name, engine in (("local", LocalEngine(workers=1)), ("spark", SparkEngine(cfg))):
        lake = Lakehouse(str(tmp_path / name / "lake"))
        lake.write(BRONZE_READINGS, bronze)
        version = lake.version(BRONZE_READINGS)
        ranges = lake.batches(BRONZE_READINGS, version, max_rows=len(bronze) // 3)
        batches = [(i, TableBatch(lake, BRONZE_READINGS, r, version)) for i, r in enumerate(ranges)]
        calls = tmp_path / name / "calls"
        calls.mkdir()

        def sink(i: int, lake: Lakehouse = lake, n: int = len(ranges)) -> Sink:
            meta = {"mmf.batch": i, "mmf.batches": n}
            return Sink(lake, GOLD_SELECTION, {"run_id": "r1", "silver_version": i, "created_at": when}, meta)

        def judge(pdf: pd.DataFrame, config, calls: str = str(calls)) -> pd.DataFrame:
            """One row per series (``failed`` for some), each call leaving a file in ``calls``
            (local, so that it pickles by value to the workers)."""
            sid = str(pdf[C.SERIES_ID].iloc[0])
            (Path(calls) / f"{sid}-{uuid.uuid4().hex}").touch()
            status = C.FAILED if sum(map(ord, sid)) % 2 else C.OK
            row = {
                C.SERIES_ID: [sid],
                "status": [status],
                "reason": [None],
                "metric_value": [float(len(pdf))],
            }
            return pd.DataFrame(row)

        out[name] = lake, dict(engine.map_batches(batches, C.SERIES_ID, judge, JUDGED, cfg, sink=sink))
        assert len(list(calls.iterdir())) == 9, f"{name}: a series computed twice or not at all"

    (lake, local), (lake_s, remote) = out["local"], out["spark"]
    assert sorted(remote) == sorted(local) and len(local) >= 3
    for key, summary in local.items():
        assert (remote[key].rows, remote[key].statuses) == (summary.rows, summary.statuses), key
        assert summary.version is not None and remote[key].version is not None
    assert sum(s.rows for s in remote.values()) == 9
    assert {C.OK, C.FAILED} <= {k for s in remote.values() for k in s.statuses}

    def table(lk: Lakehouse) -> pd.DataFrame:
        return lk.read(GOLD_SELECTION).sort_values(C.SERIES_ID, ignore_index=True)

    pd.testing.assert_frame_equal(table(lake_s), table(lake))
    for lk in (lake, lake_s):
        commits = [c for c in lk.history(GOLD_SELECTION) if "mmf.batch" in c]
        assert sorted(int(c["mmf.batch"]) for c in commits) == sorted(local)
        assert {c["mmf.batches"] for c in commits} == {str(len(local))}
        batch_of = table(lk).groupby("silver_version")[C.SERIES_ID].count().to_dict()
        assert batch_of == {k: s.rows for k, s in local.items() if s.rows}

    # a series too large to ship: its on_error rows, made on the driver, committed with the others
    def too_large(sid: str, why: str) -> pd.DataFrame:
        return pd.DataFrame(
            {C.SERIES_ID: [sid], "status": [C.FAILED], "reason": [why], "metric_value": [None]}
        )

    capped = _cfg(**{"cleaning.max_points_per_series": 96})  # MTR-00004 has 98 rows
    into = partial(lambda lk, i: Sink(lk, GOLD_SELECTION, {"run_id": "r2"}), lake_s)
    sums = SparkEngine(capped).map_batches(
        batches, C.SERIES_ID, judge, JUDGED, capped, on_error=too_large, sink=into
    )
    assert sum(s.rows for _, s in sums) == 9
    rows = lake_s.read(GOLD_SELECTION, filters=[("run_id", "=", "r2")])
    assert len(rows) == 9 and rows[C.SERIES_ID].is_unique
    assert rows.loc[rows["reason"].str.startswith("too_large", na=False), C.SERIES_ID].tolist() == [
        "MTR-00004"
    ]
