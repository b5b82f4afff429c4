"""How errors become responses: ``{"detail": ...}`` with the right status, never a trace."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from training.serving import schemas as S
from training.serving.errors import ServeError
from training.serving.security import refusal

log = logging.getLogger(__name__)

_VALUE_ERRORS = {
    "string_pattern_mismatch",
    "string_too_long",
    "string_too_short",
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "too_short",
}


def serve_error(request: Request, exc: ServeError) -> JSONResponse:
    return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)


def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """Values out of range -> 400 with one readable message; bodies of the wrong shape
    -> FastAPI's usual 422 list."""
    # FastAPI parses a JSON body before it checks the key: without the key, 401 still wins
    refused = refusal(request, request.headers.get(S.API_KEY_HEADER))
    if refused is not None:
        return serve_error(request, refused)
    errors = exc.errors()
    if not errors or any(e.get("type") not in _VALUE_ERRORS for e in errors):
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ())[1:]) or "value"
        given = repr(e.get("input"))
        given = given if len(given) <= 60 else given[:57] + "..."
        if e["type"] == "string_pattern_mismatch" and loc.split(".")[-1] in ("series_id", "cursor"):
            parts.append(
                f"{loc} {given} is not a valid series id: expected 1 to 128 characters of A-Z a-z 0-9 . _ : -"
            )
        else:
            parts.append(f"{loc} {given}: {e.get('msg', 'invalid value')}")
    return JSONResponse({"detail": "; ".join(parts)}, status_code=400)


def internal_error(request: Request, exc: Exception) -> JSONResponse:
    # details stay in the server log: they may name paths, hosts or credentials' owners
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {"detail": f"internal error ({type(exc).__name__}): see the server log"}, status_code=500
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ServeError, serve_error)
    app.add_exception_handler(Exception, internal_error)
