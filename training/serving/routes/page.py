"""The forecast page: ``/`` and its own files under ``/static`` (code and markup, no data:
public), and the OpenAPI spec at ``/openapi.json`` (behind the key)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.types import Scope

from training.serving.security import GUARD

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
_CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'"
PAGE_HEADERS = {
    "Content-Security-Policy": _CSP,
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}

router = APIRouter(include_in_schema=False)


class PageFiles(StaticFiles):
    """The page's files from :data:`STATIC_DIR`: only the types in :data:`STATIC_TYPES`,
    each sent with its type and the page's headers."""

    def __init__(self) -> None:
        super().__init__(directory=STATIC_DIR)

    async def get_response(self, path: str, scope: Scope) -> Response:
        kind = STATIC_TYPES.get(Path(path).suffix)
        if kind is None:
            raise HTTPException(status_code=404)
        response = await super().get_response(path, scope)
        response.headers.update(PAGE_HEADERS)
        if response.status_code == 200:
            response.headers["content-type"] = kind
        return response


_INDEX = (STATIC_DIR / "index.html").read_bytes()


@router.get("/")
async def index():
    return Response(_INDEX, media_type=STATIC_TYPES[".html"], headers=PAGE_HEADERS)


@router.get("/openapi.json", dependencies=[GUARD])
async def openapi(request: Request):
    return JSONResponse(request.app.openapi())
