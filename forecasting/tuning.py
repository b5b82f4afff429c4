"""Hyper-parameter tuning with Hyperopt: search spaces, and one bounded TPE search.

Search spaces live in ``conf/search_spaces.yaml`` (or the file ``tune.search_spaces``
names): one mapping per model, one entry per hyper-parameter, each a single kind::

    ets:
      trend: {choice: [add, null]}
      max_history: {choice: [2, 4, 8], unit: seasons}   # x the longest season (steps)
    prophet:
      changepoint_prior_scale: {loguniform: [0.001, 0.5]}

Kinds: ``choice: [v, ...]``, ``uniform: [lo, hi]``, ``loguniform: [lo, hi]`` (lo > 0),
``quniform: [lo, hi, q]``, ``int: [lo, hi]`` (integers lo..hi). ``unit: seasons``
multiplies numeric values by the longest season of the series' frequency (so one file
serves hourly and half-hourly data). :func:`load_search_spaces` validates the file before
any work starts: an unknown model or parameter, a malformed entry, or a value the model
refuses raises :class:`ConfigError` naming the file, the entry and what is allowed.

Leakage: a model is tuned on backtest windows that end where the selection backtest
begins (``tuning_history``), so the score a tuned candidate is chosen on comes from data
its tuning never saw. The untuned configuration is evaluated first on the same tuning
windows and tuned values are adopted only when they beat it there.

:func:`minimize` runs ``hyperopt.fmin`` (TPE, ``rstate=np.random.default_rng(seed)``)
for at most ``max_evals`` evaluations and ``timeout_s`` seconds, with ``Trials`` or any
trials object passed in (``SparkTrials`` for global models on Spark). Hyperopt is
imported only when a search runs.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import yaml

from forecasting.errors import ConfigError, MMFError
from forecasting.models import all_models, get_model

KINDS = ("choice", "uniform", "loguniform", "quniform", "int")
UNITS = (None, "steps", "seasons")
DEFAULT_SPACES = Path(__file__).resolve().parent.parent / "conf" / "search_spaces.yaml"
_SAMPLE_SEASONS = (24, 168)  # seasonalities used to check values against the models


@dataclass(frozen=True)
class ParamSpec:
    """One hyper-parameter's range: ``kind`` in :data:`KINDS`, its ``values`` (the
    options of a choice, else the bounds), and the ``unit`` of numeric values."""

    kind: str
    values: tuple[Any, ...]
    unit: str | None = None

    def samples(self) -> list[Any]:
        """Values to check against the model: every option, or the bounds."""
        if self.kind == "choice":
            return list(self.values)
        lo, hi = self.values[0], self.values[1]
        if self.kind == "int" or (self.kind == "quniform" and _all_int(self.values)):
            return [int(lo), int(hi)]
        return [float(lo), float(hi)]


SearchSpace = dict[str, ParamSpec]


# -- loading and validation -----------------------------------------------------------
def load_search_spaces(path: str | Path | None = None) -> dict[str, SearchSpace]:
    """The validated search spaces of ``path`` (default ``conf/search_spaces.yaml``).

    Raises:
        ConfigError: a missing or invalid file, an unknown model or parameter, a
            malformed entry, or a value the model does not accept.
    """
    p = Path(path) if path is not None else DEFAULT_SPACES
    where = str(p)
    if not p.is_file():
        raise ConfigError("tune.search_spaces", where, "an existing YAML file of search spaces")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError("tune.search_spaces", where, f"valid YAML ({exc})") from None
    return validate_search_spaces(data, source=p.name)


def validate_search_spaces(data: Any, source: str = "search_spaces") -> dict[str, SearchSpace]:
    """Check a parsed search-space mapping and return it as :class:`ParamSpec` s."""
    MODELS = all_models()
    if not isinstance(data, dict):
        raise ConfigError(source, data, "a mapping of model name -> {parameter: {kind: values}}")
    out: dict[str, SearchSpace] = {}
    for model, params in data.items():
        key = f"{source}: {model}"
        if model not in MODELS:
            raise ConfigError(key, model, f"a model name among {', '.join(sorted(MODELS))}")
        if not isinstance(params, dict) or not params:
            raise ConfigError(key, params, "a non-empty mapping of parameter -> {kind: values}")
        space: SearchSpace = {}
        for name, spec in params.items():
            space[str(name)] = _parse_spec(f"{key}.{name}", spec)
        _check_against_model(key, model, space)
        out[str(model)] = space
    return out


def _parse_spec(key: str, spec: Any) -> ParamSpec:
    if not isinstance(spec, dict):
        raise ConfigError(key, spec, f"a mapping with one of {', '.join(KINDS)} (and optionally unit)")
    unit = spec.get("unit")
    kinds = [k for k in spec if k != "unit"]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or len(kinds) != 1:
        raise ConfigError(key, spec, f"exactly one of {', '.join(KINDS)} (and optionally unit)")
    if unit not in UNITS:
        raise ConfigError(f"{key}.unit", unit, "steps or seasons (multiples of the longest season)")
    kind = kinds[0]
    values = spec[kind]
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{key}.{kind}", values, "a non-empty list")
    if kind == "choice":
        if unit == "seasons" and not all(_is_number(v) and v > 0 for v in values):
            raise ConfigError(f"{key}.choice", values, "positive numbers when unit is seasons")
        if any(isinstance(v, (dict, list)) for v in values):
            raise ConfigError(
                f"{key}.choice", values, "a list of scalars (numbers, strings, true/false, null)"
            )
        return ParamSpec(kind, tuple(values), unit)
    n = 3 if kind == "quniform" else 2
    shape = "[lo, hi, q]" if kind == "quniform" else "[lo, hi]"
    if len(values) != n or not all(_is_number(v) for v in values):
        raise ConfigError(f"{key}.{kind}", values, f"{shape} of numbers")
    lo, hi = float(values[0]), float(values[1])
    if not lo < hi:
        raise ConfigError(f"{key}.{kind}", values, "lo < hi")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"{key}.{kind}", values, "0 < lo < hi (log scale)")
    if kind == "quniform" and not float(values[2]) > 0:
        raise ConfigError(f"{key}.{kind}", values, "a step q > 0")
    if kind == "int" and not _all_int(values):
        raise ConfigError(f"{key}.{kind}", values, "[lo, hi] of integers")
    return ParamSpec(kind, tuple(values), unit)


def _check_against_model(key: str, model: str, space: SearchSpace) -> None:
    """Build the model once per sampled value, so a parameter it does not know, or a
    value it refuses, fails now and not in the middle of a run."""
    for name, spec in space.items():
        for value in spec.samples():
            value = scale_value(spec, value, max(_SAMPLE_SEASONS))
            try:
                get_model(
                    model, season_length=_SAMPLE_SEASONS[0], seasonalities=_SAMPLE_SEASONS, **{name: value}
                )
            except ConfigError as exc:
                raise ConfigError(
                    f"{key}.{name}", value, f"a value {model} accepts ({exc.allowed})"
                ) from None
            except MMFError as exc:
                raise ConfigError(f"{key}.{name}", value, f"a value {model} accepts ({exc})") from None


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _all_int(values: tuple[Any, ...] | list[Any]) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


def scale_value(spec: ParamSpec, value: Any, longest_season: int) -> Any:
    """A sampled value in the model's own unit (``unit: seasons`` -> steps)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if spec.kind == "int" or (spec.kind == "quniform" and _all_int(spec.values)):
        value = int(round(float(value)))
    if spec.unit == "seasons":
        return int(round(float(value) * longest_season))
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return value


# -- hyperopt -------------------------------------------------------------------------
def hyperopt_space(space: SearchSpace) -> dict[str, Any]:
    """Hyperopt expressions, one label per parameter."""
    from hyperopt import hp

    out: dict[str, Any] = {}
    for name, spec in space.items():
        v = spec.values
        if spec.kind == "choice":
            out[name] = hp.choice(name, list(v))
        elif spec.kind == "uniform":
            out[name] = hp.uniform(name, float(v[0]), float(v[1]))
        elif spec.kind == "loguniform":
            out[name] = hp.loguniform(name, math.log(float(v[0])), math.log(float(v[1])))
        elif spec.kind == "quniform":
            out[name] = hp.quniform(name, float(v[0]), float(v[1]), float(v[2]))
        else:  # int
            out[name] = hp.quniform(name, float(v[0]) - 0.5, float(v[1]) + 0.5, 1)
    return out


def decode(space: SearchSpace, sample: Mapping[str, Any], longest_season: int) -> dict[str, Any]:
    """A hyperopt sample as the model's parameters (plain Python values)."""
    out = {}
    for name, spec in space.items():
        value = sample[name]
        if spec.kind == "int":
            value = min(max(int(round(float(value))), int(spec.values[0])), int(spec.values[1]))
        out[name] = scale_value(spec, value, longest_season)
    return out


@dataclass
class TuneResult:
    """Outcome of one search. ``params`` are the adopted values (``{}`` when the
    untuned configuration stayed best); ``trials`` has one record per evaluation."""

    params: dict[str, Any]
    loss: float
    default_loss: float
    evals: int
    seconds: float
    best: dict[str, Any] = field(default_factory=dict)  # best sampled values, adopted or not
    trials: list[dict[str, Any]] = field(default_factory=list)

    @property
    def adopted(self) -> bool:
        return bool(self.params)

    def summary(self) -> dict[str, Any]:
        """The ``tuned_json`` entry of one model."""
        return {
            "params": self.params,
            "best": self.best,
            "loss": _finite(self.loss),
            "default_loss": _finite(self.default_loss),
            "evals": self.evals,
            "tune_s": round(self.seconds, 3),
        }


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def minimize(
    objective: Callable[[dict[str, Any]], float],
    space: SearchSpace,
    *,
    max_evals: int,
    timeout_s: float | None,
    seed: int,
    longest_season: int,
    default_loss: float = float("inf"),
    trials: Any = None,
) -> TuneResult:
    """Minimise ``objective(params)`` over ``space`` with TPE.

    ``objective`` gets the model's parameters (decoded, in model units) and returns a
    loss; an exception or a non-finite loss makes that trial fail (it is recorded and
    the search goes on). ``default_loss`` is the untuned configuration's loss: the best
    trial is adopted only when strictly better. ``trials`` defaults to a fresh
    ``hyperopt.Trials``; pass ``SparkTrials`` to spread evaluations over Spark.
    """
    from hyperopt import STATUS_OK, Trials, fmin, space_eval, tpe

    start = time.perf_counter()
    hspace = hyperopt_space(space)
    wrapped = partial(_trial, objective, space, longest_season)
    trials = trials if trials is not None else Trials()
    best_raw = None
    try:
        with warnings.catch_warnings():
            # SparkTrials' dispatcher thread (pinned-thread mode) warns on every trial
            # that it got no session to copy job tags from: noise, and fatal under -W error.
            warnings.filterwarnings("ignore", message="Spark session is not provided", category=UserWarning)
            best_raw = fmin(
                wrapped,
                hspace,
                algo=tpe.suggest,
                max_evals=int(max_evals),
                timeout=timeout_s,
                trials=trials,
                rstate=np.random.default_rng(seed),
                show_progressbar=False,
                verbose=False,
            )
    except Exception as exc:  # noqa: BLE001 - hyperopt raises when every trial failed
        if "no successful" not in str(exc).lower() and "all trials failed" not in str(exc).lower():
            raise
    records = [_record(t) for t in trials.trials]
    ok = [r for r in records if r["status"] == STATUS_OK]
    best: dict[str, Any] = {}
    loss = float("inf")
    if best_raw is not None and ok:
        best = decode(space, space_eval(hspace, best_raw), longest_season)
        loss = min(r["loss"] for r in ok)
    adopted = dict(best) if (best and loss < default_loss) else {}
    return TuneResult(
        params=adopted,
        loss=loss if adopted else default_loss,
        default_loss=default_loss,
        evals=len(records),
        seconds=time.perf_counter() - start,
        best=best,
        trials=records,
    )


def _trial(
    objective: Callable[[dict[str, Any]], float],
    space: SearchSpace,
    longest_season: int,
    sample: dict[str, Any],
) -> dict[str, Any]:
    """One evaluation as hyperopt records it: the loss of the decoded ``sample``, or a
    failed trial with the error (an exception or a non-finite loss)."""
    from hyperopt import STATUS_FAIL, STATUS_OK

    params = decode(space, sample, longest_season)
    began = time.time()
    t0 = time.perf_counter()
    try:
        loss = float(objective(params))
    except Exception as exc:  # noqa: BLE001 - a failing trial is recorded, not fatal
        outcome = {"status": STATUS_FAIL, "error": f"{type(exc).__name__}: {exc}"[:300]}
    else:
        if math.isfinite(loss):
            outcome = {"status": STATUS_OK, "loss": loss}
        else:
            outcome = {"status": STATUS_FAIL, "error": f"non-finite loss {loss}"}
    return {**outcome, "params": params, "seconds": time.perf_counter() - t0, "started": began}


def _record(trial: dict[str, Any]) -> dict[str, Any]:
    result = trial.get("result") or {}
    return {
        "number": int(trial.get("tid", 0)),
        "status": result.get("status", "fail"),
        "loss": float(result["loss"]) if "loss" in result else float("nan"),
        "params": result.get("params", {}),
        "seconds": float(result.get("seconds", 0.0)),
        "started": result.get("started"),
        "error": result.get("error", ""),
    }


def tuning_history_end(first_selection_cutoff: int) -> int:
    """Tuning sees ``y[:end]``: everything before the first selection window's actuals."""
    return int(first_selection_cutoff)
