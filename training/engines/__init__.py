"""Engines decide *where* the per-series function runs, never *what* it computes.

Every engine offers ``map_groups(frame, by, fn, schema, config, on_error)``: apply
``fn(group_frame, config) -> frame`` to each group of rows sharing ``by`` and return the
concatenated results with exactly ``schema``'s columns (each engine implements
``run(frame, job)`` for it, :mod:`training.engines.base`), and ``map_batches`` over a
stream of batches, whose results the engine can commit itself to a Delta table (a
:class:`~training.engines.base.Sink`; ``derive`` likewise for rows computed from a
table's batch). ``local`` is a process pool;
``spark`` runs ``groupBy(by).applyInPandas``. Which engines exist is
:data:`forecasting.config.ENGINES` (name -> ``module:class``); an engine's module is
imported only when it is chosen (the Spark one needs the optional pyspark).
"""

from __future__ import annotations

import importlib

from forecasting.config import ENGINES, Config
from forecasting.errors import ConfigError
from training.engines.base import Engine


def engine_class(name: str) -> type[Engine]:
    """The class registered as engine ``name``, its module imported now."""
    try:
        module, _, attr = ENGINES[name].partition(":")
    except KeyError:
        raise ConfigError("engine", name, f"one of {', '.join(ENGINES)}") from None
    return getattr(importlib.import_module(module), attr)


def get_engine(config: Config) -> Engine:
    return engine_class(config.engine).from_config(config)


__all__ = ["Engine", "engine_class", "get_engine"]
