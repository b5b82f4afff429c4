"""The REST API and the forecast page: :func:`create_app` builds the FastAPI app from its
routers (:mod:`training.serving.routes`).

Endpoints (the committed spec is ``training/serving/openapi.json``)::

    GET  /health                          liveness: 200 while the process serves
    GET  /ready                           200 once a champion and the Gold tables are loaded and the newest
                                          forecast cutoff is within serve.max_forecast_age_h, else 503 + reason
    GET  /models/champion                 the champion's name, version, run, silver version, promotion time
    GET  /series?prefix=&limit=&cursor=   series of the champion's run with status, chosen model and error
         &status=&model=&sort=&order=     (natural id order or by error; filtered by status and model)
    GET  /series/{id}/forecast            latest Gold forecast (?version=N or ?as_of=ISO: time travel)
    GET  /series/{id}/history?points=     recent silver readings
    GET  /series/{id}/backtest            gold/backtest rows of the champion's run
    GET  /series/{id}/backtest_forecasts  gold/backtest_forecasts rows of one series (the overlay)
    GET  /portfolio                       gold/portfolio totals of the served forecasts
    GET  /hierarchy?level=&node=          gold/hierarchy: coherent forecasts of any level (total, region, site, series)
    POST /predict                         forecasts from the champion many-models pyfunc in memory
    GET  /                                the forecast page (training/serving/static)
    GET  /docs                            Swagger UI, served from the swagger-ui-bundle package (no CDN)

With ``serve.api_key`` set (or ``MMF_API_KEY``), every request needs the header
``X-API-Key`` (compared in constant time, :mod:`training.serving.security`) except
``/health`` and the page, ``/docs`` and their own static files, which hold no data; the page asks for
the key when the API answers 401. A key that is set but empty (``MMF_API_KEY=""``) is
refused at start.

Every error body is ``{"detail": ...}`` with one line (tracebacks stay in the server log);
a body of the wrong shape or types gets FastAPI's 422 list. The server closes a connection
that has not sent a whole request within 10 s (:mod:`training.serving.protocol`).
"""

from __future__ import annotations

import argparse
import json
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from forecasting.config import Config
from forecasting.errors import ConfigError
from training.serving import handlers
from training.serving import schemas as S
from training.serving.middleware import BodyLimitMiddleware, InternalErrorMiddleware
from training.serving.protocol import server_config
from training.serving.refresher import DEFAULT_REFRESH_S
from training.serving.routes import docs, models, page, predict, probes, series
from training.serving.state import ServingState

API_VERSION = "1"
OPENAPI_FILE = Path(__file__).resolve().parent / "openapi.json"
DESCRIPTION = (
    "Forecasts of the many-models champion: Gold forecasts by series (with Delta time travel), "
    "series status and chosen model, backtests, portfolio totals, and on-demand forecasts from the "
    f"champion pyfunc. When an API key is configured, send it as the `{S.API_KEY_HEADER}` header "
    "(every endpoint but `/health`)."
)


def create_app(config: Config, refresh_s: float = DEFAULT_REFRESH_S, start: bool = True) -> FastAPI:
    """The API and page for ``config``.

    Args:
        config: platform configuration; ``serve.api_key`` turns authentication on and
            ``serve.max_horizon`` bounds ``/predict`` horizons.
        refresh_s: seconds between two checks of the champion alias and the Gold table
            versions.
        start: start the refresher with the app (False: build the app only, e.g. to
            write the OpenAPI spec).
    """
    api_key = checked_api_key(config)
    state = ServingState(config, refresh_s=refresh_s)

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
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_url=None,  # served by the page router, behind the key
        docs_url=None,  # FastAPI's Swagger UI and ReDoc load from a CDN: /docs is served by routes.docs
        redoc_url=None,
    )
    app.state.serving = state
    app.state.api_key = api_key
    handlers.install(app)
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(InternalErrorMiddleware)  # outermost: it also answers for the body limit
    for part in (probes, models, series, predict, page, docs):
        app.include_router(part.router)
    app.mount("/static", page.PageFiles(), name="static")
    app.mount("/docs/assets", docs.SwaggerFiles(), name="docs-assets")
    return app


def checked_api_key(config: Config) -> bytes | None:
    """The key requests must send (None: authentication off, no key configured).

    Raises:
        ConfigError: the key is set but empty or blank (``MMF_API_KEY=""`` would
            otherwise turn authentication off without a word).
    """
    key = config.serve.api_key
    if key is None:
        return None
    if not str(key).strip():
        raise ConfigError(
            "serve.api_key",
            key,
            "a non-empty key (an empty MMF_API_KEY or serve.api_key would turn authentication off: "
            "unset it to serve without a key)",
        )
    return str(key).encode()


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
    """Serve with uvicorn until interrupted (``mmf serve``), with the timeouts of
    :func:`training.serving.protocol.server_config`."""
    app = create_app(config, refresh_s=DEFAULT_REFRESH_S if refresh_s is None else refresh_s)
    host = host or config.serve.host
    port = config.serve.port if port is None else port
    uvicorn.Server(server_config(app, host, port, access_log=access_log)).run()


def main(argv: list[str] | None = None) -> None:
    """``python -m training.serving.app --write-openapi``: regenerate the committed spec."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--write-openapi", action="store_true", help=f"write {OPENAPI_FILE}")
    args = parser.parse_args(argv)
    if args.write_openapi:
        OPENAPI_FILE.write_text(openapi_text())


if __name__ == "__main__":
    main()
