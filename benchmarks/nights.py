"""Simulated nights on the real EDRP data: does every nightly end with the next horizon
for every clean series, whatever the gate decides, and how good are those forecasts?

    python -m benchmarks.nights [--data PATH] [--series N] [--nights 7] [--reject 2 4 6] [--conf FILE]

A thin entry point over :func:`benchmarks.real_data.run` (the held-out benchmark's
machinery: split, nights, delivery check, scoring), with its own report.

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
from pathlib import Path

from benchmarks.common import RESULTS, save
from benchmarks.real_data import DEFAULT_DATA, REJECT
from benchmarks.real_data import run as held_out

__all__ = ["REJECT", "main", "markdown", "run"]


def run(
    data: Path, n_series: int | None, nights: int, reject: list[int], conf: str | None, work: Path
) -> dict:
    """:func:`benchmarks.real_data.run` with the gate forced on ``reject`` and no forced
    candidates: the delivery of every night and the Gold forecasts' accuracy."""
    r = held_out(data, n_series, nights, conf, work, reject=reject, candidates=[])
    r["conf"] = conf
    return r


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
