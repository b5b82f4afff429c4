"""A fitted model with its output adjusted: conformal interval factors and bounds.

What training learnt about a series' intervals travels inside its ``model_json`` as two
optional keys beside the model's own (a single model's or an ensemble's
``to_dict()``)::

    {"model": "theta", ..., "state": {...},
     "calibration": {"method": "conformal", "factors": {"80": 0.71, "95": 0.88},
                     "n_residuals": 48},
     "bounds": "nonnegative"}

Keeping the model's keys at the top (rather than nesting it) means everything that reads
a ``model_json``'s ``model``, ``freq``, ``params`` or ``members`` reads it as before, and
a ``model_json`` without these keys (every one written before them) loads exactly as it
did. :func:`forecasting.models.load_fitted` wraps a model that has either key in
:class:`AdjustedForecaster`, so every consumer that forecasts through ``load_fitted``
(the many-models pyfunc, the forecast job, plots, the refit check) applies them; the
nightly refit (:mod:`forecasting.refit`) and the gate's refits
(:mod:`forecasting.comparison`) fit the base model again and keep the adjustment that
training computed.

Applied in this order to each forecast:

1. ``calibration.factors``: per level, each side of the interval is scaled about the
   point forecast, ``lo = mean - f * (mean - lo)``, ``hi = mean + f * (hi - mean)``
   (``f < 1`` narrows). A level without a factor is left as the model gives it. Wider
   levels are then kept at least as wide as narrower ones.
2. ``bounds: nonnegative``: the point forecast and every bound clipped at 0. For a
   target that is never negative this never increases an absolute error and never
   uncovers an actual (see :mod:`forecasting.calibration`).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from forecasting.errors import ModelError

BOUNDS = ("nonnegative",)


class AdjustedForecaster:
    """A fitted model (or ensemble) whose forecasts get per-level interval factors and
    bounds. ``name``, ``supports_exog`` and ``members`` are the base model's."""

    def __init__(
        self,
        base: Any,
        factors: Mapping[int | str, float] | None = None,
        bounds: str | None = None,
        n_residuals: int = 0,
    ) -> None:
        if bounds is not None and bounds not in BOUNDS:
            raise ModelError(f"bounds {bounds!r}: expected null or one of {', '.join(BOUNDS)}")
        self.base = base
        self.factors = {int(k): float(v) for k, v in (factors or {}).items()}
        for lv, f in self.factors.items():
            if not (np.isfinite(f) and f >= 0):
                raise ModelError(f"calibration factor {f!r} of level {lv}: expected a finite number >= 0")
        self.bounds = bounds
        self.n_residuals = int(n_residuals)

    @property
    def name(self) -> str:
        return self.base.name

    @property
    def supports_exog(self) -> bool:
        return bool(getattr(self.base, "supports_exog", False))

    @property
    def members(self) -> list[Any]:
        return list(getattr(self.base, "members", [self.base]))

    def predict(
        self, h: int, X: np.ndarray | None = None, level: Sequence[int] = (80, 95)
    ) -> dict[str, np.ndarray]:
        return adjust(self.base.predict(h, X=X, level=level), self.factors, self.bounds)

    def to_dict(self) -> dict[str, Any]:
        return {**self.base.to_dict(), **adjustment_dict(self.factors, self.bounds, self.n_residuals)}

    def __repr__(self) -> str:
        return f"AdjustedForecaster({self.base!r}, factors={self.factors}, bounds={self.bounds!r})"


def adjustment_dict(factors: Mapping[int, float], bounds: str | None, n_residuals: int = 0) -> dict[str, Any]:
    """The ``calibration`` and ``bounds`` keys of a ``model_json`` (only those in use)."""
    out: dict[str, Any] = {}
    if factors:
        out["calibration"] = {
            "method": "conformal",
            "factors": {str(lv): float(f) for lv, f in sorted(factors.items())},
            "n_residuals": int(n_residuals),
        }
    if bounds is not None:
        out["bounds"] = bounds
    return out


def with_adjustment(base: Any, data: Mapping[str, Any]) -> Any:
    """``base`` wrapped with the adjustment a ``model_json``'s ``data`` carries, or
    ``base`` itself when it carries none."""
    cal = data.get("calibration") or {}
    bounds = data.get("bounds")
    if not cal.get("factors") and bounds is None:
        return base
    return AdjustedForecaster(base, cal.get("factors"), bounds, cal.get("n_residuals", 0))


def adjust(
    forecast: Mapping[str, Any], factors: Mapping[int, float], bounds: str | None
) -> dict[str, np.ndarray]:
    """``forecast`` with its intervals scaled by ``factors`` and clipped to ``bounds``."""
    out = {k: np.asarray(v, dtype=float) for k, v in forecast.items()}
    mean = out["mean"]
    levels = sorted(int(k[3:]) for k in out if k.startswith("lo-") and f"hi-{k[3:]}" in out)
    for lv in levels:
        f = factors.get(lv)
        if f is not None:
            out[f"lo-{lv}"] = mean - f * (mean - out[f"lo-{lv}"])
            out[f"hi-{lv}"] = mean + f * (out[f"hi-{lv}"] - mean)
    for narrow, wide in zip(levels, levels[1:]):  # a wider level never inside a narrower one
        out[f"lo-{wide}"] = np.minimum(out[f"lo-{wide}"], out[f"lo-{narrow}"])
        out[f"hi-{wide}"] = np.maximum(out[f"hi-{wide}"], out[f"hi-{narrow}"])
    if bounds == "nonnegative":
        out = {k: np.maximum(v, 0.0) for k, v in out.items()}
    return out
