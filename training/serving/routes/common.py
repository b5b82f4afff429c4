"""What the routers share: the serving state as a dependency, error responses, JSON bodies."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import Response

from training.serving import schemas as S
from training.serving.state import ServingState

JSON = "application/json"
ERRORS = {code: {"model": S.Error} for code in (400, 401, 404, 413, 503)}


async def serving_state(request: Request) -> ServingState:
    return request.app.state.serving


State = Annotated[ServingState, Depends(serving_state)]


def json_response(body: bytes) -> Response:
    """A body rendered once (bytes of a validated model), sent as it is."""
    return Response(content=body, media_type=JSON)
