"""The one error the service answers on purpose (never a 500)."""

from __future__ import annotations


class ServeError(Exception):
    """A request the service answers with ``status``, ``{"detail": detail}`` and ``headers``."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers
