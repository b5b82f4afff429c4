"""Held-out accuracy, the way users run the product: the last days of a dataset held
out, one real nightly per day, the day's readings ingested after it, and every night's
Gold forecasts scored on the day that followed.

    python -m benchmarks.real_data [--data PATH | --generated N] [--series N] [--nights 7]
        [--skip-days 0] [--conf FILE] [--candidates NAME ... | --candidates none] [--name real_data]

The last ``--nights`` whole days of the data (after dropping the last ``--skip-days``:
``--skip-days 7`` holds out the week *before* the last one, a development week to try
settings on without looking at the recorded one) are held out. The history before them
is ingested into a temporary lakehouse; then, per day: the real nightly job
(:func:`training.jobs.nightly.nightly`: refine -> train -> gate -> forecast), the newest
horizon of every clean series read from gold/forecasts, the day's readings ingested.

Scored per series and night, on the day's actuals (horizon = one day of steps), with
:func:`forecasting.metrics.evaluate`: MASE (scaled by the in-sample daily seasonal
naive MAE of the history up to the night), sMAPE, bias, and per interval level the
coverage and the pinball loss (the mean of the losses of the lower and upper bound),
for these forecasters:

* ``mmf``: what the nightly delivered (gold/forecasts);
* ``naive_daily`` / ``naive_weekly``: the same steps one day / one week earlier (no
  intervals);
* ``only:<model>``, per ``--candidates`` (default: every model of the config): that
  model forced as the only candidate (``models: [<model>]``, everything else as
  configured, calibration and bounds included), trained by the same per-series function
  the nightly runs (:func:`forecasting.pipeline.process_series`) on the very silver rows
  the nightly trained on, and forecast from its refit on them. Held out like ``mmf``:
  nothing after the night's cutoff is read.

Every night also records what the split check needs (``split``): the latest silver
reading the night trained on, the latest target of any gold/backtest window, the first
and last scored timestamp; ``tests/test_benchmarks_smoke.py`` asserts that the first two
are before the held-out day and the scored ones inside it.

``benchmarks/nights.py`` is a thin entry point over :func:`run` (forced gate decisions,
delivery completeness). Results: benchmarks/results/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from benchmarks.common import RESULTS, first_series, save
from forecasting import contract as C
from forecasting import metrics as M

DEFAULT_DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "edrp_scotland_622hh_halfhourly_2009.parquet"
)
DAY = pd.Timedelta("1D")
REJECT = {"gate.insufficient": "keep", "gate.min_common_series": 1_000_000_000}
MMF, NAIVE_DAILY, NAIVE_WEEKLY = "mmf", "naive_daily", "naive_weekly"


# -- the split -------------------------------------------------------------------------
def split(
    frame: pd.DataFrame, nights: int, skip_days: int = 0
) -> tuple[pd.DataFrame, list[pd.DataFrame], pd.Timedelta]:
    """The history before the held-out days, the ``nights`` held-out whole days (the last
    ones after dropping ``skip_days``), and the data's step."""
    frame = frame[[C.SERIES_ID, C.TS, C.Y]].sort_values([C.SERIES_ID, C.TS], ignore_index=True)
    first = frame[frame[C.SERIES_ID] == frame[C.SERIES_ID].iloc[0]]
    step = pd.Timedelta(first[C.TS].diff().mode().iloc[0])
    end = frame[C.TS].max().normalize() + DAY - skip_days * DAY
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


# -- forecasts of the forced single candidates ----------------------------------------
def candidate_rows(lake, cfg, name: str, horizon: int, step: pd.Timedelta) -> tuple[pd.DataFrame, Any]:
    """``name`` forced as the only model, trained on the lake's current silver readings
    (what the night trained on) by ``process_series`` through the local engine, and its
    forecast of the ``horizon`` steps after each series' end, in gold/forecasts' columns
    (``yhat``, ``yhat_lower_<lv>``, ``yhat_upper_<lv>``). Also the latest silver reading read."""
    from forecasting.models import load_fitted, model_class
    from forecasting.pipeline import process_series
    from training.engines.base import GroupJob
    from training.engines.local import LocalEngine

    silver = lake.read("silver/readings")
    silver = silver[silver[C.SERIES_ID].isin(lake.read("silver/series", columns=[C.SERIES_ID])[C.SERIES_ID])]
    if not model_class(name).supports_exog:
        silver = silver.drop(columns=[c for c in C.EXOG if c in silver.columns])
    one = cfg.replace(models=[name], **{"ensemble.enabled": False})
    job = GroupJob(by=C.SERIES_ID, fn=process_series, schema=C.TRAIN_RESULT, config=one)
    res = LocalEngine.from_config(one).run(silver, job)
    out = []
    levels = list(cfg.levels)
    for r in res[res["model_json"].astype(bool)].itertuples(index=False):
        fc = load_fitted(r.model_json).predict(horizon, level=levels)
        part = {
            C.SERIES_ID: r.series_id,
            C.TS: pd.Timestamp(r.end) + step * np.arange(1, horizon + 1),
            "yhat": fc["mean"],
            "model": r.model,
        }
        for lv in levels:
            part[f"yhat_lower_{lv}"], part[f"yhat_upper_{lv}"] = fc[f"lo-{lv}"], fc[f"hi-{lv}"]
        out.append(pd.DataFrame(part))
    rows = pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=[C.SERIES_ID, C.TS, "yhat"])
    return rows, silver[C.TS].max()


# -- scoring ---------------------------------------------------------------------------
def naive_rows(history: pd.DataFrame, days_back: int) -> pd.DataFrame:
    """The seasonal naive forecast ``days_back`` days back: each reading moved forward."""
    rows = history[history[C.TS] >= history[C.TS].max() - days_back * DAY + pd.Timedelta(1, "us")]
    return rows.assign(**{C.TS: rows[C.TS] + days_back * DAY}).rename(columns={C.Y: "yhat"})


def score(
    forecasts: dict[str, pd.DataFrame], actuals: pd.DataFrame, history: pd.DataFrame, season: int, levels
) -> pd.DataFrame:
    """One row per (forecaster, series): every :func:`forecasting.metrics.evaluate`
    metric of its forecast on the actuals it covers (``n_points``), MASE scaled by the
    series' in-sample daily seasonal naive MAE of ``history``."""
    insample = {sid: g[C.Y].to_numpy() for sid, g in history.groupby(C.SERIES_ID)}
    out = []
    for who, rows in forecasts.items():
        both = actuals[[C.SERIES_ID, C.TS, C.Y]].merge(rows, on=[C.SERIES_ID, C.TS])
        for sid, g in both.groupby(C.SERIES_ID):
            fc = {"mean": g["yhat"].to_numpy(dtype=float)}
            for lv in levels:
                if f"yhat_lower_{lv}" in g:
                    fc[f"lo-{lv}"] = g[f"yhat_lower_{lv}"].to_numpy(dtype=float)
                    fc[f"hi-{lv}"] = g[f"yhat_upper_{lv}"].to_numpy(dtype=float)
            metrics = M.evaluate(g[C.Y].to_numpy(dtype=float), fc, insample[sid], season, levels)
            model = g["model"].iloc[0] if "model" in g else who
            out.append({"who": who, C.SERIES_ID: sid, "n_points": len(g), "model": model, **metrics})
    return pd.DataFrame(out)


def common_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """The rows of the (night, series) that ``mmf`` and the daily naive both scored with
    a finite MASE: every forecaster is compared on the same series-nights."""
    key = ["night", C.SERIES_ID]
    ok = scores[np.isfinite(scores["mase"])]
    both = ok[ok["who"] == MMF][key].merge(ok[ok["who"] == NAIVE_DAILY][key])
    return scores.merge(both, on=key)


def summary(scores: pd.DataFrame, levels, who: str = MMF) -> dict:
    """Means of ``who``'s metrics over the common series-nights (MASE: finite ones), and
    the share of them where it beats the daily naive."""
    mine = scores[scores["who"] == who]
    if mine.empty:
        return {"n_scored": 0}
    fin = mine[np.isfinite(mine["mase"])]
    naive = scores[scores["who"] == NAIVE_DAILY].set_index(["night", C.SERIES_ID])["mase"]
    paired = fin.set_index(["night", C.SERIES_ID])["mase"]
    paired, naive = paired.align(naive, join="inner")
    out = {
        "n_scored": int(len(mine)),
        "n_nonfinite_mase": int(len(mine) - len(fin)),
        "mase": float(fin["mase"].mean()),
        "median_mase": float(fin["mase"].median()),
        "smape": float(mine["smape"].mean()),
        "bias": float(mine["bias"].mean()),
        "share_beating_naive": float((paired < naive).mean()) if len(paired) else float("nan"),
    }
    for lv in levels:
        out[f"coverage_{lv}"] = float(mine[f"coverage_{lv}"].mean())
        out[f"pinball_{lv}"] = float(mine[f"pinball_{lv}"].mean())
    return out


def with_naive(s: dict, scores: pd.DataFrame, levels) -> dict:
    """``summary`` of ``mmf`` with the daily naive's MASE, sMAPE and bias beside it."""
    base = summary(scores, levels, NAIVE_DAILY)
    return {
        **s,
        "naive_mase": base.get("mase", float("nan")),
        "median_naive_mase": base.get("median_mase", float("nan")),
        "naive_smape": base.get("smape", float("nan")),
        "naive_bias": base.get("bias", float("nan")),
    }


# -- the nights -------------------------------------------------------------------------
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


def _split_check(lake, day_start, silver_end, scored: pd.DataFrame, cand_end, horizon, step) -> dict:
    """What the night trained and chose on, against the held-out day it is scored on."""
    bt = lake.read("gold/backtest", columns=["cutoff"])
    bt_last = bt["cutoff"].astype("datetime64[us]").max() + horizon * step if len(bt) else None
    return {
        "day_start": str(day_start),
        "train_silver_end": str(silver_end),
        "backtest_last_target": str(bt_last),
        "candidates_silver_end": str(cand_end) if cand_end is not None else None,
        "scored_first": str(scored[C.TS].min()) if len(scored) else None,
        "scored_last": str(scored[C.TS].max()) if len(scored) else None,
    }


def _night(
    lake, cfg, day, history, season, step, candidates, raw: Path
) -> tuple[Any, pd.DataFrame, dict, dict]:
    """One night: the nightly, its delivery, the forced candidates, then the day's
    readings ingested; the scores of every forecaster on that day."""
    from training.jobs.ingest import ingest
    from training.jobs.nightly import nightly

    t0 = time.perf_counter()
    rep = nightly(lake, cfg)
    wall = time.perf_counter() - t0
    rows, check = next_horizon(lake, season, step)
    silver_end = lake.read("silver/readings", columns=[C.TS])[C.TS].max()
    forecasts = {MMF: rows, NAIVE_DAILY: naive_rows(history, 1), NAIVE_WEEKLY: naive_rows(history, 7)}
    cand_end, t1 = None, time.perf_counter()
    for name in candidates:
        forecasts[f"only:{name}"], end = candidate_rows(lake, cfg, name, season, step)
        cand_end = end if cand_end is None else max(cand_end, end)
    cand_s = time.perf_counter() - t1
    path = raw / f"day-{day[C.TS].min():%Y%m%d}.parquet"
    day.to_parquet(path, index=False)
    ingest(lake, path)  # that day's readings arrive
    scores = score(forecasts, day, history, season, cfg.levels)
    scored = day.merge(rows[[C.SERIES_ID, C.TS]], on=[C.SERIES_ID, C.TS])
    split_check = _split_check(lake, day[C.TS].min(), silver_end, scored, cand_end, season, step)
    return rep, scores, {**check, "wall_s": round(wall, 1), "candidates_s": round(cand_s, 1)}, split_check


def run(
    data: Path,
    n_series: int | None,
    nights: int,
    conf: str | None,
    work: Path,
    reject: Sequence[int] = (),
    skip_days: int = 0,
    candidates: Sequence[str] | None = None,
) -> dict:
    """Simulate ``nights`` nights on ``data`` in ``work``; ``reject``: nights the gate is
    made to keep the champion; ``candidates``: models scored forced alone (``None``: the
    config's models)."""
    from forecasting.config import load_config
    from training.jobs.ingest import ingest
    from training.tables import Lakehouse

    src = first_series(data, n_series, work)
    history, days, step = split(pd.read_parquet(src), nights, skip_days)
    season = int(DAY / step)
    (work / "raw").mkdir()
    history.to_parquet(work / "raw" / "history.parquet", index=False)
    base = load_config(conf, lakehouse=str(work / "lake"), horizon=season, **{"nightly.source": None})
    cands = list(dict.fromkeys(base.models if candidates is None else candidates))
    lake = Lakehouse.from_config(base)
    ingest(lake, work / "raw" / "history.parquet")
    per_night, all_scores, t_all = [], [], time.perf_counter()
    for k, day in enumerate(days):
        night = k + 1
        cfg = base.replace(**REJECT) if night in reject else base
        rep, scores, check, split_check = _night(lake, cfg, day, history, season, step, cands, work / "raw")
        scores = scores.assign(night=night)
        all_scores.append(scores)
        history = pd.concat([history, day], ignore_index=True).sort_values(
            [C.SERIES_ID, C.TS], ignore_index=True
        )
        common = common_scores(scores)
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
                "steps": rep.steps,
                "split": split_check,
                **with_naive(summary(common, cfg.levels), common, cfg.levels),
                "by": {who: summary(common, cfg.levels, who) for who in common["who"].unique()},
            }
        )
        print(night_line(per_night[-1]), flush=True)
    return _result(
        data, n_series, base, nights, skip_days, reject, cands, season, step, per_night, all_scores, t_all
    )


def _result(
    data, n_series, base, nights, skip_days, reject, cands, season, step, per_night, all_scores, t_all
):
    scores = pd.concat(all_scores, ignore_index=True)
    common = common_scores(scores)
    whos = [MMF, NAIVE_DAILY, NAIVE_WEEKLY, *(f"only:{c}" for c in cands)]
    chosen = scores[scores["who"] == MMF]["model"].value_counts()
    totals = {
        "nights": nights,
        "nights_complete": sum(n["n_missing"] == 0 for n in per_night),
        "series_nights": sum(n["n_clean"] for n in per_night),
        "series_nights_with_horizon": sum(n["n_with_horizon"] for n in per_night),
        "promoted": sum(bool(n["promoted"]) for n in per_night),
        "kept": sum(n["promoted"] is False for n in per_night),
        "kept_forced": sum(n["promoted"] is False and n["forced_reject"] for n in per_night),
        "wall_s": round(time.perf_counter() - t_all, 1),
        "nightly_wall_s": round(sum(n["wall_s"] for n in per_night), 1),
        **with_naive(summary(common, base.levels), common, base.levels),
    }
    return {
        "data": str(data),
        "n_series": n_series,
        "models": base.models,
        "ensemble": base.ensemble.enabled,
        "backtest_windows": base.backtest.windows,
        "candidates": cands,
        "horizon": season,
        "step": pd.tseries.frequencies.to_offset(step).freqstr,
        "skip_days": skip_days,
        "reject": sorted(reject),
        "levels": base.levels,
        "per_night": per_night,
        "totals": totals,
        "by": {who: summary(common, base.levels, who) for who in whos},
        "chosen": {str(k): int(v) for k, v in chosen.items()},
    }


def night_line(n: dict, candidates: bool = True) -> str:
    """One night's progress line (``candidates``: with the time the forced candidates took)."""
    gate = (
        "first"
        if n.get("champion_before") is None and n["promoted"]
        else ("promoted" if n["promoted"] else "kept")
    )
    return (
        f"night {n['night']}: {gate}{' (forced)' if n['forced_reject'] else ''}; "
        f"{n['n_with_horizon']}/{n['n_clean']} with the next horizon; "
        f"MASE {n.get('mase', float('nan')):.4f} vs naive {n.get('naive_mase', float('nan')):.4f}; {n['wall_s']} s"
        + (f" (+{n['candidates_s']} s candidates)" if candidates else "")
    )


# -- the report ------------------------------------------------------------------------
def _label(who: str) -> str:
    labels = {
        MMF: "**the nightly (Gold forecasts)**",
        NAIVE_DAILY: "seasonal naive, daily (yesterday)",
        NAIVE_WEEKLY: "seasonal naive, weekly (a week ago)",
    }
    return labels.get(who) or f"{who.split(':', 1)[-1]} forced alone"


def markdown(r: dict, command: str) -> str:
    lv = r["levels"]
    t = r["totals"]
    base = r["by"][NAIVE_DAILY].get("mase", float("nan"))
    where = (
        f"the last {t['nights']} days"
        if not r["skip_days"]
        else (
            f"the {t['nights']} days before the last {r['skip_days']} (a development week; the last"
            f" {r['skip_days']} days are not read)"
        )
    )
    subset = f" (first {r['n_series']} series)" if r["n_series"] else ""
    lines = [
        "# real_data: held-out accuracy, one real nightly per day",
        "",
        f"Command: `{command}`",
        "",
        f"- data: {Path(r['data']).name}{subset}; {where} held out, one nightly per day, the day's readings"
        f" ingested after it; horizon {r['horizon']} steps of {r['step']}",
        f"- config: {r.get('conf') or 'conf/default.yaml'}: models {', '.join(r['models'])}; ensemble"
        f" {'on' if r['ensemble'] else 'off'}; backtest windows {r['backtest_windows']}",
        f"- {t['series_nights_with_horizon']} of {t['series_nights']} series-nights delivered the next horizon;"
        f" {t['n_scored']} scored on the same series-nights for every row below ({t['n_nonfinite_mase']}"
        " with a non-finite MASE left out of the MASE means)",
        f"- wall time: {t['wall_s']} s in all, of which the nightly jobs {t['nightly_wall_s']} s",
        "- chosen models (series-nights): " + ", ".join(f"{k} {v}" for k, v in r["chosen"].items()),
        "",
        "| forecaster | mean MASE | vs daily naive | median MASE | beats daily naive | sMAPE | bias | "
        + " | ".join(f"cover {x}% | pinball {x}%" for x in lv)
        + " |",
        "|---" * (7 + 2 * len(lv)) + "|",
    ]
    for who, s in r["by"].items():
        if not s.get("n_scored"):
            continue
        lines.append(
            f"| {_label(who)} | {s['mase']:.4f} | {1 - s['mase'] / base:+.1%} | {s['median_mase']:.4f}"
            f" | {s['share_beating_naive']:.0%} | {s['smape']:.2f} | {s['bias']:+.4f} | "
            + " | ".join(f"{s[f'coverage_{x}']:.1%} | {s[f'pinball_{x}']:.4f}" for x in lv)
            + " |"
        )
    lines += [
        "",
        "Per night (the nightly's forecasts):",
        "",
        "| night | day scored | series | MASE | daily naive MASE | vs naive | "
        + " | ".join(f"cover {x}%" for x in lv)
        + " | nightly s |",
        "|---" * (7 + len(lv)) + "|",
    ]
    for n in r["per_night"]:
        lines.append(
            f"| {n['night']} | {n['day_scored']} | {n['n_scored']} | {n['mase']:.4f} | {n['naive_mase']:.4f}"
            f" | {1 - n['mase'] / n['naive_mase']:+.1%} | "
            + " | ".join(f"{n[f'coverage_{x}']:.1%}" for x in lv)
            + f" | {n['wall_s']} |"
        )
    return "\n".join(lines) + "\n"


def generated(n: int, days: int, folder: Path, seed: int = 0) -> Path:
    """``n`` clean hourly meters of ``days`` days from :mod:`forecasting.generator`."""
    from forecasting.generator import generate, write

    return write(
        generate(n_series=n, days=days, freq="h", seed=seed, clean=True), folder / "generated.parquet"
    )


def main(argv: list[str] | None = None, results: Path = RESULTS) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--generated", type=int, default=None, help="N generated hourly meters instead of --data")
    ap.add_argument("--days", type=int, default=60, help="days of the generated meters")
    ap.add_argument("--series", type=int, default=None, help="only the first N households")
    ap.add_argument("--nights", type=int, default=7)
    ap.add_argument(
        "--skip-days", type=int, default=0, help="drop the last N days first (a development week)"
    )
    ap.add_argument("--conf", default=None, help="config file (default: conf/default.yaml)")
    ap.add_argument("--candidates", nargs="*", default=None, help="models scored forced alone ('none': none)")
    ap.add_argument("--name", default="real_data", help="results file name")
    args = ap.parse_args(argv)
    cands = [] if args.candidates in (["none"], []) else args.candidates
    argv = list(argv if argv is not None else [])
    with tempfile.TemporaryDirectory(prefix="mmf-real-") as tmp:
        data = args.data if args.generated is None else generated(args.generated, args.days, Path(tmp))
        if not data.exists():
            raise SystemExit(f"{data} not found: pass --data PATH to the EDRP parquet file")
        r = run(
            data, args.series, args.nights, args.conf, Path(tmp), skip_days=args.skip_days, candidates=cands
        )
    r["conf"] = args.conf
    r["command"] = "python -m benchmarks.real_data" + "".join(f" {a}" for a in argv)
    if args.generated is not None:
        r["data"] = f"generated: {args.generated} clean hourly meters x {args.days} days (seed 0)"
    md = markdown(r, r["command"])
    save(args.name, r, md, folder=results, argv=argv)
    print(md)
    return r


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
