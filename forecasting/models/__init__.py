"""Every model, registered by name in one place.

``MODELS`` maps a name to its per-series class; ``GLOBAL_MODELS`` (from
:mod:`forecasting.models.global_models`) the global ones, trained across series;
:func:`all_models` both. :func:`get_model` builds one and refuses an unknown name with
the list of valid names; :func:`load_model` rebuilds a fitted model from its serialized
data and :func:`load_fitted` a result row's ``model_json`` (one model or an ensemble).

A new model is one module declaring its ``parameters`` and ``state_fields`` (see
:mod:`forecasting.models.base`) with ``fit`` and ``predict``, and one entry here.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from forecasting.choice import ENSEMBLE
from forecasting.errors import ModelError, UnknownModelError
from forecasting.jsontext import loads
from forecasting.models.arima import ARIMA
from forecasting.models.base import FORMAT_VERSION, Forecaster, check_format
from forecasting.models.calibrated import AdjustedForecaster, with_adjustment
from forecasting.models.cold_profile import ColdProfile
from forecasting.models.ensemble import EnsembleForecaster
from forecasting.models.ets import ETS
from forecasting.models.global_models import GLOBAL_MODELS
from forecasting.models.intermittent import INTERMITTENT_MODELS
from forecasting.models.mstl import MSTL
from forecasting.models.prophet_model import ProphetModel
from forecasting.models.seasonal_naive import SeasonalNaive, WeeklyNaive
from forecasting.models.seasonal_window import SeasonalWindow
from forecasting.models.theta import Theta

# MODELS holds the per-series models, every one of which fits on one series; the global
# models, trained across series, have their own map (GLOBAL_MODELS).
MODELS: dict[str, type[Forecaster]] = {
    cls.name: cls
    for cls in (
        SeasonalNaive,
        WeeklyNaive,
        SeasonalWindow,
        ETS,
        ARIMA,
        Theta,
        MSTL,
        ProphetModel,
        *INTERMITTENT_MODELS,
    )
}
#: the models for intermittent demand (croston, croston_sba, tsb, adida, imapa)
INTERMITTENT = tuple(cls.name for cls in INTERMITTENT_MODELS)
# Models no config lists: built by the platform for a series, loaded back by name (the
# cold-start profile of forecasting.cold_start).
PLATFORM_MODELS: dict[str, type[Forecaster]] = {ColdProfile.name: ColdProfile}


def all_models() -> dict[str, type[Forecaster]]:
    """Every model name a config may list: the per-series ``MODELS`` and the global ones."""
    return {**MODELS, **GLOBAL_MODELS}


def model_class(name: str) -> type[Forecaster]:
    known = all_models()
    try:
        return known[name] if name in known else PLATFORM_MODELS[name]
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
    missing = [m for m in cls.requires if not module_available(m)]
    if not missing:
        return None
    extra = cls.extra
    fix = (
        f"install the {extra} extra: pip install -e .[{extra}]"
        if extra
        else f"pip install {' '.join(missing)}"
    )
    return f"{fix} ({name} needs {', '.join(missing)}, which is not installed)"


def get_model(name: str, **kwargs: Any) -> Forecaster:
    """A new, unfitted model ``name`` (kwargs: season_length, seasonalities, freq, params)."""
    return model_class(name)(**kwargs)


def load_model(data: dict[str, Any]) -> Forecaster:
    """A fitted model from :meth:`Forecaster.to_dict` data."""
    return model_class(data["model"]).from_dict(data)


def load_fitted(model_json: str) -> Forecaster | EnsembleForecaster | AdjustedForecaster:
    """A fitted model (single or ensemble) from a result row's ``model_json``; call
    ``predict(h, X=None, level=...)`` on it. Only registered names are built. A
    ``model_json`` with ``calibration`` or ``bounds`` comes wrapped in
    :class:`~forecasting.models.calibrated.AdjustedForecaster`, which applies them."""
    if not model_json:
        raise ModelError("empty model_json: the series has no fitted model (status failed)")
    data = loads(model_json)
    if data.get("model") == ENSEMBLE:
        check_format(data, "ensemble")
        base: Any = EnsembleForecaster([load_model(m) for m in data["members"]], data["method"])
    else:
        base = load_model(data)
    return with_adjustment(base, data)


__all__ = [
    "FORMAT_VERSION",
    "AdjustedForecaster",
    "GLOBAL_MODELS",
    "INTERMITTENT",
    "MODELS",
    "EnsembleForecaster",
    "Forecaster",
    "all_models",
    "get_model",
    "load_fitted",
    "load_model",
    "model_class",
    "module_available",
    "unavailable_reason",
]
