"""Global models: one model trained across every series, competing per series.

* :mod:`~forecasting.models.global_models.common`: the panel, the weights store (weights kept
  once, per-series state small), calendar features, the per-series view
  :class:`GlobalForecaster`.
* :mod:`~forecasting.models.global_models.nn`: ``global_nn``, an N-BEATS-style network with
  quantile outputs (trained with PyTorch by :mod:`training.deep`; numpy inference).
* :mod:`~forecasting.models.global_models.gbm`: ``global_gbm``, LightGBM, direct multi-step,
  conformal intervals.

How they join the per-series choice: :mod:`training.global_models` trains each global
model on the driver once per backtest window (every series cut at its own window
cutoff) and once on the full histories, then hands each series its backtest forecasts
and its fitted per-series state in the group's rows (column
:data:`forecasting.pipeline.GLOBAL_COLUMN`); ``process_series`` scores them on the
series' own windows like any other candidate.
"""

from forecasting.models.global_models.common import (
    GlobalForecaster,
    GlobalWeights,
    Panel,
    Spec,
    get,
    load,
    read,
    register,
    save,
    scaled_exog,
    temperature_scaling,
)
from forecasting.models.global_models.gbm import GlobalGBM
from forecasting.models.global_models.nn import GlobalNN

GLOBAL_MODELS = {cls.name: cls for cls in (GlobalNN, GlobalGBM)}


def is_global(name: str) -> bool:
    return name in GLOBAL_MODELS


__all__ = [
    "GLOBAL_MODELS",
    "GlobalForecaster",
    "GlobalGBM",
    "GlobalNN",
    "GlobalWeights",
    "Panel",
    "Spec",
    "get",
    "is_global",
    "load",
    "read",
    "register",
    "save",
    "scaled_exog",
    "temperature_scaling",
]
