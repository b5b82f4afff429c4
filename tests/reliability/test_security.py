"""Nothing is unpickled: the many-models pyfunc is logged as code plus data (no pickle
file among its artifacts or its run's), fitted models are rebuilt only through the
registry of model names, and the MLflow pin is past the 2.x CVEs. ``mmf sql`` reads the
lakehouse tables and nothing else: no file, no write, no extension."""

from __future__ import annotations

import configparser
import json
import shutil
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from reliability_support import N_SERIES, REPO, lake_of, mmf, write_conf

from forecasting.errors import MMFError, UnknownModelError
from forecasting.pipeline import load_fitted
from training.jobs.sql import check_read_only, run_sql

PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".cloudpickle", ".pt", ".pth")


def _is_pickle(path: Path) -> bool:
    head = path.read_bytes()[:2]
    return path.suffix in PICKLE_SUFFIXES or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def test_logged_model_and_run_hold_no_pickle(reference, tmp_path):
    uri = f"sqlite:///{reference.lake / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mv = client.get_model_version("mmf-many-models", "1")
    model_id = mv.model_id or mv.source.removeprefix("models:/")  # the registered source: models:/<model id>
    location = client.get_logged_model(model_id).artifact_location
    model_dir = Path(download_artifacts(artifact_uri=location, dst_path=str(tmp_path / "model")))
    run_dir = Path(download_artifacts(run_id=mv.run_id, dst_path=str(tmp_path / "run"), tracking_uri=uri))
    files = [p for d in (model_dir, run_dir) for p in d.rglob("*") if p.is_file()]
    assert any(p.name == "models.parquet" for p in files) and any(p.name == "results.parquet" for p in files)
    assert [str(p) for p in files if _is_pickle(p)] == []
    flavor = yaml.safe_load((model_dir / "MLmodel").read_text())["flavors"]["python_function"]
    # models from code: MLflow imports the logged mmf_many_models.py, no pickled python_model
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model" and "python_model" not in flavor
    assert Path(flavor["model_code_path"]).name == "mmf_many_models.py"
    assert (model_dir / "mmf_many_models.py").is_file()


def test_load_fitted_refuses_names_outside_the_registry_without_importing():
    for name in ("antigravity", "os.system", "__import__('os')"):
        with pytest.raises(UnknownModelError, match="valid models are"):
            load_fitted(json.dumps({"model": name, "format_version": 1, "state": {}}))
    assert "antigravity" not in sys.modules
    ensemble = {"model": "ensemble", "format_version": 1, "method": "mean", "members": [{"model": "pickle"}]}
    with pytest.raises(UnknownModelError):
        load_fitted(json.dumps(ensemble))


def test_mlflow_pin_is_past_the_2x_cves():
    """setup.cfg requires MLflow 3.1 or later, past the path-traversal and file-access CVEs
    of 2.x (CVE-2023-6831, CVE-2023-6909, CVE-2024-1483, CVE-2024-1558, CVE-2024-2928,
    CVE-2024-3573: fixed in 2.9-2.12), and the installed MLflow satisfies the pin. The
    pickle-deserialization CVEs (CVE-2024-37052..37060) have no fixed version: they are
    avoided by never logging or loading a pickled model (test above)."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    reqs = [r.split("#")[0].strip() for r in cfg["options"]["install_requires"].splitlines()]
    [pin] = [r for r in reqs if r.startswith("mlflow")]
    floor = tuple(int(x) for x in pin.split(">=")[1].split(",")[0].split(".")[:2])
    assert floor >= (3, 1), pin
    installed = tuple(int(x) for x in metadata.version("mlflow").split(".")[:2])
    assert installed >= floor


# -- mmf sql is read-only over the lakehouse tables ---------------------------------------------


@pytest.fixture(scope="module")
def sql_lake(reference, tmp_path_factory):
    """A copy of the reference lakehouse (the attacks must not reach the shared one)."""
    tmp = tmp_path_factory.mktemp("sql")
    lake = tmp / "lake"
    shutil.copytree(reference.lake, lake)
    return lake, write_conf(tmp / "conf.yaml", lake, None)


READS = [
    "SELECT model, count(*) FROM gold.current_selection GROUP BY 1",  # README
    "SELECT model, count(*) FROM gold.selection GROUP BY 1",
    "SELECT series_id, yhat FROM gold.forecasts ORDER BY series_id, ts LIMIT 3",
    "WITH f AS (SELECT * FROM gold.forecasts) SELECT count(*) AS n FROM f",
    "  -- a comment\n select count(*) as n from silver.readings;",
    "FROM silver.series SELECT series_id",
    "SHOW TABLES",
    "DESCRIBE gold.forecasts",
    "SUMMARIZE silver.readings",
    "PRAGMA table_info('gold.forecasts')",
    "EXPLAIN SELECT * FROM bronze.readings",
    "SELECT 'COPY; DELETE' AS text",
]


@pytest.mark.parametrize("statement", READS)
def test_sql_runs_read_only_queries(sql_lake, statement):
    lake, _ = sql_lake
    out = run_sql(lake_of(lake), statement)
    assert len(out) > 0


def attacks(root: Path) -> dict[str, str]:
    log = root / "gold" / "forecasts" / "_delta_log"
    return {
        "copy into the log": f"COPY (SELECT 1 AS x) TO '{log / '00000000000000000099.json'}'",
        "copy after a select": f"SELECT 1; COPY (SELECT 1 AS x) TO '{root / 'out.csv'}'",
        "read a file": "SELECT * FROM read_csv('/etc/passwd')",
        "read a file by name": "SELECT * FROM '/etc/passwd'",
        "read a file in a CTE": "WITH p AS (SELECT * FROM read_text('/etc/passwd')) SELECT * FROM p",
        "attach": f"ATTACH '{root / 'other.db'}' AS other",
        "install": "INSTALL httpfs",
        "load": "LOAD httpfs",
        "create": "CREATE TABLE t AS SELECT 1 AS x",
        "insert": "INSERT INTO gold.selection SELECT * FROM gold.selection",
        "delete": "DELETE FROM gold.selection",
        "update": "UPDATE gold.selection SET model = 'x'",
        "drop": "DROP VIEW gold.forecasts",
        "set": "SET enable_external_access = true",
        "pragma set": "PRAGMA threads = 1",
        "call": "CALL pragma_version()",
        "export": f"EXPORT DATABASE '{root / 'dump'}'",
    }


def test_sql_refuses_writes_files_attach_and_extensions(sql_lake):
    lake, conf = sql_lake
    before = sorted(p.name for p in (lake / "gold" / "forecasts" / "_delta_log").iterdir())
    for what, statement in attacks(lake).items():
        with pytest.raises(MMFError) as err:
            run_sql(lake_of(lake), statement)
        message = str(err.value)
        assert "\n" not in message and "mmf sql" in message, (what, message)
    assert sorted(p.name for p in (lake / "gold" / "forecasts" / "_delta_log").iterdir()) == before
    assert (
        not (lake / "out.csv").exists() and not (lake / "other.db").exists() and not (lake / "dump").exists()
    )
    assert len(lake_of(lake).read("gold/forecasts")) == N_SERIES * 24

    # the command line: one clean error line, exit 2, the table intact
    proc = mmf("sql", attacks(lake)["copy into the log"], "--conf", str(conf))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: mmf sql runs read-only queries: COPY is refused")
    read = mmf("sql", "SELECT count(*) AS n FROM gold.forecasts", "--conf", str(conf), "--format", "csv")
    assert read.returncode == 0 and read.stdout.split() == ["n", str(N_SERIES * 24)], read.stderr


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO gold_forecasts SELECT * FROM gold_forecasts",
        "DROP VIEW gold_forecasts",
        "CREATE TABLE t AS SELECT 1",
        "SET spark.sql.runSQLOnFiles = true",
        "SELECT 1; DROP VIEW gold_forecasts",
        "WITH f AS (SELECT 1) INSERT INTO gold_forecasts SELECT * FROM f",
        "SELECT * FROM csv.`/etc/passwd`",
        "SELECT reflect('java.lang.System', 'getProperty', 'user.home')",
    ],
)
def test_spark_sql_refuses_what_is_not_a_read(tmp_path, statement):
    """Refused before Spark starts: the statement never reaches a session."""
    with pytest.raises(MMFError, match="mmf sql runs read-only queries"):
        run_sql(lake_of(tmp_path / "lake"), statement, engine="spark")
    check_read_only("WITH f AS (SELECT 1 AS x) SELECT * FROM f", engine="spark")  # a read passes
