"""registry/: the training run, the many-models pyfunc, and promotion, against a real
SQLite MLflow store per test (no mocks)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from forecasting import comparison
from forecasting.comparison import Comparison
from forecasting.errors import RegistryError
from forecasting.models import get_model
from forecasting.pipeline import load_fitted
from registry import aliases, promotion, pyfunc, recovery, runs
from registry.connection import configure
from registry.results import artifact_path, log_results

N_OBS = 240  # ten days, hourly
IDS = ["m-01", "m-02", "m-03", "m-04", "m-05"]


def _series(i: int) -> tuple[pd.DatetimeIndex, np.ndarray]:
    rng = np.random.default_rng(i)
    ts = pd.date_range("2024-01-01", periods=N_OBS, freq="h")
    t = np.arange(N_OBS)
    y = 10 + i + 3 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.3, N_OBS)
    return ts, y


def _bt(model: str, mase: float) -> list[dict]:
    return [
        {
            "model": model,
            "window": 0,
            "cutoff": "2024-01-09T23:00:00",
            "mae": mase / 2,
            "rmse": mase,
            "smape": 0.1,
            "mase": mase,
            "bias": -0.1,
            "coverage_80": 0.8,
            "coverage_95": 0.9,
        },
        {
            "model": "ets",
            "window": 0,
            "cutoff": "2024-01-09T23:00:00",
            "mae": 99.0,
            "rmse": 99.0,
            "smape": 9.0,
            "mase": 99.0,
            "bias": 9.0,
            "coverage_80": 0.1,
            "coverage_95": 0.1,
        },
    ]


def make_results(scale: float = 1.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """TRAIN_RESULT rows for 5 usable series (the last an ensemble) and 1 failed, with
    real fitted seasonal-naive models; and their silver history."""
    rows, hist = [], []
    for i, sid in enumerate(IDS):
        ts, y = _series(i)
        fitted = get_model("seasonal_naive", season_length=24).fit(y)
        name, data = "seasonal_naive", fitted.to_dict()
        if i == len(IDS) - 1:
            other = get_model("seasonal_naive", season_length=12).fit(y)
            name = "ensemble"
            data = {
                "model": "ensemble",
                "format_version": 1,
                "method": "median",
                "members": [fitted.to_dict(), other.to_dict()],
            }
        mase = (0.5 + 0.1 * i) * scale
        rows.append(
            {
                "series_id": sid,
                "status": "ok" if i else "fallback",
                "reason": "" if i else "chosen failed",
                "model": name,
                "metric": "mase",
                "metric_value": mase,
                "n_obs": N_OBS,
                "end": ts[-1],
                "backtest_json": json.dumps(_bt(name, mase)),
                "candidates_json": "{}",
                "model_json": json.dumps(data),
                "tuned_json": "{}",
            }
        )
        hist.append(pd.DataFrame({"series_id": sid, "ts": ts, "y": y}))
    rows.append(
        {
            "series_id": "m-bad",
            "status": "failed",
            "reason": "DataContractError: too short",
            "model": "",
            "metric": "mase",
            "metric_value": np.nan,
            "n_obs": 3,
            "end": pd.NaT,
            "backtest_json": "[]",
            "candidates_json": "{}",
            "model_json": "",
            "tuned_json": "{}",
        }
    )
    results = pd.DataFrame(rows)
    results["end"] = results["end"].astype("datetime64[us]")
    return results, pd.concat(hist, ignore_index=True)


def train_version(config, results, history=None, silver_version=3, comparison=None):
    with runs.start_training_run(config, silver_version=silver_version, engine="local") as run:
        metrics = log_results(results, config, history=history, n_quarantined=2)
        mv = pyfunc.log_many_models(results, config, silver_version=silver_version)
        decision = promotion.gate(config, mv.version, results, comparison)
    return run.info.run_id, metrics, mv, decision


def test_training_run_logs_params_tags_metrics_and_artifacts(config, lake_root):
    results, history = make_results()
    # credentials in the config must never reach MLflow
    config = config.replace(**{"storage_options": {"account_key": "s3cr3t"}, "serve.api_key": "k3y"})
    with runs.start_training_run(config, silver_version=7, engine="local") as run:
        metrics = log_results(results, config, history=history, n_quarantined=2)
    client = MlflowClient()
    got = client.get_run(run.info.run_id)
    assert got.info.status == "FINISHED"
    exp = client.get_experiment(got.info.experiment_id)
    assert exp.name == config.mlflow.experiment
    assert exp.artifact_location == (lake_root.resolve() / "mlartifacts").as_uri()

    params, tags, logged = got.data.params, got.data.tags, got.data.metrics
    assert params["horizon"] == "24" and params["backtest.metric"] == "mase"
    assert json.loads(params["levels"]) == [80, 95] and params["mlflow.experiment"] == "mmf"
    assert tags["mmf.job"] == "train" and tags["mmf.silver_version"] == "7"
    assert tags["mmf.engine"] == "local" and tags["mmf.lakehouse"] == str(lake_root)
    assert tags["mmf.code_version"].startswith("0.1.0")

    assert logged == metrics
    assert metrics["n_series"] == 6 and metrics["n_ok"] == 4 and metrics["n_fallback"] == 1
    assert metrics["n_failed"] == 1 and metrics["n_quarantined"] == 2
    values = [0.5, 0.6, 0.7, 0.8, 0.9]
    assert metrics["metric_value_mean"] == pytest.approx(np.mean(values))
    assert metrics["metric_value_median"] == pytest.approx(0.7)
    # backtest means are of the chosen model only (the ets rows, 99.0, are ignored)
    assert metrics["backtest.mase"] == pytest.approx(np.mean(values))
    assert metrics["backtest.coverage_95"] == pytest.approx(0.9)
    assert metrics["chosen.seasonal_naive"] == 4 and metrics["chosen.ensemble"] == 1

    run_dir = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id))
    files = {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}
    assert {
        "conf.yaml",
        "per_series.parquet",
        "per_series.json",
        "plots/forecast_vs_actuals.png",
        "plots/error_distribution.png",
    } <= files
    for png in ("plots/forecast_vs_actuals.png", "plots/error_distribution.png"):
        assert (run_dir / png).read_bytes()[:4] == b"\x89PNG"
    per_series = pd.read_parquet(run_dir / "per_series.parquet")
    assert sorted(per_series["series_id"]) == sorted([*IDS, "m-bad"])
    assert {"status", "reason", "model", "metric", "metric_value", "mae", "mase", "coverage_80"} <= set(
        per_series
    )
    assert per_series.set_index("series_id").loc["m-03", "mase"] == pytest.approx(0.7)
    conf = (run_dir / "conf.yaml").read_text()
    assert "horizon: 24" in conf
    assert "s3cr3t" not in conf + json.dumps(params) and "k3y" not in conf + json.dumps(params)
    assert params["storage_options.account_key"] == "***"
    assert not any(Path.cwd().glob("mlruns")), "artifacts must not land in the working directory"


def arima_with_temperature() -> dict:
    """A fitted ARIMA(1,0,0) with one regressor, as data (fitting one takes seconds)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 1))
    y = 10 + 2 * X[:, 0] + rng.normal(0, 0.3, 60)
    state = {
        "order": [1, 0, 0],
        "seasonal_order": [0, 0, 0, 0],
        "trend": "c",
        "params": [5.0, 2.0, 0.5, 0.1],
        "aic": 0.0,
        "y": y.tolist(),
        "X": X.tolist(),
    }
    return {
        "model": "arima",
        "format_version": 1,
        "season_length": 24,
        "seasonalities": [24, 168],
        "freq": "h",
        "params": {"d": 0, "max_history": 60},
        "state": state,
    }


def test_many_models_pyfunc_round_trip(config):
    results, _ = make_results()
    end_x = pd.Timestamp("2024-01-03 11:00")
    results = pd.concat(
        [
            results,
            pd.DataFrame(
                [
                    {
                        **results.iloc[1].to_dict(),
                        "series_id": "m-x",
                        "model": "arima",
                        "end": end_x,
                        "model_json": json.dumps(arima_with_temperature()),
                        "backtest_json": "[]",
                    }
                ]
            ),
        ],
        ignore_index=True,
    )
    with runs.start_training_run(config, silver_version=3, engine="local") as run:
        mv = pyfunc.log_many_models(results, config, silver_version=3)
    assert str(mv.version) == "1"
    assert mv.tags["mmf.run_id"] == run.info.run_id and mv.tags["mmf.silver_version"] == "3"
    assert mv.tags["mmf.n_series"] == "6" and mv.tags["mmf.metric"] == "mase"
    assert float(mv.tags["mmf.metric_value"]) == pytest.approx(np.mean([0.5, 0.6, 0.7, 0.8, 0.9, 0.6]))

    name = config.mlflow.registered_model
    model = mlflow.pyfunc.load_model(f"models:/{name}/1")
    h = 30  # more than one season, so the intervals widen
    out = model.predict(pd.DataFrame({"series_id": IDS, "horizon": h}))  # m-x not asked for
    assert list(out.columns) == [
        "series_id",
        "ts",
        "yhat",
        "yhat_lower_80",
        "yhat_upper_80",
        "yhat_lower_95",
        "yhat_upper_95",
        "model",
    ]
    assert len(out) == h * len(IDS)
    by_id = results.set_index("series_id")
    for sid, got in out.groupby("series_id"):
        row = by_id.loc[sid]
        want = load_fitted(row["model_json"]).predict(h, level=[80, 95])
        np.testing.assert_array_equal(got["yhat"].to_numpy(), want["mean"])
        np.testing.assert_array_equal(got["yhat_lower_95"].to_numpy(), want["lo-95"])
        np.testing.assert_array_equal(got["yhat_upper_80"].to_numpy(), want["hi-80"])
        expected_ts = pd.DatetimeIndex(pd.Timestamp(row["end"]) + pd.Timedelta(hours=1) * np.arange(1, h + 1))
        np.testing.assert_array_equal(got["ts"].to_numpy(), expected_ts.to_numpy(dtype="datetime64[us]"))
        assert set(got["model"]) == {row["model"]}
    assert out.loc[out["series_id"] == IDS[-1], "model"].iloc[0] == "ensemble"

    # specific future timestamps: only those come back, on the same numbers
    end = pd.Timestamp(by_id.loc["m-02", "end"])
    wanted = [end + pd.Timedelta(hours=k) for k in (5, 2)]
    picked = model.predict(pd.DataFrame({"series_id": "m-02", "horizon": 1, "ts": wanted}))
    full = out[out["series_id"] == "m-02"].reset_index(drop=True)
    assert list(picked["ts"]) == [wanted[1], wanted[0]]
    np.testing.assert_array_equal(picked["yhat"].to_numpy(), full["yhat"].to_numpy()[[1, 4]])

    # the regressor: one temperature per requested ts (the forecast job's frame)
    future = end_x + pd.Timedelta(hours=1) * np.arange(1, 4)
    temps = [1.0, 0.0, -1.0]
    frame = pd.DataFrame(
        {
            "series_id": ["m-x"] * 3 + ["m-01"],
            "horizon": 3,
            "ts": list(future) + [pd.Timestamp(by_id.loc["m-01", "end"]) + pd.Timedelta(hours=1)],
            "temperature": temps + [np.nan],
        }
    )
    got = model.predict(frame)
    want = load_fitted(json.dumps(arima_with_temperature())).predict(
        3, X=np.array(temps)[:, None], level=[80, 95]
    )
    np.testing.assert_allclose(got.loc[got["series_id"] == "m-x", "yhat"].to_numpy(), want["mean"])
    assert len(got) == 4
    with pytest.raises(Exception, match="m-x: temperature missing for 1 of the 3"):
        model.predict(frame.assign(temperature=[1.0, np.nan, 2.0, 3.0]))
    with pytest.raises(Exception, match="m-x"):
        model.predict(pd.DataFrame({"series_id": ["m-x"], "horizon": [3]}))

    with pytest.raises(Exception, match="nope") as err:
        model.predict(pd.DataFrame({"series_id": ["m-01", "nope"], "horizon": 2}))
    assert "unknown" in str(err.value)
    skipped = model.predict(
        pd.DataFrame({"series_id": ["m-01", "nope"], "horizon": 2}), params={"unknown": "skip"}
    )
    assert list(skipped["series_id"]) == ["m-01", "m-01"]

    # the model is data plus code, never a pickle
    model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/1"))
    files = [p for p in model_dir.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".pkl", ".pickle") or p.name == "python_model.pkl"]
    stored = pd.read_parquet(next(p for p in files if p.name == "models.parquet"))
    assert sorted(stored["series_id"]) == [*IDS, "m-x"]  # the failed series has no model
    assert list(stored.columns) == ["series_id", "model", "model_json", "end", "freq", "status", "bucket"]
    assert stored["bucket"].is_monotonic_increasing
    assert set(stored["freq"]) == {"h"}


def _comparison(champion: str, chal: list[float], champ: list[float]) -> Comparison:
    """GATE_SERIES rows for IDS: the first len(chal) scored on 24 common points, the
    rest left out (no actuals after the champion's cutoff)."""
    start = pd.Timestamp("2024-01-11")
    rows = []
    for i, sid in enumerate(IDS):
        scored = i < len(chal)
        rows.append(
            {
                "series_id": sid,
                "window_start": start.to_pydatetime(),
                "window_end": (start + pd.Timedelta("23h")).to_pydatetime() if scored else None,
                "n_points": 24 if scored else 0,
                "challenger_metric": chal[i] if scored else None,
                "champion_metric": champ[i] if scored else None,
                "champion_source": "gold" if scored else "",
                "challenger_saw_window": scored,
                "reason": "" if scored else comparison.NO_ACTUALS,
            }
        )
    return Comparison(champion, comparison.gate_frame(rows))


def test_gate_compares_on_the_common_window_not_on_recorded_metrics(config):
    good, history = make_results()
    _, _, mv1, d1 = train_version(config, good, history)
    assert d1.promoted and d1.champion_version is None
    info = aliases.champion_info(config)
    assert info["version"] == "1" and info["promoted_at"] and info["silver_version"] == 3
    assert info["metric_value"] == pytest.approx(0.7)

    # the challenger's own backtest is better than the champion's recorded one, but on
    # the common window it is worse: kept
    better_on_paper, _ = make_results(scale=0.5)
    worse = _comparison("1", [1.2, 1.3, 1.4, 1.5], [1.0, 1.0, 1.0, 1.0])
    run2, _, mv2, d2 = train_version(config, better_on_paper, comparison=worse)
    assert (
        not d2.promoted
        and not d2.insufficient
        and d2.champion_version == "1"
        and d2.challenger_version == "2"
    )
    assert d2.n_common_series == 4 and d2.n_points == 96
    assert d2.challenger_metric == pytest.approx(1.35) and d2.champion_metric == pytest.approx(1.0)
    assert d2.reason.startswith(
        "kept champion v1: challenger mase 1.35 > champion 1 x (1 + 0) on 4 common series"
    )
    assert aliases.champion_info(config)["version"] == "1"
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(config.mlflow.registered_model, "challenger").version) == "2"
    run = client.get_run(run2)
    assert run.data.tags["gate.promoted"] == "false"
    assert run.data.metrics["gate.challenger_metric"] == pytest.approx(d2.challenger_metric)
    assert run.data.metrics["gate.champion_metric"] == pytest.approx(d2.champion_metric)
    # what the run recorded is what a restarted job reads back
    again = promotion.recorded_decision(config, "2")
    assert again.to_dict() == d2.to_dict()
    pd.testing.assert_frame_equal(again.series, d2.series, check_dtype=False)

    # within the tolerance counts as no worse
    tolerant = config.replace(**{"mlflow.promotion_tolerance": 0.4})
    assert promotion._compare(tolerant, "2", "1", worse.series).promoted

    # a comparison with another champion, or none, is no common data: gate.insufficient
    for stale in (_comparison("9", [0.1], [1.0]), None):
        _, _, _, d = train_version(config, good, comparison=stale)
        assert d.insufficient and d.promoted and "no comparison with champion v1 was made" in d.reason
        promotion.promote(config, "1")  # back, for the next case
    keep = config.replace(**{"gate.insufficient": "keep"})
    _, _, _, d = train_version(keep, good, comparison=_comparison("1", [], []))
    assert d.insufficient and not d.promoted
    assert (
        f"0 series scored on a common window, gate.min_common_series is 1 (5 series: {comparison.NO_ACTUALS})"
        in d.reason
    )

    better = _comparison("1", [0.5, 0.6], [1.0, 1.0])
    worse_on_paper, _ = make_results(scale=3.0)
    _, _, mv6, d6 = train_version(config, worse_on_paper, comparison=better)
    assert worse_on_paper["metric_value"].mean() > good["metric_value"].mean()
    assert d6.promoted and d6.champion_version == "1" and d6.n_common_series == 2
    assert aliases.champion_info(config)["version"] == str(mv6.version)
    assert (
        pyfunc.load_champion(config).predict(pd.DataFrame({"series_id": ["m-01"], "horizon": [2]})).shape[0]
        == 2
    )


def test_promote_and_rollback_move_the_alias(config):
    results, _ = make_results()
    for _ in range(3):
        with runs.start_training_run(config, silver_version=1, engine="local"):
            pyfunc.log_many_models(results, config, silver_version=1)
    with pytest.raises(RegistryError, match="no previous champion"):
        promotion.rollback(config)
    with pytest.raises(RegistryError, match="existing versions are 1, 2, 3"):
        promotion.promote(config, "9")
    assert aliases.champion_info(config) is None
    with pytest.raises(RegistryError, match="no champion"):
        pyfunc.load_champion(config)

    assert promotion.promote(config, 1) == "1"
    assert promotion.promote(config, "3") == "3"
    assert promotion.promote(config, "2") == "2"
    name = config.mlflow.registered_model
    assert promotion.champion_history(MlflowClient(), name) == ["1", "3"]
    assert promotion.rollback(config) == "3"
    assert aliases.champion_info(config)["version"] == "3"
    assert promotion.rollback(config) == "1"
    with pytest.raises(RegistryError, match="no previous champion"):
        promotion.rollback(config)
    assert aliases.champion_info(config)["version"] == "1"
    assert pyfunc.load_version(config, 2).predict(
        pd.DataFrame({"series_id": ["m-02"], "horizon": [1]})
    ).shape == (1, 8)


def test_mark_orphans_failed(config):
    client = configure(config)
    exp = client.get_experiment_by_name(config.mlflow.experiment).experiment_id
    orphan = client.create_run(exp, tags={"mmf.job": "train", "mmf.host": "elsewhere", "mmf.pid": "1"})
    live = client.create_run(
        exp, tags={"mmf.job": "train", "mmf.host": socket.gethostname(), "mmf.pid": str(os.getpid())}
    )
    foreign = client.create_run(exp, tags={"other": "x"})
    assert recovery.mark_orphans_failed(config) == [orphan.info.run_id]
    got = client.get_run(orphan.info.run_id)
    assert got.info.status == "FAILED"
    assert got.data.tags["mmf.failure"] == "orphaned: the job was killed before it finished"
    assert client.get_run(live.info.run_id).info.status == "RUNNING"
    assert client.get_run(foreign.info.run_id).info.status == "RUNNING"
    assert recovery.mark_orphans_failed(config) == []


def test_pyfunc_applies_the_calibration_and_bounds_in_model_json(config):
    """The many-models pyfunc forecasts a calibrated, bounded model_json with its
    factors and bounds applied (nothing in the pyfunc knows of them: load_fitted does)."""
    results, _ = make_results()
    results = results[results["status"] != "failed"].reset_index(drop=True)
    plain_text = results.at[1, "model_json"]
    data = json.loads(plain_text)
    data["calibration"] = {"method": "conformal", "factors": {"80": 0.5, "95": 2.0}, "n_residuals": 48}
    data["bounds"] = "nonnegative"
    data["state"]["last_season"] = [
        v - 11.0 for v in data["state"]["last_season"]
    ]  # some of the mean below 0
    results.at[1, "model_json"] = json.dumps(data)
    with runs.start_training_run(config, silver_version=3, engine="local"):
        pyfunc.log_many_models(results, config, silver_version=3)
    model = mlflow.pyfunc.load_model(f"models:/{config.mlflow.registered_model}/1")
    h = 30
    out = model.predict(pd.DataFrame({"series_id": [IDS[1]], "horizon": h}))
    base = load_fitted(json.dumps({k: v for k, v in data.items() if k not in ("calibration", "bounds")}))
    raw = base.predict(h, level=[80, 95])
    assert raw["mean"].min() < 0
    for lv, f in ((80, 0.5), (95, 2.0)):
        lo = np.maximum(raw["mean"] - f * (raw["mean"] - raw[f"lo-{lv}"]), 0.0)
        hi = np.maximum(raw["mean"] + f * (raw[f"hi-{lv}"] - raw["mean"]), 0.0)
        np.testing.assert_allclose(out[f"yhat_lower_{lv}"].to_numpy(), lo)
        np.testing.assert_allclose(out[f"yhat_upper_{lv}"].to_numpy(), hi)
    np.testing.assert_allclose(out["yhat"].to_numpy(), np.maximum(raw["mean"], 0.0))
    assert (out[["yhat", "yhat_lower_80", "yhat_lower_95"]] >= 0).all().all()
    assert set(out["model"]) == {"seasonal_naive"}


def test_artifact_path_is_local_only_for_file_uris_and_paths(tmp_path):
    """Where a Spark job may write a run's results straight into its artifacts."""
    assert artifact_path(tmp_path.as_uri()) == tmp_path
    assert artifact_path(str(tmp_path)) == tmp_path
    for uri in ("s3://bucket/mlflow/1/abc/artifacts", "mlflow-artifacts:/1/abc/artifacts", "dbfs:/x"):
        assert artifact_path(uri) is None
