"""``mmf stream``: new bronze rows -> refreshed forecasts in Gold, as they arrive.

Spark Structured Streaming reads ``bronze/readings`` as a Delta source. Each
micro-batch (``foreachBatch``, on the driver):

1. takes the series the batch touched;
2. re-reads their whole bronze history (latest version) and cleans it per series with
   :func:`forecasting.cleaning.clean_series` on the Spark engine (the rules of
   ``mmf refine``; series that are now quarantined are reported and not forecast); only
   the last week of each clean series comes back to the driver (:func:`clean_tail`);
3. for each clean series the champion holds a model for, forecasts the ``horizon`` steps
   after its last clean reading (``cutoff`` = that reading, or the model's training end
   when later) with the champion pyfunc (:func:`training.jobs.score.predict_spark`, a
   grouped UDF); future temperature is the same step one week earlier, as in
   ``mmf forecast``;
4. MERGEs the rows into ``gold/forecasts`` on (``series_id``, ``ts``, ``cutoff``,
   ``model_version``) in one Delta commit that also records the application transaction
   (app id derived from the checkpoint location, version = the batch id).

Restart safety: the checkpoint (``<lakehouse>/_checkpoints/stream`` by default) logs a
batch's offsets before the batch runs, so after a crash the batch is replayed with the
same id and the same rows. A replayed batch whose commit had landed is skipped (its
transaction version is already in the table); one whose commit had not landed is written
now. MERGE keeps a row single even when two batches forecast the same (series, cutoff).
Nothing is lost, nothing is duplicated.

The stream does not refit models (``mmf train``/``nightly`` do) and does not write silver
(``mmf refine`` owns it, pinned to a bronze version); it moves each touched series'
forecast window to its newest data. Spark is reached only through the Spark engine and
table layer (this module imports no pyspark). A batch that writes passes the checkpoints
``stream_before_commit`` and ``stream_after_commit`` (:mod:`training.checkpoints`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from forecasting import contract as C
from forecasting.cleaning import REFINE_OUT, clean_series
from forecasting.config import Config
from forecasting.errors import TableError
from forecasting.frequency import step_of
from training import checkpoints
from training.jobs.refine import engine_error
from training.jobs.score import FORECAST_KEYS, champion, predict_spark
from training.tables import BRONZE_READINGS, GOLD_FORECASTS, Lakehouse

log = logging.getLogger(__name__)

BRONZE = BRONZE_READINGS
FORECASTS = GOLD_FORECASTS
WEEK = pd.Timedelta("7D")


@dataclass
class BatchReport:
    batch_id: int
    status: str  # written | skipped (already committed) | empty (nothing to forecast)
    n_touched: int = 0
    n_series: int = 0
    n_rows: int = 0
    quarantined: dict[str, str] = field(default_factory=dict)  # series -> reason
    unknown: list[str] = field(default_factory=list)  # no model in the champion
    model_version: str | None = None
    table_version: int | None = None


@dataclass
class StreamReport:
    checkpoint: str
    app_id: str
    batches: list[BatchReport] = field(default_factory=list)


def checkpoint_location(lake: Lakehouse) -> str:
    return f"{lake.root}/_checkpoints/stream"


def app_id_for(checkpoint: str) -> str:
    """One Delta application id per checkpoint (a new checkpoint restarts batch ids at 0)."""
    return "mmf-stream-" + hashlib.sha1(checkpoint.encode()).hexdigest()[:12]


def future_inputs(ends: pd.DataFrame, recent: pd.DataFrame, freq: str, horizon: int) -> pd.DataFrame:
    """Pyfunc input rows ``series_id, horizon, ts, temperature`` for ``horizon`` steps
    after each series' ``cutoff`` (``ends``: ``series_id, cutoff``); temperature is the
    reading one week earlier (``recent``: ``series_id, ts, temperature``), beyond that the
    series' last known week repeated (forward/back fill)."""
    step = step_of(freq).to_timedelta64()
    sids = ends[C.SERIES_ID].to_numpy()
    k = np.arange(1, horizon + 1)
    cut = ends["cutoff"].to_numpy(dtype="datetime64[us]")
    ts = (cut[:, None] + (k * step)[None, :]).ravel().astype("datetime64[us]")
    frame = pd.DataFrame({C.SERIES_ID: np.repeat(sids, horizon), "horizon": np.int64(horizon), C.TS: ts})
    if len(recent) and recent["temperature"].notna().any():
        shifted = recent.assign(**{C.TS: pd.to_datetime(recent[C.TS]).astype("datetime64[us]") + WEEK})
        shifted = shifted.drop_duplicates([C.SERIES_ID, C.TS])[[C.SERIES_ID, C.TS, "temperature"]]
        frame = frame.merge(shifted, on=[C.SERIES_ID, C.TS], how="left")
        frame["temperature"] = frame.groupby(C.SERIES_ID)["temperature"].transform(
            lambda s: s.ffill().bfill()
        )
    return frame


def clean_tail(pdf: pd.DataFrame, config: Config) -> pd.DataFrame:
    """:func:`clean_series`, keeping of a clean series only its last week: its cutoff
    and the temperature a refreshed forecast persists (a quarantined series: its row)."""
    out = clean_series(pdf, config)
    if len(out) and out["_reason"].isna().all():
        ts = pd.to_datetime(out[C.TS])
        out = out[(ts > ts.max() - WEEK).to_numpy()]
    return out


class _Batches:
    """The ``foreachBatch`` function: everything a micro-batch does, on the driver."""

    def __init__(
        self, lake: Lakehouse, config: Config, app_id: str, on_batch: Callable[[BatchReport], None] | None
    ) -> None:
        from training.engines.spark import SparkEngine
        from training.tables.spark import SparkTables

        self.lake = lake
        self.config = config
        self.app_id = app_id
        self.tables = SparkTables(lake, config=config)
        self.engine = SparkEngine(config, self.tables.spark)
        self.reports: list[BatchReport] = []
        self.on_batch = on_batch

    def __call__(self, batch_df: Any, batch_id: int) -> None:
        report = self.run(batch_df, int(batch_id))
        self.reports.append(report)
        if self.on_batch:
            self.on_batch(report)

    def run(self, batch_df: Any, batch_id: int) -> BatchReport:
        from training.tables.spark_session import to_spark

        done = self.lake.txn_version(FORECASTS, self.app_id)
        if done is not None and done >= batch_id:
            log.info(
                "stream batch %d: already committed (transaction %s=%d); skipped", batch_id, self.app_id, done
            )
            return BatchReport(batch_id, "skipped")
        touched = self.tables.distinct(batch_df, C.SERIES_ID)
        report = BatchReport(batch_id, "empty", n_touched=len(touched))
        if not touched:
            return report
        champ = champion(self.config)
        report.model_version = champ.version
        cfg = self.config.replace(freq=self.config.freq or champ.freq)
        history = self.tables.read_series(BRONZE, touched)
        tails = self.engine.map_groups(
            history, C.SERIES_ID, clean_tail, REFINE_OUT, cfg, on_error=engine_error
        )
        bad = tails["_reason"].notna()
        for sid, reason, detail in zip(
            tails.loc[bad, C.SERIES_ID], tails.loc[bad, "_reason"], tails.loc[bad, "_detail"]
        ):
            report.quarantined[str(sid)] = f"{reason}: {detail}"
        good = tails.loc[~bad, [C.SERIES_ID, C.TS, "temperature"]]
        ends = good.groupby(C.SERIES_ID, as_index=False)[C.TS].max().rename(columns={C.TS: "cutoff"})
        known = champ.ends()
        report.unknown = sorted(set(ends[C.SERIES_ID]) - set(known.index))
        ends = ends[ends[C.SERIES_ID].isin(known.index)].reset_index(drop=True)
        if ends.empty:
            return report
        # the pyfunc forecasts steps after the training end: never start before it
        trained = ends[C.SERIES_ID].map(known).to_numpy(dtype="datetime64[us]")
        ends["cutoff"] = np.maximum(ends["cutoff"].to_numpy(dtype="datetime64[us]"), trained)
        inputs = future_inputs(ends, good, cfg.freq, cfg.horizon)
        pred = predict_spark(self.tables.spark, champ, to_spark(self.tables.spark, inputs), cfg, cutoffs=ends)
        pred = self.tables.frame(FORECASTS, pred).persist()
        try:
            report.n_rows = pred.count()
            report.n_series = len(ends)
            checkpoints.checkpoint("stream_before_commit", batch_id=batch_id)
            report.table_version = self.tables.merge(
                FORECASTS, pred, FORECAST_KEYS, app_id=self.app_id, app_version=batch_id
            )
            checkpoints.checkpoint("stream_after_commit", batch_id=batch_id)
        finally:
            pred.unpersist()
        report.status = "written"
        log.info(
            "stream batch %d: %d rows for %d series (model version %s)",
            batch_id,
            report.n_rows,
            report.n_series,
            champ.version,
        )
        return report


def stream(
    lake: Lakehouse,
    config: Config,
    once: bool = False,
    checkpoint: str | None = None,
    starting_version: int | None = None,
    interval_s: float = 60,
    timeout_s: float | None = None,
    on_batch: Callable[[BatchReport], None] | None = None,
) -> StreamReport:
    """Run the stream: with ``once``, every bronze row not yet processed (Spark's
    ``availableNow`` trigger) and then return; otherwise a micro-batch every
    ``interval_s`` seconds until ``timeout_s`` (``None``: until interrupted).

    Raises:
        TableError: bronze/readings does not exist, or a micro-batch failed (the stream
            stops; run it again to resume from the checkpoint).
        RegistryError: there is no champion.
    """
    if not lake.exists(BRONZE):
        raise TableError("bronze/readings does not exist: run `mmf ingest --source PATH` first")
    champion(config)  # fail now, not in the first batch, when there is none
    location = checkpoint or checkpoint_location(lake)
    app_id = app_id_for(location)
    batches = _Batches(lake, config, app_id, on_batch)
    batches.tables.stream(
        BRONZE,
        batches,
        location,
        once=once,
        starting_version=starting_version,
        interval_s=interval_s,
        timeout_s=timeout_s,
        query_name=app_id,
    )
    return StreamReport(location, app_id, batches.reports)


__all__ = ["BatchReport", "StreamReport", "checkpoint_location", "clean_tail", "future_inputs", "stream"]
