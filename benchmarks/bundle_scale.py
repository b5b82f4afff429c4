"""The many-models bundle at scale (issue #12): build, load and serve-start time and memory
of a champion bundle of 1,000 to 100,000 series.

What it does, for each ``--series`` N:

1. Build (a child process): N ``seasonal_naive`` models fitted on short synthetic hourly
   histories (48 points), handed to ``registry.pyfunc.log_many_models`` as an iterable of
   frames of ``--batch`` series (TRAIN_RESULT rows plus the gold/models extra columns, as
   the train job passes them), inside a real MLflow training run, then promoted to
   champion. Records the time to generate the frames, the time of ``log_many_models``
   (writing ``models.parquet``, logging and registering the pyfunc, hashing its
   artifact) and the child's peak RSS.
2. Load (a fresh child process each): ``mlflow.pyfunc.load_model`` of a local copy of the
   version's artifact, and ``registry.pyfunc.load_version`` (download, sha256 check,
   load: what ``mmf serve``/``forecast`` do): time, and RSS (psutil) after imports,
   after the load and after forecasting one series. With ``--baseline ROOT`` the first
   is repeated with the code of another checkout (e.g. main before the change) on the
   same artifact.
3. Serve start: ``mmf serve`` (uvicorn, a subprocess) against the lakehouse whose
   champion is the bundle: time from the process start until ``GET /models/champion``
   answers 200 (the champion loaded and its first predict paid), and the server's RSS
   then and after one ``POST /predict``. The lakehouse holds no Gold tables (the bundle
   is built directly), so ``/ready`` stays 503 ("gold/forecasts does not exist yet"): the
   figure is the model-loading part of the start, not the Gold caches.

``--kind reference`` builds a *reference* bundle instead (``mlflow.bundle: reference``):
the frames are committed to gold/models one Delta commit each, as training does (timed
apart: that is the engine's write, not the registration), then ``log_many_models``
registers a version naming the run's rows at the table's version (no models.parquet;
its tags' figures are read from the table without the models). Results go to
``bundle_scale_reference.{json,md}``.

Run::

    .venv/bin/python -m benchmarks.bundle_scale --series 1000 10000 100000 --work /tmp/bundle-scale
    .venv/bin/python -m benchmarks.bundle_scale --kind reference --series 10000 100000 --work /tmp/bundle-ref
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
N_OBS = 48


def _rss_mib() -> float:
    import psutil

    return round(psutil.Process().memory_info().rss / 2**20, 1)


def _peak_mib() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# -- 1. build (child) ------------------------------------------------------------------
def frames(n_series: int, batch: int, clock: dict, by_bucket: bool = False):
    """TRAIN_RESULT frames of ``batch`` series each (plus gold/models' extra columns);
    ``clock["generate_s"]`` sums the time spent making them. ``by_bucket``: each frame a
    range of buckets (as training's batches are), else a range of ids."""
    import numpy as np
    import pandas as pd

    from forecasting import contract as C
    from forecasting.models.seasonal_naive import SeasonalNaive

    rng = np.random.default_rng(0)
    end = pd.Timestamp("2024-03-31 23:00")
    hours = np.arange(N_OBS)
    every = np.array([f"BENCH-{i:06d}" for i in range(n_series)], dtype=object)
    if by_bucket:
        every = every[np.argsort(C.bucket_of(every), kind="stable")]
    for start in range(0, n_series, batch):
        t0 = time.perf_counter()
        ids = list(every[start : start + batch])
        texts = []
        for _ in ids:
            y = rng.uniform(0.5, 5) * (1 + 0.4 * np.sin(2 * np.pi * (hours % 24) / 24)) + rng.normal(
                0, 0.2, N_OBS
            )
            model = SeasonalNaive(season_length=24, seasonalities=(24, 168), freq="h").fit(np.maximum(y, 0))
            texts.append(json.dumps(model.to_dict()))
        frame = pd.DataFrame(
            {
                C.SERIES_ID: ids,
                "status": C.OK,
                "reason": "",
                "model": "seasonal_naive",
                "metric": "mase",
                "metric_value": rng.uniform(0.6, 1.4, len(ids)),
                "n_obs": N_OBS,
                "end": end,
                "backtest_json": "[]",
                "candidates_json": "{}",
                "model_json": texts,
                "tuned_json": "{}",
            }
        ).assign(run_id="bench", batch=start // batch, bucket=lambda f: C.bucket_of(f[C.SERIES_ID]))
        clock["generate_s"] += time.perf_counter() - t0
        yield frame


def build(work: Path, n_series: int, batch: int, kind: str = "embedded") -> dict:
    from forecasting.config import load_config
    from registry import promotion, pyfunc, runs

    cfg = load_config(work / "conf.yaml")
    clock = {"generate_s": 0.0, "write_s": 0.0}
    with runs.start_training_run(cfg, silver_version=0, engine="local", run_name="bundle-scale") as run:
        if kind == "reference":
            ref = write_gold_models(
                cfg, run.info.run_id, frames(n_series, batch, clock, by_bucket=True), clock
            )
            t0 = time.perf_counter()
            mv = pyfunc.log_many_models(None, cfg, silver_version=0, reference=ref)
            log_s = time.perf_counter() - t0
        else:
            t0 = time.perf_counter()
            mv = pyfunc.log_many_models(frames(n_series, batch, clock), cfg, silver_version=0)
            log_s = time.perf_counter() - t0 - clock["generate_s"]  # the frames are made as it reads them
    promotion.promote(cfg, mv.version)
    out = {
        "version": str(mv.version),
        "n_series": int(mv.tags["mmf.n_series"]),
        "generate_s": round(clock["generate_s"], 2),
        "log_many_models_s": round(log_s, 2),
        "peak_rss_mib": _peak_mib(),
    }
    if kind == "reference":
        out["write_gold_models_s"] = round(clock["write_s"], 2)
    return out


def write_gold_models(cfg, run_id: str, batches, clock: dict):
    """The frames committed to gold/models one Delta commit each, as training commits its
    batches; the :class:`registry.pyfunc.ModelsRef` of the run's rows at the last one."""
    import pandas as pd

    from registry import pyfunc
    from training.tables import GOLD_MODELS, Lakehouse

    lake = Lakehouse.from_config(cfg)
    for i, frame in enumerate(batches):
        t0 = time.perf_counter()
        rows = frame.assign(run_id=run_id, silver_version=0, batch=i, created_at=pd.Timestamp.now(tz="UTC"))
        lake.write(GOLD_MODELS, rows, metadata={"mmf.run_id": run_id, "mmf.batch": i})
        clock["write_s"] += time.perf_counter() - t0
    return pyfunc.ModelsRef(lake.root, run_id, int(lake.version(GOLD_MODELS)))


# -- 2. load (child) -------------------------------------------------------------------
def load(work: Path, how: str) -> dict:
    import mlflow
    import numpy as np
    import pandas as pd

    from forecasting.config import load_config
    from registry import pyfunc

    cfg = load_config(work / "conf.yaml")
    os.environ["MLFLOW_TRACKING_URI"] = cfg.mlflow_tracking_uri()
    base = _rss_mib()
    t0 = time.perf_counter()
    if how == "load_version":
        model = pyfunc.load_version(cfg, "1")
    else:
        model = mlflow.pyfunc.load_model(str(work / "model"))
    load_s = time.perf_counter() - t0
    loaded = _rss_mib()
    t0 = time.perf_counter()
    out = model.predict(pd.DataFrame({"series_id": ["BENCH-000007"], "horizon": [np.int64(48)]}))
    assert len(out) == 48
    return {
        "load_s": round(load_s, 3),
        "first_predict_s": round(time.perf_counter() - t0, 3),
        "rss_after_imports_mib": base,
        "rss_after_load_mib": loaded,
        "rss_after_predict_mib": _rss_mib(),
    }


# -- 3. serve start ---------------------------------------------------------------------
def serve_start(work: Path) -> dict:
    import httpx
    import psutil

    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_URI", "MMF_LAKEHOUSE", "MMF_API_KEY")
    }
    env["PYTHONPATH"] = str(ROOT)
    log = open(work / "server.log", "wb")
    t0 = time.perf_counter()
    cmd = [
        sys.executable,
        "-m",
        "training.cli",
        "serve",
        "--conf",
        str(work / "conf.yaml"),
        "--port",
        str(port),
    ]
    server = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        while True:
            if server.poll() is not None or time.perf_counter() - t0 > 600:
                raise SystemExit(
                    f"server exited ({server.returncode}) or timed out: see {work / 'server.log'}"
                )
            try:
                if httpx.get(url + "/models/champion", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        started = time.perf_counter() - t0
        proc = psutil.Process(server.pid)
        rss = proc.memory_info().rss
        body = {"series": [{"series_id": "BENCH-000011", "horizon": 48}]}
        assert httpx.post(url + "/predict", json=body, timeout=30).status_code == 200
        ready = httpx.get(url + "/ready", timeout=5)
        return {
            "champion_loaded_s": round(started, 2),
            "rss_champion_loaded_mib": round(rss / 2**20, 1),
            "rss_after_predict_mib": round(proc.memory_info().rss / 2**20, 1),
            "ready_status": ready.status_code,
            "ready_problem": ready.json().get("reason") if ready.status_code != 200 else None,
        }
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        log.close()


# -- orchestration ---------------------------------------------------------------------
def _child(mode: str, work: Path, *extra: str, root: Path = ROOT) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--work", str(work), *extra]
    env = {**os.environ, "PYTHONPATH": str(root), "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    out = subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cell(work: Path, n_series: int, batch: int, baseline: Path | None, kind: str = "embedded") -> dict:
    import yaml

    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    settings = {
        "lakehouse": str(work / "lake"),
        "horizon": 48,
        "freq": "h",
        "models": ["seasonal_naive"],
        "mlflow": {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}", "experiment": "bundle-scale"},
        "serve": {"max_forecast_age_h": 0},
    }
    (work / "conf.yaml").write_text(yaml.safe_dump(settings))
    print(f"{n_series:,} series: building ...", flush=True)
    out: dict = {"series": n_series, "batch": batch, "kind": kind}
    out["build"] = _child("build", work, "--series", str(n_series), "--batch", str(batch), "--kind", kind)
    (model,) = (p.parent for p in (work / "lake").rglob("MLmodel"))
    shutil.copytree(model, work / "model")
    if kind == "reference":
        files = list((work / "lake" / "gold" / "models").glob("*.parquet"))
        mib = sum(f.stat().st_size for f in files) / 2**20
        out["bundle"] = {"mib": round(mib, 1), "row_groups": f"{len(files)} files"}
    else:
        parquet = next((work / "model").rglob("models.parquet"))
        meta = __import__("pyarrow.parquet", fromlist=["x"]).ParquetFile(parquet).metadata
        out["bundle"] = {"mib": round(parquet.stat().st_size / 2**20, 1), "row_groups": meta.num_row_groups}
    out["artifact_files"] = sorted(
        p.relative_to(work / "model").as_posix() for p in (work / "model").rglob("*") if p.is_file()
    )
    print(f"  built: {out['build']}; loading ...", flush=True)
    out["load_model"] = _child("load_model", work)
    out["load_version"] = _child("load_version", work)
    if baseline is not None:
        out["load_model_baseline"] = _child("load_model", work, root=baseline)
    print(f"  loaded: {out['load_model']}; starting the server ...", flush=True)
    out["serve"] = serve_start(work)
    print(f"  serve: {out['serve']}", flush=True)
    return out


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Model bundle at scale" + (" (reference bundle)" if report.get("kind") == "reference" else ""),
        "",
        f"`{report['command']}` on {report['date']} (commit {report['git']}{report['baseline_note']})",
        "",
        f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gib']} GiB memory, Python {m['python']}; "
        f"1-minute load average {report['load_average_1m']} at the start"
        + (f", {report['load_average_1m_end']} at the end" if "load_average_1m_end" in report else "")
        + " (the cores are shared: times are noisy).",
        "",
        "| series | "
        + ("gold/models MiB / files" if report.get("kind") == "reference" else "bundle MiB / row groups")
        + (" | generate s (write gold/models s)" if report.get("kind") == "reference" else " | generate s")
        + " | log_many_models s | build peak RSS MiB "
        "| load_model s | RSS after imports → load → 1 predict MiB | load_version s (RSS after load) "
        "| serve: champion loaded s | serve RSS MiB (loaded, after /predict) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in report["cells"]:
        b, lm, lv, s = c["build"], c["load_model"], c["load_version"], c["serve"]
        lines.append(
            f"| {c['series']:,} | {c['bundle']['mib']} / {c['bundle']['row_groups']} | {b['generate_s']}"
            + (f" ({b['write_gold_models_s']})" if "write_gold_models_s" in b else "")
            + " "
            f"| {b['log_many_models_s']} | {b['peak_rss_mib']} | {lm['load_s']} "
            f"| {lm['rss_after_imports_mib']} → {lm['rss_after_load_mib']} → {lm['rss_after_predict_mib']} "
            f"| {lv['load_s']} ({lv['rss_after_load_mib']}) | {s['champion_loaded_s']} "
            f"| {s['rss_champion_loaded_mib']}, {s['rss_after_predict_mib']} |"
        )
    if any("load_model_baseline" in c for c in report["cells"]):
        lines += ["", "Same artifact, loaded by the baseline checkout's code (before the change):", ""]
        lines += ["| series | load_model s | RSS after imports → load → 1 predict MiB |", "|---:|---:|---:|"]
        for c in report["cells"]:
            lb = c.get("load_model_baseline")
            if lb:
                lines.append(
                    f"| {c['series']:,} | {lb['load_s']} | {lb['rss_after_imports_mib']} → "
                    f"{lb['rss_after_load_mib']} → {lb['rss_after_predict_mib']} |"
                )
    ready = report["cells"][-1]["serve"]
    lines += [
        "",
        f"The lakehouse holds no Gold tables: `/ready` answered {ready['ready_status']} "
        f"({ready['ready_problem']}), so the serve figure is the model-loading part of the start "
        "(process start until `GET /models/champion` answers 200: imports, the champion's download, "
        "sha256 check, load, its listing of series ids and its first predict).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--series", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    p.add_argument("--batch", type=int, default=10_000, help="series per frame handed to log_many_models")
    p.add_argument("--work", type=Path, default=HERE / "work" / "bundle_scale")
    p.add_argument("--baseline", type=Path, help="also load each bundle with this checkout's code")
    p.add_argument("--results", type=Path, default=HERE / "results")
    p.add_argument("--kind", choices=["embedded", "reference"], default="embedded", help="the bundle built")
    p.add_argument("--child", choices=["build", "load_model", "load_version"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child == "build":
        print(json.dumps(build(args.work, args.series[0], args.batch, args.kind)))
        return
    if args.child:
        print(json.dumps(load(args.work, args.child)))
        return

    from benchmarks.common import git_sha
    from benchmarks.common import machine as common_machine

    command = shlex.join(
        [".venv/bin/python", "-m", "benchmarks.bundle_scale", *(sys.argv[1:] if argv is None else argv)]
    )
    load_avg = round(os.getloadavg()[0], 2)
    cells = [cell(args.work / str(n), n, args.batch, args.baseline, args.kind) for n in args.series]
    report = {
        "benchmark": "bundle_scale",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "git": git_sha(),
        "baseline_note": f"; baseline {args.baseline}" if args.baseline else "",
        "machine": common_machine(),
        "load_average_1m": load_avg,
        "load_average_1m_end": round(os.getloadavg()[0], 2),
        "kind": args.kind,
        "cells": cells,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    stem = "bundle_scale" if args.kind == "embedded" else "bundle_scale_reference"
    (args.results / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.results / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
