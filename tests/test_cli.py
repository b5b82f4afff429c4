"""`mmf` errors reach the user as one line (what failed, on what, how to fix it) and a
non-zero exit code, never as a traceback; `mmf -v` adds the traceback.

The faults are real: a lakehouse below a file, a read-only lakehouse and MLflow store
(the tests run as root, who may write anywhere: the command then runs without any
capability, through ``setpriv --bounding-set=-all``, so the permission bits bind it as
they bind any user), a damaged Delta log, a missing table.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from mlflow.exceptions import MlflowException

from forecasting.config import load_config
from forecasting.errors import TableError
from forecasting.generator import generate
from registry.connection import ensure_store
from training.cli import EXIT_ERROR, EXIT_FAILED, explain

REPO = Path(__file__).resolve().parents[1]


def run_all(commands: list[list[str]], prefix: tuple[str, ...] = ()) -> list[subprocess.CompletedProcess]:
    """``run_mmf`` of each command, two processes at a time (each takes a core for its
    start-up), in the order given: for commands that write nothing (each one fails)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda args: run_mmf(*args, prefix=prefix), commands))


def run_mmf(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MMF_", "MLFLOW_TRACKING_URI", "PYTEST_"))
    }
    return subprocess.run(
        [*prefix, sys.executable, "-m", "training.cli", *args],
        cwd=REPO,
        env={**env, "GIT_PYTHON_REFRESH": "quiet"},
        capture_output=True,
        text=True,
        timeout=300,
    )


def conf_for(tmp_path: Path, lakehouse: Path, **mlflow) -> str:
    path = tmp_path / "conf.yaml"
    path.write_text(yaml.safe_dump({"lakehouse": str(lakehouse), "mlflow": mlflow}))
    return str(path)


def one_error_line(done: subprocess.CompletedProcess) -> str:
    """The one line the command printed on stderr (MLflow's own INFO lines aside)."""
    lines = [ln for ln in done.stderr.splitlines() if ln.strip() and " INFO " not in ln]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("error: "), lines
    return lines[0]


@pytest.fixture(scope="module")
def meters(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("raw") / "meters.parquet"
    generate(n_series=2, days=3, freq="h", seed=5, clean=True).readings.to_parquet(path)
    return path


@pytest.fixture(scope="module")
def lake(tmp_path_factory, meters) -> Path:
    """A lakehouse holding bronze/readings (one `mmf ingest`); tests copy it."""
    root = tmp_path_factory.mktemp("lake") / "lake"
    done = run_mmf("ingest", "--source", str(meters), "--conf", conf_for(root.parent, root))
    assert done.returncode == 0, done.stderr
    return root


def without_privileges() -> tuple[str, ...]:
    """What makes the permission bits bind this process: nothing for a user, for root
    ``setpriv --bounding-set=-all`` (root without capabilities)."""
    if os.geteuid() != 0:
        return ()
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: no honest way to make a folder read-only")
    return ("setpriv", "--bounding-set=-all", "--")


def read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def writable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def test_a_lakehouse_below_a_file_is_one_line(tmp_path, meters):
    (tmp_path / "afile").write_text("not a folder")
    conf = conf_for(tmp_path, tmp_path / "afile" / "lake")
    commands = [["ingest", "--source", str(meters)], ["train"], ["nightly"]]
    for args, done in zip(commands, run_all([[*args, "--conf", conf] for args in commands])):
        assert done.returncode == EXIT_ERROR, (args, done.stderr[-3000:])
        line = one_error_line(done)
        assert "a part of the path is a file, not a folder" in line and str(tmp_path / "afile") in line, line


def test_a_read_only_lakehouse_is_one_line_and_still_readable(tmp_path, lake, meters):
    root = tmp_path / "lake"
    shutil.copytree(lake, root)
    prefix = without_privileges()
    read_only(root)
    try:
        probe = subprocess.run([*prefix, "touch", str(root / "probe")], capture_output=True)
        assert probe.returncode != 0, "the lakehouse is still writable"
        conf = conf_for(tmp_path, root)
        writers = [["ingest", "--source", str(meters)], ["refine"], ["train"], ["forecast"], ["nightly"]]
        commands = [*writers, ["query", "bronze/readings", "--limit", "1"]]
        *refused, done = run_all([[*args, "--conf", conf] for args in commands], prefix=prefix)
        for args, proc in zip(writers, refused):
            assert proc.returncode == EXIT_ERROR, (args, proc.stderr[-3000:])
            line = one_error_line(proc)
            assert line.startswith(f"error: permission denied: {root}"), line
            assert "run mmf as a user who may write there" in line, line
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        writable(root)


def test_a_read_only_mlflow_store_is_one_line(tmp_path, lake):
    root = tmp_path / "lake"
    shutil.copytree(lake, root)
    store_dir = tmp_path / "mlflow"
    store_dir.mkdir()
    uri = f"sqlite:///{store_dir / 'mlflow.db'}"
    ensure_store(uri)  # a whole, empty store
    prefix = without_privileges()
    read_only(store_dir)
    try:
        done = run_mmf("promote", "1", "--conf", conf_for(tmp_path, root, tracking_uri=uri), prefix=prefix)
        assert done.returncode == EXIT_ERROR, done.stderr[-3000:]
        line = one_error_line(done)
        assert line == (
            f"error: MLflow experiment 'mmf' could not be created in {uri}: attempt to write a readonly "
            "database; check that mlflow.tracking_uri points at a store this user may write"
        ), line
    finally:
        writable(store_dir)


def damaged_log(tmp_path: Path, lake: Path) -> Path:
    root = tmp_path / "lake"
    shutil.copytree(lake, root)
    (root / "bronze" / "readings" / "_delta_log" / "00000000000000000000.json").write_text(
        '{"add": {broken\n'
    )
    return root


def test_a_damaged_delta_log_is_one_line_and_v_adds_the_traceback(tmp_path, lake):
    root = damaged_log(tmp_path, lake)
    conf = conf_for(tmp_path, root)
    done, verbose = run_all(
        [["query", "bronze/readings", "--conf", conf], ["-v", "query", "bronze/readings", "--conf", conf]]
    )
    assert done.returncode == EXIT_ERROR, done.stderr[-3000:]
    line = one_error_line(done)
    # the table layer's diagnosis: the table, the corrupt commit file and what to do
    assert line.startswith("error: table bronze/readings cannot be read: commit file "), line
    assert str(root) in line and "_delta_log" in line and "is corrupt" in line, line
    assert "restore the table's folder from a backup" in line or "mmf repair bronze/readings" in line, line

    assert verbose.returncode == EXIT_ERROR
    assert "Traceback (most recent call last)" in verbose.stderr
    assert verbose.stderr.rstrip().splitlines()[-1] == line


def test_a_missing_table_is_one_line(tmp_path, lake):
    conf = conf_for(tmp_path, lake)
    done = run_mmf("restore", "gold/forecasts", "--version", "0", "--conf", conf)
    assert done.returncode == EXIT_ERROR, done.stderr[-3000:]
    assert "gold/forecasts does not exist" in one_error_line(done)


def test_explain_names_what_failed_where_and_the_fix(tmp_path, lake):
    config = load_config(None, lakehouse=str(tmp_path / "lh"))

    line, code = explain(PermissionError(errno.EACCES, "Permission denied", "/data/lh/_mmf.lock"), config)
    assert (line, code) == (
        "permission denied: /data/lh/_mmf.lock: run mmf as a user who may write there, "
        "or set lakehouse (--conf) to a writable folder",
        EXIT_ERROR,
    )
    line, _ = explain(OSError(errno.EROFS, "Read-only file system", "/data/lh/bronze"), config)
    assert line.startswith("read-only file system: /data/lh/bronze: ")
    line, _ = explain(OSError(errno.ENOSPC, "No space left on device", "/data/lh/x"), config)
    assert "no space left" in line and "mmf vacuum" in line

    with pytest.raises(TableNotFoundError) as missing:
        DeltaTable(str(tmp_path / "nowhere"))
    line, code = explain(missing.value, config)
    assert code == EXIT_ERROR and line.startswith("no Delta table (") and str(tmp_path / "lh") in line
    with pytest.raises(DeltaError) as damaged:
        DeltaTable(str(damaged_log(tmp_path, lake) / "bronze" / "readings")).to_pyarrow_table()
    line, code = explain(damaged.value, config)
    assert code == EXIT_ERROR and "\n" not in line and "mmf restore" in line
    line, _ = explain(CommitFailedError("Transaction failed: version 3 already exists"), config)
    assert line.startswith("another job committed to the same table first") and line.endswith(
        "run the command again"
    )

    try:
        try:
            raise OSError("database is locked")
        except OSError as cause:
            raise MlflowException(
                "(raised as a result of Query-invoked autoflush ...)\n[SQL: INSERT ...]"
            ) from cause
    except MlflowException as exc:
        line, code = explain(exc, config)
    assert code == EXIT_ERROR and line.startswith(
        f"MLflow failed on {config.mlflow_tracking_uri()}: database is locked"
    )

    # recognised by their classes' names (explain imports neither library): subclasses too
    class StoreGone(MlflowException):
        pass

    line, code = explain(StoreGone("unable to open database file"), config)
    assert code == EXIT_ERROR and line.startswith("MLflow failed on ") and "reachable" in line
    line, code = explain(pa.ArrowInvalid("column ts: bad timestamp"), config)
    assert (code, line) == (
        EXIT_ERROR,
        f"reading or writing table data failed in lakehouse {config.lakehouse}: column ts: bad timestamp",
    )

    assert explain(TableError("table gold/x does not exist"), config) == (
        "table gold/x does not exist",
        EXIT_ERROR,
    )
    line, code = explain(KeyError("series_id"), config)
    assert code == EXIT_FAILED and line.startswith("unexpected KeyError: 'series_id'") and "mmf -v" in line
