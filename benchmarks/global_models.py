"""Global vs per-series models on a collection of similar meters: are the global models
both the cheapest per series and the most accurate?

    python -m benchmarks.global_models                      # 200 hourly meters x 60 days
    python -m benchmarks.global_models --series 50 --days 30
    python -m benchmarks.global_models --smoke              # 8 meters, tiny models (CI-sized)

Runs the real jobs (ingest -> refine -> train) on generated clean meters (with
temperature) on a temporary lakehouse, every candidate in one train job: the default
per-series models (seasonal_naive, weekly_naive, ets, theta, mstl) and global_gbm and
global_nn (when torch is installed), ``--windows`` backtest windows of horizon 48. Per
model, from the run's TRAIN_RESULT rows:

- ``cost_s_per_series``: mean ``candidates_json[model].fit_s``: the per-series model's
  backtest time on that series; for a global model, its driver time (every window fit,
  the full fit and all forecasts) divided by the number of series;
- ``mean_mase``: mean over series of the model's backtest MASE (mean of its windows),
  over the series where every model has a finite score;
- ``chosen``: series that chose it.

Results: benchmarks/results/global_models.{json,md}. Timings come from one machine and
are noisy when it is busy (the 1-minute load average is recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import save

PER_SERIES = ["seasonal_naive", "weekly_naive", "ets", "theta", "mstl"]


def run(n_series: int, days: int, windows: int, seed: int, smoke: bool, num_processes: int) -> dict:
    from forecasting.config import load_config
    from forecasting.generator import generate, write
    from forecasting.models import unavailable_reason
    from training.jobs.ingest import ingest
    from training.jobs.refine import refine
    from training.jobs.train import train
    from training.tables import Lakehouse

    models = PER_SERIES + ["global_gbm"] + ([] if unavailable_reason("global_nn") else ["global_nn"])
    params = {}
    if smoke:
        params = {
            "global_nn": {"epochs": 2, "hidden": 16, "windows_per_series": 8},
            "global_gbm": {"num_boost_round": 20, "min_data_in_leaf": 5},
        }
    with tempfile.TemporaryDirectory(prefix="mmf-bench-global-") as tmp:
        src = Path(tmp) / "meters.parquet"
        write(generate(n_series=n_series, days=days, freq="h", seed=seed, clean=True), src)
        cfg = load_config(
            lakehouse=str(Path(tmp) / "lake"),
            horizon=48,
            models=models,
            model_params=params,
            seed=seed,
            **{
                "backtest.windows": windows,
                "mlflow.tracking_uri": None,
                "deep.num_processes": num_processes,
                "mlflow.sample_plots": 0,
            },
        )
        lake = Lakehouse.from_config(cfg)
        ingest(lake, str(src))
        refine(lake, cfg)
        t0 = time.perf_counter()
        rep = train(lake, cfg)
        wall = time.perf_counter() - t0
    res = rep.results[rep.results["status"].isin(["ok", "fallback"])]
    cost = pd.DataFrame([{k: v["fit_s"] for k, v in json.loads(c).items()} for c in res["candidates_json"]])
    rows = []
    for sid, payload in zip(res["series_id"], res["backtest_json"]):
        for b in json.loads(payload):
            rows.append({"series_id": sid, "model": b["model"], "mase": b["mase"]})
    bt = pd.DataFrame(rows).groupby(["series_id", "model"])["mase"].mean().unstack()
    finite = bt.replace([np.inf, -np.inf], np.nan).dropna()
    chosen = res["model"].value_counts().to_dict()
    per_model = {}
    for m in models:
        per_model[m] = {
            "cost_s_per_series": float(cost[m].mean()) if m in cost else None,
            "mean_mase": float(finite[m].mean()) if m in finite else None,
            "median_mase": float(finite[m].median()) if m in finite else None,
            "chosen": int(chosen.get(m, 0)),
        }
    chosen_mase = float(
        np.mean([finite.loc[s, m] for s, m in zip(res["series_id"], res["model"]) if s in finite.index])
    )
    per_series = [m for m in models if m in PER_SERIES and per_model[m]["mean_mase"] is not None]
    best_local = min(per_series, key=lambda m: per_model[m]["mean_mase"])
    return {
        "n_series": n_series,
        "days": days,
        "freq": "h",
        "horizon": 48,
        "backtest_windows": windows,
        "models": models,
        "model_params": params,
        "deep_num_processes": num_processes,
        "n_scored": int(len(finite)),
        "train_wall_s": round(wall, 1),
        "train_timings": rep.timings,
        "load_avg_1m_at_start": _load,
        "per_model": per_model,
        "chosen_mean_mase": chosen_mase,
        "best_per_series_model": best_local,
        "global_models_note": _verdict(per_model, models, best_local),
    }


def _verdict(per_model: dict, models: list[str], best_local: str) -> dict:
    out = {}
    for g in [m for m in models if m.startswith("global_")]:
        p = per_model[g]
        cheaper = [
            m
            for m in models
            if m != g
            and per_model[m]["cost_s_per_series"] is not None
            and per_model[m]["cost_s_per_series"] < p["cost_s_per_series"]
        ]
        out[g] = {
            "more_accurate_than_best_per_series": bool(p["mean_mase"] < per_model[best_local]["mean_mase"]),
            "models_cheaper_per_series": cheaper,
        }
    return out


_load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def markdown(r: dict, command: str) -> str:
    lines = [
        "# Global vs per-series models on similar meters",
        "",
        f"Command: `{command}`",
        "",
        f"- data: {r['n_series']} generated hourly meters x {r['days']} days (clean, with temperature), "
        f"horizon {r['horizon']}, {r['backtest_windows']} backtest window(s); {r['n_scored']} series scored by every model",
        f"- one train job with every candidate: {r['train_wall_s']} s wall ({', '.join(f'{k} {v:.1f}' for k, v in r['train_timings'].items())}); "
        f"1-minute load average at start {r['load_avg_1m_at_start']} on this shared 2-core machine (timings are noisy)",
        f"- global_nn trained with {r['deep_num_processes']} process(es)"
        if "global_nn" in r["models"]
        else "- global_nn: torch not installed, not run",
        "",
        "| model | cost per series (s) | mean MASE | median MASE | chosen |",
        "|---|---:|---:|---:|---:|",
    ]
    for m, p in r["per_model"].items():
        cost = "n/a" if p["cost_s_per_series"] is None else f"{p['cost_s_per_series']:.4f}"
        mean = "n/a" if p["mean_mase"] is None else f"{p['mean_mase']:.4f}"
        med = "n/a" if p["median_mase"] is None else f"{p['median_mase']:.4f}"
        lines.append(f"| {m} | {cost} | {mean} | {med} | {p['chosen']} |")
    lines += [
        "",
        f"Chosen model per series: mean MASE {r['chosen_mean_mase']:.4f}. Best per-series model on mean MASE: {r['best_per_series_model']}.",
        "",
    ]
    for g, v in r["global_models_note"].items():
        acc = "more accurate" if v["more_accurate_than_best_per_series"] else "not more accurate"
        cheap = (
            "the cheapest per series"
            if not v["models_cheaper_per_series"]
            else f"not the cheapest (cheaper: {', '.join(v['models_cheaper_per_series'])})"
        )
        lines.append(f"- {g}: {acc} than the best per-series model on mean MASE; {cheap}.")
    lines += [
        "",
        "Cost per series of a per-series model is its backtest time on that series; of a global model, its whole "
        "driver time (fits per window and on the full history, forecasts) divided by the number of series. The "
        "refit of the chosen model is not counted for anyone.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--series", type=int, default=200)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--windows", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--processes", type=int, default=1, help="deep.num_processes for global_nn")
    ap.add_argument("--smoke", action="store_true", help="8 meters x 21 days, tiny global models")
    args = ap.parse_args()
    if args.smoke:
        args.series, args.days, args.windows = 8, 21, 1
    r = run(args.series, args.days, args.windows, args.seed, args.smoke, args.processes)
    command = "python -m benchmarks.global_models" + (
        " --smoke"
        if args.smoke
        else f" --series {args.series} --days {args.days} --windows {args.windows}"
        + (f" --processes {args.processes}" if args.processes != 1 else "")
    )
    md = markdown(r, command)
    if not args.smoke:
        save("global_models", r, md)
    print(md)


if __name__ == "__main__":
    main()
