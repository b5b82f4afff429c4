"""The background thread that keeps the :class:`~training.serving.snapshot.Snapshot`
current.

Every ``refresh_s`` seconds it checks the ``champion`` alias (one registry call) and the
Delta versions of the tables the service reads (an incremental read of each
``_delta_log``); only what changed is rebuilt, off the request path, and the new snapshot
replaces the old one in a single assignment, so a request sees either the old state or
the new one, never a mix.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import replace

from deltalake import DeltaTable

from forecasting.config import Config
from training.serving import champion as champions
from training.serving.errors import brief
from training.serving.snapshot import (
    DRIFT,
    FORECASTS,
    SELECTION,
    WATCHED,
    Snapshot,
    build_forecasts,
    build_selection,
    staleness,
)
from training.tables import Lakehouse

log = logging.getLogger(__name__)

DEFAULT_REFRESH_S = 5.0


class Refresher:
    """Holds the current :attr:`snapshot` and, once started, a thread that refreshes it.

    Args:
        config: the platform configuration (registry name, MLflow).
        lake: the lakehouse the served tables live in.
        refresh_s: seconds between two checks of the champion alias and of the table
            versions.
    """

    def __init__(self, config: Config, lake: Lakehouse, refresh_s: float = DEFAULT_REFRESH_S) -> None:
        self.config, self.lake = config, lake
        self.refresh_s = float(refresh_s)
        self.max_forecast_age_h = float(config.serve.max_forecast_age_h)
        self.snapshot = Snapshot()
        self._held: dict[str, DeltaTable] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_logged: str | None = None

    # -- the thread --------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="mmf-serve-refresh", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.refresh_s)

    # -- one refresh -------------------------------------------------------------------
    def refresh(self) -> Snapshot:
        """Check the alias and the table versions; rebuild what changed; swap. Never
        raises: a failure keeps the previous data and becomes the readiness problem, one
        line (its traceback goes to the log, once per change of problem)."""
        with self._lock:
            prev = self.snapshot
            errors: list[BaseException] = []
            try:
                snap = self._refreshed(prev, errors)
            except Exception as exc:  # noqa: BLE001 - keep serving what we have
                errors.append(exc)
                snap = replace(prev, problem=f"refresh failed: {brief(exc)}")
            if snap.problem != self._last_logged:
                if snap.problem:
                    log.warning("not ready: %s", snap.problem, exc_info=errors[0] if errors else None)
                    for exc in errors[1:]:
                        log.warning("and: %s", brief(exc), exc_info=exc)
                else:
                    log.info("ready: champion version %s", snap.champion.version if snap.champion else None)
                self._last_logged = snap.problem
            self.snapshot = snap  # the one atomic swap
            return snap

    def _refreshed(self, prev: Snapshot, errors: list[BaseException]) -> Snapshot:
        problems: list[str] = []
        champion = champions.follow(self.config, prev.champion, problems, errors)
        versions = {name: self._version(name) for name in WATCHED}
        wanted = champion.version if champion else None
        forecasts = prev.forecasts
        fv = versions[FORECASTS]
        if fv is None:
            forecasts = None
            problems.append(f"{FORECASTS} does not exist yet: run `mmf forecast`")
        elif forecasts is None or (forecasts.table_version, forecasts.wanted, forecasts.drift_version) != (
            fv,
            wanted,
            versions[DRIFT],
        ):
            forecasts = build_forecasts(self.lake, fv, wanted, versions[DRIFT])

        selection = prev.selection
        sv = versions[SELECTION]
        run_id = champion.info.get("run_id") if champion else None
        if sv is None:
            selection = None
            problems.append(f"{SELECTION} does not exist yet: run `mmf train`")
        elif run_id and (selection is None or (selection.table_version, selection.run_id) != (sv, run_id)):
            selection = build_selection(self.lake, sv, run_id)
        stale = staleness(forecasts, self.max_forecast_age_h, dt.datetime.now(dt.timezone.utc))
        if stale:
            problems.append(stale)
        return Snapshot(
            champion=champion,
            forecasts=forecasts,
            selection=selection,
            versions=versions,
            problem="; ".join(problems) or None,
        )

    def _version(self, name: str) -> int | None:
        """The latest Delta version of ``name`` (None while it does not exist), read
        incrementally from a table object held across refreshes."""
        held = self._held.get(name)
        if held is not None:
            try:
                held.update_incremental()
                return held.version()
            except Exception:  # noqa: BLE001 - table replaced or log cleaned: reopen below
                self._held.pop(name, None)
        if not self.lake.exists(name):
            return None
        held = self._held[name] = DeltaTable(self.lake.uri(name), storage_options=self.lake.storage_options)
        return held.version()
