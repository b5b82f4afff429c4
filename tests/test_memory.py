"""A job's memory is bounded by its batch, not by the number of series (issue #12).

The same small meters (hourly, 15 days, the cheap ``seasonal_naive`` alone) at 2,000
and at 20,000 series go through ``mmf ingest``, ``mmf refine`` and ``mmf train`` as the
CLI runs them, each job a subprocess whose process tree (the job and its pool workers)
is sampled every 0.1 s (:mod:`benchmarks.monitor`). With a small ``batch_rows`` both
sizes run in many batches, so the largest peak of the three jobs at 20,000 series must
stay within 1.5x of the one at 2,000.

The meters arrive as files of 2,000 series, each ingested by its own ``mmf ingest`` (as
daily deliveries land): a delivery is ingest's unit of work, so its size, not the
number of series already in bronze, is what ingest may hold.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml

from benchmarks.meters import files, write_meters
from benchmarks.monitor import MB, run_monitored

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

ROOT = Path(__file__).resolve().parents[1]
MMF = str(Path(sys.executable).with_name("mmf"))
SMALL, LARGE = 2_000, 20_000
DAYS = 15
BATCH_ROWS = 36_000  # 100 series of 15 hourly days a batch
MAX_RATIO = 1.5
PER_FILE = 2_000  # series per delivered file: 1 file at 2,000 series, 10 at 20,000


def peaks(folder: Path, n: int) -> dict[str, float]:
    """Peak RSS (MB) of each job's process tree for ``n`` meters on a fresh lakehouse."""
    data = write_meters(folder / "meters", n, DAYS, per_file=PER_FILE)
    conf = folder / "conf.yaml"
    settings = {
        "lakehouse": str(folder / "lake"),
        "models": ["seasonal_naive"],
        "batch_rows": BATCH_ROWS,
        "mlflow": {"sample_plots": 0},
    }
    conf.write_text(yaml.safe_dump(settings))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MMF_LAKEHOUSE")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    jobs = [["ingest", "--source", str(f)] for f in files(data)] + [["refine"], ["train"]]
    out: dict[str, float] = {}
    for args in jobs:
        proc, mon = run_monitored(
            [MMF, *args, "--conf", str(conf)], env=env, cwd=folder, timeout=1200, interval=0.1
        )
        assert proc.returncode == 0, f"mmf {args}: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        out[args[0]] = max(out.get(args[0], 0.0), mon.peak_tree / MB)
        print(f"{n:,} series: mmf {args[0]} peak {mon.peak_tree / MB:.0f} MB", flush=True)
    return out


def test_peak_rss_does_not_grow_with_the_number_of_series(tmp_path):
    small = peaks(tmp_path / "small", SMALL)
    large = peaks(tmp_path / "large", LARGE)
    ratio = max(large.values()) / max(small.values())
    figures = ", ".join(f"{job} {small[job]:.0f} -> {large[job]:.0f} MB" for job in small)
    print(f"peak RSS of the process tree, {SMALL:,} -> {LARGE:,} series: {figures}; ratio {ratio:.2f}")
    assert ratio <= MAX_RATIO, (
        f"peak RSS grows with the number of series: {ratio:.2f}x from {SMALL:,} to {LARGE:,} series "
        f"(at most {MAX_RATIO}x); {figures}"
    )
