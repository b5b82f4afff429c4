"""The hierarchy step: coherent forecasts of every level in gold/hierarchy and gold/portfolio.

After a forecast delivery (:mod:`training.jobs.forecast`), with ``hierarchy.enabled``:

1. **Structure.** silver/series is read a bucket range at a time; each series gets its
   node at every level of ``hierarchy.levels`` (:func:`forecasting.hierarchy.paths`;
   one with no attribute of a level is left out of it, through a hidden node). Only the
   bottom nodes' series counts stay on the driver. The bronze rows of the same range
   tell which series' attributes changed over time: refine keeps the latest one (the
   last ingested, non-null), and the series' rows in gold/hierarchy say so.
2. **Aggregate silver.** silver/readings, a bucket range at a time at the delivery's
   silver version, summed by (bottom node, ts) into partial sums (nodes x timestamps:
   small whatever the number of series), up to the delivery's cutoff (the most common
   series end); the upper levels are sums of the bottom nodes.
3. **Forecast the nodes** on the engine (local pool or Spark), each with the per-series
   pipeline (:func:`forecasting.hierarchy_nodes.forecast_node`): its own candidates,
   backtest and choice, plus the chosen model's backtest forecasts.
4. **Reconcile** on the driver (``hierarchy.method``; :mod:`forecasting.hierarchy`), with
   intervals from the reconciled backtest errors; score the reconciliation on the last
   backtest window (MASE per level before/after, coverage), logged as metrics of the
   delivery's MLflow run (``hierarchy_*``).
5. **Write.** gold/hierarchy: the aggregate levels' rows in one commit (replace-where on
   the model version, so a rerun replaces), then the series level a bucket range at a
   time (each series' gold/forecasts rows scaled to its bottom node's reconciled
   point, :func:`forecasting.hierarchy.distribute`), each batch its own commit naming the
   delivery and the batch; a restart skips the batches committed since this delivery's
   first commit. The last commit records the application transaction ``mmf-hierarchy``
   = the delivery key, so the nightly skips a delivery already done. gold/portfolio:
   the daily totals of the stored aggregate nodes with their interval bounds (the
   hourly offsets summed over the day: the hours of a day taken as fully correlated,
   the conservative bound) and ``method``, replace-where on the version.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from forecasting import contract as C
from forecasting import hierarchy as H
from forecasting import reconciliation as R
from forecasting.config import Config
from forecasting.errors import TableError
from forecasting.hierarchy_nodes import forecast_node, node_config
from registry.connection import configure
from training.checkpoints import checkpoint
from training.engines import get_engine
from training.jobs.forecast import APP_PORTFOLIO, _forecasts_in
from training.tables import (
    BRONZE_READINGS,
    GOLD_FORECASTS,
    GOLD_HIERARCHY,
    GOLD_PORTFOLIO,
    SILVER_READINGS,
    SILVER_SERIES,
    Lakehouse,
)

log = logging.getLogger(__name__)
APP_HIERARCHY = "mmf-hierarchy"
AGGREGATES = -1  # the batch index of the aggregate levels' commit


@dataclass
class HierarchyReport:
    model_version: str
    delivery: int
    method: str  # the method used (bottom_up when MinT refused the errors)
    skipped: bool = False
    n_nodes: int = 0  # nodes of the aggregate levels forecast (hidden ones included)
    n_series: int = 0  # series rows' series written at the series level
    left_out: dict[str, int] = field(default_factory=dict)  # level -> series without its attribute
    changed: dict[str, str] = field(default_factory=dict)  # series whose attribute changed -> what
    failed: dict[str, str] = field(default_factory=dict)  # node -> why its own model failed
    metrics: dict[str, float] = field(default_factory=dict)
    note: str = ""  # why the method used is not the configured one
    table_version: int | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        out = f"{self.n_nodes} nodes reconciled ({self.method})"
        if self.left_out:
            out += "; left out: " + ", ".join(
                f"{n} series of the {lv} level" for lv, n in self.left_out.items()
            )
        if self.changed:
            out += f"; {len(self.changed)} series changed attributes over time (the latest is used)"
        if self.failed:
            out += f"; {len(self.failed)} nodes fell back to the sum of their children"
        if self.note:
            out += f"; {self.note}"
        return out


@dataclass
class Delivery:
    """The forecast delivery the hierarchy is built for."""

    model_version: str
    run_id: str
    key: int
    silver_version: int
    horizon: int


def hierarchy(lake: Lakehouse, config: Config, delivery: Delivery, force: bool = False) -> HierarchyReport:
    """Build, forecast, reconcile and write every level of ``delivery`` (see the module)."""
    hc = config.hierarchy
    report = HierarchyReport(delivery.model_version, delivery.key, hc.method)
    if not force and lake.txn_version(GOLD_HIERARCHY, APP_HIERARCHY) == delivery.key:
        report.skipped = True
        return report
    t0 = time.perf_counter()
    cfg = config.replace(horizon=delivery.horizon)
    members, series_ranges = structure(lake, cfg, report, delivery.silver_version)
    tree = H.tree(members, hc.levels)
    frame = aggregate_silver(lake, cfg, tree, delivery.silver_version, series_ranges)
    t1 = time.perf_counter()
    results = get_engine(cfg).map_groups(
        frame, C.SERIES_ID, forecast_node, C.node_result_schema(cfg.levels), node_config(cfg)
    )
    t2 = time.perf_counter()
    recon = reconcile_nodes(tree, results, cfg, report, pd.Timestamp(frame[C.TS].max()))
    t3 = time.perf_counter()
    write_levels(lake, cfg, delivery, tree, recon, series_ranges, report)
    log_metrics(config, delivery.run_id, report)
    report.timings = {"build_s": t1 - t0, "nodes_s": t2 - t1, "reconcile_s": t3 - t2}
    report.timings["write_s"] = time.perf_counter() - t3
    return report


# -- 1. structure ----------------------------------------------------------------------
def structure(lake: Lakehouse, config: Config, report: HierarchyReport, silver_version: int):
    """The bottom nodes (their node at each level, hidden flags, series counts), read a
    bucket range of silver/series at a time, and those ranges (the batches of
    silver/readings at ``silver_version``: every later read goes by them); ``report`` gets
    the series left out of each level and those whose attributes changed."""
    levels = list(config.hierarchy.levels)
    ranges = lake.batches(SILVER_READINGS, silver_version, config.batch_rows)
    parts = []
    for buckets in ranges:
        attrs = lake.read_buckets(
            SILVER_SERIES, buckets, columns=[C.SERIES_ID, *C.ATTRIBUTES, "bronze_version"]
        )
        if attrs.empty:
            continue
        p = H.paths(attrs, levels)
        for level in levels[1:]:
            n = int((p[f"hidden_{level}"] & ~p[f"hidden_{levels[levels.index(level) - 1]}"]).sum())
            if n:
                report.left_out[level] = report.left_out.get(level, 0) + n
        report.changed.update(changed_attributes(lake, buckets, attrs, levels[1:]))
        flags = [f"hidden_{lv}" for lv in levels]
        parts.append(p.groupby([*levels, *flags], as_index=False).agg(n_series=(C.SERIES_ID, "size")))
    if not parts:
        raise TableError("silver/series has no series: run `mmf refine` first")
    return pd.concat(parts, ignore_index=True), ranges


def changed_attributes(lake: Lakehouse, buckets, attrs: pd.DataFrame, levels) -> dict[str, str]:
    """Series of ``attrs`` whose bronze rows (at the version silver was refined from)
    hold more than one value of a level's attribute -> what changed and what is used."""
    cols = [lv for lv in levels if lv in C.ATTRIBUTES]
    version = attrs["bronze_version"].dropna()
    if not cols or version.empty or not lake.exists(BRONZE_READINGS):
        return {}
    raw = lake.read_buckets(BRONZE_READINGS, buckets, int(version.max()), columns=[C.SERIES_ID, *cols])
    used = attrs.set_index(C.SERIES_ID)
    out: dict[str, str] = {}
    for col in cols:
        values = raw.dropna(subset=[col]).drop_duplicates([C.SERIES_ID, col])
        many = values[values.duplicated(C.SERIES_ID, keep=False)]
        for sid, group in many.groupby(C.SERIES_ID):
            if sid in used.index:
                seen = ", ".join(sorted(map(str, group[col])))
                out[str(sid)] = (
                    f"{col} changed over time ({seen}): the latest, {used.at[sid, col]}, is used for all its history"
                )
    return out


# -- 2. aggregate silver -----------------------------------------------------------------
def aggregate_silver(
    lake: Lakehouse, config: Config, tree: H.Tree, silver_version: int, ranges
) -> pd.DataFrame:
    """Every node's series (``series_id`` = its key, ``ts``, ``y``): silver/readings
    summed by bottom node a bucket range at a time, then up the tree; up to the most
    common series end (the delivery's cutoff)."""
    levels = list(tree.levels)
    bottom_level = levels[-1]
    sums: pd.DataFrame | None = None
    ends: pd.Series | None = None
    for buckets in ranges:
        attrs = lake.read_buckets(SILVER_SERIES, buckets, columns=[C.SERIES_ID, *C.ATTRIBUTES, "end"])
        if attrs.empty:
            continue
        leaf = H.paths(attrs, levels).set_index(C.SERIES_ID)[bottom_level]
        counts = attrs["end"].value_counts()
        ends = counts if ends is None else ends.add(counts, fill_value=0)
        rows = lake.read_buckets(SILVER_READINGS, buckets, silver_version, columns=[C.SERIES_ID, C.TS, C.Y])
        rows["node"] = rows[C.SERIES_ID].map(leaf)
        part = rows.dropna(subset=["node"]).groupby(["node", C.TS])[C.Y].sum()
        sums = part if sums is None else sums.add(part, fill_value=0.0)
    if sums is None or ends is None:
        raise TableError(f"silver/readings version {silver_version} has no rows of silver/series' series")
    cutoff = ends.idxmax()
    sums = sums[sums.index.get_level_values(C.TS) <= cutoff]
    wide = sums.unstack("node").reindex(columns=list(tree.bottom["node"])).fillna(0.0)
    values = wide.to_numpy() @ tree.S.T  # ts x nodes
    frame = pd.DataFrame(values, index=wide.index, columns=tree.keys).rename_axis(C.TS)
    long = frame.reset_index().melt(id_vars=C.TS, var_name=C.SERIES_ID, value_name=C.Y)
    return long[[C.SERIES_ID, C.TS, C.Y]]


# -- 4. reconcile ------------------------------------------------------------------------
@dataclass
class Reconciled:
    ts: np.ndarray  # the horizon's timestamps
    cutoff: pd.Timestamp  # the last timestamp of the nodes' history
    base: np.ndarray  # nodes x h
    rec: dict[str, Any]
    models: list[str]


def _matrices(tree: H.Tree, results: pd.DataFrame, levels, report: HierarchyReport):
    """Base forecasts and intervals (nodes x h), backtest forecasts and actuals (windows
    x nodes x h), scales and models from the nodes' rows; a failed node takes the sum of
    its bottom nodes (a failed bottom node fails the step)."""
    keys = tree.keys
    failed = results[results["kind"] == "failed"].set_index(C.SERIES_ID)["reason"]
    bottom = tree.level_of(tree.levels[-1])
    for key, why in failed.items():
        i = keys.index(key)
        if bottom[i]:
            raise TableError(f"hierarchy node {H.split_key(key)[1]!r} could not be forecast: {why}")
        report.failed[H.split_key(key)[1]] = str(why)
    fc = results[results["kind"] == "forecast"].pivot(index=C.SERIES_ID, columns="step", values="yhat")
    bt = results[results["kind"] == "backtest"]
    ybt = bt.pivot_table(index=["window", C.SERIES_ID], columns="step", values="yhat")
    act = bt.pivot_table(index=["window", C.SERIES_ID], columns="step", values=C.Y)
    windows = sorted(bt["window"].unique())
    firsts = results[results["kind"] != "failed"].drop_duplicates(C.SERIES_ID).set_index(C.SERIES_ID)
    h = fc.shape[1]
    base = np.full((len(keys), h), np.nan)
    btf = np.full((len(windows), len(keys), h), np.nan)
    bta = np.full((len(windows), len(keys), h), np.nan)
    for i, key in enumerate(keys):
        if key in fc.index:
            base[i] = fc.loc[key].to_numpy()
            for w in windows:
                btf[w, i] = ybt.loc[(w, key)].to_numpy()
                bta[w, i] = act.loc[(w, key)].to_numpy()
    fill = ~np.isfinite(base[:, 0])  # failed upper nodes: the sum of their bottom nodes
    bot = np.flatnonzero(bottom)
    base[fill] = tree.S[fill] @ base[bot]
    btf[:, fill] = np.einsum("nb,wbh->wnh", tree.S[fill], btf[:, bot])
    bta[:, fill] = np.einsum("nb,wbh->wnh", tree.S[fill], bta[:, bot])
    scales = np.array([float(firsts["scale"].get(k, np.nan)) for k in keys])
    models = [str(firsts["model"].get(k, "bottom_up")) for k in keys]
    ts = results[results["kind"] == "forecast"].drop_duplicates("step").sort_values("step")[C.TS].to_numpy()
    return base, btf, bta, scales, models, ts


def reconcile_nodes(
    tree: H.Tree, results: pd.DataFrame, config: Config, report: HierarchyReport, cutoff: pd.Timestamp
) -> Reconciled:
    """The coherent forecasts of the nodes with their intervals; ``report`` gets the
    backtest scores of both methods and the shrinkage."""
    levels, method = list(config.levels), config.hierarchy.method
    base, btf, bta, scales, models, ts = _matrices(tree, results, levels, report)
    flat = lambda a: a.transpose(1, 0, 2).reshape(a.shape[1], -1)  # noqa: E731 - nodes x obs
    nonneg = config.bounds == "nonnegative"
    rec = R.reconcile(tree.S, base, method, flat(bta), flat(btf), levels, nonnegative=nonneg)
    if rec["method"] != method:
        report.note = f"{method} refused the backtest errors (all but zero): reconciled bottom-up"
    report.method = str(rec["method"])
    node_levels = tree.nodes["level"].to_numpy()
    visible = ~tree.nodes["hidden"].to_numpy()
    for m in dict.fromkeys([method, "bottom_up"]):
        report.metrics.update(R.evaluate(tree.S, node_levels, btf, bta, scales, m, levels, visible))
    report.n_nodes = len(tree.nodes)
    return Reconciled(ts, cutoff, base, rec, models)


# -- 5. write ------------------------------------------------------------------------------
def _node_rows(tree: H.Tree, recon: Reconciled, delivery: Delivery, config: Config, now) -> pd.DataFrame:
    """gold/hierarchy rows of the stored aggregate nodes (hidden ones are not stored)."""
    h, levels = len(recon.ts), list(config.levels)
    nodes = tree.nodes.reset_index(drop=True)
    frame = pd.DataFrame(
        {
            "level": np.repeat(nodes["level"].to_numpy(), h),
            "node": np.repeat(nodes["node"].to_numpy(), h),
            "parent": np.repeat(nodes["parent"].to_numpy(), h),
            C.TS: np.tile(recon.ts.astype("datetime64[us]"), len(nodes)),
            "yhat": recon.rec["mean"].ravel(),
            "yhat_base": recon.base.ravel(),
            "n_series": np.repeat(nodes["n_series"].to_numpy(), h),
            "model": np.repeat(recon.models, h),
            "reason": "",
        }
    )
    for lv in levels:
        frame[f"yhat_lower_{lv}"] = recon.rec[f"lo-{lv}"].ravel()
        frame[f"yhat_upper_{lv}"] = recon.rec[f"hi-{lv}"].ravel()
    frame = frame[~np.repeat(nodes["hidden"].to_numpy(), h)].assign(cutoff=recon.cutoff)
    return _stamp(frame, delivery, str(recon.rec["method"]), now)


def _stamp(frame: pd.DataFrame, delivery: Delivery, method: str, now) -> pd.DataFrame:
    return frame.assign(
        method=method,
        model_version=delivery.model_version,
        run_id=delivery.run_id,
        delivery=int(delivery.key),
        silver_version=int(delivery.silver_version),
        created_at=now,
    )


def write_levels(
    lake, config: Config, delivery: Delivery, tree: H.Tree, recon: Reconciled, ranges, report
) -> None:
    """gold/hierarchy (aggregate levels, then the series level batch by batch) and
    gold/portfolio; see the module for the commits."""
    now = pd.Timestamp(dt.datetime.now(dt.timezone.utc)).as_unit("us")
    done = _done_batches(lake, delivery)
    if done["created_at"]:  # a restart: the step keeps its creation time
        now = pd.Timestamp(done["created_at"]).as_unit("us")
    nodes = _node_rows(tree, recon, delivery, config, now)
    series_batches = list(enumerate(ranges)) if config.hierarchy.series else []
    n = len(series_batches)
    base_meta = {"mmf.delivery": delivery.key, "mmf.run_id": delivery.run_id, "mmf.batches": n}
    if AGGREGATES not in done["batches"]:
        report.table_version = lake.write(
            GOLD_HIERARCHY,
            nodes,
            mode="overwrite",
            predicate=f"model_version = '{delivery.model_version}'",
            metadata={**base_meta, "mmf.batch": AGGREGATES, "mmf.created_at": now.isoformat()},
            **_txn(delivery, final=n == 0),
        )
    point = nodes_point(tree, recon)
    at = _delivered_at(lake, delivery)
    ts = point.index.get_level_values(C.TS).unique()
    totals = series_totals(lake, config, ranges, tree, ts, delivery, at) if series_batches else None
    for i, buckets in series_batches:
        if i in done["batches"]:
            continue
        rows = series_rows(lake, config, buckets, tree, point, delivery, report, at, totals)
        rows = _stamp(rows, delivery, str(recon.rec["method"]), now)
        report.n_series += int(rows["node"].nunique()) if len(rows) else 0
        report.table_version = lake.write(
            GOLD_HIERARCHY,
            rows,
            metadata={**base_meta, "mmf.batch": i, "mmf.created_at": now.isoformat()},
            **_txn(delivery, final=i == n - 1),
        )
        if i < n - 1:
            checkpoint("mid_hierarchy", batch=i)
    write_portfolio(lake, config, delivery, nodes, now)


def _txn(delivery: Delivery, final: bool) -> dict[str, Any]:
    return {"app_id": APP_HIERARCHY, "app_version": delivery.key} if final else {}


def _done_batches(lake: Lakehouse, delivery: Delivery) -> dict[str, Any]:
    """The batches of this unfinished delivery already committed (a restart), read from
    gold/hierarchy's log: the commits since its aggregate commit, newest first."""
    out: dict[str, Any] = {"batches": set(), "created_at": None}
    if not lake.exists(GOLD_HIERARCHY) or lake.txn_version(GOLD_HIERARCHY, APP_HIERARCHY) == delivery.key:
        return out
    found = []
    for commit in lake.history(GOLD_HIERARCHY, 1000):
        if commit.get("mmf.delivery") != str(delivery.key) or commit.get("mmf.run_id") != delivery.run_id:
            break
        found.append(commit)
        if int(commit.get("mmf.batch", 0)) == AGGREGATES:
            out["batches"] = {int(c["mmf.batch"]) for c in found}
            out["created_at"] = commit.get("mmf.created_at")
            return out
    return {"batches": set(), "created_at": None}


def nodes_point(tree: H.Tree, recon: Reconciled) -> pd.Series:
    """The reconciled point of each bottom node by (node, ts)."""
    rows = tree.level_of(tree.levels[-1])
    names = tree.nodes.loc[rows, "node"].to_numpy()
    values = recon.rec["mean"][rows]
    idx = pd.MultiIndex.from_product([names, recon.ts.astype("datetime64[us]")], names=["node", C.TS])
    return pd.Series(values.ravel(), index=idx)


def batch_forecasts(lake, config: Config, buckets, tree: H.Tree, ts, delivery: Delivery, at, columns):
    """The delivery's gold/forecasts rows (``columns``) of one bucket range's series at
    the hierarchy's timestamps ``ts``, with their bottom ``node``; and the series' paths."""
    attrs = lake.read_buckets(SILVER_SERIES, buckets, columns=[C.SERIES_ID, *C.ATTRIBUTES])
    p = H.paths(attrs, list(tree.levels)).set_index(C.SERIES_ID)
    filters = [("silver_version", "=", delivery.silver_version), ("created_at", "=", at)]
    fc = _forecasts_in(lake, buckets, [C.SERIES_ID, C.TS, *columns], filters)
    fc = fc[fc[C.TS].isin(set(ts))]
    return fc.assign(node=fc[C.SERIES_ID].map(p[tree.levels[-1]])), p


def series_totals(lake, config: Config, ranges, tree: H.Tree, ts, delivery: Delivery, at) -> pd.DataFrame:
    """The sum and count of the series' forecasts by (bottom node, ts), a batch at a time."""
    totals: pd.DataFrame | None = None
    for buckets in ranges:
        fc, _ = batch_forecasts(lake, config, buckets, tree, ts, delivery, at, ["yhat"])
        part = H.node_totals(fc.dropna(subset=["node"]))
        totals = part if totals is None else totals.add(part, fill_value=0.0)
    return totals if totals is not None else pd.DataFrame(columns=["sum", "count"])


def series_rows(
    lake, config: Config, buckets, tree: H.Tree, point: pd.Series, delivery: Delivery, report, at, totals
) -> pd.DataFrame:
    """The series level of one bucket range: the delivery's gold/forecasts rows of its
    series, scaled to their bottom node's reconciled point (``totals``: of all batches)."""
    levels = list(config.levels)
    bounds = [f"yhat_{s}_{lv}" for lv in levels for s in ("lower", "upper")]
    ts = point.index.get_level_values(C.TS).unique()
    columns = ["yhat", *bounds, "cutoff", "model_version"]
    fc, p = batch_forecasts(lake, config, buckets, tree, ts, delivery, at, columns)
    if fc.empty:
        return pd.DataFrame(columns=C.hierarchy_schema(levels).names)
    out = H.distribute(point, fc, bounds, totals)
    reasons = p["reason"].copy()
    for sid, why in report.changed.items():
        if sid in reasons.index:
            reasons[sid] = "; ".join(r for r in (reasons[sid], why) if r)
    return out.assign(
        level=H.SERIES,
        parent=out["node"],
        node=out[C.SERIES_ID],
        n_series=1,
        model="v" + out["model_version"].astype(str),
        reason=out[C.SERIES_ID].map(reasons).fillna(""),
    ).drop(columns=[C.SERIES_ID, "model_version"])


def _delivered_at(lake: Lakehouse, delivery: Delivery):
    """The creation time of the delivery's gold/forecasts rows (its commits' metadata)."""
    for commit in lake.history(GOLD_FORECASTS, 1000):
        if commit.get("mmf.delivery") == str(delivery.key) and commit.get("mmf.created_at"):
            return pd.Timestamp(commit["mmf.created_at"]).to_pydatetime()
    return dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def write_portfolio(lake: Lakehouse, config: Config, delivery: Delivery, nodes: pd.DataFrame, now) -> int:
    """gold/portfolio from the stored aggregate nodes: daily sums of the points and of
    the interval offsets, replace-where on the version."""
    levels = list(config.levels)
    frame = nodes.assign(day=nodes[C.TS].dt.date, key=nodes["node"])
    aggs: dict[str, Any] = {"yhat": ("yhat", "sum"), "n_series": ("n_series", "first")}
    for lv in levels:
        for side in ("lower", "upper"):
            col = f"yhat_{side}_{lv}"
            frame[f"off_{col}"] = frame[col] - frame["yhat"]
            aggs[f"off_{col}"] = (f"off_{col}", "sum")
    out = frame.groupby(["level", "key", "day"], as_index=False).agg(**aggs)
    for lv in levels:
        for side in ("lower", "upper"):
            out[f"yhat_{side}_{lv}"] = out["yhat"] + out.pop(f"off_yhat_{side}_{lv}")
    out = out.assign(
        model_version=delivery.model_version,
        cutoff=nodes["cutoff"].max(),
        created_at=now,
        method=str(nodes["method"].iloc[0]),
    )
    return lake.write(
        GOLD_PORTFOLIO,
        out,
        mode="overwrite",
        predicate=f"model_version = '{delivery.model_version}'",
        app_id=APP_PORTFOLIO,
        app_version=int(delivery.key),
    )


def log_metrics(config: Config, run_id: str, report: HierarchyReport) -> None:
    """The reconciliation's backtest scores as metrics ``hierarchy_<name>`` of the run."""
    if not report.metrics:
        return
    configure(config)
    try:
        client = MlflowClient()
        for name, value in report.metrics.items():
            if np.isfinite(value):
                client.log_metric(run_id, f"hierarchy_{name}", float(value))
    except MlflowException as exc:
        log.warning("hierarchy metrics not recorded on run %s: %s", run_id, str(exc).splitlines()[0])
