"""One pipeline, every engine: ingest -> refine -> train -> forecast on the same generated
meters must give the same silver, the same status for every series, the same model
choices, backtest metrics and forecasts, whichever engine ran the per-series work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from forecasting import contract as C
from forecasting.config import load_config
from forecasting.generator import generate, write
from training.jobs import forecast as forecast_job
from training.jobs.ingest import ingest
from training.jobs.refine import refine
from training.jobs.train import train
from training.tables import Lakehouse

ENGINES = ["local", pytest.param("spark", marks=pytest.mark.spark)]
SETTINGS = {
    "horizon": 24,
    "models": ["seasonal_naive", "theta"],
    "workers": 2,
    "cleaning": {"min_length": 168},
}
TOL = 1e-6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """12 hourly meters x 21 days, a quarter of them faulty."""
    data = generate(n_series=12, days=21, freq="h", seed=11, fault_share=0.25)
    folder = tmp_path_factory.mktemp("raw")
    write(data, folder / "meters.parquet")
    return data, folder


def _config(root: Path, engine: str, source: Path):
    return load_config(
        lakehouse=str(root / "lake"),
        engine=engine,
        horizon=SETTINGS["horizon"],
        models=SETTINGS["models"],
        workers=SETTINGS["workers"],
        **{
            "cleaning.min_length": SETTINGS["cleaning"]["min_length"],
            "mlflow.tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
            "nightly.source": str(source),
        },
    )


@pytest.fixture(scope="module")
def outcome(tmp_path_factory, dataset):
    """``outcome(engine)``: the pipeline run once per engine per module."""
    _, source = dataset
    done: dict[str, dict] = {}

    def run(engine: str) -> dict:
        if engine not in done:
            root = tmp_path_factory.mktemp(f"engine-{engine}")
            cfg = _config(root, engine, source)
            lake = Lakehouse.from_config(cfg)
            ingest(lake, source)
            ref = refine(lake, cfg)
            rep = train(lake, cfg)
            fc = forecast_job.forecast(lake, cfg)
            forecast_job.aggregate(lake, cfg, fc.model_version)
            done[engine] = {"config": cfg, "lake": lake, "refine": ref, "train": rep, "forecast": fc}
        return done[engine]

    return run


def _gold(lake: Lakehouse) -> dict[str, pd.DataFrame]:
    fc = lake.read("gold/forecasts").sort_values([C.SERIES_ID, C.TS], ignore_index=True)
    bt = lake.read("gold/backtest").sort_values([C.SERIES_ID, "model", "window"], ignore_index=True)
    sel = lake.read("gold/selection").sort_values(C.SERIES_ID, ignore_index=True)
    pf = lake.read("gold/portfolio").sort_values(["level", "key", "day"], ignore_index=True)
    return {"forecasts": fc, "backtest": bt, "selection": sel, "portfolio": pf}


def assert_same_gold(a: dict[str, pd.DataFrame], b: dict[str, pd.DataFrame]) -> None:
    """Equal Gold tables up to run ids and creation times; numbers within ``TOL``."""
    sa, sb = a["selection"], b["selection"]
    assert sa[C.SERIES_ID].tolist() == sb[C.SERIES_ID].tolist()
    for col in ("status", "reason", "model", "metric"):
        assert sa[col].tolist() == sb[col].tolist(), col
    np.testing.assert_allclose(
        sa["metric_value"].to_numpy(float), sb["metric_value"].to_numpy(float), rtol=0, atol=TOL
    )

    ba, bb = a["backtest"], b["backtest"]
    assert ba[[C.SERIES_ID, "model", "window"]].equals(bb[[C.SERIES_ID, "model", "window"]])
    assert (ba["cutoff"] == bb["cutoff"]).all()
    metrics = [c for c in ba.columns if c not in ("run_id", C.SERIES_ID, "model", "window", "cutoff")]
    np.testing.assert_allclose(
        ba[metrics].to_numpy(float), bb[metrics].to_numpy(float), rtol=0, atol=TOL, equal_nan=True
    )

    fa, fb = a["forecasts"], b["forecasts"]
    assert len(fa) == len(fb) > 0
    for col in (C.SERIES_ID, C.TS, "model", "cutoff", "model_version"):
        assert fa[col].tolist() == fb[col].tolist(), col
    values = [c for c in fa.columns if c == "yhat" or c.startswith(("yhat_lower", "yhat_upper"))]
    np.testing.assert_allclose(fa[values].to_numpy(float), fb[values].to_numpy(float), rtol=0, atol=TOL)

    if "backtest_forecasts" in a and "backtest_forecasts" in b:
        keys = [C.SERIES_ID, "model", "window", "cutoff", "lead", C.TS]
        fa_, fb_ = a["backtest_forecasts"], b["backtest_forecasts"]
        assert len(fa_) == len(fb_) > 0 and fa_[keys].equals(fb_[keys])
        values = [c for c in fa_.columns if c in (C.Y, "yhat") or c.startswith(("yhat_lower", "yhat_upper"))]
        np.testing.assert_allclose(fa_[values].to_numpy(float), fb_[values].to_numpy(float), rtol=0, atol=TOL)

    pa_, pb = a["portfolio"], b["portfolio"]
    assert pa_[["level", "key", "day", "n_series"]].equals(pb[["level", "key", "day", "n_series"]])
    np.testing.assert_allclose(
        pa_["yhat"].to_numpy(float), pb["yhat"].to_numpy(float), rtol=0, atol=1e-6 * len(fa)
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_pipeline_on_engine(engine, outcome, dataset, request):
    if engine == "spark":
        request.getfixturevalue("spark")  # the shared test session, built first
    data, _ = dataset
    run = outcome(engine)
    lake, rep, cfg = run["lake"], run["train"], run["config"]
    assert rep.results is not None

    # every faulty series meant for quarantine is there with the documented reason
    faults = data.faults.set_index(C.SERIES_ID)
    expected_q = faults[faults["expected"] != "ok"]["expected"].to_dict()
    quarantine = lake.read("silver/quarantine").set_index(C.SERIES_ID)["reason"].to_dict()
    assert quarantine == expected_q
    # one status row per series, no duplicates; forecasts: usable series x horizon
    gold = _gold(lake)
    sel = gold["selection"]
    assert sel[C.SERIES_ID].is_unique
    assert set(sel[C.SERIES_ID]) == set(data.readings[C.SERIES_ID])
    usable = sel[sel["status"].isin([C.OK, C.FALLBACK])]
    assert len(usable) >= 6
    assert len(gold["forecasts"]) == len(usable) * cfg.horizon
    assert not gold["forecasts"].duplicated([C.SERIES_ID, C.TS, "model_version"]).any()


@pytest.mark.spark
def test_engines_agree(outcome, spark):
    local, remote = outcome("local"), outcome("spark")
    for name in ("silver/readings", "silver/series", "silver/quarantine"):
        keys = [C.SERIES_ID, C.TS] if name == "silver/readings" else [C.SERIES_ID]
        a = local["lake"].read(name).sort_values(keys, ignore_index=True)
        b = remote["lake"].read(name).sort_values(keys, ignore_index=True)
        pd.testing.assert_frame_equal(a, b, check_exact=False, atol=TOL, rtol=0)
    assert local["train"].status_counts == remote["train"].status_counts
    assert local["train"].chosen == remote["train"].chosen
    for key, value in local["train"].metrics.items():
        assert remote["train"].metrics[key] == pytest.approx(value, abs=TOL, nan_ok=True), key
    assert_same_gold(_gold(local["lake"]), _gold(remote["lake"]))


@pytest.mark.spark
@pytest.mark.slow  # the same comparison runs on the standalone cluster (tests/test_spark_cluster.py)
def test_nightly_cli_on_spark_matches_local(outcome, dataset, tmp_path, spark_nightly):
    """``mmf nightly --engine spark`` in its own process (its own JVM, on a machine whose
    local time zone is not UTC) writes the Gold tables the local engine writes."""
    _, source = dataset
    local = outcome("local")
    conf = tmp_path / "conf.yaml"
    conf.write_text(yaml.safe_dump({**SETTINGS, "nightly": {"source": str(source)}}))
    # a machine clock off UTC by a non-whole hour: nothing may shift
    proc = spark_nightly(conf, tmp_path, timeout=400, TZ="Asia/Kolkata")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "train      done" in proc.stdout and "forecast   done" in proc.stdout
    import mlflow

    mlflow.set_tracking_uri(local["config"].mlflow_tracking_uri())  # leave the local store current
    spark_lake = Lakehouse(str(tmp_path / "lake"))
    assert_same_gold(_gold(local["lake"]), _gold(spark_lake))
    tags = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").search_runs(
        [
            mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
            .get_experiment_by_name("mmf")
            .experiment_id
        ]
    )
    assert [r.data.tags["mmf.engine"] for r in tags] == ["spark"]
