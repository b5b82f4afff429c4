"""Held-out accuracy with vs without covariates, for the models that take regressors.

    nice -n 10 python -m benchmarks.covariates                       # generated + EDRP
    nice -n 10 python -m benchmarks.covariates --data generated      # one data set (keeps the other's rows)
    python -m benchmarks.covariates --smoke                    # 4 series, 1 window (CI-sized)

Each series goes through :func:`forecasting.pipeline.process_series` (the per-series step
of ``mmf train``; the global model trained first by
:func:`training.global_models.train_global_models`) with one candidate at a time, and the
score is the mean over series of that candidate's backtest MASE: ``--windows`` held-out
windows of horizon ``--horizon`` at the end of each series. Covariates are read as the
leakage rule says: a window sees only values issued by its cutoff
(:mod:`forecasting.covariates`).

Conditions:

* ``none``: no regressor;
* ``covariates``: declared covariates and the public-holiday regressor (``holidays: true``);
* ``oracle`` (generated data only): the observed temperature of the forecast steps
  (readings' ``temperature``, the regressor before covariates existed): an upper bound,
  not something known at a cutoff.

Data:

* generated: ``--series`` hourly meters x ``--days`` days (clean), with the matching
  weather table of ``mmf generate`` (:func:`forecasting.generator.weather_table`: the
  regions' observed temperature and forecasts issued daily for 48 h, error growing with
  lead time), declared ``temperature`` keyed by region;
* EDRP (``../shared/data``, 622 Scottish households, half-hourly, March-May 2009): no real
  weather is at hand, so the covariates are the public holidays of GB/Scotland
  (``holiday_region: SCT``) and a *temperature proxy*: a climatological curve for central
  Scotland (annual cycle, mean 8.5 °C, amplitude 5.5 °C peaking on 20 July, plus a
  3 °C diurnal cycle peaking at 15:00), declared future-known with key ``none``. It is a
  calendar feature in °C, not weather: a gain from it is a seasonal-shape gain.

Results: benchmarks/results/covariates.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import RESULTS, save
from forecasting import covariates as cov
from forecasting.config import load_config
from forecasting.generator import generate, weather_table
from forecasting.pipeline import process_series
from training.global_models import train_global_models

EDRP = Path(__file__).resolve().parents[2] / "shared" / "data" / "edrp_scotland_622hh_halfhourly_2009.parquet"
MODELS = {
    "arima": {"fourier": 2, "max_history": 24 * 14},
    "global_gbm": {"num_boost_round": 100, "windows_per_series": 64},
}


def config_for(
    model: str, freq: str, horizon: int, windows: int, covariates: list[dict], holidays: bool, **kw
):
    return load_config(
        freq=freq,
        horizon=horizon,
        models=[model],
        model_params={model: dict(MODELS[model])},
        covariates=covariates,
        holidays=holidays,
        **{"backtest.windows": windows, "backtest.prefer": None, **kw},
    )


def mean_mase(frame: pd.DataFrame, config) -> tuple[float, int]:
    """Mean over series of the candidate's backtest MASE (mean of its windows)."""
    model = config.models[0]
    if model.startswith("global_"):
        report = train_global_models(frame, config)
        frame = report.attach(frame) if report is not None else frame
    scores = []
    for _, rows in frame.groupby("series_id", sort=True):
        out = process_series(rows, config).iloc[0]
        windows = [w for w in json.loads(out["backtest_json"] or "[]") if w["model"] == model]
        vals = [w["mase"] for w in windows if w.get("mase") is not None]
        if vals:
            scores.append(float(np.mean(vals)))
    return (float(np.mean(scores)) if scores else float("nan")), len(scores)


def generated_frames(n_series: int, days: int, horizon: int):
    data = generate(n_series=n_series, days=days, freq="h", seed=11, clean=True).readings
    series = data.drop_duplicates("series_id")[["series_id", "site", "region"]]
    weather = weather_table(data, horizon=max(48, horizon), seed=11)
    base = data[["series_id", "ts", "y"]]
    return base, data[["series_id", "ts", "y", "temperature"]], series, weather


def temperature_proxy(ts: pd.DatetimeIndex) -> np.ndarray:
    """Central Scotland's climatological temperature (°C) at ``ts``: a calendar curve."""
    day = ts.dayofyear.to_numpy() + ts.hour.to_numpy() / 24
    annual = 8.5 + 5.5 * np.cos(2 * np.pi * (day - 201) / 365.25)
    diurnal = 3.0 * np.cos(2 * np.pi * (ts.hour.to_numpy() + ts.minute.to_numpy() / 60 - 15) / 24)
    return annual + diurnal


def edrp_frames(n_series: int, days: int):
    frame = pd.read_parquet(EDRP, columns=["series_id", "ts", "y"])
    keep = sorted(frame["series_id"].unique(), key=lambda s: int(str(s)[1:]))[:n_series]
    frame = frame[frame["series_id"].isin(keep)]
    frame = frame[frame["ts"] > frame["ts"].max() - pd.Timedelta(days=days)].reset_index(drop=True)
    grid = pd.DatetimeIndex(sorted(frame["ts"].unique()))
    proxy = pd.DataFrame(
        {"name": "temp_proxy", "key": "", "ts": grid, "issued_at": grid, "value": temperature_proxy(grid)}
    )
    series = pd.DataFrame({"series_id": keep, "site": None, "region": None})
    return frame, series, proxy


def run_generated(args, rows: list[dict]) -> None:
    base, oracle, series, weather = generated_frames(args.series, args.days, args.horizon)
    declared = [{"name": "temperature", "key": "region", "fallback": "persistence"}]
    for model in args.models:
        for cond in ("none", "covariates", "oracle"):
            t0 = time.perf_counter()
            cfg = config_for(
                model,
                "h",
                args.horizon,
                args.windows,
                declared if cond == "covariates" else [],
                cond == "covariates",
            )
            frame = {"none": base, "oracle": oracle}.get(cond)
            if frame is None:
                frame = cov.attach(base, series, weather, cfg)
            score, n = mean_mase(frame, cfg)
            rows.append(
                {
                    "data": "generated",
                    "model": model,
                    "condition": cond,
                    "mase": score,
                    "n_series": n,
                    "s": time.perf_counter() - t0,
                }
            )
            print(rows[-1], flush=True)


def run_edrp(args, rows: list[dict]) -> None:
    if not EDRP.exists():
        print(f"{EDRP} not found: EDRP skipped")
        return
    frame, series, proxy = edrp_frames(args.series, args.edrp_days)
    declared = [{"name": "temp_proxy", "key": "none", "fallback": "climatology"}]
    h = 48
    for model in args.models:
        for cond in ("none", "holidays", "covariates"):
            t0 = time.perf_counter()
            extra = {"country": "GB", "holiday_region": "SCT", "bounds": "nonnegative"}
            cfg = config_for(
                model,
                "30min",
                h,
                args.windows,
                declared if cond == "covariates" else [],
                cond != "none",
                **extra,
            )
            data = frame if cond == "none" else cov.attach(frame, series, proxy, cfg)
            score, n = mean_mase(data, cfg)
            rows.append(
                {
                    "data": "edrp",
                    "model": model,
                    "condition": cond,
                    "mase": score,
                    "n_series": n,
                    "s": time.perf_counter() - t0,
                }
            )
            print(rows[-1], flush=True)


def markdown(rows: list[dict], args) -> str:
    table = pd.DataFrame(rows)
    lines = [
        "# Covariates: held-out accuracy with vs without them",
        "",
        "Commands: " + "; ".join(f"{d}: `{c}`" for d, c in runs_of(args, args.argv).items()),
        "",
        f"Mean over series of the backtest MASE ({args.windows} held-out window(s) at the end of each series; "
        "lower is better); a window sees covariate values issued by its cutoff only. Generated: hourly clean "
        f"meters x {args.days} days, horizon {args.horizon}, with the weather table of `mmf generate` (forecasts "
        "issued daily for 48 h, error growing with lead), `temperature` declared by region, plus holidays. "
        f"EDRP: the first households (by number), last {args.edrp_days} days, half-hourly, horizon 48; "
        "`holidays`: GB/Scotland public holidays only; `covariates`: those and a climatological *temperature "
        "proxy* (no real weather at hand; see the script's docstring). Series: the `series` column.",
        "",
        "| data | model | condition | mean MASE | vs none | series |",
        "|---|---|---|---:|---:|---:|",
    ]
    for (data, model), part in table.groupby(["data", "model"], sort=False):
        none = part.loc[part["condition"] == "none", "mase"]
        ref = float(none.iloc[0]) if len(none) else float("nan")
        for _, r in part.iterrows():
            gain = (r["mase"] / ref - 1) * 100 if np.isfinite(ref) and ref else float("nan")
            lines.append(
                f"| {data} | {model} | {r['condition']} | {r['mase']:.3f} | {gain:+.1f}% | {r['n_series']} |"
            )
    lines += [
        "",
        "`oracle` feeds the observed temperature of the forecast steps (not known at a cutoff), the regressor "
        "before covariates existed. A negative `vs none` is a gain. Few series and windows: differences of a "
        "few percent are within the noise of such a sample. Timings are not recorded here (a busy shared machine).",
        "",
    ]
    return "\n".join(lines)


def kept_rows(data: str) -> list[dict]:
    """The other data set's rows of the last results file (a run of one data set)."""
    path = RESULTS / "covariates.json"
    if data == "both" or not path.exists():
        return []
    return [r for r in json.loads(path.read_text()).get("rows", []) if r["data"] != data]


def runs_of(args, argv: list[str]) -> dict[str, str]:
    """The command that made each data set's rows."""
    path = RESULTS / "covariates.json"
    runs = json.loads(path.read_text()).get("runs", {}) if path.exists() else {}
    cmd = "python -m benchmarks.covariates " + " ".join(argv)
    for data in ("generated", "edrp"):
        if args.data in ("both", data):
            runs[data] = cmd
    return runs


def main(argv: list[str] | None = None) -> None:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--series", type=int, default=8)
    p.add_argument("--days", type=int, default=35)
    p.add_argument("--edrp-days", type=int, default=28)
    p.add_argument("--horizon", type=int, default=24)
    p.add_argument("--windows", type=int, default=2)
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument(
        "--data",
        choices=("both", "generated", "edrp"),
        default="both",
        help="run one data set; the other's rows are kept from the last results file",
    )
    p.add_argument("--smoke", action="store_true", help="4 series, 1 window, arima only")
    args = p.parse_args(argv)
    if args.smoke:
        args.series, args.days, args.edrp_days, args.windows, args.models = 4, 21, 14, 1, ["arima"]
    args.argv = argv
    rows: list[dict] = []
    if args.data in ("both", "generated"):
        run_generated(args, rows)
    if args.data in ("both", "edrp"):
        run_edrp(args, rows)
    if not args.smoke:
        rows = kept_rows(args.data) + rows
        save("covariates", {"rows": rows, "runs": runs_of(args, argv)}, markdown(rows, args), argv=argv)
    else:
        print(markdown(rows, args))


if __name__ == "__main__":
    main()
