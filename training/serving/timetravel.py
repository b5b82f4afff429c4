"""gold/forecasts as of an older Delta version or a time (``?version=N``, ``?as_of=ISO``).

Answers are cached by (table version, series), which identifies their content; the few
table versions last asked for stay open, and the table's commit times are read once per
latest version.
"""

from __future__ import annotations

import bisect
import datetime as dt

import pyarrow.compute as pc
import pyarrow.dataset as pds

from forecasting import contract as C
from training.serving.cache import LRU
from training.serving.errors import ServeError
from training.serving.render import forecast_bodies, latest_write
from training.serving.snapshot import FORECASTS
from training.tables import Lakehouse

TIME_TRAVEL_TABLES = 4  # gold/forecasts versions kept open for time travel
TIME_TRAVEL_BODIES = 1024  # rendered time-travel answers kept (a few KiB each)


class TimeTravel:
    """Older forecasts of one series, read from ``lake``'s gold/forecasts."""

    def __init__(self, lake: Lakehouse) -> None:
        self.lake = lake
        self._commits = LRU(2)
        self._datasets = LRU(TIME_TRAVEL_TABLES)
        self._bodies = LRU(TIME_TRAVEL_BODIES)

    def forecast_at(
        self, series_id: str, version: int | None, as_of: dt.datetime | None, latest: int | None
    ) -> bytes:
        """The latest forecast of one series as of a gold/forecasts ``version`` or time
        ``as_of``; ``latest`` is the table's current version (None: no table yet)."""
        if version is None:
            version = self._version_at(as_of, latest)  # type: ignore[arg-type]
        if latest is None or version > latest:
            raise ServeError(
                404,
                f"{FORECASTS} has no version {version}"
                + (f": versions are 0..{latest}" if latest is not None else ": the table does not exist yet"),
            )
        return self._bodies.get(
            ("forecast", version, series_id), lambda: self._forecast_at(series_id, version)
        )

    def _forecast_at(self, series_id: str, version: int) -> bytes:
        dataset = self._datasets.get(version, lambda: self._dataset(version))
        rows = latest_write(dataset.to_table(filter=pc.field(C.SERIES_ID) == series_id))
        if rows.num_rows == 0:
            raise ServeError(404, f"series {series_id!r} has no forecast in {FORECASTS} version {version}")
        return forecast_bodies(rows, version)[series_id]

    def _dataset(self, version: int) -> pds.Dataset:
        try:
            table = self.lake.table(FORECASTS, version=version)
        except Exception:  # noqa: BLE001 - vacuumed or unreadable version
            raise ServeError(
                404, f"{FORECASTS} version {version} can no longer be read (vacuumed?)"
            ) from None
        return table.to_pyarrow_dataset()

    def _version_at(self, as_of: dt.datetime, latest: int | None) -> int:
        """The last gold/forecasts version committed at or before ``as_of``."""
        commits = self._commits.get(latest, self._read_commits)
        times = [t for _, t in commits]
        i = bisect.bisect_right(times, as_of.timestamp() * 1000)
        if i == 0:
            first = dt.datetime.fromtimestamp(times[0] / 1000, dt.timezone.utc) if times else None
            raise ServeError(
                404,
                f"{FORECASTS} has no version at or before {as_of.isoformat()}"
                + (
                    f": its first commit is at {first.isoformat()}"
                    if first
                    else ": the table does not exist yet"
                ),
            )
        return commits[i - 1][0]

    def _read_commits(self) -> list[tuple[int, float]]:
        if not self.lake.exists(FORECASTS):
            return []
        history = self.lake.table(FORECASTS).history()
        return sorted((int(h["version"]), float(h["timestamp"])) for h in history)
