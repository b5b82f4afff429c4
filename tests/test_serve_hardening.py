"""The REST service under abuse (issue 18, findings 8, 12 and 13, and stale forecasts):
a real uvicorn server on a loopback port, configured as ``mmf serve`` configures it, in
front of the lakehouse and registry the real pipeline built (test_serve_support); raw
sockets where the finding is about the connection itself."""

from __future__ import annotations

import datetime as dt
import json
import logging
import socket
import subprocess
import sys
import threading
import time

import httpx
import pyarrow.compute as pc
import pytest
import yaml
from test_serve_support import ServerThread, built, clean_env, free_port, wait_for, wait_until

from forecasting.errors import ConfigError


@pytest.fixture(scope="session")
def lake(tmp_path_factory):
    return built(tmp_path_factory)


@pytest.fixture(scope="module")
def server(lake):
    with ServerThread(lake.config) as srv:
        wait_for(srv.url + "/ready", timeout=60)
        yield srv


# -- raw HTTP/1.1 on one socket ------------------------------------------------------------
def connect(port: int, timeout: float = 10) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method == "POST":
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def exchange(sock: socket.socket, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send one request on ``sock`` and read its response (ConnectionError when the
    server closed the connection instead)."""
    sock.sendall(raw)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    size = int(headers.get("content-length", "0"))
    while len(rest) < size:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection mid-body")
        rest += chunk
    return int(lines[0].split()[1]), headers, rest[:size]


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed ``sock`` (None: still open after ``seconds``)."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass  # a 4xx before the close is fine
    except TimeoutError:
        return None
    except ConnectionError:
        pass
    return time.monotonic() - started


def one_line(text: str) -> bool:
    return bool(text) and "\n" not in text and "Traceback" not in text and "<unknown>" not in text


# -- finding 8: a non-finite number ------------------------------------------------------------
def test_non_finite_number_is_422_and_the_connection_stays_open(server, lake):
    sid = lake.usable[0]
    with connect(server.port) as sock:
        for body in (
            b'{"series": [{"series_id": "%s", "horizon": 1e400}]}' % sid.encode(),
            b'{"series": [{"series_id": "%s", "horizon": -1e400}]}' % sid.encode(),
            b'{"series": [{"series_id": "%s", "horizon": 2, "temperature": [NaN, 1e999]}]}' % sid.encode(),
        ):
            status, headers, raw = exchange(sock, request("POST", "/predict", body))
            assert status == 422, raw
            assert headers.get("connection", "").lower() != "close"
            errors = json.loads(raw)["detail"]  # strict JSON: no NaN or Infinity in it
            assert {e["loc"][-1] for e in errors} <= {"horizon", 0, 1} and all(e["msg"] for e in errors)
            assert "finite" in raw.decode() or "integer" in raw.decode()
        # the same connection still answers
        status, _, raw = exchange(sock, request("GET", "/health"))
        assert status == 200 and json.loads(raw) == {"status": "ok"}
        body = json.dumps({"series": [{"series_id": sid, "horizon": 2}]}).encode()
        status, _, raw = exchange(sock, request("POST", "/predict", body))
        assert status == 200 and json.loads(raw)["forecasts"][0]["series_id"] == sid


# -- finding 13: types are not converted -----------------------------------------------------
@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"series_id": ["MTR-00001"], "horizon": 2}, "series_id"),
        ({"series_id": 1, "horizon": 2}, "series_id"),
        ({"series_id": "MTR-00001", "horizon": True}, "horizon"),
        ({"series_id": "MTR-00001", "horizon": "2"}, "horizon"),
        ({"series_id": "MTR-00001", "horizon": 2.5}, "horizon"),
        ({"series_id": "MTR-00001", "horizon": 2, "temperature": [True, 1.0]}, "temperature"),
        ({"series_id": "MTR-00001", "horizon": 2, "temperature": ["1", 1.0]}, "temperature"),
    ],
)
def test_wrong_types_are_422_naming_the_field(server, item, field):
    r = httpx.post(server.url + "/predict", json={"series": [item]}, timeout=30)
    assert r.status_code == 422, r.text
    (error,) = r.json()["detail"]
    assert error["loc"][:4] == ["body", "series", 0, field]


def test_numbers_of_the_right_type_still_pass(server, lake):
    sid = lake.usable[0]
    item = {"series_id": sid, "horizon": 2, "temperature": [1, 2.5]}  # an int is a number
    r = httpx.post(server.url + "/predict", json={"series": [item]}, timeout=30)
    assert r.status_code == 200, r.text


def test_an_unexpected_error_is_a_one_line_500_and_the_connection_stays_open(caplog):
    import uvicorn
    from fastapi import FastAPI

    from training.serving.middleware import InternalErrorMiddleware
    from training.serving.protocol import server_config

    app = FastAPI()

    @app.get("/boom")
    async def boom():
        raise OSError("disk on fire\n  at /srv/secret/path line 1")

    app.add_middleware(InternalErrorMiddleware)
    port = free_port()
    srv = uvicorn.Server(server_config(app, "127.0.0.1", port, access_log=False, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    try:
        wait_for(f"http://127.0.0.1:{port}/docs", timeout=30)
        with caplog.at_level(logging.ERROR, logger="training.serving.middleware"), connect(port) as sock:
            for _ in range(2):  # the second on the same connection
                status, _, raw = exchange(sock, request("GET", "/boom"))
                assert status == 500
                assert json.loads(raw) == {"detail": "internal error (OSError): see the server log"}
        logged = [rec.exc_info[1] for rec in caplog.records if rec.exc_info]
        assert logged and "disk on fire" in str(logged[0])  # the detail is in the server log
    finally:
        srv.should_exit = True
        thread.join(timeout=30)


# -- finding 13: slow or half-sent requests ---------------------------------------------------
def test_half_open_connections_are_closed_within_the_read_timeout(lake):
    read_timeout = 1.0
    with ServerThread(lake.config, read_timeout_s=read_timeout, keep_alive_s=1) as srv:
        partial = [
            b"",  # connects and says nothing
            b"GET /health HTT",  # half a request line
            b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ",  # half the headers
            request("POST", "/predict", b"")[:-4].replace(b"Content-Length: 0", b"Content-Length: 100")
            + b"\r\n\r\n{",  # the headers, then 1 of 100 bytes of body
        ]
        socks = [connect(srv.port) for _ in range(20)]
        try:
            started = time.monotonic()
            for i, sock in enumerate(socks):
                if partial[i % len(partial)]:
                    sock.sendall(partial[i % len(partial)])
            waited = [closed_within(sock, read_timeout + 5) for sock in socks]
            assert all(w is not None for w in waited), f"still open after {read_timeout + 5}s: {waited}"
            assert time.monotonic() - started < read_timeout + 5
        finally:
            for sock in socks:
                sock.close()

        # a kept-alive connection whose next request stops half-way is closed as well
        with connect(srv.port) as sock:
            assert exchange(sock, request("GET", "/health"))[0] == 200
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            assert closed_within(sock, read_timeout + 5) is not None

        # a request sent in pieces, each well inside the timeout, is answered
        with connect(srv.port) as sock:
            raw = request("GET", "/health")
            sock.sendall(raw[:10])
            time.sleep(read_timeout / 4)
            assert exchange(sock, raw[10:])[0] == 200


def test_mmf_serve_runs_with_the_timeouts():
    from training.serving.protocol import (
        GRACEFUL_SHUTDOWN_S,
        KEEP_ALIVE_S,
        READ_TIMEOUT_S,
        GuardedH11Protocol,
        server_config,
    )

    cfg = server_config(object(), "127.0.0.1", 8080)
    assert cfg.http is GuardedH11Protocol and GuardedH11Protocol.read_timeout_s == READ_TIMEOUT_S == 10
    assert cfg.timeout_keep_alive == KEEP_ALIVE_S and cfg.timeout_graceful_shutdown == GRACEFUL_SHUTDOWN_S
    assert cfg.h11_max_incomplete_event_size == 16 * 1024 and not cfg.server_header


# -- finding 13: an empty API key ---------------------------------------------------------------
@pytest.mark.parametrize("key", ["", "   "])
def test_an_empty_api_key_is_refused_at_start(lake, tmp_path, key):
    from training.serving.app import create_app

    with pytest.raises(ConfigError, match="serve.api_key"):
        create_app(lake.config.replace(**{"serve.api_key": key}), start=False)

    conf = tmp_path / "serve.yaml"
    cfg = lake.config
    conf.write_text(
        yaml.safe_dump({"lakehouse": cfg.lakehouse, "mlflow": {"tracking_uri": cfg.mlflow.tracking_uri}})
    )
    cmd = [sys.executable, "-m", "training.cli", "serve", "--conf", str(conf), "--port", str(free_port())]
    proc = subprocess.run(cmd, env=clean_env(MMF_API_KEY=key), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "serve.api_key" in proc.stderr and "authentication off" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- finding 12: one line for a client, the detail in the log -----------------------------------
def test_ready_and_503_bodies_are_one_line_with_the_detail_in_the_log(lake, tmp_path, caplog):
    # a gold/forecasts whose only log entry is garbage: deltalake's error carries a Rust
    # backtrace (with RUST_BACKTRACE set) on the lines after its message
    log_dir = tmp_path / "lake" / "gold" / "forecasts" / "_delta_log"
    log_dir.mkdir(parents=True)
    (log_dir / "00000000000000000000.json").write_text("{garbage\n")
    cfg = lake.config.replace(lakehouse=str(tmp_path / "lake"))
    with caplog.at_level(logging.WARNING, logger="training.serving.refresher"), ServerThread(cfg) as srv:
        r = wait_until(
            lambda: (x := httpx.get(srv.url + "/ready")).json()["reason"].startswith("refresh") and x
        )
        assert r.status_code == 503
        reason = r.json()["reason"]
        assert one_line(reason) and "DeltaError" in reason and len(reason) < 400, reason
        for path in ("/series/MTR-00001/forecast", "/portfolio", "/series"):
            got = httpx.get(srv.url + path)
            assert got.status_code in (503, 404), (path, got.text)
            assert one_line(got.json()["detail"]), got.text
    logged = [rec for rec in caplog.records if rec.exc_info and "not ready" in rec.getMessage()]
    assert logged and "Json error" in str(logged[0].exc_info[1])  # the whole error is in the log


# -- stale forecasts -----------------------------------------------------------------------------
def test_ready_is_503_when_the_newest_forecast_cutoff_is_too_old(lake):
    from forecasting.config import Config

    assert Config().serve.max_forecast_age_h == 48
    newest = pc.max(lake.lake.arrow("gold/forecasts", columns=["cutoff"])["cutoff"]).as_py()
    newest_text = newest.strftime("%Y-%m-%dT%H:%M:%SZ")
    age_h = (time.time() - newest.replace(tzinfo=dt.timezone.utc).timestamp()) / 3600
    sid = lake.usable[0]

    stale = lake.config.replace(**{"serve.max_forecast_age_h": 48})  # the history ends in 2024
    with ServerThread(stale) as srv:
        r = wait_until(lambda: (x := httpx.get(srv.url + "/ready")).json()["champion_version"] and x)
        body = r.json()
        assert r.status_code == 503 and body["ready"] is False
        assert one_line(body["reason"]) and body["reason"].startswith("stale forecasts")
        assert newest_text in body["reason"] and "serve.max_forecast_age_h 48" in body["reason"]
        assert body["forecasts_cutoff"] == newest_text
        # the data is still served: only readiness says it is old
        assert httpx.get(f"{srv.url}/series/{sid}/forecast").status_code == 200

    fresh_enough = lake.config.replace(**{"serve.max_forecast_age_h": age_h + 24})
    with ServerThread(fresh_enough) as srv:
        r = wait_for(srv.url + "/ready", timeout=60)
        assert r.json()["ready"] is True and r.json()["forecasts_cutoff"] == newest_text

    off = lake.config.replace(**{"serve.max_forecast_age_h": 0})
    with ServerThread(off) as srv:
        assert wait_for(srv.url + "/ready", timeout=60).json()["forecasts_cutoff"] == newest_text
