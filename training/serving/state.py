"""What the service answers from: :class:`ServingState` puts together the pieces.

* :mod:`~training.serving.snapshot` — the immutable snapshot a request reads (champion,
  pre-rendered latest forecasts, the champion run's selection rows);
* :mod:`~training.serving.refresher` — the thread that follows the champion alias and the
  Delta table versions and swaps in a new snapshot;
* :mod:`~training.serving.champion` — loading the champion pyfunc and scoring with it;
* :mod:`~training.serving.timetravel` — forecasts as of an older table version or time;
* :mod:`~training.serving.render` — Arrow rows to validated JSON bodies.

Less frequent reads are cached by what identifies their content, so a new table version
or a new champion can never serve stale rows: a series' history by (silver version,
series), the backtest index by (gold/backtest version, run), a series' backtest
forecasts by (gold/backtest_forecasts version, run, series), the portfolio by
(gold/portfolio version, model version), time-travel reads by (gold/forecasts version,
series).

Every value that comes from a request is a validated series id, an integer or a parsed
timestamp; table locations come from the configuration only.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from forecasting import contract as C
from forecasting.config import Config
from training.serving import champion as champions
from training.serving import render
from training.serving import schemas as S
from training.serving.cache import LRU
from training.serving.champion import Champion
from training.serving.errors import ServeError
from training.serving.listing import UnknownCursor
from training.serving.refresher import DEFAULT_REFRESH_S, Refresher
from training.serving.snapshot import (
    BACKTEST,
    BACKTEST_FORECASTS,
    FORECASTS,
    HIERARCHY,
    PORTFOLIO,
    READINGS,
    SELECTION,
    Snapshot,
)
from training.serving.timetravel import TimeTravel
from training.tables import Lakehouse

HISTORY_SERIES = 256  # series whose recent readings are kept (arrays, <= 90 KiB each)
OVERLAY_SERIES = 64  # series whose backtest-forecast bodies are kept
_PORTFOLIO_COLUMNS = ["level", "key", "day", "yhat", "n_series"]
_HISTORY_COLUMNS = [C.TS, C.Y, "is_filled", "is_outlier"]


class ServingState:
    """The snapshot the API answers from, and the thread that keeps it current.

    Args:
        config: the platform configuration (lakehouse, MLflow, serve settings).
        refresh_s: seconds between two checks of the champion alias and of the table
            versions.
    """

    def __init__(self, config: Config, refresh_s: float = DEFAULT_REFRESH_S) -> None:
        self.config = config
        self.max_horizon = int(config.serve.max_horizon)
        self.lake = Lakehouse.from_config(config)
        self.refresher = Refresher(config, self.lake, refresh_s)
        self.time_travel = TimeTravel(self.lake)
        self._lazy = LRU(8)  # backtest index, portfolio body: by table version
        self._histories = LRU(HISTORY_SERIES)
        self._overlays = LRU(OVERLAY_SERIES)

    @property
    def snapshot(self) -> Snapshot:
        return self.refresher.snapshot

    def start(self) -> None:
        self.refresher.start()

    def stop(self) -> None:
        self.refresher.stop()

    # -- the snapshot's answers ------------------------------------------------------
    def require_champion(self) -> tuple[Snapshot, Champion]:
        snap = self.snapshot
        if snap.champion is None:
            raise ServeError(503, f"no champion model loaded: {snap.problem or 'loading'}")
        return snap, snap.champion

    def forecast_body(self, series_id: str) -> bytes:
        """The cached latest forecast of one series (a dict hit)."""
        snap = self.snapshot
        if snap.forecasts is None:
            raise ServeError(503, f"no forecasts loaded: {snap.problem or 'loading'}")
        body = snap.forecasts.bodies.get(series_id)
        if body is None:
            why = ""
            row = snap.selection.rows.get(series_id) if snap.selection else None
            if row is not None:
                why = f" (its status in the champion's run is {row['status']}: {row['reason'] or 'no reason recorded'})"
            raise ServeError(
                404,
                f"series {series_id!r} has no forecast in {FORECASTS} for model version "
                f"{snap.forecasts.model_version}{why}",
            )
        return body

    def series_page(self, prefix: str, cursor: str | None, limit: int, **how: str | None) -> S.SeriesPage:
        """A page of the champion run's series; ``how``: the :meth:`SeriesListing.page`
        filters and order (status, model, sort, order)."""
        snap, champion = self.require_champion()
        sel = snap.selection
        if sel is None:
            raise ServeError(503, f"no {SELECTION} rows loaded for the champion: {snap.problem or 'loading'}")
        try:
            found = sel.listing.page(prefix=prefix, cursor=cursor, limit=limit, **how)
        except UnknownCursor as exc:
            raise ServeError(400, str(exc)) from None
        return S.SeriesPage(
            run_id=sel.run_id,
            model_version=champion.version,
            total=found.total,
            items=[S.SeriesItem(**sel.rows[sid]) for sid in found.ids],
            next_cursor=found.next_cursor,
            counts=S.SeriesCounts(**sel.listing.counts),
        )

    def predict_body(self, items: list[S.PredictItem]) -> bytes:
        _, champion = self.require_champion()
        return champions.predict(champion, items, self.max_horizon, list(self.config.levels))

    # -- reads on demand, cached by table version --------------------------------------
    def forecast_at(self, series_id: str, version: int | None, as_of: dt.datetime | None) -> bytes:
        """The latest forecast of one series as of a gold/forecasts version or time."""
        latest = self.snapshot.versions.get(FORECASTS)  # (the refresher alone touches the log)
        return self.time_travel.forecast_at(series_id, version, as_of, latest)

    def history_body(self, series_id: str, points: int) -> bytes:
        snap = self.snapshot
        version = snap.versions.get(READINGS)
        if version is None:
            raise ServeError(503, f"{READINGS} does not exist yet: run `mmf refine`")
        if snap.selection is not None and series_id not in snap.selection.rows:
            # only series of the champion's run are served: no table scan for unknown ids
            raise ServeError(
                404, f"series {series_id!r} is not in the champion's run {snap.selection.run_id}"
            )
        tail = self._histories.get((version, series_id), lambda: self._history(version, series_id))
        if tail is None:
            raise ServeError(404, f"series {series_id!r} has no readings in {READINGS} version {version}")
        return render.history_body(series_id, version, tail, points)

    def _history(self, version: int, series_id: str) -> tuple[np.ndarray, ...] | None:
        filters = [(C.SERIES_ID, "=", series_id)]
        return render.history_tail(self.lake.arrow(READINGS, version, _HISTORY_COLUMNS, filters))

    def backtest_body(self, series_id: str) -> bytes:
        snap, champion = self.require_champion()
        run_id = champion.info.get("run_id")
        row = snap.selection.rows.get(series_id) if snap.selection else None
        version = snap.versions.get(BACKTEST)
        index = (
            None
            if version is None
            else self._lazy.get(("backtest", version, run_id), lambda: self._backtest(version, run_id))
        )
        rows = index.rows(series_id) if index is not None else None
        if row is None and rows is None:
            raise ServeError(404, f"series {series_id!r} is not in the champion's run {run_id}")
        return render.backtest_body(series_id, run_id, row, rows or [])

    def _backtest(self, version: int, run_id: str) -> render.BacktestIndex:
        return render.BacktestIndex(self.lake.arrow(BACKTEST, version, filters=[("run_id", "=", run_id)]))

    # -- the backtest forecasts of one series (the page's candidate overlay) -------------
    def backtest_forecasts_body(self, series_id: str) -> bytes:
        """The champion's run's gold/backtest_forecasts rows of one series, read on
        demand (its bucket, series and run as filters: only the files that can hold them
        are read) and cached by (table version, run, series)."""
        snap, champion = self.require_champion()
        run_id = str(champion.info.get("run_id"))
        row = snap.selection.rows.get(series_id) if snap.selection else None
        if snap.selection is not None and row is None:
            raise ServeError(404, f"series {series_id!r} is not in the champion's run {run_id}")
        version = snap.versions.get(BACKTEST_FORECASTS)
        if version is None:
            raise ServeError(
                404,
                f"{BACKTEST_FORECASTS} does not exist yet: train with backtest.store_forecasts chosen or all",
            )
        chosen = row["model"] if row else None
        return self._overlays.get(
            (version, run_id, series_id),
            lambda: self._backtest_forecasts(series_id, run_id, chosen, version),
        )

    def _backtest_forecasts(self, series_id: str, run_id: str, chosen: str | None, version: int) -> bytes:
        bucket = int(C.bucket_of([series_id])[0])
        filters = [(C.BUCKET, "=", bucket), (C.SERIES_ID, "=", series_id), ("run_id", "=", run_id)]
        table = self.lake.arrow(BACKTEST_FORECASTS, version, filters=filters)
        if table.num_rows == 0:
            raise ServeError(
                404,
                f"series {series_id!r} has no backtest forecasts in {BACKTEST_FORECASTS} for run {run_id} "
                "(backtest.store_forecasts none when it trained, or no candidate finished its backtest)",
            )
        return render.backtest_forecasts_body(series_id, run_id, chosen, version, table)

    def portfolio_body(self) -> bytes:
        snap = self.snapshot
        version = snap.versions.get(PORTFOLIO)
        model_version = snap.forecasts.model_version if snap.forecasts else None
        if version is None or model_version is None:
            raise ServeError(503, f"{PORTFOLIO} is not available yet: run `mmf forecast`")
        return self._lazy.get(
            ("portfolio", version, model_version), lambda: self._portfolio(version, model_version)
        )

    def hierarchy_body(self, level: str, node: str | None) -> bytes:
        """gold/hierarchy rows of the served model version's delivery: one level, one
        node of it or all of them (a series only by its id)."""
        snap = self.snapshot
        version = snap.versions.get(HIERARCHY)
        model_version = snap.forecasts.model_version if snap.forecasts else None
        if version is None or model_version is None:
            raise ServeError(
                503, f"{HIERARCHY} is not available yet: run `mmf nightly` with hierarchy.enabled"
            )
        if level == "series" and not node:
            raise ServeError(422, "level=series needs node=<series id>")
        return self._lazy.get(
            ("hierarchy", version, model_version, level, node),
            lambda: self._hierarchy(version, model_version, level, node),
        )

    def _hierarchy(self, version: int, model_version: str, level: str, node: str | None) -> bytes:
        where = [("model_version", "=", model_version)]
        heads = self.lake.arrow(HIERARCHY, version, columns=["level", "node"], filters=where).to_pandas()
        if heads.empty:
            raise ServeError(404, f"{HIERARCHY} holds no rows of model version {model_version}")
        names = sorted(set(heads.loc[heads["level"] == level, "node"]))
        if node is not None and node not in names:
            raise ServeError(404, f"{level} {node!r} is not in {HIERARCHY} (model version {model_version})")
        filters = where + [("level", "=", level)] + ([("node", "=", node)] if node is not None else [])
        frame = self.lake.arrow(HIERARCHY, version, filters=filters).to_pandas()
        order = [lv for lv in ("total", "region", "site", "series") if lv in set(heads["level"])]
        shown = names if level != "series" else [node]
        return render.hierarchy_body(frame, version, model_version, level, order, shown)

    def _portfolio(self, version: int, model_version: str) -> bytes:
        filters = [("model_version", "=", model_version)]
        table = self.lake.arrow(PORTFOLIO, version, filters=filters)  # with interval columns when present
        wanted = _PORTFOLIO_COLUMNS + [
            c for c in table.column_names if c.startswith(("yhat_lower_", "yhat_upper_")) or c == "method"
        ]
        return render.portfolio_body(table.select(wanted).to_pandas(), version, model_version)
