"""The data contract: column names and table schemas, declared once.

Long format: one row per (``series_id``, ``ts``) with the target ``y``; optional
exogenous columns (``temperature``); optional static attributes (``site``, ``region``)
in a separate series table. Every table the platform writes has its Arrow schema here,
and both engines use these schemas (the Spark engine converts them).
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

SERIES_ID = "series_id"
TS = "ts"
Y = "y"
EXOG = ("temperature",)
ATTRIBUTES = ("site", "region")
REQUIRED = (SERIES_ID, TS, Y)

# Series statuses carried by every result row.
OK, FALLBACK, FAILED, QUARANTINED = "ok", "fallback", "failed", "quarantined"
# too short for per-series models, forecast from a profile of similar meters (forecasting.cold_start)
COLD_START = "cold_start"
STATUSES = (OK, FALLBACK, FAILED, QUARANTINED, COLD_START)

# Fixed vocabulary of quarantine reasons (silver/quarantine.reason).
QUARANTINE_REASONS = {
    "all_missing": "every reading is missing or not finite",
    "too_short": "fewer valid readings than the minimum history",
    "constant": "every reading has the same value (all zero too, where cleaning.all_zero quarantines it)",
    "negative_values": "negative readings above the allowed share",
    "non_finite": "infinite readings above the allowed share",
    "too_many_gaps": "more missing steps than the allowed share after regularisation",
    "irregular": "timestamps do not fit the configured frequency",
    "mixed_frequency": "regular at another frequency than the lakehouse's (the data mixes frequencies)",
    "too_large": "more readings than the per-series limit",
    "future_timestamps": "readings later than now + 1 day (a meter clock running ahead)",
    "processing_failed": "cleaning this series crashed or killed its worker (detail says how)",
}

TS_TYPE = pa.timestamp("us")  # naive UTC everywhere after bronze

# Every table that holds rows of many series carries ``bucket``, a stable hash of the
# series id (:func:`bucket_of`), and is written sorted by it: a job works on a range of
# buckets at a time (whole series), and Delta's file statistics and Parquet's row-group
# statistics let it read just that range. The same hash in Spark:
# ``crc32(series_id) % N_BUCKETS`` (see training.tables.spark_session).
BUCKET = "bucket"
N_BUCKETS = 1 << 16


def bucket_of(series_ids) -> np.ndarray:
    """The bucket (int32 in ``[0, N_BUCKETS)``) of each series id: CRC-32 of its UTF-8
    bytes (of ``str(id)``) modulo :data:`N_BUCKETS`, the same in every engine and every
    process. Takes a sequence, an array, a pandas Series or an Arrow (chunked) array of
    strings; the hash is computed once per distinct id (a hash table, not a sort: a
    batch holds millions of rows of a few thousand ids)."""
    if isinstance(series_ids, pa.ChunkedArray):
        series_ids = series_ids.combine_chunks() if series_ids.num_chunks else pa.array([], pa.string())
    if isinstance(series_ids, pa.Array) and series_ids.null_count == 0:
        if len(series_ids) == 0:
            return np.empty(0, dtype=np.int32)
        encoded = series_ids.dictionary_encode()
        inverse = encoded.indices.to_numpy(zero_copy_only=False)
        uniq = encoded.dictionary.to_pylist()
    else:
        ids = np.asarray(series_ids, dtype=object)
        if ids.size == 0:
            return np.empty(0, dtype=np.int32)
        ids = ids.ravel()
        if pd.isna(ids).any():  # None / NaN hash as their text ("None", "nan"), each its own
            uniq, inverse = np.unique(ids.astype(str), return_inverse=True)
        else:
            inverse, uniq = pd.factorize(ids)
    codes = np.fromiter((zlib.crc32(str(u).encode("utf-8")) % N_BUCKETS for u in uniq), np.int64, len(uniq))
    return codes[inverse].astype(np.int32)


LINEAGE = pa.schema(
    [
        ("_source_file", pa.string()),
        ("_content_hash", pa.string()),
        ("_batch_id", pa.string()),
        ("_ingested_at", pa.timestamp("us", tz="UTC")),
    ]
)

BRONZE_READINGS = pa.schema(
    [
        (SERIES_ID, pa.string()),
        (TS, TS_TYPE),
        (Y, pa.float64()),
        ("temperature", pa.float64()),
        ("site", pa.string()),
        ("region", pa.string()),
        *LINEAGE,
        (BUCKET, pa.int32()),
    ]
)

SILVER_READINGS = pa.schema(
    [
        (SERIES_ID, pa.string()),
        (TS, TS_TYPE),
        (Y, pa.float64()),
        ("temperature", pa.float64()),
        ("is_filled", pa.bool_()),
        ("is_outlier", pa.bool_()),
        (BUCKET, pa.int32()),
    ]
)

# silver/covariates: one row per covariate value, keyed by the covariate's ``name``, its
# ``key`` (a series id, site or region, "" for a global one), the target time ``ts`` and
# the time the value was issued (``issued_at``; an observation's is its own ``ts``); see
# forecasting.covariates. bronze/covariates adds the lineage columns.
COVARIATES = pa.schema(
    [
        ("name", pa.string()),
        ("key", pa.string()),
        (TS, TS_TYPE),
        ("issued_at", TS_TYPE),
        ("value", pa.float64()),
    ]
)
BRONZE_COVARIATES = pa.schema([*COVARIATES, *LINEAGE])

SILVER_SERIES = pa.schema(
    [
        (SERIES_ID, pa.string()),
        ("site", pa.string()),
        ("region", pa.string()),
        ("freq", pa.string()),
        ("start", TS_TYPE),
        ("end", TS_TYPE),
        ("n_obs", pa.int64()),
        ("n_filled", pa.int64()),
        ("n_outliers", pa.int64()),
        ("n_duplicates", pa.int64()),
        ("bronze_version", pa.int64()),
        (BUCKET, pa.int32()),
        # came later (an older table takes it on its next write, null in older rows): the
        # demand class of the series' observed readings (forecasting.demand)
        ("demand_class", pa.string()),
    ]
)

SILVER_QUARANTINE = pa.schema(
    [
        (SERIES_ID, pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("bronze_version", pa.int64()),
        (BUCKET, pa.int32()),
    ]
)

# What the per-series training function returns: one row per series. Nested results
# travel as JSON strings so that the very same schema works for a process pool and for
# Spark's applyInPandas.
TRAIN_RESULT = pa.schema(
    [
        (SERIES_ID, pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("model", pa.string()),
        ("metric", pa.string()),
        ("metric_value", pa.float64()),
        ("n_obs", pa.int64()),
        ("end", TS_TYPE),
        ("backtest_json", pa.string()),  # list of {model, window, cutoff, metrics...}
        ("candidates_json", pa.string()),  # {model: {"status", "reason", "score", "fit_s"}}
        ("model_json", pa.string()),  # Forecaster.to_dict() of the chosen model
        ("tuned_json", pa.string()),  # tuned hyper-parameters, "{}" when not tuned
        # the backtest forecasts kept (backtest.store_forecasts): a list of windows
        # {window, cutoff, ts: [...], y: [...], models: {model: {mean, lo-<lv>, hi-<lv>}}}
        ("forecasts_json", pa.string()),
    ]
)
FORECASTS_JSON = "forecasts_json"
# TRAIN_RESULT without the backtest forecasts: what the later stages read a run's rows
# as (its bundle, metrics, gate, results.parquet); only gold/backtest_forecasts is
# derived from forecasts_json.
TRAIN_RESULT_CORE = pa.schema([f for f in TRAIN_RESULT if f.name != FORECASTS_JSON])

# What training records per series beside TRAIN_RESULT (forecasting.retrain): why the
# series was fitted in this run or carried over from an earlier one (RETRAIN_REASONS),
# the run whose training estimated its model's parameters (``from_run``: this run when
# refit), the end of the data that estimation saw (``fitted_end``: a model's age is its
# series' end minus this), and a content hash of the series' silver rows up to ``end``
# (``history_hash``: a later run finds a revision of that history by hashing the same
# rows again).
RETRAIN_COLUMNS = pa.schema(
    [
        ("refit", pa.string()),
        ("from_run", pa.string()),
        ("fitted_end", TS_TYPE),
        ("history_hash", pa.string()),
    ]
)
FULL, NEW, PREVIOUS_FAILED, DRIFTED, CHANGED, STALE, CARRIED = (
    "full",
    "new",
    "failed",
    "drifted",
    "changed",
    "stale",
    "carried",
)
# a series forecast by a cold-start profile last time is fitted again (it may have
# graduated): the reason says so rather than ``failed``
COLD_START_REFIT = COLD_START
RETRAIN_REASONS = (FULL, NEW, COLD_START_REFIT, PREVIOUS_FAILED, DRIFTED, CHANGED, STALE, CARRIED)
RETRAIN_RESULT = pa.schema([*TRAIN_RESULT, *RETRAIN_COLUMNS])

# gold/models: every training run's TRAIN_RESULT rows, committed batch by batch as the
# engine finishes them (``batch`` numbers the run's bucket ranges), so a restarted run
# resumes from its last committed batch, and the run's model bundle, metrics and other
# Gold rows are built from it without holding the run in memory.
GOLD_MODELS = pa.schema(
    [
        ("run_id", pa.string()),
        ("silver_version", pa.int64()),
        ("batch", pa.int64()),
        *TRAIN_RESULT_CORE,
        (BUCKET, pa.int32()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        # came later (an older table takes it on its next write, null in older rows)
        TRAIN_RESULT.field(FORECASTS_JSON),
        # came later (an older table takes them on its next write, null in older rows):
        # the partial retrain's columns (RETRAIN_COLUMNS, forecasting.retrain)
        *[f for f in RETRAIN_COLUMNS],
    ]
)

# What the per-series refit function returns (forecasting.refit): one row per series,
# the registered model's choice fitted again on newer data.
REFIT_RESULT = pa.schema(
    [
        (SERIES_ID, pa.string()),
        ("status", pa.string()),  # ok | failed
        ("reason", pa.string()),
        ("model", pa.string()),
        ("model_json", pa.string()),  # the refitted model, as TRAIN_RESULT.model_json
        ("end", TS_TYPE),  # the last observation it was fitted on (the forecast's cutoff)
        ("n_obs", pa.int64()),
    ]
)

METRICS = ("mae", "rmse", "smape", "mase", "bias")


# How a forecast's model met its data (gold/forecasts.fit): the registered model as it
# was trained (its data ends where the forecast starts), or its chosen model and
# parameters fitted again on newer data (forecasting.refit).
TRAINED, REFIT = "trained", "refit"
FITS = (TRAINED, REFIT)


def _forecast_fields(levels: Sequence[int]) -> list[tuple[str, pa.DataType]]:
    fields = [(SERIES_ID, pa.string()), (TS, TS_TYPE), ("yhat", pa.float64())]
    for lv in levels:
        fields += [(f"yhat_lower_{lv}", pa.float64()), (f"yhat_upper_{lv}", pa.float64())]
    return fields + [
        ("model", pa.string()),
        ("model_version", pa.string()),
        ("run_id", pa.string()),
        ("cutoff", TS_TYPE),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]


def forecast_schema(levels: Sequence[int]) -> pa.Schema:
    """gold/forecasts, with one lower/upper column pair per interval level. The last two
    columns came later (older tables take them on their next write, null in older rows):
    ``silver_version``, the silver/readings version the forecast's data came from, and
    ``fit`` (:data:`FITS`), whether the model forecast as trained or refitted on it, and
    ``covariate_fallback``, JSON ``{covariate: fallback}`` of the declared future-known
    covariates no issue covered for some step of the forecast ("" none; null before)."""
    return pa.schema(
        _forecast_fields(levels)
        + [("silver_version", pa.int64()), ("fit", pa.string()), ("covariate_fallback", pa.string())]
    )


def scores_schema(levels: Sequence[int]) -> pa.Schema:
    """gold/scores (``mmf score``): the forecast columns plus ``source``, the scored input
    (a table name or path); rows of one (source, model_version) are replaced together."""
    fields = _forecast_fields(levels)
    return pa.schema(fields[:-1] + [pa.field("source", pa.string()), fields[-1]])


def backtest_schema(levels: Sequence[int]) -> pa.Schema:
    """gold/backtest: one row per series, model and window."""
    fields = [
        ("run_id", pa.string()),
        (SERIES_ID, pa.string()),
        ("model", pa.string()),
        ("window", pa.int64()),
        ("cutoff", TS_TYPE),
        *[(m, pa.float64()) for m in METRICS],
    ]
    for lv in levels:
        fields += [(f"coverage_{lv}", pa.float64()), (f"pinball_{lv}", pa.float64())]
    return pa.schema(fields)


def backtest_forecasts_schema(levels: Sequence[int]) -> pa.Schema:
    """gold/backtest_forecasts: one row per series, model, window and forecast step of a
    training run's backtest (``backtest.store_forecasts``): ``cutoff`` the window's last
    training time, ``lead`` the steps ahead of it (1..horizon), ``y`` the actual,
    ``yhat`` and the interval bounds the model forecast (statsforecast's
    ``cross_validation`` frame, one model per row)."""
    fields = [
        ("run_id", pa.string()),
        (SERIES_ID, pa.string()),
        ("model", pa.string()),
        ("window", pa.int64()),
        ("cutoff", TS_TYPE),
        ("lead", pa.int64()),
        (TS, TS_TYPE),
        (Y, pa.float64()),
        ("yhat", pa.float64()),
    ]
    for lv in levels:
        fields += [(f"yhat_lower_{lv}", pa.float64()), (f"yhat_upper_{lv}", pa.float64())]
    return pa.schema(fields + [(BUCKET, pa.int32())])


GOLD_SELECTION = pa.schema(
    [
        ("run_id", pa.string()),
        (SERIES_ID, pa.string()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("model", pa.string()),
        ("metric", pa.string()),
        ("metric_value", pa.float64()),
        ("silver_version", pa.int64()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        # came later (null in older rows): why the series' model was fitted in this run
        # or carried over (RETRAIN_REASONS) and the registered version it comes from
        ("refit", pa.string()),
        ("from_version", pa.string()),
    ]
)

GOLD_PORTFOLIO = pa.schema(
    [
        ("level", pa.string()),  # "region", "site" or "total"
        ("key", pa.string()),
        ("day", pa.date32()),
        ("yhat", pa.float64()),
        ("n_series", pa.int64()),
        ("model_version", pa.string()),
        ("cutoff", TS_TYPE),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)


def portfolio_schema(levels: Sequence[int]) -> pa.Schema:
    """gold/portfolio: :data:`GOLD_PORTFOLIO` and, added later (older tables take them on
    their next write, null in older rows and without ``hierarchy.enabled``), the daily
    interval bounds of the coherent totals (``yhat_lower_<lv>``, ``yhat_upper_<lv>``)
    and the reconciliation ``method``."""
    fields = [*GOLD_PORTFOLIO]
    for lv in levels:
        fields += [pa.field(f"yhat_lower_{lv}", pa.float64()), pa.field(f"yhat_upper_{lv}", pa.float64())]
    return pa.schema(fields + [pa.field("method", pa.string())])


def hierarchy_schema(levels: Sequence[int]) -> pa.Schema:
    """gold/hierarchy: coherent forecasts of every level (``total``, the attribute
    levels, ``series``), one row per node and step: ``yhat`` (reconciled) and its
    interval bounds, ``yhat_base`` (the node's own model before reconciling; for a
    series, its gold/forecasts row), ``n_series`` under the node, ``model`` (the node's
    chosen model; the series' own model version forecast it), ``reason`` (a series: the
    levels it is left out of, or the attribute that changed over time), and the
    delivery: ``model_version``, ``run_id``, ``delivery`` (the forecast's application
    transaction), ``cutoff``, ``silver_version``, ``created_at``."""
    fields = [
        ("level", pa.string()),
        ("node", pa.string()),
        ("parent", pa.string()),
        (TS, TS_TYPE),
        ("yhat", pa.float64()),
    ]
    for lv in levels:
        fields += [(f"yhat_lower_{lv}", pa.float64()), (f"yhat_upper_{lv}", pa.float64())]
    fields += [
        ("yhat_base", pa.float64()),
        ("n_series", pa.int64()),
        ("model", pa.string()),
        ("method", pa.string()),
        ("reason", pa.string()),
        ("model_version", pa.string()),
        ("run_id", pa.string()),
        ("delivery", pa.int64()),
        ("cutoff", TS_TYPE),
        ("silver_version", pa.int64()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
    return pa.schema(fields)


def node_result_schema(levels: Sequence[int]) -> pa.Schema:
    """What the per-node function of a hierarchy returns (forecasting.hierarchy_nodes):
    ``kind`` = forecast (the next horizon, ``window`` -1) | backtest (the chosen model's
    forecast of each backtest window, with the actual ``y``) | failed (one row, ``reason``);
    ``scale`` is the node's MASE denominator."""
    fields = [
        (SERIES_ID, pa.string()),
        ("kind", pa.string()),
        ("window", pa.int64()),
        ("step", pa.int64()),
        (TS, TS_TYPE),
        (Y, pa.float64()),
        ("yhat", pa.float64()),
    ]
    for lv in levels:
        fields += [(f"lo_{lv}", pa.float64()), (f"hi_{lv}", pa.float64())]
    fields += [("model", pa.string()), ("reason", pa.string()), ("scale", pa.float64())]
    return pa.schema(fields)


# The promotion gate's like-for-like comparison (forecasting.comparison): one row per
# series the challenger holds a model for. The window runs from the champion's cutoff
# (its training end) for ``horizon`` steps, clipped to the actuals in silver;
# window_end is the last scored step. The metrics are the configured one, scored on the
# ``n_points`` steps both forecasts and the actuals have (null when none).
GATE_SERIES = pa.schema(
    [
        (SERIES_ID, pa.string()),
        ("window_start", TS_TYPE),
        ("window_end", TS_TYPE),
        ("n_points", pa.int64()),
        ("challenger_metric", pa.float64()),
        ("champion_metric", pa.float64()),
        ("champion_source", pa.string()),  # gold (its own forecasts) | refit | "" (not compared)
        ("challenger_saw_window", pa.bool_()),  # the challenger's model choice saw these actuals
        ("reason", pa.string()),  # why the series was not compared ("" when it was)
    ]
)

# gold/gate: the GATE_SERIES rows of one training run with the gate's context.
GOLD_GATE = pa.schema(
    [
        ("run_id", pa.string()),
        ("challenger_version", pa.string()),
        ("champion_version", pa.string()),
        *[f for f in GATE_SERIES],
        ("metric", pa.string()),
        ("promoted", pa.bool_()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)


def accuracy_schema(levels: Sequence[int]) -> pa.Schema:
    """gold/accuracy (``mmf monitor``): one row per delivered forecast step whose actual
    has arrived in silver/readings, keyed by (series, model_version, cutoff, lead).
    ``created_at`` is the delivery's time (gold/forecasts.created_at) and
    ``forecast_day`` its UTC date; ``lead`` the steps ahead of the cutoff (1..horizon);
    ``n`` the actuals scored (1 per step); ``mae``, ``mase`` (the absolute error over
    ``scale``, the series' in-sample seasonal naive MAE of its silver history up to the
    cutoff), ``bias`` (``yhat - y``) and ``coverage_<lv>`` (1 inside the interval, else
    0) of that step."""
    fields = [
        (SERIES_ID, pa.string()),
        ("model_version", pa.string()),
        ("run_id", pa.string()),
        ("model", pa.string()),
        ("fit", pa.string()),
        ("cutoff", TS_TYPE),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("forecast_day", pa.date32()),
        ("lead", pa.int64()),
        (TS, TS_TYPE),
        (Y, pa.float64()),
        ("yhat", pa.float64()),
        ("n", pa.int64()),
        ("mae", pa.float64()),
        ("mase", pa.float64()),
        ("bias", pa.float64()),
        ("scale", pa.float64()),
    ]
    fields += [(f"coverage_{lv}", pa.float64()) for lv in levels]
    return pa.schema(fields + [(BUCKET, pa.int32())])


def drift_schema(levels: Sequence[int]) -> pa.Schema:
    """gold/drift (``mmf monitor``): per series and monitoring run (the silver/readings
    version whose actuals were scored), its live accuracy over the last
    ``monitoring.days`` days of scored steps (``window_start``..``window_end``: the
    actuals' times; ``n`` steps; ``mae``, ``mase``, ``bias``, ``coverage_<lv>`` their
    means), the backtest MASE of the model that forecast it (``run_id``, ``model``: its
    training run's gold/backtest rows of the chosen model, mean over windows), ``ratio``
    = live / backtest MASE and ``drifted`` = ``ratio > factor`` (``monitoring.factor``)."""
    fields = [
        (SERIES_ID, pa.string()),
        ("silver_version", pa.int64()),
        ("window_start", TS_TYPE),
        ("window_end", TS_TYPE),
        ("n", pa.int64()),
        ("mae", pa.float64()),
        ("mase", pa.float64()),
        ("bias", pa.float64()),
    ]
    fields += [(f"coverage_{lv}", pa.float64()) for lv in levels]
    fields += [
        ("run_id", pa.string()),
        ("model", pa.string()),
        ("backtest_mase", pa.float64()),
        ("ratio", pa.float64()),
        ("factor", pa.float64()),
        ("drifted", pa.bool_()),
    ]
    return pa.schema(fields + [(BUCKET, pa.int32())])
