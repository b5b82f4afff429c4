"""The REST API and the forecast page: :func:`create_app` builds the FastAPI app.

Endpoints (the committed spec is ``training/serving/openapi.json``)::

    GET  /health                          liveness: 200 while the process serves
    GET  /ready                           200 once a champion and the Gold tables are loaded, else 503 + reason
    GET  /models/champion                 the champion's name, version, run, silver version, promotion time
    GET  /series?prefix=&limit=&cursor=   series of the champion's run with status and chosen model
    GET  /series/{id}/forecast            latest Gold forecast (?version=N or ?as_of=ISO: time travel)
    GET  /series/{id}/history?points=     recent silver readings
    GET  /series/{id}/backtest            gold/backtest rows of the champion's run
    GET  /portfolio                       gold/portfolio totals of the served forecasts
    POST /predict                         forecasts from the champion many-models pyfunc in memory
    GET  /                                the forecast page (training/serving/static)

With ``serve.api_key`` set (or ``MMF_API_KEY``), every request needs the header
``X-API-Key`` (compared in constant time) except ``/health`` and the page's own static
files, which hold no data; the page asks for the key when the API answers 401.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hmac
import json
import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from forecasting.config import Config
from training.serving import schemas as S
from training.serving.state import DEFAULT_REFRESH_S, ServeError, ServingState

log = logging.getLogger(__name__)

API_VERSION = "1"
OPENAPI_FILE = Path(__file__).resolve().parent / "openapi.json"
STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
PUBLIC_PATHS = ("/health", "/")  # plus /static/*: code and markup only, no data
JSON = "application/json"
_CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'"
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
_ERRORS = {code: {"model": S.Error} for code in (400, 401, 404, 413, 503)}


# -- middleware (plain ASGI: cheap on the hot path) ----------------------------------------
async def _send_json(
    send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", JSON.encode()),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ApiKeyMiddleware:
    """401 unless the ``X-API-Key`` header equals the configured key (constant time)."""

    def __init__(self, app, api_key: str) -> None:
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path in PUBLIC_PATHS or path.startswith("/static/"):
            return await self.app(scope, receive, send)
        given = b""
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                given = value
                break
        if not hmac.compare_digest(given, self.key):
            why = "missing" if not given else "wrong"
            return await _send_json(
                send,
                401,
                f"{why} API key: send the header {S.API_KEY_HEADER}",
                [(b"www-authenticate", S.API_KEY_HEADER.encode())],
            )
        return await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 for a request body above ``limit`` bytes, declared or streamed; the body is
    read (at most ``limit`` bytes) before the app sees it."""

    def __init__(self, app, limit: int = S.MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        too_big = f"request body above {self.limit:,} bytes: send at most {S.MAX_SERIES} series per request"
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await _send_json(send, 400, "invalid Content-Length header")
                if declared > self.limit:
                    return await _send_json(send, 413, too_big)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await _send_json(send, 413, too_big)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


# -- the app ---------------------------------------------------------------------------
def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """Values out of range -> 400 with one readable message; bodies of the wrong shape
    -> FastAPI's usual 422 list."""
    errors = exc.errors()
    if not errors or any(e.get("type") not in _VALUE_ERRORS for e in errors):
        from fastapi.encoders import jsonable_encoder

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


def _serve_error(request: Request, exc: ServeError) -> JSONResponse:
    return JSONResponse({"detail": exc.detail}, status_code=exc.status)


def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # details stay in the server log: they may name paths, hosts or credentials' owners
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {"detail": f"internal error ({type(exc).__name__}): see the server log"}, status_code=500
    )


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The page's files, read once: requests pick from this dict, never from a path."""
    files = {}
    for path in sorted(STATIC_DIR.glob("*")):
        if path.is_file() and path.suffix in STATIC_TYPES:
            files[path.name] = (path.read_bytes(), STATIC_TYPES[path.suffix])
    return files


def create_app(config: Config, refresh_s: float | None = None, start: bool = True) -> FastAPI:
    """The API and page for ``config``.

    Args:
        config: platform configuration; ``serve.api_key`` turns authentication on and
            ``serve.max_horizon`` bounds ``/predict`` horizons.
        refresh_s: seconds between two checks of the champion alias and the Gold table
            versions (default ``serve.refresh_s`` when the config has it, else 5).
        start: start the refresher with the app (False: build the app only, e.g. to
            write the OpenAPI spec).
    """
    if refresh_s is None:
        refresh_s = getattr(config.serve, "refresh_s", None) or DEFAULT_REFRESH_S
    state = ServingState(config, refresh_s=refresh_s)
    max_horizon = int(config.serve.max_horizon)
    static = _static_files()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if start:
            state.start()
        try:
            yield
        finally:
            state.stop()

    app = FastAPI(
        title="mmf forecasts",
        version=API_VERSION,
        description=(
            "Forecasts of the many-models champion: Gold forecasts by series (with Delta time travel), "
            "series status and chosen model, backtests, portfolio totals, and on-demand forecasts from the "
            f"champion pyfunc. When an API key is configured, send it as the `{S.API_KEY_HEADER}` header "
            "(every endpoint but `/health`)."
        ),
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load from a CDN; the spec is at /openapi.json
        redoc_url=None,
    )
    app.state.serving = state
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ServeError, _serve_error)
    app.add_exception_handler(Exception, _internal_error)
    app.add_middleware(BodyLimitMiddleware)
    if config.serve.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=str(config.serve.api_key))

    def json_response(body: bytes) -> Response:
        return Response(content=body, media_type=JSON)

    series_path = PathParam(
        pattern=S.SERIES_ID_PATTERN, description="series id: 1 to 128 characters of A-Z a-z 0-9 . _ : -"
    )

    # -- probes ------------------------------------------------------------------------
    @app.get("/health", response_model=S.Health, tags=["probes"], summary="Liveness")
    async def health() -> S.Health:
        return S.Health(status="ok")

    @app.get(
        "/ready",
        response_model=S.Ready,
        responses={503: {"model": S.Ready}},
        tags=["probes"],
        summary="Readiness: a champion is loaded and the Gold tables are readable",
    )
    async def ready():
        snap = state.snapshot
        fc = snap.forecasts
        out = S.Ready(
            ready=snap.problem is None,
            reason=snap.problem,
            champion_version=snap.champion.version if snap.champion else None,
            forecasts_table_version=fc.table_version if fc else None,
            forecasts_model_version=fc.model_version if fc else None,
            n_series=len(fc.bodies) if fc else None,
        )
        return JSONResponse(out.model_dump(), status_code=200 if out.ready else 503)

    # -- model -------------------------------------------------------------------------
    @app.get(
        "/models/champion",
        response_model=S.Champion,
        responses=_ERRORS,
        tags=["model"],
        summary="The champion model version this service answers with",
    )
    async def champion() -> S.Champion:
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

    # -- series ------------------------------------------------------------------------
    @app.get(
        "/series",
        response_model=S.SeriesPage,
        responses=_ERRORS,
        tags=["series"],
        summary="Series of the champion's run, by id, with status and chosen model",
    )
    async def series(
        prefix: str = Query("", pattern=S.PREFIX_PATTERN, description="only ids starting with this"),
        limit: int = Query(100, ge=1, le=S.MAX_PAGE, description="page size"),
        cursor: str | None = Query(
            None, pattern=S.SERIES_ID_PATTERN, description="`next_cursor` of the previous page"
        ),
    ) -> S.SeriesPage:
        return state.series_page(prefix, cursor, limit)

    @app.get(
        "/series/{series_id:path}/forecast",
        response_model=S.Forecast,
        responses=_ERRORS,
        tags=["series"],
        summary="The latest Gold forecast of a series, or as of a table version or time",
    )
    async def forecast(
        series_id: str = series_path,
        version: int | None = Query(None, ge=0, description="gold/forecasts Delta version (time travel)"),
        as_of: str | None = Query(
            None, max_length=40, description="ISO 8601 time (UTC when no offset): time travel"
        ),
    ):
        if version is None and as_of is None:
            return json_response(state.forecast_body(series_id))
        if version is not None and as_of is not None:
            raise ServeError(400, "give version or as_of, not both")
        when = _parse_time(as_of) if as_of is not None else None
        return json_response(await run_in_threadpool(state.forecast_at, series_id, version, when))

    @app.get(
        "/series/{series_id:path}/history",
        response_model=S.History,
        responses=_ERRORS,
        tags=["series"],
        summary="Recent readings of a series (latest silver/readings)",
    )
    def history(
        series_id: str = series_path,
        points: int = Query(
            168, ge=1, le=S.MAX_HISTORY_POINTS, description="how many of the latest readings"
        ),
    ):
        return json_response(state.history_body(series_id, points))

    @app.get(
        "/series/{series_id:path}/backtest",
        response_model=S.Backtest,
        responses=_ERRORS,
        tags=["series"],
        summary="Backtest rows of a series in the champion's training run",
    )
    def backtest(series_id: str = series_path):
        return json_response(state.backtest_body(series_id))

    @app.get(
        "/portfolio",
        response_model=S.Portfolio,
        responses=_ERRORS,
        tags=["series"],
        summary="Daily forecast totals overall, by region and by site",
    )
    def portfolio():
        return json_response(state.portfolio_body())

    # -- scoring -----------------------------------------------------------------------
    @app.post(
        "/predict",
        response_model=S.Prediction,
        responses=_ERRORS,
        tags=["model"],
        summary="Forecast series with the champion many-models pyfunc",
    )
    def predict(request: S.PredictRequest):
        if len(request.series) > S.MAX_SERIES:
            raise ServeError(413, f"{len(request.series)} series in one request: send at most {S.MAX_SERIES}")
        return json_response(state.predict_body(request.series, max_horizon))

    # -- page --------------------------------------------------------------------------
    page_headers = {
        "Content-Security-Policy": _CSP,
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
    }

    @app.get("/", include_in_schema=False)
    async def index():
        body, kind = static["index.html"]
        return Response(body, media_type=kind, headers=page_headers)

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str):
        found = static.get(name)
        if found is None:
            raise ServeError(404, "no such file")
        return Response(found[0], media_type=found[1], headers=page_headers)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            spec.setdefault("components", {})["securitySchemes"] = {
                "ApiKey": {"type": "apiKey", "in": "header", "name": S.API_KEY_HEADER}
            }
            spec["security"] = [{}, {"ApiKey": []}]  # optional: required only when serve.api_key is set
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _parse_time(text: str) -> dt.datetime:
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ServeError(400, f"as_of {text!r} is not an ISO 8601 time (e.g. 2024-01-22T00:00:00Z)") from None
    return when.replace(tzinfo=dt.timezone.utc) if when.tzinfo is None else when.astimezone(dt.timezone.utc)


def openapi_text(config: Config | None = None) -> str:
    """The OpenAPI document as committed (``training/serving/openapi.json``)."""
    spec = create_app(config or Config(), start=False).openapi()
    return json.dumps(spec, indent=2, sort_keys=True) + "\n"


def run(
    config: Config,
    host: str | None = None,
    port: int | None = None,
    refresh_s: float | None = None,
    access_log: bool = True,
) -> None:
    """Serve with uvicorn until interrupted (``mmf serve``)."""
    import uvicorn

    uvicorn.run(
        create_app(config, refresh_s=refresh_s),
        host=host or config.serve.host,
        port=config.serve.port if port is None else port,
        ws="none",
        lifespan="on",
        access_log=access_log,
        server_header=False,
        log_level="info",
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m training.serving.app --write-openapi``: regenerate the committed spec."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--write-openapi", action="store_true", help=f"write {OPENAPI_FILE}")
    args = parser.parse_args(argv)
    if args.write_openapi:
        OPENAPI_FILE.write_text(openapi_text())


if __name__ == "__main__":
    main()
