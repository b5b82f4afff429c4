"""Shared fixtures: every test gets its own lakehouse folder and its own MLflow store."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


@pytest.fixture
def lake_root(tmp_path):
    root = tmp_path / "lake"
    root.mkdir()
    return root


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    """A fresh SQLite tracking + registry store (and artifact folder) for this test."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture
def checkpoint_hook():
    """``checkpoint_hook(fn)`` installs ``fn`` as this process's checkpoint hook
    (:mod:`training.checkpoints`, e.g. a :class:`tests.reliability.faults.Faults`); the
    hook installed before the test is back after it."""
    from training import checkpoints

    previous = checkpoints.installed()
    yield checkpoints.set_hook
    checkpoints.set_hook(previous)


@pytest.fixture
def config(lake_root, mlflow_uri):
    """A small, fast config on a fresh lakehouse and MLflow store."""
    from forecasting.config import load_config

    return load_config(
        lakehouse=str(lake_root),
        horizon=24,
        models=["seasonal_naive"],
        workers=2,
        **{"cleaning.min_length": 48, "backtest.windows": 1},
    )


# -- Spark (one session for the whole test run) ------------------------------------------
SPARK_TEST_MASTER = "local[2,2]"  # 2 cores; a failed task is retried once (retry tests)
SPARK_TEST_CONF = {
    "spark.ui.enabled": "false",
    "spark.sql.execution.pyspark.udf.simplifiedTraceback.enabled": "false",
    "spark.driver.memory": "1g",
    "spark.default.parallelism": "2",
    "spark.sql.shuffle.partitions": "2",
    # tiny data: planning and compiling cost more than running, so skip what only pays
    # off at scale (C2 JIT, adaptive plans, code generation, Delta's extra log work)
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
    "spark.sql.adaptive.enabled": "false",
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",
    "spark.databricks.delta.snapshotPartitions": "1",
    "spark.databricks.delta.stats.collect": "false",
    "spark.databricks.delta.writeChecksumFile.enabled": "false",
    "spark.databricks.delta.stateReconstructionValidation.enabled": "false",
}


@pytest.fixture(scope="session")
def spark_submit_args() -> str:
    """``PYSPARK_SUBMIT_ARGS`` giving a Spark started in a subprocess (``mmf ... --engine
    spark``) the test session's settings."""
    import shlex

    return (
        " ".join(f"--conf {shlex.quote(f'{k}={v}')}" for k, v in SPARK_TEST_CONF.items()) + " pyspark-shell"
    )


@pytest.fixture(scope="session")
def spark_nightly(spark_submit_args):
    """``run(conf, folder, timeout=..., **env)``: ``mmf nightly --engine spark --conf conf``
    in its own process (its own JVM, ``local[2]`` with the session's settings), its
    lakehouse ``folder/lake`` and MLflow store ``folder/mlflow.db``; ``env`` adds variables."""
    import subprocess
    import sys
    from pathlib import Path

    mmf = str(Path(sys.executable).with_name("mmf"))

    def run(conf: Path, folder: Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
        full_env = {
            **os.environ,
            "MMF_LAKEHOUSE": str(folder / "lake"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
            "SPARK_MASTER": "local[2]",
            "PYSPARK_SUBMIT_ARGS": spark_submit_args,
            **env,
        }
        return subprocess.run(
            [mmf, "nightly", "--engine", "spark", "--conf", str(conf)],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture(scope="session")
def spark():
    """The process's SparkSession, started once for every Spark test (skipped when the
    spark extra is not installed; a missing JVM is an error, not a skip)."""
    pytest.importorskip("pyspark")
    pytest.importorskip("delta")
    from forecasting.config import load_config
    from training.tables.spark_session import get_spark, stop_spark

    session = get_spark(load_config(**{"spark.master": SPARK_TEST_MASTER}), conf=SPARK_TEST_CONF)
    yield session
    stop_spark()


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory):
    """A Spark standalone cluster for the session: a master and two workers (``--cores 1
    --memory 1g`` each), separate JVMs on 127.0.0.1 (:mod:`tests.spark_cluster`), stopped
    at the end. A driver joins it with ``spark.master = spark_cluster.url`` and
    ``PYSPARK_SUBMIT_ARGS = spark_cluster.submit_args(SPARK_TEST_CONF)``."""
    pytest.importorskip("pyspark")
    pytest.importorskip("delta")
    from tests.spark_cluster import start_cluster

    cluster = start_cluster(tmp_path_factory.mktemp("spark-cluster"))
    yield cluster
    cluster.stop()
