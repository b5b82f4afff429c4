"""The body limit and the last resort for unexpected errors, as plain ASGI middleware
(cheap on the hot path)."""

from __future__ import annotations

import json
import logging

from training.serving import schemas as S

log = logging.getLogger(__name__)


async def _send_json(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


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


class InternalErrorMiddleware:
    """An exception no handler answered becomes a 500 with one line, ``{"detail":
    "internal error (Type): see the server log"}``, its traceback logged here, and the
    connection stays open (Starlette's own last resort re-raises to the server, which
    drops the keep-alive connection). Once a response has started it can only re-raise."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def sending(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            if started:
                raise
            # details stay in the server log: they may name paths, hosts or credentials' owners
            log.error("%s %s failed", scope.get("method"), scope.get("path"), exc_info=exc)
            await _send_json(send, 500, f"internal error ({type(exc).__name__}): see the server log")
