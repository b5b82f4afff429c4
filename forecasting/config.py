"""Settings in one typed place.

Defaults are the dataclass defaults below and are mirrored, with comments, in
``conf/default.yaml`` (a test keeps the two equal). ``load_config(path)`` overlays a
YAML file on the defaults, then the environment (``MMF_LAKEHOUSE``,
``MLFLOW_TRACKING_URI``, ``SPARK_MASTER``, ``MMF_API_KEY``), and validates everything
before any work starts: a bad value raises :class:`ConfigError` naming the key, the
value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from forecasting.errors import ConfigError

METRIC_NAMES = ("mae", "rmse", "smape", "mase", "bias", "pinball")
ENGINES = ("local", "spark")
EXTRA_COLUMNS = ("ignore", "refuse", "add")  # ingest.extra_columns


@dataclass
class Backtest:
    windows: int = 1
    step: int | None = None
    metric: str = "mase"


@dataclass
class Ensemble:
    enabled: bool = False
    top_k: int = 3
    method: str = "median"


@dataclass
class Cleaning:
    min_length: int = 336
    max_gap_fill: int = 6
    max_missing_share: float = 0.2
    outlier_z: float = 6.0
    clip_outliers: bool = False
    max_negative_share: float = 0.0
    duplicates: str = "last"
    max_points_per_series: int = 500_000


@dataclass
class MLflow:
    tracking_uri: str | None = None
    experiment: str = "mmf"
    registered_model: str = "mmf-many-models"
    promotion_tolerance: float = 0.0
    sample_plots: int = 4


@dataclass
class Ingest:
    extra_columns: str = "ignore"


@dataclass
class Nightly:
    source: str | None = None
    max_failed_share: float = 0.2


@dataclass
class Tune:
    enabled: bool = False
    max_evals: int = 10
    timeout_s: float = 30
    windows: int = 3
    search_spaces: str | None = None
    parallelism: int = 2
    global_timeout_s: float = 900


@dataclass
class Deep:
    num_processes: int = 1
    use_gpu: str = "auto"


@dataclass
class Spark:
    master: str = "local[*]"
    shuffle_partitions: int | None = None
    driver_memory: str | None = None


@dataclass
class Serve:
    host: str = "127.0.0.1"
    port: int = 8080
    api_key: str | None = None
    max_horizon: int = 720


@dataclass
class Config:
    lakehouse: str = "./lakehouse"
    storage_options: dict[str, str] = field(default_factory=dict)
    retention_hours: int = 168
    freq: str | None = None
    horizon: int = 48
    levels: list[int] = field(default_factory=lambda: [80, 95])
    engine: str = "local"
    workers: int | None = None
    seed: int = 0
    country: str = "GB"
    models: list[str] = field(default_factory=lambda: ["seasonal_naive", "weekly_naive", "ets", "theta", "mstl"])
    model_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_timeout_s: float = 60
    backtest: Backtest = field(default_factory=Backtest)
    ensemble: Ensemble = field(default_factory=Ensemble)
    ingest: Ingest = field(default_factory=Ingest)
    cleaning: Cleaning = field(default_factory=Cleaning)
    mlflow: MLflow = field(default_factory=MLflow)
    nightly: Nightly = field(default_factory=Nightly)
    tune: Tune = field(default_factory=Tune)
    deep: Deep = field(default_factory=Deep)
    spark: Spark = field(default_factory=Spark)
    serve: Serve = field(default_factory=Serve)

    # -- derived --------------------------------------------------------------------
    @property
    def backtest_step(self) -> int:
        return self.backtest.step or self.horizon

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "Config":
        """A validated copy with top-level or dotted keys changed (``backtest.windows``)."""
        data = self.to_dict()
        for key, value in changes.items():
            _set_dotted(data, key, value)
        return from_dict(data)

    def mlflow_tracking_uri(self) -> str:
        """Configured URI, else a SQLite store beside the tables (local roots only)."""
        if self.mlflow.tracking_uri:
            return self.mlflow.tracking_uri
        if "://" in self.lakehouse:
            raise ConfigError(
                "mlflow.tracking_uri",
                None,
                "a tracking URI (or MLFLOW_TRACKING_URI) when the lakehouse is remote",
            )
        return "sqlite:///" + str(Path(self.lakehouse).resolve() / "mlflow.db")

    def validate(self) -> "Config":
        from forecasting.models import all_models

        MODELS = all_models()  # per-series and global models

        _check(self.horizon, "horizon", lambda v: _is_int(v) and v >= 1, "an integer >= 1")
        _check(
            self.retention_hours,
            "retention_hours",
            lambda v: _is_int(v) and v >= 0,
            "an integer >= 0 (mmf vacuum refuses less than 168 without --force)",
        )
        _check(
            self.ingest.extra_columns,
            "ingest.extra_columns",
            lambda v: v in EXTRA_COLUMNS,
            f"one of {', '.join(EXTRA_COLUMNS)}",
        )
        _check(
            self.levels,
            "levels",
            lambda v: isinstance(v, list) and v and all(_is_int(x) and 0 < x < 100 for x in v),
            "a non-empty list of integers between 1 and 99",
        )
        self.levels = sorted(set(self.levels))
        _check(self.engine, "engine", lambda v: v in ENGINES, f"one of {', '.join(ENGINES)}")
        _check(
            self.workers, "workers", lambda v: v is None or (_is_int(v) and v >= 1), "null or an integer >= 1"
        )
        _check(
            self.freq,
            "freq",
            _valid_freq,
            "null or a pandas frequency alias such as h, 30min, D (not the deprecated H, T)",
        )
        _check(
            self.models,
            "models",
            lambda v: isinstance(v, list) and len(v) > 0,
            "a non-empty list of model names",
        )
        for name in self.models:
            _check(name, "models", lambda v: v in MODELS, f"one of {', '.join(sorted(MODELS))}")
        for name in self.model_params:
            _check(name, "model_params", lambda v: v in MODELS, f"keys among {', '.join(sorted(MODELS))}")
        self._validate_tuning_and_global_models()
        _check(
            self.model_timeout_s,
            "model_timeout_s",
            lambda v: isinstance(v, (int, float)) and v > 0,
            "a number > 0",
        )
        _check(self.backtest.windows, "backtest.windows", lambda v: _is_int(v) and v >= 1, "an integer >= 1")
        _check(
            self.backtest.step,
            "backtest.step",
            lambda v: v is None or (_is_int(v) and v >= 1),
            "null or an integer >= 1",
        )
        _check(
            self.backtest.metric,
            "backtest.metric",
            lambda v: v in METRIC_NAMES,
            f"one of {', '.join(METRIC_NAMES)}",
        )
        _check(self.ensemble.top_k, "ensemble.top_k", lambda v: _is_int(v) and v >= 2, "an integer >= 2")
        _check(self.ensemble.method, "ensemble.method", lambda v: v in ("mean", "median"), "mean or median")
        c = self.cleaning
        _check(c.min_length, "cleaning.min_length", lambda v: _is_int(v) and v >= 2, "an integer >= 2")
        _check(c.max_gap_fill, "cleaning.max_gap_fill", lambda v: _is_int(v) and v >= 0, "an integer >= 0")
        _check(
            c.max_points_per_series,
            "cleaning.max_points_per_series",
            lambda v: _is_int(v) and v >= 1,
            "an integer >= 1",
        )
        _check(c.clip_outliers, "cleaning.clip_outliers", lambda v: isinstance(v, bool), "true or false")
        for key in ("max_missing_share", "max_negative_share"):
            _check(
                getattr(c, key),
                f"cleaning.{key}",
                lambda v: isinstance(v, (int, float)) and 0 <= v <= 1,
                "a share between 0 and 1",
            )
        _check(
            c.outlier_z, "cleaning.outlier_z", lambda v: isinstance(v, (int, float)) and v > 0, "a number > 0"
        )
        _check(c.duplicates, "cleaning.duplicates", lambda v: v in ("last", "mean"), "last or mean")
        _check(
            self.mlflow.promotion_tolerance,
            "mlflow.promotion_tolerance",
            lambda v: isinstance(v, (int, float)) and v >= 0,
            "a number >= 0",
        )
        _check(
            self.mlflow.registered_model,
            "mlflow.registered_model",
            lambda v: isinstance(v, str) and v.strip() != "",
            "a non-empty name",
        )
        _check(
            self.nightly.max_failed_share,
            "nightly.max_failed_share",
            lambda v: isinstance(v, (int, float)) and 0 <= v <= 1,
            "a share between 0 and 1",
        )
        _check(
            self.serve.port, "serve.port", lambda v: _is_int(v) and 0 <= v < 65536, "a port number 0..65535"
        )
        return self

    def _validate_tuning_and_global_models(self) -> None:
        from forecasting.models import unavailable_reason

        for name in self.models:
            why = unavailable_reason(name)
            if why is not None:
                raise ConfigError("models", name, f"a model whose packages are installed: {why}")
        t = self.tune
        _check(t.enabled, "tune.enabled", lambda v: isinstance(v, bool), "true or false")
        _check(t.max_evals, "tune.max_evals", lambda v: _is_int(v) and v >= 1, "an integer >= 1")
        _check(t.windows, "tune.windows", lambda v: _is_int(v) and v >= 1, "an integer >= 1")
        _check(t.parallelism, "tune.parallelism", lambda v: _is_int(v) and v >= 1, "an integer >= 1")
        for key in ("timeout_s", "global_timeout_s"):
            _check(
                getattr(t, key),
                f"tune.{key}",
                lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
                "a number > 0",
            )
        _check(
            t.search_spaces,
            "tune.search_spaces",
            lambda v: v is None or (isinstance(v, str) and v.strip() != ""),
            "null or the path of a YAML file",
        )
        if t.enabled:  # a bad search-space file fails now, before any work starts
            from forecasting.tuning import load_search_spaces

            load_search_spaces(t.search_spaces)
        _check(
            self.spark.driver_memory,
            "spark.driver_memory",
            lambda v: v is None or (isinstance(v, str) and re.fullmatch(r"[1-9][0-9]*[kmgt]", v.lower()) is not None),
            "null or a JVM size such as 4g or 512m",
        )
        d = self.deep
        _check(d.num_processes, "deep.num_processes", lambda v: _is_int(v) and v >= 1, "an integer >= 1")
        _check(d.use_gpu, "deep.use_gpu", lambda v: v in ("auto", True, False), "auto, true or false")


def _valid_freq(value: Any) -> bool:
    """A pandas alias; deprecated ones (``H``, ``T``, ``M``) are refused whatever the
    warning filters, and a fixed step must be positive (``0h`` would divide by zero)."""
    if value is None:
        return True
    if not isinstance(value, str):
        return False
    import warnings

    import pandas as pd

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            offset = pd.tseries.frequencies.to_offset(value)
    except (ValueError, TypeError, FutureWarning):
        return False
    return not isinstance(offset, pd.offsets.Tick) or pd.Timedelta(offset) > pd.Timedelta(0)


def _is_int(value: Any) -> bool:
    """An integer setting; YAML booleans (``yes``/``true``) are not integers."""
    return isinstance(value, int) and not isinstance(value, bool)


def _check(value: Any, key: str, ok, allowed: str) -> None:
    try:
        good = ok(value)
    except Exception:  # a predicate that cannot even evaluate means the value is wrong
        good = False
    if not good:
        raise ConfigError(key, value, allowed)


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        if node.get(part) is None:  # absent, or a section left empty in the YAML
            node[part] = {}
        elif not isinstance(node[part], dict):
            raise ConfigError(".".join(parts[: i + 1]), node[part], "a mapping of settings")
        node = node[part]
    node[parts[-1]] = value


def _merge(cls: type, base: Any, patch: dict[str, Any], prefix: str = "") -> Any:
    """Overlay ``patch`` on dataclass instance ``base``; unknown keys are refused."""
    if not isinstance(patch, dict):
        raise ConfigError(prefix.rstrip(".") or "<root>", patch, "a mapping of settings")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {name: getattr(base, name) for name in fields}
    for key, value in patch.items():
        if key not in fields:
            raise ConfigError(prefix + str(key), value, f"a known setting ({', '.join(fields)})")
        current = values[key]
        if dataclasses.is_dataclass(current):
            values[key] = _merge(type(current), current, value or {}, prefix + key + ".")
        else:
            values[key] = value
    return cls(**values)


def from_dict(data: dict[str, Any]) -> Config:
    return _merge(Config, Config(), data).validate()


def default_conf_path() -> Path:
    return Path(__file__).resolve().parent.parent / "conf" / "default.yaml"


def load_config(path: str | os.PathLike | None = None, **overrides: Any) -> Config:
    """Defaults, then ``path`` (YAML), then the environment, then ``overrides``
    (dotted keys allowed; ``None`` values are ignored)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("--conf", str(path), "an existing YAML file")
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError("--conf", str(path), f"valid YAML ({exc})") from None
        if not isinstance(loaded, dict):
            raise ConfigError("--conf", str(path), "a YAML mapping of settings")
        data = loaded
    env = {
        "lakehouse": os.environ.get("MMF_LAKEHOUSE"),
        "mlflow.tracking_uri": os.environ.get("MLFLOW_TRACKING_URI"),
        "spark.master": os.environ.get("SPARK_MASTER"),
        "serve.api_key": os.environ.get("MMF_API_KEY"),
    }
    for key, value in {**env, **overrides}.items():
        if value is not None:
            _set_dotted(data, key, value)
    return from_dict(data)
