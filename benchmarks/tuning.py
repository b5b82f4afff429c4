"""Does per-series Hyperopt tuning improve the chosen models on the real EDRP data?

    python -m benchmarks.tuning [--series N] [--max-evals 10] [--tune-windows 3] [--workers 2]

Ingests the real half-hourly household data (``--series``: the first N households;
all 622 by default) into a temporary lakehouse, refines it once, then runs the real
train job twice on the same silver version: without tuning, and with ``tune.enabled``
(same models, same backtest windows). The number compared is the mean over series of
the chosen model's backtest MASE (``gold/selection.metric_value``; the default metric
is MASE), over the series both runs trained. Tuning happens on windows that end where
the selection window begins, so the tuned number is not flattered by leakage.

Results: benchmarks/results/tuning.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import first_series, save

DEFAULT_DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "edrp_scotland_622hh_halfhourly_2009.parquet"
)


def run(
    data: Path,
    n_series: int | None,
    max_evals: int,
    tune_windows: int,
    timeout_s: float,
    workers: int | None,
    conf: str | None,
) -> dict:
    from forecasting.config import load_config
    from training.jobs.ingest import ingest
    from training.jobs.refine import refine
    from training.jobs.train import train
    from training.tables import Lakehouse

    load = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory(prefix="mmf-tuning-") as tmp:
        src = first_series(data, n_series, Path(tmp))
        base = load_config(
            conf,
            lakehouse=str(Path(tmp) / "lake"),
            workers=workers,
            **{"mlflow.tracking_uri": None, "mlflow.sample_plots": 0},
        )
        lake = Lakehouse.from_config(base)
        ingest(lake, str(src))
        refine(lake, base)
        out: dict = {"runs": {}}
        for name, cfg in (
            ("untuned", base),
            (
                "tuned",
                base.replace(
                    **{
                        "tune.enabled": True,
                        "tune.max_evals": max_evals,
                        "tune.windows": tune_windows,
                        "tune.timeout_s": timeout_s,
                    }
                ),
            ),
        ):
            t0 = time.perf_counter()
            rep = train(lake, cfg)
            wall = time.perf_counter() - t0
            res = rep.results
            usable = res[res["status"].isin(["ok", "fallback"])]
            out["runs"][name] = {
                "wall_s": round(wall, 1),
                "status": rep.status_counts,
                "chosen": usable["model"].value_counts().to_dict(),
                "metric": usable.set_index("series_id")["metric_value"],
                "tuned": usable.set_index("series_id")["tuned_json"],
                "models": cfg.models,
            }
        out["n_quarantined"] = int(len(lake.read("silver/quarantine")))
        out["config"] = {
            "models": base.models,
            "backtest_windows": base.backtest.windows,
            "horizon": base.horizon,
            "metric": base.backtest.metric,
            "max_evals": max_evals,
            "tune_windows": tune_windows,
            "tune_timeout_s": timeout_s,
            "workers": workers,
        }
    u, t = out["runs"]["untuned"]["metric"], out["runs"]["tuned"]["metric"]
    both = u.index.intersection(t.index)
    u, t = u.loc[both], t.loc[both]
    finite = np.isfinite(u) & np.isfinite(t)
    u, t = u[finite], t[finite]
    adopted: dict[str, list[int]] = {}
    for payload in out["runs"]["tuned"]["tuned"]:
        for model, entry in json.loads(payload or "{}").items():
            a = adopted.setdefault(model, [0, 0])
            a[1] += 1
            a[0] += int(bool(entry.get("params")))
    return {
        "data": data.name,
        "n_series": int(len(both)),
        "n_compared": int(len(u)),
        "n_quarantined": out["n_quarantined"],
        "config": out["config"],
        "load_avg_1m_at_start": load,
        "mean_mase_untuned": float(u.mean()),
        "mean_mase_tuned": float(t.mean()),
        "median_mase_untuned": float(u.median()),
        "median_mase_tuned": float(t.median()),
        "relative_change": float(t.mean() / u.mean() - 1.0),
        "share_series_better": float((t < u - 1e-12).mean()),
        "share_series_worse": float((t > u + 1e-12).mean()),
        "tuned_values_adopted": {m: {"series": n, "adopted": a} for m, (a, n) in adopted.items()},
        "untuned": {k: v for k, v in out["runs"]["untuned"].items() if k not in ("metric", "tuned")},
        "tuned": {k: v for k, v in out["runs"]["tuned"].items() if k not in ("metric", "tuned")},
    }


def markdown(r: dict, command: str) -> str:
    c = r["config"]
    better = "better" if r["mean_mase_tuned"] < r["mean_mase_untuned"] else "NOT better"
    lines = [
        "# Per-series tuning on the real EDRP household data",
        "",
        f"Command: `{command}`",
        "",
        f"- data: {r['data']}; {r['n_series']} series trained by both runs ({r['n_quarantined']} quarantined), "
        f"{r['n_compared']} with a finite MASE in both",
        f"- models: {', '.join(c['models'])}; horizon {c['horizon']}, {c['backtest_windows']} selection window(s), metric {c['metric']}",
        f"- tuning: Hyperopt TPE, {c['max_evals']} evaluations and {c['tune_timeout_s']} s per series and model, on "
        f"{c['tune_windows']} window(s) ending where the selection window begins (no leakage), conf/search_spaces.yaml",
        f"- wall: untuned {r['untuned']['wall_s']} s, tuned {r['tuned']['wall_s']} s ({c['workers'] or 'all'} workers; "
        f"1-minute load average {r['load_avg_1m_at_start']} at start on a shared 2-core machine: timings are noisy)",
        "",
        "| | mean MASE of the chosen models | median |",
        "|---|---:|---:|",
        f"| untuned | {r['mean_mase_untuned']:.4f} | {r['median_mase_untuned']:.4f} |",
        f"| tuned | {r['mean_mase_tuned']:.4f} | {r['median_mase_tuned']:.4f} |",
        "",
        f"Tuned is {better}: {100 * r['relative_change']:+.2f}% mean MASE; the chosen model's MASE is lower on "
        f"{r['share_series_better']:.0%} of series and higher on {r['share_series_worse']:.0%}.",
        "",
        "Tuned values adopted (beat the configured ones on the tuning windows): "
        + ", ".join(f"{m} {v['adopted']}/{v['series']}" for m, v in r["tuned_values_adopted"].items()),
        "",
        "Chosen untuned: " + ", ".join(f"{k} {v}" for k, v in r["untuned"]["chosen"].items()),
        "",
        "Chosen tuned: " + ", ".join(f"{k} {v}" for k, v in r["tuned"]["chosen"].items()),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--series", type=int, default=None, help="only the first N households")
    ap.add_argument("--max-evals", type=int, default=10)
    ap.add_argument("--tune-windows", type=int, default=3)
    ap.add_argument("--timeout-s", type=float, default=30)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--conf", default=None, help="config file (default: conf/default.yaml)")
    args = ap.parse_args()
    if not args.data.exists():
        raise SystemExit(f"{args.data} not found: pass --data PATH to the EDRP parquet file")
    r = run(
        args.data, args.series, args.max_evals, args.tune_windows, args.timeout_s, args.workers, args.conf
    )
    command = "python -m benchmarks.tuning" + "".join(
        f" {flag} {value}"
        for flag, value in (
            ("--series", args.series),
            ("--max-evals", args.max_evals),
            ("--tune-windows", args.tune_windows),
            ("--timeout-s", args.timeout_s),
            ("--workers", args.workers),
            ("--conf", args.conf),
        )
        if value is not None
    )
    md = markdown(r, command)
    save("tuning", r, md)
    print(md)


if __name__ == "__main__":
    main()
