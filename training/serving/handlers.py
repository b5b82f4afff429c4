"""How errors become responses: ``{"detail": ...}`` with the right status, never a trace.

Unexpected exceptions are answered by
:class:`~training.serving.middleware.InternalErrorMiddleware` (a 500 that keeps the
connection open)."""

from __future__ import annotations

import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from training.serving import schemas as S
from training.serving.errors import ServeError, one_line
from training.serving.security import refusal

MAX_DETAIL = 2000  # characters of a ServeError detail (ten listed series ids fit)

_VALUE_ERRORS = {
    "string_pattern_mismatch",
    "string_too_long",
    "string_too_short",
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "too_short",
    "literal_error",  # a value outside a documented set (sort, order, status)
}


def serve_error(request: Request, exc: ServeError) -> JSONResponse:
    return JSONResponse(
        {"detail": one_line(exc.detail, MAX_DETAIL)}, status_code=exc.status, headers=exc.headers
    )


def json_safe(value: Any) -> Any:
    """``value`` as JSON can carry it: NaN and infinities (``1e400`` parses as inf) as
    text, containers walked, anything else that is not a JSON scalar as its text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if value is None or isinstance(value, (str, int, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return one_line(value)


def validation_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """FastAPI's list of validation errors (``type``, ``loc``, ``msg``, ``input``,
    ``ctx``), every value JSON-safe."""
    out = []
    for e in errors:
        item = {
            "type": str(e.get("type")),
            "loc": json_safe(list(e.get("loc", ()))),
            "msg": one_line(e.get("msg")),
        }
        item.update({key: json_safe(e[key]) for key in ("input", "ctx") if key in e})
        out.append(item)
    return out


def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """Values out of range -> 400 with one readable message; bodies of the wrong shape
    -> FastAPI's usual 422 list."""
    # FastAPI parses a JSON body before it checks the key: without the key, 401 still wins
    refused = refusal(request, request.headers.get(S.API_KEY_HEADER))
    if refused is not None:
        return serve_error(request, refused)
    errors = exc.errors()
    if not errors or any(e.get("type") not in _VALUE_ERRORS for e in errors):
        return JSONResponse({"detail": validation_errors(errors)}, status_code=422)
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


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ServeError, serve_error)
