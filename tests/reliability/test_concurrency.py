"""Two jobs at once on one lakehouse. Processes are lined up with the test-only hook
``MMF_TEST_PAUSE_AT=<checkpoint>:<gate file>`` (tests/reliability/faults.py): a job stops there
until the test creates the gate file.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest
from reliability_support import (
    assert_no_duplicates,
    assert_runs_explained,
    assert_same_tables,
    ingest_job_bg,
    lake_of,
    mmf,
    mmf_bg,
    new_lake,
    registry_state,
    tables,
    write_conf,
)

from forecasting.generator import generate


def wait_for(path: Path, proc, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, (
            f"exited {proc.returncode} before {path.name}: {proc.communicate()[1][-2000:]}"
        )
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_second_nightly_is_refused_or_waits_and_neither_corrupts(reference, tmp_path):
    lake = new_lake(tmp_path / "lake", reference.template)
    conf = str(write_conf(tmp_path / "conf.yaml", lake, reference.raw))
    gate = tmp_path / "gate"
    first = mmf_bg("nightly", "--conf", conf, env={"MMF_TEST_PAUSE_AT": f"after_ingest_commit:{gate}"})
    waiting = None
    try:
        wait_for(Path(f"{gate}.reached"), first)  # it holds the lock, bronze committed

        refused = mmf("nightly", "--conf", conf, "--wait", "0")
        assert refused.returncode == 2
        assert f"another mmf job (pid {first.pid}) is running on lakehouse" in refused.stderr

        waiting = mmf_bg("nightly", "--conf", conf, "--wait", "180")
        time.sleep(4)  # long enough to import and reach the lock
        assert waiting.poll() is None, waiting.communicate()
        gate.touch()
        out, err = first.communicate(timeout=180)
        assert first.returncode == 0, err[-3000:]
        out2, err2 = waiting.communicate(timeout=180)
        assert waiting.returncode == 0, err2[-3000:]
    finally:
        for proc in (first, waiting):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    # the waiting run found everything done
    for step in ("ingest", "refine", "train", "forecast", "aggregate"):
        assert f"{step:<10} skipped" in out2, out2
    assert_same_tables(tables(lake), reference.tables)
    assert_no_duplicates(lake)
    assert registry_state(lake) == reference.registry
    assert len(assert_runs_explained(lake)) == 1


def test_two_ingests_of_different_files_at_once_both_land(tmp_path):
    """The ingest job, not `mmf ingest` (which holds the lakehouse lock: test_lock.py)."""
    lake = tmp_path / "lake"
    files = []
    for i, seed in enumerate((1, 2)):
        data = generate(n_series=3, days=3, freq="h", seed=seed, clean=True).readings
        data["series_id"] = data["series_id"].str.replace("MTR", f"F{i}")
        files.append(tmp_path / f"f{i}.parquet")
        data.to_parquet(files[-1], index=False)
    gates = [tmp_path / f"gate{i}" for i in range(2)]
    procs = [
        ingest_job_bg(lake, f, env={"MMF_TEST_PAUSE_AT": f"before_ingest_commit:{g}"})
        for f, g in zip(files, gates)
    ]
    try:
        for g, p in zip(gates, procs):
            wait_for(Path(f"{g}.reached"), p)  # both have read bronze's state and hold their rows
        for g in gates:
            g.touch()
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-2000:]
    bronze = lake_of(lake).read("bronze/readings")
    assert sorted(bronze["_source_file"].unique()) == sorted(map(str, files))
    for f in files:
        want = pd.read_parquet(f)
        got = bronze[bronze["_source_file"] == str(f)]
        assert len(got) == len(want) and set(got["series_id"]) == set(want["series_id"])
    assert not bronze.duplicated(["series_id", "ts"]).any()
    assert lake_of(lake).version("bronze/readings") == 1  # two commits, versions 0 and 1


@pytest.mark.parametrize("bronze", ["absent", "present"])
def test_three_ingests_of_the_same_file_at_once_land_it_once(tmp_path, bronze):
    """Three ingest jobs of one file, held until each has checked bronze's content
    hashes and then released together: the file lands once, the others skip it.

    `mmf ingest` holds the lakehouse lock, so on a local lakehouse the CLI never gets
    here; remote lakehouses (az://, s3://) are not locked and rely on this: the jobs run
    without the CLI's lock, as real processes."""
    lake = tmp_path / "lake"
    conf = str(write_conf(tmp_path / "conf.yaml", lake, None))
    data = generate(n_series=3, days=3, freq="h", seed=5, clean=True).readings
    same = tmp_path / "same.parquet"
    data.to_parquet(same, index=False)
    if bronze == "present":
        other = tmp_path / "other.parquet"
        data.assign(series_id="X-" + data["series_id"]).to_parquet(other, index=False)
        assert mmf("ingest", "--source", str(other), "--conf", conf).returncode == 0
    gates = [tmp_path / f"gate{i}" for i in range(3)]
    procs = [ingest_job_bg(lake, same, env={"MMF_TEST_PAUSE_AT": f"before_ingest_commit:{g}"}) for g in gates]
    try:
        for g, p in zip(gates, procs):
            wait_for(Path(f"{g}.reached"), p)  # each saw the file as new
        for g in gates:
            g.touch()
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-2000:]
    outs = "".join(out for out, _ in results)
    assert outs.count(f"added: {same}") == 1, outs
    assert outs.count(f"skipped: {same}") == 2, outs
    rows = lake_of(lake).read("bronze/readings")
    got = rows[rows["_source_file"] == str(same)]
    assert len(got) == len(data) and got["_batch_id"].nunique() == 1
    assert not rows.duplicated(["series_id", "ts"]).any()
    assert_no_duplicates(lake)
