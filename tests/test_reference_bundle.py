"""The reference bundle (``mlflow.bundle: reference``, issue #12 item 3): a version whose
artifact copies no model but names its run's rows of gold/models at a pinned Delta
version. Real pipeline, real Delta tables, real MLflow SQLite store: it forecasts as an
embedded bundle of the same rows does, the forecast job, scoring and the REST service use
it, and rows committed to gold/models after it was registered never change it."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from test_serve_support import ServerThread, wait_for

from forecasting import contract as C
from forecasting.config import load_config
from forecasting.generator import generate, write
from registry import pyfunc, runs
from training.jobs.forecast import forecast
from training.jobs.score import score
from training.jobs.train import run_results, train
from training.tables import GOLD_MODELS, Lakehouse

SECRET = "not-a-real-key-7f3a"  # a storage option value: must never be stored with the version
H = 24


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """12 meters trained in 1,000-row batches with a reference bundle (version 1, the
    champion), and an embedded bundle of the same run's rows (version 2)."""
    root = tmp_path_factory.mktemp("reference")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = load_config(
        lakehouse=str(root / "lake"),
        horizon=H,
        models=["seasonal_naive"],
        workers=2,
        batch_rows=1000,
        storage_options={"account_key": SECRET},  # ignored by a local table, but passed along
        **{
            "cleaning.min_length": 48,
            "mlflow.tracking_uri": uri,
            "mlflow.bundle": "reference",
            "serve.max_forecast_age_h": 0,
        },
    )
    lake = Lakehouse.from_config(cfg)
    write(generate(n_series=12, days=21, freq="h", seed=3, fault_share=0.3), root / "raw.parquet")
    from training.jobs.ingest import ingest
    from training.jobs.refine import refine

    ingest(lake, str(root / "raw.parquet"))
    refine(lake, cfg)
    rep = train(lake, cfg)
    assert rep.model_version == "1" and rep.promoted
    pinned = lake.version(GOLD_MODELS)
    with runs.start_training_run(cfg, silver_version=rep.silver_version, engine="local"):
        embedded = pyfunc.log_many_models(run_results(lake, rep.run_id), cfg, rep.silver_version)
    assert str(embedded.version) == "2"
    yield cfg, lake, rep, pinned
    mp.undo()


@pytest.fixture
def use(built):
    uri = built[0].mlflow_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return built


def _predict(model, ids: list[str]) -> pd.DataFrame:
    return model.predict(pd.DataFrame({C.SERIES_ID: ids, "horizon": H}))


def test_the_artifact_holds_the_reference_and_no_model(use, tmp_path):
    cfg, lake, rep, pinned = use
    path = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/{cfg.mlflow.registered_model}/1", dst_path=str(tmp_path)
        )
    )
    files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    assert not any(f.endswith(".parquet") for f in files) and "MLmodel" in files
    conf = pyfunc.bundle_config(path)
    assert conf["bundle"] == "reference" and conf["models_run_id"] == rep.run_id
    assert conf["models_table"] == lake.uri(GOLD_MODELS) and conf["models_version"] == pinned
    assert conf["storage_option_names"] == ["account_key"] and conf["storage_options"] == {}
    for f in path.rglob("*"):  # the credential is nowhere in the artifact
        assert not f.is_file() or SECRET.encode() not in f.read_bytes()
    mv = mlflow.MlflowClient().get_model_version(cfg.mlflow.registered_model, "1")
    hashed = sorted(k[len(pyfunc.HASH_TAG) :] for k in mv.tags if k.startswith(pyfunc.HASH_TAG))
    assert hashed == ["MLmodel", "code", "mmf_many_models.py"]  # the rows are pinned by version, not hashed
    assert SECRET not in json.dumps(mv.tags) and mv.tags["mmf.n_series"] == "11"
    assert mv.tags["mmf.run_id"] == rep.run_id


def test_it_forecasts_every_series_as_the_embedded_bundle(use):
    cfg = use[0]
    ref, emb = pyfunc.load_version(cfg, 1), pyfunc.load_version(cfg, 2)
    inner, other = ref.unwrap_python_model(), emb.unwrap_python_model()
    assert isinstance(inner._store, pyfunc.DeltaModels) and inner._store.groups.keys() == []
    assert isinstance(other._store, pyfunc.ParquetModels)
    ids = other.series_ids
    assert inner.series_ids == ids and len(ids) == 11  # same order too: bucket, then id
    out = _predict(ref, list(reversed(ids)))
    pd.testing.assert_frame_equal(out, _predict(emb, list(reversed(ids))))
    pd.testing.assert_frame_equal(inner.series_ends(), other.series_ends())
    pd.testing.assert_frame_equal(inner.models(), other.models())
    for lo, hi in [(0, C.N_BUCKETS // 3), (C.N_BUCKETS // 3, C.N_BUCKETS)]:
        pd.testing.assert_frame_equal(inner.models_in((lo, hi)), other.models_in((lo, hi)))
    one_by_one = pd.concat([_predict(ref, [sid]) for sid in reversed(ids)], ignore_index=True)
    pd.testing.assert_frame_equal(out, one_by_one)
    with pytest.raises(Exception, match="unknown series"):
        _predict(ref, [ids[0], "nope"])
    assert (
        len(ref.predict(pd.DataFrame({C.SERIES_ID: ["nope"], "horizon": [2]}), params={"unknown": "skip"}))
        == 0
    )


def test_lookups_read_blocks_of_buckets_and_keep_a_few(use, monkeypatch):
    cfg = use[0]
    monkeypatch.setattr(pyfunc, "BUNDLE_GROUP_ROWS", 2)  # blocks of about 2 series
    monkeypatch.setattr(pyfunc, "CACHE_GROUPS", 2)
    inner = pyfunc.load_version(cfg, 1).unwrap_python_model()
    store = inner._store
    assert store.width == C.N_BUCKETS * 2 // 11
    ids = inner.series_ids
    want = _predict(pyfunc.load_version(cfg, 2), ids)
    got = pd.concat([inner.predict(None, pd.DataFrame({C.SERIES_ID: [s], "horizon": H})) for s in ids])
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want)
    used = [int(b) for b in pd.unique(C.bucket_of(ids) // store.width)]  # blocks in the order read
    assert len(used) > 2 and store.groups.keys() == used[-2:]  # the last two blocks used are kept


def test_a_missing_table_version_is_a_registry_error(use, tmp_path):
    cfg, lake, rep, _ = use
    with pytest.raises(Exception, match="cannot be read"):
        pyfunc.DeltaModels(pyfunc.ModelsRef(lake.root, rep.run_id, 10_000))
    with pytest.raises(Exception, match="cannot be read"):
        pyfunc.DeltaModels(pyfunc.ModelsRef(str(tmp_path / "nowhere"), rep.run_id, 0))


def test_forecast_job_and_scoring_use_it(use, tmp_path):
    cfg, lake, rep, _ = use
    emb = pyfunc.load_version(cfg, 2)
    ids = emb.unwrap_python_model().series_ids
    want = _predict(emb, ids).sort_values([C.SERIES_ID, C.TS], ignore_index=True)

    out = forecast(lake, cfg)
    assert out.model_version == "1"
    gold = lake.read("gold/forecasts").sort_values([C.SERIES_ID, C.TS], ignore_index=True)
    assert set(gold["model_version"]) == {"1"} and sorted(gold[C.SERIES_ID].unique()) == sorted(ids)
    np.testing.assert_allclose(gold["yhat"], want["yhat"])
    np.testing.assert_allclose(gold["yhat_upper_95"], want["yhat_upper_95"])

    source = tmp_path / "to_score.parquet"
    pd.DataFrame({C.SERIES_ID: ids[:4] + ["MTR-NONE"], "horizon": 6}).to_parquet(source)
    rep_score = score(lake, cfg, str(source))
    assert (rep_score.model_version, rep_score.n_series, rep_score.n_unknown) == ("1", 4, 1)
    scores = lake.read("gold/scores").sort_values([C.SERIES_ID, C.TS], ignore_index=True)
    ends = emb.unwrap_python_model().series_ends().set_index(C.SERIES_ID)["end"]
    assert (scores["cutoff"].to_numpy() == ends.loc[scores[C.SERIES_ID]].to_numpy()).all()
    six = want[want[C.SERIES_ID].isin(ids[:4])].groupby(C.SERIES_ID).head(6).reset_index(drop=True)
    np.testing.assert_allclose(scores["yhat"], six.sort_values([C.SERIES_ID, C.TS])["yhat"])


def test_the_service_answers_with_it(use):
    cfg = use[0]
    emb = pyfunc.load_version(cfg, 2)
    ids = emb.unwrap_python_model().series_ids
    with ServerThread(cfg) as srv:
        wait_for(srv.url + "/ready", timeout=60)
        champ = httpx.get(srv.url + "/models/champion", timeout=30).json()
        assert champ["version"] == "1" and champ["n_series"] == 11
        body = {"series": [{"series_id": ids[0], "horizon": H}, {"series_id": ids[5], "horizon": 3}]}
        r = httpx.post(srv.url + "/predict", json=body, timeout=30)
        assert r.status_code == 200, r.text
        got = r.json()["forecasts"]
        assert [f["series_id"] for f in got] == [ids[0], ids[5]] and [len(f["points"]) for f in got] == [H, 3]
        want = _predict(emb, [ids[0]])
        np.testing.assert_allclose([p["yhat"] for p in got[0]["points"]], want["yhat"])
        r = httpx.post(
            srv.url + "/predict", json={"series": [{"series_id": "MTR-NONE", "horizon": 2}]}, timeout=30
        )
        assert r.status_code == 404


def test_auto_means_reference_with_spark(config):
    assert config.mlflow.bundle == "auto" and pyfunc.bundle_kind(config) == "embedded"
    assert pyfunc.bundle_kind(config.replace(engine="spark")) == "reference"
    assert (
        pyfunc.bundle_kind(config.replace(**{"engine": "spark", "mlflow.bundle": "embedded"})) == "embedded"
    )
    assert pyfunc.bundle_kind(config.replace(**{"mlflow.bundle": "reference"})) == "reference"
    assert runs.config_hash(config) == runs.config_hash(config.replace(**{"mlflow.bundle": "reference"}))


# last: it commits rows to the shared gold/models
def test_rows_committed_after_it_change_nothing(use):
    """A later commit to gold/models, even one carrying the same run id (a new series and
    another model for a known one), is past the pinned version: the version loads as before."""
    cfg, lake, rep, pinned = use
    before = pyfunc.load_version(cfg, 1)
    ids = before.unwrap_python_model().series_ids
    want = _predict(before, ids)
    rows = lake.read(GOLD_MODELS, filters=[("run_id", "=", rep.run_id), (C.SERIES_ID, "=", ids[0])])
    forged = pd.concat(
        [rows.assign(series_id="MTR-LATER"), rows.assign(end=rows["end"] + pd.Timedelta(hours=5))]
    )
    lake.write(GOLD_MODELS, forged.assign(bucket=None), metadata={"mmf.run_id": rep.run_id, "mmf.batch": 99})
    assert lake.version(GOLD_MODELS) > pinned
    assert "MTR-LATER" in set(lake.read(GOLD_MODELS, columns=[C.SERIES_ID])[C.SERIES_ID])
    after = pyfunc.load_version(cfg, 1)
    assert after.unwrap_python_model().series_ids == ids
    pd.testing.assert_frame_equal(_predict(after, ids), want)
    with pytest.raises(Exception, match="unknown series"):
        _predict(after, ["MTR-LATER"])
    # what an unpinned read would have loaded
    unpinned = pyfunc.DeltaModels(pyfunc.ModelsRef(lake.root, rep.run_id, lake.version(GOLD_MODELS)))
    assert "MTR-LATER" in unpinned.entries(["MTR-LATER"])
