"""The hierarchy step on generated meters: accuracy of the levels and what it costs.

Generates ``--meters`` hourly meters (about four a site, five regions) for ``--days``,
holds the last ``--horizon`` hours out, runs ``mmf nightly`` (hierarchy enabled, MinT
shrink) on the rest, then reruns the hierarchy step with bottom-up on the same
delivery. Records per level (total, region, site, series):

* held-out MASE of the nodes' own forecasts (base), of the coherent MinT forecasts and
  of the bottom-up ones, against the held-out actuals (the nodes' sums of them);
* held-out coverage of the coherent intervals (80%, 95%);
* the backtest figures the step logs on the MLflow run (last window, P and intervals
  estimated on the earlier ones);
* the nightly's steps' wall time and the hierarchy step's parts (indicative only on a
  shared machine: rerun on a quiet one for timings).

    python -m benchmarks.hierarchy --meters 120 --days 28
    python -m benchmarks.hierarchy --meters 10000 --days 28 --sites 200 --regions 10

``--sites``/``--regions`` regroup the generated meters under that many sites (meters dealt
round-robin over a shuffled order) and regions (sites dealt round-robin): the issue's cost
target is for 10,000 meters under 200 sites and 10 regions, while the generator gives about
four meters a site and five regions. The readings are unchanged; only the tree is.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import save
from forecasting import contract as C
from forecasting import hierarchy as H
from forecasting.config import load_config
from forecasting.generator import generate, write
from forecasting.metrics import mase_scale
from training.jobs import hierarchy as hierarchy_job
from training.jobs.ingest import ingest
from training.jobs.nightly import nightly
from training.tables import GOLD_HIERARCHY, SILVER_READINGS, SILVER_SERIES, Lakehouse


def _actuals(gen, cut: pd.Timestamp, lake: Lakehouse, levels) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The held-out actuals of every node (level, node, ts, y) and each node's in-sample
    MASE scale, through the same tree the step builds (hidden nodes included)."""
    attrs = lake.read(SILVER_SERIES, columns=[C.SERIES_ID, *C.ATTRIBUTES])
    paths = H.paths(attrs, levels)
    readings = gen.readings[[C.SERIES_ID, C.TS, C.Y]].merge(paths, on=C.SERIES_ID)
    frames = []
    for level in levels:
        sums = readings.groupby([level, C.TS], as_index=False)[C.Y].sum().rename(columns={level: "node"})
        frames.append(sums.assign(level=level))
    frames.append(readings.rename(columns={C.SERIES_ID: "node"})[["node", C.TS, C.Y]].assign(level="series"))
    every = pd.concat(frames, ignore_index=True)
    history, future = every[every[C.TS] <= cut], every[every[C.TS] > cut]
    scales = history.groupby(["level", "node"])[C.Y].apply(lambda y: mase_scale(y.to_numpy(), 24))
    return future, scales.rename("scale").reset_index()


def _score(rows: pd.DataFrame, future: pd.DataFrame, scales: pd.DataFrame, levels_pct) -> pd.DataFrame:
    both = rows.merge(future, on=["level", "node", C.TS]).merge(scales, on=["level", "node"])
    both["ae_rec"] = (both[C.Y] - both["yhat"]).abs() / both["scale"]
    both["ae_base"] = (both[C.Y] - both["yhat_base"]).abs() / both["scale"]
    for lv in levels_pct:
        inside = (both[C.Y] >= both[f"yhat_lower_{lv}"]) & (both[C.Y] <= both[f"yhat_upper_{lv}"])
        both[f"cov_{lv}"] = inside.astype(float)
    cols = ["ae_base", "ae_rec", *[f"cov_{lv}" for lv in levels_pct]]
    return both.groupby("level")[cols].mean()


def regroup(readings: pd.DataFrame, sites: int | None, regions: int | None, seed: int = 7) -> pd.DataFrame:
    """``readings`` with each meter's ``site`` and ``region`` reassigned: ``sites`` sites
    (meters dealt round-robin over a shuffled order) under ``regions`` regions (sites
    dealt round-robin). ``None`` keeps the generated level (and the generated regions
    of regrouped sites are then their first meter's)."""
    if sites is None and regions is None:
        return readings
    per = readings.drop_duplicates(C.SERIES_ID).set_index(C.SERIES_ID)[["site", "region"]]
    if sites is not None:
        if not 1 <= sites <= len(per):
            raise ValueError(f"--sites {sites}: expected 1 to the number of meters ({len(per)})")
        order = np.random.default_rng(seed).permutation(len(per))
        site_of = np.empty(len(per), dtype=np.int64)
        site_of[order] = np.arange(len(per)) % sites
        width = max(3, len(str(sites)))
        per["site"] = [f"SITE-{i + 1:0{width}d}" for i in site_of]
        if regions is None:  # a regrouped site keeps its first meter's region
            per["region"] = per.groupby("site")["region"].transform("first")
    if regions is not None:
        sites_all = sorted(per["site"].unique())
        if not 1 <= regions <= len(sites_all):
            raise ValueError(f"--regions {regions}: expected 1 to the number of sites ({len(sites_all)})")
        width = max(2, len(str(regions)))
        region_of = {s: f"REGION-{i % regions + 1:0{width}d}" for i, s in enumerate(sites_all)}
        per["region"] = per["site"].map(region_of)
    out = readings.drop(columns=["site", "region"]).merge(per, left_on=C.SERIES_ID, right_index=True)
    return out[readings.columns]


def run(
    meters: int, days: int, horizon: int, work: Path, sites: int | None = None, regions: int | None = None
) -> dict:
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work}/mlflow.db"
    cfg = load_config(
        lakehouse=str(work / "lake"),
        horizon=horizon,
        workers=2,
        **{
            "mlflow.tracking_uri": f"sqlite:///{work}/mlflow.db",
            "cleaning.min_length": 48,
            "hierarchy.enabled": True,
        },
    )
    gen = generate(n_series=meters, days=days, freq="h", seed=11, clean=True)
    gen = dataclasses.replace(gen, readings=regroup(gen.readings, sites, regions))
    cut = gen.readings[C.TS].max() - pd.Timedelta(hours=horizon)
    seen = gen.readings[gen.readings[C.TS] <= cut].reset_index(drop=True)
    write(dataclasses.replace(gen, readings=seen), work / "src.parquet")
    lake = Lakehouse.from_config(cfg)
    ingest(lake, work / "src.parquet")
    t0 = time.perf_counter()
    night = nightly(lake, cfg)
    wall = time.perf_counter() - t0
    rep = night.hierarchy
    future, scales = _actuals(gen, cut, lake, list(cfg.hierarchy.levels))
    mint = _score(lake.read(GOLD_HIERARCHY), future, scales, cfg.levels)
    fc = night.forecast
    delivery = hierarchy_job.Delivery(fc.model_version, fc.run_id, fc.delivery, fc.silver_version, fc.horizon)
    bu_cfg = cfg.replace(**{"hierarchy.method": "bottom_up"})
    bu_rep = hierarchy_job.hierarchy(lake, bu_cfg, delivery, force=True)
    bottom_up = _score(lake.read(GOLD_HIERARCHY), future, scales, cfg.levels)
    return {
        "meters": meters,
        "days": days,
        "horizon": horizon,
        "silver_rows": lake.n_rows(SILVER_READINGS),
        "sites": int(gen.readings["site"].nunique()),
        "regions": int(gen.readings["region"].nunique()),
        "nodes": rep.n_nodes,
        "nightly_wall_s": round(wall, 1),
        "hierarchy_s": {k: round(v, 2) for k, v in rep.timings.items()},
        "bottom_up_hierarchy_s": {k: round(v, 2) for k, v in bu_rep.timings.items()},
        "backtest": {k: round(v, 4) for k, v in rep.metrics.items()},
        "held_out_mint": mint.round(4).to_dict(orient="index"),
        "held_out_bottom_up": bottom_up.round(4).to_dict(orient="index"),
        "steps": night.steps,
    }


def markdown(r: dict, command: str | None = None) -> str:
    order = ["total", "region", "site", "series"]
    lines = [
        f"# Hierarchy: {r['meters']} generated meters x {r['days']} days, horizon {r['horizon']} h",
        "",
        *([f"Command: `{command}`", ""] if command else []),
        f"{r['nodes']} aggregate nodes (total, regions, sites) forecast by their own models and reconciled.",
        "Held-out = the last horizon of the generated data, never seen by the nightly.",
        "",
        "| level | MASE base | MASE MinT (shrink) | MASE bottom-up | coverage 80 (MinT) | coverage 95 (MinT) |",
        "|---|---|---|---|---|---|",
    ]
    m, b = r["held_out_mint"], r["held_out_bottom_up"]
    for lv in order:
        if lv in m:
            lines.append(
                f"| {lv} | {m[lv]['ae_base']:.3f} | {m[lv]['ae_rec']:.3f} | {b[lv]['ae_rec']:.3f} "
                f"| {m[lv]['cov_80']:.1%} | {m[lv]['cov_95']:.1%} |"
            )
    lines += [
        "",
        "Backtest (last window; P and intervals from the earlier windows), as logged on the MLflow run:",
        "",
    ]
    lines += [f"- `hierarchy_{k}` = {v}" for k, v in sorted(r["backtest"].items())]
    lines += ["", *cost_lines(r), ""]
    return "\n".join(lines)


def cost_lines(r: dict) -> list[str]:
    """The measured cost: the hierarchy step against the rest of the nightly on this run,
    and, for a run smaller than the issue's shape (10,000 meters under 200 sites and 10
    regions), its extrapolation there: the nodes' part scales with the nodes (211), the
    rest of the step and the nightly itself with the meters."""
    hs = r["hierarchy_s"]
    total = sum(hs.values())
    rest_of_night = r["nightly_wall_s"] - total
    lines = [
        f"Cost on this run: nightly {r['nightly_wall_s']} s for {r['meters']:,} meters under "
        f"{r.get('sites', '?')} sites and {r.get('regions', '?')} regions ({r['nodes']} aggregate nodes), "
        f"of which the hierarchy step {total:.1f} s ({hs}): the step adds **{total / rest_of_night:.1%}** "
        "to the rest of the nightly (target: at most 10%).",
    ]
    nodes_10k, meters_10k = 1 + 10 + 200, 10_000
    if r["meters"] >= meters_10k and r["nodes"] >= nodes_10k:
        return lines
    per_node = hs["nodes_s"] / r["nodes"]
    rest = (total - hs["nodes_s"]) / r["meters"]
    night = rest_of_night / r["meters"]
    step = per_node * nodes_10k + rest * meters_10k
    share = step / (night * meters_10k)
    return [
        *lines,
        "",
        f"Estimate for 10,000 meters under 200 sites and 10 regions ({nodes_10k} nodes), from this run: "
        f"{per_node:.2f} s per node x {nodes_10k} + {rest * 1000:.1f} ms per meter x {meters_10k:,} "
        f"= {step:.0f} s, against {night:.2f} s per meter for the rest of the nightly x {meters_10k:,} = "
        f"{night * meters_10k:.0f} s: the step adds about {share:.1%} (target: at most 10%).",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--meters", type=int, default=120)
    ap.add_argument("--days", type=int, default=28)
    ap.add_argument("--horizon", type=int, default=24)
    ap.add_argument("--sites", type=int, default=None, help="regroup the meters under this many sites")
    ap.add_argument("--regions", type=int, default=None, help="regroup the sites under this many regions")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="mmf-hier-"))
    result = run(args.meters, args.days, args.horizon, work, args.sites, args.regions)
    kwargs = {"folder": args.out} if args.out else {}
    command = " ".join(["python -m benchmarks.hierarchy", *sys.argv[1:]])
    save("hierarchy", result, markdown(result, command), **kwargs)
    print(markdown(result, command))


if __name__ == "__main__":
    main()
