"""``mmf monitor``: the delivered forecasts scored against the actuals that have arrived since.

Each forecast step of gold/forecasts whose time has come and whose actual is in
silver/readings (a real reading: ``is_filled`` steps are not actuals) becomes one row of
gold/accuracy, keyed by (series, model_version, cutoff, lead): ``lead`` is the step
ahead of the cutoff (1..horizon), ``created_at`` the delivery's time and
``forecast_day`` its UTC date, with the step's ``mae`` (``|yhat - y|``), ``bias``
(``yhat - y``), ``coverage_<lv>`` (1 inside the level's interval, else 0) and ``mase``
= ``mae / scale``, where ``scale`` is the series' in-sample seasonal naive MAE
(:func:`forecasting.metrics.mase_scale`, season of the lakehouse frequency, as the
backtest uses) recomputed from silver/readings up to the forecast's cutoff: the very
history the model was trained or refitted on, so live and backtest MASE share a scale.

Every delivered forecast is scored, whichever version made it (the champion's, and the
newest version holding a series the champion does not), since that is what was served.

Drift (gold/drift): per series, its live error over the last ``monitoring.days`` days of
actuals (steps of the newest delivery of each cutoff, so a re-delivered cutoff counts
once) against the backtest error of the model that forecast it (the mean MASE over the
windows of the chosen model in gold/backtest of the forecast's training run, or
gold/selection's ``metric_value`` when the run's metric is MASE and gold/backtest has no
rows): ``drifted`` when the live MASE of each of the series' last ``monitoring.min_days``
days is > ``monitoring.factor`` x backtest MASE (:func:`_days_over`). One row per
series and monitoring run, the run being the silver/readings version scored.

Batches: the bucket ranges of silver/readings at its pinned version, about
``batch_rows`` rows each (gold/forecasts has no bucket column: a batch reads the
forecasts of its series by id, those of silver/series in the range). A batch's
forecasts whose cutoff is within the lookback (``monitoring.days`` days plus the
horizon before its series' earliest silver end) are scored through the engine's
``map_batches`` (one series per group, so ``--engine spark`` runs it on the cluster),
and compared with what gold/accuracy and gold/drift hold: only deliveries whose rows
are new or changed are written (replace-where on (model_version, cutoff, series)), and
gold/drift rows (replace-where on silver version and series) only when they changed. So
re-running on the same data writes nothing, and a restarted job redoes its batches
without duplicating any. The last commit records the application transaction
``mmf-monitor`` = silver version on gold/drift: a rerun on the same silver version is
skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from forecasting import contract as C
from forecasting.config import Config
from forecasting.errors import TableError
from forecasting.frequency import seasonalities_for, step_of
from forecasting.metrics import mase_scale
from registry.connection import configure
from training.engines import get_engine
from training.jobs.forecast import replace_predicate
from training.tables import (
    GOLD_ACCURACY,
    GOLD_BACKTEST,
    GOLD_DRIFT,
    GOLD_FORECASTS,
    GOLD_SELECTION,
    SILVER_READINGS,
    SILVER_SERIES,
    Lakehouse,
    to_arrow,
)

log = logging.getLogger(__name__)
APP_MONITOR = "mmf-monitor"
DRIFT_TAG = "mmf.drifted_series"  # on the nightly's training run: series drifted before it
DRIFT_METRIC = "monitor_drifted_series"
ACCURACY_KEY = [C.SERIES_ID, "model_version", "cutoff", "lead"]
DELIVERY_KEY = [C.SERIES_ID, "model_version", "cutoff"]
KIND = "_kind"  # in a batch's frame: "actual" (silver rows) or "forecast" (gold rows)
MAX_NAMED = 20  # drifted series named in a report


@dataclass
class MonitorReport:
    silver_version: int | None
    skipped: bool = False
    batches: int = 0
    scored: int = 0  # forecast steps scored within the lookback (written or already there)
    written: int = 0  # gold/accuracy rows written (new or changed deliveries)
    series: int = 0  # series with a live error in the window
    drifted: int = 0
    drifted_ids: list[str] = field(default_factory=list)  # the first MAX_NAMED, by ratio

    def describe(self) -> str:
        if self.skipped:
            return f"skipped: silver version {self.silver_version} already scored ({self.drifted} drifted)"
        return (
            f"done: {self.scored} forecast steps scored ({self.written} new rows) on silver version "
            f"{self.silver_version}; {self.drifted} of {self.series} series drifted"
            + (f": {', '.join(self.drifted_ids)}" if self.drifted_ids else "")
        )


# -- per series (runs on the engine's workers) -------------------------------------------
def score_series(group: pd.DataFrame, config: Config) -> pd.DataFrame:
    """gold/accuracy rows of one series: its forecast rows (``_kind = forecast``) joined to
    its actuals (``_kind = actual``, silver rows, the whole history for the scale).

    In numpy where it can be (it runs once per series and night): the forecast steps
    found among the observed actuals, in the forecast rows' order, ``lead`` the dense
    rank of the step's time within its delivery (model version, cutoff)."""
    levels = list(config.levels)
    schema = C.accuracy_schema(levels)
    kind = group[KIND].to_numpy()
    is_fc, is_actual = kind == "forecast", kind == "actual"
    if not is_fc.any() or not is_actual.any():
        return schema.empty_table().to_pandas()
    ts = group[C.TS].to_numpy("datetime64[us]")
    y_col = pd.to_numeric(group[C.Y], errors="coerce").to_numpy(float, na_value=np.nan)
    order = np.argsort(ts[is_actual], kind="stable")
    ts_all, y_all = ts[is_actual][order], y_col[is_actual][order]
    filled = group["is_filled"].to_numpy(float, na_value=np.nan)[is_actual][order]
    seen = (filled != 1) & np.isfinite(y_all)
    obs_ts, obs_y = ts_all[seen], y_all[seen]
    where_fc = np.flatnonzero(is_fc)
    fc_ts = ts[where_fc]
    lead = _dense_rank(
        group["model_version"].to_numpy()[where_fc],
        group["cutoff"].to_numpy("datetime64[us]")[where_fc],
        fc_ts,
    )
    pos = np.searchsorted(obs_ts, fc_ts)
    found = pos < len(obs_ts)
    found[found] = obs_ts[pos[found]] == fc_ts[found]
    if not found.any():
        return schema.empty_table().to_pandas()
    rows = where_fc[found]  # the group's rows scored, as numpy columns (no frame per series)

    def column(name: str, **how: Any) -> np.ndarray:
        return group[name].to_numpy(**how)[rows]

    y = obs_y[pos[found]]
    cutoffs = column("cutoff", dtype="datetime64[us]")
    m = seasonalities_for(config.freq)[0] if config.freq else 1
    scale = np.empty(len(rows))
    for c in np.unique(cutoffs):
        scale[cutoffs == c] = mase_scale(y_all[ts_all <= c], m)
    yhat = column("yhat", dtype=float, na_value=np.nan)
    err = yhat - y
    # plain numpy columns: a frame of extension arrays cost most of the scoring
    out = {name: column(name, dtype=object) for name in ("model_version", "run_id", "model", "fit")}
    created = group["created_at"].array[rows]
    out |= {"cutoff": cutoffs, "created_at": created}
    with np.errstate(invalid="ignore", divide="ignore"):
        out |= {
            C.SERIES_ID: column(C.SERIES_ID),
            "forecast_day": _utc_dates(created),
            "lead": lead[found],
            C.TS: ts[rows],
            C.Y: y,
            "yhat": yhat,
            "n": np.ones(len(rows), dtype="int64"),
            "mae": np.abs(err),
            "mase": np.abs(err) / scale,
            "bias": err,
            "scale": scale,
        }
        for lv in levels:
            lo = column(f"yhat_lower_{lv}", dtype=float, na_value=np.nan)
            hi = column(f"yhat_upper_{lv}", dtype=float, na_value=np.nan)
            inside = ((y >= lo) & (y <= hi)).astype(float)
            out[f"coverage_{lv}"] = np.where(np.isnan(lo) | np.isnan(hi), np.nan, inside)
    out[C.BUCKET] = C.bucket_of(out[C.SERIES_ID])
    # ordered here: pd.DataFrame(out, columns=...) would build a Series of the dict first
    return pd.DataFrame({name: out[name] for name in schema.names})


def _utc_dates(created) -> np.ndarray:
    """The UTC dates (``datetime.date``) of the times ``created``, each made once."""
    if isinstance(created.dtype, pd.DatetimeTZDtype):
        ticks = np.asarray(created.tz_convert("UTC").tz_localize(None), dtype="datetime64[us]")
    else:
        ticks = np.asarray(pd.to_datetime(created, utc=True).tz_localize(None), dtype="datetime64[us]")
    days, where = np.unique(ticks.astype("datetime64[D]"), return_inverse=True)
    return np.array([d.item() for d in days], dtype=object)[where]


def _dense_rank(version: np.ndarray, cutoff: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Per row, the dense rank (1, 2, ...) of ``ts`` among the rows of its (version,
    cutoff)."""
    codes = pd.factorize(version)[0]
    order = np.lexsort((ts, cutoff, codes))
    c, k, t = codes[order], cutoff[order], ts[order]
    start = np.r_[True, (c[1:] != c[:-1]) | (k[1:] != k[:-1])]
    step = start | np.r_[True, t[1:] != t[:-1]]
    count = np.cumsum(step)
    ranks = count - count[start][np.cumsum(start) - 1] + 1
    out = np.empty(len(ts), dtype="int64")
    out[order] = ranks
    return out


# -- the job -------------------------------------------------------------------------------
@dataclass
class BatchPlan:
    """A batch's series (their silver ``end``) and the earliest forecast cutoff it scores."""

    buckets: tuple[int, int]
    ends: pd.Series
    since: pd.Timestamp | None


def lookback(config: Config, freq: str | None) -> pd.Timedelta:
    """How far before a series' silver end the forecasts scored may start: the drift
    window (``monitoring.days``) plus the horizon, so every step in the window is scored."""
    return pd.Timedelta(days=int(config.monitoring.days)) + _step(freq) * int(config.horizon)


def _step(freq: str | None) -> pd.Timedelta:
    """One step of ``freq`` (hourly when unknown; about 31 days for calendar months)."""
    try:
        return step_of(freq or "h")
    except (ValueError, TypeError):  # a calendar frequency (months)
        return pd.Timedelta(days=31)


def batch_frame(lake: Lakehouse, config: Config, plan: BatchPlan, silver_version: int, freq) -> pd.DataFrame:
    """A batch's forecasts to score (cutoff within the lookback, time passed) and the
    silver rows of their series, as one frame (``_kind`` tells them apart)."""
    levels = list(config.levels)
    fc_cols = [C.SERIES_ID, C.TS, "yhat", *[f"yhat_{b}_{lv}" for lv in levels for b in ("lower", "upper")]]
    fc_cols += ["model", "model_version", "run_id", "fit", "cutoff", "created_at"]
    if plan.ends.empty or not lake.exists(GOLD_FORECASTS):
        return pd.DataFrame({C.SERIES_ID: pd.Series([], dtype=object), KIND: pd.Series([], dtype=object)})
    plan.since = plan.ends.min() - lookback(config, freq)
    # an older table may lack columns (fit, a level's bounds): those are null here
    held = lake.stored_columns(GOLD_FORECASTS)
    fc = lake.read(
        GOLD_FORECASTS,
        columns=[c for c in fc_cols if c in held],
        filters=[("cutoff", ">=", plan.since.to_pydatetime()), (C.SERIES_ID, "in", list(plan.ends.index))],
    )
    fc = fc.reindex(columns=fc_cols)
    fc = fc[fc[C.TS] <= fc[C.SERIES_ID].map(plan.ends)]
    if fc.empty:
        return pd.DataFrame({C.SERIES_ID: pd.Series([], dtype=object), KIND: pd.Series([], dtype=object)})
    actual = lake.read_buckets(
        SILVER_READINGS,
        plan.buckets,
        version=silver_version,
        columns=[C.SERIES_ID, C.TS, C.Y, "is_filled"],
        filters=[(C.SERIES_ID, "in", sorted(fc[C.SERIES_ID].unique()))],
    )
    actual["is_filled"] = actual["is_filled"].astype("float64")  # one dtype beside the forecast rows' nulls
    return pd.concat([actual.assign(**{KIND: "actual"}), fc.assign(**{KIND: "forecast"})], ignore_index=True)


def monitor(
    lake: Lakehouse,
    config: Config,
    progress: Callable[[str, int, int], None] | None = None,
    force: bool = False,
) -> MonitorReport:
    """Score the delivered forecasts against the actuals of the current silver version
    into gold/accuracy, and the drift of each series into gold/drift (see the module).
    ``force``: score again a silver version already recorded (what differs is written)."""
    silver_version = lake.version(SILVER_READINGS)
    if silver_version is None:
        raise TableError("silver/readings does not exist: run `mmf refine` first")
    report = MonitorReport(silver_version)
    if not force and lake.txn_version(GOLD_DRIFT, APP_MONITOR) == silver_version:
        report.skipped = True
        report.series, report.drifted = drift_counts(lake, silver_version)
        return report
    if progress:
        progress("monitor", 0, 0)
    freq = config.freq or _lake_freq(lake)
    cfg = config.replace(freq=freq)
    ranges = lake.batches(SILVER_READINGS, silver_version, config.batch_rows)
    plans: dict[int, BatchPlan] = {}

    def loader(i: int, buckets: tuple[int, int]):
        def load() -> pd.DataFrame:
            ends = lake.read_buckets(SILVER_SERIES, buckets, columns=[C.SERIES_ID, "end"])
            plans[i] = BatchPlan(buckets, ends.set_index(C.SERIES_ID)["end"].astype("datetime64[us]"), None)
            return batch_frame(lake, cfg, plans[i], silver_version, freq)

        return load

    engine = get_engine(cfg)
    schema = lake.schema(GOLD_ACCURACY)
    batches = [(i, loader(i, b)) for i, b in enumerate(ranges)]
    drifted: list[tuple[float, str]] = []
    for i, out in engine.map_batches(batches, C.SERIES_ID, score_series, schema, cfg):
        plan = plans.pop(i)
        report.batches += 1
        report.scored += len(out)
        meta = {"mmf.monitor": silver_version, "mmf.batch": i, "mmf.batches": len(ranges)}
        meta["mmf.buckets"] = f"{plan.buckets[0]}:{plan.buckets[1]}"
        report.written += write_accuracy(lake, out, plan, meta)
        drift = drift_rows(lake, cfg, out, plan.ends, silver_version)
        write_drift(lake, drift, silver_version, meta)
        report.series += len(drift)
        report.drifted += int(drift["drifted"].sum()) if len(drift) else 0
        if len(drift):
            hit = drift[drift["drifted"]]
            drifted = sorted(drifted + list(zip(-hit["ratio"], hit[C.SERIES_ID])))[:MAX_NAMED]
    report.drifted_ids = [sid for _, sid in drifted]
    if lake.txn_version(GOLD_DRIFT, APP_MONITOR) != silver_version:
        _finish(lake, report, len(ranges))
    return report


def _lake_freq(lake: Lakehouse) -> str | None:
    freq = lake.read(SILVER_SERIES, columns=["freq"])["freq"].dropna()
    return str(freq.iloc[0]) if len(freq) else None


def _finish(lake: Lakehouse, report: MonitorReport, n_batches: int) -> None:
    """The completion marker: one commit on gold/drift (creating both tables when no
    batch had anything to write) with the application transaction."""
    meta = {"mmf.monitor": report.silver_version, "mmf.final": "1", "mmf.batches": n_batches}
    meta |= {"mmf.series": report.series, "mmf.drifted": report.drifted}
    if not lake.exists(GOLD_ACCURACY):
        lake.write(GOLD_ACCURACY, lake.schema(GOLD_ACCURACY).empty_table(), metadata=meta)
    lake.write(
        GOLD_DRIFT,
        lake.schema(GOLD_DRIFT).empty_table(),
        metadata=meta,
        app_id=APP_MONITOR,
        app_version=int(report.silver_version or 0),
    )


def changed(new: pd.DataFrame, old: pd.DataFrame, key: list[str], schema) -> pd.Series:
    """For each row of ``new``: whether ``old`` lacks it (by ``key``) or holds other values."""
    new = to_arrow(new, schema).to_pandas()
    old = to_arrow(old, schema).to_pandas()
    values = [c for c in schema.names if c not in key and c != C.BUCKET]
    both = new.merge(old, on=key, how="left", suffixes=("", "_old"), indicator=True)
    differ = (both["_merge"] == "left_only").to_numpy()
    for c in values:
        a, b = both[c], both[f"{c}_old"]
        differ |= ~((a == b) | (a.isna() & b.isna())).to_numpy()
    return pd.Series(differ, index=new.index)


def write_accuracy(lake: Lakehouse, out: pd.DataFrame, plan: BatchPlan, meta: dict[str, Any]) -> int:
    """A batch's scored steps into gold/accuracy: only its deliveries with a new or
    changed row, replace-where on (model_version, cutoff, series). Returns rows written."""
    if out.empty:
        return 0
    schema = lake.schema(GOLD_ACCURACY)
    filters = [("cutoff", ">=", plan.since.to_pydatetime())] if plan.since is not None else None
    old = lake.read_buckets(GOLD_ACCURACY, plan.buckets, filters=filters)
    differ = changed(out, old, ACCURACY_KEY, schema)
    if not differ.any():
        return 0
    keys = out.loc[differ.to_numpy(), DELIVERY_KEY].drop_duplicates()
    rows = out.merge(keys, on=DELIVERY_KEY, how="inner")
    lake.write(GOLD_ACCURACY, rows, mode="overwrite", predicate=replace_predicate(rows), metadata=meta)
    return len(rows)


def live_window(out: pd.DataFrame, ends: pd.Series, days: int) -> pd.DataFrame:
    """The scored steps of the last ``days`` days before each series' silver end, of the
    newest delivery of each (series, cutoff)."""
    if out.empty:
        return out
    newest = out.groupby([C.SERIES_ID, "cutoff"])["created_at"].transform("max")
    rows = out[out["created_at"] == newest]
    start = rows[C.SERIES_ID].map(ends) - pd.Timedelta(days=int(days))
    return rows[rows[C.TS] > start]


def drift_rows(
    lake: Lakehouse, config: Config, out: pd.DataFrame, ends: pd.Series, silver_version: int
) -> pd.DataFrame:
    """gold/drift rows of a batch's series: live accuracy over the window, backtest MASE
    of the model that forecast it, the ratio and the flag."""
    levels = list(config.levels)
    rows = live_window(out, ends, config.monitoring.days)
    if rows.empty:
        return pd.DataFrame(columns=lake.schema(GOLD_DRIFT).names)
    rows = rows.sort_values([C.SERIES_ID, "cutoff", "created_at", C.TS])
    agg = {"n": ("n", "sum"), "window_start": (C.TS, "min"), "window_end": (C.TS, "max")}
    agg |= {m: (m, "mean") for m in ("mae", "mase", "bias", *[f"coverage_{lv}" for lv in levels])}
    agg |= {"run_id": ("run_id", "last"), "model": ("model", "last")}
    live = rows.groupby(C.SERIES_ID).agg(**agg).reset_index()
    live["backtest_mase"] = backtest_mase(lake, live)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = live["mase"].to_numpy(float) / live["backtest_mase"].to_numpy(float)
    live["ratio"] = np.where((live["backtest_mase"] == 0) & (live["mase"] == 0), 1.0, ratio)
    live["factor"] = float(config.monitoring.factor)
    # the days the window's scored actuals cover (first scored step to the series'
    # latest reading, one step included): drift needs monitoring.min_days of them
    covered = live[C.SERIES_ID].map(ends).to_numpy("datetime64[us]") - live["window_start"].to_numpy(
        "datetime64[us]"
    )
    days = min(int(config.monitoring.min_days), int(config.monitoring.days))
    enough = covered + _step(config.freq).to_timedelta64() >= pd.Timedelta(days=days).to_timedelta64()
    sustained = _days_over(rows, live, float(config.monitoring.factor), _drift_days(config))
    live["drifted"] = sustained & enough
    live["silver_version"] = int(silver_version)
    return live


def _drift_days(config: Config) -> int:
    """The days of actuals each over the factor that drift needs: ``monitoring.min_days``
    (at most ``days``), at least one."""
    return max(min(int(config.monitoring.min_days), int(config.monitoring.days)), 1)


def _days_over(rows: pd.DataFrame, live: pd.DataFrame, factor: float, days: int) -> np.ndarray:
    """Per row of ``live``: whether each of the series' last ``days`` days of scored
    actuals (by the actual's date) has a mean live MASE above ``factor`` x its backtest
    MASE (and it has that many): drift is sustained error, so one bad day in the window
    (a holiday, a storm: an error of every model at once) does not refit the fleet."""
    backtest = live.set_index(C.SERIES_ID)["backtest_mase"]
    daily = rows.groupby([C.SERIES_ID, rows[C.TS].dt.floor("D")])["mase"].mean().reset_index()
    base = daily[C.SERIES_ID].map(backtest).to_numpy(float)
    value = daily["mase"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where((base == 0) & (value == 0), 1.0, value / base)
    daily["over"] = np.nan_to_num(ratio, nan=0.0) > factor
    last = daily.groupby(C.SERIES_ID).tail(days).groupby(C.SERIES_ID)["over"].agg(["all", "size"])
    hit = last["all"] & (last["size"] >= days)
    return live[C.SERIES_ID].map(hit).eq(True).to_numpy(bool)


def backtest_mase(lake: Lakehouse, live: pd.DataFrame) -> np.ndarray:
    """Per row of ``live`` (series_id, run_id, model): the mean MASE over the backtest
    windows of that model in gold/backtest of that run; gold/selection's metric_value
    when the run chose on MASE and gold/backtest has no such rows; else nan."""
    ids, runs = sorted(live[C.SERIES_ID].unique()), sorted(live["run_id"].dropna().unique())
    where = [("run_id", "in", runs), (C.SERIES_ID, "in", ids)]
    key = ["run_id", C.SERIES_ID, "model"]
    bt = lake.read(GOLD_BACKTEST, columns=[*key, "mase"], filters=where) if runs else None
    found = pd.Series(np.nan, index=live.index)
    if bt is not None and len(bt):
        means = bt.groupby(key)["mase"].mean()
        found = pd.Series(
            [means.get(tuple(k), np.nan) for k in live[key].itertuples(index=False)], live.index
        )
    if found.notna().all() or not runs:
        return found.to_numpy(float)
    sel = lake.read(GOLD_SELECTION, columns=["run_id", C.SERIES_ID, "metric", "metric_value"], filters=where)
    sel = sel[sel["metric"] == "mase"].drop_duplicates(["run_id", C.SERIES_ID], keep="last")
    chosen = sel.set_index(["run_id", C.SERIES_ID])["metric_value"]
    fallback = [chosen.get((r, s), np.nan) for r, s in zip(live["run_id"], live[C.SERIES_ID])]
    return found.fillna(pd.Series(fallback, index=live.index)).to_numpy(float)


def write_drift(lake: Lakehouse, drift: pd.DataFrame, silver_version: int, meta: dict[str, Any]) -> None:
    """A batch's gold/drift rows, replace-where on the silver version and its series,
    when they are new or changed."""
    if drift.empty:
        return
    ids = sorted(drift[C.SERIES_ID])
    filters = [("silver_version", "=", int(silver_version)), (C.SERIES_ID, "in", ids)]
    old = lake.read(GOLD_DRIFT, filters=filters)
    if (
        len(old) == len(drift)
        and not changed(drift, old, [C.SERIES_ID, "silver_version"], lake.schema(GOLD_DRIFT)).any()
    ):
        return
    quoted = ", ".join("'" + s.replace("'", "''") + "'" for s in ids)
    predicate = f"silver_version = {int(silver_version)} AND series_id IN ({quoted})"
    lake.write(GOLD_DRIFT, drift, mode="overwrite", predicate=predicate, metadata=meta)


def drift_counts(lake: Lakehouse, silver_version: int) -> tuple[int, int]:
    """(series evaluated, series drifted) of the monitoring run on ``silver_version``."""
    if not lake.exists(GOLD_DRIFT):
        return 0, 0
    d = lake.read(GOLD_DRIFT, columns=["drifted"], filters=[("silver_version", "=", int(silver_version))])
    return len(d), int(d["drifted"].fillna(False).astype(bool).sum())


# -- the MLflow run --------------------------------------------------------------------------
def record_on_run(config: Config, run_id: str, drifted: int) -> bool:
    """Record on a training run how many series had drifted when it started: the tag
    ``mmf.drifted_series`` and the metric ``monitor_drifted_series`` (once: a run that
    holds the tag already is left as it is). Returns whether it wrote."""
    configure(config)
    client = MlflowClient()
    try:
        if client.get_run(run_id).data.tags.get(DRIFT_TAG) is not None:
            return False
    except MlflowException as exc:  # the run is gone (a lost store): nothing to record on
        log.warning("drift count not recorded on run %s: %s", run_id, str(exc).splitlines()[0])
        return False
    client.log_metric(run_id, DRIFT_METRIC, float(drifted))
    client.set_tag(run_id, DRIFT_TAG, str(int(drifted)))
    return True


# -- the fleet view (``mmf monitor``) --------------------------------------------------------
def fleet(lake: Lakehouse, config: Config, top: int = 10) -> dict[str, Any]:
    """The fleet at the last completed monitoring run: its series' live accuracy, the
    ``top`` worst by live MASE, coverage against nominal per level, the drifted series
    (worst first) and the drift counts of the recent runs."""
    levels = list(config.levels)
    last = lake.txn_version(GOLD_DRIFT, APP_MONITOR)
    view: dict[str, Any] = {"silver_version": last, "days": config.monitoring.days}
    view |= {
        "factor": float(config.monitoring.factor),
        "min_days": _drift_days(config),
        "series": 0,
        "drifted": 0,
    }
    if last is None:
        view["note"] = "no monitoring run yet: run `mmf monitor --score` or `mmf nightly`"
        return view
    d = lake.read(GOLD_DRIFT, filters=[("silver_version", "=", int(last))])
    view |= {"series": len(d), "drifted": int(d["drifted"].fillna(False).astype(bool).sum())}
    n = d["n"].astype(float)
    view["fleet"] = {m: _weighted(d[m], n) for m in ("mae", "mase", "bias")}
    view["coverage"] = [
        {"level": lv, "nominal": lv / 100, "observed": _weighted(d[f"coverage_{lv}"], n)} for lv in levels
    ]
    cols = [C.SERIES_ID, "n", "mae", "mase", "backtest_mase", "ratio", "drifted", "model", "run_id"]
    worst = d.assign(_m=d["mase"].fillna(-np.inf)).sort_values(["_m", C.SERIES_ID], ascending=[False, True])
    view["worst"] = _records(worst[cols].head(top))
    hit = d[d["drifted"].fillna(False).astype(bool)].sort_values(
        ["ratio", C.SERIES_ID], ascending=[False, True]
    )
    view["drifted_series"] = list(hit[C.SERIES_ID].head(max(top, MAX_NAMED)))
    hist = lake.read(GOLD_DRIFT, columns=["silver_version", "drifted"])
    counts = hist.groupby("silver_version")["drifted"].agg(["size", "sum"]).sort_index().tail(top)
    view["history"] = [
        {"silver_version": int(v), "series": int(r["size"]), "drifted": int(r["sum"])}
        for v, r in counts.iterrows()
    ]
    return view


def _weighted(values: pd.Series, n: pd.Series) -> float | None:
    ok = values.notna() & np.isfinite(values.astype(float))
    if not ok.any() or n[ok].sum() == 0:
        return None
    return float((values[ok].astype(float) * n[ok]).sum() / n[ok].sum())


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for row in frame.to_dict("records"):
        out.append({k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()})
    for row in out:
        row["n"], row["drifted"] = int(row["n"]), bool(row["drifted"])
    return out


def fleet_text(view: dict[str, Any]) -> list[str]:
    """The fleet view as lines of text."""
    if view.get("silver_version") is None:
        return [view.get("note", "no monitoring run yet")]
    f = view.get("fleet") or {}
    lines = [
        f"live accuracy on silver version {view['silver_version']} (last {view['days']} days of actuals): "
        f"{view['series']} series, {view['drifted']} drifted (live MASE > {view['factor']:g} x backtest MASE "
        f"on each of the last {view['min_days']} day(s))",
        "fleet: " + "  ".join(f"{k.upper()} {_num(f.get(k))}" for k in ("mae", "mase", "bias")),
        "coverage vs nominal: "
        + ", ".join(
            f"{c['level']}%: {_pct(c['observed'])} (nominal {c['level']}%)" for c in view.get("coverage", [])
        ),
    ]
    if view.get("worst"):
        lines.append("worst series (live MASE):")
        lines.append(f"  {'series':<16} {'MASE':>8} {'backtest':>9} {'ratio':>7} {'n':>5}  drifted  model")
        for r in view["worst"]:
            lines.append(
                f"  {r[C.SERIES_ID]:<16} {_num(r['mase']):>8} {_num(r['backtest_mase']):>9} "
                f"{_num(r['ratio']):>7} {r['n']:>5}  {'yes' if r['drifted'] else 'no':<7}  {r['model']}"
            )
    if view.get("drifted_series"):
        lines.append("drifted: " + ", ".join(view["drifted_series"]))
    if view.get("history"):
        lines.append(
            "drift counts: "
            + ", ".join(
                f"silver v{h['silver_version']}: {h['drifted']} of {h['series']}" for h in view["history"]
            )
        )
    return lines


def _num(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.3f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"
