"""What the service holds in memory, and how it follows the registry and the lakehouse.

One immutable :class:`Snapshot` holds everything a request reads: the champion
many-models pyfunc (loaded once per version), the latest gold/forecasts rows of the
champion's version pre-rendered as one JSON body per series (a lookup is a dict hit),
and the champion run's gold/selection rows sorted by series id (pagination by
bisection). A background thread (:meth:`ServingState.refresh`, every ``refresh_s``
seconds) checks the ``champion`` alias (one registry call) and the Delta versions of the
tables it serves (an incremental read of each ``_delta_log``); only what changed is
rebuilt, off the request path, and the new snapshot replaces the old one in a single
assignment, so a request sees either the old state or the new one, never a mix.

Less frequent reads are cached by what identifies their content, so a new table version
or a new champion can never serve stale rows: a series' history by (silver version,
series), the backtest index by (gold/backtest version, run), the portfolio by
(gold/portfolio version, model version), and time-travel forecast reads by (gold/forecasts
version, series) with the few table versions last asked for kept open.

Every value that comes from a request is a validated series id, an integer or a parsed
timestamp; table locations come from the configuration only.
"""

from __future__ import annotations

import bisect
import datetime as dt
import logging
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable

from forecasting import contract as C
from forecasting.config import Config
from training.serving import schemas as S
from training.tables import (
    GOLD_BACKTEST,
    GOLD_FORECASTS,
    GOLD_PORTFOLIO,
    GOLD_SELECTION,
    SILVER_READINGS,
    Lakehouse,
)

log = logging.getLogger(__name__)

DEFAULT_REFRESH_S = 5.0
FORECASTS, SELECTION, BACKTEST, PORTFOLIO, READINGS = (
    GOLD_FORECASTS,
    GOLD_SELECTION,
    GOLD_BACKTEST,
    GOLD_PORTFOLIO,
    SILVER_READINGS,
)
WATCHED = (FORECASTS, SELECTION, BACKTEST, PORTFOLIO, READINGS)
TIME_TRAVEL_TABLES = 4  # gold/forecasts versions kept open for time travel
TIME_TRAVEL_BODIES = 1024  # rendered time-travel answers kept (a few KiB each)
HISTORY_SERIES = 256  # series whose recent readings are kept (arrays, <= 90 KiB each)
_LEVEL = re.compile(r"yhat_lower_(\d+)")


class ServeError(Exception):
    """A request the service answers with ``status`` and ``detail`` (never a 500)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


@dataclass(frozen=True)
class Champion:
    info: dict[str, Any]
    model: Any  # mlflow.pyfunc.PyFuncModel
    series: frozenset[str] | None  # what the pyfunc holds (None: unknown, let it raise)
    loaded_at: str

    @property
    def version(self) -> str:
        return str(self.info["version"])


@dataclass(frozen=True)
class ForecastIndex:
    table_version: int
    wanted: str | None  # the champion version asked for
    model_version: str | None  # the version the rows come from (wanted, or the latest written)
    bodies: Mapping[str, bytes]


@dataclass(frozen=True)
class SelectionIndex:
    table_version: int
    run_id: str
    ids: list[str]  # sorted
    rows: Mapping[str, dict[str, Any]]


@dataclass(frozen=True)
class Snapshot:
    champion: Champion | None = None
    forecasts: ForecastIndex | None = None
    selection: SelectionIndex | None = None
    versions: Mapping[str, int | None] = field(default_factory=dict)
    problem: str | None = "starting: the first refresh has not finished"
    refreshed_at: float = 0.0


class _LRU:
    """A small thread-safe LRU; values are built outside the lock (a race builds twice)."""

    def __init__(self, size: int) -> None:
        self.size, self._data, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, key: Any, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        value = build()
        with self._lock:
            self._data[key] = value
            while len(self._data) > self.size:
                self._data.popitem(last=False)
        return value


# -- rendering -------------------------------------------------------------------------
def utc_iso(values: Any) -> list[str | None]:
    """datetime64 values (naive UTC or UTC-aware Arrow) -> ``2024-01-22T00:00:00Z``."""
    arr = np.asarray(values, dtype="datetime64[us]")
    out = np.char.add(np.datetime_as_string(arr, unit="s"), "Z").tolist()
    nat = np.isnat(arr)
    if nat.any():
        for i in np.flatnonzero(nat):
            out[i] = None
    return out


def _floats(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(
        pc.fill_null(col.cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False), dtype=float
    )


def _objects(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=object)


def levels_of(names: list[str]) -> list[int]:
    found = [int(m.group(1)) for n in names if (m := _LEVEL.fullmatch(n))]
    return sorted(lv for lv in found if f"yhat_upper_{lv}" in names)


def _runs(sids: np.ndarray) -> list[tuple[str, int, int]]:
    """(series_id, start, end) of each run of equal ids in a sorted array."""
    n = len(sids)
    if n == 0:
        return []
    change = np.flatnonzero(sids[1:] != sids[:-1]) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [n]])
    return [(str(sids[s]), int(s), int(e)) for s, e in zip(starts, ends)]


class _Columns:
    """A forecast-shaped Arrow table (sorted by series, ts) as plain arrays."""

    def __init__(self, table: pa.Table) -> None:
        self.levels = levels_of(table.column_names)
        self.keys = [str(lv) for lv in self.levels]
        self.sids = _objects(table[C.SERIES_ID])
        self.ts = utc_iso(table[C.TS].to_numpy())
        self.yhat = _floats(table["yhat"]).tolist()
        self.lower = [_floats(table[f"yhat_lower_{lv}"]).tolist() for lv in self.levels]
        self.upper = [_floats(table[f"yhat_upper_{lv}"]).tolist() for lv in self.levels]
        self.table = table

    def points(self, s: int, e: int) -> list[dict[str, Any]]:
        keys, lower, upper = self.keys, self.lower, self.upper
        return [
            {
                "ts": self.ts[k],
                "yhat": self.yhat[k],
                "lower": {key: lower[i][k] for i, key in enumerate(keys)},
                "upper": {key: upper[i][k] for i, key in enumerate(keys)},
            }
            for k in range(s, e)
        ]


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by([(C.SERIES_ID, "ascending"), (C.TS, "ascending")])


def forecast_bodies(table: pa.Table, table_version: int) -> dict[str, bytes]:
    """gold/forecasts rows (one forecast per series) -> one validated JSON body per series."""
    if table.num_rows == 0:
        return {}
    table = _sorted(table)
    cols = _Columns(table)
    meta = {
        "model": _objects(table["model"]),
        "model_version": _objects(table["model_version"]),
        "run_id": _objects(table["run_id"]),
        "cutoff": utc_iso(table["cutoff"].to_numpy()),
        "created_at": utc_iso(table["created_at"].to_numpy()),
    }
    out: dict[str, bytes] = {}
    for sid, s, e in _runs(cols.sids):
        body = S.Forecast.model_validate(
            {
                "series_id": sid,
                **{k: (None if v[s] is None else str(v[s])) for k, v in meta.items()},
                "table_version": table_version,
                "levels": cols.levels,
                "points": cols.points(s, e),
            }
        )
        out[sid] = body.model_dump_json().encode()
    return out


def latest_write(table: pa.Table) -> pa.Table:
    """The rows of the most recent forecast write in ``table`` (max ``created_at``)."""
    if table.num_rows == 0:
        return table
    newest = pc.max(table["created_at"])
    version = table.filter(pc.equal(table["created_at"], newest))["model_version"][0]
    return table.filter(pc.equal(table["model_version"], version))


def prediction(frame: pd.DataFrame, info: dict[str, Any], levels: list[int]) -> bytes:
    """The pyfunc's output frame -> a validated :class:`~training.serving.schemas.Prediction`."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    cols = _Columns(table)  # the pyfunc returns each series' rows together, in time order
    models = _objects(table["model"])
    forecasts = [
        {"series_id": sid, "model": models[s], "points": cols.points(s, e)} for sid, s, e in _runs(cols.sids)
    ]
    body = S.Prediction.model_validate(
        {
            "name": info["name"],
            "model_version": str(info["version"]),
            "run_id": info.get("run_id"),
            "levels": cols.levels or levels,
            "forecasts": forecasts,
        }
    )
    return body.model_dump_json().encode()


def _none_if_nan(value: Any) -> Any:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return None
    return value


class _BacktestIndex:
    """gold/backtest rows of one run, kept columnar (sorted by series) with each series'
    row range; a series' rows become dicts only when asked for."""

    _KEYS = ("run_id", C.SERIES_ID, "model", "window", "cutoff")

    def __init__(self, table: pa.Table) -> None:
        self.table = table.sort_by(
            [(C.SERIES_ID, "ascending"), ("model", "ascending"), ("window", "ascending")]
        )
        self.metrics = [c for c in self.table.column_names if c not in self._KEYS]
        self.ranges = {sid: (s, e) for sid, s, e in _runs(_objects(self.table[C.SERIES_ID]))}

    def rows(self, series_id: str) -> list[dict[str, Any]] | None:
        found = self.ranges.get(series_id)
        if found is None:
            return None
        part = self.table.slice(found[0], found[1] - found[0])
        cutoffs = utc_iso(part["cutoff"].to_numpy())
        values = {c: _floats(part[c]).tolist() for c in self.metrics}
        return [
            {
                "model": model,
                "window": int(window) if window is not None else 0,
                "cutoff": cutoffs[k],
                "metrics": {c: _none_if_nan(values[c][k]) for c in self.metrics},
            }
            for k, (model, window) in enumerate(zip(part["model"].to_pylist(), part["window"].to_pylist()))
        ]


# -- the state -------------------------------------------------------------------------
class ServingState:
    """The snapshot the API answers from, and the thread that keeps it current.

    Args:
        config: the platform configuration (lakehouse, MLflow, serve settings).
        refresh_s: seconds between two checks of the champion alias and of the table
            versions.
    """

    def __init__(self, config: Config, refresh_s: float = DEFAULT_REFRESH_S) -> None:
        self.config = config
        self.refresh_s = float(refresh_s)
        self.lake = Lakehouse.from_config(config)
        self.snapshot = Snapshot()
        self._held: dict[str, DeltaTable] = {}
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_logged: str | None = None
        self._lazy = _LRU(8)  # backtest index, portfolio body, commit times: by table version
        self._datasets = _LRU(TIME_TRAVEL_TABLES)
        self._bodies = _LRU(TIME_TRAVEL_BODIES)
        self._histories = _LRU(HISTORY_SERIES)

    # -- lifecycle -------------------------------------------------------------------
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

    # -- refresh ---------------------------------------------------------------------
    def refresh(self) -> Snapshot:
        """Check the alias and the table versions; rebuild what changed; swap. Never
        raises: a failure keeps the previous data and becomes the readiness problem."""
        with self._refresh_lock:
            prev = self.snapshot
            try:
                snap = self._refreshed(prev)
            except Exception as exc:  # noqa: BLE001 - keep serving what we have
                problem = f"refresh failed: {type(exc).__name__}: {str(exc)[:300]}"
                snap = replace(prev, problem=problem, refreshed_at=time.time())
            if snap.problem != self._last_logged:
                if snap.problem:
                    log.warning("not ready: %s", snap.problem)
                else:
                    log.info("ready: champion version %s", snap.champion.version if snap.champion else None)
                self._last_logged = snap.problem
            self.snapshot = snap  # the one atomic swap
            return snap

    def _refreshed(self, prev: Snapshot) -> Snapshot:
        from registry import pyfunc

        problems: list[str] = []
        info = pyfunc.champion_info(self.config)
        champion = prev.champion
        if info is None:
            champion = None
            problems.append(
                f"no champion: registered model {self.config.mlflow.registered_model!r} has no champion alias "
                "yet (run `mmf train`, or `mmf promote VERSION`)"
            )
        elif champion is None or champion.version != str(info["version"]):
            try:
                champion = self._load_champion(info)
            except Exception as exc:  # noqa: BLE001 - keep the old champion serving
                problems.append(f"champion version {info['version']} failed to load: {str(exc)[:300]}")
        else:
            champion = replace(champion, info=info)  # tags (promoted_at) may have moved

        versions = {name: self._version(name) for name in WATCHED}
        wanted = champion.version if champion else None
        forecasts = prev.forecasts
        fv = versions[FORECASTS]
        if fv is None:
            forecasts = None
            problems.append(f"{FORECASTS} does not exist yet: run `mmf forecast`")
        elif forecasts is None or (forecasts.table_version, forecasts.wanted) != (fv, wanted):
            forecasts = self._build_forecasts(fv, wanted)

        selection = prev.selection
        sv = versions[SELECTION]
        run_id = champion.info.get("run_id") if champion else None
        if sv is None:
            selection = None
            problems.append(f"{SELECTION} does not exist yet: run `mmf train`")
        elif run_id and (selection is None or (selection.table_version, selection.run_id) != (sv, run_id)):
            selection = self._build_selection(sv, run_id)
        return Snapshot(
            champion=champion,
            forecasts=forecasts,
            selection=selection,
            versions=versions,
            problem="; ".join(problems) or None,
            refreshed_at=time.time(),
        )

    def _load_champion(self, info: dict[str, Any]) -> Champion:
        from registry import pyfunc

        model = pyfunc.load_version(self.config, info["version"])
        series: frozenset[str] | None = None
        unwrap = getattr(model, "unwrap_python_model", None)
        if unwrap is not None:
            ids = getattr(unwrap(), "series_ids", None)
            series = frozenset(ids) if ids is not None else None
        if series:  # the first predict pays one-off imports: pay it here, not in a request
            model.predict(pd.DataFrame({C.SERIES_ID: [min(series)], "horizon": [np.int64(1)]}))
        now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        log.info(
            "loaded champion %s version %s (%s series)", info["name"], info["version"], len(series or ())
        )
        return Champion(info=info, model=model, series=series, loaded_at=now)

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

    def _build_forecasts(self, table_version: int, wanted: str | None) -> ForecastIndex:
        started = time.perf_counter()
        rows = self._read(FORECASTS, table_version, [("model_version", "=", wanted)]) if wanted else None
        if rows is None or rows.num_rows == 0:
            # the champion has not been forecast yet: serve the most recent forecast written
            rows = latest_write(self._read(FORECASTS, table_version, None))
        model_version = rows["model_version"][0].as_py() if rows.num_rows else None
        bodies = forecast_bodies(rows, table_version)
        log.info(
            "cached %d forecasts of model version %s (gold/forecasts version %d) in %.2fs",
            len(bodies),
            model_version,
            table_version,
            time.perf_counter() - started,
        )
        return ForecastIndex(table_version, wanted, model_version, bodies)

    def _build_selection(self, table_version: int, run_id: str) -> SelectionIndex:
        cols = [C.SERIES_ID, "status", "reason", "model", "metric", "metric_value"]
        frame = self._read(SELECTION, table_version, [("run_id", "=", run_id)], cols).to_pandas()
        frame = frame.drop_duplicates(C.SERIES_ID, keep="last").sort_values(C.SERIES_ID)
        rows = {
            str(r[C.SERIES_ID]): {k: _none_if_nan(r[k]) for k in cols}
            for r in frame.astype(object).where(frame.notna(), None).to_dict("records")
        }
        return SelectionIndex(table_version, run_id, sorted(rows), rows)

    def _read(
        self, name: str, version: int, filters: list | None, columns: list[str] | None = None
    ) -> pa.Table:
        return self.lake.arrow(name, version=version, columns=columns, filters=filters)

    # -- answers ---------------------------------------------------------------------
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
            raise ServeError(404, self._no_forecast(snap, series_id, snap.forecasts.model_version))
        return body

    def _no_forecast(self, snap: Snapshot, series_id: str, model_version: str | None) -> str:
        why = ""
        row = snap.selection.rows.get(series_id) if snap.selection else None
        if row is not None:
            why = f" (its status in the champion's run is {row['status']}: {row['reason'] or 'no reason recorded'})"
        return f"series {series_id!r} has no forecast in {FORECASTS} for model version {model_version}{why}"

    def forecast_at(self, series_id: str, version: int | None, as_of: dt.datetime | None) -> bytes:
        """The latest forecast of one series as of a gold/forecasts version or time."""
        if version is None:
            version = self._version_at(as_of)  # type: ignore[arg-type]
        latest = self.snapshot.versions.get(FORECASTS)  # (the refresher alone touches the log)
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
        rows = dataset.to_table(filter=pc.field(C.SERIES_ID) == series_id)
        rows = latest_write(rows)
        if rows.num_rows == 0:
            raise ServeError(404, f"series {series_id!r} has no forecast in {FORECASTS} version {version}")
        return forecast_bodies(rows, version)[series_id]

    def _dataset(self, version: int):
        try:
            table = self.lake.table(FORECASTS, version=version)
        except Exception:  # noqa: BLE001 - vacuumed or unreadable version
            raise ServeError(
                404, f"{FORECASTS} version {version} can no longer be read (vacuumed?)"
            ) from None
        return table.to_pyarrow_dataset()

    def _version_at(self, as_of: dt.datetime) -> int:
        """The last gold/forecasts version committed at or before ``as_of``."""
        latest = self.snapshot.versions.get(FORECASTS)
        commits = self._lazy.get(("commits", latest), self._commits)
        ms = as_of.timestamp() * 1000
        times = [t for _, t in commits]
        i = bisect.bisect_right(times, ms)
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

    def _commits(self) -> list[tuple[int, float]]:
        if not self.lake.exists(FORECASTS):
            return []
        history = self.lake.table(FORECASTS).history()
        return sorted((int(h["version"]), float(h["timestamp"])) for h in history)

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
        ts, y, filled, outlier = (a[-points:] for a in tail)
        body = S.History.model_validate(
            {
                "series_id": series_id,
                "silver_version": version,
                "points": [
                    {"ts": t, "y": _none_if_nan(v), "is_filled": f, "is_outlier": o}
                    for t, v, f, o in zip(utc_iso(ts), y.tolist(), filled.tolist(), outlier.tolist())
                ],
            }
        )
        return body.model_dump_json().encode()

    def _history(self, version: int, series_id: str) -> tuple[np.ndarray, ...] | None:
        """The last readings of one series as compact arrays (ts, y, is_filled, is_outlier)."""
        cols = [C.TS, C.Y, "is_filled", "is_outlier"]
        table = self._read(READINGS, version, [(C.SERIES_ID, "=", series_id)], cols)
        if table.num_rows == 0:
            return None
        table = table.sort_by([(C.TS, "ascending")]).slice(max(0, table.num_rows - S.MAX_HISTORY_POINTS))
        flags = [
            np.asarray(pc.fill_null(table[c], False).to_numpy(zero_copy_only=False), dtype=bool)
            for c in ("is_filled", "is_outlier")
        ]
        return (np.asarray(table[C.TS].to_numpy(), dtype="datetime64[us]"), _floats(table[C.Y]), *flags)

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
        rows = rows or []
        chosen_model = row["model"] if row else None
        chosen_rows = [r["metrics"] for r in rows if r["model"] == chosen_model]
        chosen = {}
        if chosen_rows:
            for key in chosen_rows[0]:
                values = [m[key] for m in chosen_rows if m[key] is not None]
                chosen[key] = float(np.mean(values)) if values else None
        body = S.Backtest.model_validate(
            {
                "series_id": series_id,
                "run_id": run_id,
                "status": row["status"] if row else None,
                "chosen_model": chosen_model,
                "metric": row["metric"] if row else None,
                "chosen": chosen,
                "rows": rows,
            }
        )
        return body.model_dump_json().encode()

    def _backtest(self, version: int, run_id: str) -> "_BacktestIndex":
        return _BacktestIndex(self._read(BACKTEST, version, [("run_id", "=", run_id)]))

    def portfolio_body(self) -> bytes:
        snap = self.snapshot
        version = snap.versions.get(PORTFOLIO)
        model_version = snap.forecasts.model_version if snap.forecasts else None
        if version is None or model_version is None:
            raise ServeError(503, f"{PORTFOLIO} is not available yet: run `mmf forecast`")
        return self._lazy.get(
            ("portfolio", version, model_version), lambda: self._portfolio(version, model_version)
        )

    def _portfolio(self, version: int, model_version: str) -> bytes:
        cols = ["level", "key", "day", "yhat", "n_series"]
        frame = self._read(PORTFOLIO, version, [("model_version", "=", model_version)], cols).to_pandas()
        order = {"total": 0, "region": 1, "site": 2}
        frame = frame.assign(_o=frame["level"].map(order).fillna(3)).sort_values(["_o", "key", "day"])
        rows = [
            {
                "level": r.level,
                "key": r.key,
                "day": pd.Timestamp(r.day).date().isoformat(),
                "yhat": _none_if_nan(float(r.yhat)) if r.yhat is not None else None,
                "n_series": None if pd.isna(r.n_series) else int(r.n_series),
            }
            for r in frame.itertuples()
        ]
        body = S.Portfolio.model_validate(
            {"model_version": model_version, "table_version": version, "rows": rows}
        )
        return body.model_dump_json().encode()

    def series_page(self, prefix: str, cursor: str | None, limit: int) -> S.SeriesPage:
        snap, champion = self.require_champion()
        sel = snap.selection
        if sel is None:
            raise ServeError(503, f"no {SELECTION} rows loaded for the champion: {snap.problem or 'loading'}")
        ids = sel.ids
        lo = bisect.bisect_left(ids, prefix)
        hi = bisect.bisect_left(ids, prefix + "\x7f") if prefix else len(ids)  # ids are ASCII
        start = max(lo, bisect.bisect_right(ids, cursor)) if cursor else lo
        page = ids[start : min(hi, start + limit)]
        more = start + limit < hi
        return S.SeriesPage(
            run_id=sel.run_id,
            model_version=champion.version,
            total=hi - lo,
            items=[S.SeriesItem(**sel.rows[sid]) for sid in page],
            next_cursor=page[-1] if more and page else None,
        )

    def predict_body(self, items: list[S.PredictItem], max_horizon: int) -> bytes:
        from mlflow.exceptions import MlflowException

        _, champion = self.require_champion()
        seen: set[str] = set()
        for item in items:
            if item.series_id in seen:
                raise ServeError(
                    400, f"series_id {item.series_id!r} is listed more than once: list each series once"
                )
            seen.add(item.series_id)
            if item.horizon > max_horizon:
                raise ServeError(
                    400,
                    f"horizon {item.horizon} of series {item.series_id!r} is above serve.max_horizon {max_horizon}",
                )
            if item.temperature is not None and len(item.temperature) != item.horizon:
                raise ServeError(
                    400,
                    f"series {item.series_id!r}: {len(item.temperature)} temperature value(s) for horizon "
                    f"{item.horizon}: give exactly one value per future step",
                )
        if champion.series is not None:
            unknown = sorted(seen - champion.series)
            if unknown:
                listed = ", ".join(repr(s) for s in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
                raise ServeError(
                    404,
                    f"{len(unknown)} series unknown to champion version {champion.version}: {listed} "
                    "(it holds the series with status ok or fallback at training)",
                )
        sids: list[str] = []
        horizons: list[int] = []
        temps: list[float] = []
        any_temp = any(item.temperature is not None for item in items)
        for item in items:
            n = item.horizon if item.temperature is not None else 1
            sids += [item.series_id] * n
            horizons += [item.horizon] * n
            temps += list(item.temperature) if item.temperature is not None else [np.nan]
        frame = pd.DataFrame({C.SERIES_ID: sids, "horizon": np.asarray(horizons, dtype=np.int64)})
        if any_temp:
            frame["temperature"] = np.asarray(temps, dtype=float)
        try:
            out = champion.model.predict(frame)
        except MlflowException as exc:
            raise ServeError(400, exc.message) from None
        return prediction(out, champion.info, list(self.config.levels))
