"""Arrow rows -> the API's JSON bodies, validated by :mod:`training.serving.schemas`.

Pure functions and small columnar indexes: no table reads, no state. Timestamps travel as
``2024-01-22T00:00:00Z``; NaN and infinities as null.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from forecasting import contract as C
from training.serving import schemas as S

_LEVEL = re.compile(r"yhat_lower_(\d+)")
_PORTFOLIO_ORDER = {"total": 0, "region": 1, "site": 2}


def utc_iso(values: Any) -> list[str | None]:
    """datetime64 values (naive UTC or UTC-aware Arrow) -> ``2024-01-22T00:00:00Z``."""
    arr = np.asarray(values, dtype="datetime64[us]")
    out = np.char.add(np.datetime_as_string(arr, unit="s"), "Z").tolist()
    nat = np.isnat(arr)
    if nat.any():
        for i in np.flatnonzero(nat):
            out[i] = None
    return out


def floats(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(
        pc.fill_null(col.cast(pa.float64()), np.nan).to_numpy(zero_copy_only=False), dtype=float
    )


def objects(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=object)


def none_if_nan(value: Any) -> Any:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return None
    return value


def levels_of(names: list[str]) -> list[int]:
    found = [int(m.group(1)) for n in names if (m := _LEVEL.fullmatch(n))]
    return sorted(lv for lv in found if f"yhat_upper_{lv}" in names)


def runs(sids: np.ndarray) -> list[tuple[str, int, int]]:
    """(series_id, start, end) of each run of equal ids in a sorted array."""
    n = len(sids)
    if n == 0:
        return []
    change = np.flatnonzero(sids[1:] != sids[:-1]) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [n]])
    return [(str(sids[s]), int(s), int(e)) for s, e in zip(starts, ends)]


class Columns:
    """A forecast-shaped Arrow table (sorted by series, ts) as plain arrays."""

    def __init__(self, table: pa.Table) -> None:
        self.levels = levels_of(table.column_names)
        self.keys = [str(lv) for lv in self.levels]
        self.sids = objects(table[C.SERIES_ID])
        self.ts = utc_iso(table[C.TS].to_numpy())
        self.yhat = floats(table["yhat"]).tolist()
        self.lower = [floats(table[f"yhat_lower_{lv}"]).tolist() for lv in self.levels]
        self.upper = [floats(table[f"yhat_upper_{lv}"]).tolist() for lv in self.levels]

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


# -- forecasts and predictions -----------------------------------------------------------
def accuracy_items(table: pa.Table) -> dict[str, dict[str, Any]]:
    """gold/drift rows (one monitoring run) -> the ``accuracy`` item of each series."""
    levels = sorted(int(c.rsplit("_", 1)[1]) for c in table.column_names if c.startswith("coverage_"))
    out: dict[str, dict[str, Any]] = {}
    for row in table.to_pandas().to_dict("records"):
        item = S.LiveAccuracy(
            silver_version=int(row["silver_version"]),
            window_start=utc_iso([row["window_start"]])[0],
            window_end=utc_iso([row["window_end"]])[0],
            n=int(row["n"]),
            mae=none_if_nan(row["mae"]),
            mase=none_if_nan(row["mase"]),
            bias=none_if_nan(row["bias"]),
            coverage={str(lv): none_if_nan(row[f"coverage_{lv}"]) for lv in levels},
            backtest_mase=none_if_nan(row["backtest_mase"]),
            drifted=bool(row["drifted"]),
        )
        out[str(row[C.SERIES_ID])] = item.model_dump()
    return out


def forecast_bodies(
    table: pa.Table, table_version: int, accuracy: dict[str, dict[str, Any]] | None = None
) -> dict[str, bytes]:
    """gold/forecasts rows (one forecast per series) -> one validated JSON body per series
    (with the series' ``accuracy`` item, :func:`accuracy_items`, when it has one)."""
    if table.num_rows == 0:
        return {}
    table = table.sort_by([(C.SERIES_ID, "ascending"), (C.TS, "ascending")])
    cols = Columns(table)
    meta = {
        "model": objects(table["model"]),
        "model_version": objects(table["model_version"]),
        "run_id": objects(table["run_id"]),
        "cutoff": utc_iso(table["cutoff"].to_numpy()),
        "created_at": utc_iso(table["created_at"].to_numpy()),
    }
    out: dict[str, bytes] = {}
    for sid, s, e in runs(cols.sids):
        body = S.Forecast.model_validate(
            {
                "series_id": sid,
                **{k: (None if v[s] is None else str(v[s])) for k, v in meta.items()},
                "table_version": table_version,
                "levels": cols.levels,
                "points": cols.points(s, e),
                "accuracy": (accuracy or {}).get(sid),
            }
        )
        out[sid] = body.model_dump_json().encode()
    return out


def latest_write(table: pa.Table) -> pa.Table:
    """The rows of the most recent forecast write in ``table`` (max ``created_at``; one
    write, one ``created_at``: a nightly keeps earlier cutoffs of the same version)."""
    if table.num_rows == 0:
        return table
    return table.filter(pc.equal(table["created_at"], pc.max(table["created_at"])))


def newest_per_series(table: pa.Table) -> pa.Table:
    """Each series' rows of the most recent write that forecast it (a version refitted
    night after night holds one forecast per cutoff)."""
    if table.num_rows == 0:
        return table
    newest = table.group_by(C.SERIES_ID).aggregate([("created_at", "max")])
    joined = table.join(newest, C.SERIES_ID)
    return joined.filter(pc.equal(joined["created_at"], joined["created_at_max"])).drop_columns(
        ["created_at_max"]
    )


def prediction(frame: pd.DataFrame, info: dict[str, Any], levels: list[int]) -> bytes:
    """The pyfunc's output frame -> a validated :class:`~training.serving.schemas.Prediction`."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    cols = Columns(table)  # the pyfunc returns each series' rows together, in time order
    models = objects(table["model"])
    forecasts = [
        {"series_id": sid, "model": models[s], "points": cols.points(s, e)} for sid, s, e in runs(cols.sids)
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


# -- selection, history, backtests, portfolio ----------------------------------------------
def selection_rows(frame: pd.DataFrame, columns: list[str]) -> dict[str, dict[str, Any]]:
    """gold/selection rows of one run -> ``{series_id: row}`` (the last row of a series wins)."""
    frame = frame.drop_duplicates(C.SERIES_ID, keep="last").sort_values(C.SERIES_ID)
    return {
        str(r[C.SERIES_ID]): {k: none_if_nan(r[k]) for k in columns}
        for r in frame.astype(object).where(frame.notna(), None).to_dict("records")
    }


def history_tail(table: pa.Table) -> tuple[np.ndarray, ...] | None:
    """A series' readings -> its last ``MAX_HISTORY_POINTS`` as compact arrays
    (ts, y, is_filled, is_outlier); None without rows."""
    if table.num_rows == 0:
        return None
    table = table.sort_by([(C.TS, "ascending")]).slice(max(0, table.num_rows - S.MAX_HISTORY_POINTS))
    flags = [
        np.asarray(pc.fill_null(table[c], False).to_numpy(zero_copy_only=False), dtype=bool)
        for c in ("is_filled", "is_outlier")
    ]
    return (np.asarray(table[C.TS].to_numpy(), dtype="datetime64[us]"), floats(table[C.Y]), *flags)


def history_body(series_id: str, version: int, tail: tuple[np.ndarray, ...], points: int) -> bytes:
    ts, y, filled, outlier = (a[-points:] for a in tail)
    body = S.History.model_validate(
        {
            "series_id": series_id,
            "silver_version": version,
            "points": [
                {"ts": t, "y": none_if_nan(v), "is_filled": f, "is_outlier": o}
                for t, v, f, o in zip(utc_iso(ts), y.tolist(), filled.tolist(), outlier.tolist())
            ],
        }
    )
    return body.model_dump_json().encode()


class BacktestIndex:
    """gold/backtest rows of one run, kept columnar (sorted by series) with each series'
    row range; a series' rows become dicts only when asked for."""

    _KEYS = ("run_id", C.SERIES_ID, "model", "window", "cutoff")

    def __init__(self, table: pa.Table) -> None:
        self.table = table.sort_by(
            [(C.SERIES_ID, "ascending"), ("model", "ascending"), ("window", "ascending")]
        )
        self.metrics = [c for c in self.table.column_names if c not in self._KEYS]
        self.ranges = {sid: (s, e) for sid, s, e in runs(objects(self.table[C.SERIES_ID]))}

    def rows(self, series_id: str) -> list[dict[str, Any]] | None:
        found = self.ranges.get(series_id)
        if found is None:
            return None
        part = self.table.slice(found[0], found[1] - found[0])
        cutoffs = utc_iso(part["cutoff"].to_numpy())
        values = {c: floats(part[c]).tolist() for c in self.metrics}
        return [
            {
                "model": model,
                "window": int(window) if window is not None else 0,
                "cutoff": cutoffs[k],
                "metrics": {c: none_if_nan(values[c][k]) for c in self.metrics},
            }
            for k, (model, window) in enumerate(zip(part["model"].to_pylist(), part["window"].to_pylist()))
        ]


def backtest_body(
    series_id: str, run_id: str, row: dict[str, Any] | None, rows: list[dict[str, Any]]
) -> bytes:
    """A series' backtest rows and its gold/selection ``row`` -> the backtest body, with the
    chosen model's metrics averaged over its windows."""
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


def backtest_forecasts_body(
    series_id: str, run_id: str, chosen: str | None, version: int, table: pa.Table
) -> bytes:
    """A series' gold/backtest_forecasts rows of one run -> the overlay body: per window
    (oldest first) its times and actuals and each model's forecast and bounds (the
    chosen model first, then by name)."""
    levels = levels_of(table.column_names)
    frame = table.to_pandas().sort_values(["window", "model", "lead"], kind="stable")
    windows = []
    for window, rows in frame.groupby("window", sort=True):
        first = rows[rows["model"] == rows["model"].iloc[0]]
        models = sorted(rows["model"].unique(), key=lambda m: (m != chosen, m))
        windows.append(
            {
                "window": int(window),
                "cutoff": utc_iso(first["cutoff"].to_numpy()[:1])[0],
                "ts": utc_iso(first[C.TS].to_numpy()),
                "y": [none_if_nan(v) for v in first[C.Y].astype(float)],
                "models": [_overlay_model(rows[rows["model"] == m], m, levels) for m in models],
            }
        )
    body = S.BacktestForecasts.model_validate(
        {
            "series_id": series_id,
            "run_id": run_id,
            "chosen_model": chosen,
            "table_version": version,
            "levels": levels,
            "windows": windows,
        }
    )
    return body.model_dump_json().encode()


def hierarchy_body(
    frame: pd.DataFrame, version: int, model_version: str, level: str, order: list[str], nodes: list
) -> bytes:
    """gold/hierarchy rows of one level (and node) -> the hierarchy body, rows by node and time."""
    levels = levels_of(list(frame.columns))
    frame = frame.sort_values(["node", C.TS], key=lambda s: s if s.name == C.TS else s.astype(str))
    rows = [
        {
            "node": str(r["node"]),
            "ts": pd.Timestamp(r[C.TS]).tz_localize("UTC").isoformat(),
            "yhat": none_if_nan(float(r["yhat"])),
            "yhat_base": none_if_nan(float(r["yhat_base"])),
            "n_series": None if pd.isna(r["n_series"]) else int(r["n_series"]),
            "lower": {str(lv): none_if_nan(float(r[f"yhat_lower_{lv}"])) for lv in levels},
            "upper": {str(lv): none_if_nan(float(r[f"yhat_upper_{lv}"])) for lv in levels},
        }
        for r in frame.to_dict("records")
    ]
    first = frame.iloc[0] if len(frame) else None
    body = S.Hierarchy(
        model_version=model_version,
        delivery=int(first["delivery"]) if first is not None else 0,
        method=str(first["method"]) if first is not None else "",
        table_version=version,
        levels=levels,
        level=level,
        hierarchy_levels=order,
        nodes=[str(n) for n in nodes],
        rows=rows,
    )
    return body.model_dump_json().encode()


def _overlay_model(rows: pd.DataFrame, model: str, levels: list[int]) -> dict[str, Any]:
    def values(col: str) -> list[float | None]:
        return [none_if_nan(v) for v in rows[col].astype(float)]

    return {
        "model": model,
        "yhat": values("yhat"),
        "lower": {str(lv): values(f"yhat_lower_{lv}") for lv in levels},
        "upper": {str(lv): values(f"yhat_upper_{lv}") for lv in levels},
    }


def portfolio_body(frame: pd.DataFrame, version: int, model_version: str) -> bytes:
    """gold/portfolio rows of one model version -> the portfolio body (total, regions, sites),
    with each row's interval bounds when the table carries ``yhat_lower_<level>`` /
    ``yhat_upper_<level>`` columns holding values (a table written before the hierarchy
    step, or without it, holds them as nulls: no intervals); ``method`` is the
    reconciliation's when the totals are the coherent ones of gold/hierarchy."""
    levels = [lv for lv in levels_of(list(frame.columns)) if frame[f"yhat_upper_{lv}"].notna().any()]
    methods = frame["method"].dropna() if "method" in frame.columns else pd.Series([], dtype=object)
    frame = frame.assign(_o=frame["level"].map(_PORTFOLIO_ORDER).fillna(3)).sort_values(["_o", "key", "day"])
    bounds = {
        side: {str(lv): [none_if_nan(v) for v in frame[f"yhat_{side}_{lv}"].astype(float)] for lv in levels}
        for side in ("lower", "upper")
    }
    rows = [
        {
            "level": r.level,
            "key": r.key,
            "day": pd.Timestamp(r.day).date().isoformat(),
            "yhat": none_if_nan(float(r.yhat)) if r.yhat is not None else None,
            "n_series": None if pd.isna(r.n_series) else int(r.n_series),
            "lower": {key: values[k] for key, values in bounds["lower"].items()},
            "upper": {key: values[k] for key, values in bounds["upper"].items()},
        }
        for k, r in enumerate(frame.itertuples())
    ]
    body = S.Portfolio.model_validate(
        {
            "model_version": model_version,
            "table_version": version,
            "levels": levels,
            "rows": rows,
            "method": str(methods.iloc[0]) if len(methods) else None,
        }
    )
    return body.model_dump_json().encode()
