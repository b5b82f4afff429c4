"""Per-series models, registered by name in one place.

``MODELS`` maps a name to its class; :func:`get_model` builds one and refuses an
unknown name with the list of valid names; :func:`load_model` rebuilds a fitted model
from its serialized data.
"""

from __future__ import annotations

from typing import Any

from forecasting.errors import UnknownModelError
from forecasting.models.arima import ARIMA
from forecasting.models.base import FORMAT_VERSION, Forecaster
from forecasting.models.ets import ETS
from forecasting.models.mstl import MSTL
from forecasting.models.prophet_model import ProphetModel
from forecasting.models.seasonal_naive import SeasonalNaive, WeeklyNaive
from forecasting.models.theta import Theta

MODELS: dict[str, type[Forecaster]] = {
    cls.name: cls for cls in (SeasonalNaive, WeeklyNaive, ETS, ARIMA, Theta, MSTL, ProphetModel)
}


def model_class(name: str) -> type[Forecaster]:
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(name, list(MODELS)) from None


def get_model(name: str, **kwargs: Any) -> Forecaster:
    """A new, unfitted model ``name`` (kwargs: season_length, seasonalities, freq, params)."""
    return model_class(name)(**kwargs)


def load_model(data: dict[str, Any]) -> Forecaster:
    """A fitted model from :meth:`Forecaster.to_dict` data."""
    return model_class(data["model"]).from_dict(data)


__all__ = ["FORMAT_VERSION", "MODELS", "Forecaster", "get_model", "load_model", "model_class"]
