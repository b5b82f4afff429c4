"""Every `mmf` command that writes holds the lakehouse lock, not only `mmf nightly`: a
standalone `mmf train` run during a nightly used to train a second time beside it.

The nightly is paused with its lock held (``MMF_TEST_PAUSE_AT``, tests/reliability/faults.py)
right after it registered its model version; each writing command is then refused with
one line naming the holder, or, given ``--wait``, waits and runs after the nightly.
"""

from __future__ import annotations

import time
from pathlib import Path

from reliability_support import (
    assert_no_duplicates,
    assert_runs_explained,
    assert_same_tables,
    lake_of,
    mmf_bg,
    mmf_lanes,
    new_lake,
    registry_state,
    tables,
    write_conf,
)
from test_concurrency import wait_for

from forecasting.generator import generate

WRITERS = {
    "train": ["train"],
    "forecast": ["forecast", "--force"],
    "refine": ["refine"],
    "ingest": ["ingest", "--source", "{raw}"],
    "score": ["score", "--input", "gold/forecasts"],
    "restore": ["restore", "bronze/readings", "--version", "0"],
}


def test_writing_commands_wait_for_or_refuse_a_running_nightly(reference, tmp_path):
    lake = new_lake(tmp_path / "lake", reference.template)
    conf = str(write_conf(tmp_path / "conf.yaml", lake, reference.raw))
    gate = tmp_path / "gate"
    nightly = mmf_bg("nightly", "--conf", conf, env={"MMF_TEST_PAUSE_AT": f"after_register:{gate}"})
    waiting = None
    try:
        wait_for(Path(f"{gate}.reached"), nightly, timeout=300)  # trained and registered, lock held

        # refused commands take no lock and write nothing: two at a time
        commands = [
            [*(a.format(raw=reference.raw) for a in args), "--conf", conf] for args in WRITERS.values()
        ]
        half = (len(commands) + 1) // 2
        for name, refused in zip(WRITERS, mmf_lanes(commands[:half], commands[half:])):
            assert refused.returncode == 2, (name, refused.returncode, refused.stderr[-2000:])
            lines = refused.stderr.strip().splitlines()
            assert lines == [
                f"error: another mmf job (pid {nightly.pid}) is running on lakehouse {lake}; "
                "wait for it to finish, or pass --wait SECONDS to queue behind it"
            ], (name, refused.stderr[-2000:])

        waiting = mmf_bg("forecast", "--conf", conf, "--wait", "300")
        time.sleep(4)  # long enough to import and reach the lock
        assert waiting.poll() is None, waiting.communicate()
        gate.touch()
        _, err = nightly.communicate(timeout=300)
        assert nightly.returncode == 0, err[-3000:]
        out2, err2 = waiting.communicate(timeout=300)
        assert waiting.returncode == 0, err2[-3000:]
    finally:
        for proc in (nightly, waiting):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    # the queued forecast ran after the nightly and found its forecasts current
    assert "gold/forecasts already holds champion version 1" in out2, out2
    # nothing was trained, forecast, scored or restored beside the nightly
    assert registry_state(lake) == reference.registry
    assert_same_tables(tables(lake), reference.tables)
    assert_no_duplicates(lake)
    assert len(assert_runs_explained(lake)) == 1
    assert not lake_of(lake).exists("gold/scores")


def test_two_mmf_ingests_at_once_run_one_after_the_other(tmp_path):
    lake = tmp_path / "lake"
    conf = str(write_conf(tmp_path / "conf.yaml", lake, None))
    files = []
    for i, seed in enumerate((1, 2)):
        data = generate(n_series=3, days=3, freq="h", seed=seed, clean=True).readings
        data["series_id"] = data["series_id"].str.replace("MTR", f"F{i}")
        files.append(tmp_path / f"f{i}.parquet")
        data.to_parquet(files[-1], index=False)
    gate = tmp_path / "gate"
    first = mmf_bg(
        "ingest",
        "--source",
        str(files[0]),
        "--conf",
        conf,
        env={"MMF_TEST_PAUSE_AT": f"before_ingest_commit:{gate}"},
    )
    second = None
    try:
        wait_for(Path(f"{gate}.reached"), first)
        second = mmf_bg("ingest", "--source", str(files[1]), "--conf", conf, "--wait", "120")
        time.sleep(4)
        assert second.poll() is None, second.communicate()
        assert not lake_of(lake).exists("bronze/readings")
        gate.touch()
        results = [p.communicate(timeout=120) for p in (first, second)]
    finally:
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip((first, second), results):
        assert p.returncode == 0, err[-2000:]
    assert "bronze/readings version 0" in results[0][0]
    assert "bronze/readings version 1" in results[1][0]
    bronze = lake_of(lake).read("bronze/readings")
    assert sorted(bronze["_source_file"].unique()) == sorted(map(str, files))
