"""Named checkpoints: the places where a job may stop and a restart must still end well.

The jobs call :func:`checkpoint` at each point of :data:`POINTS`; the names and what is
(and is not) committed at each one are part of the restart contract: a process killed
at any of them, started again, ends in the same state as an uninterrupted run.

By default a checkpoint does nothing. A process may install one hook with
:func:`set_hook`; it is then called as ``hook(name, **info)`` at every checkpoint (the
reliability tests install one that kills or pauses the process, or fails a task). The
engines ship the installed hook to their workers, so the worker checkpoints of
:data:`WORKER_POINTS` reach it too: a hook must therefore pickle by reference (a
module-level function, or an instance of a module-level class).
"""

from __future__ import annotations

from typing import Any, Callable

Hook = Callable[..., None]

# On the driver, in pipeline order.
POINTS = (
    "before_ingest_commit",  # ingest: a commit's files read and checked, not written
    "after_ingest_commit",  # ingest: a commit's files committed to bronze
    "mid_refine",  # refine: a batch's silver/quarantine rows committed, not its others (info: batch)
    "mid_train",  # train: inside the engine loop, some series done, none recorded
    "before_register",  # train: run logged (metrics, per_series, results), no model version yet
    "after_register",  # train: model version registered, no alias set by the gate yet
    "after_gate",  # train: challenger/champion aliases set, Gold not written
    "after_gold_backtest",  # train: gold/backtest written, gold/selection not
    "after_gold_selection",  # train: Gold written, the MLflow run not ended
    "before_forecast_commit",  # forecast: champion's forecasts computed, gold/forecasts not written
    "mid_forecast",  # forecast: a batch of gold/forecasts committed, not the last (info: batch)
    "after_forecast_commit",  # nightly: gold/forecasts committed, gold/portfolio not
    "mid_hierarchy",  # hierarchy: a batch of gold/hierarchy's series level committed, not the last (info: batch)
    "stream_before_commit",  # stream: a batch's forecasts computed, not merged (info: batch_id)
    "stream_after_commit",  # stream: a batch's forecasts merged, the batch not marked done (info: batch_id)
)
# In the engines' workers, before the group function runs on one group.
WORKER_POINTS = (
    "worker_group",  # local engine, in a pool worker (info: function, key)
    "spark_task",  # Spark engine, in a task (info: key, stage, partition, attempt)
)
NAMES = frozenset(POINTS + WORKER_POINTS)

_hook: Hook | None = None


def checkpoint(name: str, **info: Any) -> None:
    """This process reached checkpoint ``name``: call the installed hook, if any."""
    if name not in NAMES:
        raise ValueError(f"unknown checkpoint {name!r}")
    if _hook is not None:
        _hook(name, **info)


def set_hook(hook: Hook | None) -> Hook | None:
    """Install ``hook`` (``None``: none) for this process; returns the one it replaces."""
    global _hook
    previous, _hook = _hook, hook
    return previous


def installed() -> Hook | None:
    """The hook of this process (what an engine ships to its workers)."""
    return _hook


__all__ = ["NAMES", "POINTS", "WORKER_POINTS", "checkpoint", "installed", "set_hook"]
