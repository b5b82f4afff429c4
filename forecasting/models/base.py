"""The one forecaster interface every per-series model implements.

Models see numpy arrays, never DataFrames. ``__init__`` stores hyper-parameters only;
``fit`` sets trailing-underscore state and returns ``self``; ``predict`` returns plain
arrays keyed ``mean``, ``lo-<level>`` and ``hi-<level>``.

A fitted model serializes to explicit, versioned, JSON-compatible data with
``to_dict`` and comes back with ``from_dict``; nothing is ever pickled.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np

from forecasting.errors import ConfigError, ModelError

FORMAT_VERSION = 1


class Forecaster:
    """Base class: one model for one series.

    Args:
        season_length: the main season in steps (24 for hourly data with a daily cycle).
        seasonalities: every season in steps, shortest first (e.g. ``(24, 168)``).
        freq: pandas frequency alias of the series (``"h"``, ``"30min"``, ``"D"``).
        **params: model hyper-parameters (see each model's docstring).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    supports_exog: ClassVar[bool] = False

    def __init__(
        self,
        season_length: int = 24,
        seasonalities: Sequence[int] = (24, 168),
        freq: str = "h",
        **params: Any,
    ) -> None:
        self.season_length = int(season_length)
        self.seasonalities = tuple(int(s) for s in seasonalities)
        self.freq = freq
        self.params = dict(params)

    # -- to implement -------------------------------------------------------------
    def fit(self, y: np.ndarray, X: np.ndarray | None = None, ts: np.ndarray | None = None) -> "Forecaster":
        """Fit on history ``y`` (1-d float, no NaN), optional regressors ``X`` (n x k)
        and timestamps ``ts`` (datetime64, same length as ``y``)."""
        raise NotImplementedError

    def predict(
        self, h: int, X: np.ndarray | None = None, level: Sequence[int] = (80, 95)
    ) -> dict[str, np.ndarray]:
        """Forecast ``h`` steps after the end of the history; ``X`` holds future
        regressors (h x k) when the model uses them."""
        raise NotImplementedError

    def get_state(self) -> dict[str, Any]:
        """Fitted state as JSON-compatible data (lists, floats, strings)."""
        raise NotImplementedError

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what ``get_state`` returned."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Explicit, versioned serialization of the fitted model."""
        return {
            "model": self.name,
            "format_version": FORMAT_VERSION,
            "season_length": self.season_length,
            "seasonalities": list(self.seasonalities),
            "freq": self.freq,
            "params": self.params,
            "state": self.get_state(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Forecaster":
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ModelError(
                f"model {data.get('model')!r} has format_version {version!r}: "
                f"this release reads format_version {FORMAT_VERSION}"
            )
        model = cls(
            season_length=data["season_length"],
            seasonalities=data["seasonalities"],
            freq=data["freq"],
            **data["params"],
        )
        model.set_state(data["state"])
        return model

    def __repr__(self) -> str:
        return f"{type(self).__name__}(season_length={self.season_length}, params={self.params})"


def normal_intervals(
    mean: np.ndarray, sigma: np.ndarray | float, level: Sequence[int]
) -> dict[str, np.ndarray]:
    """Gaussian prediction intervals around ``mean`` with per-step ``sigma``."""
    from scipy.stats import norm

    out = {"mean": np.asarray(mean, dtype=float)}
    sigma = np.broadcast_to(np.asarray(sigma, dtype=float), out["mean"].shape)
    for lv in level:
        z = norm.ppf(0.5 + lv / 200.0)
        out[f"lo-{lv}"] = out["mean"] - z * sigma
        out[f"hi-{lv}"] = out["mean"] + z * sigma
    return out


# -- helpers shared by the models --------------------------------
@contextlib.contextmanager
def quiet_fit() -> Iterator[None]:
    """Around statsmodels work: warnings off (a fit is judged by its result, and
    ``-W error`` must not trip on a ConvergenceWarning) and BLAS on one thread (the
    matrices are tiny; under CPU contention a multi-threaded OpenBLAS made ARIMA fits
    10-30x slower). statsmodels must be imported before entering: its first import adds
    "always" warning filters, which inside the block would beat the "ignore"."""
    with warnings.catch_warnings(), one_thread("blas"):
        warnings.simplefilter("ignore")
        yield


_CONTROLLER: tuple[int, Any] = (-1, None)


def one_thread(user_api: str | None = None) -> Any:
    """``threadpoolctl.threadpool_limits(limits=1)``, without its cost on every call.

    ``threadpool_limits`` scans the process's shared libraries each time it is entered
    (about 2.5 ms), which at thousands of series and several fits per series was ~6% of
    the per-series time. The scan is kept and re-done only when new modules were
    imported since (a library loaded later, e.g. by scipy, is then seen too).
    """
    import sys

    from threadpoolctl import ThreadpoolController

    global _CONTROLLER
    stamp, controller = _CONTROLLER
    if controller is None or stamp != len(sys.modules):
        controller = ThreadpoolController()
        _CONTROLLER = (len(sys.modules), controller)
    return controller.limit(limits=1, user_api=user_api)


def check_keys(model: str, params: dict[str, Any], allowed: Sequence[str]) -> None:
    for key in params:
        if key not in allowed:
            raise ConfigError(f"{model}.{key}", params[key], f"one of {', '.join(allowed)}")


def max_history(model: str, params: dict[str, Any], default: int) -> int | None:
    value = params.get("max_history", default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 10:
        raise ConfigError(f"{model}.max_history", value, "null or an integer >= 10")
    return value


def clean_y(model: str, y: Any, max_history: int | None) -> np.ndarray:
    y = np.asarray(y, dtype=float)
    if y.ndim != 1:
        raise ModelError(f"{model} expects a 1-d series; got shape {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ModelError(f"{model} got {int(np.sum(~np.isfinite(y)))} missing or infinite values")
    if max_history is not None:
        y = y[-max_history:]
    return y


def check_h(h: Any) -> int:
    if isinstance(h, bool) or int(h) != h or h < 1:
        raise ModelError(f"horizon h must be a positive integer; got {h!r}")
    return int(h)
