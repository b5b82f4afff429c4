"""`mmf` ends with its documented exit code, whatever native threads are still running.

A refused ingest sometimes aborted at exit with 134 ("terminate called without an active
exception"): C++ static destructors of a native thread pool (Arrow's, under pyarrow and
deltalake) ran while one of its threads was still working. `mmf` now ends with
``os._exit`` once Python's own shutdown steps have run (training/cli.py), so no static
destructor runs. Half of the runs below leave Arrow scans running on purpose at exit
(``MMF_TEST_BUSY_AT``, tests/reliability/faults.py), which made a plain interpreter exit
crash most of the time; the other half are plain refused ingests.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from reliability_support import mmf, write_conf

from forecasting.generator import generate

RUNS = 20
REFUSED_FILE, REFUSED_IN_FOLDER = 2, 1  # README: a refused single file; a folder with a refused file


def test_refused_ingests_always_exit_with_their_code(tmp_path):
    busy = tmp_path / "busy.parquet"  # what the native scans read until the process ends
    rng = np.random.default_rng(0)
    pq.write_table(pa.table({f"c{i}": rng.random(1_000_000) for i in range(8)}), busy, row_group_size=20_000)
    bad = tmp_path / "bad.csv"
    bad.write_text("series_id,ts,y\nA,2024-01-01T00:00,not-a-number\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "bad.csv").write_text(bad.read_text())
    generate(n_series=2, days=2, freq="h", seed=3, clean=True).readings.to_parquet(folder / "good.parquet")

    def run(i: int):
        conf = write_conf(tmp_path / f"conf{i}.yaml", tmp_path / f"lake{i}", None)
        if i % 2:
            done = mmf(
                "ingest",
                "--source",
                str(folder),
                "--conf",
                str(conf),
                env={"MMF_TEST_BUSY_AT": f"after_ingest_commit:{busy}"},
            )
            return done, REFUSED_IN_FOLDER
        return mmf("ingest", "--source", str(bad), "--conf", str(conf)), REFUSED_FILE

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run, range(RUNS)))
    wrong = [
        (i, done.returncode, want, done.stderr[-500:])
        for i, (done, want) in enumerate(results)
        if done.returncode != want
    ]
    assert not wrong, wrong
    for done, _ in results:
        assert "terminate called" not in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert "bad.csv" in done.stderr and "column y has non-numeric value" in done.stderr, done.stderr[
            -2000:
        ]
