"""Cold start held out: meters cut to 1, 3 and 7 days of history, forecast by the
cold-start profile (``forecasting.cold_start``, as training runs it: ``process_series`` on
the cut rows with the profile attached) and by the daily seasonal naive on the same cut,
both scored on the ``horizon`` steps after the cut, which neither saw.

Protocol, per dataset: a share of the meters are "new" (every ``--every``-th id); at each
cutoff the other meters' readings before the cutoff make the profiles (their last
``cold_start.history_days`` days, as training counts them), and each new meter keeps only
its last 1, 3 or 7 days before the cutoff. The metric's scale is the same for both
methods and every cut: the meter's in-sample daily seasonal naive MAE over the 28 days
before the cutoff (from the full data, used by no forecast), so MASE compares like with
like. Intervals: the share of actuals inside the 80% and 95% intervals.

Datasets: generated hourly meters (``mmf generate``, with sites and regions: the site,
region or fleet profile by the settings' rule) and, with ``--edrp``, the EDRP households
(``../shared/data``, half-hourly, no attributes: the fleet profile).

Run: ``python -m benchmarks.cold_start [--series 200] [--days 63] [--edrp]``; writes
``results/cold_start.{md,json}``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import save
from forecasting import cold_start as cs
from forecasting import contract as C
from forecasting.config import load_config
from forecasting.generator import generate
from forecasting.models import load_fitted
from forecasting.models.cold_profile import steps_per_day
from forecasting.models.seasonal_naive import SeasonalNaive
from forecasting.pipeline import process_series

EDRP = Path(__file__).resolve().parents[2] / "shared" / "data" / "edrp_scotland_622hh_halfhourly_2009.parquet"
CUTS = (1, 3, 7)
LEVELS = (80, 95)


def _scores(fc: dict, actual: np.ndarray, scale: float) -> dict[str, float]:
    err = np.abs(fc["mean"] - actual)
    out = {"mae": float(err.mean()), "mase": float(err.mean() / scale)}
    for lv in LEVELS:
        out[f"cov{lv}"] = float(((actual >= fc[f"lo-{lv}"]) & (actual <= fc[f"hi-{lv}"])).mean())
    return out


def _profiles(history: pd.DataFrame, attrs: pd.DataFrame, config) -> dict:
    counts = cs.ProfileCounts(cs.period_for(str(config.freq), config))
    ids = history[C.SERIES_ID].unique()
    for part in np.array_split(ids, max(1, len(ids) // 100)):  # batch by batch, as training does
        rows = history.loc[history[C.SERIES_ID].isin(part), [C.SERIES_ID, C.TS, C.Y]]
        rows = rows.merge(attrs, on=C.SERIES_ID, how="left")
        counts.add(cs.reference_counts(rows, config))
    return cs.profiles_for(counts, config)


def _one(meter: pd.DataFrame, attrs: pd.Series, cutoff, days: int, profiles, config, day: int) -> dict:
    """One new meter cut to ``days`` days before ``cutoff``: both forecasts scored."""
    h = config.horizon
    before = meter[meter[C.TS] < cutoff]
    cut = before[before[C.TS] >= cutoff - pd.Timedelta(days=days)][[C.SERIES_ID, C.TS, C.Y]]
    actual = meter.loc[meter[C.TS] >= cutoff, C.Y].to_numpy()[:h]
    past = before[C.Y].to_numpy()[-28 * day :]
    scale = float(np.mean(np.abs(past[day:] - past[:-day])))
    row = pd.DataFrame([{**attrs.to_dict(), "n_obs": len(cut), "n_filled": 0, "start": cut[C.TS].iloc[0]}])
    result = process_series(cs.attach(cut, cs.payload_rows(row, profiles, config, cut)), config).iloc[0]
    assert result["status"] == C.COLD_START, (attrs[C.SERIES_ID], days, result["status"], result["reason"])
    cold = load_fitted(result["model_json"]).predict(h, level=list(LEVELS))
    naive = SeasonalNaive(season_length=day).fit(cut[C.Y].to_numpy()).predict(h, level=list(LEVELS))
    out = {C.SERIES_ID: attrs[C.SERIES_ID], "cutoff": cutoff, "days": days, "source": result["model"]}
    out.update({f"cold_{k}": v for k, v in _scores(cold, actual, scale).items()})
    out.update({f"naive_{k}": v for k, v in _scores(naive, actual, scale).items()})
    return out


def run(readings: pd.DataFrame, freq: str, cutoffs, every: int, match: str = "nearest") -> pd.DataFrame:
    """Every new meter x cutoff x cut, scored (see the module docstring)."""
    day = steps_per_day(freq)
    with tempfile.TemporaryDirectory() as tmp:  # two weeks of readings make an established meter
        config = load_config(
            lakehouse=tmp, freq=freq, **{"cleaning.min_length": 14 * day, "cold_start.match": match}
        )
    readings = readings.assign(**{C.TS: pd.to_datetime(readings[C.TS]).astype("datetime64[us]")})
    ids = sorted(readings[C.SERIES_ID].unique())
    new = set(ids[::every])
    attrs = readings.groupby(C.SERIES_ID)[["site", "region"]].first().reset_index()
    rows = []
    for cutoff in cutoffs:
        history = readings[(readings[C.TS] < cutoff) & ~readings[C.SERIES_ID].isin(new)]
        profiles = _profiles(history, attrs, config)
        for sid in sorted(new):
            meter = readings[readings[C.SERIES_ID] == sid]
            mine = attrs[attrs[C.SERIES_ID] == sid].iloc[0]
            for days in CUTS:
                rows.append(_one(meter, mine, cutoff, days, profiles, config, day))
    return pd.DataFrame(rows)


def summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per cut: the mean MASE and coverage of both methods and the cold start's gain."""
    cols = ["cold_mase", "naive_mase", "cold_cov80", "naive_cov80", "cold_cov95", "naive_cov95"]
    out = rows.groupby("days")[cols].mean()
    out.insert(0, "n", rows.groupby("days").size())
    out["gain_%"] = 100 * (1 - out["cold_mase"] / out["naive_mase"])
    out["cold_better_share"] = (
        rows.assign(b=rows["cold_mase"] < rows["naive_mase"]).groupby("days")["b"].mean()
    )
    return out


def _table(frame: pd.DataFrame) -> str:
    head = "| " + " | ".join([frame.index.name or "", *frame.columns]) + " |"
    sep = "|" + "---|" * (len(frame.columns) + 1)
    lines = [head, sep]
    for idx, row in frame.iterrows():
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.tolist()]
        lines.append("| " + " | ".join([str(idx), *cells]) + " |")
    return "\n".join(lines)


def _generated(n_series: int, days: int) -> tuple[pd.DataFrame, list]:
    gen = generate(n_series=n_series, days=days, freq="h", seed=11, clean=True).readings
    start = pd.Timestamp("2024-01-01")
    return gen, [start + pd.Timedelta(days=d) for d in (days - 21, days - 18, days - 11)]


def _edrp() -> tuple[pd.DataFrame, list]:
    frame = pd.read_parquet(EDRP, columns=[C.SERIES_ID, C.TS, C.Y]).assign(site=None, region=None)
    start = pd.Timestamp("2009-03-01")
    return frame, [start + pd.Timedelta(days=d) for d in (50, 60, 70)]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=200)
    parser.add_argument("--days", type=int, default=63)
    parser.add_argument("--every", type=int, default=4, help="every n-th meter is new")
    parser.add_argument("--edrp", action="store_true", help="also the EDRP households (../shared/data)")
    args = parser.parse_args(argv)
    sets = {"generated": (*_generated(args.series, args.days), "h")}
    if args.edrp:
        sets["edrp"] = (*_edrp(), "30min")
    payload, parts = {}, []
    for name, (readings, cutoffs, freq) in sets.items():
        rows = run(readings, freq, cutoffs, args.every)
        table = summary(rows)
        if name == "generated":  # the other rule for meters of a site with too few meters
            other = summary(run(readings, freq, cutoffs, args.every, match="hierarchy"))
            table["hierarchy_mase"] = other["cold_mase"]
        by_source = rows.groupby(["days", "source"])[["cold_mase", "naive_mase"]].mean()
        by_source["n"] = rows.groupby(["days", "source"]).size()
        payload[name] = {
            "freq": freq,
            "cutoffs": [str(c) for c in cutoffs],
            "new_meters": int(rows[C.SERIES_ID].nunique()),
            "summary": table.reset_index().to_dict("records"),
            "by_source": by_source.reset_index().to_dict("records"),
        }
        parts.append(
            f"## {name} ({freq}; {rows[C.SERIES_ID].nunique()} new meters x {len(cutoffs)} cutoffs)\n\n"
            f"{_table(table)}\n\nBy profile source:\n\n{_table(by_source.reset_index().set_index('days'))}\n"
        )
    head = (
        "# Cold start, held out\n\n"
        f"Command: `python -m benchmarks.cold_start {' '.join(argv if argv is not None else [])}`.\n"
        "Meters cut to 1, 3 and 7 days of history before each cutoff; the cold-start profile and "
        "the daily seasonal naive on the same cut, scored on the horizon after the cutoff (MASE "
        "scaled by the meter's in-sample daily naive MAE over the 28 days before the cutoff, the "
        "same scale for both); `gain_%`: how much lower the cold-start MASE is; `cov80`, `cov95`: "
        "interval coverage. See the module docstring for the protocol.\n\n"
    )
    save("cold_start", payload, head + "\n".join(parts), argv=argv)
    print(head + "\n".join(parts))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
