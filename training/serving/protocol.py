"""How long a connection may take to send a request: uvicorn closes an idle keep-alive
connection after ``timeout_keep_alive``, but has no timeout for reading a request, so a
client that opens a connection and sends half a request line (or half its headers, or
half its body) would hold it forever. :class:`GuardedH11Protocol` closes such a
connection :data:`READ_TIMEOUT_S` seconds after it opened or after the request's first
byte, whichever started the request; :func:`server_config` is the uvicorn
configuration ``mmf serve`` runs with (and the tests too)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 10.0  # request line, headers and body, from the first byte
KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this
MAX_HEADER_BYTES = 16 * 1024  # request line and headers together (h11 answers 400 above)
GRACEFUL_SHUTDOWN_S = 10  # requests still running at shutdown get this long
_READING = (h11.IDLE, h11.SEND_BODY)  # the client's side of a request not fully received


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a request read timeout (:attr:`read_timeout_s`)."""

    read_timeout_s: float = READ_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._read_timer is None and self.conn.their_state in _READING:
            self._arm()  # the first bytes of the next request on a kept-alive connection
        super().data_received(data)
        if self.conn.their_state not in _READING:
            self._disarm()  # the whole request is in (or the connection is done)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(self.read_timeout_s, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if not self.transport.is_closing():
            client = "%s:%d" % self.client if self.client else "a client"
            log.info("closing the connection of %s: no whole request within %gs", client, self.read_timeout_s)
            self.transport.close()


def guarded(read_timeout_s: float) -> type[GuardedH11Protocol]:
    """The protocol class with another read timeout."""
    if read_timeout_s == GuardedH11Protocol.read_timeout_s:
        return GuardedH11Protocol
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"read_timeout_s": float(read_timeout_s)})


def server_config(
    app: Any,
    host: str,
    port: int,
    access_log: bool = True,
    log_level: str = "info",
    read_timeout_s: float = READ_TIMEOUT_S,
    keep_alive_s: int = KEEP_ALIVE_S,
) -> uvicorn.Config:
    """The uvicorn configuration of ``mmf serve``: h11 with the read timeout, a short
    keep-alive, bounded headers and a bounded graceful shutdown; no websockets, no
    ``Server`` header."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=guarded(read_timeout_s),
        ws="none",
        lifespan="on",
        access_log=access_log,
        server_header=False,
        log_level=log_level,
        timeout_keep_alive=keep_alive_s,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
    )
