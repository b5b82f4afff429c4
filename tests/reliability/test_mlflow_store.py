"""A process killed while MLflow builds its schema must not leave a tracking store that
every later start refuses ("table _alembic_tmp_latest_metrics already exists").

MLflow creates a new SQLite store in place: the initial tables, then one migration after
another, each committed on its own (SQLite DDL is not held in a transaction). The
half-made stores below are made by exactly that: MLflow's own setup in a real process,
SIGKILLed by itself after a given SQL statement (a SQLAlchemy event hook in the child),
so each kill point is the same every run. ``mmf train`` must then train and register as
on a fresh lakehouse. A real ``mmf train`` killed while it sets up a new store must leave
the store path absent or whole, never half-made.
"""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from reliability_support import (
    assert_same_tables,
    mmf,
    mmf_bg,
    registry_state,
    runs,
    tables,
    write_conf,
)

from forecasting.errors import RegistryError
from registry.connection import ensure_store, store_state

# MLflow's own store setup, killed (SIGKILL, by itself) right after the nth SQL statement
# that contains a given text.
SETUP_KILLED_AT = r"""
import os, signal, sys
import sqlalchemy
from mlflow import MlflowClient

path, text, nth = sys.argv[1], sys.argv[2], int(sys.argv[3])
seen = 0

@sqlalchemy.event.listens_for(sqlalchemy.engine.Engine, "after_cursor_execute")
def stop(conn, cursor, statement, *args):
    global seen
    if text in statement:
        seen += 1
        if seen == nth:
            os.kill(os.getpid(), signal.SIGKILL)

MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
"""

KILL_POINTS = {
    # a migration rebuilds a table through a temporary copy: the probe's state
    "migration_temp_table_left": ("CREATE TABLE _alembic_tmp_", 1),
    # some migrations done and recorded, the next ones not
    "between_migrations": ("UPDATE alembic_version", 5),
    # the initial tables only, no revision recorded yet
    "initial_tables_only": ("CREATE TABLE experiments", 1),
}


def half_made_store(path: Path, text: str, nth: int) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SETUP_KILLED_AT, str(path), text, str(nth)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -signal.SIGKILL, (done.returncode, done.stderr[-2000:])


def lake_with_silver(reference, root: Path) -> Path:
    """A lakehouse holding the reference's bronze and silver and no MLflow store."""
    for name in ("bronze", "silver"):
        shutil.copytree(reference.lake / name, root / name)
    return root


def table_names(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def assert_trained_like_the_reference(reference, lake: Path, done) -> None:
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert store_state(lake / "mlflow.db")[0] == "complete"
    assert registry_state(lake) == reference.registry
    assert_same_tables(tables(lake), reference.tables, names=("gold/backtest", "gold/selection"))
    assert [r.info.status for r in runs(lake)] == ["FINISHED"]


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_train_starts_on_a_store_whose_setup_was_killed(reference, tmp_path, point):
    lake = lake_with_silver(reference, tmp_path / "lake")
    store = lake / "mlflow.db"
    half_made_store(store, *KILL_POINTS[point])
    assert store_state(store)[0] != "complete"  # the kill left it half-made
    if point == "migration_temp_table_left":
        assert any(t.startswith("_alembic_tmp_") for t in table_names(store))

    conf = write_conf(tmp_path / "conf.yaml", lake, None)
    assert_trained_like_the_reference(reference, lake, mmf("train", "--conf", str(conf)))


def test_a_train_killed_while_it_creates_the_store_leaves_it_absent_or_whole(reference, tmp_path):
    lake = lake_with_silver(reference, tmp_path / "lake")
    conf = write_conf(tmp_path / "conf.yaml", lake, None)
    store = lake / "mlflow.db"
    proc = mmf_bg("train", "--conf", str(conf))
    try:
        deadline = time.monotonic() + 180
        while not (store.exists() or any(lake.glob(".mlflow.db.init-*"))):
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "mmf train never started to create the MLflow store"
            time.sleep(0.01)
        time.sleep(0.5)  # inside the schema setup (it takes seconds)
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert store_state(store)[0] in ("absent", "complete")

    assert_trained_like_the_reference(reference, lake, mmf("train", "--conf", str(conf)))
    assert not list(lake.glob(".mlflow.db.init-*"))  # the killed build's file is cleaned up


def test_a_half_made_store_that_holds_runs_is_never_rebuilt(reference, tmp_path):
    store = tmp_path / "mlflow.db"
    shutil.copyfile(reference.lake / "mlflow.db", store)
    with sqlite3.connect(store) as db:  # a migration stopped after copying a table
        db.execute("CREATE TABLE _alembic_tmp_latest_metrics (key VARCHAR(250))")
    before = store.read_bytes()
    assert store_state(store) == ("partial", 2)  # one run, one registered model

    with pytest.raises(RegistryError, match="half-migrated .* holds 2 run"):
        ensure_store(f"sqlite:///{store}")
    assert store.read_bytes() == before
