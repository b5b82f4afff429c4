"""Kill `mmf nightly` with SIGKILL at every stage, start it again, and compare with an
uninterrupted run on the same data: the same bronze, silver, quarantine and Gold rows
(ignoring run ids and wall-clock times), no duplicated rows, the same registry state
(one version, the same aliases), and no MLflow run left RUNNING or failed without a
reason. The kill points are the checkpoints of :mod:`training.checkpoints`, where the
test's hook (``MMF_TEST_KILL_AT``, tests/reliability/faults.py) kills the process.

At the kill, every table a reader can see must already hold exactly its final content:
each step of a first nightly writes each table once, so a table that is visible but
different would be a half-written version.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest
from reliability_support import (
    TABLES,
    assert_no_duplicates,
    assert_runs_explained,
    assert_same_tables,
    mmf,
    new_lake,
    registry_state,
    runs,
    tables,
    write_conf,
)

# One kill point per stage runs by default; the others are marked slow.
DEFAULT_POINTS = [
    "after_ingest_commit",  # ingest
    "mid_refine",  # refine: one silver table of three committed
    "mid_train",  # training, inside the engine loop
    "after_register",  # the MLflow registration: version registered, not gated
    "after_gold_selection",  # the Gold commit of training: rows written, run not ended
    "after_forecast_commit",  # forecast committed, portfolio not
]
SLOW_POINTS = [
    "before_ingest_commit",
    "before_register",
    "after_gate",
    "after_gold_backtest",
    "before_forecast_commit",
]


def kill_and_restart(reference, tmp_path, point: str):
    lake = new_lake(tmp_path / "lake", reference.template)
    # the engine loop runs in a process pool where a kill inside it matters
    conf = write_conf(tmp_path / "conf.yaml", lake, reference.raw, workers=2 if point == "mid_train" else 1)

    killed = mmf("nightly", "--conf", str(conf), env={"MMF_TEST_KILL_AT": point})
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])

    # what a reader sees at the kill: only whole, final table versions
    at_kill = tables(lake)
    assert bool(at_kill) == (point != "before_ingest_commit"), sorted(at_kill)
    for name, frame in at_kill.items():
        assert_same_tables({name: frame}, {name: reference.tables[name]}, names=[name])
    stale = [r for r in runs(lake) if r.info.status == "RUNNING"]

    again = mmf("nightly", "--conf", str(conf))
    assert again.returncode == 0, again.stderr[-3000:]

    assert_same_tables(tables(lake), reference.tables)
    assert_no_duplicates(lake)
    assert registry_state(lake) == reference.registry
    all_runs = assert_runs_explained(lake)
    for run in stale:  # the killed job's run was found on restart and explained
        after = next(r for r in all_runs if r.info.run_id == run.info.run_id)
        assert after.data.tags.get("mmf.failure") or after.data.tags.get("mmf.recovered"), after.data.tags
    return at_kill, all_runs, again


@pytest.mark.parametrize("point", DEFAULT_POINTS)
def test_kill_and_restart(reference, tmp_path, point):
    at_kill, all_runs, again = kill_and_restart(reference, tmp_path, point)
    if point == "after_ingest_commit":
        assert set(at_kill) == {"bronze/readings"}
        assert "skipped: 1 file(s) already ingested" in again.stdout
    if point == "mid_refine":
        assert set(at_kill) == {"bronze/readings", "silver/quarantine"}
    if point == "mid_train":
        # the killed run is re-opened and finished: one run, trained and registered once
        assert len(all_runs) == 1 and all_runs[0].info.status == "FINISHED"
        assert "mmf.recovered" in all_runs[0].data.tags and "mmf.failure" not in all_runs[0].data.tags
    if point == "after_register":
        # not trained or registered again: the killed run was finished from its results
        assert len(all_runs) == 1 and "mmf.recovered" in all_runs[0].data.tags
        assert "gold/selection" not in at_kill
    if point == "after_gold_selection":
        assert "skipped: already trained" in again.stdout and "closed run" in again.stdout
        assert len(all_runs) == 1 and "mmf.recovered" in all_runs[0].data.tags
    if point == "after_forecast_commit":
        assert "gold/forecasts" in at_kill and "gold/portfolio" not in at_kill
        assert "skipped: champion version 1 already forecast" in again.stdout


@pytest.mark.slow
@pytest.mark.parametrize("point", SLOW_POINTS)
def test_kill_and_restart_more_points(reference, tmp_path, point):
    kill_and_restart(reference, tmp_path, point)


@pytest.mark.slow
def test_killed_twice_in_a_row_still_converges(reference, tmp_path):
    """A restart that is itself killed (after finishing the killed run's gate) is
    finished by the next one: still one model version."""
    lake = new_lake(tmp_path / "lake", reference.template)
    conf = write_conf(tmp_path / "conf.yaml", lake, reference.raw)
    first = mmf("nightly", "--conf", str(conf), env={"MMF_TEST_KILL_AT": "after_register"})
    assert first.returncode == -signal.SIGKILL
    second = mmf("nightly", "--conf", str(conf), env={"MMF_TEST_KILL_AT": "after_gate"})
    assert second.returncode == -signal.SIGKILL
    third = mmf("nightly", "--conf", str(conf))
    assert third.returncode == 0, third.stderr[-3000:]
    assert_same_tables(tables(lake), reference.tables, names=[t for t in TABLES if t.startswith("gold")])
    assert registry_state(lake) == reference.registry
    assert len(assert_runs_explained(lake)) == 1


def test_orphans_are_marked_failed_but_live_runs_are_left_alone(tmp_path, config):
    """mark_orphans_failed: a RUNNING run of a live pid on this host is left alone; once
    that process is killed, the next call marks it FAILED with the reason."""
    from mlflow import MlflowClient

    from registry import recovery
    from registry.connection import configure

    client = configure(config)
    exp = client.get_experiment_by_name(config.mlflow.experiment)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        tags = {"mmf.job": "train", "mmf.host": socket.gethostname(), "mmf.pid": str(sleeper.pid)}
        run = client.create_run(exp.experiment_id, tags=tags)
        assert recovery.mark_orphans_failed(config) == []
        assert MlflowClient().get_run(run.info.run_id).info.status == "RUNNING"
    finally:
        os.kill(sleeper.pid, signal.SIGKILL)
        sleeper.wait()
    assert recovery.mark_orphans_failed(config) == [run.info.run_id]
    after = MlflowClient().get_run(run.info.run_id)
    assert after.info.status == "FAILED"
    assert after.data.tags["mmf.failure"] == recovery.ORPHAN_REASON


def test_a_writer_killed_inside_its_delta_commit_leaves_nothing_visible(reference, tmp_path):
    """The one window the kill points cannot reach is inside deltalake's own write: data
    files written, the log entry not (or half) written. Such leftovers are invisible to
    readers and do not block the next commit."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from training.tables import Lakehouse

    shutil.copytree(reference.lake / "gold" / "forecasts", tmp_path / "gold" / "forecasts")
    lake = Lakehouse(str(tmp_path))
    before = lake.version("gold/forecasts")
    rows = lake.arrow("gold/forecasts")
    folder = tmp_path / "gold" / "forecasts"
    pq.write_table(
        pa.concat_tables([rows, rows]),
        folder / "part-00001-0f0f0f0f-dead-beef-0000-000000000000-c000.snappy.parquet",
    )
    (folder / "_delta_log" / "_commit_0f0f0f0f.json.tmp").write_text('{"add":{"path":"part-00001-0f0f')
    assert lake.version("gold/forecasts") == before
    assert_same_tables(tables(tmp_path), reference.tables, names=["gold/forecasts"])
    assert (
        lake.write("gold/forecasts", rows.slice(0, 24), mode="overwrite", predicate="model_version = '1'")
        == before + 1
    )
    assert len(lake.read("gold/forecasts")) == 24
