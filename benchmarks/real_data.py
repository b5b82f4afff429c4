"""Accuracy on the real EDRP half-hourly household data: do the chosen models beat
seasonal naive on mean MASE over the backtest windows?

    python -m benchmarks.real_data [--data ../shared/data/edrp_...parquet] [--series N]

Runs the real nightly job (ingest -> refine -> train -> forecast) with the default
config on a temporary lakehouse, then compares, over the series that were trained, the
mean backtest MASE of each series' chosen model with seasonal naive's on the same
windows (both read from gold/backtest). Results: benchmarks/results/real_data.{json,md}.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks.common import first_series, save

DEFAULT_DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "edrp_scotland_622hh_halfhourly_2009.parquet"
)


def run(data: Path, n_series: int | None, conf: str | None, name: str) -> dict:
    from forecasting.config import load_config
    from training.jobs.nightly import nightly
    from training.tables import Lakehouse

    with tempfile.TemporaryDirectory(prefix="mmf-real-") as tmp:
        src = first_series(data, n_series, Path(tmp))
        cfg = load_config(
            conf,
            lakehouse=str(Path(tmp) / "lake"),
            **{"nightly.source": str(src), "mlflow.tracking_uri": None},
        )
        lake = Lakehouse.from_config(cfg)
        t0 = time.perf_counter()
        rep = nightly(lake, cfg)
        wall = time.perf_counter() - t0
        bt = lake.read("gold/backtest")
        sel = lake.read("gold/selection")
        q = lake.read("silver/quarantine")

    chosen = sel[sel["status"].isin(["ok", "fallback"])].set_index("series_id")["model"]
    per_model = bt.groupby(["series_id", "model"])["mase"].mean().unstack()
    common = per_model.index.intersection(chosen.index)
    chosen_mase = pd.Series(
        {sid: per_model.loc[sid, chosen[sid]] for sid in common if chosen[sid] in per_model.columns}
    )
    naive = per_model.loc[chosen_mase.index, "seasonal_naive"]
    finite = chosen_mase.notna() & naive.notna() & (chosen_mase != float("inf")) & (naive != float("inf"))
    out = {
        "name": name,
        "models": cfg.models,
        "backtest_windows": cfg.backtest.windows,
        "horizon": cfg.horizon,
        "n_series_in": int(sel["series_id"].nunique()),
        "n_trained": int(len(chosen)),
        "n_quarantined": int(len(q)),
        "quarantine_reasons": q["reason"].value_counts().to_dict(),
        "wall_s": round(wall, 1),
        "mean_mase_chosen": float(chosen_mase[finite].mean()),
        "mean_mase_seasonal_naive": float(naive[finite].mean()),
        "median_mase_chosen": float(chosen_mase[finite].median()),
        "median_mase_seasonal_naive": float(naive[finite].median()),
        "share_series_beating_naive": float((chosen_mase[finite] < naive[finite]).mean()),
        "mean_mase_per_model": per_model.loc[chosen_mase.index[finite]].mean().round(4).to_dict(),
        "chosen_counts": chosen.value_counts().to_dict(),
        "steps": rep.steps,
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--series", type=int, default=None, help="only the first N households")
    ap.add_argument("--conf", default=None, help="config file (default: conf/default.yaml)")
    ap.add_argument("--name", default="real_data")
    args = ap.parse_args()
    if not args.data.exists():
        raise SystemExit(f"{args.data} not found: pass --data PATH to the EDRP parquet file")
    r = run(args.data, args.series, args.conf, args.name)
    md = [
        f"# {args.name}: chosen models vs seasonal naive on real EDRP household data",
        "",
        f"Command: `python -m benchmarks.{args.name if args.name == 'real_data' else 'real_data --name ' + args.name}"
        f"{' --conf ' + args.conf if args.conf else ''}{' --series ' + str(args.series) if args.series else ''}`",
        "",
        f"- data: {args.data.name}; {r['n_series_in']} series, {r['n_trained']} trained, {r['n_quarantined']} quarantined {r['quarantine_reasons']}",
        f"- models: {', '.join(r['models'])}; backtest windows {r['backtest_windows']}, horizon {r['horizon']}",
        f"- whole nightly wall time: {r['wall_s']} s",
        "",
        "| | mean MASE | median MASE |",
        "|---|---|---|",
        f"| chosen per series | {r['mean_mase_chosen']:.4f} | {r['median_mase_chosen']:.4f} |",
        f"| seasonal naive | {r['mean_mase_seasonal_naive']:.4f} | {r['median_mase_seasonal_naive']:.4f} |",
        "",
        f"Chosen model beats seasonal naive on {r['share_series_beating_naive']:.0%} of series.",
        "",
        "Mean MASE per candidate (same series): "
        + ", ".join(f"{k} {v}" for k, v in r["mean_mase_per_model"].items()),
        "",
        "Chosen: " + ", ".join(f"{k} {v}" for k, v in r["chosen_counts"].items()),
        "",
    ]
    save(args.name, r, "\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
