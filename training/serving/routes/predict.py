"""On-demand forecasts from the champion many-models pyfunc held in memory."""

from __future__ import annotations

from fastapi import APIRouter

from training.serving import schemas as S
from training.serving.errors import ServeError
from training.serving.routes.common import ERRORS, State, json_response
from training.serving.security import GUARD

router = APIRouter(tags=["model"], responses=ERRORS, dependencies=[GUARD])


@router.post(
    "/predict",
    response_model=S.Prediction,
    summary="Forecast series with the champion many-models pyfunc",
)
def predict(request: S.PredictRequest, state: State):
    if len(request.series) > S.MAX_SERIES:
        raise ServeError(413, f"{len(request.series)} series in one request: send at most {S.MAX_SERIES}")
    return json_response(state.predict_body(request.series))
