"""The benchmark scripts run (tiny sizes); their numbers are recorded in
benchmarks/results/, never asserted here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_scaling_smoke(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.scaling", "--smoke", "--work", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [
        line for line in out.stdout.splitlines() if line.startswith("| platform") or line.startswith("| loop")
    ]
    assert len(rows) == 2, out.stdout
    platform = rows[0].split("|")
    assert platform[3].strip() == "20"  # series
    assert float(platform[4]) > 0  # wall seconds measured
