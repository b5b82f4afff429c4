"""``mmf forecast --engine spark``: a delivery whose data goes through Spark, not the driver.

The same delivery as :mod:`training.jobs.forecast` (same batches, done-set, commits,
commit metadata, application transaction and ``mid_forecast`` checkpoint: the driver
loop, :func:`~training.jobs.forecast.done_batches` and the resume are that module's),
but per batch:

* the driver plans with ids only: the batch's series (silver/series ``end, freq``) and
  which registered version forecasts each, as trained or refitted
  (:func:`~training.jobs.forecast.plan` reading only ``series_id, end`` of the versions'
  models); per-series status rows, no readings, no model;
* the executors read the batch's silver rows (silver/readings at the pinned version, its
  bucket range: :meth:`SparkEngine.read_batch`; of a series forecast as trained only those
  of the week before its model's end, as the local path's ``future_frame``, so the rest is
  never shuffled) and the models of its series: a
  *reference* bundle's rows of gold/models at the bundle's version and run, read by
  delta-spark and joined to the plan; an *embedded* bundle's ``models.parquet`` has no
  table to join, so the executor's copy of the version looks the series up in it. Each
  version's model folder (MLmodel, code, ``global_models.npz`` and an embedded bundle's
  ``models.parquet``) is shipped to the executors once (``SparkContext.addFile``) and
  loaded once per Python worker: global models (``global_nn``, ``global_gbm``) forecast
  and refit with the weights of that shipped artifact, never with anything of the
  driver's;
* readings and plan are cogrouped by series (``cogroup().applyInPandas``) and each series
  runs the pure per-series functions of the local path: :func:`forecasting.refit.refit_series`
  where the local path refits, :func:`~training.jobs.forecast.future_rows` and
  :func:`~training.jobs.forecast.predict_source`. A series that fails yields one row with
  its reason instead of forecasts;
* the forecast rows are written by delta-spark (:meth:`SparkEngine.write` with a
  :class:`~training.engines.base.Sink`: replace-where on the rows' (model_version, cutoff,
  series), the batch's commit metadata, the application transaction on the last). The
  driver collects one row per series of the batch (its keys, counts and failure
  reason), from which the replace-where predicate, the counts and the missing series are
  made as the local path makes them from its rows;
* the missing-forecast check (:func:`check_batch`, :func:`check_delivery`) and gold/portfolio
  (:func:`aggregate`) are Spark aggregations over gold/forecasts.

Delta skips a delta-spark write whose application transaction version is not above the
one recorded (idempotent writes), where deltalake records it anyway: a delivery made
again (``--force``, or an incomplete one) therefore writes its last batch without the
transaction, which already holds its key.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import reduce
from pathlib import Path
from typing import Any, Callable

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import DataFrame as SparkDataFrame
from pyspark.sql import functions as F

from forecasting import contract as C
from forecasting import covariates as cov
from forecasting.config import Config
from forecasting.errors import RegistryError
from forecasting.frequency import future_timestamps
from forecasting.refit import refit_series, refit_specs, with_specs
from registry.aliases import require_version
from registry.connection import set_uris
from registry.metrics import USABLE
from registry.pyfunc import REFERENCE, ModelsRef, _freq_of, bundle_config, load_path, verify_artifact
from training.checkpoints import checkpoint
from training.engines.base import Sink, TableBatch
from training.engines.spark import SparkEngine, ship_folder, shipped_folder
from training.jobs import forecast as fc
from training.jobs.covariates import HISTORY_DAYS, batch_series
from training.tables import (
    GOLD_FORECASTS,
    GOLD_MODELS,
    GOLD_PORTFOLIO,
    SILVER_COVARIATES,
    SILVER_READINGS,
    SILVER_SERIES,
    Lakehouse,
)
from training.tables.spark import SparkTables
from training.tables.spark_session import arrow_to_spark_schema, to_spark

log = logging.getLogger(__name__)

_DOWNLOADS: dict[tuple[str, str, str], str] = {}  # (tracking uri, model, version) -> local folder
_WORKER_MODELS: dict[str, Any] = {}  # in a Python worker: shipped name -> ManyModels
_LOCK = threading.Lock()
MISSING_AFTER_WRITE = "no forecast of its latest end in gold/forecasts after the write"
# a batch's plan: the version that forecasts each series, and how (trained | refit)
PLAN_SCHEMA = pa.schema([(C.SERIES_ID, pa.string()), ("version", pa.string()), ("fit", pa.string())])


# -- the versions' models on the executors ---------------------------------------------
@dataclass(frozen=True)
class Shipped:
    """A registered version as the executors see it: its model folder's SparkFiles name
    and, for a reference bundle, where its models are in gold/models."""

    version: str
    run_id: str
    name: str
    ref: ModelsRef | None


def _download(config: Config, version: str) -> str:
    """A local copy of a version's model folder, checked against its registered hashes
    (once per process)."""
    client = set_uris(config)
    name = config.mlflow.registered_model
    key = (config.mlflow_tracking_uri(), name, str(version))
    with _LOCK:
        if key in _DOWNLOADS and Path(_DOWNLOADS[key]).is_dir():
            return _DOWNLOADS[key]
        mv = require_version(client, name, str(version))
        folder = tempfile.mkdtemp(prefix=f"mmf-forecast-v{version}-")
        path = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=folder)
        verify_artifact(name, str(version), mv.tags or {}, path)  # before its code runs anywhere
        _DOWNLOADS[key] = str(path)
        return str(path)


def ship(spark, config: Config, source: fc.Source) -> Shipped:
    """``source``'s model folder sent to every executor (once per session)."""
    path = _download(config, source.version)
    name = ship_folder(spark, path)
    settings = bundle_config(path)
    ref = ModelsRef.from_model_config(settings) if settings.get("bundle") == REFERENCE else None
    return Shipped(source.version, source.run_id, name, ref)


def worker_model(name: str, storage_options: dict[str, str] | None):
    """The ManyModels of the folder shipped as ``name``, loaded once per Python worker."""
    model = _WORKER_MODELS.get(name)
    if model is None:
        model = load_path(shipped_folder(name), storage_options).unwrap_python_model()
        _WORKER_MODELS[name] = model
    return model


# -- one series, on an executor ----------------------------------------------------------
@dataclass(frozen=True)
class SeriesJob:
    """What each series' task needs: plain values only (it pickles to any executor)."""

    config: Config  # the delivery's (horizon, freq set)
    silver_version: int
    sources: dict[str, tuple[str, str]]  # version -> (shipped name, run id)
    temperature: bool  # the batch has temperatures: future rows carry them
    schema: pa.Schema  # of the rows it returns
    storage_options: dict[str, str] | None = None

    def failed(self, sid: str, reason: str) -> pd.DataFrame:
        return pa.Table.from_pylist([{C.SERIES_ID: sid, "reason": reason}], schema=self.schema).to_pandas()


def output_schema(levels) -> pa.Schema:
    """A series task's rows: gold/forecasts' columns but the delivery's constants, and
    ``reason`` (null on forecast rows; a series that fails has one row with it)."""
    fields = [f for f in C.forecast_schema(levels) if f.name not in ("created_at", "silver_version")]
    return pa.schema([*fields, pa.field("reason", pa.string())])


def _model_frame(model: Any, row: pd.Series, default_freq: str | None) -> pd.DataFrame | None:
    """The series' model as ``ManyModels.models`` rows: the gold/models row joined to the
    plan (a reference bundle), else looked up in the worker's copy of the bundle."""
    sid = str(row[C.SERIES_ID])
    text = row.get("model_json")
    if isinstance(text, str) and text:
        entry = (row["model"], text, pd.Timestamp(row["end"]), _freq_of(sid, text, default_freq))
    else:
        entry = model._store.entries([sid]).get(sid)
        if entry is None:
            return None
    name, text, end, freq = entry
    frame = pd.DataFrame({C.SERIES_ID: [sid], "model": [name], "model_json": [text], "freq": [freq]})
    frame["end"] = pd.Series([pd.Timestamp(end)]).astype("datetime64[us]")
    return frame


def _refit(models: pd.DataFrame, readings: pd.DataFrame, job: SeriesJob, version: str):
    """``models`` fitted again on the series' silver rows (:func:`refit_series`), or the
    reason it could not be (as :func:`~training.jobs.forecast.refit_models` words it)."""
    if readings.empty:
        return None, f"no rows in silver/readings version {job.silver_version} to refit v{version} on"
    rows = with_specs(readings.reset_index(drop=True), refit_specs(models))
    out = refit_series(rows, job.config).iloc[0]
    if out["status"] != C.OK:
        return None, f"v{version} {out['reason']}"
    return models.assign(model_json=out["model_json"], end=pd.Timestamp(out["end"])).astype(
        {"end": "datetime64[us]"}
    ), ""


def forecast_series(readings: pd.DataFrame, plan: pd.DataFrame, job: SeriesJob) -> pd.DataFrame:
    """One series' forecast rows (refitted first where the plan says so), or one row
    with the reason it has none."""
    if plan.empty:
        return job.schema.empty_table().to_pandas()
    row = plan.iloc[0]
    sid, version, fit = str(row[C.SERIES_ID]), str(row["version"]), str(row["fit"])
    name, run_id = job.sources[version]
    model = worker_model(name, job.storage_options)
    models = _model_frame(model, row, job.config.freq)
    if models is None:
        return job.failed(sid, f"v{version} holds no model of it")
    readings = readings.drop(columns=[C.BUCKET], errors="ignore")
    readings = readings.astype({C.TS: "datetime64[us]"}).sort_values(C.TS, kind="stable")
    covs = series_covariates(sid, row, job.config)
    if covs is not None and not readings.empty:
        readings = cov.attach(readings, covs[1], covs[0], job.config)
    if fit == C.REFIT:
        models, why = _refit(models, readings, job, version)
        if models is None:
            return job.failed(sid, why)
    ends = models.set_index(C.SERIES_ID)["end"]
    hist = readings.loc[readings[C.TS] > ends.min() - fc.WEEK, [C.SERIES_ID, C.TS, "temperature"]]
    inputs = fc.future_rows(ends, str(models["freq"].iloc[0]), job.config.horizon, hist, job.temperature)
    if covs is not None:
        inputs = cov.future(
            ends, inputs.drop(columns=["temperature"], errors="ignore"), covs[1], covs[0], job.config
        )
    pred, failed = fc.predict_source(fc.Source(version, run_id, None, model), models, inputs)
    if failed:
        return job.failed(sid, failed[sid])
    pred = pred.assign(model_version=version, run_id=run_id, cutoff=ends.iloc[0], fit=fit, reason=None)
    if cov.FALLBACK_COLUMN in inputs:
        pred[cov.FALLBACK_COLUMN] = str(inputs[cov.FALLBACK_COLUMN].iloc[0])
    return _strings_as_objects(pred.reindex(columns=job.schema.names), job.schema)


def _strings_as_objects(frame: pd.DataFrame, schema: pa.Schema) -> pd.DataFrame:
    """A string column the forecast left out (all NaN, float64 after ``reindex``, e.g.
    ``covariate_fallback`` without covariates) as objects holding None: Arrow refuses to
    build a string column of a float one in the task's output."""
    for field in schema:
        if pa.types.is_string(field.type) and frame[field.name].dtype != object:
            frame[field.name] = frame[field.name].astype(object).where(frame[field.name].notna(), None)
    return frame


COVARIATES_JSON = "covariates_json"  # a plan row's covariate rows (Spark's to_json of their list)


def series_covariates(sid: str, row: pd.Series, config: Config) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """One series' covariate rows (``name, key, ts, issued_at, value``, from its plan row)
    and its attributes as :func:`forecasting.covariates.attach` reads them; ``None`` when
    no covariate or holiday is declared."""
    if not cov.enabled(config):
        return None
    text = row.get(COVARIATES_JSON)
    items = json.loads(text) if isinstance(text, str) and text else []
    cols = list(C.COVARIATES.names)
    rows = pd.DataFrame(items, columns=cols)
    for col in (C.TS, cov.ISSUED_AT):
        rows[col] = pd.to_datetime(rows[col]).astype("datetime64[us]")
    rows[cov.VALUE] = rows[cov.VALUE].astype(float)
    series = {C.SERIES_ID: [sid], "site": [None], "region": [None]}
    for spec in cov.specs(config).values():
        keys = rows.loc[rows[cov.NAME] == spec.name, cov.KEY]
        if spec.key in ("site", "region") and len(keys):
            series[spec.key] = [str(keys.iloc[0])]
    return rows, pd.DataFrame(series)


def series_udf(job: SeriesJob) -> Callable[[pd.DataFrame, pd.DataFrame], pd.DataFrame]:
    def run(readings: pd.DataFrame, plan: pd.DataFrame) -> pd.DataFrame:
        return forecast_series(readings, plan, job)

    return run


# -- one batch, from the driver ----------------------------------------------------------
class SparkDelivery:
    """A delivery's batches through Spark (one per call of :meth:`run`)."""

    def __init__(self, lake: Lakehouse, config: Config, sources: fc.Sources, silver_version: int) -> None:
        self.lake, self.config, self.sources = lake, config, sources
        self.engine = SparkEngine(config)
        self.silver_version = int(silver_version)
        self.shipped: dict[str, Shipped] = {}

    def shipped_of(self, source: fc.Source) -> Shipped:
        if source.version not in self.shipped:
            self.shipped[source.version] = ship(self.engine.spark, self.config, source)
        return self.shipped[source.version]

    def plan(self, i: int, buckets: tuple[int, int]) -> tuple[fc.BatchPlan, pd.DataFrame]:
        """The batch's plan (ids only) and its rows: series_id, version, fit."""
        series = fc.series_to_forecast(self.lake, buckets)
        parts, missing = fc.plan(
            self.lake, self.sources, series, self.silver_version, buckets, [C.SERIES_ID, "end"]
        )
        rows = [
            (sid, part.source.version, fit)
            for part in parts
            for fit, ids in ((C.TRAINED, part.trained), (C.REFIT, part.refit))
            for sid in ids
        ]
        frame = pd.DataFrame(rows, columns=[C.SERIES_ID, "version", "fit"])
        return fc.BatchPlan(i, buckets, series, parts, missing), frame

    def models(self, buckets: tuple[int, int], versions: list[str]) -> SparkDataFrame | None:
        """The usable gold/models rows of the reference bundles among ``versions`` whose
        series are in ``buckets`` (read by the executors at each bundle's pinned version)."""
        frames = []
        for version in versions:
            ref = self.shipped[version].ref
            if ref is None:
                continue
            table = TableBatch(
                Lakehouse(ref.lakehouse, self.lake.storage_options),
                GOLD_MODELS,
                buckets,
                version=ref.version,
                columns=(C.SERIES_ID, "model", "model_json", "end"),
                filters=(("run_id", "=", ref.run_id), ("status", "in", tuple(USABLE))),
            )
            rows = self.engine.read_batch(table).where(
                F.col("model_json").isNotNull() & (F.col("model_json") != "")
            )
            frames.append(rows.dropDuplicates([C.SERIES_ID]).withColumn("version", F.lit(version)))
        return reduce(SparkDataFrame.unionByName, frames) if frames else None

    def forecasts(self, batch: fc.BatchPlan, planned: pd.DataFrame) -> SparkDataFrame:
        """The batch's series task rows (:func:`forecast_series`), lazily: readings and
        plan cogrouped by series on the executors."""
        spark = self.engine.spark
        for part in batch.parts:
            self.shipped_of(part.source)
        versions = sorted(set(planned["version"]))
        plan = to_spark(spark, planned, PLAN_SCHEMA)
        models = self.models(batch.buckets, versions)
        if models is not None:
            plan = plan.join(models, on=[C.SERIES_ID, "version"], how="left")
        covariates = self.covariates(planned, batch)
        if covariates is not None:
            plan = plan.join(covariates, on=C.SERIES_ID, how="left")
        readings = self.engine.read_batch(
            TableBatch(self.lake, SILVER_READINGS, batch.buckets, version=self.silver_version)
        )
        # A series forecast as trained needs only its last week before its model's end
        # (the future temperature, as the local path's future_frame reads it); one to
        # refit needs all of its rows. The rest is never shuffled to the tasks.
        fits = planned[[C.SERIES_ID, "fit"]].sort_values("fit", key=lambda f: f != C.REFIT, kind="stable")
        fits = to_spark(spark, fits.drop_duplicates(C.SERIES_ID), PLAN_SCHEMA.remove(1))
        readings = readings.join(F.broadcast(fits), on=C.SERIES_ID, how="inner")
        model_ends = [part.models["end"] for part in batch.parts if len(part.models)]
        first = pd.to_datetime(pd.concat(model_ends)).min() if model_ends else pd.NaT
        if not pd.isna(first):
            first = (first - fc.WEEK).to_pydatetime()
            readings = readings.where(
                (F.col("fit") == C.REFIT) | (F.col(C.TS) > F.lit(first).cast("timestamp_ntz"))
            )
        readings = readings.drop("fit")
        ends = batch.series.loc[batch.series.index.isin(planned[C.SERIES_ID]), "end"]
        since = (ends.min() - fc.WEEK).to_pydatetime()
        recent = readings.where(
            (F.col(C.TS) > F.lit(since).cast("timestamp_ntz")) & F.col("temperature").isNotNull()
        )
        job = SeriesJob(
            self.config,
            self.silver_version,
            {v: (self.shipped[v].name, self.shipped[v].run_id) for v in versions},
            bool(recent.limit(1).count()),
            output_schema(self.lake.levels),
            self.config.storage_options,
        )
        n = self.engine.partitions(len(planned))
        return (
            readings.repartition(n, C.SERIES_ID)
            .groupBy(C.SERIES_ID)
            .cogroup(plan.repartition(n, C.SERIES_ID).groupBy(C.SERIES_ID))
            .applyInPandas(series_udf(job), schema=arrow_to_spark_schema(job.schema))
        )

    def covariates(self, planned: pd.DataFrame, batch: fc.BatchPlan) -> SparkDataFrame | None:
        """Per series of the plan, its silver/covariates rows as JSON (read by delta-spark,
        joined by (name, key) to the batch's series: memory bounded by the batch and its
        keys); a refit series gets all of them, the others those after their cutoff less
        ``HISTORY_DAYS`` (the fallbacks' history). ``None`` without covariates."""
        if not self.config.covariates or not self.lake.exists(SILVER_COVARIATES):
            return None
        series = batch_series(self.lake, planned[C.SERIES_ID])
        refit = set(planned.loc[planned["fit"] == C.REFIT, C.SERIES_ID])
        ends = batch.series["end"]
        rows = []
        for spec in cov.specs(self.config).values():
            for sid, key in cov.series_keys(series, spec.key).items():
                since = (
                    pd.Timestamp("1970-01-01")
                    if sid in refit
                    else ends.get(sid) - pd.Timedelta(days=HISTORY_DAYS)
                )
                rows.append((sid, spec.name, key, since))
        mapping = pd.DataFrame(rows, columns=[C.SERIES_ID, cov.NAME, cov.KEY, "since"])
        mapping["since"] = mapping["since"].astype("datetime64[us]")
        tables = SparkTables(self.lake, self.engine.spark, self.config)
        values = tables.read(SILVER_COVARIATES, None).join(
            F.broadcast(to_spark(self.engine.spark, mapping)), on=[cov.NAME, cov.KEY]
        )
        values = values.where(F.col(C.TS) > F.col("since"))
        items = F.struct(*[F.col(c) for c in C.COVARIATES.names])
        return values.groupBy(C.SERIES_ID).agg(F.to_json(F.collect_list(items)).alias(COVARIATES_JSON))


def per_series(out: SparkDataFrame) -> pd.DataFrame:
    """One row per series of a batch's task rows (a Spark aggregation): its forecast
    keys (model_version, cutoff, fit), its number of rows and its failure reason."""
    keys = [C.SERIES_ID, "model_version", "cutoff", "fit", "reason"]
    rows = out.groupBy(*keys).agg(F.count(F.lit(1)).alias("n")).collect()
    frame = pd.DataFrame([r.asDict() for r in rows], columns=[*keys, "n"])
    frame["cutoff"] = pd.to_datetime(frame["cutoff"]).astype("datetime64[us]")
    return frame


def counts_of(series: pd.DataFrame) -> dict[str, Any]:
    """A batch's rows, and its series by fit and by model version (as the local path's
    counts of its rows)."""
    done = series[series["reason"].isna()]
    if done.empty:
        return {"rows": 0, "fits": {}, "versions": {}}
    return {
        "rows": int(done["n"].sum()),
        "fits": {str(k): int(v) for k, v in done["fit"].value_counts().items()},
        "versions": {str(k): int(v) for k, v in done["model_version"].value_counts().items()},
    }


def _transaction(lake: Lakehouse, name: str, app_id: str, version: int) -> dict[str, Any]:
    """The application transaction a delta-spark write may record: none when the table
    already records ``version`` or a later one (Delta would skip the whole write)."""
    recorded = lake.txn_version(name, app_id)
    if recorded is not None and recorded >= int(version):
        return {}
    return {"app_id": app_id, "app_version": int(version)}


def _lower_transaction(lake: Lakehouse, name: str, app_id: str, version: int) -> None:
    """Record ``version`` where a later one is recorded (what deltalake's write does and
    delta-spark's cannot): an empty commit of that transaction only."""
    recorded = lake.txn_version(name, app_id)
    if recorded is not None and recorded > int(version):
        lake.write(name, lake.schema(name).empty_table(), app_id=app_id, app_version=int(version))


def commit(engine: SparkEngine, lake, state: fc.Delivery, report, i, buckets, rows, series, missing, final):
    """One batch's rows (a Spark DataFrame; ``None``: none) committed by delta-spark as
    the local path commits them (:func:`training.jobs.forecast._commit`)."""
    if state.table_version is None:
        checkpoint("before_forecast_commit")
    counts = counts_of(series) if len(series) else {}
    metadata, txn = fc.commit_metadata(state, report, i, buckets, counts, missing, final)
    done = series[series["reason"].isna()] if len(series) else series
    sink = Sink(
        lake,
        GOLD_FORECASTS,
        columns={"created_at": state.created_at, "silver_version": report.silver_version},
        metadata=metadata,
        predicate=fc.replace_predicate(done) if len(done) else None,
        always=True,
        **txn,
    )
    if rows is None:
        rows = engine.spark.createDataFrame([], arrow_to_spark_schema(lake.schema(GOLD_FORECASTS)))
    state.table_version = engine.write(rows, sink).version  # a transaction held already: see commit_rows
    state.add(counts, {})
    state.final = state.final or final


def commit_final(lake: Lakehouse, config: Config, state: fc.Delivery, report) -> None:
    """The last commit of a delivery whose batches were all committed but none as the last."""
    commit(SparkEngine(config), lake, state, report, -1, (0, 0), None, pd.DataFrame(), {}, True)


def run_batches(lake, config: Config, sources, todo, state: fc.Delivery, report, timings, progress) -> None:
    """:func:`training.jobs.forecast._run_batches` through Spark: each batch planned (ids),
    forecast on the executors, committed by delta-spark and checked by Spark as it goes."""
    silver_version, h = int(report.silver_version or 0), report.horizon
    freq, first = config.freq, next((fc.series_to_forecast(lake, b) for _, b in todo), None)
    if freq is None and first is not None and len(first):
        freq = str(first["freq"].iloc[0])
    delivery = SparkDelivery(lake, config.replace(horizon=h, freq=freq), sources, silver_version)
    left = len(todo)
    for i, buckets in todo:
        left -= 1
        t = time.perf_counter()
        batch, planned = delivery.plan(i, buckets)
        out, series = (
            None,
            pd.DataFrame(columns=[C.SERIES_ID, "model_version", "cutoff", "fit", "reason", "n"]),
        )
        if len(planned):
            out = delivery.forecasts(batch, planned).persist()
            series = per_series(out)
        try:
            failed = series[series["reason"].notna()]
            batch.missing.update(dict(zip(failed[C.SERIES_ID], failed["reason"])))
            rows = out.where(F.col("reason").isNull()).drop("reason") if out is not None else None
            n_rows = int(series.loc[series["reason"].isna(), "n"].sum())
            timings["score_s"] += time.perf_counter() - t
            t = time.perf_counter()
            final = left == 0 and (state.rows > 0 or n_rows > 0 or bool(state.done))
            if n_rows or final:
                commit(delivery.engine, lake, state, report, i, buckets, rows, series, batch.missing, final)
        finally:
            if out is not None:
                out.unpersist()
        state.missing.update(batch.missing)
        check_batch(lake, delivery.config, buckets, h, state.missing)
        timings["gold_write_s"] += time.perf_counter() - t
        if progress:
            done = sum(state.versions.values())
            progress("forecast", done, max(report.n_clean, done))
        if not final:
            checkpoint("mid_forecast", batch=i)


# -- what gold/forecasts holds, counted by Spark -----------------------------------------
def with_last(series: SparkDataFrame, h: int) -> SparkDataFrame:
    """silver/series rows (``series_id, end, freq``) with ``last``: the timestamp ``h``
    steps after ``end`` (computed on the executors)."""

    def add(frames):
        for pdf in frames:
            ends = pdf["end"].to_numpy(dtype="datetime64[us]")
            last = np.empty(len(pdf), dtype="datetime64[us]")
            for freq, idx in pdf.groupby(pdf["freq"].fillna("")).indices.items():
                last[idx] = future_timestamps(ends[idx], freq or None, [h])[:, 0]
            yield pdf.assign(last=last)

    schema = pa.schema(
        [(C.SERIES_ID, pa.string()), ("end", C.TS_TYPE), ("freq", pa.string()), ("last", C.TS_TYPE)]
    )
    return series.select(C.SERIES_ID, "end", "freq").mapInPandas(add, arrow_to_spark_schema(schema))


def delivered(tables: SparkTables, series: SparkDataFrame, small: bool = False) -> SparkDataFrame:
    """The gold/forecasts rows of the next horizon of ``series`` (:func:`with_last` rows;
    ``small``: a batch's, broadcast), as :func:`training.jobs.forecast.delivered` selects them."""
    rows = tables.read(GOLD_FORECASTS, columns=[C.SERIES_ID, C.TS, "cutoff", "model_version", "run_id"])
    series = F.broadcast(series) if small else series
    ts, cutoff = F.col(C.TS), F.col("cutoff")
    return rows.join(series, on=C.SERIES_ID).where(
        (cutoff == F.col("end")) & (ts > cutoff) & (ts <= F.col("last"))
    )


def _short(series: SparkDataFrame, rows: SparkDataFrame, h: int) -> SparkDataFrame:
    """The series of ``series`` whose next ``h`` steps are not all in ``rows``."""
    n = rows.groupBy(C.SERIES_ID).agg(F.countDistinct(C.TS).alias("n"))
    return series.join(n, on=C.SERIES_ID, how="left").where(F.coalesce(F.col("n"), F.lit(0)) < h)


def check_batch(lake: Lakehouse, config: Config, buckets, h: int, missing: dict[str, str]) -> None:
    """:func:`training.jobs.forecast.check_batch` by Spark: the batch's series whose next
    ``h`` steps gold/forecasts lacks (only their ids come to the driver)."""
    engine = SparkEngine(config)
    tables = SparkTables(lake, engine.spark, config)
    series = with_last(engine.read_batch(TableBatch(lake, SILVER_SERIES, buckets)), h)
    short = _short(series, delivered(tables, series, small=True), h).select(C.SERIES_ID).collect()
    for row in sorted(short, key=lambda r: r[0]):
        missing.setdefault(str(row[0]), MISSING_AFTER_WRITE)


def check_delivery(lake: Lakehouse, config: Config, h: int, version: str, run_id: str) -> tuple[int, str]:
    """:func:`training.jobs.forecast.check_delivery` by Spark, over all series at once:
    the delivery's rows and why it must be made again ("" when it stands)."""
    tables = SparkTables(lake, config=config)
    series = with_last(tables.read(SILVER_SERIES), h)
    rows = delivered(tables, series).persist()
    try:
        n_rows = int(rows.count())
        n_missing = int(_short(series, rows, h).count())
        champion = rows.where((F.col("model_version") == version) & (F.col("run_id") != run_id))
        runs = sorted(str(r[0]) for r in champion.select("run_id").distinct().collect())
    finally:
        rows.unpersist()
    return n_rows, fc.redo_reason(n_missing, runs, h, version, run_id)


# -- gold/portfolio ----------------------------------------------------------------------
def aggregate(
    lake: Lakehouse, config: Config, model_version: str | None = None, delivery: int | None = None
) -> int:
    """:func:`training.jobs.forecast.aggregate` by Spark: the latest delivery of the model
    version read, summed by region, site and overall and written by the executors."""
    tables = SparkTables(lake, config=config)
    rows = tables.read(
        GOLD_FORECASTS, columns=[C.SERIES_ID, C.TS, "yhat", "cutoff", "model_version", "created_at"]
    )
    heads = rows.where(F.col("model_version") == model_version) if model_version else rows
    newest = heads.groupBy("model_version").agg(F.max("created_at").alias("created_at"))
    versions = [str(r[0]) for r in newest.select("model_version").collect()]
    if not versions:
        raise RegistryError("gold/forecasts is empty: run `mmf forecast` first")
    version = model_version or max(versions, key=int)
    if version not in versions:
        raise RegistryError(f"gold/forecasts holds no rows of model version {version}")
    latest = newest.where(F.col("model_version") == version).select("created_at")
    rows = rows.drop("model_version").join(latest, on="created_at")
    attrs = tables.read(SILVER_SERIES, columns=[C.SERIES_ID, "site", "region"])
    rows = rows.join(attrs, on=C.SERIES_ID, how="left").withColumn("total", F.lit("all"))
    keyed = [
        rows.select(
            F.lit(level).alias("level"),
            F.coalesce(F.col(level), F.lit("unknown")).alias("key"),
            F.to_date(F.col(C.TS)).alias("day"),
            "yhat",
            C.SERIES_ID,
            "cutoff",
        )
        for level in fc.LEVELS
    ]
    out = (
        reduce(SparkDataFrame.unionByName, keyed)
        .groupBy("level", "key", "day")
        .agg(
            F.sum("yhat").alias("yhat"),
            F.countDistinct(C.SERIES_ID).alias("n_series"),
            F.max("cutoff").alias("cutoff"),
        )
        .withColumn("model_version", F.lit(version))
        .withColumn("created_at", F.lit(dt.datetime.now(dt.timezone.utc)))
    )
    key = int(delivery if delivery is not None else version)
    txn = _transaction(lake, GOLD_PORTFOLIO, fc.APP_PORTFOLIO, key)
    written = tables.write(
        GOLD_PORTFOLIO, out, mode="overwrite", replace_where=f"model_version = '{version}'", **txn
    )
    _lower_transaction(lake, GOLD_PORTFOLIO, fc.APP_PORTFOLIO, key)
    return written


__all__ = ["aggregate", "check_batch", "check_delivery", "commit_final", "run_batches"]
