"""The training side end to end on the embedded default: ingest -> refine -> train ->
forecast -> aggregate, on generated data with faults, against real Delta tables and a
real MLflow store."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest

from forecasting.generator import generate, write
from training.jobs import forecast as forecast_job
from training.jobs.nightly import LockedError, lakehouse_lock, nightly
from training.jobs.reproduce import reproduce
from training.jobs.train import train
from training.tables import Lakehouse

GOLD = ("gold/forecasts", "gold/backtest", "gold/selection", "gold/portfolio")


def _setup(tmp_path, config, n_series: int = 40):
    """``n_series`` hourly meters x 21 days, 20% faulty (with 40: every fault kind), two
    candidate models."""
    data = generate(n_series=n_series, days=21, freq="h", seed=7, fault_share=0.2)
    src = tmp_path / "raw"
    src.mkdir()
    write(data, src / "meters.parquet")
    cfg = config.replace(
        **{"models": ["seasonal_naive", "theta"], "nightly.source": str(src), "cleaning.min_length": 168}
    )
    return cfg, data


@pytest.fixture
def small(tmp_path, config):
    """A fresh lakehouse and MLflow store with the raw data (12 meters: the tests that
    train here check what a run does, not what the faults do), nothing run yet."""
    return _setup(tmp_path, config, n_series=12)


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """One nightly run shared by the tests that only read its outcome."""
    from forecasting.config import load_config

    tmp = tmp_path_factory.mktemp("nightly")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    config = load_config(lakehouse=str(tmp / "lake"), horizon=24, workers=2)
    cfg, data = _setup(tmp, config)
    lake = Lakehouse.from_config(cfg)
    rep = nightly(lake, cfg)
    yield cfg, data, lake, rep
    mp.undo()


@pytest.fixture
def use_store(done):
    """Point MLflow at the shared run's store for this test."""
    cfg = done[0]
    mlflow.set_tracking_uri(cfg.mlflow_tracking_uri())
    mlflow.set_registry_uri(cfg.mlflow_tracking_uri())
    return done


def counts(lake):
    return {t: len(lake.read(t)) for t in GOLD}


def test_nightly_end_to_end_then_idempotent(use_store):
    cfg, data, lake, rep = use_store
    assert not rep.failed
    assert all(
        rep.steps[s].startswith("done") for s in ("ingest", "refine", "train", "forecast", "aggregate")
    )

    faults = data.faults.set_index("series_id")
    quarantined = lake.read("silver/quarantine").set_index("series_id")
    expected_q = faults[faults["expected"] != "ok"]
    # every faulty series meant for quarantine is there, with the reason the generator documents
    assert quarantined.loc[expected_q.index, "reason"].to_dict() == expected_q["expected"].to_dict()
    assert (quarantined["detail"].str.len() > 0).all()

    # every other series has exactly `horizon` forecast rows with ordered intervals
    fc = lake.read("gold/forecasts")
    clean_ids = sorted(set(data.readings["series_id"]) - set(quarantined.index))
    per_series = fc.groupby("series_id").size()
    assert sorted(per_series.index) == clean_ids
    assert (per_series == cfg.horizon).all()
    assert np.isfinite(fc["yhat"]).all()
    assert (fc["yhat_lower_95"] <= fc["yhat_lower_80"]).all() and (fc["yhat_lower_80"] <= fc["yhat"]).all()
    assert (fc["yhat"] <= fc["yhat_upper_80"]).all() and (fc["yhat_upper_80"] <= fc["yhat_upper_95"]).all()
    # forecasts start one step after each series' cutoff
    first = fc.sort_values("ts").groupby("series_id").first()
    assert ((first["ts"] - first["cutoff"]) == pd.Timedelta("1h")).all()

    # selection: one row per series with a status and, when not ok, a reason
    sel = lake.read("gold/selection")
    assert sorted(sel["series_id"]) == sorted(data.readings["series_id"].unique())
    assert set(sel.loc[sel["series_id"].isin(expected_q.index), "status"]) == {"quarantined"}
    assert (sel.loc[sel["status"] != "ok", "reason"].str.len() > 0).all()
    assert set(sel.loc[sel["status"] == "ok", "model"]) <= {"seasonal_naive", "theta"}

    # backtest rows: one per series, candidate model and window
    bt = lake.read("gold/backtest")
    assert set(bt["series_id"]) == set(clean_ids)
    assert bt.groupby(["series_id", "model", "window"]).size().max() == 1
    assert (bt["mase"] >= 0).all()

    # portfolio totals equal the sum of the forecasts
    pf = lake.read("gold/portfolio")
    total = pf[pf["level"] == "total"]["yhat"].sum()
    assert total == pytest.approx(fc["yhat"].sum())
    by_region = pf[pf["level"] == "region"]["yhat"].sum()
    assert by_region == pytest.approx(total)

    # a second nightly on the same data changes nothing in Gold
    before = counts(lake)
    versions = {t: lake.version(t) for t in GOLD}
    rep2 = nightly(lake, cfg)
    assert all(
        rep2.steps[s].startswith("skipped") for s in ("ingest", "refine", "train", "forecast", "aggregate")
    )
    assert counts(lake) == before
    assert {t: lake.version(t) for t in GOLD} == versions


def test_mlflow_run_and_registry(use_store):
    cfg, data, lake, _ = use_store
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1  # one run per job, not one per series
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["mmf.silver_version"] == str(lake.version("silver/readings"))
    assert run.data.params["horizon"] == str(cfg.horizon)
    n_q = int(run.data.metrics["n_quarantined"])
    assert n_q == len(lake.read("silver/quarantine"))
    assert run.data.metrics["n_series"] + n_q == data.readings["series_id"].nunique()
    assert "backtest.mase" in run.data.metrics
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"conf.yaml", "per_series.parquet", "plots"} <= arts
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/forecast_vs_actuals.png", "plots/error_distribution.png"}

    mv = client.get_model_version_by_alias(cfg.mlflow.registered_model, "champion")
    assert str(mv.version) == "1" and mv.run_id == run.info.run_id
    assert str(client.get_model_version_by_alias(cfg.mlflow.registered_model, "challenger").version) == "1"


def test_forecast_rewrite_replaces_not_duplicates(use_store):
    cfg, _, lake, _ = use_store
    n = len(lake.read("gold/forecasts"))
    rep = forecast_job.forecast(lake, cfg, force=True)
    assert not rep.skipped
    fc = lake.read("gold/forecasts")
    assert len(fc) == n
    assert not fc.duplicated(["series_id", "ts", "cutoff", "model_version"]).any()


def test_second_training_is_gated_and_reproducible(small):
    cfg, _ = small
    lake = Lakehouse.from_config(cfg)
    nightly(lake, cfg)
    # train again on the same silver: no actuals after the champion's cutoff to compare
    # on, too little common data, and gate.insufficient (promote by default) decides
    rep = train(lake, cfg)
    assert rep.model_version == "2"
    assert rep.decision.champion_version == "1"
    assert rep.decision.insufficient and rep.decision.n_common_series == 0
    assert "too little common data" in rep.decision.reason
    assert rep.promoted
    # forecast with the new champion: both versions are kept, each once
    forecast_job.forecast(lake, cfg)
    fc = lake.read("gold/forecasts")
    assert set(fc["model_version"]) == {"1", "2"}
    assert not fc.duplicated(["series_id", "ts", "cutoff", "model_version"]).any()

    result = reproduce(lake, cfg, rep.run_id)
    assert "metric_value_mean" in result and "n_series" in result
    assert all(same for _, _, same in result.values()), result


def test_train_on_a_subset_and_earlier_silver_version(small):
    cfg, data = small
    lake = Lakehouse.from_config(cfg)
    nightly(lake, cfg)
    sel = lake.read("gold/selection")
    ids = sorted(sel.loc[sel["status"] == "ok", "series_id"])[:3]
    rep = train(lake, cfg, silver_version=0, series_ids=ids)
    assert rep.silver_version == 0
    assert sorted(rep.results["series_id"]) == ids
    first = lake.read("gold/backtest")
    mine = first[first["run_id"] == rep.run_id]
    assert sorted(mine["series_id"].unique()) == ids
    # same data, same seed: the subset's choices equal the full run's for those series
    full = sel[sel["series_id"].isin(ids)].set_index("series_id")["model"]
    assert rep.results.set_index("series_id")["model"].to_dict() == full.to_dict()


def test_second_nightly_waits_for_the_lock(small):
    cfg, _ = small
    lake = Lakehouse.from_config(cfg)
    with lakehouse_lock(lake):
        with pytest.raises(LockedError, match="another mmf job"):
            nightly(lake, cfg, lock_timeout_s=0)
    assert not lake.exists("bronze/readings")  # the refused run wrote nothing


def test_per_series_table_matches_gold_selection(use_store):
    cfg, _, lake, _ = use_store
    run = mlflow.MlflowClient().search_runs(
        [mlflow.get_experiment_by_name(cfg.mlflow.experiment).experiment_id]
    )[0]
    path = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="per_series.parquet")
    table = pd.read_parquet(path).set_index("series_id")
    sel = lake.read("gold/selection").set_index("series_id")
    sel = sel[sel["status"] != "quarantined"]
    assert table["model"].to_dict() == sel["model"].to_dict()
    assert table["metric_value"].to_dict() == pytest.approx(sel["metric_value"].to_dict())
