"""The ensemble of fitted models: the mean or median of their forecasts.

Serialized as ``{"model": "ensemble", "format_version", "method", "members": [...]}``,
each member its own ``Forecaster.to_dict()``; :func:`forecasting.models.load_fitted`
reads it back.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from forecasting.choice import ENSEMBLE, combine
from forecasting.errors import ModelError
from forecasting.models.base import FORMAT_VERSION, Forecaster


class EnsembleForecaster:
    """Mean or median of fitted members' forecasts (intervals combined bound by bound)."""

    name = ENSEMBLE

    def __init__(self, members: Sequence[Forecaster], method: str = "median") -> None:
        if len(members) < 1:
            raise ModelError("an ensemble needs at least one member")
        if method not in ("mean", "median"):
            raise ModelError(f"ensemble method {method!r}: expected mean or median")
        self.members = list(members)
        self.method = method

    @property
    def supports_exog(self) -> bool:
        return any(type(m).supports_exog for m in self.members)

    def predict(
        self, h: int, X: np.ndarray | None = None, level: Sequence[int] = (80, 95)
    ) -> dict[str, np.ndarray]:
        forecasts = [m.predict(h, X=X if type(m).supports_exog else None, level=level) for m in self.members]
        return combine(forecasts, self.method)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": ENSEMBLE,
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "members": [m.to_dict() for m in self.members],
        }
