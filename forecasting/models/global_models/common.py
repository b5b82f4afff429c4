"""What the global models share: the panel of series, the weights store, calendar
features, per-series scaling, and the per-series view of a global model.

A global model is fitted once across many series (on the driver, by
:mod:`training.global_models`). Its parameters (network weights, a boosted ensemble) are
one :class:`GlobalWeights`, stored ONCE: in the many-models pyfunc as the artifact
``global_models.npz`` (numpy arrays, no pickle; see :func:`save` / :func:`load`). Each
series keeps only a small, explicit JSON state (:class:`GlobalForecaster`): the weights'
content-hash id, its scaling and its last inputs. ``predict`` looks the weights up in
this process's store, which :func:`load` fills (the pyfunc does that once in
``load_context``).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np
import pandas as pd

from forecasting.errors import ModelError
from forecasting.models.base import Field, Forecaster, as_columns, check_finite, check_h

STORE_FORMAT_VERSION = 1
_META = "__meta__"

# What batch inference (``forecast_many``) takes and gives
States = Sequence[dict[str, Any]]  # per-series states, as ``GlobalForecaster.get_state`` writes them
Regressors = Sequence[np.ndarray | None]  # per-series future ``X`` (temperature in column 0)
Levels = Sequence[int]
Forecasts = list[dict[str, np.ndarray]]  # per series: mean, lo-<level>, hi-<level>


# -- weights and their store ----------------------------------------------------------
@dataclass
class GlobalWeights:
    """The fitted parameters of one global model: ``meta`` (JSON-compatible: the
    architecture, feature settings, scaling of shared regressors) and named ``arrays``."""

    model: str
    meta: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    _id: str | None = field(default=None, repr=False)

    @property
    def id(self) -> str:
        """``<model>-<16 hex>``: a digest of the meta and every array (same content,
        same id, so the many-models pyfunc never holds one set twice)."""
        if self._id is None:
            h = hashlib.sha256(self.model.encode())
            h.update(json.dumps(self.meta, sort_keys=True, default=_json_default).encode())
            for name in sorted(self.arrays):
                arr = np.ascontiguousarray(self.arrays[name])
                h.update(name.encode())
                h.update(str(arr.dtype).encode())
                h.update(str(arr.shape).encode())
                h.update(arr.tobytes())
            self._id = f"{self.model}-{h.hexdigest()[:16]}"
        return self._id

    @property
    def n_bytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays.values()))


_STORE: dict[str, GlobalWeights] = {}
_CACHE: dict[str, Any] = {}  # per-weights objects built on first use (a LightGBM booster)
_LOCK = threading.Lock()


def register(weights: GlobalWeights) -> str:
    """Make ``weights`` available to the per-series forecasters of this process."""
    with _LOCK:
        _STORE[weights.id] = weights
    return weights.id


def get(weights_id: str) -> GlobalWeights:
    """The registered weights ``weights_id``.

    Raises:
        ModelError: not loaded in this process.
    """
    try:
        return _STORE[weights_id]
    except KeyError:
        raise ModelError(
            f"global weights {weights_id!r} are not loaded in this process: load the many-models "
            "pyfunc (its load_context reads artifacts/global_models.npz) or call "
            "forecasting.models.global_models.load(path) first"
        ) from None


def cached(weights_id: str, key: str, build) -> Any:
    """A per-weights object (``build()`` once, then reused)."""
    k = f"{weights_id}/{key}"
    obj = _CACHE.get(k)
    if obj is None:
        obj = build()
        with _LOCK:
            _CACHE[k] = obj
    return obj


def save(path: str | Path, weights: Sequence[GlobalWeights]) -> Path:
    """Write weights to one ``.npz`` file: for each id, ``<id>/__meta__`` (a JSON
    string array) and ``<id>/<array name>``; readable with ``allow_pickle=False``."""
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    index = []
    for w in weights:
        meta = {"model": w.model, "format_version": STORE_FORMAT_VERSION, "meta": w.meta}
        arrays[f"{w.id}/{_META}"] = np.array(json.dumps(meta, default=_json_default))
        for name, arr in w.arrays.items():
            arr = np.asarray(arr)
            if arr.dtype == object:
                raise ModelError(
                    f"global weights {w.id}: array {name!r} has dtype object: expected numbers or bytes"
                )
            arrays[f"{w.id}/{name}"] = arr
        index.append(w.id)
    arrays["__index__"] = np.array(json.dumps(index))
    with path.open("wb") as fh:
        np.savez(fh, **arrays)
    return path


def read(path: str | Path) -> list[GlobalWeights]:
    """The weights in a file written by :func:`save` (no unpickling)."""
    out = []
    with np.load(Path(path), allow_pickle=False) as data:
        index = json.loads(str(data["__index__"]))
        for wid in index:
            meta = json.loads(str(data[f"{wid}/{_META}"]))
            if meta.get("format_version") != STORE_FORMAT_VERSION:
                raise ModelError(
                    f"global weights {wid} have format_version {meta.get('format_version')!r}: this release "
                    f"reads format_version {STORE_FORMAT_VERSION}"
                )
            prefix = f"{wid}/"
            arrays = {
                k[len(prefix) :]: np.array(data[k])
                for k in data.files
                if k.startswith(prefix) and k != f"{wid}/{_META}"
            }
            w = GlobalWeights(meta["model"], meta["meta"], arrays)
            if w.id != wid:
                raise ModelError(f"global weights {wid}: content does not match its id (file corrupted?)")
            out.append(w)
    return out


def load(path: str | Path) -> list[str]:
    """Read a weights file and register every set in it; returns their ids."""
    return [register(w) for w in read(path)]


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def text_to_array(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()


def array_to_text(arr: np.ndarray) -> str:
    return np.asarray(arr, dtype=np.uint8).tobytes().decode("utf-8")


# -- data -----------------------------------------------------------------------------
@dataclass
class Panel:
    """Many series ready for a global model (each sorted, regular, finite ``y``)."""

    ids: list[str]
    y: list[np.ndarray]
    ts: list[np.ndarray]  # datetime64[us]
    temperature: list[np.ndarray | None]  # (n,) one regressor, or (n, k) declared covariates
    freq: str
    seasonalities: tuple[int, ...]
    views: list[Any] | None = None  # per series, what a backtest knows of its covariates' future

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_temperature(self) -> bool:
        """Every series carries a complete temperature (else the models do without)."""
        return len(self.ids) > 0 and all(t is not None for t in self.temperature)

    def truncated(self, ends: Sequence[int]) -> "Panel":
        """Each series cut to its first ``ends[i]`` points."""
        return Panel(
            ids=list(self.ids),
            y=[y[:e] for y, e in zip(self.y, ends)],
            ts=[t[:e] for t, e in zip(self.ts, ends)],
            temperature=[None if x is None else x[:e] for x, e in zip(self.temperature, ends)],
            freq=self.freq,
            seasonalities=self.seasonalities,
            views=self.views,
        )

    def subset(self, index: Sequence[int]) -> "Panel":
        return Panel(
            ids=[self.ids[i] for i in index],
            y=[self.y[i] for i in index],
            ts=[self.ts[i] for i in index],
            temperature=[self.temperature[i] for i in index],
            freq=self.freq,
            seasonalities=self.seasonalities,
            views=None if self.views is None else [self.views[i] for i in index],
        )

    @property
    def n_exog(self) -> int:
        """Regressor columns of each series (1: temperature; k: declared covariates)."""
        first = next((t for t in self.temperature if t is not None), None)
        return 1 if first is None or np.ndim(first) == 1 else int(first.shape[1])


@dataclass(frozen=True)
class Spec:
    """What every global model of a run is fitted for."""

    horizon: int
    levels: tuple[int, ...]
    freq: str
    seasonalities: tuple[int, ...]

    @property
    def quantiles(self) -> tuple[float, ...]:
        """0.5 and the bounds of every level, ascending."""
        qs = {0.5}
        for lv in self.levels:
            qs.add(round(0.5 - lv / 200.0, 6))
            qs.add(round(0.5 + lv / 200.0, 6))
        return tuple(sorted(qs))

    @property
    def longest_season(self) -> int:
        return max(self.seasonalities or (1,))


def series_scale(y: np.ndarray, tail: int | None = None) -> tuple[float, float]:
    """``(loc, scale)`` of a history: mean and standard deviation of its last ``tail``
    points; a flat history gets scale ``max(|loc|, 1)``."""
    x = np.asarray(y, dtype=float)
    if tail:
        x = x[-tail:]
    loc = float(np.mean(x))
    scale = float(np.std(x))
    if not np.isfinite(scale) or scale <= 1e-8 * max(1.0, abs(loc)):
        scale = max(abs(loc), 1.0)
    return loc, scale


def step_timedelta(freq: str) -> np.timedelta64 | None:
    off = pd.tseries.frequencies.to_offset(freq)
    if isinstance(off, pd.offsets.Tick):
        return pd.Timedelta(off).to_timedelta64().astype("timedelta64[us]")
    return None


def future_ts(last: np.datetime64, freq: str, k: np.ndarray) -> np.ndarray:
    """``last + k * freq`` as datetime64[us]."""
    step = step_timedelta(freq)
    k = np.asarray(k, dtype="int64")
    if step is not None:
        return np.datetime64(last, "us") + k * step
    off = pd.tseries.frequencies.to_offset(freq)
    base = pd.Timestamp(last)
    return pd.DatetimeIndex([base + int(i) * off for i in k]).to_numpy(dtype="datetime64[us]")


def calendar(ts: np.ndarray) -> np.ndarray:
    """``(n, 4)``: sin/cos of the hour of day and of the day of week (Monday = 0)."""
    t = np.asarray(ts, dtype="datetime64[us]")
    days = t.astype("datetime64[D]")
    hours = (t - days).astype("timedelta64[us]").astype(np.int64) / 3.6e9
    dow = (days.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    a = 2 * np.pi * hours / 24.0
    b = 2 * np.pi * dow / 7.0
    return np.stack([np.sin(a), np.cos(a), np.sin(b), np.cos(b)], axis=-1)


def quantile_forecast(
    q: np.ndarray, quantiles: Sequence[float], level: Sequence[int]
) -> dict[str, np.ndarray]:
    """``mean`` (the median) and ``lo-L``/``hi-L`` from an ``(h, n_quantiles)`` array;
    quantiles are sorted first so bounds never cross.

    Raises:
        ModelError: a level whose quantiles the model was not trained for.
    """
    q = np.sort(np.asarray(q, dtype=float), axis=1)
    pos = {round(float(v), 6): i for i, v in enumerate(quantiles)}
    out = {"mean": q[:, pos[0.5]]}
    for lv in level:
        lo, hi = round(0.5 - lv / 200.0, 6), round(0.5 + lv / 200.0, 6)
        if lo not in pos or hi not in pos:
            trained = sorted({round(200 * abs(v - 0.5)) for v in quantiles if v != 0.5})
            raise ModelError(
                f"level {lv} was not trained: this global model has quantiles for levels {trained} "
                "(the config's levels when it was trained)"
            )
        out[f"lo-{lv}"] = q[:, pos[lo]]
        out[f"hi-{lv}"] = q[:, pos[hi]]
    return out


def temperature_scaling(panel: Panel) -> tuple[Any, Any]:
    """``(loc, scale)`` of every temperature of the panel (one scaling for all series);
    per column (lists) for ``k`` declared covariates."""
    values = (
        np.concatenate([t for t in panel.temperature if t is not None])
        if panel.has_temperature
        else np.zeros(1)
    )
    if values.ndim == 2:
        loc, scale = values.mean(axis=0), values.std(axis=0)
        return loc.tolist(), np.where(scale > 1e-8, scale, 1.0).tolist()
    loc, scale = float(np.mean(values)), float(np.std(values))
    return loc, (scale if scale > 1e-8 else 1.0)


def scaled_exog(temps: Any, meta: dict[str, Any]) -> np.ndarray:
    """Regressors scaled by the weights' ``t_loc``/``t_scale`` (per column for covariates)."""
    return (np.asarray(temps, dtype=float) - np.asarray(meta["t_loc"])) / np.asarray(meta["t_scale"])


# -- the per-series view --------------------------------------------------------------
class GlobalForecaster(Forecaster):
    """One series' view of a global model: a weights reference plus the series' own
    scaling and last inputs. ``fit`` is refused (a global model is trained across
    series by the train job); ``predict`` runs the model's numpy (or LightGBM) inference.

    State: ``weights`` (id), ``loc``, ``scale``, ``last_y`` (the last inputs, raw),
    ``last_ts`` (ISO timestamp of the last observation).
    """

    is_global: ClassVar[bool] = True
    supports_exog = True  # temperature, when the weights were trained with it
    parameters = ()
    state_fields = (
        Field("weights", "str"),
        Field("loc"),
        Field("scale"),
        Field("last_y", "array"),
        Field("last_ts", "str"),
    )

    def fit(self, y, X=None, ts=None):
        raise ModelError(
            f"{self.name} is a global model: it is trained across all series by the train job "
            "(training.global_models) before the per-series step, not fitted on one series"
        )

    def predict(self, h, X=None, level: Sequence[int] = (80, 95)):
        h = check_h(h)
        return self.forecast_many(get(self.weights_), [self.get_state()], [X], h, level)[0]

    @staticmethod
    def forecast_many(
        weights: GlobalWeights, states: States, X: Regressors, h: int, level: Levels
    ) -> Forecasts:
        """Forecasts of many series at once (the driver's backtests use this; one
        series' ``predict`` is the same call with one state)."""
        raise NotImplementedError

    # -- state ------------------------------------------------------------------------
    @classmethod
    def from_weights(
        cls,
        weights: GlobalWeights,
        y: np.ndarray,
        ts: np.ndarray,
        *,
        season_length: int,
        seasonalities: Sequence[int],
        freq: str,
        params: dict[str, Any],
    ) -> "GlobalForecaster":
        """The fitted per-series model of a series whose history ends with ``y``/``ts``."""
        model = cls(season_length=season_length, seasonalities=seasonalities, freq=freq, **params)
        model.set_state(cls.series_state(weights, y, ts))
        return model

    @classmethod
    def series_state(cls, weights: GlobalWeights, y: np.ndarray, ts: np.ndarray) -> dict[str, Any]:
        n_last = int(weights.meta["input_size"])
        if len(y) < n_last:
            raise ModelError(
                f"{cls.name} needs at least {n_last} observations as input; the series has {len(y)}"
            )
        loc, scale = series_scale(y, weights.meta.get("scale_tail"))
        return {
            "weights": weights.id,
            "loc": loc,
            "scale": scale,
            "last_y": np.asarray(y[-n_last:], dtype=float).tolist(),
            "last_ts": pd.Timestamp(ts[-1]).isoformat(),
        }


# -- inference helpers shared by the global models ---------------------------------------
def unpack_states(states: States, n_last: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(loc, scale, last_y, last_ts)`` of many series' states: ``(n,)``, ``(n,)``, the
    last ``n_last`` raw values ``(n, n_last)`` and the last timestamps (datetime64[us])."""
    loc = np.array([s["loc"] for s in states], dtype=float)
    scale = np.array([s["scale"] for s in states], dtype=float)
    last_y = np.array([np.asarray(s["last_y"], dtype=float)[-n_last:] for s in states])
    last_ts = np.array([np.datetime64(s["last_ts"], "us") for s in states])
    return loc, scale, last_y, last_ts


def future_temperatures(X: Regressors, h: int, block: int, who: str, k: int = 1) -> np.ndarray:
    """Temperature (column 0 of each series' ``X``; with ``k`` declared covariates its
    ``k`` columns) for steps 1..h, padded with the last value to whole blocks of ``block``
    steps: ``(n, ceil(h / block) * block)``, or ``(n, ..., k)``."""
    width = math.ceil(h / block) * block
    out = np.zeros((len(X), width) if k == 1 else (len(X), width, k))
    for i, xi in enumerate(X):
        t = _future_exog(xi, h, who, k)
        out[i, :h] = t
        out[i, h:] = t[-1]  # past h the block is cut off anyway
    return out


def block_starts(last_ts: np.ndarray, freq: str, h: int, block: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(done, first_ts)`` for each block of ``block`` steps covering 1..h: the steps
    already forecast and the timestamp of each series' first step of the block."""
    for done in range(0, h, block):
        yield done, np.array([future_ts(t, freq, np.array([done + 1]))[0] for t in last_ts])


def _future_exog(X: np.ndarray | None, h: int, who: str, k: int = 1) -> np.ndarray:
    """Temperature for steps 1..h as a 1-d array (column 0 of ``X``), or ``(h, k)``."""
    if X is None:
        raise ModelError(f"{who} was trained with regressors: predict needs X of shape ({h}, {k})")
    X = as_columns(X)
    if X.ndim != 2 or X.shape[0] < h or X.shape[1] < k:
        raise ModelError(f"{who}: X must have shape ({h}, {'k>=1' if k == 1 else k}); got {X.shape}")
    if k == 1:
        check_finite(X[:h, 0], f"{who}: temperature")
        return X[:h, 0]
    check_finite(X[:h, :k], f"{who}: X")
    return X[:h, :k]
