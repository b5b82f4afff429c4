"""``retrain.policy`` in ``mmf train`` (and so in ``mmf nightly``): which series a run
fits again and which keep their previous model (the per-series rule is
:mod:`forecasting.retrain`; this module feeds it and records what it decided).

* The previous model of a series is its row in ``gold/models`` of the base run: the
  last run recorded complete in ``gold/selection`` (:func:`base_run`; it holds every
  series of its version, carried ones included). Its rows of a batch, with ``drifted``
  from ``gold/drift`` of the latest monitoring run (:func:`drift_version`), travel with
  the batch's silver rows as one extra row per series (:func:`batch_frame`): read by the
  driver's loader on the local engine, by the executors on Spark (:func:`spark_frame`:
  gold/models, gold/drift and silver joined there, no row through the driver).
* Each run's ``gold/models`` rows carry the retrain columns (``refit``, ``from_run``,
  ``fitted_end``, ``history_hash``; carried rows keep the model, backtest and scores
  of the row they come from, with the state brought up to the new readings), so the
  registered version (built from the run's ``gold/models`` rows) holds every series,
  and ``gold/selection`` gets ``refit`` and ``from_version`` (the registered version of
  ``from_run``: where the model's parameters were estimated).
* Batches holding drifted series are trained first, most drifted first (:func:`order`).
* The run's metrics ``n_refit``, ``n_carried``, ``n_drifted`` (and ``refit.<reason>``
  per reason) are summed up by the engine over the run's ``gold/models`` rows
  (:func:`log_counts`).

The base run and the monitoring run are read from the tables, so a restarted job finds
the same ones and its carried rows are those an uninterrupted run writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import mlflow
import numpy as np
import pandas as pd

from forecasting import contract as C
from forecasting.config import Config
from forecasting.retrain import (
    CARRY_COLUMN,
    CARRY_FIELDS,
    carry_rows,
    failed_retrain,
    retrain_series,
    with_carry,
)
from registry.aggregates import facts
from training.engines.base import Engine, TableBatch
from training.jobs.monitor import APP_MONITOR
from training.jobs.train_plan import Plan
from training.tables import GOLD_DRIFT, GOLD_MODELS, GOLD_SELECTION, Lakehouse

PREVIOUS_COLUMNS = tuple(CARRY_FIELDS)  # an older gold/models lacks the retrain columns: null


@dataclass(frozen=True)
class Retrain:
    """What a run's partial retrain reads: the base run's gold/models rows and the
    drift flags of the monitoring run on ``drift_version`` (``None``: none)."""

    base_run: str | None
    drift_version: int | None

    @property
    def partial(self) -> bool:
        return self.base_run is not None


def context(lake: Lakehouse, cfg: Config, plan: Plan, run_id: str) -> Retrain:
    """The run's :class:`Retrain`: no base run with ``retrain.policy: full``, for a run
    on a subset of series, or before any run is complete."""
    if cfg.retrain.policy == C.FULL or plan.series_ids:
        return Retrain(None, None)
    return Retrain(base_run(lake, run_id), drift_version(lake))


def base_run(lake: Lakehouse, run_id: str) -> str | None:
    """The newest run recorded complete in gold/selection (its commit carrying
    ``mmf.run_id``), other than ``run_id``, whose rows are in gold/models."""
    if not lake.exists(GOLD_SELECTION) or not lake.exists(GOLD_MODELS):
        return None
    for commit in lake.history(GOLD_SELECTION):
        found = commit.get("mmf.run_id")
        if found and found != run_id:
            rows = lake.read(GOLD_MODELS, columns=["batch"], filters=[("run_id", "=", found)])
            return found if len(rows) else None
    return None


def drift_version(lake: Lakehouse) -> int | None:
    """The silver version of the latest complete monitoring run (gold/drift)."""
    if not lake.exists(GOLD_DRIFT):
        return None
    return lake.txn_version(GOLD_DRIFT, APP_MONITOR)


def previous_columns(lake: Lakehouse) -> list[str]:
    """The carry fields gold/models holds (an older table lacks the retrain columns)."""
    names = lake.stored_columns(GOLD_MODELS)
    return [c for c in PREVIOUS_COLUMNS if c in names]


def previous(lake: Lakehouse, ctx: Retrain, buckets: tuple[int, int]) -> pd.DataFrame:
    """The base run's gold/models rows of a bucket range with ``drifted``."""
    where = [("run_id", "=", ctx.base_run)]
    rows = lake.read_buckets(GOLD_MODELS, buckets, columns=previous_columns(lake), filters=where)
    rows = rows.reindex(columns=list(PREVIOUS_COLUMNS))
    return rows.assign(drifted=rows[C.SERIES_ID].isin(drifted_ids(lake, ctx, buckets)))


def drifted_ids(lake: Lakehouse, ctx: Retrain, buckets: tuple[int, int]) -> set[str]:
    """The series of a bucket range the monitoring run ``ctx.drift_version`` flagged."""
    if ctx.drift_version is None:
        return set()
    where = [("silver_version", "=", int(ctx.drift_version)), ("drifted", "=", True)]
    rows = lake.read_buckets(GOLD_DRIFT, buckets, columns=[C.SERIES_ID], filters=where)
    return set(rows[C.SERIES_ID].astype(str))


def batch_frame(lake: Lakehouse, ctx: Retrain, plan: Plan, i: int, rows: pd.DataFrame) -> pd.DataFrame:
    """Batch ``i``'s silver ``rows`` with each series' previous row appended (a partial
    retrain), or as they are."""
    if not ctx.partial:
        return rows
    return with_carry(rows, carry_rows(previous(lake, ctx, plan.ranges[i])))


def group_fn():
    """What the engine maps over the series."""
    return retrain_series


def on_error(cfg: Config):
    return partial(failed_retrain, config=cfg)


def order(lake: Lakehouse, ctx: Retrain, plan: Plan, todo: list[int]) -> list[int]:
    """``todo`` with the batches holding drifted series first (most first), the others
    in plan order."""
    if not ctx.partial or ctx.drift_version is None:
        return list(todo)
    where = [("silver_version", "=", int(ctx.drift_version)), ("drifted", "=", True)]
    buckets = lake.read(GOLD_DRIFT, columns=[C.BUCKET], filters=where)[C.BUCKET].to_numpy()
    if not len(buckets):
        return list(todo)
    los = np.array([lo for lo, _ in plan.ranges])
    counts = np.bincount(np.searchsorted(los, buckets, side="right") - 1, minlength=plan.n)
    return sorted(todo, key=lambda i: (-int(counts[i]), i))


# -- the run's counts ------------------------------------------------------------------
def retrain_facts(rows: pd.DataFrame) -> pd.DataFrame:
    """Facts of gold/models rows (``refit``): ``refit.<reason>`` per row."""
    reasons = rows["refit"].fillna(C.FULL).astype(str)
    return facts(("refit." + reasons).tolist())


def counts(stats) -> dict[str, float]:
    """``n_refit``, ``n_carried``, ``n_drifted`` and ``refit.<reason>`` of the sums."""
    by = {k[len("refit.") :]: float(s.count) for k, s in stats.items() if k.startswith("refit.")}
    out = {f"refit.{k}": v for k, v in sorted(by.items())}
    carried = by.get(C.CARRIED, 0.0)
    out.update(n_refit=float(sum(by.values()) - carried), n_carried=carried, n_drifted=by.get(C.DRIFTED, 0.0))
    return out


def log_counts(lake: Lakehouse, engine: Engine, plan: Plan, run_id: str, parts=None) -> dict[str, float]:
    """The run's counts, summed up by the engine over its gold/models rows (or from the
    run's staged ``parts``) and logged to the active MLflow run; returns them."""
    if parts is not None:
        stats = parts.refit_stats(plan)
    else:
        where = (("run_id", "=", run_id),)
        sources = [TableBatch(lake, GOLD_MODELS, r, None, (C.SERIES_ID, "refit"), where) for r in plan.ranges]
        stats = engine.aggregate(sources, retrain_facts)
    out = counts(stats)
    mlflow.log_metrics(out)
    return out


__all__ = ["CARRY_COLUMN", "Retrain", "context", "batch_frame", "group_fn", "order", "log_counts"]
