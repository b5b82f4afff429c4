"""The API key: with ``serve.api_key`` set (or ``MMF_API_KEY``), every endpoint but
``/health`` and the page's own files needs the ``X-API-Key`` header, compared in constant
time; without a configured key everything is open."""

from __future__ import annotations

import hmac

from fastapi import Request, Security
from fastapi.security import APIKeyHeader

from training.serving import schemas as S
from training.serving.errors import ServeError

API_KEY = APIKeyHeader(
    name=S.API_KEY_HEADER,
    scheme_name="ApiKey",
    description="required when the service is configured with an API key (serve.api_key or MMF_API_KEY)",
    auto_error=False,
)


def refusal(request: Request, given: str | None) -> ServeError | None:
    """The 401 for a missing or wrong key; None when the key is right or none is configured."""
    expected: bytes | None = request.app.state.api_key
    if expected is None:
        return None
    # headers arrive decoded as latin-1: their own bytes, compared in constant time
    if hmac.compare_digest((given or "").encode("latin-1"), expected):
        return None
    why = "missing" if not given else "wrong"
    return ServeError(
        401,
        f"{why} API key: send the header {S.API_KEY_HEADER}",
        headers={"WWW-Authenticate": S.API_KEY_HEADER},
    )


async def require_api_key(request: Request, given: str | None = Security(API_KEY)) -> None:
    """The dependency of every guarded route."""
    refused = refusal(request, given)
    if refused is not None:
        raise refused


GUARD = Security(require_api_key)
