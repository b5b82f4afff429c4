"""Simulated nights on the real EDRP data: does every nightly end with the next horizon
for every clean series, whatever the gate decides, and how good are those forecasts?

    python -m benchmarks.nights [--data PATH] [--series N] [--nights 7] [--reject 2 4 6] [--conf FILE]

The last ``--nights`` days of the data are held out. The history before them is
ingested, then each night runs the real nightly job (:func:`training.jobs.nightly.nightly`:
refine -> train -> gate -> forecast) on a temporary lakehouse and that day's readings
are ingested after it, as users run it. On the nights named by ``--reject`` the gate
is made to keep the champion through configuration only: ``gate.min_common_series``
above the number of series (so any comparison is "too little common data") with
``gate.insufficient: keep``. (``mlflow.promotion_tolerance`` cannot do it: the settings
allow only a tolerance >= 0.) The first night always promotes (there is no champion).

After each night: gold/forecasts must hold, for every series of silver/series, the
``horizon`` steps after its latest silver reading, from the current silver version; the
version and fit (trained | refit) that produced them and the gate's decision are
recorded. Once the day's actuals are in, that night's forecasts are scored per series
(MASE scaled by the in-sample daily seasonal naive MAE of the history up to the cutoff,
sMAPE, bias, coverage of the interval levels) next to the daily seasonal naive forecast
of the same day (yesterday's readings). Horizon = one day of the data's steps (48 for
half-hours). Results: benchmarks/results/nights.{json,md}.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import RESULTS, first_series, save
from benchmarks.real_data import DEFAULT_DATA
from forecasting import contract as C
from forecasting import metrics as M

DAY = pd.Timedelta("1D")
REJECT = {"gate.insufficient": "keep", "gate.min_common_series": 1_000_000_000}


def split(frame: pd.DataFrame, nights: int) -> tuple[pd.DataFrame, list[pd.DataFrame], pd.Timedelta]:
    """The history before the last ``nights`` whole days, the days, and the data's step."""
    frame = frame[[C.SERIES_ID, C.TS, C.Y]].sort_values([C.SERIES_ID, C.TS], ignore_index=True)
    first = frame[frame[C.SERIES_ID] == frame[C.SERIES_ID].iloc[0]]
    step = pd.Timedelta(first[C.TS].diff().mode().iloc[0])
    end = frame[C.TS].max().normalize() + DAY
    cut = end - nights * DAY
    days = [
        frame[(frame[C.TS] >= cut + k * DAY) & (frame[C.TS] < cut + (k + 1) * DAY)] for k in range(nights)
    ]
    return frame[frame[C.TS] < cut], days, step


def next_horizon(lake, horizon: int, step: pd.Timedelta) -> tuple[pd.DataFrame, dict]:
    """The newest forecast of every clean series at its latest silver reading, and the
    completeness of that delivery."""
    series = lake.read("silver/series", columns=[C.SERIES_ID, "end"]).set_index(C.SERIES_ID)["end"]
    series = series.astype("datetime64[us]")
    silver_version = lake.version("silver/readings")
    fc = lake.read("gold/forecasts")
    rows = fc[fc["cutoff"].astype("datetime64[us]") == fc[C.SERIES_ID].map(series)]
    rows = rows[rows["created_at"] == rows.groupby(C.SERIES_ID)["created_at"].transform("max")]
    got = (
        rows.groupby(C.SERIES_ID)
        .agg(
            n=(C.TS, "nunique"),
            first=(C.TS, "min"),
            last=(C.TS, "max"),
            rows=(C.TS, "size"),
            finite=("yhat", lambda v: bool(np.isfinite(v).all())),
            silver=("silver_version", "min"),
            versions=("model_version", "nunique"),
        )
        .reindex(series.index)
    )
    ends = series.reindex(got.index)
    ok = (
        (got["n"] == horizon)
        & (got["rows"] == horizon)
        & (got["first"] == ends + step)
        & (got["last"] == ends + horizon * step)
        & got["finite"].fillna(False).astype(bool)
        & (got["silver"] == silver_version)
        & (got["versions"] == 1)
    )
    complete = set(ok[ok].index)
    rows = rows[rows[C.SERIES_ID].isin(complete)]
    per = rows.drop_duplicates(C.SERIES_ID)
    check = {
        "n_clean": int(len(series)),
        "n_with_horizon": len(complete),
        "missing": sorted(set(series.index) - complete),
        "silver_version": int(silver_version),
        "cutoffs": sorted({str(t) for t in series}),
        "versions": {f"v{k}": int(v) for k, v in per["model_version"].value_counts().items()},
        "fits": {str(k): int(v) for k, v in per["fit"].value_counts().items()},
    }
    return rows, check


def score(
    rows: pd.DataFrame, actuals: pd.DataFrame, history: pd.DataFrame, season: int, levels
) -> pd.DataFrame:
    """Per series: the night's forecast and the daily seasonal naive forecast of the same
    steps, scored on the actuals that arrived."""
    naive = history.groupby(C.SERIES_ID).tail(season).copy()
    naive[C.TS] = naive[C.TS] + DAY
    both = actuals.merge(rows, on=[C.SERIES_ID, C.TS]).merge(
        naive.rename(columns={C.Y: "naive"}), on=[C.SERIES_ID, C.TS], how="left"
    )
    insample = {sid: g[C.Y].to_numpy() for sid, g in history.groupby(C.SERIES_ID)}
    out = []
    for sid, g in both.groupby(C.SERIES_ID):
        y, yhat, base = g[C.Y].to_numpy(), g["yhat"].to_numpy(), g["naive"].to_numpy()
        row = {
            C.SERIES_ID: sid,
            "n_points": len(g),
            "model": g["model"].iloc[0],
            "mase": M.mase(y, yhat, insample[sid], season),
            "smape": M.smape(y, yhat),
            "bias": M.bias(y, yhat),
            "naive_mase": M.mase(y, base, insample[sid], season),
            "naive_smape": M.smape(y, base),
            "naive_bias": M.bias(y, base),
        }
        for lv in levels:
            row[f"coverage_{lv}"] = M.coverage(y, g[f"yhat_lower_{lv}"], g[f"yhat_upper_{lv}"])
        out.append(row)
    return pd.DataFrame(out)


def summary(scores: pd.DataFrame, levels) -> dict:
    """Means (and median MASE) over the series whose MASE is finite for both forecasts."""
    if scores.empty:
        return {"n_scored": 0}
    fin = scores[np.isfinite(scores["mase"]) & np.isfinite(scores["naive_mase"])]
    out = {
        "n_scored": int(len(scores)),
        "n_nonfinite_mase": int(len(scores) - len(fin)),
        "mase": float(fin["mase"].mean()),
        "median_mase": float(fin["mase"].median()),
        "naive_mase": float(fin["naive_mase"].mean()),
        "median_naive_mase": float(fin["naive_mase"].median()),
        "share_beating_naive": float((fin["mase"] < fin["naive_mase"]).mean()),
        "smape": float(scores["smape"].mean()),
        "naive_smape": float(scores["naive_smape"].mean()),
        "bias": float(scores["bias"].mean()),
        "naive_bias": float(scores["naive_bias"].mean()),
    }
    for lv in levels:
        out[f"coverage_{lv}"] = float(scores[f"coverage_{lv}"].mean())
    return out


def _decision(rep) -> dict:
    d = getattr(rep.train, "decision", None) if rep.train is not None else None
    if d is None:
        return {"promoted": None, "reason": rep.steps.get("train", ""), "challenger": None, "champion": None}
    return {
        "promoted": bool(d.promoted),
        "reason": d.reason,
        "challenger": d.challenger_version,
        "champion_before": d.champion_version,
        "insufficient": bool(d.insufficient),
    }


def run(
    data: Path, n_series: int | None, nights: int, reject: list[int], conf: str | None, work: Path
) -> dict:
    from forecasting.config import load_config
    from training.jobs.ingest import ingest
    from training.jobs.nightly import nightly
    from training.tables import Lakehouse

    src = first_series(data, n_series, work)
    history, days, step = split(pd.read_parquet(src), nights)
    season = int(DAY / step)
    (work / "raw").mkdir()
    history.to_parquet(work / "raw" / "history.parquet", index=False)
    base = load_config(conf, lakehouse=str(work / "lake"), horizon=season, **{"nightly.source": None})
    lake = Lakehouse.from_config(base)
    ingest(lake, work / "raw" / "history.parquet")
    per_night, all_scores, t_all = [], [], time.perf_counter()
    for k, day in enumerate(days):
        night = k + 1
        cfg = base.replace(**REJECT) if night in reject else base
        t0 = time.perf_counter()
        rep = nightly(lake, cfg)
        wall = time.perf_counter() - t0
        rows, check = next_horizon(lake, season, step)
        path = work / "raw" / f"day-{night}.parquet"
        day.to_parquet(path, index=False)
        ingest(lake, path)  # that day's readings arrive
        scores = score(rows, day, history, season, cfg.levels).assign(night=night)
        all_scores.append(scores)
        history = pd.concat([history, day], ignore_index=True).sort_values(
            [C.SERIES_ID, C.TS], ignore_index=True
        )
        per_night.append(
            {
                "night": night,
                "day_scored": str(day[C.TS].min().date()),
                "forced_reject": night in reject,
                **_decision(rep),
                **check,
                "n_missing": len(check["missing"]),
                "missing": check["missing"][:20],
                "nightly_failed": bool(rep.failed),
                "nightly_failure": rep.failure[:2000],
                "nightly_missing": dict(list(rep.missing.items())[:20]),
                "wall_s": round(wall, 1),
                "steps": rep.steps,
                **summary(scores, cfg.levels),
            }
        )
        print(_night_line(per_night[-1]), flush=True)
    scores = pd.concat(all_scores, ignore_index=True)
    totals = {
        "nights": nights,
        "nights_complete": sum(n["n_missing"] == 0 for n in per_night),
        "series_nights": sum(n["n_clean"] for n in per_night),
        "series_nights_with_horizon": sum(n["n_with_horizon"] for n in per_night),
        "promoted": sum(bool(n["promoted"]) for n in per_night),
        "kept": sum(n["promoted"] is False for n in per_night),
        "kept_forced": sum(n["promoted"] is False and n["forced_reject"] for n in per_night),
        "wall_s": round(time.perf_counter() - t_all, 1),
        **summary(scores, base.levels),
    }
    return {
        "data": str(data),
        "n_series": n_series,
        "models": base.models,
        "conf": conf,
        "horizon": season,
        "step": pd.tseries.frequencies.to_offset(step).freqstr,
        "reject": sorted(reject),
        "levels": base.levels,
        "per_night": per_night,
        "totals": totals,
    }


def _night_line(n: dict) -> str:
    gate = (
        "first"
        if n.get("champion_before") is None and n["promoted"]
        else ("promoted" if n["promoted"] else "kept")
    )
    return (
        f"night {n['night']}: {gate}{' (forced)' if n['forced_reject'] else ''}; "
        f"{n['n_with_horizon']}/{n['n_clean']} with the next horizon; "
        f"MASE {n.get('mase', float('nan')):.4f} vs naive {n.get('naive_mase', float('nan')):.4f}; {n['wall_s']} s"
    )


def markdown(r: dict, command: str) -> str:
    lv = r["levels"]
    t = r["totals"]
    subset = f" (first {r['n_series']} series)" if r["n_series"] else ""
    lines = [
        "# nights: every nightly ends with the next horizon, scored on the days that followed",
        "",
        f"Command: `{command}`",
        "",
        f"- data: {Path(r['data']).name}{subset}; the last {t['nights']} days held out, one night per day;"
        f" horizon {r['horizon']} steps of {r['step']}",
        f"- models: {', '.join(r['models'])} (config: {r['conf'] or 'conf/default.yaml'})",
        f"- gate forced to keep the champion on nights {', '.join(map(str, r['reject'])) or 'none'}"
        " (`gate.min_common_series: 1000000000`, `gate.insufficient: keep`)",
        f"- wall time of all nights: {t['wall_s']} s",
        "",
        "| night | day scored | gate | versions (series) | fits | clean | next horizon | missing |"
        f" MASE | naive MASE | beats naive | sMAPE | naive sMAPE | bias | {' | '.join(f'cover {x}%' for x in lv)} |",
        "|---" * (14 + len(lv)) + "|",
    ]
    for n in r["per_night"]:
        gate = (
            "first version" if n.get("champion_before") is None else ("promoted" if n["promoted"] else "kept")
        )
        if n["forced_reject"]:
            gate += " (forced)"
        lines.append(
            f"| {n['night']} | {n['day_scored']} | {gate} | {', '.join(f'{k}: {v}' for k, v in n['versions'].items())}"
            f" | {', '.join(f'{k} {v}' for k, v in n['fits'].items())} | {n['n_clean']} | {n['n_with_horizon']}"
            f" | {n['n_missing']} | {n.get('mase', float('nan')):.4f} | {n.get('naive_mase', float('nan')):.4f}"
            f" | {n.get('share_beating_naive', float('nan')):.0%} | {n.get('smape', float('nan')):.2f}"
            f" | {n.get('naive_smape', float('nan')):.2f} | {n.get('bias', float('nan')):+.4f} | "
            + " | ".join(f"{n.get(f'coverage_{x}', float('nan')):.1%}" for x in lv)
            + " |"
        )
    lines += [
        "",
        f"**Totals**: {t['nights_complete']} of {t['nights']} nights complete; "
        f"{t['series_nights_with_horizon']} of {t['series_nights']} series-nights with the next horizon; "
        f"gate: {t['promoted']} promoted, {t['kept']} kept ({t['kept_forced']} forced).",
        f"Over all series-nights ({t['n_scored']} scored, {t['n_nonfinite_mase']} with a non-finite MASE left out"
        f" of the MASE means): mean MASE **{t['mase']:.4f}** vs seasonal naive **{t['naive_mase']:.4f}** (median"
        f" {t['median_mase']:.4f} vs {t['median_naive_mase']:.4f}; the forecast beats naive on"
        f" {t['share_beating_naive']:.0%}); sMAPE {t['smape']:.2f} vs {t['naive_smape']:.2f}; bias"
        f" {t['bias']:+.4f} vs {t['naive_bias']:+.4f}; interval coverage "
        + ", ".join(f"{x}%: {t[f'coverage_{x}']:.1%}" for x in lv)
        + ".",
        "",
        "Gate decisions:",
        "",
        *[f"- night {n['night']}: {n['reason']}" for n in r["per_night"]],
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None, results: Path = RESULTS) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--series", type=int, default=None, help="only the first N households")
    ap.add_argument("--nights", type=int, default=7)
    ap.add_argument(
        "--reject", type=int, nargs="*", default=[2, 4, 6], help="nights the gate must keep the champion"
    )
    ap.add_argument("--conf", default=None, help="config file (default: conf/default.yaml)")
    args = ap.parse_args(argv)
    if not args.data.exists():
        raise SystemExit(f"{args.data} not found: pass --data PATH to the EDRP parquet file")
    with tempfile.TemporaryDirectory(prefix="mmf-nights-") as tmp:
        r = run(args.data, args.series, args.nights, args.reject, args.conf, Path(tmp))
    command = "python -m benchmarks.nights" + "".join(f" {a}" for a in (argv if argv is not None else []))
    md = markdown(r, command)
    save("nights", r, md, folder=results, argv=argv)
    print(md)
    return r


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
