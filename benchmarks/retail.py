"""Retail accuracy and cost, held out: generated item x store daily sales
(``mmf generate --retail``), every series trained on all but its last ``--horizon`` days
and scored on those days.

    python -m benchmarks.retail [--items 60] [--stores 5] [--days 730] [--horizon 28]
        [--seed 0] [--conf FILE] [--alone croston croston_sba tsb adida imapa] [--name retail]

Forecasters, each on the very same held-out days:

* ``mmf``: the real nightly (:func:`training.jobs.nightly.nightly`: refine -> train ->
  gate -> forecast) with the config (default: ``conf/default.yaml``) at ``freq: D`` and
  ``horizon`` = ``--horizon``: per-series models chosen on their backtest, candidates by
  demand class (``intermittent:``), what gold/forecasts delivers;
* ``only:seasonal_naive`` and ``only:<model>`` for each model of ``--alone`` (default the
  Croston family: croston, croston_sba, tsb, adida, imapa): that model forced as the only
  candidate of every series (``models: [<model>]``, ``intermittent.classes: []``),
  trained by the nightly's per-series function on the silver rows the nightly trained on
  and forecast from its fit (``benchmarks.real_data.candidate_rows``).

Scores (:func:`forecasting.metrics.evaluate`, in-sample scales from each series' history
before the held-out days): MASE (weekly seasonal naive scale, m = 7), RMSSE and scaled
MAE, all defined on all-zero histories (module docstring of forecasting/metrics.py);
mean per demand class of silver/series (the never-sold items, classed intermittent,
also on a row of their own) and over all series. Cost: the wall time of the nightly and
of each forced model (training with its backtest, then the forecast), on this machine.

Results: benchmarks/results/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import RESULTS, save
from benchmarks.real_data import candidate_rows, score
from forecasting import contract as C
from forecasting.demand import DEMAND_CLASSES
from forecasting.generator_retail import generate_retail, write_retail

DAY = pd.Timedelta("1D")
CROSTON_FAMILY = ["croston", "croston_sba", "tsb", "adida", "imapa"]
MMF, NAIVE = "mmf", "only:seasonal_naive"
METRICS = ("mase", "rmsse", "scaled_mae")
NEVER_SOLD = "never sold"


def split(readings: pd.DataFrame, horizon: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The history (all but the last ``horizon`` days) and the held-out days."""
    cut = readings[C.TS].max() - (horizon - 1) * DAY
    return readings[readings[C.TS] < cut], readings[readings[C.TS] >= cut]


def delivered(lake) -> pd.DataFrame:
    """The nightly's newest forecast of every series (gold/forecasts)."""
    fc = lake.read("gold/forecasts")
    return fc[fc["created_at"] == fc.groupby(C.SERIES_ID)["created_at"].transform("max")]


def classes(lake, history: pd.DataFrame) -> pd.Series:
    """Per series its demand class (silver/series), ``never sold`` for an all-zero history."""
    cls = lake.read("silver/series", columns=[C.SERIES_ID, "demand_class"]).set_index(C.SERIES_ID)
    cls = cls["demand_class"].fillna("none")
    zero = history.groupby(C.SERIES_ID)[C.Y].apply(lambda y: bool((y == 0).all()))
    return cls.where(~zero.reindex(cls.index, fill_value=False), NEVER_SOLD)


def table(scores: pd.DataFrame, cls: pd.Series) -> dict:
    """Mean of each metric per forecaster and class (``all``; intermittent includes the
    never-sold items, which also have a row of their own)."""
    scores = scores.assign(cls=scores[C.SERIES_ID].map(cls))
    out: dict[str, dict] = {}
    for who, g in scores.groupby("who", sort=False):
        groups = {"all": g}
        for name in (*DEMAND_CLASSES, NEVER_SOLD):
            sel = g[g["cls"] == name] if name != "intermittent" else g[g["cls"].isin([name, NEVER_SOLD])]
            if len(sel):
                groups[name] = sel
        out[who] = {
            k: {"n": int(len(v)), **{m: float(v[m].mean()) for m in METRICS}} for k, v in groups.items()
        }
    return out


def run(items: int, stores: int, days: int, horizon: int, seed: int, conf, alone, work: Path) -> dict:
    from forecasting.config import load_config
    from training.jobs.ingest import ingest
    from training.jobs.nightly import nightly
    from training.tables import Lakehouse

    gen = generate_retail(n_items=items, n_stores=stores, days=days, seed=seed, horizon=horizon)
    history, held = split(gen.readings, horizon)
    path, _ = write_retail(
        type(gen)(readings=history, promo=gen.promo, items=gen.items),
        work / "raw" / "sales.parquet",
    )
    cfg = load_config(
        conf, lakehouse=str(work / "lake"), freq="D", horizon=horizon, **{"nightly.source": None}
    )
    lake = Lakehouse.from_config(cfg)
    ingest(lake, path)
    t0 = time.perf_counter()
    rep = nightly(lake, cfg)
    cost = {MMF: round(time.perf_counter() - t0, 1)}
    if rep.failed:
        raise SystemExit(f"the nightly failed: {rep.failure[:2000]}")
    forecasts = {MMF: delivered(lake)}
    forced = cfg.replace(**{"intermittent.classes": []})
    for name in ["seasonal_naive", *alone]:
        t0 = time.perf_counter()
        forecasts[f"only:{name}"], _ = candidate_rows(lake, forced, name, horizon, DAY)
        cost[f"only:{name}"] = round(time.perf_counter() - t0, 1)
    scores = score(forecasts, held, history, 7, cfg.levels)
    cls = classes(lake, history)
    chosen = forecasts[MMF].drop_duplicates(C.SERIES_ID)["model"].value_counts()
    quarantined = lake.read("silver/quarantine") if lake.exists("silver/quarantine") else pd.DataFrame()
    return {
        "items": items,
        "stores": stores,
        "days": days,
        "horizon": horizon,
        "seed": seed,
        "conf": conf,
        "models": cfg.models,
        "intermittent": cfg.intermittent.model_dump(),
        "n_series": int(gen.items.shape[0]),
        "n_rows": int(len(gen.readings)),
        "n_clean": int(len(cls)),
        "n_quarantined": int(len(quarantined)),
        "classes": {str(k): int(v) for k, v in cls.value_counts().items()},
        "patterns": {str(k): int(v) for k, v in gen.items["pattern"].value_counts().items()},
        "held_out": [str(held[C.TS].min().date()), str(held[C.TS].max().date())],
        "train_end": str(history[C.TS].max().date()),
        "n_scored": {who: int((scores["who"] == who).sum()) for who in forecasts},
        "nonfinite": int((~np.isfinite(scores[list(METRICS)].to_numpy())).sum()),
        "chosen": {str(k): int(v) for k, v in chosen.items()},
        "wall_s": cost,
        "by": table(scores, cls),
    }


def _label(who: str) -> str:
    if who == MMF:
        return "**chosen per series (the nightly)**"
    return f"{who.split(':', 1)[1]} alone" + (" (seasonal naive, m = 7)" if who == NAIVE else "")


def markdown(r: dict, command: str) -> str:
    rows = [k for k in ("all", *DEMAND_CLASSES, NEVER_SOLD) if k in r["by"][MMF]]
    lines = [
        "# retail: held-out accuracy and cost on generated item x store daily sales",
        "",
        f"Command: `{command}`",
        "",
        f"- data: `mmf generate --retail` with {r['items']} items x {r['stores']} stores x {r['days']} days"
        f" (seed {r['seed']}): {r['n_series']} series, {r['n_rows']:,} rows; item patterns "
        + ", ".join(f"{k} {v}" for k, v in r["patterns"].items()),
        f"- trained on the days up to {r['train_end']}, scored on the {r['horizon']} held-out days"
        f" {r['held_out'][0]} .. {r['held_out'][1]} (horizon {r['horizon']} days)",
        f"- config: {r['conf'] or 'conf/default.yaml'} with freq D: models {', '.join(r['models'])};"
        f" intermittent classes {', '.join(r['intermittent']['classes'])} get"
        f" {', '.join(r['intermittent']['models'])}",
        f"- {r['n_clean']} series clean, {r['n_quarantined']} quarantined; demand classes (silver/series): "
        + ", ".join(f"{k} {v}" for k, v in r["classes"].items()),
        f"- scored series per forecaster: {', '.join(f'{_label(k)} {v}' for k, v in r['n_scored'].items())};"
        f" non-finite scores: {r['nonfinite']}",
        "- chosen models: " + ", ".join(f"{k} {v}" for k, v in r["chosen"].items()),
        "",
        "Cost: wall seconds on this machine (re-measure on a quiet one); the nightly includes"
        " refine, the backtests, MLflow and the forecast, a forced model its training (with its"
        " backtest) and forecast.",
        "",
        "| forecaster | wall s | series scored |",
        "|---|---|---|",
    ]
    for who in r["by"]:
        lines.append(f"| {_label(who)} | {r['wall_s'].get(who, '-')} | {r['n_scored'].get(who, 0)} |")
    names = {"mase": "MASE (m = 7)", "rmsse": "RMSSE", "scaled_mae": "scaled MAE"}
    for m in METRICS:
        lines += [
            "",
            f"Mean {names[m]} per demand class (intermittent includes the never-sold items,"
            " also shown alone):",
            "",
            "| forecaster | " + " | ".join(f"{c} ({r['by'][MMF][c]['n']})" for c in rows) + " |",
            "|---" * (1 + len(rows)) + "|",
        ]
        for who, by in r["by"].items():
            cells = [f"{by[c][m]:.3f}" if c in by else "-" for c in rows]
            lines.append(f"| {_label(who)} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None, results: Path = RESULTS) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=60)
    ap.add_argument("--stores", type=int, default=5)
    ap.add_argument("--days", type=int, default=730)
    ap.add_argument("--horizon", type=int, default=28)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--conf", default=None, help="config file (default: conf/default.yaml)")
    ap.add_argument("--alone", nargs="*", default=CROSTON_FAMILY, help="models forced alone")
    ap.add_argument("--name", default="retail", help="results file name")
    args = ap.parse_args(argv)
    argv = list(argv if argv is not None else [])
    with tempfile.TemporaryDirectory(prefix="mmf-retail-") as tmp:
        work = Path(tmp)
        (work / "raw").mkdir()
        r = run(args.items, args.stores, args.days, args.horizon, args.seed, args.conf, args.alone, work)
    r["command"] = "python -m benchmarks.retail" + "".join(f" {a}" for a in argv)
    md = markdown(r, r["command"])
    save(args.name, r, md, folder=results, argv=argv)
    print(md)
    return r


if __name__ == "__main__":
    main()
