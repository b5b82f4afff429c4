"""The REST service over real HTTP: a real uvicorn server on a loopback port, in front of
a lakehouse and MLflow registry built by the real pipeline (once per session)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import httpx
import numpy as np
import pandas as pd
import pytest
from test_serve_support import (
    HORIZON,
    ServerThread,
    built,
    clean_env,
    free_port,
    small_config,
    stop,
    wait_for,
    wait_until,
)

from training.serving import schemas as S

API_KEY = "test-key-0123456789"


@pytest.fixture(scope="session")
def lake(tmp_path_factory):
    return built(tmp_path_factory)


@pytest.fixture(scope="module")
def server(lake):
    with ServerThread(lake.config) as srv:
        wait_for(srv.url + "/ready", timeout=60)
        yield srv


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


# -- spec ------------------------------------------------------------------------------
def test_committed_openapi_equals_generated():
    from training.serving.app import OPENAPI_FILE, openapi_text

    assert OPENAPI_FILE.read_text() == openapi_text(), (
        "training/serving/openapi.json is stale: regenerate it with "
        "`.venv/bin/python -m training.serving.app --write-openapi`"
    )


# -- before anything exists -------------------------------------------------------------
def test_ready_is_503_before_any_champion(tmp_path, lake):
    # an empty lakehouse and a registered model name nothing was trained under
    cfg = small_config(
        tmp_path,
        **{
            "mlflow.tracking_uri": lake.config.mlflow.tracking_uri,
            "mlflow.registered_model": "mmf-not-trained-yet",
        },
    )
    with ServerThread(cfg) as srv:
        assert httpx.get(srv.url + "/health").json() == {"status": "ok"}
        r = wait_until(
            lambda: (
                not (resp := httpx.get(srv.url + "/ready")).json()["reason"].startswith("starting") and resp
            )
        )
        assert r.status_code == 503
        body = r.json()
        assert (
            body["ready"] is False
            and "no champion" in body["reason"]
            and "gold/forecasts does not exist" in body["reason"]
        )
        for path in ("/models/champion", "/series", "/series/MTR-00001/forecast"):
            r = httpx.get(srv.url + path)
            assert r.status_code == 503, path
            assert r.json()["detail"]
        r = httpx.post(srv.url + "/predict", json={"series": [{"series_id": "MTR-00001", "horizon": 3}]})
        assert r.status_code == 503 and "no champion" in r.json()["detail"]


# -- probes and model ------------------------------------------------------------------
def test_health_ready_and_champion(client, lake):
    from registry import pyfunc

    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    body = S.Ready.model_validate(ready.json())
    assert body.ready and body.champion_version == "1" and body.n_series == len(lake.usable)
    assert body.forecasts_table_version == lake.lake.version("gold/forecasts")

    champ = S.Champion.model_validate(client.get("/models/champion").json())
    info = pyfunc.champion_info(lake.config)
    assert (champ.name, champ.version, champ.run_id) == (info["name"], "1", info["run_id"])
    assert champ.silver_version == lake.lake.version("silver/readings") == 0
    assert champ.promoted_at == info["promoted_at"] and champ.promoted_at
    assert "champion" in champ.aliases


# -- series ----------------------------------------------------------------------------
def test_series_pages_through_every_series_of_the_champion_run(client, lake):
    seen, cursor = [], None
    while True:
        params = {"limit": 4, **({"cursor": cursor} if cursor else {})}
        page = S.SeriesPage.model_validate(client.get("/series", params=params).json())
        assert len(page.items) <= 4 and page.total == len(lake.usable) + len(lake.quarantined)
        seen += page.items
        cursor = page.next_cursor
        if cursor is None:
            break
    ids = [i.series_id for i in seen]
    assert ids == sorted(lake.usable + lake.quarantined)  # each once, in order
    status = {i.series_id: i for i in seen}
    assert all(status[s].status == "ok" and status[s].model == "seasonal_naive" for s in lake.usable)
    assert [status[s].status for s in lake.quarantined] == ["quarantined"] * len(lake.quarantined)
    assert "negative_values" in status[lake.quarantined[0]].reason

    page = client.get("/series", params={"prefix": "MTR-0001"}).json()
    assert [i["series_id"] for i in page["items"]] == [s for s in ids if s.startswith("MTR-0001")]
    assert page["total"] == len(page["items"]) and page["next_cursor"] is None
    assert client.get("/series", params={"prefix": "NOPE"}).json()["items"] == []


def test_series_sorted_by_error_and_filtered_by_status_and_model(client, lake):
    sel = lake.lake.read("gold/selection").set_index("series_id")
    # by error: the chosen model's backtest metric, lowest first, series without one last
    seen, cursor = [], None
    while True:
        params = {"limit": 3, "sort": "error", **({"cursor": cursor} if cursor else {})}
        page = client.get("/series", params=params).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    expected = sorted(
        sel.index, key=lambda s: (pd.isna(sel.at[s, "metric_value"]), sel.at[s, "metric_value"], s)
    )
    assert [i["series_id"] for i in seen] == expected
    errors = [i["metric_value"] for i in seen if i["metric_value"] is not None]
    np.testing.assert_allclose(errors, sel.loc[expected[: len(errors)], "metric_value"])
    down = client.get("/series", params={"sort": "error", "order": "desc"}).json()["items"]
    assert [i["series_id"] for i in down] == sorted(
        lake.usable, key=lambda s: (-sel.at[s, "metric_value"], s)
    ) + lake.quarantined
    assert [
        i["series_id"] for i in client.get("/series", params={"order": "desc"}).json()["items"]
    ] == sorted(sel.index, reverse=True)

    page = client.get("/series", params={"status": "quarantined"}).json()
    assert [i["series_id"] for i in page["items"]] == lake.quarantined and page["total"] == len(
        lake.quarantined
    )
    assert page["counts"] == {
        "status": {"ok": len(lake.usable), "quarantined": len(lake.quarantined)},
        "model": {"seasonal_naive": len(lake.usable)},
    }
    page = client.get("/series", params={"model": "seasonal_naive", "prefix": "MTR-0001"}).json()
    assert [i["series_id"] for i in page["items"]] == [s for s in lake.usable if s.startswith("MTR-0001")]
    assert client.get("/series", params={"model": "theta"}).json()["total"] == 0
    for bad in ({"sort": "name"}, {"order": "up"}, {"status": "fine"}, {"model": "a/b"}):
        assert client.get("/series", params=bad).status_code == 400, bad
    r = client.get("/series", params={"sort": "error", "cursor": "MTR-99999"})
    assert r.status_code == 400 and "MTR-99999" in r.json()["detail"]
    # in id order an id outside the run still places the page (as before)
    after = client.get("/series", params={"cursor": "MTR-00003a"}).json()["items"]
    assert after[0]["series_id"] == "MTR-00004"


def test_series_listing_natural_order():
    from training.serving.listing import SeriesListing, natural_key

    ids = ["X10", "X2", "X1", "X11", "A-7", "X01", "x3", "X2b", "A-10"]
    assert sorted(ids, key=natural_key) == ["A-7", "A-10", "X01", "X1", "X2", "X2b", "X10", "X11", "x3"]
    rows = {sid: {"status": "ok", "model": "m", "metric_value": float(len(sid))} for sid in ids}
    listing = SeriesListing(rows)
    first = listing.page(limit=4)
    assert first.ids == ["A-7", "A-10", "X01", "X1"] and first.next_cursor == "X1" and first.total == 9
    assert listing.page(limit=4, cursor=first.next_cursor).ids == ["X2", "X2b", "X10", "X11"]
    assert listing.page(prefix="X1").ids == ["X01", "X1", "X10", "X11"][1:]  # prefix is text: X01 is not X1…
    assert listing.page(sort="error", limit=3).ids == ["X1", "X2", "x3"]  # error ties in natural order


def test_portfolio_intervals_travel_when_the_table_has_them():
    from training.serving import render

    frame = pd.DataFrame(
        {
            "level": ["total", "total", "region"],
            "key": ["all", "all", "north"],
            "day": [dt.date(2024, 1, 2), dt.date(2024, 1, 1), dt.date(2024, 1, 1)],
            "yhat": [10.0, 8.0, 8.0],
            "n_series": [3, 3, 3],
            "yhat_lower_80": [7.0, 6.0, np.nan],
            "yhat_upper_80": [13.0, 10.0, np.nan],
        }
    )
    body = S.Portfolio.model_validate_json(render.portfolio_body(frame, 4, "2"))
    assert body.levels == [80] and [r.day for r in body.rows] == ["2024-01-01", "2024-01-02", "2024-01-01"]
    assert [(r.lower, r.upper) for r in body.rows] == [
        ({"80": 6.0}, {"80": 10.0}),
        ({"80": 7.0}, {"80": 13.0}),
        ({"80": None}, {"80": None}),
    ]
    plain = S.Portfolio.model_validate_json(render.portfolio_body(frame.iloc[:, :5], 4, "2"))
    assert plain.levels == [] and plain.rows[0].lower == {} and plain.rows[0].upper == {}


def test_forecast_lookup_is_the_gold_row_set(client, lake):
    sid = lake.usable[0]
    r = client.get(f"/series/{sid}/forecast")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    fc = S.Forecast.model_validate(r.json())
    gold = lake.lake.read("gold/forecasts", filters=[("series_id", "=", sid)]).sort_values("ts")
    assert len(fc.points) == len(gold) == HORIZON
    assert (fc.series_id, fc.model, fc.model_version, fc.levels) == (sid, "seasonal_naive", "1", [80, 95])
    assert fc.run_id == gold["run_id"].iloc[0] and fc.table_version == lake.lake.version("gold/forecasts")
    np.testing.assert_allclose([p.yhat for p in fc.points], gold["yhat"].to_numpy())
    np.testing.assert_allclose([p.lower["95"] for p in fc.points], gold["yhat_lower_95"].to_numpy())
    np.testing.assert_allclose([p.upper["80"] for p in fc.points], gold["yhat_upper_80"].to_numpy())
    assert [p.ts for p in fc.points] == [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in gold["ts"]]
    assert fc.cutoff == gold["cutoff"].iloc[0].strftime("%Y-%m-%dT%H:%M:%SZ")


def test_time_travel_by_version_and_time(client, lake):
    sid = lake.usable[1]
    latest = client.get(f"/series/{sid}/forecast").json()
    v0 = client.get(f"/series/{sid}/forecast", params={"version": 0})
    assert v0.status_code == 200 and v0.json()["table_version"] == 0
    assert v0.json()["points"] == latest["points"]  # one forecast written so far
    now = dt.datetime.now(dt.timezone.utc).isoformat()
    assert client.get(f"/series/{sid}/forecast", params={"as_of": now}).json()["points"] == latest["points"]

    r = client.get(f"/series/{sid}/forecast", params={"as_of": "2001-01-01T00:00:00"})
    assert r.status_code == 404 and "no version at or before" in r.json()["detail"]
    r = client.get(f"/series/{sid}/forecast", params={"version": 999})
    assert r.status_code == 404 and "no version 999" in r.json()["detail"]
    assert client.get(f"/series/{sid}/forecast", params={"version": 0, "as_of": now}).status_code == 400
    r = client.get(f"/series/{sid}/forecast", params={"as_of": "yesterday"})
    assert r.status_code == 400 and "ISO 8601" in r.json()["detail"]
    assert client.get(f"/series/{sid}/forecast", params={"version": -1}).status_code == 400
    assert client.get("/series/NOPE/forecast", params={"version": 0}).status_code == 404


def test_history_backtest_and_portfolio(client, lake):
    sid = lake.usable[2]
    hist = S.History.model_validate(client.get(f"/series/{sid}/history", params={"points": 10}).json())
    silver = lake.lake.read("silver/readings", filters=[("series_id", "=", sid)]).sort_values("ts").tail(10)
    assert len(hist.points) == 10 and hist.silver_version == 0
    np.testing.assert_allclose([p.y for p in hist.points], silver["y"].to_numpy())
    assert hist.points[-1].ts == silver["ts"].iloc[-1].strftime("%Y-%m-%dT%H:%M:%SZ")
    assert len(client.get(f"/series/{sid}/history").json()["points"]) == 168  # the default

    bt = S.Backtest.model_validate(client.get(f"/series/{sid}/backtest").json())
    gold = lake.lake.read("gold/backtest", filters=[("series_id", "=", sid)])
    assert bt.chosen_model == "seasonal_naive" and bt.status == "ok" and bt.metric == "mase"
    assert len(bt.rows) == len(gold) >= 1
    np.testing.assert_allclose(bt.chosen["mase"], gold.loc[gold["model"] == "seasonal_naive", "mase"].mean())
    # a quarantined series is known (status, no rows); an unknown one is not
    q = client.get(f"/series/{lake.quarantined[0]}/backtest").json()
    assert q["status"] == "quarantined" and q["rows"] == []
    r = client.get(f"/series/{lake.quarantined[0]}/forecast")
    assert r.status_code == 404 and "quarantined" in r.json()["detail"]

    port = S.Portfolio.model_validate(client.get("/portfolio").json())
    gold_p = lake.lake.read("gold/portfolio")
    assert port.model_version == "1" and len(port.rows) == len(gold_p)
    total = sum(r.yhat for r in port.rows if r.level == "total")
    np.testing.assert_allclose(total, lake.lake.read("gold/forecasts")["yhat"].sum())


def test_backtest_forecasts_of_a_series(client, lake):
    """The overlay's rows: the series' gold/backtest_forecasts rows of the champion's run
    (backtest.store_forecasts: chosen, the default), per window against the actuals."""
    sid = lake.usable[1]
    body = S.BacktestForecasts.model_validate(client.get(f"/series/{sid}/backtest_forecasts").json())
    gold = lake.lake.read("gold/backtest_forecasts", filters=[("series_id", "=", sid)])
    silver = lake.lake.read("silver/readings", filters=[("series_id", "=", sid)]).set_index("ts")["y"]
    assert body.chosen_model == "seasonal_naive" and body.levels == sorted(lake.config.levels)
    assert body.run_id == gold["run_id"].iloc[0] and len(body.windows) == lake.config.backtest.windows
    for w in body.windows:
        rows = gold[gold["window"] == w.window].sort_values("lead")
        assert [m.model for m in w.models] == ["seasonal_naive"] and len(w.ts) == HORIZON == len(rows)
        assert w.ts == list(rows["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"))
        np.testing.assert_allclose(w.y, silver.loc[rows["ts"]].to_numpy())  # the actuals of the window
        np.testing.assert_allclose(w.models[0].yhat, rows["yhat"])
        for lv in lake.config.levels:
            np.testing.assert_allclose(w.models[0].lower[str(lv)], rows[f"yhat_lower_{lv}"])
        assert w.cutoff == (rows["ts"].iloc[0] - pd.Timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    r = client.get(f"/series/{lake.quarantined[0]}/backtest_forecasts")
    assert r.status_code == 404 and "no backtest forecasts" in r.json()["detail"]


# -- predict ---------------------------------------------------------------------------
def test_predict_matches_the_gold_forecast(client, lake):
    a, b = lake.usable[0], lake.usable[3]
    r = client.post(
        "/predict", json={"series": [{"series_id": a, "horizon": HORIZON}, {"series_id": b, "horizon": 5}]}
    )
    assert r.status_code == 200, r.text
    pred = S.Prediction.model_validate(r.json())
    assert pred.model_version == "1" and [f.series_id for f in pred.forecasts] == [a, b]
    assert [len(f.points) for f in pred.forecasts] == [HORIZON, 5]
    gold = client.get(f"/series/{a}/forecast").json()
    assert [p.model_dump() for p in pred.forecasts[0].points] == gold[
        "points"
    ]  # seasonal naive ignores temperature

    with_temp = client.post(
        "/predict", json={"series": [{"series_id": b, "horizon": 3, "temperature": [10.0, 11.0, 12.0]}]}
    )
    assert with_temp.status_code == 200, with_temp.text
    assert with_temp.json()["forecasts"][0]["points"] == pred.model_dump()["forecasts"][1]["points"][:3]


# -- errors ----------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["forecast", "history", "backtest", "backtest_forecasts"])
def test_unknown_series_is_404_and_bad_ids_are_400(client, path):
    r = client.get(f"/series/MTR-99999/{path}")
    assert r.status_code == 404 and "MTR-99999" in r.json()["detail"]
    for bad in ("..%2F..%2Fetc%2Fpasswd", "a" * 129, "MTR%2000001", "%2Fetc%2Fpasswd", "a%00b"):
        r = client.get(f"/series/{bad}/{path}")
        assert r.status_code == 400, (bad, r.status_code, r.text)
        assert "not a valid series id" in r.json()["detail"]


def test_query_values_out_of_range_are_400(client):
    assert client.get("/series", params={"limit": 0}).status_code == 400
    assert client.get("/series", params={"limit": S.MAX_PAGE + 1}).status_code == 400
    assert client.get("/series", params={"prefix": "../x"}).status_code == 400
    assert client.get("/series", params={"cursor": "a/b"}).status_code == 400
    assert client.get("/series/MTR-00001/history", params={"points": 0}).status_code == 400
    assert client.get("/series/MTR-00001/history", params={"points": "many"}).status_code == 422


def test_predict_errors(client, lake, server):
    sid = lake.usable[0]
    max_h = lake.config.serve.max_horizon

    def post(series=None, **kw):
        return client.post("/predict", json={"series": series} if series is not None else None, **kw)

    r = post([{"series_id": "MTR-99999", "horizon": 3}, {"series_id": sid, "horizon": 3}])
    assert r.status_code == 404 and "MTR-99999" in r.json()["detail"]
    r = post([{"series_id": "../../etc/passwd", "horizon": 3}])
    assert r.status_code == 400 and "not a valid series id" in r.json()["detail"]
    assert post([{"series_id": "x" * 129, "horizon": 3}]).status_code == 400
    r = post([{"series_id": sid, "horizon": 0}])
    assert r.status_code == 400 and "horizon" in r.json()["detail"]
    r = post([{"series_id": sid, "horizon": max_h + 1}])
    assert r.status_code == 400 and "max_horizon" in r.json()["detail"]
    assert post([{"series_id": sid, "horizon": max_h}]).status_code == 200
    r = post([{"series_id": sid, "horizon": 3}, {"series_id": sid, "horizon": 4}])
    assert r.status_code == 400 and "more than once" in r.json()["detail"]
    r = post([{"series_id": sid, "horizon": 3, "temperature": [1.0]}])
    assert r.status_code == 400 and "temperature" in r.json()["detail"]
    # schema errors: 422 with FastAPI's list
    assert client.post("/predict", json={"series": []}).status_code == 400  # a size, not a shape
    for body in (
        {"series": [{"series_id": sid}]},
        {"ids": [sid]},
        {"series": {"series_id": sid}},
        {"series": [{"series_id": sid, "horizon": "x"}]},
    ):
        r = client.post("/predict", json=body)
        assert r.status_code == 422, body
        assert isinstance(r.json()["detail"], list)
    assert (
        client.post(
            "/predict", content=b"{not json", headers={"content-type": "application/json"}
        ).status_code
        == 422
    )
    # too much: bytes (declared or streamed) and series
    big = b'{"series": [' + b" " * (S.MAX_BODY_BYTES + 10) + b"]}"
    r = client.post("/predict", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "bytes" in r.json()["detail"]

    def chunks():
        for _ in range(20):
            yield b" " * 100_000

    r = client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    many = [{"series_id": f"S{i}", "horizon": 1} for i in range(S.MAX_SERIES + 1)]
    r = post(many)
    assert r.status_code == 413 and str(S.MAX_SERIES) in r.json()["detail"]


# -- auth ------------------------------------------------------------------------------
def test_api_key_guards_every_endpoint_but_health(lake):
    cfg = lake.config.replace(**{"serve.api_key": API_KEY})
    sid = lake.usable[0]
    gets = [
        "/ready",
        "/models/champion",
        "/series",
        f"/series/{sid}/forecast",
        f"/series/{sid}/history",
        f"/series/{sid}/backtest",
        "/portfolio",
        "/openapi.json",
    ]
    body = {"series": [{"series_id": sid, "horizon": 2}]}
    with ServerThread(cfg) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        good = {"X-API-Key": API_KEY}
        wait_for(srv.url + "/ready", headers=good)
        assert c.get("/health").status_code == 200
        for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": API_KEY[:-1]}, {"X-API-Key": ""}):
            for path in gets:
                r = c.get(path, headers=headers)
                assert r.status_code == 401, (path, headers)
                assert "API key" in r.json()["detail"]
            r = c.post("/predict", json=body, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "X-API-Key"
            # FastAPI reads a JSON body before the key: a body that does not parse is still a 401
            bad = {"content-type": "application/json", **headers}
            assert c.post("/predict", content=b"{not json", headers=bad).status_code == 401
        for path in gets:
            assert c.get(path, headers=good).status_code == 200, path
        assert c.post("/predict", json=body, headers=good).status_code == 200
        # the page's own files hold no data: the page loads, then asks for the key
        assert c.get("/").status_code == 200 and c.get("/static/app.js").status_code == 200


def test_api_key_comes_from_the_environment(monkeypatch):
    from forecasting.config import load_config

    monkeypatch.setenv("MMF_API_KEY", API_KEY)
    assert load_config().serve.api_key == API_KEY


def test_page_and_static_files(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "/static/app.js" in r.text and "Content-Security-Policy" in r.headers
    js = client.get("/static/app.js")
    assert js.headers["content-type"].startswith("text/javascript")
    assert js.headers["content-security-policy"] == r.headers["content-security-policy"]
    again = client.get("/static/app.js", headers={"if-none-match": js.headers["etag"]})
    assert again.status_code == 304 and again.headers["cache-control"] == "no-cache"
    for name in ("nope.js", "..%2Fserving%2Fapp.py", "..%2F..%2Fsetup.cfg"):
        assert client.get(f"/static/{name}").status_code == 404
    docs = client.get("/docs")  # Swagger UI from the swagger-ui-bundle package: no CDN
    assert docs.status_code == 200 and "/docs/assets/swagger-ui-bundle.js" in docs.text
    assert "http" not in docs.text.replace('href="/', "").split("<body>")[0]  # nothing from outside
    bundle = client.get("/docs/assets/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and bundle.headers["content-type"].startswith("text/javascript")
    assert "SwaggerUIBundle" in bundle.text
    assert client.get("/docs/assets/swagger-ui.css").headers["content-type"].startswith("text/css")
    for name in ("index.html", "swagger-ui-bundle.js.map", "..%2F__init__.py"):
        assert client.get(f"/docs/assets/{name}").status_code == 404
    spec = client.get("/openapi.json").json()
    assert {"/predict", "/series/{series_id}/forecast", "/ready"} <= set(spec["paths"])


# -- MLflow's own server ---------------------------------------------------------------
def test_registered_model_serves_with_mlflow_models_serve(lake):
    from registry import pyfunc

    cfg = lake.config
    port = free_port()
    uri = cfg.mlflow_tracking_uri()
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        f"models:/{cfg.mlflow.registered_model}@champion",
        "--env-manager",
        "local",
        "-p",
        str(port),
        "-h",
        "127.0.0.1",
    ]
    proc = subprocess.Popen(
        cmd,
        env=clean_env(MLFLOW_TRACKING_URI=uri),
        cwd=lake.root,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        try:
            wait_for(f"http://127.0.0.1:{port}/ping", timeout=90, proc=proc)
        except AssertionError:
            stop(proc)
            raise AssertionError(proc.stderr.read().decode()[-3000:]) from None
        sid = lake.usable[0]
        payload = {
            "dataframe_split": {"columns": ["series_id", "horizon"], "data": [[sid, 6], [lake.usable[1], 6]]}
        }
        r = httpx.post(f"http://127.0.0.1:{port}/invocations", json=payload, timeout=60)
        assert r.status_code == 200, r.text
        got = pd.DataFrame(r.json()["predictions"])
        want = pyfunc.load_champion(cfg).predict(
            pd.DataFrame({"series_id": [sid, lake.usable[1]], "horizon": [6, 6]})
        )
        assert list(got["series_id"]) == list(want["series_id"]) and len(got) == 12
        np.testing.assert_allclose(got["yhat"], want["yhat"])
        bad = {"dataframe_split": {"columns": ["series_id", "horizon"], "data": [["MTR-99999", 6]]}}
        r = httpx.post(f"http://127.0.0.1:{port}/invocations", json=bad, timeout=60)
        assert r.status_code == 400 and "unknown series" in r.text
    finally:
        stop(proc)


# -- the champion moves (last: it changes the shared registry) ------------------------------
def test_service_follows_the_champion_alias_without_restart(client, lake):
    from registry import promotion
    from training.jobs.forecast import aggregate, forecast
    from training.jobs.train import train

    cfg = lake.config
    kept, dropped = lake.usable[:4], lake.usable[4]
    before = client.get(f"/series/{kept[0]}/forecast").json()
    fc_version = lake.lake.version("gold/forecasts")

    rep = train(lake.lake, cfg, series_ids=kept)  # version 2: a subset, promoted by the gate
    assert rep.model_version == "2" and rep.promoted
    wait_until(lambda: client.get("/models/champion").json()["version"] == "2")
    assert json.loads(client.get("/ready").text)["champion_version"] == "2"
    r = client.post("/predict", json={"series": [{"series_id": kept[0], "horizon": 3}]})
    assert r.status_code == 200 and r.json()["model_version"] == "2"
    r = client.post("/predict", json={"series": [{"series_id": dropped, "horizon": 3}]})
    assert r.status_code == 404 and "champion version 2" in r.json()["detail"]
    # train() writes gold/selection after the gate moved the alias: the page follows the table
    page = wait_until(lambda: (p := client.get("/series").json())["items"] and p)
    assert page["model_version"] == "2" and page["run_id"] == rep.run_id
    assert [i["series_id"] for i in page["items"] if i["status"] == "ok"] == kept
    # version 2 has no forecast in Gold yet: the latest written one (version 1) is served
    assert client.get(f"/series/{kept[0]}/forecast").json()["model_version"] == "1"

    forecast(lake.lake, cfg)  # version 2's forecasts land in Gold: the cache follows the table
    aggregate(lake.lake, cfg)
    after = wait_until(
        lambda: (b := client.get(f"/series/{kept[0]}/forecast").json())["model_version"] == "2" and b
    )
    assert after["table_version"] == fc_version + 1 and after["points"] == before["points"]
    assert client.get(f"/series/{dropped}/forecast").status_code == 404
    old = client.get(f"/series/{dropped}/forecast", params={"version": fc_version}).json()
    assert old["model_version"] == "1" and old["table_version"] == fc_version  # time travel still sees it
    assert client.get("/portfolio").json()["model_version"] == "2"

    assert promotion.rollback(cfg) == "1"  # and back, still without a restart
    wait_until(lambda: client.get("/models/champion").json()["version"] == "1")
    r = client.post("/predict", json={"series": [{"series_id": dropped, "horizon": 3}]})
    assert r.status_code == 200 and r.json()["model_version"] == "1"
    assert wait_until(lambda: client.get(f"/series/{dropped}/forecast").status_code == 200)
    assert client.get(f"/series/{kept[0]}/forecast").json()["model_version"] == "1"
