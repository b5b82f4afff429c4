"""Engines decide *where* the per-series function runs, never *what* it computes.

Every engine offers ``map_groups(frame, by, fn, schema, config, on_error)``: apply
``fn(group_frame, config) -> frame`` to each group of rows sharing ``by`` and return the
concatenated results with exactly ``schema``'s columns (each engine implements
``run(frame, job)`` for it, :mod:`training.engines.base`). ``local`` is a process pool;
``spark`` runs ``groupBy(by).applyInPandas`` (imported only when asked for).
"""

from __future__ import annotations

from typing import Any

from forecasting.errors import ConfigError
from training.engines.base import Engine


def get_engine(config: Any) -> Engine:
    if config.engine == "local":
        from training.engines.local import LocalEngine

        return LocalEngine(workers=config.workers)
    if config.engine == "spark":
        from training.engines.spark import SparkEngine  # noqa: F401 - optional extra

        return SparkEngine(config)
    raise ConfigError("engine", config.engine, "local or spark")


__all__ = ["Engine", "get_engine"]
