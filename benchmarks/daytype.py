"""``seasonal_window``'s day types (``daytype: ignore | split | auto``), held out, one
day ahead, the model alone.

    python -m benchmarks.daytype [--edrp 200] [--generated 300] [--days 60]

For every series and each of the last 14 days (a development week, then a held-out
week): each variant is fitted on the history up to the day's first step and forecasts
the day (48 half-hours of EDRP, 24 hours of the generated meters); scored by MASE
against the series' in-sample daily seasonal naive MAE up to that cutoff. No nightly,
no model choice: what the day type does to the preferred model itself, per week and
per weekday, and how often ``auto`` split the day types. The weekly seasonal naive is
shown for scale. EDRP: the first ``--edrp`` households of ``../shared/data`` (skipped
when the file is absent); generated: ``--generated`` hourly meters x ``--days``
(:func:`forecasting.generator.generate`, seed 7, the meters of ``benchmarks.retrain``).
Results: benchmarks/results/daytype.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import first_ids, save
from benchmarks.real_data import DEFAULT_DATA
from forecasting.generator import generate
from forecasting.models import get_model

VARIANTS = {
    "ignore": ("seasonal_window", {"daytype": "ignore"}),
    "split": ("seasonal_window", {"daytype": "split"}),
    "auto": ("seasonal_window", {"daytype": "auto"}),
    "weekly_naive": ("weekly_naive", {}),
}
DAYS_SCORED = 14  # a development week, then a held-out week
MIN_DAYS = 28  # of history before the first scored day


def load(which: str, n: int, days: int, data: Path) -> tuple[pd.DataFrame, str, int]:
    """(series_id, ts, y) rows, the frequency and the steps per day."""
    if which == "edrp":
        frame = pd.read_parquet(data, columns=["series_id", "ts", "y"])
        keep = first_ids(frame["series_id"].unique(), n)
        return frame[frame["series_id"].isin(keep)], "30min", 48
    rows = generate(n_series=n, days=days, freq="h", seed=7, clean=True).readings
    return rows[["series_id", "ts", "y"]], "h", 24


def score(frame: pd.DataFrame, freq: str, m: int) -> pd.DataFrame:
    """One row per series, scored day and variant: MASE, and whether the day types were split."""
    rows = []
    for sid, g in frame.sort_values("ts").groupby("series_id"):
        y, ts = g["y"].to_numpy(float), g["ts"].to_numpy()
        for back in range(DAYS_SCORED, 0, -1):
            cut = len(y) - back * m
            if cut < MIN_DAYS * m:
                continue
            history, truth = y[:cut], y[cut : cut + m]
            scale = np.mean(np.abs(history[m:] - history[:-m]))
            if not scale > 0:
                continue
            day = pd.Timestamp(ts[cut])
            for variant, (name, params) in VARIANTS.items():
                model = get_model(name, season_length=m, seasonalities=(m, 7 * m), freq=freq, **params)
                fc = model.fit(history, None, ts[:cut]).predict(m, level=[80])["mean"]
                rows.append(
                    {
                        "series_id": sid,
                        "week": "development" if back > 7 else "held out",
                        "day": day.date().isoformat(),
                        "weekday": day.day_name(),
                        "variant": variant,
                        "mase": float(np.mean(np.abs(fc - truth)) / scale),
                        "split": getattr(model, "next_phase_", None) is not None,
                    }
                )
    return pd.DataFrame(rows)


def summary(scores: pd.DataFrame) -> dict:
    by_week = scores.pivot_table(index="week", columns="variant", values="mase", aggfunc="mean")
    by_day = scores.pivot_table(index="weekday", columns="variant", values="mase", aggfunc="mean")
    auto = scores[scores["variant"] == "auto"]
    return {
        "series": int(scores["series_id"].nunique()),
        "days": sorted(scores["day"].unique().tolist()),
        "by_week": by_week.round(4).to_dict(orient="index"),
        "by_weekday": by_day.round(4).to_dict(orient="index"),
        "auto_split_share": auto.groupby("week")["split"].mean().round(4).to_dict(),
    }


def markdown(results: dict, command: str) -> str:
    lines = [
        "# daytype: seasonal_window with and without day types, one day ahead, held out",
        "",
        f"Command: `{command}`",
        "",
        "Each series' last 14 days, one at a time: every variant fitted on the history up to the day and "
        "forecasting it, scored by MASE (in-sample daily seasonal naive MAE up to the cutoff). The model "
        "alone: no nightly, no choice. `ignore`: every day pooled (the default); `split`: each step pools "
        "the window's days of its own type (Mon-Fri, Sat-Sun); `auto`: split where leaving each day of "
        "the window out shows the split forecasts it better (by more than `split_margin`, 3%).",
        "",
    ]
    for name, r in results.items():
        cols = list(VARIANTS)
        lines += [
            f"## {name}: {r['series']} series, {r['days'][0]} to {r['days'][-1]}, {r['wall_s']:.0f} s",
            "",
            "| week | " + " | ".join(cols) + " | auto vs ignore | auto split |",
            "|---|" + "---|" * (len(cols) + 2),
        ]
        for week in ("development", "held out"):
            row = r["by_week"].get(week)
            if not row:
                continue
            change = row["auto"] / row["ignore"] - 1
            share = r["auto_split_share"].get(week, float("nan"))
            lines.append(
                f"| {week} | "
                + " | ".join(f"{row[c]:.4f}" for c in cols)
                + f" | {change:+.1%} | {share:.0%} |"
            )
        lines += ["", "| weekday (both weeks) | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for day in ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"):
            row = r["by_weekday"].get(day)
            if row:
                lines.append(f"| {day} | " + " | ".join(f"{row[c]:.4f}" for c in cols) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edrp", type=int, default=200, help="EDRP households (0: none)")
    ap.add_argument("--generated", type=int, default=300, help="generated meters (0: none)")
    ap.add_argument("--days", type=int, default=60, help="days of the generated meters")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", default="daytype")
    a = ap.parse_args(argv)
    results = {}
    for which, n in (("edrp", a.edrp), ("generated", a.generated)):
        if not n or (which == "edrp" and not a.data.exists()):
            continue
        clock = time.perf_counter()
        frame, freq, m = load(which, n, a.days, a.data)
        results[which] = {**summary(score(frame, freq, m)), "wall_s": time.perf_counter() - clock}
    args = list(argv) if argv is not None else sys.argv[1:]
    command = " ".join(["python -m benchmarks.daytype", *args])
    text = markdown(results, command)
    save(a.out, {"results": results}, text, argv=args, module="benchmarks.daytype")
    print(text)
    return results


if __name__ == "__main__":
    main()
