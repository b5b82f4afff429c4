"""What the stages of ``mmf train`` share: the batch plan over silver (:class:`Plan`), a
run's rows read back from ``gold/models`` by batch, and the done-set of a Gold table
(the batches of the run it holds rows of)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from forecasting import contract as C
from forecasting.jsontext import loads
from training.engines.base import TableBatch
from training.tables import GOLD_MODELS, SILVER_QUARANTINE, SILVER_READINGS, SILVER_SERIES, Lakehouse

APP_ID = "mmf-train"
APP_GATE = "mmf-gate"
RESULT_COLUMNS = list(C.TRAIN_RESULT_CORE.names)  # the backtest forecasts are read only for their table
SELECTION_COLUMNS = [C.SERIES_ID, "status", "reason", "model", "metric", "metric_value"]
# the gold/models columns behind gold/selection's refit and from_version
RETRAIN_SELECTION = ("refit", "from_run")


@dataclass
class Plan:
    """A job's batches: silver/readings at a pinned version, in bucket ranges (of the
    series ``series_ids`` only, when given)."""

    lake: Lakehouse
    version: int
    ranges: list[tuple[int, int]]
    series_ids: list[str] | None = None

    @property
    def n(self) -> int:
        return len(self.ranges)

    def _filters(self) -> list | None:
        return [(C.SERIES_ID, "in", list(self.series_ids))] if self.series_ids else None

    def batch(self, i: int) -> TableBatch:
        """Batch ``i``'s silver rows, as the engine reads them (the Spark engine on its
        executors, the local engine through deltalake)."""
        filters = tuple(self._filters() or ())
        return TableBatch(self.lake, SILVER_READINGS, self.ranges[i], self.version, filters=filters)

    def load(self, i: int) -> pd.DataFrame:
        """Batch ``i``'s silver rows, read here."""
        return self.batch(i)()

    def quarantine_batch(
        self, i: int, columns: Sequence[str] | None = None, last: int | None = None
    ) -> TableBatch:
        """Batch ``i``'s rows of silver/quarantine (the latest version), as engines read
        them; with ``last``, those of batches ``i`` to ``last`` in one read."""
        cols = tuple(columns) if columns else None
        buckets = (self.ranges[i][0], self.ranges[i if last is None else last][1])
        return TableBatch(self.lake, SILVER_QUARANTINE, buckets, None, cols, tuple(self._filters() or ()))

    def quarantine(self, i: int) -> pd.DataFrame:
        """Batch ``i``'s rows of silver/quarantine."""
        return self.lake.read_buckets(SILVER_QUARANTINE, self.ranges[i], filters=self._filters())

    def n_quarantined(self) -> int:
        if not self.series_ids:
            return self.lake.n_rows(SILVER_QUARANTINE)
        return len(self.lake.read(SILVER_QUARANTINE, columns=[C.SERIES_ID], filters=self._filters()))

    def n_series(self) -> int:
        """The series to train, as the Delta log counts them (for progress reports)."""
        return len(self.series_ids) if self.series_ids else self.lake.n_rows(SILVER_SERIES)

    def history(self, ids: Sequence[str]) -> pd.DataFrame:
        """The silver rows of a few series (the run's plots)."""
        return self.lake.read(SILVER_READINGS, version=self.version, filters=[(C.SERIES_ID, "in", list(ids))])

    def batch_of(self, ids) -> np.ndarray:
        """The index of the batch each series id falls in."""
        los = np.array([lo for lo, _ in self.ranges])
        return np.searchsorted(los, C.bucket_of(ids), side="right") - 1


def retrain_columns(lake: Lakehouse) -> list[str]:
    """The retrain columns (:data:`RETRAIN_SELECTION`) gold/models has (a table written
    before the partial retrain has none until its next write)."""
    names = lake.stored_columns(GOLD_MODELS)
    return [c for c in RETRAIN_SELECTION if c in names]


def models_source(
    lake: Lakehouse,
    run_id: str,
    plan: Plan,
    i: int,
    version: int | None,
    columns: Sequence[str],
    kept: pd.DataFrame | None = None,
) -> TableBatch | Callable[[], pd.DataFrame]:
    """Where an engine gets ``columns`` of the run's gold/models rows of batch ``i``: the
    table at ``version`` (``None``: the latest), or ``kept``: those rows as the local
    engine's sink kept them when it committed them (no read)."""
    if kept is not None:
        return partial(kept.__getitem__, list(columns))
    return TableBatch(lake, GOLD_MODELS, plan.ranges[i], version, tuple(columns), (("run_id", "=", run_id),))


def done_batches(lake: Lakehouse, name: str, run_id: str, plan: Plan) -> set[int]:
    """The batches of the run a table holds rows of: gold/models by its ``batch`` column,
    the other tables by the buckets of the run's series in them."""
    where = [("run_id", "=", run_id)]
    if name == GOLD_MODELS:
        return {int(b) for b in lake.read(GOLD_MODELS, columns=["batch"], filters=where)["batch"].unique()}
    ids = lake.read(name, columns=[C.SERIES_ID], filters=where)[C.SERIES_ID].unique()
    return {int(b) for b in np.unique(plan.batch_of(ids))}


def batch_rows(lake: Lakehouse, run_id: str, buckets: tuple[int, int]) -> pd.DataFrame:
    """A run's TRAIN_RESULT rows of one bucket range, from gold/models, by series id."""
    rows = lake.read_buckets(GOLD_MODELS, buckets, columns=RESULT_COLUMNS, filters=[("run_id", "=", run_id)])
    return rows.sort_values(C.SERIES_ID, ignore_index=True)


def run_batches(lake: Lakehouse, run_id: str, plan: Plan) -> Iterator[pd.DataFrame]:
    """A run's TRAIN_RESULT rows, batch by batch, read back from gold/models."""
    for buckets in plan.ranges:
        yield batch_rows(lake, run_id, buckets)


def plotted_columns(lake: Lakehouse) -> list[str]:
    """The gold/models columns of the run's plotted series: TRAIN_RESULT's and the
    backtest forecasts (what :func:`registry.plots.stored_backtest` draws), which a table
    older than that column lacks."""
    return RESULT_COLUMNS + [C.FORECASTS_JSON] * (C.FORECASTS_JSON in lake.stored_columns(GOLD_MODELS))


def run_rows(lake: Lakehouse, run_id: str, ids: Sequence[str]) -> pd.DataFrame:
    """A run's rows of a few series (:func:`plotted_columns`)."""
    where = [("run_id", "=", run_id), (C.SERIES_ID, "in", list(ids))]
    return lake.read(GOLD_MODELS, columns=plotted_columns(lake), filters=where)


def run_results(lake: Lakehouse, run_id: str) -> pd.DataFrame:
    """All of a run's TRAIN_RESULT rows in one frame (small runs only)."""
    rows = lake.read(GOLD_MODELS, columns=RESULT_COLUMNS, filters=[("run_id", "=", run_id)])
    return rows.sort_values(C.SERIES_ID, ignore_index=True)


def now() -> pd.Timestamp:
    """The time now, UTC, as the Gold tables' ``created_at`` holds it."""
    return pd.Timestamp(dt.datetime.now(dt.timezone.utc)).as_unit("us")


def backtest_rows(results: pd.DataFrame, run_id: str) -> pd.DataFrame:
    rows = []
    for sid, payload in zip(results[C.SERIES_ID], results["backtest_json"]):
        for r in loads(payload or "[]"):
            rows.append({**r, C.SERIES_ID: sid, "run_id": run_id})
    frame = pd.DataFrame(rows)
    if len(frame):
        frame["cutoff"] = pd.to_datetime(frame["cutoff"]).astype("datetime64[us]")
    return frame
