"""The Spark engine on a real cluster: a Spark standalone master and two workers, each a
separate JVM with its own memory cap (the ``spark_cluster`` fixture). ``mmf ingest`` and
``mmf nightly --engine spark`` run as the CLI runs them, with ``spark.master`` pointing at
the cluster; the per-series work runs in both workers' executors, the results come back
through a folder the driver and the executors share, and Gold is readable by ``deltalake``
and by Spark on the cluster (the executors read the Delta tables), with the forecasts,
backtests, choices and portfolio the local engine makes of the same data."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
import yaml

pytest.importorskip("pyspark")
pytest.importorskip("delta")

from forecasting import contract as C  # noqa: E402
from forecasting.config import load_config  # noqa: E402
from forecasting.generator import generate, write  # noqa: E402
from tests.conftest import SPARK_TEST_CONF  # noqa: E402
from tests.spark_cluster import cluster_env  # noqa: E402
from tests.test_pipeline_engines import assert_same_gold  # noqa: E402
from training.jobs.nightly import nightly  # noqa: E402
from training.tables import (  # noqa: E402
    GOLD_BACKTEST,
    GOLD_BACKTEST_FORECASTS,
    GOLD_FORECASTS,
    GOLD_PORTFOLIO,
    GOLD_SELECTION,
    Lakehouse,
    to_arrow,
)
from training.tables.spark_session import (  # noqa: E402
    RESULTS_DIR_CONF,
    RESULTS_DIR_ENV,
    results_dir,
    to_pandas,
    to_spark,
)

pytestmark = pytest.mark.spark
MMF = str(Path(sys.executable).with_name("mmf"))
SETTINGS = {
    "horizon": 24,
    "models": ["seasonal_naive", "theta"],
    "workers": 2,
    "cleaning": {"min_length": 168},
}
GOLD = {
    "forecasts": (GOLD_FORECASTS, [C.SERIES_ID, C.TS]),
    "backtest": (GOLD_BACKTEST, [C.SERIES_ID, "model", "window"]),
    "selection": (GOLD_SELECTION, [C.SERIES_ID]),
    "portfolio": (GOLD_PORTFOLIO, ["level", "key", "day"]),
    "backtest_forecasts": (GOLD_BACKTEST_FORECASTS, [C.SERIES_ID, "model", "window", "lead"]),
}
# Reads every Gold table with Spark (training.tables.spark.SparkTables) on the master in
# SPARK_MASTER and pickles the pandas frames (exact dtypes) for the test to compare.
READ_GOLD_WITH_SPARK = """
import sys
from training.tables import Lakehouse
from training.tables.spark import SparkTables
tables = SparkTables(Lakehouse(sys.argv[1]))
for name in sys.argv[3:]:
    tables.read_pandas(name).to_pickle(f"{sys.argv[2]}/{name.replace('/', '_')}.pkl")
print("master", tables.spark.sparkContext.master)
"""


def _gold(read) -> dict[str, pd.DataFrame]:
    return {key: read(name).sort_values(keys, ignore_index=True) for key, (name, keys) in GOLD.items()}


def _run(args: list[str], env: dict[str, str], timeout: float = 480) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args[:3]}: {proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def test_nightly_on_a_standalone_cluster_matches_local(spark_cluster, tmp_path, mlflow_uri):
    started = time.monotonic()
    data = generate(n_series=6, days=21, freq="h", seed=11, fault_share=0.25)
    source = tmp_path / "raw" / "meters.parquet"
    source.parent.mkdir()
    write(data, source)
    conf = tmp_path / "conf.yaml"
    conf.write_text(yaml.safe_dump({**SETTINGS, "spark": {"master": spark_cluster.url}}))
    lake = tmp_path / "lake"
    env = {
        **cluster_env(),
        "MMF_LAKEHOUSE": str(lake),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'cluster-mlflow.db'}",
        "PYSPARK_SUBMIT_ARGS": spark_cluster.submit_args(SPARK_TEST_CONF),
    }
    env.pop("SPARK_MASTER", None)  # the config names the cluster

    _run([MMF, "ingest", "--source", str(source), "--conf", str(conf)], env)
    apps = spark_cluster.apps()
    out = _run([MMF, "nightly", "--engine", "spark", "--conf", str(conf)], env).stdout
    assert "train      done" in out and "forecast   done" in out and "aggregate  done" in out, out

    # the nightly was one application of the cluster, and both workers' executors ran its tasks
    (app,) = spark_cluster.apps() - apps
    tasks = spark_cluster.tasks_per_worker(app)
    assert all(n > 0 for n in tasks.values()), tasks
    for worker in tasks:  # the Delta jars (spark.jars.packages) reached every executor
        assert list((spark_cluster.folder / worker / app).glob("*/io.delta_delta-spark_*.jar")), worker
    results = Path(spark_cluster.folder / "results")
    # rows staged for the driver (if any path still stages them) are cleaned up
    assert not results.is_dir() or not list(results.iterdir())

    # Gold as deltalake reads it, and as Spark reads it on the cluster (executors read Delta)
    on_cluster = _gold(Lakehouse(str(lake)).read)
    folder = tmp_path / "read-by-spark"
    folder.mkdir()
    names = [name for name, _ in GOLD.values()]
    read = _run(
        [sys.executable, "-c", READ_GOLD_WITH_SPARK, str(lake), str(folder), *names],
        {**env, "SPARK_MASTER": spark_cluster.url},
    )
    assert f"master {spark_cluster.url}" in read.stdout
    by_spark = _gold(lambda name: pd.read_pickle(folder / f"{name.replace('/', '_')}.pkl"))
    for key in GOLD:
        pd.testing.assert_frame_equal(by_spark[key], on_cluster[key], check_exact=True, obj=key)
    cluster_s = time.monotonic() - started

    # the local engine on the same data writes the same Gold (in this process: a pool of
    # worker processes would only add their start-up to the test)
    cfg = load_config(
        lakehouse=str(tmp_path / "local-lake"),
        engine="local",
        horizon=SETTINGS["horizon"],
        models=SETTINGS["models"],
        workers=1,
        **{
            "cleaning.min_length": SETTINGS["cleaning"]["min_length"],
            "mlflow.tracking_uri": mlflow_uri,
            "nightly.source": str(source.parent),
        },
    )
    local = nightly(Lakehouse.from_config(cfg), cfg)
    assert not local.failed
    assert len(on_cluster["forecasts"]) > 0
    assert_same_gold(_gold(Lakehouse.from_config(cfg).read), on_cluster)
    print(f"on the cluster: {cluster_s:.0f}s ({os.cpu_count()} cores)")


def test_results_come_back_through_the_shared_folder(spark, tmp_path, monkeypatch):
    """``spark.mmf.resultsDir`` / ``MMF_SPARK_RESULTS_DIR`` name the folder results are
    staged in (a ``local`` master uses the temporary folder without them); the staged
    files are gone once the frame is on the driver."""
    monkeypatch.delenv(RESULTS_DIR_ENV, raising=False)
    assert results_dir(spark) == tempfile.gettempdir()
    schema = pa.schema([(C.SERIES_ID, pa.string()), (C.TS, pa.timestamp("us")), ("yhat", pa.float64())])
    frame = pd.DataFrame(
        {
            C.SERIES_ID: ["a", "b", "c"],
            C.TS: pd.date_range("2024-01-01", periods=3, freq="h"),
            "yhat": [1.0, 2.5, None],
        }
    )
    df = to_spark(spark, frame, schema)
    shared = tmp_path / "shared"
    monkeypatch.setenv(RESULTS_DIR_ENV, str(shared))
    assert results_dir(spark) == str(shared)
    back = to_pandas(df, schema).sort_values(C.SERIES_ID, ignore_index=True)
    pd.testing.assert_frame_equal(back, to_arrow(frame, schema).to_pandas())
    assert shared.is_dir() and not list(shared.iterdir())
    empty = to_pandas(df.where("yhat > 100"), schema)
    assert len(empty) == 0 and list(empty.columns) == schema.names
    spark.conf.set(RESULTS_DIR_CONF, (tmp_path / "conf").as_uri())  # the Spark setting comes first
    try:
        assert results_dir(spark) == (tmp_path / "conf").as_uri()
        assert len(to_pandas(df, schema)) == 3 and (tmp_path / "conf").is_dir()
    finally:
        spark.conf.unset(RESULTS_DIR_CONF)
