"""Scaling benchmark (issue #12): the platform against a plain loop, at up to 100,000
meters, on the local engine and on Spark (``local[*]`` or a standalone cluster).

    python -m benchmarks.scaling                                   # 100 and 1,000 series, local
    python -m benchmarks.scaling --series 1000 10000 100000 --days 90 --models cheap \\
        --engines local spark --cluster --restart-at 0.8 --work /data/scal --resume
    python -m benchmarks.scaling --series 200 1000 --days 14 --models cheap --out-dir /tmp/s
    python -m benchmarks.scaling --smoke                           # 20 series, seconds (CI)

Cells. A cell is N generated hourly meters x D days (``--series``, ``--days``); every
tool runs in its own process, sampled every 0.2 s (:mod:`benchmarks.monitor`): the peak
RSS of the cell's own process (the *driver*), of its whole process tree (pool workers,
Spark's driver JVM and Python workers) and, on a standalone cluster, of the master's
and workers' JVMs with their executors (*cluster*, sampled by pid: they are not the
driver's children), and the CPU time of all of them.

- platform: ``ingest -> refine -> train -> forecast -> aggregate`` on a fresh lakehouse.
  The meters are written once per size in files of 1,000 series each, one file at a
  time (:mod:`benchmarks.meters`: generation stays bounded at 100,000), and ingested
  file by file (one bronze commit each, as daily deliveries land). ``wall_s`` is train
  + forecast + aggregate (the model work), ``total_wall_s`` adds ingest and refine;
  ``cost_per_series_s`` = ``wall_s`` x cores / series (core-seconds a series costs).
  Also recorded: silver/readings on disk (bytes, rows), the bundle (``models.parquet``
  bytes), the MLflow artifacts (bytes), the live files and commits of every Delta table,
  the number of batches (``batch_rows``) and the MASE of the chosen models.
  ``--prepared SERIES=DIR``: that size's platform cells start from a copy of a lakehouse
  ``--cell prepare`` ingested and refined (no ingest or refine figures then).
- loop: the same ``process_series`` over the same silver rows in a bare fork pool of
  one process per core, read bucket range by bucket range (``batch_rows``) so that it
  also runs at 100,000 (``overhead_vs_loop`` = platform ``wall_s`` / loop wall). Each
  platform cell is followed at once by its loop cell on its silver (A, B, A, B ...:
  ``--repeats`` pairs), so both see the same machine state.
- statsforecast / prophet (``--baselines``): as before, on small cells only
  (``--sf-max``, ``--prophet-max``); they read all of silver at once.

Models: ``--models cheap`` (seasonal_naive, weekly_naive, theta), ``default`` (the
config's set) or names. Spark: ``--engines spark`` runs on ``local[*]``;
``--spark-master URL`` on a running cluster (its worker JVMs found by their command
line and sampled), ``--cluster`` starts a standalone master and two workers for the run
(``tests/spark_cluster.py``, worker memory ``--worker-memory``) and stops them after.

Restart (``--restart-at 0.8``): for each size and engine, on one ingested and refined
lakehouse copied twice: a full ``train`` in a subprocess (timed), and a ``train``
killed (SIGKILL to its process group) once its progress reports that share of series
done, then run again (timed). Recorded: the restart's time against the full run's,
whether gold/selection and gold/backtest are identical (sorted, without ``run_id`` and
``created_at``), and the MLflow runs and model versions each lakehouse ends with.

Results: ``scaling.json`` and ``scaling.md`` in ``--out-dir`` (default
benchmarks/results/) with the command line, the machine and a projection to 1M and
10M meters on ``--nodes`` x ``--node-cores`` computed from the measured per-series
figures (:func:`projection`). ``--resume`` (with ``--work``) keeps finished cells.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import RESULTS, git_sha, machine

H = 48
PHASE_ENV = "MMF_SCALING_PHASE_FILE"
CHEAP = ["seasonal_naive", "weekly_naive", "theta"]
PROGRESS = "PROGRESS"  # a train job's progress line: PROGRESS <step>\t<done>\t<total>
VOLATILE = ("run_id", "created_at")  # columns that differ between two identical trainings
SILVER = "silver/readings"
MB = 2**20


# -- running a cell (the parent) --------------------------------------------------------
def cell_env(base: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        **(os.environ if base is None else base),
        "MLFLOW_LOGGING_LEVEL": "WARNING",
        "NIXTLA_NUMBA_CACHE": "1",
    }
    for key in ("MLFLOW_TRACKING_URI", "MMF_LAKEHOUSE"):  # every cell has its own lakehouse and store
        env.pop(key, None)
    return env


def run_cell(args: list[str], env: dict[str, str], extra_pids: list[int] = ()) -> dict:
    """``--cell args`` in a monitored subprocess: its JSON result + the peaks."""
    from benchmarks.monitor import TreeMonitor

    phase_file = Path(tempfile.mkstemp(prefix="mmf-scaling-phase-")[1])
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.scaling", "--cell", *args],
        stdout=subprocess.PIPE,
        text=True,
        env={**env, PHASE_ENV: str(phase_file)},
    )
    mon = TreeMonitor(proc.pid, phase_file=phase_file, extra_pids=extra_pids)
    mon.start()
    out, _ = proc.communicate()
    mon.finish()
    phase_file.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise SystemExit(f"cell {args} failed with exit code {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(mon.figures())
    result["peak_rss_mb"] = result.get("all_peak_rss_mb", result["tree_peak_rss_mb"])
    for name, peak in mon.peak_by_phase.items():
        result[f"peak_rss_{name}_mb"] = round(peak / MB, 1)
    return result


def phase(name: str) -> None:
    path = os.environ.get(PHASE_ENV)
    if path:
        Path(path).write_text(name)


# -- the cells (run in the child process) -----------------------------------------------
def models_of(spec: list[str]) -> list[str] | None:
    """``cheap``, ``default`` (None: the config's set) or model names."""
    if spec == ["cheap"]:
        return list(CHEAP)
    if spec == ["default"]:
        return None
    return [m for item in spec for m in item.split(",") if m]


def cell_config(
    lake_dir: Path, engine: str, models: list[str] | None, batch_rows: int | None, master: str | None
):
    from forecasting.config import load_config

    overrides = {"backtest.windows": 1}
    if models:
        overrides["models"] = models
    if batch_rows:
        overrides["batch_rows"] = batch_rows
    if master:
        overrides["spark.master"] = master
    return load_config(lakehouse=str(lake_dir), engine=engine, horizon=H, **overrides)


def ingest_refine(lake, cfg, data: Path) -> None:
    from benchmarks.meters import files
    from training.jobs.ingest import ingest
    from training.jobs.refine import refine

    phase("ingest")
    for f in files(data):  # file by file: one bronze commit each, memory of one file
        ingest(lake, f)
    phase("refine")
    refine(lake, cfg)


def tree_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def lake_figures(lake_dir: Path, batch_rows: int) -> dict:
    """Sizes and file counts of a finished cell's lakehouse and MLflow artifacts."""
    from deltalake import DeltaTable

    from training.tables import Lakehouse

    lake = Lakehouse(str(lake_dir))
    tables = {}
    for log in sorted(lake_dir.rglob("_delta_log")):
        table = log.parent
        tables[str(table.relative_to(lake_dir))] = {
            "files": len(DeltaTable(str(table)).file_uris()),
            "commits": len(list(log.glob("*.json"))),
            "bytes": tree_bytes(table),
        }
    silver_rows = lake.n_rows(SILVER)
    bundles = list((lake_dir / "mlartifacts").rglob("models.parquet"))
    return {
        "silver_bytes": tables.get(SILVER, {}).get("bytes", 0),
        "silver_rows": silver_rows,
        "batch_rows": batch_rows,
        "batches": max(1, math.ceil(silver_rows / batch_rows)),
        "bundle_bytes": max((b.stat().st_size for b in bundles), default=0),
        "mlflow_artifact_bytes": tree_bytes(lake_dir / "mlartifacts")
        if (lake_dir / "mlartifacts").exists()
        else 0,
        "tables": tables,
    }


def chosen_mase(lake) -> tuple[float, float]:
    bt = lake.read("gold/backtest", columns=["series_id", "model", "mase", "smape"])
    sel = lake.read("gold/selection", columns=["series_id", "model", "status"])
    chosen = sel[sel["status"].isin(["ok", "fallback"])]
    picked = bt.merge(chosen[["series_id", "model"]], on=["series_id", "model"])
    per = picked.groupby("series_id")[["mase", "smape"]].mean()
    return float(per["mase"].replace(np.inf, np.nan).mean()), float(per["smape"].mean())


def cell_platform(a) -> dict:
    from benchmarks.meters import write_meters
    from training.jobs.forecast import aggregate, forecast
    from training.jobs.train import train
    from training.tables import Lakehouse

    cfg = cell_config(a.lake, a.engine, models_of(a.models), a.batch_rows, a.spark_master)
    lake = Lakehouse.from_config(cfg)
    if a.prepared:  # the parent copied a prepared lakehouse (bronze and silver) here
        expected, rows = a.n * a.days * 24, lake.n_rows(SILVER)
        if rows != expected:
            raise SystemExit(
                f"--prepared lakehouse {a.lake}: silver/readings has {rows:,} rows, "
                f"expected {expected:,} ({a.n:,} hourly meters x {a.days} days)"
            )
        t0 = t1 = time.perf_counter()
    else:
        phase("generate")
        data = write_meters(a.work / f"meters_{a.n}x{a.days}", a.n, a.days)
        t0 = time.perf_counter()
        ingest_refine(lake, cfg, data)
        t1 = time.perf_counter()
    phase("train")
    rep = train(lake, cfg)
    t2 = time.perf_counter()
    phase("forecast")
    fc = forecast(lake, cfg)
    t_agg = time.perf_counter()
    aggregate(lake, cfg, fc.model_version)
    t3 = time.perf_counter()
    phase("measure")
    mase, smape = chosen_mase(lake)
    return {
        "tool": "platform",
        "engine": a.engine,
        "n_series": a.n,
        "wall_s": round(t3 - t1, 2),
        # a prepared cell did not ingest nor refine: no total
        "total_wall_s": None if a.prepared else round(t3 - t0, 2),
        "ingest_refine_s": None if a.prepared else round(t1 - t0, 2),
        "prepared": bool(a.prepared),
        "train_s": round(t2 - t1, 2),
        "forecast_s": round(t3 - t2, 2),
        "engine_s": round(rep.timings.get("engine_s", 0), 2),
        "score_s": round(fc.timings.get("score_s", 0), 2),
        # MLflow: the training run, its logging, the pyfunc, registry and gate, and
        # loading the champion to score; Gold: the training tables, the forecasts and
        # the portfolio totals.
        "mlflow_s": round(rep.timings.get("mlflow_s", 0) + fc.timings.get("load_s", 0), 2),
        "gold_write_s": round(
            rep.timings.get("gold_write_s", 0) + fc.timings.get("gold_write_s", 0) + t3 - t_agg, 2
        ),
        "mase": mase,
        "smape": smape,
        "models": cfg.models,
        "spark_master": cfg.spark.master if a.engine == "spark" else None,
        "lakehouse": str(a.lake),
        **lake_figures(a.lake, cfg.batch_rows),
    }


def loop_config(models: list[str] | None = None):
    """The settings of every cell: the models, one backtest window, horizon H."""
    from forecasting.config import load_config

    return load_config(
        horizon=H, freq="h", **({"models": models} if models else {}), **{"backtest.windows": 1}
    )


_CFG = None


def _loop_one(g):
    from forecasting.pipeline import process_series

    return process_series(g, _CFG)


def loop_map(groups: list, cfg=None) -> list:
    """``process_series`` on each group in a fork pool (chunks of 8), as the loop cells
    run it (benchmarks/engine_overhead.py's loop side)."""
    import multiprocessing as mp

    global _CFG
    _CFG = cfg or loop_config()
    with mp.get_context("fork").Pool(os.cpu_count()) as pool:
        return pool.map(_loop_one, groups, chunksize=8)


def cell_loop(a) -> dict:
    """The plain loop over silver, bucket range by bucket range, in one fork pool."""
    import multiprocessing as mp

    from training.engines.local import iter_groups
    from training.tables import Lakehouse

    global _CFG
    _CFG = loop_config(models_of(a.models))
    lake = Lakehouse(str(a.lake))
    batch_rows = a.batch_rows or _CFG.batch_rows
    n = 0
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(os.cpu_count()) as pool:
        for lo_hi in lake.batches(SILVER, None, batch_rows):
            groups = [g for _, g in iter_groups(lake.read_buckets(SILVER, lo_hi), "series_id")]
            n += sum(1 for _ in pool.imap_unordered(_loop_one, groups, chunksize=8))
            del groups
    wall = time.perf_counter() - t0
    return {"tool": "loop", "engine": "loop", "n_series": a.n, "wall_s": round(wall, 2), "n_results": n}


def _silver_groups(lake_dir: Path):
    from training.engines.local import iter_groups
    from training.tables import Lakehouse

    silver = Lakehouse(str(lake_dir)).read(SILVER)
    return [g for _, g in iter_groups(silver, "series_id")]


def cell_prepare(a) -> dict:
    """Generate, ingest and refine only (the restart check's starting lakehouse)."""
    from benchmarks.meters import write_meters
    from training.tables import Lakehouse

    cfg = cell_config(a.lake, a.engine, models_of(a.models), a.batch_rows, a.spark_master)
    data = write_meters(a.work / f"meters_{a.n}x{a.days}", a.n, a.days)
    t0 = time.perf_counter()
    ingest_refine(Lakehouse.from_config(cfg), cfg, data)
    return {"tool": "prepare", "n_series": a.n, "wall_s": round(time.perf_counter() - t0, 2)}


def cell_train(a) -> dict:
    """``train`` alone, telling its progress on stdout (``PROGRESS`` lines)."""
    from training.jobs.train import train
    from training.tables import Lakehouse

    cfg = cell_config(a.lake, a.engine, models_of(a.models), a.batch_rows, a.spark_master)

    def progress(step: str, done: int, total: int) -> None:
        print(f"{PROGRESS} {step}\t{done}\t{total}", flush=True)

    t0 = time.perf_counter()
    rep = train(Lakehouse.from_config(cfg), cfg, progress=progress)
    return {
        "tool": "train",
        "engine": a.engine,
        "n_series": a.n,
        "wall_s": round(time.perf_counter() - t0, 2),
        "run_id": rep.run_id,
        "model_version": rep.model_version,
        "timings": {k: round(v, 2) for k, v in rep.timings.items()},  # fitting vs the steps after it
    }


def gold_digest(frame: pd.DataFrame) -> str:
    """A hash of a table's rows whatever their order, without the volatile columns."""
    frame = frame.drop(columns=[c for c in VOLATILE if c in frame.columns])
    frame = frame.sort_values(list(frame.columns), ignore_index=True)
    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()


def without_timings(candidates: str | None) -> str | None:
    """``candidates_json`` without each candidate's ``fit_s`` (two identical trainings
    time their fits differently)."""
    if not candidates:
        return candidates
    parsed = json.loads(candidates)
    for c in parsed.values():
        if isinstance(c, dict):
            c.pop("fit_s", None)
    return json.dumps(parsed, sort_keys=True)


def cell_state(a) -> dict:
    """What a lakehouse ended with: Gold digests and rows, MLflow runs and versions."""
    from registry.connection import configure
    from training.tables import Lakehouse

    cfg = cell_config(a.lake, "local", None, None, None)
    lake = Lakehouse.from_config(cfg)
    out: dict = {"tool": "state"}
    for name in ("gold/selection", "gold/backtest", "gold/models"):
        if lake.exists(name):
            frame = lake.read(name)
            if name == "gold/models":  # the run's batch numbering may differ; the rows may not
                frame = frame.drop(columns=["batch"], errors="ignore")
                if "candidates_json" in frame:  # each candidate's fit_s is a timing, not a result
                    frame["candidates_json"] = frame["candidates_json"].map(without_timings)
            out[name] = {
                "rows": len(frame),
                "digest": gold_digest(frame),
                "run_ids": int(frame["run_id"].nunique()),
            }
    client = configure(cfg)
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    runs = client.search_runs([exp.experiment_id]) if exp is not None else []
    out["mlflow_runs"] = {}
    for r in runs:
        out["mlflow_runs"][r.info.status] = out["mlflow_runs"].get(r.info.status, 0) + 1
    out["model_versions"] = len(client.search_model_versions(f"name='{cfg.mlflow.registered_model}'"))
    return out


def _mase_smape(y, yhat, insample, m=24):
    from forecasting.metrics import mase, smape

    return mase(y, yhat, insample, m), smape(y, yhat)


def cell_statsforecast(a) -> dict:
    from statsforecast import StatsForecast
    from statsforecast.models import MSTL, AutoETS, AutoTheta, SeasonalNaive

    from training.tables import Lakehouse

    silver = Lakehouse(str(a.lake)).read(SILVER, columns=["series_id", "ts", "y"])
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
        "n_series": a.n,
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


def cell_prophet(a) -> dict:
    import multiprocessing as mp

    groups = _silver_groups(a.lake)
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(os.cpu_count()) as pool:
        scores = pool.map(_prophet_one, groups, chunksize=4)
    wall = time.perf_counter() - t0
    m = np.array([s[0] for s in scores], dtype=float)
    return {
        "tool": "prophet",
        "engine": "prophet",
        "n_series": a.n,
        "wall_s": round(wall, 2),
        "mase": float(np.nanmean(np.where(np.isinf(m), np.nan, m))),
        "smape": float(np.mean([s[1] for s in scores])),
    }


CELLS = {
    "platform": cell_platform,
    "loop": cell_loop,
    "statsforecast": cell_statsforecast,
    "prophet": cell_prophet,
    "prepare": cell_prepare,
    "train": cell_train,
    "state": cell_state,
}


def child(argv: list[str]) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tool", choices=sorted(CELLS))
    ap.add_argument("n", type=int)
    ap.add_argument("--lake", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--engine", default="local")
    ap.add_argument("--models", nargs="+", default=["default"])
    ap.add_argument("--batch-rows", type=int, default=None)
    ap.add_argument("--spark-master", default=None)
    ap.add_argument(
        "--prepared", action="store_true", help="--lake is a prepared copy: skip ingest and refine"
    )
    a = ap.parse_args(argv)
    sys.stdout.write(json.dumps(CELLS[a.tool](a), default=str) + "\n")


def cell_args(a, tool: str, n: int, engine: str, lake: Path, prepared: bool = False) -> list[str]:
    args = [tool, str(n), "--lake", str(lake), "--work", str(a.work), "--days", str(a.days)]
    if prepared:
        args.append("--prepared")
    args += ["--engine", engine, "--models", *a.models]
    if a.batch_rows:
        args += ["--batch-rows", str(a.batch_rows)]
    if engine == "spark" and a.spark_master:
        args += ["--spark-master", a.spark_master]
    return args


# -- the restart check ------------------------------------------------------------------
def kill_at(args: list[str], env: dict[str, str], share: float) -> dict:
    """Run the ``train`` cell and SIGKILL its process group (the pool workers or the
    Spark JVM with it) once its per-series progress reaches ``share`` of the series."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.scaling", "--cell", *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    t0 = time.perf_counter()
    out: dict = {"killed": False}
    for line in proc.stdout:
        if not line.startswith(PROGRESS):
            continue
        step, done, total = line[len(PROGRESS) + 1 :].rstrip("\n").split("\t")
        if int(total) > 0 and int(done) >= share * int(total):
            os.killpg(proc.pid, signal.SIGKILL)
            out = {"killed": True, "kill_s": round(time.perf_counter() - t0, 2), "step": step}
            out.update(done=int(done), total=int(total), share_done=round(int(done) / int(total), 3))
            break
    proc.stdout.read()
    proc.wait()
    out["returncode"] = proc.returncode
    return out


def restart_check(a, n: int, engine: str, env: dict[str, str], extra_pids: list[int]) -> dict:
    root = a.work / f"restart_{engine}_{n}"
    base = root / "base"
    if not (root / "prepared").exists():
        shutil.rmtree(root, ignore_errors=True)
        run_cell(cell_args(a, "prepare", n, engine, base), env, extra_pids)
        (root / "prepared").write_text("")
    lakes = {name: root / name for name in ("full", "killed")}
    for lake in lakes.values():
        shutil.rmtree(lake, ignore_errors=True)
        shutil.copytree(base, lake)
    full = run_cell(cell_args(a, "train", n, engine, lakes["full"]), env, extra_pids)
    kill = kill_at(cell_args(a, "train", n, engine, lakes["killed"]), env, a.restart_at)
    again = run_cell(cell_args(a, "train", n, engine, lakes["killed"]), env, extra_pids)
    state = {k: run_cell(cell_args(a, "state", n, engine, lake), env) for k, lake in lakes.items()}
    identical = {
        t: state["full"].get(t, {}).get("digest") == state["killed"].get(t, {}).get("digest")
        for t in ("gold/selection", "gold/backtest", "gold/models")
        if t in state["full"]
    }
    if not a.keep_lakes:
        shutil.rmtree(root, ignore_errors=True)
    return {
        "kind": "restart",
        "engine": engine,
        "n_series": n,
        "restart_at": a.restart_at,
        "full_train_s": full["wall_s"],
        "full_driver_peak_rss_mb": full["driver_peak_rss_mb"],
        **{f"kill_{k}": v for k, v in kill.items()},
        "full_timings": full.get("timings"),
        "restart_train_s": again["wall_s"],
        "restart_timings": again.get("timings"),
        "restart_driver_peak_rss_mb": again["driver_peak_rss_mb"],
        "restart_vs_full": round(again["wall_s"] / full["wall_s"], 3),
        "gold_identical": identical,
        "full_state": {k: v for k, v in state["full"].items() if k != "tool"},
        "restarted_state": {k: v for k, v in state["killed"].items() if k != "tool"},
    }


# -- the parent -------------------------------------------------------------------------
def cluster_pids(master: str) -> list[int]:
    """The JVMs of a standalone cluster's master and workers on this machine."""
    import psutil

    port = master.rsplit(":", 1)[-1]
    pids = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info.get("cmdline") or [])
        if "org.apache.spark.deploy.worker.Worker" in cmd and master in cmd:
            pids.append(p.info["pid"])
        elif "org.apache.spark.deploy.master.Master" in cmd and f"--port {port}" in cmd:
            pids.append(p.info["pid"])
    return pids


def start_cluster(a):
    """A standalone master and two workers (tests/spark_cluster.py) for this run."""
    import tests.spark_cluster as sc

    if a.worker_memory:
        sc.WORKER_MEMORY = a.worker_memory
        sc.EXECUTOR_MEMORY = a.executor_memory or a.worker_memory
    if a.worker_cores:
        sc.WORKER_CORES = a.worker_cores
    sc.EXECUTOR_JAVA_OPTS = a.executor_java_opts  # the JVM's defaults, not the tests' quick start
    cluster = sc.start_cluster(a.work / "cluster")
    env = cell_env(sc.cluster_env())
    cores = sc.WORKERS * sc.WORKER_CORES
    conf = {
        "spark.ui.enabled": "false",
        # sized for this small cluster, as the engine sizes local[*]: Delta's log replay in
        # a few tasks instead of 50, and shuffles in four tasks a core instead of 200 (on
        # two cores each of those tasks costs a driver round trip: 1k series, 272 -> 212 s)
        "spark.databricks.delta.snapshotPartitions": str(max(2, cores * 2)),
        "spark.sql.shuffle.partitions": str(cores * 4),
    }
    env["PYSPARK_SUBMIT_ARGS"] = cluster.submit_args(conf)
    return cluster, env


def parse(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description="Scaling benchmark (see the module docstring).")
    ap.add_argument("--series", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--engines", nargs="+", default=["local"], choices=["local", "spark"])
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--models", nargs="+", default=["default"], help="cheap | default | model names")
    ap.add_argument(
        "--batch-rows", type=int, default=None, help="batch_rows of every cell (default: the config's)"
    )
    ap.add_argument("--large", action="store_true", help="add the 100,000-series cell")
    ap.add_argument(
        "--smoke", action="store_true", help="20 series x 21 days, the cheap set, no baselines but the loop"
    )
    ap.add_argument("--repeats", type=int, default=1, help="platform/loop pairs per cell, alternated")
    ap.add_argument("--baselines", nargs="*", default=["statsforecast", "prophet"])
    ap.add_argument("--prophet-max", type=int, default=1000)
    ap.add_argument(
        "--sf-max",
        type=int,
        default=100,
        help="statsforecast only up to this many series (AutoETS/AutoTheta search many "
        "models on the full history: ~7 CPU s per series here)",
    )
    ap.add_argument("--spark-master", default=None, help="a running cluster for the spark cells")
    ap.add_argument("--cluster", action="store_true", help="start a standalone cluster for the spark cells")
    ap.add_argument("--worker-memory", default=None, help="--cluster: each worker's memory cap (e.g. 4g)")
    ap.add_argument("--executor-memory", default=None, help="--cluster: spark.executor.memory")
    ap.add_argument("--worker-cores", type=int, default=None, help="--cluster: each worker's cores")
    ap.add_argument(
        "--executor-java-opts",
        default="",
        help="--cluster: spark.executor.extraJavaOptions (default: none, the JVM's own settings; "
        "the tests use '-XX:TieredStopAtLevel=1 -XX:+UseSerialGC' to start fast)",
    )
    ap.add_argument(
        "--restart-at", type=float, default=None, help="kill train at this share of series, rerun"
    )
    ap.add_argument(
        "--restart-series",
        type=int,
        nargs="*",
        default=None,
        help="sizes of the restart check (default: all)",
    )
    ap.add_argument("--nodes", type=int, default=10, help="projection: nodes of the cluster")
    ap.add_argument("--node-cores", type=int, default=16, help="projection: cores per node")
    ap.add_argument("--work", type=Path, default=None, help="keep data and lakehouses here")
    ap.add_argument(
        "--prepared",
        nargs="*",
        default=[],
        metavar="SERIES=DIR",
        help="start the platform cells of SERIES from a copy of DIR, a lakehouse `--cell prepare` "
        "ingested and refined (same series and days), instead of ingesting and refining",
    )
    ap.add_argument("--keep-lakes", action="store_true", help="keep every cell's lakehouse in --work")
    ap.add_argument("--out", default="scaling", help="result file name")
    ap.add_argument("--out-dir", type=Path, default=RESULTS, help="folder of the result files")
    ap.add_argument(
        "--resume",
        action="store_true",
        help="with --work: keep the cells a stopped run finished there, run the others",
    )
    a = ap.parse_args(argv)
    if a.smoke:
        a.series, a.days, a.baselines, a.models = [20], 21, [], ["cheap"]
    a.series = sorted(set(a.series + ([100_000] if a.large else [])))
    prepared = {}
    for item in a.prepared:
        size, sep, where = item.partition("=")
        if not sep or not size.isdigit() or not (Path(where) / SILVER / "_delta_log").is_dir():
            ap.error(f"--prepared {item!r}: expected SERIES=DIR with DIR a lakehouse holding {SILVER}")
        prepared[int(size)] = Path(where).resolve()
    a.prepared = prepared
    return a


def key(c: dict) -> tuple:
    """A finished cell's identity for ``--resume`` (a loop cell by the engine it pairs with)."""
    return (
        c.get("kind", "cell"),
        c.get("tool", ""),
        c.get("pair", c["engine"]),
        c["n_series"],
        c.get("rep", 0),
    )


def run_all(a, env: dict[str, str], extra_pids: list[int]) -> list[dict]:
    done_file = a.work / f"cells-{a.days}d.jsonl"  # finished cells, for --resume
    cells = []
    if a.resume and done_file.exists():
        cells = [json.loads(line) for line in done_file.read_text().splitlines() if line.strip()]
    have = {key(c) for c in cells}

    def record(*rows: dict) -> None:
        with done_file.open("a") as fh:
            for r in rows:
                r.setdefault("git", git_sha())  # cells of one record may come from several runs
                cells.append(r)
                fh.write(json.dumps(r, default=str) + "\n")
                short = {k: v for k, v in r.items() if k not in ("models", "lakehouse", "tables")}
                print(json.dumps(short, default=str)[:600], flush=True)

    cores = os.cpu_count()
    for n in a.series:
        for rep in range(a.repeats):
            for engine in a.engines:
                lake = a.work / f"lake_{engine}_{n}_r{rep}"
                pair = ["platform", "loop"]
                if all(("cell", t, engine, n, rep) in have for t in pair):
                    continue
                shutil.rmtree(lake, ignore_errors=True)
                if n in a.prepared:  # bronze and silver as `cell prepare` left them
                    shutil.copytree(a.prepared[n], lake)
                rows = []
                for tool in pair:  # A then B, one after the other
                    args = cell_args(
                        a, tool, n, engine, lake, prepared=n in a.prepared and tool == "platform"
                    )
                    r = run_cell(args, env, extra_pids if tool != "loop" else [])
                    r.update(
                        rep=rep, pair=engine, cores=cores, cost_per_series_s=round(r["wall_s"] * cores / n, 4)
                    )
                    rows.append(r)
                rows[0]["loop_wall_s"] = rows[1]["wall_s"]
                rows[0]["overhead_vs_loop"] = round(rows[0]["wall_s"] / rows[1]["wall_s"], 3)
                record(*rows)
                for b in a.baselines if (rep, engine) == (0, a.engines[0]) else []:
                    if ("cell", b, b, n, 0) in have or n > {
                        "statsforecast": a.sf_max,
                        "prophet": a.prophet_max,
                    }[b]:
                        continue
                    r = run_cell(cell_args(a, b, n, "local", lake), env)
                    r.update(rep=0, cores=cores, cost_per_series_s=round(r["wall_s"] * cores / n, 4))
                    record(r)
                if not a.keep_lakes:
                    shutil.rmtree(lake, ignore_errors=True)
        if a.restart_at and (not a.restart_series or n in a.restart_series):
            for engine in a.engines:
                if ("restart", "", engine, n, 0) not in have:
                    record(restart_check(a, n, engine, env, extra_pids))
    return cells


def main(argv: list[str] | None = None) -> dict:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--cell":
        child(sys.argv[2:])
        return {}
    argv = sys.argv[1:] if argv is None else argv
    a = parse(argv)
    cluster = None
    with tempfile.TemporaryDirectory(prefix="mmf-scaling-") as tmp:
        a.work = (a.work or Path(tmp)).resolve()
        a.work.mkdir(parents=True, exist_ok=True)
        if a.smoke and a.out_dir == RESULTS:  # never over the recorded figures
            a.out_dir = a.work
        env, extra_pids = cell_env(), []
        try:
            if a.cluster and "spark" in a.engines:
                cluster, env = start_cluster(a)
                a.spark_master, extra_pids = cluster.url, [p.pid for p in cluster.procs]
            elif a.spark_master:
                extra_pids = cluster_pids(a.spark_master)
            cells = run_all(a, env, extra_pids)
        finally:
            if cluster is not None:
                cluster.stop()
        return report(a, argv, cells)


def report(a, argv: list[str], cells: list[dict]) -> dict:
    """Write ``<out>.json``, ``<out>.md`` (and the plot) in ``--out-dir``; print the Markdown."""
    batch_rows = a.batch_rows or next((c["batch_rows"] for c in cells if c.get("batch_rows")), 1_000_000)
    payload = {
        "command": "python -m benchmarks.scaling " + " ".join(argv),
        "machine": machine(),
        "git": git_sha(),
        "days": a.days,
        "horizon": H,
        "backtest_windows": 1,
        "cluster": a.spark_master,
        "cells": [c for c in cells if c.get("kind") != "restart"],
        "restarts": [c for c in cells if c.get("kind") == "restart"],
        "projection": projection(cells, a.nodes, a.node_cores, batch_rows),
    }
    md = markdown(payload)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    (a.out_dir / f"{a.out}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (a.out_dir / f"{a.out}.md").write_text(md)
    if len(a.series) > 1:
        plot(payload["cells"], a.out_dir / f"{a.out}.png")
    print(md)
    return payload


# -- the projection ---------------------------------------------------------------------
def linear(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """``(a, b)`` of ``y = a + b x`` by least squares over the measured points (one
    size measured: ``a = 0``, ``b = y / x``, i.e. proportional; a falling fit: ``a`` = the
    largest value, ``b = 0``, i.e. flat)."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    if len(set(xs.tolist())) < 2:
        return 0.0, float(ys.mean() / xs.mean())
    b, a0 = np.polyfit(xs, ys, 1)
    if b < 0:  # a figure that does not grow (bounded memory): no trend below its largest value
        return float(ys.max()), 0.0
    return float(a0), float(b)


def projection(
    cells: list[dict], nodes: int, node_cores: int, batch_rows: int, targets=(1_000_000, 10_000_000)
) -> dict:
    """Per engine, from the platform cells: each figure fitted as ``a + b x`` over the
    measured sizes (x = series, or batches for the Delta file counts), then evaluated at
    ``targets`` meters. Wall time: the core-seconds per series of the largest cell (its
    fixed costs included) x meters, spread over ``nodes`` x ``node_cores``."""
    out = {
        "nodes": nodes,
        "node_cores": node_cores,
        "batch_rows": batch_rows,
        "targets": list(targets),
        "engines": {},
    }
    for engine in sorted({c["engine"] for c in cells if c.get("tool") == "platform"}):
        cs = [c for c in cells if c.get("tool") == "platform" and c["engine"] == engine]
        n = [c["n_series"] for c in cs]
        rows_per_series = float(np.mean([c["silver_rows"] / c["n_series"] for c in cs]))

        def at(field: str, cs=cs, n=n) -> tuple[float, float]:
            return linear(n, [c.get(field) or 0 for c in cs])

        # core-seconds per series of the largest cell, its fixed costs included (a fitted
        # slope would take the noise of small cells for a trend)
        largest = max(cs, key=lambda c: c["n_series"])
        core_s = largest["wall_s"] * largest["cores"] / largest["n_series"]
        # the same with ingest and refine (a nightly does both before it trains); a cell
        # started from a prepared lakehouse has none: the largest that ran them
        ran = [c for c in cs if c.get("total_wall_s")] or [largest]
        whole = max(ran, key=lambda c: c["n_series"])
        core_s_total = whole.get("total_wall_s") or whole["wall_s"]
        core_s_total = core_s_total * whole["cores"] / whole["n_series"]
        fits = {
            f: at(f)
            for f in (
                "driver_peak_rss_mb",
                "tree_peak_rss_mb",
                "bundle_bytes",
                "mlflow_artifact_bytes",
                "silver_bytes",
            )
        }
        file_fits = {
            t: (
                linear([c["batches"] for c in cs], [c["tables"].get(t, {}).get("files", 0) for c in cs]),
                linear([c["batches"] for c in cs], [c["tables"].get(t, {}).get("commits", 0) for c in cs]),
            )
            for t in largest["tables"]
        }
        per = {
            "measured_sizes": sorted(set(n)),
            "rows_per_series": round(rows_per_series, 1),
            "core_s_per_series": round(core_s, 5),
            "core_s_per_series_with_ingest": round(core_s_total, 5),
            "with_ingest_measured_at": whole["n_series"],
            "fits": {f: {"a": round(v[0], 3), "b_per_series": v[1]} for f, v in fits.items()},
            "at": {},
        }
        for N in targets:
            batches = math.ceil(N * rows_per_series / batch_rows)
            row = {f: max(0.0, a0 + b * N) for f, (a0, b) in fits.items()}
            row["wall_s"] = core_s * N / (nodes * node_cores)
            row["total_wall_s"] = core_s_total * N / (nodes * node_cores)
            row["batches"] = batches
            row["delta_files"] = {
                t: round(max(0.0, f[0] + f[1] * batches)) for t, (f, _) in file_fits.items()
            }
            row["delta_commits"] = {
                t: round(max(0.0, c[0] + c[1] * batches)) for t, (_, c) in file_fits.items()
            }
            per["at"][str(N)] = row
        out["engines"][engine] = per
    return out


# -- the report -------------------------------------------------------------------------
def _f(c: dict, k: str, fmt: str = "{:.2f}") -> str:
    v = c.get(k)
    return "" if v is None else fmt.format(v)


def markdown(p: dict) -> str:
    m = p["machine"]
    shas = sorted({c["git"] for c in p["cells"] + p["restarts"] if c.get("git")} - {p["git"]})
    commit = f"commit {p['git']}" + (f" (cells resumed from {', '.join(shas)}: see each row)" if shas else "")
    lines = [
        "# Scaling: platform vs plain loop (issue #12)",
        "",
        f"Machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['cpu']}; {commit}. Hourly generated meters "
        f"x {p['days']} days, one backtest window, horizon {p['horizon']}"
        + (f", Spark cells on {p['cluster']}" if p.get("cluster") else "")
        + ".",
        "",
        f"Command: `{p['command']}`",
        "",
        "Each platform cell is followed at once by its plain-loop cell (A, B). wall s: train + forecast + "
        "aggregate (loop: read silver + process_series); cost/series: wall s x cores / series. Peaks: the cell's "
        "own process (driver), its process tree, and the cluster's JVMs when there is one.",
        "",
        "| tool | engine | series | rep | wall s | total wall s | cost/series core-s | driver peak MB | tree peak MB "
        "| cluster peak MB | loop wall s | overhead vs loop | MASE | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in p["cells"]:
        lines.append(
            f"| {c['tool']} | {c.get('pair', c['engine']) if c['tool'] == 'loop' else c['engine']} | {c['n_series']:,} "
            f"| {c.get('rep', 0)} | {_f(c, 'wall_s')} | {_f(c, 'total_wall_s')} | {_f(c, 'cost_per_series_s', '{:.4f}')} "
            f"| {_f(c, 'driver_peak_rss_mb', '{:.0f}')} | {_f(c, 'tree_peak_rss_mb', '{:.0f}')} "
            f"| {_f(c, 'cluster_peak_rss_mb', '{:.0f}')} | {_f(c, 'loop_wall_s')} | {_f(c, 'overhead_vs_loop', '{:.3f}')} "
            f"| {_f(c, 'mase', '{:.3f}')} | {c.get('git', '')} |"
        )
    plat = [c for c in p["cells"] if c["tool"] == "platform"]
    if plat:
        lines += [
            "",
            "Sizes of the platform cells: silver/readings on disk, the bundle (models.parquet), the MLflow "
            "artifacts, the batches (batch_rows) and the live files of the largest Delta tables; peak RSS (tree) by phase.",
            "",
            "| engine | series | silver MB | silver rows | bundle MB | MLflow artifacts MB | batch_rows | batches "
            "| files silver/readings | files gold/backtest | peak MB ingest | refine | train | forecast |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in plat:
            t = c.get("tables", {})
            lines.append(
                f"| {c['engine']} | {c['n_series']:,} | {c['silver_bytes'] / MB:.1f} | {c['silver_rows']:,} "
                f"| {c['bundle_bytes'] / MB:.2f} | {c['mlflow_artifact_bytes'] / MB:.2f} | {c['batch_rows']:,} | {c['batches']} "
                f"| {t.get(SILVER, {}).get('files', '')} | {t.get('gold/backtest', {}).get('files', '')} "
                f"| {_f(c, 'peak_rss_ingest_mb', '{:.0f}')} | {_f(c, 'peak_rss_refine_mb', '{:.0f}')} "
                f"| {_f(c, 'peak_rss_train_mb', '{:.0f}')} | {_f(c, 'peak_rss_forecast_mb', '{:.0f}')} |"
            )
    lines += restart_md(p["restarts"]) + projection_md(p["projection"])
    return "\n".join(lines) + "\n"


def restart_md(restarts: list[dict]) -> list[str]:
    if not restarts:
        return []
    lines = [
        "",
        "## Restart",
        "",
        "train killed (SIGKILL to its process group) at the share of series shown, then run again, against a "
        "full train on a copy of the same lakehouse. Gold compared sorted, without run_id and created_at.",
        "",
        "| engine | series | full train s | killed at s | done at kill | restart s | restart / full | Gold identical "
        "| MLflow runs (full / restarted) | model versions (full / restarted) | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in restarts:
        same = ", ".join(
            f"{t.split('/')[1]} {'yes' if ok else 'NO'}" for t, ok in r["gold_identical"].items()
        )
        fs, rs = r["full_state"], r["restarted_state"]
        lines.append(
            f"| {r['engine']} | {r['n_series']:,} | {r['full_train_s']:.2f} | {r.get('kill_kill_s', '')} "
            f"| {r.get('kill_share_done', 'not killed')} | {r['restart_train_s']:.2f} | {r['restart_vs_full']:.3f} | {same} "
            f"| {fs['mlflow_runs']} / {rs['mlflow_runs']} | {fs['model_versions']} / {rs['model_versions']} "
            f"| {r.get('git', '')} |"
        )
    return lines


def projection_md(pr: dict) -> list[str]:
    lines = [
        "",
        f"## Projection to {' and '.join(f'{t:,}' for t in pr['targets'])} meters",
        "",
        f"Computed by `projection()` from the cells above: each figure fitted as a + b x series over the measured "
        f"sizes (one size: proportional; a figure that falls with size: flat at its largest value), Delta files and commits as a + b x batches (batch_rows {pr['batch_rows']:,}); "
        f"wall time = core-seconds per series of the largest cell (fixed costs included; train + forecast, and with ingest + refine) x meters / "
        f"({pr['nodes']} nodes x {pr['node_cores']} cores). Files: live files of the table.",
        "",
        "| engine | meters | driver memory GB | tree memory GB | silver GB | bundle GB | MLflow artifacts GB "
        "| batches | Delta files (all tables) | Delta commits (all tables) | wall h (train + forecast) "
        "| wall h (with ingest + refine) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for engine, per in pr["engines"].items():
        for N, row in per["at"].items():
            lines.append(
                f"| {engine} | {int(N):,} | {row['driver_peak_rss_mb'] / 1024:.1f} | {row['tree_peak_rss_mb'] / 1024:.1f} "
                f"| {row['silver_bytes'] / 2**30:.1f} | {row['bundle_bytes'] / 2**30:.2f} "
                f"| {row['mlflow_artifact_bytes'] / 2**30:.2f} | {row['batches']:,} | {sum(row['delta_files'].values()):,} "
                f"| {sum(row['delta_commits'].values()):,} | {row['wall_s'] / 3600:.2f} "
                f"| {row.get('total_wall_s', row['wall_s']) / 3600:.2f} |"
            )
    for engine, per in pr["engines"].items():
        lines.append("")
        lines.append(
            f"{engine}: measured at {', '.join(f'{s:,}' for s in per['measured_sizes'])} series; "
            f"{per['rows_per_series']:,} silver rows and {per['core_s_per_series']:.4f} core-s per series "
            f"({per.get('core_s_per_series_with_ingest', per['core_s_per_series']):.4f} with ingest and refine"
            f"{', measured at {:,}'.format(per['with_ingest_measured_at']) if 'with_ingest_measured_at' in per else ''}); "
            "driver memory per 1,000 series "
            f"{per['fits']['driver_peak_rss_mb']['b_per_series'] * 1000:.1f} MB above {per['fits']['driver_peak_rss_mb']['a']:.0f} MB."
        )
    return lines + [""]


def plot(cells: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4))
    ax1, ax2 = fig.subplots(1, 2)
    frame = pd.DataFrame([c for c in cells if c["tool"] in ("platform", "loop")])
    if frame.empty:
        return
    frame["label"] = np.where(frame["tool"] == "loop", "loop", "platform (" + frame["engine"] + ")")
    for label, g in frame.groupby("label"):
        g = g.groupby("n_series", as_index=False)[["wall_s", "tree_peak_rss_mb"]].mean()
        ax1.plot(g["n_series"], g["wall_s"], marker="o", label=label)
        ax2.plot(g["n_series"], g["tree_peak_rss_mb"], marker="o", label=label)
    for ax, title in ((ax1, "wall time (s)"), (ax2, "peak RSS of the process tree (MB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("series")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
