"""``/docs``: Swagger UI for the committed spec, served from this process, no CDN.

The Swagger UI files come from the ``swagger-ui-bundle-v2`` package (the ``serve`` extra)
and are served under ``/docs/assets``; the page that starts them
(``static/docs.html`` + ``static/docs.js``) reads ``/openapi.json`` and sends the API key
the forecast page stored, if any. Without the package, ``/docs`` is a short page that
points to ``/openapi.json``. Like the forecast page, these files hold no data: public."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.types import Scope

from training.serving.routes.page import STATIC_DIR, STATIC_TYPES

try:  # the serve extra ships it; the fallback page keeps /docs useful without it
    from swagger_ui_bundle import swagger_ui_path
except ImportError:  # pragma: no cover - exercised only without the extra
    swagger_ui_path = None

SWAGGER_DIR = Path(str(swagger_ui_path)) if swagger_ui_path is not None else None
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css")
# Swagger UI sets style attributes from script (CSSOM) and in markup: inline styles only
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'"
)
DOCS_HEADERS = {
    "Content-Security-Policy": _CSP,
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}

router = APIRouter(include_in_schema=False)


class SwaggerFiles(StaticFiles):
    """Swagger UI's own files (:data:`ASSETS` only) from the installed bundle."""

    def __init__(self) -> None:
        super().__init__(directory=SWAGGER_DIR, check_dir=SWAGGER_DIR is not None)

    async def get_response(self, path: str, scope: Scope) -> Response:
        if SWAGGER_DIR is None or path not in ASSETS:
            raise HTTPException(status_code=404)
        response = await super().get_response(path, scope)
        response.headers.update(DOCS_HEADERS)
        if response.status_code == 200:
            response.headers["content-type"] = STATIC_TYPES[Path(path).suffix]
        return response


_PAGE = (STATIC_DIR / "docs.html").read_bytes()
_FALLBACK = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mmf API</title></head>
<body><h1>mmf API</h1>
<p>Swagger UI is not installed here (<code>pip install -e '.[serve]'</code> brings it).
The OpenAPI spec is at <a href="/openapi.json">/openapi.json</a>
(send the <code>X-API-Key</code> header when the service has a key).</p>
</body></html>
"""


@router.get("/docs")
async def docs():
    body = _PAGE if SWAGGER_DIR is not None else _FALLBACK
    return Response(body, media_type=STATIC_TYPES[".html"], headers=DOCS_HEADERS)
