"""What a request reads: one immutable :class:`Snapshot` of the champion, the latest
gold/forecasts rows of its version pre-rendered as one JSON body per series (a lookup is
a dict hit), and its run's gold/selection rows in the orders the series list pages through
(:mod:`~training.serving.listing`)."""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import pyarrow.compute as pc

from forecasting import contract as C
from training.serving.champion import Champion
from training.serving.listing import SeriesListing
from training.serving.render import (
    accuracy_items,
    forecast_bodies,
    latest_write,
    newest_per_series,
    selection_rows,
)
from training.tables import (
    GOLD_BACKTEST,
    GOLD_BACKTEST_FORECASTS,
    GOLD_DRIFT,
    GOLD_FORECASTS,
    GOLD_HIERARCHY,
    GOLD_PORTFOLIO,
    GOLD_SELECTION,
    SILVER_READINGS,
    Lakehouse,
)

log = logging.getLogger(__name__)

FORECASTS, SELECTION, BACKTEST, PORTFOLIO, READINGS = (
    GOLD_FORECASTS,
    GOLD_SELECTION,
    GOLD_BACKTEST,
    GOLD_PORTFOLIO,
    SILVER_READINGS,
)
DRIFT = GOLD_DRIFT
BACKTEST_FORECASTS = GOLD_BACKTEST_FORECASTS
HIERARCHY = GOLD_HIERARCHY
WATCHED = (FORECASTS, SELECTION, BACKTEST, PORTFOLIO, READINGS, DRIFT, BACKTEST_FORECASTS, HIERARCHY)
_SELECTION_COLUMNS = [C.SERIES_ID, "status", "reason", "model", "metric", "metric_value"]


@dataclass(frozen=True)
class ForecastIndex:
    table_version: int
    wanted: str | None  # the champion version asked for
    model_version: str | None  # the version the rows come from (wanted, or the latest written)
    bodies: Mapping[str, bytes]
    newest_cutoff: dt.datetime | None = None  # UTC: the latest training end the rows start after
    drift_version: int | None = None  # the gold/drift version the bodies' live accuracy comes from


@dataclass(frozen=True)
class SelectionIndex:
    table_version: int
    run_id: str
    listing: SeriesListing  # natural id order, by error, filters
    rows: Mapping[str, dict[str, Any]]


@dataclass(frozen=True)
class Snapshot:
    champion: Champion | None = None
    forecasts: ForecastIndex | None = None
    selection: SelectionIndex | None = None
    versions: Mapping[str, int | None] = field(default_factory=dict)
    problem: str | None = "starting: the first refresh has not finished"


def build_forecasts(
    lake: Lakehouse, table_version: int, wanted: str | None, drift_version: int | None = None
) -> ForecastIndex:
    """The gold/forecasts rows of champion version ``wanted`` at ``table_version``, rendered;
    the most recent forecast written while the champion has not been forecast yet. Each
    body carries the series' latest live accuracy (gold/drift at ``drift_version``)."""
    started = time.perf_counter()
    rows = (
        newest_per_series(
            lake.arrow(FORECASTS, version=table_version, filters=[("model_version", "=", wanted)])
        )
        if wanted
        else None
    )
    if rows is None or rows.num_rows == 0:
        rows = latest_write(lake.arrow(FORECASTS, version=table_version))
    model_version = rows["model_version"][0].as_py() if rows.num_rows else None
    newest = pc.max(rows["cutoff"]).as_py() if rows.num_rows else None
    if newest is not None and newest.tzinfo is None:
        newest = newest.replace(tzinfo=dt.timezone.utc)  # Gold timestamps are naive UTC
    bodies = forecast_bodies(rows, table_version, live_accuracy(lake, drift_version))
    log.info(
        "cached %d forecasts of model version %s (gold/forecasts version %d) in %.2fs",
        len(bodies),
        model_version,
        table_version,
        time.perf_counter() - started,
    )
    return ForecastIndex(table_version, wanted, model_version, bodies, newest, drift_version)


def live_accuracy(lake: Lakehouse, drift_version: int | None) -> dict[str, dict]:
    """Each series' row of the latest monitoring run in gold/drift, as ``accuracy`` items."""
    if drift_version is None:
        return {}
    latest = lake.arrow(DRIFT, version=drift_version, columns=["silver_version"])
    if latest.num_rows == 0:
        return {}
    newest = pc.max(latest["silver_version"]).as_py()
    return accuracy_items(lake.arrow(DRIFT, version=drift_version, filters=[("silver_version", "=", newest)]))


def build_selection(lake: Lakehouse, table_version: int, run_id: str) -> SelectionIndex:
    """The gold/selection rows of the champion's run at ``table_version``."""
    table = lake.arrow(
        SELECTION, version=table_version, columns=_SELECTION_COLUMNS, filters=[("run_id", "=", run_id)]
    )
    rows = selection_rows(table.to_pandas(), _SELECTION_COLUMNS)
    return SelectionIndex(table_version, run_id, SeriesListing(rows), rows)


def staleness(forecasts: ForecastIndex | None, max_age_h: float, now: dt.datetime) -> str | None:
    """Why the served forecasts are stale (their newest cutoff is more than ``max_age_h``
    hours before ``now``), or None: fresh, none loaded (reported elsewhere), or the
    check is off (``max_age_h`` 0)."""
    if not max_age_h or forecasts is None or forecasts.newest_cutoff is None:
        return None
    age_h = (now - forecasts.newest_cutoff).total_seconds() / 3600
    if age_h <= max_age_h:
        return None
    cutoff = forecasts.newest_cutoff.strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f"stale forecasts: the newest cutoff in {FORECASTS} (model version {forecasts.model_version}) "
        f"is {cutoff}, {age_h:.0f} h ago, above serve.max_forecast_age_h {max_age_h:g}: "
        "no forecast was written since; run `mmf forecast` or check the nightly"
    )
