"""Settings in one typed place.

The pydantic models of :mod:`forecasting.config.settings` hold every setting's type,
bounds, default and meaning; ``conf/default.yaml`` is rendered from them
(:mod:`forecasting.config.defaults`, ``python -m forecasting.config --write-default``).
``load_config(path)`` overlays a YAML file on the defaults, then the environment
(``MMF_LAKEHOUSE``, ``MLFLOW_TRACKING_URI``, ``SPARK_MASTER``, ``MMF_API_KEY``), and
validates everything before any work starts: a bad value raises :class:`ConfigError`
naming the key, the value and what is allowed.
"""

from __future__ import annotations

from forecasting.config.defaults import render_default_yaml, write_default_yaml
from forecasting.config.loading import ENV_OVERRIDES, default_conf_path, from_dict, load_config, read_yaml
from forecasting.config.settings import (
    ENGINES,
    EXTRA_COLUMNS,
    METRIC_NAMES,
    Backtest,
    Cleaning,
    Config,
    Deep,
    Ensemble,
    Ingest,
    Intermittent,
    Intervals,
    MLflow,
    Monitoring,
    Nightly,
    Serve,
    SparkSettings,
    Tune,
)
from forecasting.errors import ConfigError

__all__ = [
    "ENGINES",
    "ENV_OVERRIDES",
    "EXTRA_COLUMNS",
    "METRIC_NAMES",
    "Backtest",
    "Cleaning",
    "Config",
    "ConfigError",
    "Deep",
    "Ensemble",
    "Ingest",
    "Intermittent",
    "Intervals",
    "MLflow",
    "Monitoring",
    "Nightly",
    "Serve",
    "SparkSettings",
    "Tune",
    "default_conf_path",
    "from_dict",
    "load_config",
    "read_yaml",
    "render_default_yaml",
    "write_default_yaml",
]
