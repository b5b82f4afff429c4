"""Helpers of the reliability suite: tiny data, `mmf` in a real subprocess, and
snapshots of every table and of the registry, to compare a run with an uninterrupted one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import yaml

from training.tables import TABLE_NAMES

REPO = Path(__file__).resolve().parents[2]
N_SERIES, DAYS, SEED = 10, 14, 11
# every table a default nightly writes (not gold/scores: mmf score; not gold/hierarchy:
# hierarchy.enabled; not the covariate tables: mmf ingest --covariates)
OPT_IN = {"gold/scores", "gold/hierarchy", "bronze/covariates", "silver/covariates"}
TABLES = tuple(t for t in TABLE_NAMES if t not in OPT_IN)
# Columns a rerun legitimately changes: ids of the batch and run, wall-clock times.
VOLATILE = {"_batch_id", "_ingested_at", "run_id", "created_at", "candidates_json"}  # candidates' fit_s
SORT = {
    "bronze/readings": ["series_id", "ts", "y"],
    "silver/readings": ["series_id", "ts"],
    "silver/series": ["series_id"],
    "silver/quarantine": ["series_id"],
    "gold/forecasts": ["series_id", "ts", "model_version"],
    "gold/backtest": ["series_id", "model", "window"],
    "gold/selection": ["series_id"],
    "gold/portfolio": ["level", "key", "day", "model_version"],
    "gold/gate": ["challenger_version", "series_id"],
    "gold/models": ["series_id", "silver_version"],
    "gold/accuracy": ["series_id", "model_version", "cutoff", "lead"],
    "gold/drift": ["series_id", "silver_version"],
    "gold/backtest_forecasts": ["series_id", "model", "window", "lead"],
}
KEYS = {  # no two rows may share these
    "silver/readings": ["series_id", "ts"],
    "gold/forecasts": ["series_id", "ts", "cutoff", "model_version"],
    "gold/backtest": ["run_id", "series_id", "model", "window"],
    "gold/selection": ["run_id", "series_id"],
    "gold/portfolio": ["level", "key", "day", "model_version"],
    "gold/gate": ["run_id", "series_id"],
    "gold/models": ["run_id", "series_id"],
    "gold/backtest_forecasts": ["run_id", "series_id", "model", "window", "lead"],
}


def write_raw(folder: Path, n_series: int = N_SERIES, days: int = DAYS, seed: int = SEED) -> Path:
    from forecasting.generator import generate, write

    folder.mkdir(parents=True, exist_ok=True)
    write(generate(n_series=n_series, days=days, freq="h", seed=seed, clean=True), folder / "meters.parquet")
    return folder


def mlflow_template(folder: Path) -> Path:
    """An empty, migrated MLflow SQLite store: copied into each new lakehouse, it spares
    every test the seconds of creating the schema (the store is otherwise untouched)."""
    from mlflow import MlflowClient

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def new_lake(path: Path, template: Path | None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if template is not None:
        shutil.copyfile(template, path / "mlflow.db")
    return path


def write_conf(path: Path, lake: Path, source: Path | None, **extra) -> Path:
    """A YAML config: tiny and fast (one model, horizon 24, min_length 96)."""
    data = {
        "lakehouse": str(lake),
        "horizon": 24,
        "models": ["seasonal_naive"],
        "workers": 1,
        "cleaning": {"min_length": 96},
        "mlflow": {"sample_plots": 0},
        "nightly": {"source": str(source) if source else None},
    }
    for key, value in extra.items():
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path.write_text(yaml.safe_dump(data))
    return path


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        # mlflow.set_tracking_uri / set_registry_uri export MLFLOW_TRACKING_URI and
        # MLFLOW_REGISTRY_URI: an in-process test's store must not reach a subprocess
        if not k.startswith(("MMF_", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PYTEST_"))
    }
    env.update(PYTHONUNBUFFERED="1", MLFLOW_ENABLE_ASYNC_LOGGING="false", GIT_PYTHON_REFRESH="quiet")
    env.update(extra)
    return env


# ``mmf`` through the launcher that installs the fault hook (tests/reliability/faults.py)
# from the environment: MMF_TEST_KILL_AT, MMF_TEST_PAUSE_AT.
LAUNCH = [sys.executable, "-m", "tests.reliability.launch"]


def mmf(*args: str, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    """``mmf ARGS`` in a fresh Python process (killed processes included)."""
    return subprocess.run(
        [*LAUNCH, *args],
        cwd=REPO,
        env=clean_env(**(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def mmf_lanes(
    *lanes: list[list[str]], env: dict[str, str] | None = None
) -> list[subprocess.CompletedProcess]:
    """``mmf`` commands in lanes: each lane's commands one after the other, the lanes at
    once (each process starting up takes a core for seconds: two lanes keep both cores of
    a CI machine busy). Only commands that cannot disturb each other may share a moment:
    two writing commands go in the same lane (the lakehouse lock refuses the second one).
    Returns the results lane by lane, in the order given."""
    with ThreadPoolExecutor(max_workers=len(lanes)) as pool:
        done = list(pool.map(lambda lane: [mmf(*args, env=env) for args in lane], lanes))
    return [proc for lane in done for proc in lane]


def mmf_bg(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [*LAUNCH, *args],
        cwd=REPO,
        env=clean_env(**(env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def lake_of(root: Path):
    from training.tables import Lakehouse

    return Lakehouse(str(root))


def table(root: Path, name: str, version: int | None = None, volatile: bool = False) -> pd.DataFrame:
    """Rows of a table, sorted, without the columns a rerun legitimately changes."""
    frame = lake_of(root).read(name, version=version)
    if not volatile:
        frame = frame.drop(columns=[c for c in frame.columns if c in VOLATILE])
    return frame.sort_values(SORT[name], kind="stable").reset_index(drop=True)


def tables(root: Path) -> dict[str, pd.DataFrame]:
    lake = lake_of(root)
    return {name: table(root, name) for name in TABLES if lake.exists(name)}


def registry_state(root: Path) -> dict:
    """Versions (with their run's silver version and series count) and aliases."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = "mmf-many-models"
    versions = sorted(client.search_model_versions(f"name = '{name}'"), key=lambda mv: int(mv.version))
    return {
        "versions": [
            (
                mv.version,
                mv.status,
                (mv.tags or {}).get("mmf.silver_version"),
                (mv.tags or {}).get("mmf.n_series"),
            )
            for mv in versions
        ],
        "aliases": {k: str(v) for k, v in sorted(client.get_registered_model(name).aliases.items())}
        if versions
        else {},
    }


def runs(root: Path) -> list:
    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("mmf")
    return client.search_runs([exp.experiment_id]) if exp else []


def assert_no_duplicates(root: Path) -> None:
    lake = lake_of(root)
    for name, keys in KEYS.items():
        if lake.exists(name):
            frame = lake.read(name)
            dups = frame[frame.duplicated(keys, keep=False)]
            assert dups.empty, f"{name}: duplicated {keys}:\n{dups.head()}"
    if lake.exists("bronze/readings"):
        bronze = lake.read("bronze/readings")
        assert not bronze.duplicated(["series_id", "ts", "_source_file"]).any(), "a file was ingested twice"


def assert_same_tables(got: dict[str, pd.DataFrame], want: dict[str, pd.DataFrame], names=TABLES) -> None:
    for name in names:
        assert (name in got) == (name in want), f"{name}: present {name in got}, expected {name in want}"
        if name in want:
            pd.testing.assert_frame_equal(got[name], want[name], check_exact=False, rtol=1e-9, obj=name)


def assert_runs_explained(root: Path) -> list:
    """No run left RUNNING; every other unfinished run says why; one finished training
    run, the one the registered version and Gold name."""
    all_runs = runs(root)
    assert all(r.info.status != "RUNNING" for r in all_runs), [
        (r.info.run_id, r.info.status) for r in all_runs
    ]
    for r in all_runs:
        if r.info.status != "FINISHED":
            assert r.info.status == "FAILED" and r.data.tags.get("mmf.failure"), (r.info.status, r.data.tags)
    finished = [r for r in all_runs if r.info.status == "FINISHED"]
    assert len(finished) == 1, [(r.info.run_id, r.info.status) for r in all_runs]
    run_id = finished[0].info.run_id
    lake = lake_of(root)
    assert set(lake.read("gold/selection")["run_id"]) == {run_id}
    assert set(lake.read("gold/forecasts")["run_id"]) == {run_id}
    return all_runs


# The ingest job itself (no CLI, so no lakehouse lock) with the fault hook installed: two
# of them at once exercise Delta's optimistic concurrency, as on a remote lakehouse.
INGEST_JOB = """
import sys
from tests.reliability.faults import Faults
from training import checkpoints
from training.jobs.ingest import ingest
from training.tables import Lakehouse

checkpoints.set_hook(Faults.from_env())
report = ingest(Lakehouse(sys.argv[1]), sys.argv[2])
print(report.bronze_version)
print("added:", ",".join(report.added))
print("skipped:", ",".join(report.skipped))
"""


def ingest_job_bg(root: Path, source: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", INGEST_JOB, str(root), str(source)],
        cwd=REPO,
        env=clean_env(**(env or {})),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
