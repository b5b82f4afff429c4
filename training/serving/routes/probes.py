"""Liveness (public) and readiness (behind the key, like the data it describes)."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from training.serving import schemas as S
from training.serving.routes.common import State
from training.serving.security import GUARD

router = APIRouter(tags=["probes"])


@router.get("/health", response_model=S.Health, summary="Liveness")
async def health() -> S.Health:
    return S.Health(status="ok")


@router.get(
    "/ready",
    response_model=S.Ready,
    responses={503: {"model": S.Ready}},
    summary="Readiness: a champion is loaded, the Gold tables are readable and the forecasts are recent",
    dependencies=[GUARD],
)
async def ready(state: State):
    snap = state.snapshot
    fc = snap.forecasts
    out = S.Ready(
        ready=snap.problem is None,
        reason=snap.problem,
        champion_version=snap.champion.version if snap.champion else None,
        forecasts_table_version=fc.table_version if fc else None,
        forecasts_model_version=fc.model_version if fc else None,
        n_series=len(fc.bodies) if fc else None,
        forecasts_cutoff=utc_text(fc.newest_cutoff) if fc and fc.newest_cutoff else None,
    )
    return JSONResponse(out.model_dump(), status_code=200 if out.ready else 503)


def utc_text(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
