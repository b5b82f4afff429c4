"""What a training run and a registered version tell in MLflow (issue 17, item 6), against
a real SQLite MLflow store: a dated, readable run name and a description; the silver
table at its version as the run's input (``mlflow.log_input``); a forecast-vs-actuals
plot whose forecasts meet actuals (the last backtest window); model and version
descriptions (what data, what models, the gate's decision); the model's own code and
requirements in the artifact, so ``mlflow models serve`` serves it, and ``/invocations``
writes timestamps as ``mmf serve``'s ``/predict`` does."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from forecasting.errors import RegistryError
from registry import plots, pyfunc, runs
from registry.pyfunc import GATE_HEADING, iso_timestamps
from tests.test_registry import make_results, train_version


def test_the_run_is_named_described_and_reads_silver_at_its_version(config, lake_root):
    with runs.start_training_run(config, silver_version=12, engine="local") as run:
        pass
    got = MlflowClient().get_run(run.info.run_id)
    assert re.fullmatch(r"train \d{4}-\d\d-\d\d \d\d:\d\d UTC silver v12", got.info.run_name), (
        got.info.run_name
    )
    assert got.info.run_name == runs.training_run_name(12, pd.Timestamp(got.info.start_time, unit="ms"))
    note = got.data.tags["mlflow.note.content"]
    assert "silver/readings version 12" in note and str(lake_root) in note
    assert "candidates seasonal_naive" in note and "chosen by mase" in note and "engine local" in note

    (given,) = got.inputs.dataset_inputs
    assert given.dataset.name == "silver/readings@v12" and given.dataset.source_type == "delta_table"
    source = json.loads(given.dataset.source)
    assert source["path"] == f"{lake_root}/silver/readings" and source["delta_table_version"] == 12
    assert {t.key: t.value for t in given.tags}["mlflow.data.context"] == "training"
    schema = json.loads(given.dataset.schema)["mlflow_colspec"]
    assert [c["name"] for c in schema] == [
        "series_id",
        "ts",
        "y",
        "temperature",
        "is_filled",
        "is_outlier",
        "bucket",
    ]
    assert [c["type"] for c in schema][:3] == ["string", "datetime", "double"]


def test_forecast_vs_actuals_plots_the_backtest_window_against_its_actuals(config, tmp_path):
    results, history = make_results()
    row = results.set_index("series_id").loc["m-02"].copy()
    row["series_id"] = "m-02"
    g = history[history["series_id"] == "m-02"].sort_values("ts")
    cutoff = pd.Timestamp("2024-01-09T23:00:00")  # the chosen model's window (make_results)
    assert plots.backtest_cutoff(row, config) == cutoff

    bt = plots.backtest_forecast(row, g, config)
    after = g[g["ts"] > cutoff].head(config.horizon)
    assert len(bt) == config.horizon == len(after)
    np.testing.assert_array_equal(bt["ts"].to_numpy(), after["ts"].to_numpy())
    np.testing.assert_array_equal(bt["y"].to_numpy(), after["y"].to_numpy())  # the actuals it is drawn over
    # seasonal naive refit at the cutoff repeats the day before it: not the data's last day
    np.testing.assert_allclose(bt["mean"], g[g["ts"] <= cutoff]["y"].to_numpy()[-24:])
    assert (bt["lo-95"] <= bt["mean"]).all() and (bt["mean"] <= bt["hi-95"]).all()

    fig = plots._figure(6, 3)
    ax = fig.add_subplot()
    plots._panel(ax, "m-02", row, g, config)
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert {"actual", "backtest forecast", "forecast"} <= set(lines)
    actual_x = pd.to_datetime(lines["actual"].get_xdata())
    assert actual_x.min() < cutoff < actual_x.max()  # actuals on both sides of the cutoff
    assert "backtest mase" in ax.get_title()

    path = tmp_path / "forecast_vs_actuals.png"
    plots.plot_forecasts(results, config, history, path)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_forecast_vs_actuals_draws_the_window_the_backtest_scored_where_the_row_keeps_it(config):
    """A row with its backtest forecasts (``backtest.store_forecasts: chosen``, the
    default): the panel draws the chosen model's last window as the backtest forecast
    it, not a refit; a row without them (or missing a level) is refit."""
    from forecasting.pipeline import process_series

    n = 24 * 12
    t = np.arange(n)
    y = 10 + 3 * np.sin(2 * np.pi * t / 24) + np.random.default_rng(0).normal(0, 0.3, n)
    g = pd.DataFrame({"series_id": "m-1", "ts": pd.date_range("2024-03-01", periods=n, freq="h"), "y": y})
    row = process_series(g, config).iloc[0]
    assert row.status == "ok" and row.model
    windows = json.loads(row.forecasts_json)
    last = max(windows, key=lambda w: pd.Timestamp(w["cutoff"]))
    assert pd.Timestamp(last["cutoff"]) == plots.backtest_cutoff(row, config)
    # the stored numbers moved, so that a refit could not give them
    last["models"][row.model]["mean"] = [v + 100.0 for v in last["models"][row.model]["mean"]]
    kept = row.copy()
    kept["forecasts_json"] = json.dumps(windows)

    bt = plots.backtest_forecast(kept, g, config)
    np.testing.assert_allclose(bt["mean"], last["models"][row.model]["mean"])
    np.testing.assert_allclose(bt["hi-95"], last["models"][row.model]["hi-95"])
    np.testing.assert_array_equal(bt["ts"].to_numpy(), pd.to_datetime(last["ts"]).to_numpy())
    np.testing.assert_allclose(bt["y"], g.set_index("ts").loc[pd.to_datetime(last["ts"]), "y"])

    refit = plots.backtest_forecast(row.drop("forecasts_json"), g, config)
    np.testing.assert_array_equal(refit["ts"].to_numpy(), bt["ts"].to_numpy())
    assert (np.abs(refit["mean"].to_numpy() - bt["mean"].to_numpy()) > 50).all()
    del last["models"][row.model]["lo-80"]
    kept["forecasts_json"] = json.dumps(windows)
    np.testing.assert_allclose(plots.backtest_forecast(kept, g, config)["mean"], refit["mean"])


def test_versions_and_the_model_are_described(config):
    results, history = make_results()
    run_id, _, mv, decision = train_version(config, results, history, silver_version=3)
    client = MlflowClient()
    text = client.get_model_version(mv.name, mv.version).description
    assert f"each of 5 series (status ok or fallback) of training run {run_id}" in text
    assert "silver/readings version 3" in text and "models in the artifact's models.parquet" in text
    assert (
        "chosen: seasonal_naive 4, ensemble 1" in text and "Mean backtest mase over its series: 0.7" in text
    )
    assert text.endswith(GATE_HEADING + "no champion yet: first version promoted") and decision.promoted
    assert client.get_registered_model(mv.name).description.startswith("mmf many-models forecasting")

    # a restarted job tags the version again: the gate's decision stays in the description
    pyfunc.tag_version(config, mv.version, run_id, results, 3)
    assert client.get_model_version(mv.name, mv.version).description == text

    worse, _ = make_results(scale=3.0)
    _, _, mv2, decision2 = train_version(config, worse, history, silver_version=3)
    text2 = client.get_model_version(mv2.name, mv2.version).description
    assert text2.endswith(GATE_HEADING + decision2.reason) and "silver/readings version 3" in text2


def test_the_model_carries_its_code_and_mmf_requirements(config, tmp_path):
    results, history = make_results()
    _, _, mv, _ = train_version(config, results, history)
    path = Path(
        mlflow.artifacts.download_artifacts(f"models:/{mv.name}/{mv.version}", dst_path=str(tmp_path))
    )
    flavor = yaml.safe_load((path / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["code"] == "code"
    repo = Path(__file__).resolve().parents[1]
    for module in ("registry/pyfunc.py", "forecasting/models/__init__.py", "training/tables/lakehouse.py"):
        assert (path / "code" / module).read_bytes() == (repo / module).read_bytes()
    assert not list((path / "code").rglob("__pycache__"))

    pins = dict(line.split("==") for line in (path / "requirements.txt").read_text().split() if "==" in line)
    assert {"mlflow", "pandas", "pyarrow", "deltalake", "pydantic", "pyyaml", "statsmodels"} <= set(pins)
    assert "mmf" not in pins and pins["pandas"] == pd.__version__

    tags = MlflowClient().get_model_version(mv.name, mv.version).tags
    assert tags["mmf.sha256.code"] == pyfunc.artifact_hashes(path)["code"]
    model = pyfunc.load_version(config, mv.version)  # the hashes, code included, check out
    assert len(model.predict(pd.DataFrame({"series_id": ["m-02"], "horizon": [2]}))) == 2
    (path / "code" / "registry" / "pyfunc.py").write_text("raise SystemExit('not the registered code')\n")
    with pytest.raises(RegistryError, match="code changed"):
        pyfunc.verify_artifact(mv.name, mv.version, tags, path)


def test_invocations_timestamps_are_written_as_predict_writes_them():
    from training.serving.render import utc_iso

    out = pd.DataFrame(
        {"series_id": ["a", "a"], "ts": pd.to_datetime(["2024-01-11 00:00", "2024-01-11 01:00"])}
    )
    assert (
        iso_timestamps(out)["ts"].tolist()
        == utc_iso(out["ts"].to_numpy())
        == [
            "2024-01-11T00:00:00Z",
            "2024-01-11T01:00:00Z",
        ]
    )


# -- mlflow models serve -------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def serve(uri: str, env_manager: str, cwd: Path, timeout: float) -> tuple[subprocess.Popen, str]:
    """``mlflow models serve -m models:/mmf-many-models@champion`` on loopback, started
    from an empty folder with no mmf on PYTHONPATH; waits for /ping."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MMF_", "PYTEST_", "PYTHONPATH"))}
    env.update(
        MLFLOW_TRACKING_URI=uri, PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    )
    command = ["mlflow", "models", "serve", "-m", "models:/mmf-many-models@champion", "-h", "127.0.0.1"]
    server = subprocess.Popen(
        [*command, "-p", str(port), "--env-manager", env_manager],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            raise AssertionError(
                f"mlflow models serve exited {server.returncode}:\n{server.stdout.read()[-4000:]}"
            )
        try:
            with urllib.request.urlopen(f"{base}/ping", timeout=5) as response:
                if response.status == 200:
                    return server, base
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop(server)
            raise AssertionError(
                f"mlflow models serve did not answer /ping in {timeout} s:\n{server.stdout.read()[-4000:]}"
            )
        time.sleep(0.5)


def stop(server: subprocess.Popen) -> None:
    import signal

    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def check_invocations(base: str) -> None:
    """Horizons and wanted timestamps in, forecasts out, ts in ISO 8601 with a Z as /predict."""
    status, body = post(f"{base}/invocations", {"dataframe_records": [{"series_id": "m-02", "horizon": 3}]})
    assert status == 200, body
    rows = body["predictions"]
    assert [r["ts"] for r in rows] == ["2024-01-11T00:00:00Z", "2024-01-11T01:00:00Z", "2024-01-11T02:00:00Z"]
    assert {r["series_id"] for r in rows} == {"m-02"} and all(np.isfinite(r["yhat"]) for r in rows)
    assert {"yhat_lower_80", "yhat_upper_95", "model"} <= set(rows[0])
    # a wanted time as /predict writes it (Z) and as naive UTC: the same step
    for ts in ("2024-01-11T05:00:00Z", "2024-01-11T05:00:00"):
        status, body = post(
            f"{base}/invocations", {"dataframe_records": [{"series_id": "m-02", "horizon": 1, "ts": ts}]}
        )
        assert status == 200, body
        assert [r["ts"] for r in body["predictions"]] == ["2024-01-11T05:00:00Z"]
    status, body = post(f"{base}/invocations", {"dataframe_records": [{"series_id": "nope", "horizon": 1}]})
    assert status == 400 and "unknown series id" in body["message"]


def test_mlflow_models_serve_serves_the_champion(config, mlflow_uri, tmp_path):
    results, history = make_results()
    train_version(config, results, history)
    server, base = serve(mlflow_uri, "local", tmp_path, timeout=120)
    try:
        check_invocations(base)
    finally:
        stop(server)


@pytest.mark.slow
def test_mlflow_models_serve_with_its_default_environment_manager(config, mlflow_uri, tmp_path):
    """virtualenv (MLflow's default): a fresh environment from the model's python_env.yaml
    and requirements.txt (pyenv for the Python version, pip from PyPI; minutes, and a
    network), without mmf installed: the model's code/ is what it imports."""
    results, history = make_results()
    train_version(config, results, history)
    server, base = serve(mlflow_uri, "virtualenv", tmp_path, timeout=1500)
    try:
        check_invocations(base)
    finally:
        stop(server)
