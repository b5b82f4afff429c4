"""Per-series models, registered by name in one place.

``MODELS`` maps a name to its class (:func:`all_models` adds the global models,
trained across series); :func:`get_model` builds one and refuses an
unknown name with the list of valid names; :func:`load_model` rebuilds a fitted model
from its serialized data.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from forecasting.errors import UnknownModelError
from forecasting.models.arima import ARIMA
from forecasting.models.base import FORMAT_VERSION, Forecaster
from forecasting.models.ets import ETS
from forecasting.models.mstl import MSTL
from forecasting.models.prophet_model import ProphetModel
from forecasting.models.seasonal_naive import SeasonalNaive, WeeklyNaive
from forecasting.models.theta import Theta

# MODELS holds the per-series models, every one of which fits on one series; the global
# models, trained across series, have their own map (forecasting.global_models.GLOBAL_MODELS).
MODELS: dict[str, type[Forecaster]] = {
    cls.name: cls for cls in (SeasonalNaive, WeeklyNaive, ETS, ARIMA, Theta, MSTL, ProphetModel)
}


def all_models() -> dict[str, type[Forecaster]]:
    """Every model name a config may list: the per-series ``MODELS`` and the global ones."""
    from forecasting.global_models import GLOBAL_MODELS  # imported late: it builds on this package

    return {**MODELS, **GLOBAL_MODELS}


def model_class(name: str) -> type[Forecaster]:
    known = all_models()
    try:
        return known[name]
    except KeyError:
        raise UnknownModelError(name, list(known)) from None


def module_available(module: str) -> bool:
    """Whether ``module`` can be imported (found without importing it)."""
    return importlib.util.find_spec(module) is not None


def unavailable_reason(name: str) -> str | None:
    """Why model ``name`` cannot be trained here (a package it needs is missing), or
    ``None`` when it can. Serving a trained model never needs these packages unless
    noted (``global_nn`` forecasts with numpy)."""
    cls = model_class(name)
    missing = [m for m in getattr(cls, "requires", ()) if not module_available(m)]
    if not missing:
        return None
    extra = getattr(cls, "extra", "")
    fix = f"install the {extra} extra: pip install -e .[{extra}]" if extra else f"pip install {' '.join(missing)}"
    return f"{fix} ({name} needs {', '.join(missing)}, which is not installed)"


def get_model(name: str, **kwargs: Any) -> Forecaster:
    """A new, unfitted model ``name`` (kwargs: season_length, seasonalities, freq, params)."""
    return model_class(name)(**kwargs)


def load_model(data: dict[str, Any]) -> Forecaster:
    """A fitted model from :meth:`Forecaster.to_dict` data."""
    return model_class(data["model"]).from_dict(data)


__all__ = [
    "FORMAT_VERSION",
    "MODELS",
    "all_models",
    "Forecaster",
    "get_model",
    "load_model",
    "model_class",
    "module_available",
    "unavailable_reason",
]
