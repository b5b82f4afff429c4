"""The one forecaster interface every model implements, and what it declares.

Models see numpy arrays, never DataFrames. A model class declares, once:

* ``parameters``: its hyper-parameters as :class:`Param` (name, type, default, allowed
  values or range). The base class refuses unknown names, checks every value (a
  :class:`~forecasting.errors.ConfigError` names the parameter, the value and what is
  allowed) and sets each parsed value as an attribute of the same name;
* ``state_fields``: what ``fit`` leaves behind, as :class:`Field` (``alpha`` is kept in
  the attribute ``alpha_``). The base class writes and reads them
  (:meth:`Forecaster.get_state` / :meth:`Forecaster.set_state`);
* ``fit`` (sets the state, returns ``self``) and ``predict`` (plain arrays keyed
  ``mean``, ``lo-<level>`` and ``hi-<level>``).

A fitted model serializes to explicit, versioned, JSON-compatible data with
``to_dict`` and comes back with ``from_dict``; nothing is ever pickled.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Sequence

import numpy as np

from forecasting.errors import ConfigError, ModelError

FORMAT_VERSION = 1

_KINDS: dict[type, str] = {
    bool: "true or false",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
}


def _is_kind(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is list:
        return isinstance(value, (list, tuple))
    return isinstance(value, kind)


def _one_of(values: Sequence[Any]) -> str:
    shown = ["null" if v is None else repr(v) for v in values]
    return " or ".join(shown) if len(shown) == 2 else f"one of {', '.join(shown)}"


@dataclass(frozen=True)
class Param:
    """One hyper-parameter, declared once by its model.

    Args:
        name: the key in ``model_params.<model>`` (and the attribute it is set as).
        kind: ``bool``, ``int``, ``float`` (any number, stored as float), ``str`` or
            ``list`` (stored as list).
        default: the value when the key is absent, or a function of the model giving it
            (e.g. of its seasons; see :func:`seasons`).
        within: the numeric range in interval notation: ``"[1, inf)"``, ``"(0, 1]"``.
        choices: the only values allowed (instead of ``kind`` and ``within``).
        nullable: ``None`` is allowed too.
        allowed: what an error says is allowed; derived from the above when empty.
        check: a further test of the value (e.g. of a list's items).
    """

    name: str
    kind: type = float
    default: Any = None
    within: str = ""
    choices: tuple[Any, ...] = ()
    nullable: bool = False
    allowed: str = ""
    check: Callable[[Any], bool] | None = None

    def __post_init__(self) -> None:
        if self.within and (self.within[0] not in "[(" or self.within[-1] not in "])"):
            raise ValueError(
                f"Param {self.name!r}: within={self.within!r} is not an interval like '[1, inf)'"
            )
        self.bounds()  # a malformed range fails where it is declared

    def bounds(self) -> tuple[float, float, bool, bool]:
        """``(low, high, low included, high included)`` of ``within``."""
        if not self.within:
            return -math.inf, math.inf, True, True
        lo, hi = (float(v) for v in self.within[1:-1].split(","))
        return lo, hi, self.within[0] == "[", self.within[-1] == "]"

    def describe(self) -> str:
        """What is allowed, as an error message says it."""
        if self.allowed:
            return self.allowed
        if self.choices:
            return _one_of(self.choices)
        text = _KINDS[self.kind]
        if self.within:
            lo, hi, lo_in, hi_in = self.bounds()
            if math.isinf(hi):
                text += f" {'>=' if lo_in else '>'} {lo:g}"
            else:
                text += f" in {self.within[0]}{lo:g}, {hi:g}{self.within[-1]}"
        return f"null or {text}" if self.nullable else text

    def accepts(self, value: Any) -> bool:
        if value is None and self.nullable:
            return True
        if self.choices:
            return value in self.choices
        if not _is_kind(value, self.kind):
            return False
        if self.within:
            lo, hi, lo_in, hi_in = self.bounds()
            above = value >= lo if lo_in else value > lo
            below = value <= hi if hi_in else value < hi
            if not (above and below):
                return False
        return self.check is None or bool(self.check(value))

    @classmethod
    def max_history(cls, k: int) -> "Param":
        """``max_history``: fit on at most this many trailing points (default ``k`` times
        the longest season); ``None`` uses everything."""
        return cls("max_history", int, seasons(k), within="[10, inf)", nullable=True)

    def parse(self, model: "Forecaster", params: dict[str, Any]) -> Any:
        """The value of this parameter for ``model`` (``params`` as given)."""
        if self.name not in params:
            value = self.default(model) if callable(self.default) else self.default
            return list(value) if isinstance(value, list) else value  # never the shared default
        value = params[self.name]
        if not self.accepts(value):
            raise ConfigError(f"{model.name}.{self.name}", value, self.describe())
        if value is not None and self.kind in (float, list) and not self.choices:
            return self.kind(value)
        return value


def seasons(k: int) -> Callable[["Forecaster"], int]:
    """A default of ``k`` times the model's longest season (``max_history``)."""
    return lambda model: k * model.longest_season


def _array(value: Any) -> list[Any]:
    return np.asarray(value, dtype=float).tolist()


def _float_array(value: Any) -> np.ndarray:
    return np.asarray(value, dtype=float)


# kind -> (to JSON, from JSON)
_CODECS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "float": (float, float),
    "int": (int, int),
    "bool": (bool, bool),
    "str": (str, str),
    "array": (_array, _float_array),  # any number of dimensions
    "ints": (lambda v: [int(x) for x in v], lambda v: [int(x) for x in v]),
    "arrays": (lambda v: [_array(a) for a in v], lambda v: [_float_array(a) for a in v]),
}


@dataclass(frozen=True)
class Field:
    """One entry of a fitted model's state: ``key`` in the JSON state, kept in the
    attribute ``<key>_``; ``kind`` one of float, int, bool, str, array, ints, arrays;
    ``optional``: may be ``None``."""

    key: str
    kind: str = "float"
    optional: bool = False

    def __post_init__(self) -> None:
        if self.kind not in _CODECS:
            raise ValueError(f"Field {self.key!r}: kind {self.kind!r} is not one of {', '.join(_CODECS)}")

    @property
    def attr(self) -> str:
        return f"{self.key}_"

    def encode(self, value: Any) -> Any:
        return None if value is None and self.optional else _CODECS[self.kind][0](value)

    def decode(self, value: Any) -> Any:
        return None if value is None and self.optional else _CODECS[self.kind][1](value)


def check_format(data: dict[str, Any], what: str) -> None:
    """Refuse serialized data of another format version than this release writes."""
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelError(
            f"{what} has format_version {version!r}: this release reads format_version {FORMAT_VERSION}"
        )


class Forecaster:
    """Base class: one model for one series.

    Args:
        season_length: the main season in steps (24 for hourly data with a daily cycle).
        seasonalities: every season in steps, shortest first (e.g. ``(24, 168)``).
        freq: pandas frequency alias of the series (``"h"``, ``"30min"``, ``"D"``).
        **params: model hyper-parameters (the class's ``parameters``; see each model's
            docstring).

    Raises:
        ConfigError: an unknown parameter, or a value the model does not allow.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    supports_exog: ClassVar[bool] = False
    is_global: ClassVar[bool] = False
    requires: ClassVar[tuple[str, ...]] = ()  # modules training needs (beyond the core ones)
    extra: ClassVar[str] = ""  # the pip extra that brings them
    #: the hyper-parameters; ``None``: not declared (the subclass reads ``self.params``)
    parameters: ClassVar[tuple[Param, ...] | None] = None
    #: the fitted state, in the order it is written
    state_fields: ClassVar[tuple[Field, ...]] = ()
    #: attributes derived from the state, dropped when the state changes
    caches: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for p in cls.parameters or ():
            if hasattr(cls, p.name):
                raise TypeError(f"{cls.__name__}: parameter {p.name!r} would hide the attribute of that name")

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
        if self.parameters is not None:
            check_keys(self.name, self.params, [p.name for p in self.parameters])
            for p in self.parameters:
                setattr(self, p.name, p.parse(self, self.params))
            self.check()
        self.forget()

    @property
    def longest_season(self) -> int:
        return max(self.seasonalities or (self.season_length,))

    def check(self) -> None:
        """Rules across parameters (after each one was parsed); raise ConfigError."""

    def need_season(self) -> None:
        """Refuse a ``season_length`` too short for a seasonal model."""
        if self.season_length < 2:
            raise ConfigError("season_length", self.season_length, "an integer >= 2")

    def forget(self) -> None:
        """Drop the ``caches`` (built again from the state on first use)."""
        for attr in self.caches:
            setattr(self, attr, None)

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

    # -- state --------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        """Fitted state as JSON-compatible data (lists, floats, strings)."""
        return {f.key: f.encode(getattr(self, f.attr)) for f in self.state_fields}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restore what ``get_state`` returned (an optional field may be absent: a state
        written before the field existed)."""
        for f in self.state_fields:
            setattr(self, f.attr, f.decode(state.get(f.key) if f.optional else state[f.key]))
        self.forget()

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
        check_format(data, f"model {data.get('model')!r}")
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


def clean_y(model: str, y: Any, max_history: int | None) -> np.ndarray:
    y = np.asarray(y, dtype=float)
    if y.ndim != 1:
        raise ModelError(f"{model} expects a 1-d series; got shape {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ModelError(f"{model} got {int(np.sum(~np.isfinite(y)))} missing or infinite values")
    if max_history is not None:
        y = y[-max_history:]
    return y


def as_columns(X: Any) -> np.ndarray:
    """Regressors as a float matrix, a 1-d ``X`` being one column."""
    X = np.asarray(X, dtype=float)
    return X[:, None] if X.ndim == 1 else X


def check_finite(values: np.ndarray, what: str) -> None:
    """Refuse NaN or infinite ``values`` (``what`` names them in the message)."""
    bad = int(np.sum(~np.isfinite(values)))
    if bad:
        raise ModelError(f"{what} has {bad} non-finite values")


def check_h(h: Any) -> int:
    if isinstance(h, bool) or int(h) != h or h < 1:
        raise ModelError(f"horizon h must be a positive integer; got {h!r}")
    return int(h)
