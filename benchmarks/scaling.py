"""Scaling benchmark: the platform against a plain loop, statsforecast and Prophet.

    python -m benchmarks.scaling                       # cells 100 and 1,000 series, local engine
    python -m benchmarks.scaling --series 100 1000 10000 --engines local spark
    python -m benchmarks.scaling --large               # adds 100,000 series
    python -m benchmarks.scaling --smoke               # 20 series, seconds: proves the script works (CI)

Each cell runs in its own process (the monitor samples the RSS and CPU time of the
whole process tree every 0.2 s): hourly generated meters (``--days``, default 60), the
default model set, one backtest window, horizon 48. Per cell:

- platform: ``ingest -> refine -> train -> forecast`` on a fresh lakehouse; ``wall_s`` is
  the train + forecast jobs (what grows with the model work), with ``engine_s`` (the
  per-series work in the engine), ``score_s`` (the champion pyfunc forecasting every
  series), ``mlflow_s`` and ``gold_write_s`` broken out; ``total_wall_s`` includes
  ingest and refine.
- loop: the same silver rows and the same ``process_series`` in a bare
  ``multiprocessing.Pool`` on the same number of cores, with no platform around it
  (``overhead_vs_loop`` = platform ``wall_s`` / loop wall).
- statsforecast: SeasonalNaive, AutoETS, AutoTheta and MSTL on the same series, one
  cross-validation window + the final forecast, ``n_jobs`` = cores; best per series by
  MASE on the window, as the platform does. numba's compile time is measured apart
  (``jit_s``); skipped above ``--sf-max`` series.
- prophet: Prophet alone per series (one backtest fit + the final fit) in a pool;
  skipped above ``--prophet-max`` series.

Results: ``benchmarks/results/scaling.json`` (one entry per cell and tool),
``scaling.md`` and ``scaling.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import RESULTS, machine, save

H = 48
PHASE_ENV = "MMF_SCALING_PHASE_FILE"


# -- the monitor ------------------------------------------------------------------------
class TreeMonitor(threading.Thread):
    """Peak RSS (sum over the process tree) and CPU time (summed per pid) of ``pid``."""

    def __init__(self, pid: int, interval: float = 0.2, phase_file: Path | None = None) -> None:
        super().__init__(daemon=True)
        import psutil

        self.root = psutil.Process(pid)
        self.interval = interval
        self.phase_file = phase_file  # the cell writes the name of its current phase here
        self.peak_by_phase: dict[str, int] = {}
        self.peak_rss = 0
        self.cpu: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            rss = 0
            for p in procs:
                try:
                    rss += p.memory_info().rss
                    t = p.cpu_times()
                    self.cpu[p.pid] = max(self.cpu.get(p.pid, 0.0), t.user + t.system)
                except psutil.Error:
                    pass
            self.peak_rss = max(self.peak_rss, rss)
            if self.phase_file is not None:
                try:
                    phase = self.phase_file.read_text().strip()
                except OSError:
                    phase = ""
                if phase:
                    self.peak_by_phase[phase] = max(self.peak_by_phase.get(phase, 0), rss)
            time.sleep(self.interval)

    @property
    def cpu_s(self) -> float:
        return sum(self.cpu.values())


def run_cell(args: list[str]) -> dict:
    phase_file = Path(tempfile.mkstemp(prefix="mmf-scaling-phase-")[1])
    env = {
        **os.environ,
        "MLFLOW_LOGGING_LEVEL": "WARNING",
        "NIXTLA_NUMBA_CACHE": "1",
        PHASE_ENV: str(phase_file),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.scaling", "--cell", *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    mon = TreeMonitor(proc.pid, phase_file=phase_file)
    mon.start()
    out, _ = proc.communicate()
    mon.stop.set()
    mon.join()
    if proc.returncode != 0:
        raise SystemExit(f"cell {args} failed with exit code {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    phase_file.unlink(missing_ok=True)
    result.update(cpu_s=round(mon.cpu_s, 1), peak_rss_mb=round(mon.peak_rss / 2**20, 1))
    if "train_forecast" in mon.peak_by_phase:  # the platform cell: the model work apart from loading data
        result["peak_rss_train_mb"] = round(mon.peak_by_phase["train_forecast"] / 2**20, 1)
    return result


def phase(name: str) -> None:
    path = os.environ.get(PHASE_ENV)
    if path:
        Path(path).write_text(name)


# -- the cells (run in the child process) -----------------------------------------------
def data_path(work: Path, n: int, days: int) -> Path:
    from forecasting.generator import generate, write

    path = work / f"meters_{n}x{days}.parquet"
    if not path.exists():
        write(generate(n_series=n, days=days, freq="h", seed=42, clean=True), path)
    return path


def cell_platform(work: Path, n: int, days: int, engine: str) -> dict:
    from forecasting.config import load_config
    from training.jobs.forecast import aggregate, forecast
    from training.jobs.ingest import ingest
    from training.jobs.refine import refine
    from training.jobs.train import train
    from training.tables import Lakehouse

    lake_dir = work / f"lake_{engine}_{n}"
    cfg = load_config(lakehouse=str(lake_dir), engine=engine, horizon=H, **{"backtest.windows": 1})
    lake = Lakehouse.from_config(cfg)
    t0 = time.perf_counter()
    ingest(lake, data_path(work, n, days))
    refine(lake, cfg)
    t1 = time.perf_counter()
    phase("train_forecast")
    rep = train(lake, cfg)
    fc = forecast(lake, cfg)
    t_agg = time.perf_counter()
    aggregate(lake, cfg, fc.model_version)
    t3 = time.perf_counter()
    phase("measure")
    silver_mb = lake.arrow("silver/readings").nbytes / 2**20
    bt = lake.read("gold/backtest")
    sel = lake.read("gold/selection")
    chosen = sel[sel["status"].isin(["ok", "fallback"])].set_index("series_id")["model"]
    per = bt.groupby(["series_id", "model"])[["mase", "smape"]].mean()
    picked = per.loc[list(zip(chosen.index, chosen.values))]
    wall = t3 - t1
    return {
        "tool": "platform",
        "engine": engine,
        "n_series": n,
        "wall_s": round(wall, 2),
        "total_wall_s": round(t3 - t0, 2),
        "ingest_refine_s": round(t1 - t0, 2),
        "engine_s": round(rep.timings.get("engine_s", 0), 2),
        "score_s": round(fc.timings.get("score_s", 0), 2),
        # MLflow: the training run, its logging, the pyfunc, registry and gate, and
        # loading the champion to score; Gold: the training tables, the forecasts and
        # the portfolio totals.
        "mlflow_s": round(rep.timings.get("mlflow_s", 0) + fc.timings.get("load_s", 0), 2),
        "gold_write_s": round(
            rep.timings.get("gold_write_s", 0) + fc.timings.get("gold_write_s", 0) + t3 - t_agg, 2
        ),
        "mase": float(picked["mase"].replace(np.inf, np.nan).mean()),
        "smape": float(picked["smape"].mean()),
        "silver_arrow_mb": round(silver_mb, 1),
        "models": cfg.models,
        "lakehouse": str(lake_dir),
    }


def _silver_groups(lake_dir: Path):
    from training.engines.local import iter_groups
    from training.tables import Lakehouse

    silver = Lakehouse(str(lake_dir)).read("silver/readings")
    return [g for _, g in iter_groups(silver, "series_id")]


def loop_config():
    """The settings of every cell: the default models, one backtest window, horizon H."""
    from forecasting.config import load_config

    return load_config(horizon=H, freq="h", **{"backtest.windows": 1})


def _loop_one(g):
    from forecasting.pipeline import process_series

    global _CFG
    if "_CFG" not in globals():
        _CFG = loop_config()
    return process_series(g, _CFG)


def loop_map(groups: list) -> list:
    """The plain loop: ``process_series`` over ``groups`` in a bare fork pool, one process
    per core, chunks of 8 series (the engine's chunk size)."""
    import multiprocessing as mp

    with mp.get_context("fork").Pool(os.cpu_count()) as pool:
        return pool.map(_loop_one, groups, chunksize=8)


def cell_loop(work: Path, n: int) -> dict:
    groups = _silver_groups(work / f"lake_local_{n}")
    t0 = time.perf_counter()
    out = loop_map(groups)
    wall = time.perf_counter() - t0
    return {"tool": "loop", "engine": "loop", "n_series": n, "wall_s": round(wall, 2), "n_results": len(out)}


def _mase_smape(y, yhat, insample, m=24):
    from forecasting.metrics import mase, smape

    return mase(y, yhat, insample, m), smape(y, yhat)


def cell_statsforecast(work: Path, n: int) -> dict:
    from statsforecast import StatsForecast
    from statsforecast.models import MSTL, AutoETS, AutoTheta, SeasonalNaive

    from training.tables import Lakehouse

    silver = Lakehouse(str(work / f"lake_local_{n}")).read(
        "silver/readings", columns=["series_id", "ts", "y"]
    )
    df = silver.rename(columns={"series_id": "unique_id", "ts": "ds"})
    models = [
        SeasonalNaive(season_length=24),
        AutoETS(season_length=24),
        AutoTheta(season_length=24),
        MSTL(season_length=[24, 168]),
    ]
    # numba compiles statsforecast's models on first use (~15 s): once here, on two
    # series, cached on disk for the pool's workers (NIXTLA_NUMBA_CACHE, set by the
    # parent) and reported apart as jit_s, as a long-running user would pay it once.
    t0 = time.perf_counter()
    warm = df[df["unique_id"].isin(df["unique_id"].unique()[:2])]
    StatsForecast(models=models, freq="h", n_jobs=1).cross_validation(df=warm, h=H, n_windows=1, step_size=H)
    jit = time.perf_counter() - t0
    sf = StatsForecast(models=models, freq="h", n_jobs=os.cpu_count())
    t0 = time.perf_counter()
    cv = sf.cross_validation(df=df, h=H, n_windows=1, step_size=H)
    sf.forecast(df=df, h=H)
    wall = time.perf_counter() - t0
    names = [str(m) for m in models]
    best_mase, best_smape = [], []
    hist = {k: g["y"].to_numpy() for k, g in df.groupby("unique_id")}
    for uid, g in cv.groupby("unique_id"):
        y = g["y"].to_numpy()
        insample = hist[uid][:-H]
        scores = {m: _mase_smape(y, g[m].to_numpy(), insample) for m in names}
        best = min(scores, key=lambda m: scores[m][0])
        best_mase.append(scores[best][0])
        best_smape.append(scores[best][1])
    return {
        "tool": "statsforecast",
        "engine": "statsforecast",
        "n_series": n,
        "wall_s": round(wall, 2),
        "jit_s": round(jit, 2),
        "mase": float(np.nanmean(np.where(np.isinf(best_mase), np.nan, best_mase))),
        "smape": float(np.mean(best_smape)),
        "models": names,
    }


def _prophet_one(g):
    import logging

    logging.getLogger("cmdstanpy").disabled = True
    from forecasting.models import get_model

    y = g["y"].to_numpy()
    ts = g["ts"].to_numpy()
    m = get_model("prophet", season_length=24, seasonalities=(24, 168), freq="h")
    m.fit(y[:-H], ts=ts[:-H])
    fc = m.predict(H)["mean"]
    get_model("prophet", season_length=24, seasonalities=(24, 168), freq="h").fit(y, ts=ts).predict(H)
    return _mase_smape(y[-H:], fc, y[:-H])


def cell_prophet(work: Path, n: int) -> dict:
    import multiprocessing as mp

    groups = _silver_groups(work / f"lake_local_{n}")
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(os.cpu_count()) as pool:
        scores = pool.map(_prophet_one, groups, chunksize=4)
    wall = time.perf_counter() - t0
    m = np.array([s[0] for s in scores], dtype=float)
    return {
        "tool": "prophet",
        "engine": "prophet",
        "n_series": n,
        "wall_s": round(wall, 2),
        "mase": float(np.nanmean(np.where(np.isinf(m), np.nan, m))),
        "smape": float(np.mean([s[1] for s in scores])),
    }


def child(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tool")
    ap.add_argument("n", type=int)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--engine", default="local")
    a = ap.parse_args(argv)
    if a.tool == "platform":
        r = cell_platform(a.work, a.n, a.days, a.engine)
    elif a.tool == "loop":
        r = cell_loop(a.work, a.n)
    elif a.tool == "statsforecast":
        r = cell_statsforecast(a.work, a.n)
    else:
        r = cell_prophet(a.work, a.n)
    sys.stdout.write(json.dumps(r) + "\n")


# -- the parent -------------------------------------------------------------------------
def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--cell":
        child(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description="Scaling benchmark (see the module docstring).")
    ap.add_argument("--series", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--engines", nargs="+", default=["local"], choices=["local", "spark"])
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--large", action="store_true", help="add the 100,000-series cell")
    ap.add_argument("--smoke", action="store_true", help="20 series x 21 days, no baselines but the loop")
    ap.add_argument("--baselines", nargs="*", default=["loop", "statsforecast", "prophet"])
    ap.add_argument("--prophet-max", type=int, default=1000)
    ap.add_argument(
        "--sf-max",
        type=int,
        default=100,
        help="statsforecast only up to this many series (AutoETS/AutoTheta search many "
        "models on the full history: ~7 CPU s per series here)",
    )
    ap.add_argument("--work", type=Path, default=None, help="keep data and lakehouses here")
    ap.add_argument("--out", default="scaling", help="result file name under benchmarks/results/")
    ap.add_argument(
        "--resume",
        action="store_true",
        help="with --work: keep the cells a stopped run finished there, run the others",
    )
    a = ap.parse_args()
    series = [20] if a.smoke else sorted(set(a.series + ([100_000] if a.large else [])))
    days = 21 if a.smoke else a.days
    baselines = ["loop"] if a.smoke else a.baselines
    cells = []
    with tempfile.TemporaryDirectory(prefix="mmf-scaling-") as tmp:
        work = a.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        done_file = work / f"cells-{days}d.jsonl"  # finished cells, for --resume
        if a.resume and done_file.exists():
            cells = [json.loads(line) for line in done_file.read_text().splitlines() if line.strip()]
        for n in series:
            runs = [("platform", e) for e in a.engines] + [(b, b) for b in baselines]
            for tool, engine in runs:
                if (tool == "prophet" and n > a.prophet_max) or (tool == "statsforecast" and n > a.sf_max):
                    continue
                if any((c["tool"], c["engine"], c["n_series"]) == (tool, engine, n) for c in cells):
                    continue
                r = run_cell([tool, str(n), "--work", str(work), "--days", str(days), "--engine", engine])
                r["series_per_s_per_core"] = round(n / r["wall_s"] / os.cpu_count(), 3)
                cells.append(r)
                with done_file.open("a") as fh:
                    fh.write(json.dumps(r) + "\n")
                print(
                    json.dumps({k: v for k, v in r.items() if k not in ("models", "lakehouse")}), flush=True
                )
    loops = {c["n_series"]: c["wall_s"] for c in cells if c["tool"] == "loop"}
    for c in cells:
        c["loop_wall_s"] = loops.get(c["n_series"])
        c["overhead_vs_loop"] = (
            round(c["wall_s"] / loops[c["n_series"]], 3) if c["n_series"] in loops else None
        )
    payload = {"days": days, "horizon": H, "backtest_windows": 1, "cells": cells}
    md = markdown(cells, days, a)
    if a.smoke:
        print(md)
        return
    save(a.out, payload, md)
    plot(cells, RESULTS / f"{a.out}.png")
    print(md)


def markdown(cells: list[dict], days: int, a) -> str:
    m = machine()
    lines = [
        "# Scaling: platform vs plain loop, statsforecast and Prophet",
        "",
        f"Machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['cpu']}. Hourly generated meters x {days} days, "
        f"one backtest window, horizon {H}. Command: `python -m benchmarks.scaling {' '.join(sys.argv[1:])}`",
        "",
        "| tool | engine | series | wall s | cpu s | series/s/core | peak RSS MB | engine s | score s | MLflow s | Gold write s | loop wall s | overhead vs loop | MASE | sMAPE |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:

        def f(k, fmt="{:.2f}", c=c):
            v = c.get(k)
            return "" if v is None else fmt.format(v)

        lines.append(
            f"| {c['tool']} | {c['engine']} | {c['n_series']:,} | {f('wall_s')} | {f('cpu_s', '{:.1f}')} | "
            f"{f('series_per_s_per_core', '{:.3f}')} | {f('peak_rss_mb', '{:.0f}')} | {f('engine_s')} | {f('score_s')} | {f('mlflow_s')} | "
            f"{f('gold_write_s')} | {f('loop_wall_s')} | {f('overhead_vs_loop', '{:.3f}')} | {f('mase', '{:.3f}')} | {f('smape', '{:.2f}')} |"
        )
    mem = [c for c in cells if c["tool"] == "platform" and c.get("peak_rss_train_mb")]
    if mem:
        lines += [
            "",
            "Memory of the platform cells: the whole cell (ingest, refine, train, forecast) and the",
            "train + forecast jobs alone, against the size of silver/readings in Arrow.",
            "",
            "| engine | series | peak RSS MB (cell) | peak RSS MB (train + forecast) | silver in Arrow MB |",
            "|---|---|---|---|---|",
        ]
        for c in mem:
            lines.append(
                f"| {c['engine']} | {c['n_series']:,} | {c['peak_rss_mb']:.0f} | {c['peak_rss_train_mb']:.0f} | "
                f"{c.get('silver_arrow_mb', float('nan')):.0f} |"
            )
    lines.append("")
    return "\n".join(lines)


def plot(cells: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4))
    ax1, ax2 = fig.subplots(1, 2)
    frame = pd.DataFrame(cells)
    for (tool, engine), g in frame.groupby(["tool", "engine"]):
        label = tool if tool == engine else f"{tool} ({engine})"
        g = g.sort_values("n_series")
        ax1.plot(g["n_series"], g["wall_s"], marker="o", label=label)
        ax2.plot(g["n_series"], g["series_per_s_per_core"], marker="o", label=label)
    for ax, title in ((ax1, "wall time (s)"), (ax2, "series / s / core")):
        ax.set_xscale("log")
        ax.set_xlabel("series")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax1.set_yscale("log")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
