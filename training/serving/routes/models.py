"""The champion model version the service answers with."""

from __future__ import annotations

from fastapi import APIRouter

from training.serving import schemas as S
from training.serving.routes.common import ERRORS, State
from training.serving.security import GUARD

router = APIRouter(tags=["model"], responses=ERRORS, dependencies=[GUARD])


@router.get(
    "/models/champion",
    response_model=S.Champion,
    summary="The champion model version this service answers with",
)
async def champion(state: State) -> S.Champion:
    _, champ = state.require_champion()
    info = champ.info
    return S.Champion(
        name=info["name"],
        version=champ.version,
        run_id=info.get("run_id"),
        silver_version=info.get("silver_version"),
        promoted_at=info.get("promoted_at"),
        metric=info.get("metric"),
        metric_value=info.get("metric_value"),
        n_series=info.get("n_series"),
        aliases=list(info.get("aliases") or []),
        loaded_at=champ.loaded_at,
    )
