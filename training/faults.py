"""Fault injection for the reliability tests: kill or pause this process at named points.

**For tests only.** Nothing here does anything unless one of the environment variables
below is set; they exist so that ``tests/reliability`` can SIGKILL a real ``mmf nightly``
at a chosen point (or hold it there while another process runs) and check that a restart
ends in the same state as an uninterrupted run. Never set them in production.

``MMF_TEST_KILL_AT=<point>``
    SIGKILL this process when it reaches ``<point>`` (one of :data:`POINTS`).
``MMF_TEST_KILL_AT=worker:<function>:<key>[,<key>...]``
    SIGKILL the local-engine worker process that is about to run ``<function>`` (e.g.
    ``process_series``) on one of these group keys, every time, so the engine's one-by-one
    retry dies too. The driver reads the variable and sends the keys with each chunk.
``MMF_TEST_PAUSE_AT=<point>:<path>``
    On reaching ``<point>``, create ``<path>.reached`` and wait until ``<path>`` exists
    (at most :data:`PAUSE_MAX_S` seconds), so a test can line up concurrent processes.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

KILL_ENV = "MMF_TEST_KILL_AT"
PAUSE_ENV = "MMF_TEST_PAUSE_AT"
PAUSE_MAX_S = 600.0

# Where the jobs call :func:`point`, in pipeline order.
POINTS = (
    "before_ingest_commit",  # ingest: files read and checked, bronze not written
    "after_ingest_commit",  # ingest: bronze committed
    "mid_refine",  # refine: silver/quarantine committed, silver/series and silver/readings not
    "mid_train",  # train: inside the engine loop, some series done, none recorded
    "before_register",  # train: run logged (metrics, per_series, results), no model version yet
    "after_register",  # train: model version registered, no alias set by the gate yet
    "after_gate",  # train: challenger/champion aliases set, Gold not written
    "after_gold_backtest",  # train: gold/backtest written, gold/selection not
    "after_gold_selection",  # train: Gold written, the MLflow run not ended
    "before_forecast_commit",  # forecast: champion's forecasts computed, gold/forecasts not written
    "after_forecast_commit",  # nightly: gold/forecasts committed, gold/portfolio not
)


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def point(name: str) -> None:
    """Kill or pause here when the environment asks for ``name`` (tests only)."""
    assert name in POINTS, name
    if os.environ.get(KILL_ENV) == name:
        _die()
    pause = os.environ.get(PAUSE_ENV)
    if pause and pause.split(":", 1)[0] == name and ":" in pause:
        gate = Path(pause.split(":", 1)[1])
        Path(f"{gate}.reached").touch()
        deadline = time.monotonic() + PAUSE_MAX_S
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.05)


def worker_kills(function: str) -> frozenset[str]:
    """Group keys whose worker is to be killed while running ``function`` (read on the
    driver; empty unless ``MMF_TEST_KILL_AT=worker:<function>:<keys>``)."""
    spec = os.environ.get(KILL_ENV, "")
    parts = spec.split(":", 2)
    if len(parts) == 3 and parts[0] == "worker" and parts[1] == function:
        return frozenset(k for k in parts[2].split(",") if k)
    return frozenset()


def kill_worker_if(key: str, doomed: frozenset[str]) -> None:
    """In a worker: SIGKILL this process when ``key`` is one of ``doomed``."""
    if key in doomed:
        _die()
