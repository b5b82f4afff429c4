"""Every setting of the platform: its type, bounds, default and meaning, in one place.

Each section of the YAML is a pydantic model; ``conf/default.yaml`` is rendered from
these models (:mod:`forecasting.config.defaults`), never written by hand. Validators
appear only where a rule is more than a type and a bound (a known model name, a pandas
frequency, a readable search-space file).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
from pydantic import ConfigDict, Field, field_validator, model_validator

from forecasting.config.validation import Section, refuse, set_dotted, setting, validated
from forecasting.demand import DEMAND_CLASSES, INTERMITTENT, LUMPY
from forecasting.errors import ConfigError
from forecasting.frequency import steps_per_week
from forecasting.hierarchy import LEVEL_NAMES, METHODS
from forecasting.metrics import POINT_METRICS
from forecasting.models import MODELS, all_models, unavailable_reason
from forecasting.models.global_models import is_global
from forecasting.tuning import load_search_spaces

# The one registry of engines: name -> "module:class", imported only when chosen (the
# Spark engine needs the optional pyspark). The config's allowed values, the CLI's
# --engine choice and training.engines.get_engine all read it.
ENGINES: dict[str, str] = {
    "local": "training.engines.local:LocalEngine",
    "spark": "training.engines.spark:SparkEngine",
}
METRIC_NAMES = (*POINT_METRICS, "pinball")
EXTRA_COLUMNS = ("ignore", "refuse", "add")  # ingest.extra_columns

EngineName = Literal[tuple(ENGINES)]  # type: ignore[valid-type]
MetricName = Literal[METRIC_NAMES]  # type: ignore[valid-type]
ExtraColumns = Literal[EXTRA_COLUMNS]  # type: ignore[valid-type]
DemandClass = Literal[DEMAND_CLASSES]  # type: ignore[valid-type]
Number = int | float  # an int stays an int (the config hash and MLflow params see what was written)
Level = Annotated[int, Field(gt=0, lt=100)]
FREQ_ALLOWED = (
    "null or a pandas frequency alias such as h, 30min, D, W-SUN, MS, ME, QS, QE "
    "(not the deprecated H, T, M, Q)"
)


class Backtest(Section):
    windows: int = setting(2, "rolling-origin windows", ge=1)
    step: int | None = setting(None, "steps between window cutoffs; null = horizon", ge=1)
    metric: MetricName = setting(
        "mase",
        "mae | rmse | smape | mase | bias (absolute) | rmsse | scaled_mae | pinball\n"
        "(rmsse, scaled_mae: scaled errors that suit intermittent demand)",
    )
    prefer: str | None = setting(
        "seasonal_window",
        "a model of `models` kept unless another candidate's score beats its own by more\n"
        "than prefer_margin (shrinks a noisy per-series choice toward it); null = the best wins",
        allowed="null or a model name",
        pattern=r"\S",
    )
    prefer_margin: Number = setting(
        0.3, "the preferred model stays while its score is at most (1 + this) x the best one", ge=0
    )
    store_forecasts: Literal["all", "chosen", "none"] = setting(
        "chosen",
        "backtest forecasts kept in gold/backtest_forecasts (point, bounds, actual per step):\n"
        "chosen = the chosen model's windows | all = every candidate's (horizon x windows x\n"
        "candidates rows per series) | none",
    )


class Ensemble(Section):
    enabled: bool = setting(False, "a mean/median of the top-k candidates competes as one more model")
    top_k: int = setting(3, "how many of the best candidates are combined", ge=2)
    method: Literal["mean", "median"] = setting("median", "mean | median")


class Intervals(Section):
    """Calibration of the chosen model's prediction intervals (:mod:`forecasting.calibration`)."""

    calibration: Literal["conformal", "none"] = setting(
        "conformal",
        "conformal (per series, each level's interval scaled to cover its share of the\n"
        "chosen model's backtest errors; the factors travel in model_json) | none",
    )
    min_residuals: int = setting(
        24, "fewer backtest errors than this: the model's own intervals are kept", ge=1
    )
    strength: Number = setting(
        0.8,
        "factor ** strength is applied: 1 = the per-series conformal factor, 0 = the\n"
        "model's own intervals (the chosen model's backtest errors are optimistic)",
        ge=0,
        le=1,
    )


def check_models(names: list[str], known: list[str]) -> list[str]:
    """``names`` when each is one of ``known`` and its packages are installed."""
    for name in names:
        if name not in known:
            raise refuse(f"one of {', '.join(known)}", name)
        why = unavailable_reason(name)
        if why is not None:
            raise refuse(f"a model whose packages are installed: {why}", name)
    return names


class Intermittent(Section):
    """The candidates of series with intermittent demand (forecasting/demand.py classes
    each series: smooth | erratic | intermittent | lumpy, by ADI 1.32 and CV² 0.49)"""

    classes: list[DemandClass] = setting(
        [INTERMITTENT, LUMPY],
        "series of these classes get `intermittent.models` as candidates;\n[] = every series gets `models`",
        allowed=f"a list of demand classes among {', '.join(DEMAND_CLASSES)}",
    )
    models: list[str] = setting(
        ["croston_sba", "adida", "imapa", "tsb"],
        "per-series models for those series (croston, croston_sba, tsb,\nadida, imapa, or any other)",
        allowed="a non-empty list of per-series model names",
        min_length=1,
    )
    mode: Literal["replace", "add"] = setting(
        "replace",
        "replace (these models instead of `models`: seasonal and smooth-level models fit\n"
        "zero-heavy series poorly and cost most of the time) | add (after `models`)",
    )

    @field_validator("models")
    @classmethod
    def _known_per_series_models(cls, names: list[str]) -> list[str]:
        return check_models(names, sorted(MODELS))  # global models train only for `models`


class Ingest(Section):
    extra_columns: ExtraColumns = setting(
        "ignore",
        "raw columns outside the contract: ignore (reported) | refuse (the file) |\n"
        "add (as new nullable string columns, in bronze only)",
    )


class Cleaning(Section):
    min_length: int = setting(336, "valid readings a series needs (after regularisation)", ge=2)
    max_gap_fill: int = setting(6, "longest run of missing steps filled by interpolation", ge=0)
    max_missing_share: Number = setting(
        0.2, "quarantine when more of the grid than this is missing", ge=0, le=1
    )
    outlier_z: Number = setting(
        6.0, "robust z-score (median/MAD) of the residual to the same hour on nearby days", gt=0
    )
    clip_outliers: bool = setting(False, "replace flagged outliers by the interpolated value")
    max_negative_share: Number = setting(
        0.0, "quarantine when more readings than this are negative", ge=0, le=1
    )
    all_zero: Literal["auto", "keep", "quarantine"] = setting(
        "auto",
        "a series whose every reading is 0: keep (forecast as no demand: it is classed\n"
        "intermittent, so the intermittent models are its candidates) | quarantine (as\n"
        "constant) | auto (keep at daily and coarser frequencies, an item that did not\n"
        "sell; quarantine below a day, a dead meter)",
    )
    duplicates: Literal["last", "mean"] = setting(
        "last", "conflicting duplicate timestamps: last (latest ingested) | mean"
    )
    max_points_per_series: int = setting(500_000, "larger series are quarantined as too_large", ge=1)


class ColdStart(Section):
    """Forecasts for new meters too short for per-series models (forecasting/cold_start.py)"""

    enabled: bool = setting(
        True,
        "a series with fewer valid readings than cleaning.min_length but at least\n"
        "cold_start.min_length is forecast from a profile of similar meters (status\n"
        "cold_start) instead of quarantined too_short; it graduates to per-series models\n"
        "once it has cleaning.min_length readings",
    )
    min_length: int | None = setting(
        None, "valid readings a cold-start series needs; null = one day of steps (at least 2)", ge=1
    )
    history_days: int = setting(
        28, "days of each established meter's latest history its normalised shape is taken from", ge=1
    )
    match: Literal["nearest", "hierarchy"] = setting(
        "nearest",
        "the profile of a meter whose site has too few meters: nearest (of the sites', its\n"
        "region's and the fleet's profiles, the one nearest in shape to its own readings) |\n"
        "hierarchy (its region's, else the fleet's)",
    )
    min_meters: int = setting(
        3, "meters a site (then region) profile needs; fewer: the next level (region, fleet)", ge=1
    )


class MLflow(Section):
    tracking_uri: str | None = setting(None, "null = sqlite:///<lakehouse>/mlflow.db (local roots only)")
    experiment: str = setting("mmf")
    registered_model: str = setting("mmf-many-models", allowed="a non-empty name", pattern=r"\S")
    promotion_tolerance: Number = setting(
        0.0, "challenger promoted when metric <= champion * (1 + tolerance)", ge=0
    )
    sample_plots: int = setting(4, "series drawn in the forecast-vs-actuals plot", ge=0)
    bundle: Literal["embedded", "reference", "auto"] = setting(
        "auto",
        "a version's per-series models: embedded (models.parquet in the artifact) |\n"
        "reference (the run's gold/models rows, pinned Delta version) | auto (reference\n"
        "with the Spark engine, else embedded)",
    )


class Gate(Section):
    """The promotion gate's comparison on a common window (:mod:`registry.promotion`)."""

    min_common_series: int = setting(
        1, "fewer series scored on a common window is too little data to judge", ge=1
    )
    insufficient: Literal["promote", "keep"] = setting(
        "promote", "the decision on too little common data: promote (the challenger saw\nnewer data) | keep"
    )


class Nightly(Section):
    source: str | None = setting(None, "file or folder ingested first; null = start from bronze")
    max_failed_share: Number = setting(
        0.2, "above this share of failed series the run exits non-zero", ge=0, le=1
    )


class Monitoring(Section):
    """Live accuracy of the delivered forecasts (:mod:`training.jobs.monitor`)."""

    enabled: bool = setting(
        True,
        "score earlier forecasts against the actuals that arrived (gold/accuracy)\n"
        "and flag drift (gold/drift); the nightly runs it before training",
    )
    days: int = setting(7, "live error is measured over the last this many days of actuals", ge=1)
    factor: Number = setting(
        1.5,
        "a series drifted when its live MASE > factor x its backtest MASE on each of its\n"
        "last `min_days` days of actuals (sustained: one bad day is not drift)",
        gt=0,
    )
    min_days: int = setting(
        3,
        "drift is flagged only once a series' scored actuals in the window cover this\n"
        "many days (at most `days`) and each of the last that many is over `factor`:\n"
        "a day or two of error is mostly noise; 0: from the first (its last day over)",
        ge=0,
    )


class Hierarchy(Section):
    """Forecasts of every level, made coherent (:mod:`forecasting.hierarchy`, the
    nightly's hierarchy step, gold/hierarchy)."""

    enabled: bool = setting(
        False,
        "forecast every node of the levels (aggregate series with their own models),\n"
        "reconcile them, and write gold/hierarchy and gold/portfolio with intervals",
    )
    levels: list[Literal[LEVEL_NAMES]] = setting(  # type: ignore[valid-type]
        ["total", "region", "site"],
        "the levels, top first (the series are below the last): total, then the\n"
        "static attributes region and site in their nesting order",
        allowed="a list starting with total, then region and/or site, each once",
        min_length=1,
    )
    method: Literal[METHODS] = setting(  # type: ignore[valid-type]
        "mint_shrink",
        "mint_shrink (MinT with the shrunk covariance of the nodes' backtest errors) |\n"
        "bottom_up (the last level's nodes summed up)",
    )
    series: bool = setting(True, "write the series level too (each series' forecast scaled to its node's)")

    @field_validator("levels")
    @classmethod
    def _total_first(cls, levels: list[str]) -> list[str]:
        if levels[0] != "total" or len(set(levels)) != len(levels) or "total" in levels[1:]:
            raise refuse("a list starting with total, then region and/or site, each once", levels)
        return levels


class Retrain(Section):
    """Which series a training run fits again (:mod:`forecasting.retrain`)."""

    policy: Literal["full", "changed", "drifted+stale"] = setting(
        "full",
        "full: every series fitted and chosen again | changed: only series whose silver\n"
        "history was revised, that drifted, whose model is older than max_model_age_days,\n"
        "new or failed ones; the others keep their model, its state brought up to the new\n"
        "readings | drifted+stale: as changed without the revision check",
    )
    max_model_age_days: Number | None = setting(
        30,
        "with a partial policy, a model whose parameters were estimated on data ending more\n"
        "than this many days before its series' silver end is fitted again; null = never",
        gt=0,
    )
    backtest_windows: int | None = setting(
        None,
        "with a partial policy, the backtest windows a series fitted again is chosen on (its\n"
        "model is then carried for days): null = enough windows of backtest.step to cover a\n"
        "week of steps (7 at horizon 24 hourly), so a choice made on weekdays does not meet\n"
        "its first weekend; at least backtest.windows, at most what the series' history\n"
        "holds; with a global model in `models` backtest.windows (its driver trains per window)",
        ge=1,
    )


class Tune(Section):
    enabled: bool = setting(False)
    max_evals: int = setting(10, "evaluations per series and model (and per global model)", ge=1)
    timeout_s: Number = setting(30, "seconds of search per series and model (a started trial finishes)", gt=0)
    windows: int = setting(3, "tuning windows, ending where the selection backtest begins (no leakage)", ge=1)
    search_spaces: str | None = setting(
        None,
        "YAML of search spaces; null = conf/search_spaces.yaml",
        allowed="null or the path of a YAML file",
        pattern=r"\S",
    )
    parallelism: int = setting(
        2, "concurrent trials of a global model's search (SparkTrials, Spark engine)", ge=1
    )
    global_timeout_s: Number = setting(900, "seconds of search per global model", gt=0)

    @model_validator(mode="after")
    def _search_spaces_load(self) -> Tune:
        if self.enabled:  # a bad search-space file fails now, before any work starts
            load_search_spaces(self.search_spaces)
        return self


class Deep(Section):
    num_processes: int = setting(
        1, "data-parallel processes (torch.distributed; TorchDistributor on Spark)", ge=1
    )
    use_gpu: Literal["auto"] | bool = setting("auto", "auto (a GPU when one is visible) | true | false")


class SparkSettings(Section):
    """The Spark engine's own settings (``spark:``)."""

    master: str = setting("local[*]", "any cluster URL")
    shuffle_partitions: int | None = setting(None, "null = chosen from the number of series", ge=1)
    driver_memory: str | None = setting(
        None,
        "e.g. 8g; null = Spark's default, or a quarter of the RAM (at\n"
        "most 16g) on local[*], where the driver JVM holds everything",
        allowed="null or a JVM size such as 4g or 512m",
        pattern=r"^[1-9][0-9]*[kmgtKMGT]$",
    )


class Serve(Section):
    host: str = setting("127.0.0.1", "address the REST API listens on")
    port: int = setting(8080, ge=0, le=65535)
    api_key: str | None = setting(None, "when set, requests need header X-API-Key")
    max_horizon: int = setting(720, "longest forecast a request may ask for", ge=1)
    max_forecast_age_h: Number = setting(
        48,
        "/ready answers 503 when the newest forecast cutoff served is older\n"
        "than this many hours (a nightly left no new forecast); 0 = off",
        ge=0,
    )


MODELS_HEADING = """\
Candidate models tried on every series (`mmf models` lists them all). The default set
fits a nightly window for 1,000 hourly meters x 90 days on 2 cores; arima (seasonal
search), prophet and tuning are opt-in, and so are the global models trained across all
series: global_gbm (LightGBM) and global_nn (PyTorch, the deep extra)."""


class Covariate(Section):
    """One declared covariate (:mod:`forecasting.covariates`)."""

    name: str = setting(
        ..., "its name in silver/covariates (the models' column cov_<name>)", pattern=r"^[A-Za-z0-9_]+$"
    )
    kind: Literal["future_known", "past_only"] = setting(
        "future_known",
        "future_known (calendar, a weather forecast) | past_only (enters lagged by the horizon)",
    )
    key: Literal["series", "site", "region", "none"] = setting(
        "region", "series | site | region (an attribute of silver/series) | none (one global value)"
    )
    source: str = setting("silver/covariates", "the table its values come from")
    fallback: Literal["persistence", "climatology", "zero"] = setting(
        "persistence",
        "for a future step no issue covers: persistence (one week earlier) | climatology\n"
        "(mean at the same hour of the week) | zero; recorded per series in gold/forecasts",
    )


class Config(Section):
    """The validated settings of one run (immutable: :meth:`replace` makes a changed,
    validated copy)."""

    model_config = ConfigDict(protected_namespaces=())

    lakehouse: str = setting("./lakehouse", "local folder, az://, abfss:// or s3:// root of all tables")
    storage_options: dict[str, str] = setting(
        {},
        "passed to deltalake as-is (credentials: prefer the environment)",
        allowed="a mapping of option names to strings (quote values such as 'true')",
    )
    retention_hours: int = setting(
        168,
        "`mmf vacuum` keeps files of versions this recent (< 168 needs --force)",
        allowed="an integer >= 0 (mmf vacuum refuses less than 168 without --force)",
        ge=0,
    )
    freq: str | None = setting(
        None,
        "pandas alias: a fixed step (h, 30min, D) or a calendar one (W-SUN, MS, ME,\n"
        "QS, QE: set it, it is not inferred); null = inferred from the data",
        allowed=FREQ_ALLOWED,
    )
    horizon: int = setting(48, "steps to forecast", ge=1)
    levels: list[Level] = setting(
        [80, 95],
        "prediction-interval levels, percent",
        allowed="a non-empty list of integers between 1 and 99",
        min_length=1,
    )
    engine: EngineName = setting("local", " | ".join(ENGINES), allowed=f"one of {', '.join(ENGINES)}")
    workers: int | None = setting(None, "local process-pool size; null = number of cores", ge=1)
    batch_rows: int = setting(
        1_000_000,
        "rows (of whole series) a job reads, processes and commits at a time; bounds every job's memory",
        ge=1000,
    )
    seed: int = setting(0)
    country: str = setting("GB", "public holidays for the generator, Prophet and `holidays`")
    holiday_region: str | None = setting(
        None, "a subdivision of country for holidays (e.g. ENG); null = national holidays only"
    )
    holidays: bool = setting(
        False, "a public-holiday regressor (cov_holiday) for every model that takes regressors"
    )
    covariates: list[Covariate] = setting(
        [],
        "declared covariates: a list of {name, kind, key, source, fallback} (README: Covariates);\n"
        "when any is declared (or holidays is on) they replace readings' temperature as regressors",
        allowed="a list of mappings with keys name, kind, key, source, fallback",
    )
    models: list[str] = setting(
        ["seasonal_naive", "weekly_naive", "seasonal_window", "ets", "theta", "mstl"],
        heading=MODELS_HEADING,
        allowed="a non-empty list of model names",
        min_length=1,
    )
    model_params: dict[str, dict[str, Any]] = setting(
        {},
        "per model, e.g. {arima: {seasonal: true}, prophet: {country: GB}}",
        allowed="a mapping of model names to mappings of parameters",
    )
    model_timeout_s: Number = setting(
        60, "a candidate slower than this on one series is recorded as timed out", gt=0
    )
    bounds: Literal["nonnegative"] | None = setting(
        None,
        "null | nonnegative (forecasts and interval bounds clipped at 0, e.g. energy)",
        allowed="null or nonnegative",
    )
    backtest: Backtest = setting(Backtest())
    ensemble: Ensemble = setting(Ensemble())
    intervals: Intervals = setting(Intervals())
    ingest: Ingest = setting(Ingest())
    cleaning: Cleaning = setting(Cleaning())
    cold_start: ColdStart = setting(
        ColdStart(), "new meters: profile of the same site, else region, else the fleet, at their own level"
    )
    intermittent: Intermittent = setting(
        Intermittent(),
        "candidates by demand class: smooth | erratic | intermittent | lumpy, from the\n"
        "average interval between demands (ADI >= 1.32) and the CV² of their sizes (>= 0.49)",
    )
    mlflow: MLflow = setting(MLflow())
    gate: Gate = setting(
        Gate(), "challenger vs champion, both scored on the actuals after the champion's cutoff"
    )
    nightly: Nightly = setting(Nightly())
    monitoring: Monitoring = setting(Monitoring(), "forecast monitoring against actuals (`mmf monitor`)")
    hierarchy: Hierarchy = setting(
        Hierarchy(), "coherent forecasts of total, region, site and series (gold/hierarchy)"
    )
    retrain: Retrain = setting(
        Retrain(), "which series a training run fits again (the others keep their model)"
    )
    tune: Tune = setting(Tune(), "Hyperopt (TPE) search of hyper-parameters (`mmf train --tune`)")
    deep: Deep = setting(Deep(), "training of global_nn (the deep extra: pip install -e .[deep])")
    spark: SparkSettings = setting(SparkSettings())
    serve: Serve = setting(Serve())

    @field_validator("levels")
    @classmethod
    def _sorted_levels(cls, levels: list[int]) -> list[int]:
        return sorted(set(levels))

    @field_validator("covariates")
    @classmethod
    def _distinct_covariates(cls, covs: list[Covariate]) -> list[Covariate]:
        names = [c.name for c in covs]
        for name in names:
            if names.count(name) > 1:
                raise refuse("distinct covariate names", name)
        return covs

    @field_validator("freq")
    @classmethod
    def _pandas_freq(cls, freq: str | None) -> str | None:
        if freq is not None and not valid_freq(freq):
            raise refuse(FREQ_ALLOWED, freq)
        return freq

    @field_validator("models")
    @classmethod
    def _known_installed_models(cls, names: list[str]) -> list[str]:
        return check_models(names, sorted(all_models()))  # per-series and global models

    @field_validator("model_params")
    @classmethod
    def _params_of_known_models(cls, params: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        known = all_models()
        for name, values in params.items():
            if name not in known:
                raise refuse(f"keys among {', '.join(sorted(known))}", name)
            try:  # the model checks its own parameters: a bad one fails here, not per series
                known[name](**values)
            except ConfigError as err:
                key = err.key if err.key.startswith(f"{name}.") else f"{name}.{err.key}"
                raise ConfigError(f"model_params.{key}", err.value, err.allowed) from None
        return params

    # -- derived --------------------------------------------------------------------
    @property
    def backtest_step(self) -> int:
        return self.backtest.step or self.horizon

    def selection_windows(self, freq: str) -> int:
        """The backtest windows a series of ``freq`` is chosen on: ``backtest.windows``;
        under a partial ``retrain.policy`` ``retrain.backtest_windows`` (null: the windows
        of ``backtest_step`` that cover a week of steps), at least ``backtest.windows``.
        A global model in ``models`` keeps ``backtest.windows`` (the driver trains it
        once per window of the run)."""
        base = self.backtest.windows
        if self.retrain.policy == "full" or any(is_global(name) for name in self.models):
            return base
        want = self.retrain.backtest_windows
        if want is None:
            week = steps_per_week(freq)
            want = -(-week // self.backtest_step) if week else base
        return max(base, want)

    def candidates(self, demand_class: str | None) -> list[str]:
        """The candidate models of a series of ``demand_class``: ``models``, or for the
        classes of ``intermittent.classes`` its models instead (``replace``) or after
        them (``add``); each name once, in order."""
        if demand_class not in self.intermittent.classes:
            return list(dict.fromkeys(self.models))
        extra = list(self.intermittent.models)
        return list(dict.fromkeys(extra if self.intermittent.mode == "replace" else [*self.models, *extra]))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def replace(self, **changes: Any) -> Config:
        """A validated copy with top-level or dotted keys changed (``backtest.windows``)."""
        data = self.to_dict()
        for key, value in changes.items():
            set_dotted(data, key, value)
        return validated(Config, data)

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


def valid_freq(value: str) -> bool:
    """A pandas alias; deprecated ones (``H``, ``T``, ``M``) are refused whatever the
    warning filters, and a fixed step must be positive (``0h`` would divide by zero)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", FutureWarning)
            offset = pd.tseries.frequencies.to_offset(value)
    except (ValueError, TypeError, FutureWarning):
        return False
    return not isinstance(offset, pd.offsets.Tick) or pd.Timedelta(offset) > pd.Timedelta(0)
