"""Shared by the serving tests (no tests here): one real lakehouse with a registered
champion, built once per session by the real pipeline, and a real uvicorn server on a
free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

N_SERIES, DAYS, SEED, FAULT_SHARE = 12, 21, 3, 0.34  # 11 usable series, MTR-00005 quarantined
HORIZON = 24
EXPLORER_HORIZON = 72  # three days: a portfolio line, not a point


@dataclass
class Built:
    config: object  # forecasting.config.Config
    lake: object  # training.tables.Lakehouse
    root: Path
    usable: list[str]
    quarantined: list[str]


_BUILT: dict[str, Built] = {}
_LOCK = threading.Lock()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_config(root: Path, **overrides):
    from forecasting.config import load_config

    return load_config(
        lakehouse=str(root / "lake"),
        horizon=overrides.pop("horizon", HORIZON),
        models=overrides.pop("models", ["seasonal_naive"]),
        workers=2,
        **{
            "cleaning.min_length": 48,
            "mlflow.tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
            "serve.max_forecast_age_h": 0,  # the generated history ends in 2024: no staleness check
            **overrides,
        },
    )


def built(tmp_path_factory) -> Built:
    """ingest -> refine -> train -> forecast -> aggregate on generated meters, once per
    session (both serving test modules share it)."""
    with _LOCK:
        if "lake" not in _BUILT:
            _BUILT["lake"] = _build(tmp_path_factory.mktemp("serve"))
        return _BUILT["lake"]


def explorer_ids(sid: str) -> str:
    """``MTR-00012`` -> ``X12``: ids whose text order is not their natural order."""
    return "X" + str(int(sid.split("-")[1]))


def built_for_explorer(tmp_path_factory) -> Built:
    """The same pipeline on the same meters with ids ``X1 … X12``, two candidate models
    (both kept in gold/backtest_forecasts) and a three-day horizon, so that the chosen
    models, errors and id orders differ and the portfolio spans days (the page's explorer)."""
    with _LOCK:
        if "explorer" not in _BUILT:
            _BUILT["explorer"] = _build(
                tmp_path_factory.mktemp("explorer"),
                rename=explorer_ids,
                models=["seasonal_naive", "weekly_naive"],
                horizon=EXPLORER_HORIZON,
                **{"backtest.store_forecasts": "all"},  # the candidates' overlay
            )
        return _BUILT["explorer"]


def _build(root: Path, rename=None, **settings) -> Built:
    from forecasting.generator import generate, write
    from training.jobs.forecast import aggregate, forecast
    from training.jobs.ingest import ingest
    from training.jobs.refine import refine
    from training.jobs.train import train
    from training.tables import Lakehouse

    cfg = small_config(root, **settings)
    lake = Lakehouse.from_config(cfg)
    data = generate(n_series=N_SERIES, days=DAYS, freq="h", seed=SEED, fault_share=FAULT_SHARE)
    if rename is not None:
        data.readings["series_id"] = data.readings["series_id"].map(rename)
    write(data, root / "raw" / "meters.parquet")
    ingest(lake, str(root / "raw" / "meters.parquet"))
    refine(lake, cfg)
    rep = train(lake, cfg)
    assert rep.model_version == "1" and rep.promoted, rep
    forecast(lake, cfg)
    aggregate(lake, cfg)
    sel = lake.read("gold/selection")
    usable = sorted(sel.loc[sel["status"].isin(["ok", "fallback"]), "series_id"])
    quarantined = sorted(sel.loc[sel["status"] == "quarantined", "series_id"])
    return Built(cfg, lake, root, usable, quarantined)


class ServerThread:
    """``create_app(config)`` under a real uvicorn server (configured as ``mmf serve``
    configures it) in a background thread."""

    def __init__(self, config, refresh_s: float = 0.3, **server: float) -> None:
        """``server``: :func:`training.serving.protocol.server_config` arguments
        (``read_timeout_s``, ``keep_alive_s``); the rest is what ``mmf serve`` runs with."""
        import uvicorn

        from training.serving.app import create_app
        from training.serving.protocol import server_config

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.app = create_app(config, refresh_s=refresh_s)
        self.server = uvicorn.Server(
            server_config(self.app, "127.0.0.1", self.port, access_log=False, log_level="warning", **server)
        )
        self.thread = threading.Thread(target=self.server.run, name="uvicorn-test", daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        wait_for(self.url + "/health", timeout=30)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def wait_for(
    url: str,
    timeout: float = 60,
    status: int = 200,
    headers: dict | None = None,
    proc: subprocess.Popen | None = None,
) -> httpx.Response:
    """Poll ``url`` until it answers ``status``; the last answer (or error) on timeout."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode} before {url} answered")
        try:
            r = httpx.get(url, headers=headers, timeout=5)
            if r.status_code == status:
                return r
            last = f"{r.status_code} {r.text[:300]}"
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer {status} within {timeout}s: last {last}")


def wait_until(check, timeout: float = 20, interval: float = 0.1):
    """Call ``check`` until it returns a truthy value; that value (AssertionError on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        time.sleep(interval)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child, without settings that would override
    the test's config."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_URI", "MMF_API_KEY", "MMF_LAKEHOUSE")
    }
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


def stop(proc: subprocess.Popen) -> None:
    """Stop a child started with ``start_new_session=True`` and everything it started."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, 15)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=5)
