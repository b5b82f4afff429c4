"""Global models without torch: the weights store, global_gbm, how global candidates join
the per-series choice, the train job (tuning trials as MLflow child runs, the pyfunc
loading the weights once), and the deep extra's absence handled at config time."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest

from forecasting.config import load_config
from forecasting.errors import ConfigError, ModelError
from forecasting.generator import generate
from forecasting.models import load_model
from forecasting.models.global_models import GlobalWeights, Panel, Spec, get, read, register, save
from forecasting.models.global_models import gbm as gbm_mod
from forecasting.models.global_models.common import GlobalForecaster, calendar, quantile_forecast
from forecasting.pipeline import GLOBAL_COLUMN, load_fitted, process_series
from training.global_models import train_global_models

H = 24
GBM = {"num_boost_round": 15, "min_data_in_leaf": 5, "windows_per_series": 8}


def readings(n_series=5, days=21, seed=1, temperature=True):
    r = generate(n_series=n_series, days=days, freq="h", seed=seed, clean=True).readings
    cols = ["series_id", "ts", "y"] + (["temperature"] if temperature else [])
    return r[cols].reset_index(drop=True)


def cfg(models, **kw):
    base = {
        "horizon": H,
        "freq": "h",
        "models": models,
        "backtest.windows": 2,
        "model_params": {"global_gbm": dict(GBM)},
    }
    base.update(kw)
    return load_config(**base)


# -- store and helpers -----------------------------------------------------------------
def test_weights_round_trip_through_npz_without_pickle(tmp_path):
    w = GlobalWeights(
        "global_gbm",
        {"a": 1, "levels": [80]},
        {"x": np.arange(6.0).reshape(2, 3), "b": np.array([1, 2], dtype=np.uint8)},
    )
    path = save(tmp_path / "g.npz", [w])
    with np.load(path, allow_pickle=False) as data:  # nothing in it needs unpickling
        assert f"{w.id}/x" in data.files
    (back,) = read(path)
    assert back.id == w.id and back.meta == w.meta
    np.testing.assert_array_equal(back.arrays["x"], w.arrays["x"])
    assert w.id.startswith("global_gbm-") and len(w.id) == len("global_gbm-") + 16


def test_unloaded_weights_say_how_to_load_them():
    with pytest.raises(ModelError, match="not loaded in this process"):
        get("global_nn-0000000000000000")


def test_calendar_and_quantile_helpers():
    cal = calendar(np.array(["2024-01-01T06:00", "2024-01-07T18:00"], dtype="datetime64[us]"))
    np.testing.assert_allclose(cal[0], [1.0, 0.0, 0.0, 1.0], atol=1e-12)  # Monday 06:00
    np.testing.assert_allclose(cal[1, :2], [-1.0, 0.0], atol=1e-12)  # 18:00
    q = np.array([[3.0, 1.0, 2.0]])  # crossing quantiles are sorted
    fc = quantile_forecast(q, (0.1, 0.5, 0.9), [80])
    assert (fc["lo-80"][0], fc["mean"][0], fc["hi-80"][0]) == (1.0, 2.0, 3.0)
    with pytest.raises(ModelError, match="level 95 was not trained"):
        quantile_forecast(q, (0.1, 0.5, 0.9), [95])


def test_a_global_model_is_not_fitted_on_one_series():
    with pytest.raises(ModelError, match="trained across all series"):
        gbm_mod.GlobalGBM().fit(np.ones(100))
    with pytest.raises(ConfigError, match="global_gbm.objective"):
        gbm_mod.GlobalGBM(objective="l3")


# -- global_gbm ------------------------------------------------------------------------
def _panel(frame):
    ids, ys, tss, temps = [], [], [], []
    for sid, g in frame.groupby("series_id"):
        ids.append(sid)
        ys.append(g["y"].to_numpy(float))
        tss.append(g["ts"].to_numpy("datetime64[us]"))
        temps.append(g["temperature"].to_numpy(float) if "temperature" in g else None)
    return Panel(ids, ys, tss, temps, "h", (24, 168))


def test_gbm_fits_across_series_and_forecasts_ordered_intervals_any_horizon():
    panel = _panel(readings(temperature=False))
    spec = Spec(H, (80, 95), "h", (24, 168))
    w = gbm_mod.fit(panel, spec, GBM, seed=0)
    assert not w.meta["use_temperature"] and w.arrays["conformal"].shape == (2, H)
    states = [gbm_mod.GlobalGBM.series_state(w, y, ts) for y, ts in zip(panel.y, panel.ts)]
    for h in (H, 2 * H + 5):  # past the trained horizon it rolls forward
        fcs = gbm_mod.forecast_many(w, states, [None] * len(states), h, [80, 95])
        for fc in fcs:
            assert all(len(v) == h and np.all(np.isfinite(v)) for v in fc.values())
            assert np.all(fc["lo-95"] <= fc["lo-80"]) and np.all(fc["lo-80"] <= fc["mean"])
            assert np.all(fc["mean"] <= fc["hi-80"]) and np.all(fc["hi-80"] <= fc["hi-95"])
    # same seed, same booster
    assert gbm_mod.fit(panel, spec, GBM, seed=0).id == w.id


# -- joining the per-series choice -----------------------------------------------------
@pytest.fixture(scope="module")
def trained():
    frame = readings()
    config = cfg(["seasonal_naive", "weekly_naive", "global_gbm"])
    report = train_global_models(frame, config)
    return frame, config, report


def test_global_candidate_competes_on_the_series_own_windows(trained):
    frame, config, report = trained
    run = report.runs["global_gbm"]
    assert run.n_ok == 5 and [f.label for f in run.fits] == ["window 0", "window 1", "full"]
    attached = report.attach(frame)
    assert attached[GLOBAL_COLUMN].notna().sum() == 5  # one row per series carries it
    rows = [process_series(g, config).iloc[0] for _, g in attached.groupby("series_id")]
    for row in rows:
        cands = json.loads(row["candidates_json"])
        assert cands["global_gbm"]["status"] == "ok" and cands["global_gbm"]["score"] is not None
        bt = [b for b in json.loads(row["backtest_json"]) if b["model"] == "global_gbm"]
        naive = [b for b in json.loads(row["backtest_json"]) if b["model"] == "seasonal_naive"]
        assert [b["cutoff"] for b in bt] == [b["cutoff"] for b in naive]  # the very same windows
    for row in rows:  # the best score wins, global or not (ties: config order)
        scores = {k: v["score"] for k, v in json.loads(row["candidates_json"]).items()}
        assert row["model"] == min(scores, key=lambda k: (scores[k], config.models.index(k)))
    only = config.replace(models=["global_gbm"])  # the global model alone: it is the choice
    sid = attached.series_id.iloc[0]
    row = process_series(attached[attached.series_id == sid], only).iloc[0]
    assert row["status"] == "ok" and row["model"] == "global_gbm"
    data = json.loads(row["model_json"])
    assert data["model"] == "global_gbm" and data["state"]["weights"] == run.weights.id
    assert "booster" not in row["model_json"]  # weights are stored once, not per series
    model = load_fitted(row["model_json"])  # weights registered in this process by the driver step
    temps = frame.loc[frame.series_id == sid, "temperature"].to_numpy()[-H:].reshape(-1, 1)
    fc = model.predict(H, X=temps, level=[80, 95])
    np.testing.assert_allclose(fc["mean"], run.entries[sid]["final"]["mean"], rtol=1e-6)  # 7 digits travel


def test_without_the_driver_step_a_global_model_is_a_failed_candidate(trained):
    frame, config, _ = trained
    row = process_series(frame[frame.series_id == frame.series_id.iloc[0]], config).iloc[0]
    assert row["status"] == "ok"
    reason = json.loads(row["candidates_json"])["global_gbm"]["reason"]
    assert "trained across series by the train job" in reason


def test_forecasts_for_other_windows_are_refused(trained):
    frame, config, report = trained
    attached = report.attach(frame)
    one = attached[attached.series_id == attached.series_id.iloc[0]]
    other = config.replace(**{"backtest.windows": 1})
    cands = json.loads(process_series(one, other).iloc[0]["candidates_json"])
    assert cands["global_gbm"]["status"] == "failed" and "do not match" in cands["global_gbm"]["reason"]


def test_a_series_too_short_for_the_global_model_fails_only_that_candidate():
    frame = readings(n_series=4)
    short = frame[frame.series_id == frame.series_id.iloc[0]].tail(
        24 * 7 + H
    )  # window 0 starts before a week
    frame = pd.concat([frame[frame.series_id != frame.series_id.iloc[0]], short])
    config = cfg(["seasonal_naive", "global_gbm"], **{"cleaning.min_length": 48})
    report = train_global_models(frame, config)
    entries = report.runs["global_gbm"].entries
    sid = short.series_id.iloc[0]
    assert entries[sid]["status"] == "failed" and "needs at least" in entries[sid]["reason"]
    assert sum(e["status"] == "ok" for e in entries.values()) == 3


# -- the deep extra's absence ----------------------------------------------------------
def test_global_nn_without_torch_fails_at_config_validation(monkeypatch):
    import forecasting.models as models

    monkeypatch.setattr(models, "module_available", lambda name: name != "torch")
    with pytest.raises(ConfigError) as err:
        load_config(models=["seasonal_naive", "global_nn"])
    assert err.value.key == "models"
    assert "install the deep extra: pip install -e .[deep]" in str(err.value)
    load_config(models=["seasonal_naive", "global_gbm"])  # the others are fine


def test_mmf_models_reports_global_nn_unavailable_without_torch(monkeypatch):
    from click.testing import CliRunner

    import forecasting.models as models
    from training.cli import cli

    monkeypatch.setattr(models, "module_available", lambda name: name != "torch")
    out = CliRunner().invoke(cli, ["models"]).output
    line = next(row for row in out.splitlines() if row.startswith("global_nn"))
    assert "unavailable: install the deep extra: pip install -e .[deep]" in line
    assert "unavailable" not in next(row for row in out.splitlines() if row.startswith("global_gbm"))


# -- the train job ---------------------------------------------------------------------
def test_train_job_tunes_global_gbm_with_trials_as_child_runs_and_serves_it(tmp_path, config):
    from registry import pyfunc
    from training.jobs.ingest import ingest
    from training.jobs.refine import refine
    from training.jobs.train import train
    from training.tables import Lakehouse

    src = tmp_path / "m.parquet"
    readings(n_series=4).to_parquet(src)
    c = config.replace(
        models=["seasonal_naive", "global_gbm"],
        model_params={"global_gbm": dict(GBM)},
        **{"tune.enabled": True, "tune.max_evals": 2, "backtest.windows": 1},
    )
    lake = Lakehouse.from_config(c)
    ingest(lake, str(src))
    refine(lake, c)
    rep = train(lake, c)
    assert rep.status_counts == {"ok": 4}
    res = rep.results
    tuned = json.loads(res["tuned_json"].iloc[0])["global_gbm"]
    assert tuned["evals"] == 2
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parent = next(r for r in runs if r.info.run_id == rep.run_id)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == rep.run_id]
    assert sorted(r.data.tags["mmf.trial"] for r in children) == ["default", "trial-0", "trial-1"]
    assert all(r.data.tags["mmf.trials"] == "Trials" for r in children)
    assert "global.global_gbm.train_s" in parent.data.metrics
    # the pyfunc holds the weights once and loads them itself
    model = pyfunc.load_version(c, rep.model_version)
    (weights_id,) = model.unwrap_python_model().global_weights
    assert weights_id.startswith("global_gbm-")
    sids = res["series_id"].tolist()
    inp = pd.DataFrame({"series_id": np.repeat(sids, H), "horizon": H, "temperature": 10.0})
    out = model.predict(inp)
    assert len(out) == len(sids) * H and np.isfinite(out["yhat"]).all()
    for sid, g in out.groupby("series_id"):
        row = res[res.series_id == sid].iloc[0]
        ref = (
            load_model(json.loads(row["model_json"]))
            if row["model"] == "global_gbm"
            else load_fitted(row["model_json"])
        )
        X = np.full((H, 1), 10.0) if isinstance(ref, GlobalForecaster) else None
        np.testing.assert_allclose(
            g["yhat"].to_numpy(), ref.predict(H, X=X, level=[80, 95])["mean"], rtol=1e-9
        )


def test_registering_weights_twice_is_harmless():
    w = GlobalWeights("global_gbm", {"x": 1}, {"a": np.zeros(2)})
    assert register(w) == register(GlobalWeights("global_gbm", {"x": 1}, {"a": np.zeros(2)}))


@pytest.mark.spark
def test_spark_engine_searches_a_global_model_with_spark_trials(spark):
    config = cfg(
        ["global_gbm"],
        engine="spark",
        **{
            "backtest.windows": 1,
            "tune.enabled": True,
            "tune.max_evals": 2,
            "tune.parallelism": 2,
            "spark.master": "local[2,2]",
        },
    )
    report = train_global_models(readings(n_series=4), config, engine="spark")
    run = report.runs["global_gbm"]
    assert run.error == "" and run.n_ok == 4
    assert run.trials_kind == "SparkTrials" and run.tune.evals == 2
    assert all(t["status"] == "ok" for t in run.tune.trials)
