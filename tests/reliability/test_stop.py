"""A job stopped from outside ends its MLflow run with the reason (issue 17, item 6).

``mmf train`` gets SIGTERM while paused at a checkpoint inside its run
(``MMF_TEST_PAUSE_AT``, tests/reliability/faults.py): it exits 143 with one line and
no traceback, its run ends ``FAILED`` with ``mmf.failure`` saying so, the lakehouse lock
is released, and the next ``mmf train`` finishes that same run. A train whose output
pipe is closed while it runs (``mmf train 2>&1 | head -1``) exits non-zero and its run
ends ``FAILED`` with ``mmf.failure`` naming the broken pipe. Real ``mmf`` processes, a
real lakehouse and MLflow store.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from reliability_support import LAUNCH, REPO, clean_env, mmf, runs, write_conf, write_raw

from forecasting.config import load_config
from training.jobs.ingest import ingest
from training.jobs.refine import refine
from training.tables import Lakehouse

WAIT_S = 180


@pytest.fixture(scope="module")
def refined(tmp_path_factory) -> Path:
    """A lakehouse with silver refined (10 hourly meters x 14 days), no MLflow store yet."""
    tmp = tmp_path_factory.mktemp("stop")
    raw = write_raw(tmp / "raw")
    lake = tmp / "lake"
    conf = write_conf(tmp / "conf.yaml", lake, raw)
    cfg = load_config(conf)
    ingest(Lakehouse.from_config(cfg), str(raw))
    refine(Lakehouse.from_config(cfg), cfg)
    return lake


def _lake(refined: Path, tmp_path: Path) -> tuple[Path, Path]:
    lake = tmp_path / "lake"
    shutil.copytree(refined, lake)
    return lake, write_conf(tmp_path / "conf.yaml", lake, None)


def _train_paused_at(checkpoint: str, conf: Path, gate: Path, **pipes) -> subprocess.Popen:
    """``mmf train`` started, waiting at ``checkpoint`` (inside its run) for ``gate``."""
    env = clean_env(MMF_TEST_PAUSE_AT=f"{checkpoint}:{gate}")
    proc = subprocess.Popen([*LAUNCH, "train", "--conf", str(conf)], cwd=REPO, env=env, text=True, **pipes)
    deadline = time.monotonic() + WAIT_S
    while not Path(f"{gate}.reached").exists():
        assert proc.poll() is None, f"mmf train ended ({proc.returncode}) before {checkpoint}"
        assert time.monotonic() < deadline, f"mmf train did not reach {checkpoint}"
        time.sleep(0.1)
    return proc


def test_sigterm_ends_the_run_failed_with_the_reason_and_the_next_train_finishes_it(refined, tmp_path):
    lake, conf = _lake(refined, tmp_path)
    gate = tmp_path / "gate"
    proc = _train_paused_at("before_register", conf, gate, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("stopped: SIGTERM"), err[-3000:]
    (stopped,) = runs(lake)
    assert stopped.info.status == "FAILED", stopped.info.status
    assert stopped.data.tags["mmf.failure"].startswith("stopped: SIGTERM"), stopped.data.tags
    assert not Lakehouse(str(lake)).exists("gold/selection")

    again = mmf("train", "--conf", str(conf), timeout=WAIT_S)  # the lock was released
    assert again.returncode == 0, again.stderr[-3000:]
    (run,) = runs(lake)  # the stopped run, finished: no second run
    assert run.info.run_id == stopped.info.run_id and run.info.status == "FINISHED"
    assert "mmf.recovered" in run.data.tags and "mmf.failure" not in run.data.tags
    assert set(Lakehouse(str(lake)).read("gold/selection")["run_id"]) == {run.info.run_id}


def test_a_closed_output_pipe_ends_the_run_failed_with_the_reason(refined, tmp_path):
    _, conf = _lake(refined, tmp_path)
    lake = tmp_path / "lake"
    gate = tmp_path / "gate"
    # stdout and stderr into one pipe (`2>&1 | head -1`), read up to the first line, then closed
    proc = _train_paused_at("mid_train", conf, gate, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout.readline()
    proc.stdout.close()
    gate.touch()
    assert proc.wait(timeout=WAIT_S) != 0
    (run,) = runs(lake)
    assert run.info.status == "FAILED", run.info.status
    assert run.data.tags["mmf.failure"].startswith("stopped: broken pipe"), run.data.tags
