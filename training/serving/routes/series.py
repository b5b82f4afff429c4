"""Series of the champion's run: the page of ids, each series' forecast (latest or by
time travel), history, backtest and backtest forecasts, and the portfolio totals."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from starlette.concurrency import run_in_threadpool

from training.serving import schemas as S
from training.serving.errors import ServeError
from training.serving.routes.common import ERRORS, State, json_response
from training.serving.security import GUARD

router = APIRouter(tags=["series"], responses=ERRORS, dependencies=[GUARD])

SeriesId = Annotated[
    str,
    PathParam(
        pattern=S.SERIES_ID_PATTERN, description="series id: 1 to 128 characters of A-Z a-z 0-9 . _ : -"
    ),
]
Prefix = Annotated[str, Query(pattern=S.PREFIX_PATTERN, description="only ids starting with this")]
Limit = Annotated[int, Query(ge=1, le=S.MAX_PAGE, description="page size")]
Cursor = Annotated[
    str | None, Query(pattern=S.SERIES_ID_PATTERN, description="`next_cursor` of the previous page")
]
Version = Annotated[int | None, Query(ge=0, description="gold/forecasts Delta version (time travel)")]
AsOf = Annotated[
    str | None, Query(max_length=40, description="ISO 8601 time (UTC when no offset): time travel")
]
Status = Annotated[
    Literal[S.STATUSES] | None, Query(description="only series of this status in the champion's run")
]
Model = Annotated[
    str | None, Query(pattern=S.MODEL_PATTERN, description="only series whose chosen model is this")
]
Sort = Annotated[
    Literal["id", "error"],
    Query(
        description="`id`: natural id order (X2 before X10); `error`: the chosen model's backtest "
        "metric (gold/selection `metric_value`), series without one last"
    ),
]
Order = Annotated[Literal["asc", "desc"], Query(description="ascending or descending")]
Points = Annotated[int, Query(ge=1, le=S.MAX_HISTORY_POINTS, description="how many of the latest readings")]


@router.get(
    "/series",
    response_model=S.SeriesPage,
    summary="Series of the champion's run, with status, chosen model and error: sorted and filtered",
)
async def series(
    state: State,
    prefix: Prefix = "",
    limit: Limit = 100,
    cursor: Cursor = None,
    status: Status = None,
    model: Model = None,
    sort: Sort = "id",
    order: Order = "asc",
) -> S.SeriesPage:
    return state.series_page(prefix, cursor, limit, status=status, model=model, sort=sort, order=order)


@router.get(
    "/series/{series_id:path}/forecast",
    response_model=S.Forecast,
    summary="The latest Gold forecast of a series, or as of a table version or time",
)
async def forecast(state: State, series_id: SeriesId, version: Version = None, as_of: AsOf = None):
    if version is None and as_of is None:
        return json_response(state.forecast_body(series_id))
    if version is not None and as_of is not None:
        raise ServeError(400, "give version or as_of, not both")
    when = parse_time(as_of) if as_of is not None else None
    return json_response(await run_in_threadpool(state.forecast_at, series_id, version, when))


@router.get(
    "/series/{series_id:path}/history",
    response_model=S.History,
    summary="Recent readings of a series (latest silver/readings)",
)
def history(state: State, series_id: SeriesId, points: Points = 168):
    return json_response(state.history_body(series_id, points))


@router.get(
    "/series/{series_id:path}/backtest",
    response_model=S.Backtest,
    summary="Backtest rows of a series in the champion's training run",
)
def backtest(state: State, series_id: SeriesId):
    return json_response(state.backtest_body(series_id))


@router.get(
    "/series/{series_id:path}/backtest_forecasts",
    response_model=S.BacktestForecasts,
    summary="Backtest forecasts of a series' candidates against the actuals of each window (champion's run)",
)
def backtest_forecasts(state: State, series_id: SeriesId):
    return json_response(state.backtest_forecasts_body(series_id))


@router.get(
    "/portfolio",
    response_model=S.Portfolio,
    summary="Daily forecast totals overall, by region and by site",
)
def portfolio(state: State):
    return json_response(state.portfolio_body())


@router.get(
    "/hierarchy",
    response_model=S.Hierarchy,
    summary="Coherent forecasts of any level (total, region, site, series) with intervals",
)
def hierarchy(
    state: State,
    level: Annotated[
        Literal["total", "region", "site", "series"], Query(description="the level of gold/hierarchy")
    ] = "total",
    node: Annotated[
        str | None,
        Query(
            max_length=300, description="one node of the level (required for series: its id); all when absent"
        ),
    ] = None,
):
    return json_response(state.hierarchy_body(level, node))


def parse_time(text: str) -> dt.datetime:
    """An ISO 8601 time -> UTC (a time without offset is UTC)."""
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ServeError(400, f"as_of {text!r} is not an ISO 8601 time (e.g. 2024-01-22T00:00:00Z)") from None
    return when.replace(tzinfo=dt.timezone.utc) if when.tzinfo is None else when.astimezone(dt.timezone.utc)
