"""Batch scoring with the registered champion: ``mmf score``.

Input (a lakehouse table name, a Delta table path, or a Parquet/CSV file): rows of
``series_id`` and ``horizon``, optionally ``ts`` (the future timestamps wanted) and
``temperature``, exactly the many-models pyfunc's input (see :mod:`registry.pyfunc`);
``horizon`` defaults to ``config.horizon`` when the input has ``ts`` only. Series the
champion holds no model for are left out and counted.

Output, in Gold:

* ``gold/scores`` (default): the forecast columns, ``cutoff`` (the series' training end),
  ``model_version``, ``run_id``, ``source`` and ``created_at``; the rows of one
  (``source``, ``model_version``) are replaced together (replace-where), so scoring the
  same input with the same champion twice leaves one copy;
* ``gold/forecasts``: MERGE on (``series_id``, ``ts``, ``cutoff``, ``model_version``), so
  the rows of other series and of the nightly forecast stay as they are.

Engines: ``local`` loads the pyfunc in this process; ``spark`` ships the downloaded model
folder to the executors once (``SparkContext.addFile``) and runs
``groupBy(series_id).applyInPandas``: each Python worker loads the many-models pyfunc
once (cached per worker process) and forecasts its series; results are written by the
Spark table layer without coming to the driver. (``mlflow.pyfunc.spark_udf`` is a
row-wise UDF: it needs one output row per input row, but a forecast returns ``horizon``
rows per series, hence the grouped UDF.) pyspark is imported only on the Spark path.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import mlflow
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from forecasting import contract as C
from forecasting.config import Config
from forecasting.errors import DataContractError, RegistryError, TableError
from registry.aliases import CHAMPION, champion_info, require_version
from registry.connection import set_uris
from registry.pyfunc import (
    MODELS_ARTIFACT,
    REFERENCE,
    bundle_config,
    load_path,
    output_columns,
    verify_artifact,
)
from training.jobs.forecast import predict_by_series
from training.tables import GOLD_FORECASTS, GOLD_SCORES, canonical, to_arrow

log = logging.getLogger(__name__)

OUTPUTS = (GOLD_SCORES, GOLD_FORECASTS)
FORECAST_KEYS = (C.SERIES_ID, C.TS, "cutoff", "model_version")
_DOWNLOADS: dict[tuple[str, str, str], "Champion"] = {}
_WORKER_MODELS: dict[str, Any] = {}
_LOCK = threading.Lock()


@dataclass
class Champion:
    """The champion version, downloaded once per process."""

    name: str
    version: str
    run_id: str
    path: str  # local folder of the MLflow model
    levels: list[int]
    models: pd.DataFrame  # series_id, end, freq (and model) of every series the version holds

    @property
    def freq(self) -> str | None:
        return str(self.models["freq"].iloc[0]) if len(self.models) else None

    def ends(self) -> pd.Series:
        return self.models.set_index(C.SERIES_ID)["end"]


@dataclass
class ScoreReport:
    source: str
    output: str
    model_version: str
    run_id: str
    n_series: int
    n_rows: int
    n_unknown: int
    table_version: int | None


# -- the champion ----------------------------------------------------------------------
def champion(config: Config, version: str | None = None) -> Champion:
    """The champion (or ``version``), downloaded to a local folder once per process.

    Raises:
        RegistryError: there is no champion yet, or its stored artifact was changed after
            registration (:func:`registry.pyfunc.verify_artifact`).
    """
    set_uris(config)
    name = config.mlflow.registered_model
    if version is None:
        info = champion_info(config)
        if info is None:
            raise RegistryError(
                f"registered model {name!r} has no {CHAMPION}: run `mmf train` (the first version is "
                "promoted) or `mmf promote VERSION`"
            )
        version, run_id = str(info["version"]), str(info["run_id"])
    else:
        mv = require_version(mlflow.MlflowClient(), name, str(version))
        run_id = (mv.tags or {}).get("mmf.run_id") or mv.run_id
    key = (config.mlflow_tracking_uri(), name, str(version))
    with _LOCK:
        cached = _DOWNLOADS.get(key)
        if cached is not None and Path(cached.path).is_dir():
            return cached
        folder = Path(tempfile.mkdtemp(prefix=f"mmf-model-v{version}-"))
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}", dst_path=str(folder)
        )
        tags = mlflow.MlflowClient().get_model_version(name, str(version)).tags or {}
        verify_artifact(name, str(version), tags, path)  # before its code can run
        models = _champion_models(config, name, str(version), path)
        levels = [int(v) for v in bundle_config(path).get("levels", config.levels)]
        champ = Champion(name, str(version), str(run_id), str(path), levels, models)
        _DOWNLOADS[key] = champ
        return champ


def _champion_models(config: Config, name: str, version: str, path: str) -> pd.DataFrame:
    """``series_id, end, freq`` of the series a downloaded version holds (with ``model``
    from an embedded bundle's models.parquet; a reference bundle's from gold/models)."""
    if bundle_config(path).get("bundle") == REFERENCE:
        return load_path(path, config.storage_options).unwrap_python_model().series_ends()
    found = sorted(Path(path).rglob(f"{MODELS_ARTIFACT}.parquet"))
    if not found:
        raise RegistryError(
            f"version {version} of {name!r} holds no {MODELS_ARTIFACT}.parquet: not a many-models pyfunc"
        )
    return pq.read_table(found[0], columns=[C.SERIES_ID, "model", "end", "freq"]).to_pandas()


# -- input -----------------------------------------------------------------------------
def _kind(lake, source: str) -> tuple[str, str]:
    """(``table``|``delta``|``parquet``|``csv``, location) of a scoring input."""
    try:
        return "table", canonical(source)
    except TableError:
        pass
    suffix = Path(source.split("?")[0]).suffix.lower()
    if suffix == ".csv":
        return "csv", source
    if suffix in (".parquet", ".pq"):
        return "parquet", source
    if "://" not in source and (Path(source) / "_delta_log").is_dir():
        return "delta", source
    if "://" in source:
        from deltalake import DeltaTable

        try:
            if DeltaTable.is_deltatable(source, storage_options=lake.storage_options):
                return "delta", source
        except OSError:
            pass
    if "://" in source or Path(source).is_dir():
        return "parquet", source
    raise DataContractError(
        f"scoring input {source!r}: expected a lakehouse table (gold/...), a Delta table, or a .parquet/.csv file"
    )


def read_input(lake, source: str) -> pd.DataFrame:
    """The scoring input as pandas (the local engine)."""
    kind, where = _kind(lake, source)
    if kind == "table":
        return lake.read(where)
    if kind == "delta":
        from deltalake import DeltaTable

        return (
            DeltaTable(where, storage_options=lake.storage_options)
            .to_pyarrow_dataset()
            .to_table()
            .to_pandas()
        )
    if kind == "csv":
        return pd.read_csv(where, dtype={C.SERIES_ID: str})
    return pd.read_parquet(where)


def prepare_input(frame: pd.DataFrame, horizon: int) -> pd.DataFrame:
    """The pyfunc's input columns with their types; refuses input without them."""
    if C.SERIES_ID not in frame.columns or ("horizon" not in frame.columns and C.TS not in frame.columns):
        raise DataContractError(
            f"scoring input columns {list(frame.columns)}: expected series_id and horizon (optional: ts, temperature)"
        )
    out = pd.DataFrame({C.SERIES_ID: frame[C.SERIES_ID].astype(str)})
    out["horizon"] = (
        pd.to_numeric(frame["horizon"]).astype("int64") if "horizon" in frame.columns else int(horizon)
    )
    if C.TS in frame.columns:
        ts = pd.to_datetime(frame[C.TS], utc=True)
        out[C.TS] = ts.dt.tz_localize(None).astype("datetime64[us]")
    if "temperature" in frame.columns:
        out["temperature"] = pd.to_numeric(frame["temperature"], errors="coerce").astype(float)
    return out


# -- scoring ---------------------------------------------------------------------------
def _now() -> pd.Timestamp:
    return pd.Timestamp(dt.datetime.now(dt.timezone.utc)).as_unit("us")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def score(
    lake,
    config: Config,
    source: str,
    output: str = GOLD_SCORES,
    engine: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> ScoreReport:
    """Score ``source`` with the champion and write the forecasts to ``output``;
    ``progress(step, done, total)`` is told when scoring starts and as series finish
    (the local engine).

    Raises:
        RegistryError: no champion.
        DataContractError: the input lacks the columns the pyfunc needs.
        TableError: ``output`` is not ``gold/scores`` or ``gold/forecasts``.
    """
    output = canonical(output)
    if output not in OUTPUTS:
        raise TableError(f"scoring output {output!r}: expected one of {', '.join(OUTPUTS)}")
    if progress:
        progress("score", 0, 0)
    champ = champion(config)
    if (engine or config.engine) == "spark":
        return _score_spark(lake, config, champ, source, output)
    return _score_local(lake, config, champ, source, output, progress)


def input_batches(lake, source: str, batch_rows: int):
    """The scoring input in batches of whole series: a lakehouse table carrying the
    series bucket is read a bucket range (about ``batch_rows`` rows) at a time; any other
    input is one batch."""
    kind, where = _kind(lake, source)
    if kind == "table" and lake.exists(where) and C.BUCKET in lake.schema(where).names:
        version = lake.version(where)  # pinned: every batch reads the same snapshot
        for buckets in lake.batches(where, version, batch_rows):
            yield lake.read_buckets(where, buckets, version=version)
        return
    yield read_input(lake, source)


def _score_local(
    lake, config: Config, champ: Champion, source: str, output: str, progress=None
) -> ScoreReport:
    """Batch by batch (:func:`input_batches`), each batch's rows in their own commit. To
    gold/scores, the first commit replaces the (source, model_version) rows and the others
    append, so scoring the same input again (or after a failure) still leaves one copy."""
    model = load_path(champ.path, config.storage_options)
    now, first, version = _now(), True, None
    n_series = n_rows = n_unknown = done = 0
    for frame in input_batches(lake, source, config.batch_rows):
        inputs = prepare_input(frame, config.horizon)
        del frame
        if inputs.empty and not first:
            continue

        def tell(d: int, total: int, before: int = done) -> None:
            if progress:
                progress("score", before + d, before + total)

        pred = predict_by_series(
            lambda part: model.predict(part, params={"unknown": "skip"}),
            inputs,
            progress=tell if progress else None,
        )
        pred = finish_local(pred, champ, now, source if output == GOLD_SCORES else None)
        n_in, n_out = inputs[C.SERIES_ID].nunique(), pred[C.SERIES_ID].nunique()
        done += n_in
        if output == GOLD_SCORES:
            where = f"source = {_quote(source)} AND model_version = {_quote(champ.version)}"
            mode, predicate = ("overwrite", where) if first else ("append", None)
            version = lake.write(output, pred, mode=mode, predicate=predicate)
        elif len(pred) or first:
            version = merge_local(lake, output, pred, FORECAST_KEYS)
        first = False
        n_series, n_rows, n_unknown = n_series + n_out, n_rows + len(pred), n_unknown + n_in - n_out
    return ScoreReport(source, output, champ.version, champ.run_id, n_series, n_rows, int(n_unknown), version)


def finish_local(pred: pd.DataFrame, champ: Champion, now: pd.Timestamp, source: str | None) -> pd.DataFrame:
    """Gold columns for pyfunc output rows (cutoff from the champion's training ends)."""
    pred = pred.copy()
    pred["cutoff"] = pred[C.SERIES_ID].map(champ.ends()).astype("datetime64[us]")
    pred["model_version"] = champ.version
    pred["run_id"] = champ.run_id
    pred["created_at"] = now
    if source is not None:
        pred["source"] = source
    return pred


def merge_local(lake, name: str, frame: pd.DataFrame, keys) -> int:
    """Upsert with deltalake's MERGE (the table is created when absent)."""
    if not lake.exists(name):
        return lake.write(name, frame)
    data = to_arrow(frame, lake.schema(name))
    table = lake.table(name)
    on = " AND ".join(f"t.{k} = s.{k}" for k in keys)
    (
        table.merge(data, predicate=on, source_alias="s", target_alias="t")
        .when_matched_update_all()
        .when_not_matched_insert_all()
        .execute()
    )
    return table.version()


# -- the Spark path --------------------------------------------------------------------
def _worker_model(name: str, storage_options: dict[str, str] | None = None):
    """The pyfunc shipped as ``name``, loaded once per Python worker process (a
    reference bundle reads gold/models with ``storage_options``)."""
    model = _WORKER_MODELS.get(name)
    if model is None:
        from training.engines.spark import shipped_folder

        model = load_path(shipped_folder(name), storage_options)
        _WORKER_MODELS[name] = model
    return model


def _group_predictor(name: str, columns: list[str], storage_options: dict[str, str] | None = None):
    """The per-series function of the grouped UDF (a closure over plain values only)."""
    options = dict(storage_options or {})

    def predict(pdf: pd.DataFrame) -> pd.DataFrame:
        return _worker_model(name, options).predict(pdf, params={"unknown": "skip"})[columns]

    return predict


def _ship(spark, champ: Champion) -> str:
    """Send the model folder to every executor once per session; its SparkFiles name."""
    from training.engines.spark import ship_folder

    return ship_folder(spark, champ.path)


def output_schema(levels: list[int]) -> pa.Schema:
    """Arrow schema of the pyfunc's output columns."""
    full = C.forecast_schema(levels)
    return pa.schema([full.field(c) for c in output_columns(levels)])


def predict_spark(spark, champ: Champion, inputs, config: Config, cutoffs: pd.DataFrame | None = None):
    """Forecasts of a Spark DataFrame of pyfunc inputs (``series_id, horizon`` and
    optionally ``ts, temperature``), as a lazy Spark DataFrame with the pyfunc's output
    columns plus ``cutoff`` (``cutoffs``: ``series_id, cutoff`` rows; by default the
    champion's training ends), ``model_version``, ``run_id`` and ``created_at`` (now)."""
    from pyspark.sql import functions as F

    from training.engines.spark import SparkEngine
    from training.tables.spark_session import arrow_to_spark_schema, to_spark

    cols = [F.col(C.SERIES_ID).cast("string").alias(C.SERIES_ID)]
    cols.append(
        F.col("horizon").cast("long").alias("horizon")
        if "horizon" in inputs.columns
        else F.lit(int(config.horizon)).cast("long").alias("horizon")
    )
    if C.TS in inputs.columns:
        cols.append(F.col(C.TS).cast("timestamp_ntz").alias(C.TS))
    if "temperature" in inputs.columns:
        cols.append(F.col("temperature").cast("double").alias("temperature"))
    inputs = inputs.select(*cols)
    schema = output_schema(champ.levels)
    name = _ship(spark, champ)
    fn = _group_predictor(name, list(schema.names), config.storage_options)
    n_series = inputs.select(C.SERIES_ID).distinct().count()
    parts = SparkEngine(config, spark).partitions(n_series)
    pred = (
        inputs.repartition(parts, C.SERIES_ID)
        .groupBy(C.SERIES_ID)
        .applyInPandas(fn, schema=arrow_to_spark_schema(schema))
    )
    if cutoffs is None:
        cutoffs = champ.models[[C.SERIES_ID, "end"]].rename(columns={"end": "cutoff"})
    ends = to_spark(
        spark,
        cutoffs[[C.SERIES_ID, "cutoff"]],
        pa.schema([(C.SERIES_ID, pa.string()), ("cutoff", C.TS_TYPE)]),
    )
    return (
        pred.join(F.broadcast(ends), on=C.SERIES_ID, how="left")
        .withColumn("model_version", F.lit(champ.version))
        .withColumn("run_id", F.lit(champ.run_id))
        .withColumn("created_at", F.lit(_now().to_pydatetime()))
    )


def read_input_spark(tables, source: str):
    """The scoring input as a Spark DataFrame."""
    from training.tables.spark import spark_uri
    from training.tables.spark_session import to_spark

    kind, where = _kind(tables.lake, source)
    if kind == "table":
        return tables.read(where)
    if kind == "delta":
        return tables.spark.read.format("delta").load(spark_uri(where, tables.lake.storage_options))
    if kind == "parquet":
        return tables.spark.read.parquet(spark_uri(where, tables.lake.storage_options))
    return to_spark(tables.spark, prepare_input(read_input(tables.lake, source), 1))


def _score_spark(lake, config: Config, champ: Champion, source: str, output: str) -> ScoreReport:
    from pyspark.sql import functions as F

    from training.tables.spark import SparkTables

    tables = SparkTables(lake, config=config)
    spark = tables.spark
    inputs = read_input_spark(tables, source)
    if C.SERIES_ID not in inputs.columns or ("horizon" not in inputs.columns and C.TS not in inputs.columns):
        raise DataContractError(
            f"scoring input columns {inputs.columns}: expected series_id and horizon (optional: ts, temperature)"
        )
    pred = predict_spark(spark, champ, inputs, config)
    if output == GOLD_SCORES:
        pred = pred.withColumn("source", F.lit(source))
    # computed once: written, then counted (models never run twice for a report)
    pred = tables.frame(output, pred).persist()
    try:
        if output == GOLD_SCORES:
            where = f"source = {_quote(source)} AND model_version = {_quote(champ.version)}"
            version = tables.write(output, pred, mode="overwrite", replace_where=where)
        else:
            version = tables.merge(output, pred, FORECAST_KEYS)
        stats = pred.agg(F.countDistinct(C.SERIES_ID).alias("s"), F.count(F.lit(1)).alias("n")).first()
        n_series, n_rows = int(stats["s"]), int(stats["n"])
    finally:
        pred.unpersist()
    known = tables.spark.createDataFrame(champ.models[[C.SERIES_ID]])
    n_unknown = inputs.select(C.SERIES_ID).distinct().join(known, on=C.SERIES_ID, how="left_anti").count()
    return ScoreReport(source, output, champ.version, champ.run_id, n_series, n_rows, int(n_unknown), version)


__all__ = ["Champion", "ScoreReport", "champion", "predict_spark", "prepare_input", "read_input", "score"]
