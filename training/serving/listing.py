"""The series list of the champion's run as the page explores it: natural id order
(``X1, X2, … X10``), ordered by error (the chosen model's backtest metric in
gold/selection), filtered by id prefix, status and chosen model, paged by cursor.

Pure: built once per snapshot from the gold/selection rows; a page is a few array
operations over precomputed orders.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

SORTS = ("id", "error")
ORDERS = ("asc", "desc")
_DIGITS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple:
    """``X2`` before ``X10``: runs of digits compare as numbers, the rest as text; equal
    keys (``X01``, ``X1``) fall back to the text itself."""
    parts = _DIGITS.split(text)
    return (tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), text)


@dataclass(frozen=True)
class Listed:
    """One page: the ids in order, how many match the filters, and the cursor of the next
    page (None on the last)."""

    ids: list[str]
    total: int
    next_cursor: str | None


class UnknownCursor(ValueError):
    """A cursor that is not a series of the run, in an order it cannot be placed in."""


class SeriesListing:
    """gold/selection rows (``{series_id: row}``) in natural id order, with the orders a
    page can ask for precomputed as positions into that order."""

    def __init__(self, rows: Mapping[str, Mapping[str, Any]]) -> None:
        ids = sorted(rows, key=natural_key)
        n = len(ids)
        self.ids = ids
        self._text = np.array(ids, dtype=str) if n else np.array([], dtype=str)
        self._status = np.array([rows[i].get("status") or "" for i in ids], dtype=object)
        self._model = np.array([rows[i].get("model") or "" for i in ids], dtype=object)
        error = np.array([_number(rows[i].get("metric_value")) for i in ids], dtype=float)
        self.position = {sid: k for k, sid in enumerate(ids)}
        natural = np.arange(n)
        self._orders = {
            ("id", "asc"): natural,
            ("id", "desc"): natural[::-1],
            # NaN (no error: failed, quarantined) sorts last either way; ties in id order
            ("error", "asc"): np.lexsort((natural, error)),
            ("error", "desc"): np.lexsort((natural, -error)),
        }
        self._rank = {}
        for key, order in self._orders.items():
            rank = np.empty(n, dtype=np.int64)
            rank[order] = natural
            self._rank[key] = rank
        self.counts = {
            "status": dict(sorted(Counter(s for s in self._status if s).items())),
            "model": dict(
                sorted(Counter(m for m in self._model if m).items(), key=lambda kv: natural_key(kv[0]))
            ),
        }

    def page(
        self,
        *,
        prefix: str = "",
        status: str | None = None,
        model: str | None = None,
        sort: str = "id",
        order: str = "asc",
        cursor: str | None = None,
        limit: int = 100,
    ) -> Listed:
        """The ``limit`` series after ``cursor`` that match every filter, in the order asked.

        Raises:
            UnknownCursor: ``cursor`` is not a series of the run and the order is by error.
        """
        seq = self._orders[(sort, order)]
        mask = np.ones(len(self.ids), dtype=bool)
        if prefix:
            mask &= np.char.startswith(self._text, prefix)
        if status:
            mask &= self._status == status
        if model:
            mask &= self._model == model
        seq = seq[mask[seq]]
        start = self._start(seq, sort, order, cursor) if cursor else 0
        chosen = seq[start : start + limit]
        ids = [self.ids[k] for k in chosen]
        more = start + limit < len(seq)
        return Listed(ids, int(len(seq)), ids[-1] if more and ids else None)

    def _start(self, seq: np.ndarray, sort: str, order: str, cursor: str) -> int:
        """Where the page after ``cursor`` starts in ``seq`` (positions in the order asked)."""
        found = self.position.get(cursor)
        if found is not None:
            rank = self._rank[(sort, order)]
            return int(np.searchsorted(rank[seq], rank[found], side="right"))
        if sort != "id":
            raise UnknownCursor(f"cursor {cursor!r} is not a series of the champion's run")
        # an id outside the run still has a place in id order
        key = natural_key(cursor)
        after = (
            (lambda k: natural_key(self.ids[k]) <= key)
            if order == "asc"
            else (lambda k: natural_key(self.ids[k]) >= key)
        )
        return sum(1 for k in seq if after(k))


def _number(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return out if np.isfinite(out) else float("nan")
