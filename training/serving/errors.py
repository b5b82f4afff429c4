"""The one error the service answers on purpose (never a 500), and the one-line texts
every answer carries: a reason or detail is never more than one line, so a backtrace
(Rust's from deltalake, Python's from a model that failed to load) stays in the server
log and never reaches a client."""

from __future__ import annotations

import re

_SPACES = re.compile(r"\s+")


class ServeError(Exception):
    """A request the service answers with ``status``, ``{"detail": detail}`` and ``headers``."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers


def one_line(text: object, limit: int = 300) -> str:
    """The first non-empty line of ``text``, its spaces collapsed, at most ``limit``
    characters: what a client may read of a message (the rest goes to the log)."""
    first = next((line for line in str(text).splitlines() if line.strip()), "")
    first = _SPACES.sub(" ", first).strip()
    return first if len(first) <= limit else first[: limit - 3] + "..."


def brief(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` of an exception, for a client."""
    return one_line(f"{type(exc).__name__}: {exc}", limit)
