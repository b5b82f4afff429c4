"""Latency of the REST service with 10,000 series: forecast lookup and /predict of one series.

What it does:

1. Builds (once; reused while the parameters match) a lakehouse under ``--work``: a
   many-models pyfunc of ``seasonal_naive`` models fitted on synthetic hourly histories,
   logged inside a real MLflow training run with ``registry.pyfunc.log_many_models`` and
   promoted to champion; its forecasts written straight into ``gold/forecasts`` and one
   ``gold/selection`` row per series.
2. Starts the real server (``mmf serve``, uvicorn, access log on) on 127.0.0.1 and waits
   for ``/ready``.
3. From a separate client process (httpx, one keep-alive connection, requests one after
   another) sends ``--requests`` forecast lookups (``GET /series/{id}/forecast``) and as
   many ``POST /predict`` of one series at the full horizon, random series each time,
   after a warm-up; measures each request end to end on the client.
4. Writes ``benchmarks/results/serve_latency.json`` and ``.md`` with p50/p90/p99/max, the
   machine (cores, memory, CPU) and the command.

Run::

    .venv/bin/python benchmarks/serve_latency.py            # 10,000 series, 3,000 + 3,000 requests
    .venv/bin/python benchmarks/serve_latency.py --series 1000 --requests 500   # quicker
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import machine as common_machine

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGETS_MS = {"forecast_lookup": 20.0, "predict_one_series": 100.0}  # p99 targets on the 2-core box


# -- building the lakehouse ------------------------------------------------------------
def build(work: Path, n_series: int, horizon: int, history_days: int, seed: int) -> dict:
    import numpy as np
    import pandas as pd

    from forecasting import contract as C
    from forecasting.config import load_config
    from forecasting.models.seasonal_naive import SeasonalNaive
    from registry import promotion, pyfunc, runs
    from training.tables import Lakehouse

    marker = work / "built.json"
    # generated history ends in 2024: the staleness check of /ready is off (in params: rebuilds old confs)
    params = {
        "series": n_series,
        "horizon": horizon,
        "history_days": history_days,
        "seed": seed,
        "max_age_h": 0,
    }
    conf = work / "serve.yaml"
    if marker.exists() and json.loads(marker.read_text()).get("params") == params and conf.exists():
        return json.loads(marker.read_text())
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    started = time.perf_counter()
    settings = {
        "lakehouse": str(work / "lake"),
        "horizon": horizon,
        "freq": "h",
        "models": ["seasonal_naive"],
        "mlflow": {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}", "experiment": "serve-bench"},
        "serve": {"max_forecast_age_h": 0},
    }
    import yaml

    conf.write_text(yaml.safe_dump(settings))
    cfg = load_config(conf)
    lake = Lakehouse.from_config(cfg)

    rng = np.random.default_rng(seed)
    n = history_days * 24
    end = pd.Timestamp("2024-03-31 23:00")
    hours = np.arange(n)
    ids = [f"BENCH-{i:05d}" for i in range(n_series)]
    model_json, metric = [], []
    for _ in ids:
        level = rng.uniform(0.5, 5.0)
        y = level * (1 + 0.4 * np.sin(2 * np.pi * (hours % 24) / 24 + rng.uniform(0, 6.28))) + rng.normal(
            0, 0.2, n
        )
        model = SeasonalNaive(season_length=24, seasonalities=(24, 168), freq="h").fit(np.maximum(y, 0))
        model_json.append(json.dumps(model.to_dict()))
        metric.append(float(rng.uniform(0.6, 1.4)))
    results = pd.DataFrame(
        {
            C.SERIES_ID: ids,
            "status": C.OK,
            "reason": "",
            "model": "seasonal_naive",
            "metric": "mase",
            "metric_value": metric,
            "n_obs": n,
            "end": end,
            "backtest_json": "[]",
            "candidates_json": "{}",
            "model_json": model_json,
            "tuned_json": "{}",
        }
    )
    fitted_s = time.perf_counter() - started
    with runs.start_training_run(cfg, silver_version=0, engine="local", run_name="serve-benchmark") as run:
        mv = pyfunc.log_many_models(results, cfg, silver_version=0)
        run_id = run.info.run_id
    promotion.promote(cfg, mv.version)
    registered_s = time.perf_counter() - started

    model = pyfunc.load_version(cfg, mv.version)
    pred = model.predict(
        pd.DataFrame({C.SERIES_ID: ids, "horizon": np.full(n_series, horizon, dtype=np.int64)})
    )
    now = pd.Timestamp(dt.datetime.now(dt.timezone.utc)).as_unit("us")
    pred["model_version"] = str(mv.version)
    pred["run_id"] = run_id
    pred["cutoff"] = end
    pred["created_at"] = now
    lake.write("gold/forecasts", pred)
    sel = results[[C.SERIES_ID, "status", "reason", "model", "metric", "metric_value"]].assign(
        run_id=run_id, silver_version=0, created_at=now
    )
    lake.write("gold/selection", sel)
    info = {
        "params": params,
        "model_version": str(mv.version),
        "run_id": run_id,
        "gold_forecast_rows": len(pred),
        "build_s": {
            "fit": round(fitted_s, 1),
            "register": round(registered_s - fitted_s, 1),
            "total": round(time.perf_counter() - started, 1),
        },
        "conf": str(conf),
        "ids": ids,
    }
    marker.write_text(json.dumps(info))
    return info


# -- the client (a separate process) ----------------------------------------------------
def client(url: str, ids_file: Path, requests: int, warmup: int, horizon: int, seed: int) -> dict:
    import random

    import httpx

    ids = json.loads(ids_file.read_text())
    rnd = random.Random(seed)
    out: dict[str, dict] = {}
    with httpx.Client(base_url=url, timeout=30) as c:

        def lookup(sid: str) -> httpx.Response:
            return c.get(f"/series/{sid}/forecast")

        def predict(sid: str) -> httpx.Response:
            return c.post("/predict", json={"series": [{"series_id": sid, "horizon": horizon}]})

        for name, call in (("forecast_lookup", lookup), ("predict_one_series", predict)):
            for _ in range(warmup):
                call(rnd.choice(ids)).raise_for_status()
            times, nbytes = [], 0
            wall = time.perf_counter()
            for _ in range(requests):
                sid = rnd.choice(ids)
                t0 = time.perf_counter()
                r = call(sid)
                times.append((time.perf_counter() - t0) * 1000)
                if r.status_code != 200:
                    raise SystemExit(f"{name} {sid}: {r.status_code} {r.text[:300]}")
                nbytes += len(r.content)
            wall = time.perf_counter() - wall
            out[name] = _summary(times, wall, nbytes)
    return out


def _summary(times_ms: list[float], wall_s: float, nbytes: int) -> dict:
    import numpy as np

    t = np.asarray(times_ms)
    return {
        "requests": len(t),
        "p50_ms": round(float(np.percentile(t, 50)), 3),
        "p90_ms": round(float(np.percentile(t, 90)), 3),
        "p99_ms": round(float(np.percentile(t, 99)), 3),
        "max_ms": round(float(t.max()), 3),
        "mean_ms": round(float(t.mean()), 3),
        "requests_per_s": round(len(t) / wall_s, 1),
        "mean_response_bytes": int(nbytes / len(t)),
    }


# -- orchestration ---------------------------------------------------------------------
def machine() -> dict:
    # other work on the box skews the tail
    return {**common_machine(), "load_average_1m_at_start": round(os.getloadavg()[0], 2)}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> float:
    import httpx

    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/ready", timeout=5).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"server not ready within {timeout}s")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--series", type=int, default=10_000)
    p.add_argument("--horizon", type=int, default=48)
    p.add_argument("--history-days", type=int, default=14)
    p.add_argument("--requests", type=int, default=3000, help="timed requests per kind")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=HERE / "work" / "serve")
    p.add_argument("--results", type=Path, default=HERE / "results")
    p.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)  # internal: the client process
    p.add_argument("--ids-file", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.client:
        print(
            json.dumps(
                client(args.client, args.ids_file, args.requests, args.warmup, args.horizon, args.seed)
            )
        )
        return

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    command = shlex.join(
        [
            ".venv/bin/python",
            os.path.relpath(Path(__file__).resolve(), ROOT),
            *(sys.argv[1:] if argv is None else argv),
        ]
    )
    print(f"building {args.series:,} series under {args.work} (reused when present) ...", flush=True)
    info = build(args.work, args.series, args.horizon, args.history_days, args.seed)
    ids_file = args.work / "ids.json"
    ids_file.write_text(json.dumps(info["ids"]))

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_URI", "MMF_LAKEHOUSE", "MMF_API_KEY")
    }
    log = open(args.work / "server.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "training.cli", "serve", "--conf", info["conf"], "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        ready_s = _wait_ready(url, server, timeout=600)
        print(f"server ready in {ready_s:.1f}s; measuring ...", flush=True)
        out = subprocess.run(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--client",
                url,
                "--ids-file",
                str(ids_file),
                "--requests",
                str(args.requests),
                "--warmup",
                str(args.warmup),
                "--horizon",
                str(args.horizon),
                "--seed",
                str(args.seed),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        results = json.loads(out.stdout.strip().splitlines()[-1])
        import httpx

        rss_kb = int(
            next(
                line.split()[1]
                for line in Path(f"/proc/{server.pid}/status").read_text().splitlines()
                if line.startswith("VmRSS:")
            )
        )
        ready = httpx.get(url + "/ready").json()
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        log.close()

    report = {
        "benchmark": "serve_latency",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "machine": machine(),
        "setup": {
            "series": args.series,
            "horizon": args.horizon,
            "gold_forecast_rows": info["gold_forecast_rows"],
            "model": "seasonal_naive many-models pyfunc (registered, champion)",
            "server": "mmf serve (uvicorn, 1 process, access log on), 127.0.0.1",
            "client": "separate process, httpx, 1 keep-alive connection, sequential requests, random series",
            "warmup_per_kind": args.warmup,
            "build_s": info["build_s"],
            "server_ready_s": round(ready_s, 1),
            "server_rss_mib": round(rss_kb / 1024, 1),
            "ready": ready,
        },
        "results": results,
        "targets_p99_ms": TARGETS_MS,
        "met": {k: results[k]["p99_ms"] <= v for k, v in TARGETS_MS.items()},
    }
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "serve_latency.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.results / "serve_latency.md").write_text(_markdown(report))
    print(_markdown(report))


def _markdown(r: dict) -> str:
    m, s = r["machine"], r["setup"]
    rows = "\n".join(
        f"| {name} | {v['requests']:,} | {v['p50_ms']:.2f} | {v['p90_ms']:.2f} | {v['p99_ms']:.2f} | {v['max_ms']:.2f} "
        f"| {v['requests_per_s']:,.0f} | {r['targets_p99_ms'][name]:.0f} | {'yes' if r['met'][name] else 'NO'} |"
        for name, v in r["results"].items()
    )
    return f"""# Serving latency

`{r["command"]}` on {r["date"]}

Machine: {m["cores"]} cores ({m["cpu"]}), {m["memory_gib"]} GiB memory, Python {m["python"]}, {m["platform"]};
1-minute load average {m["load_average_1m_at_start"]} when the run started (other work on the box skews the tail).

Setup: {s["series"]:,} series, horizon {s["horizon"]} ({s["gold_forecast_rows"]:,} gold/forecasts rows); {s["model"]};
{s["server"]}; {s["client"]}; {s["warmup_per_kind"]} warm-up requests per kind. Server ready
{s["server_ready_s"]} s after start (loading the champion and caching every forecast); server
RSS {s["server_rss_mib"]} MiB after the run.

| request | n | p50 ms | p90 ms | p99 ms | max ms | req/s | p99 target ms | met |
|---|---:|---:|---:|---:|---:|---:|---:|---|
{rows}

`forecast_lookup` is `GET /series/{{id}}/forecast` (the champion's latest Gold forecast, a
dict hit on pre-rendered JSON); `predict_one_series` is `POST /predict` of one series at
horizon {s["horizon"]} through the champion many-models pyfunc held in memory. Latency is
measured on the client, end to end, over loopback; client and server share the cores.
"""


if __name__ == "__main__":
    main()
