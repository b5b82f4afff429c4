"""``mmf train`` batch by batch (issue #12): a train over several batches ends in the same
Gold tables, chosen models and metrics as a one-batch train, and a train killed once
some batches are committed, then run again, finishes in the killed job's own run: one
MLflow run, one model version, no duplicated Gold row. Real Delta tables, real MLflow
SQLite stores, and a real ``mmf train`` process killed with SIGKILL."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from mlflow import MlflowClient

from forecasting.config import load_config
from forecasting.generator import generate, write
from tests.reliability.reliability_support import mmf
from training.engines.base import TableBatch
from training.jobs import train_gold
from training.jobs.ingest import ingest
from training.jobs.refine import refine
from training.jobs.train import train
from training.tables import SILVER_READINGS, Lakehouse

REPO = Path(__file__).resolve().parents[1]
GOLD = ("gold/models", "gold/backtest", "gold/selection", "gold/backtest_forecasts")
VOLATILE = ["run_id", "created_at", "batch", "candidates_json"]  # ids, wall-clock times, fit_s
KEYS = {
    "gold/models": ["run_id", "series_id"],
    "gold/backtest": ["run_id", "series_id", "model", "window"],
    "gold/selection": ["run_id", "series_id"],
    "gold/backtest_forecasts": ["run_id", "series_id", "model", "window", "lead"],
}
SETTINGS = {
    "horizon": 24,
    "models": ["seasonal_naive", "theta"],
    "workers": 2,
    "cleaning": {"min_length": 96},
    "backtest": {"windows": 1},
    "mlflow": {"sample_plots": 2},
}


@pytest.fixture(scope="module")
def silver(tmp_path_factory):
    """A lakehouse with 16 hourly meters x 14 days refined (some quarantined), no MLflow store."""
    root = tmp_path_factory.mktemp("silver")
    raw = root / "raw"
    raw.mkdir()
    write(generate(n_series=16, days=14, freq="h", seed=5, fault_share=0.2), raw / "meters.parquet")
    cfg = _config(root / "lake", 10**6)
    lake = Lakehouse.from_config(cfg)
    ingest(lake, str(raw))
    refine(lake, cfg)
    return root / "lake"


def _config(lake: Path, batch_rows: int):
    uri = f"sqlite:///{lake / 'mlflow.db'}"
    data = {**SETTINGS, "mlflow": {**SETTINGS["mlflow"], "tracking_uri": uri}}
    return load_config(lakehouse=str(lake), batch_rows=batch_rows, **_flat(data))


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _copy(silver: Path, dst: Path) -> Path:
    shutil.copytree(silver, dst)
    return dst


def _train(lake: Path, batch_rows: int, monkeypatch):
    cfg = _config(lake, batch_rows)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.mlflow.tracking_uri)
    return cfg, train(Lakehouse.from_config(cfg), cfg)


def _tables(lake: Path) -> dict[str, pd.DataFrame]:
    out = {}
    for name in GOLD:
        frame = Lakehouse(str(lake)).read(name)
        assert not frame.duplicated(KEYS[name]).any(), name
        frame = frame.drop(columns=[c for c in VOLATILE if c in frame.columns])
        out[name] = frame.sort_values(KEYS[name][1:], kind="stable").reset_index(drop=True)
    return out


def _registry(lake: Path) -> tuple[list, list, dict]:
    uri = f"sqlite:///{lake / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name("mmf")
    trains = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("mmf.job") == "train"]
    versions = client.search_model_versions("name = 'mmf-many-models'")
    aliases = client.get_registered_model("mmf-many-models").aliases
    return trains, versions, aliases


@pytest.fixture(scope="module")
def batched(silver, tmp_path_factory):
    """An uninterrupted train in 1,000-row batches and one in a single batch, on copies of ``silver``."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("runs")
    many, one = _copy(silver, root / "many"), _copy(silver, root / "one")
    try:
        mp.setattr(train_gold, "SELECTION_ROWS", 6)  # gold/selection in commits of a few batches
        cfg, rep_many = _train(many, 1000, mp)
        mp.setattr(train_gold, "SELECTION_ROWS", 10**6)
        _, rep_one = _train(one, 10**6, mp)
    finally:
        mp.undo()
    n = len(Lakehouse(str(many)).batches(SILVER_READINGS, rep_many.silver_version, 1000))
    return many, one, rep_many, rep_one, n


def test_selection_groups_are_consecutive_batches_of_bounded_rows():
    rows = {0: 3, 1: 3, 2: 5, 3: 0, 5: 2, 6: 9, 7: 1}.get
    assert train_gold.selection_groups([0, 1, 2, 3, 5, 6, 7], rows, 6) == [[0, 1], [2, 3], [5], [6], [7]]
    assert train_gold.selection_groups([0, 1, 2, 3], rows, 100) == [[0, 1, 2, 3]]
    assert train_gold.selection_groups([], rows, 6) == []


def test_a_train_in_many_batches_equals_a_train_in_one(batched):
    many, one, rep_many, rep_one, n = batched
    assert n >= 4
    lake = Lakehouse(str(many))
    assert set(lake.read("gold/models")["batch"]) == set(range(n)) - _empty(lake, n)
    commits = [c for c in lake.history("gold/selection") if c.get("mmf.batches") == str(n)]
    assert 2 <= len(commits) < n and sum("mmf.run_id" in c for c in commits) == 1
    assert lake.history("gold/selection")[0]["mmf.run_id"] == rep_many.run_id
    got, want = _tables(many), _tables(one)
    for name in GOLD:
        pd.testing.assert_frame_equal(got[name], want[name], check_dtype=False, obj=name)
    assert rep_many.chosen == rep_one.chosen and rep_many.status_counts == rep_one.status_counts
    assert rep_many.metrics.keys() == rep_one.metrics.keys()
    for key, value in rep_one.metrics.items():
        assert rep_many.metrics[key] == pytest.approx(value, rel=1e-12), key
    assert sorted(rep_many.results["series_id"]) == sorted(rep_one.results["series_id"])
    for lake_root in (many, one):
        trains, versions, aliases = _registry(lake_root)
        assert len(trains) == 1 and len(versions) == 1 and str(aliases["champion"]) == "1"
    tags = [_registry(r)[1][0].tags for r in (many, one)]
    assert tags[0]["mmf.n_series"] == tags[1]["mmf.n_series"]


def _empty(lake: Lakehouse, n: int) -> set[int]:
    """The batches of the plan that hold no series (nothing to commit)."""
    ranges = lake.batches(SILVER_READINGS, lake.version(SILVER_READINGS), 1000)
    silver = lake.read(SILVER_READINGS, columns=["bucket"])["bucket"]
    return {i for i, (lo, hi) in enumerate(ranges) if not ((silver >= lo) & (silver < hi)).any()}


def _mmf(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``mmf ARGS`` in a fresh process, with the test fault hook (tests/reliability)."""
    return mmf(*args, env=env, timeout=600)


def _batches_committed(lake: Lakehouse, name: str) -> list[int]:
    """The batch of each commit of a training run to table ``name``, sorted (twice if twice)."""
    return sorted(int(c["mmf.batch"]) for c in lake.history(name) if "mmf.batch" in c)


def test_a_train_killed_after_a_batch_resumes_in_its_own_run(batched, silver, tmp_path):
    many, _, rep_many, _, n = batched
    lake_root = _copy(silver, tmp_path / "lake")
    conf = tmp_path / "conf.yaml"
    data = {**SETTINGS, "lakehouse": str(lake_root), "batch_rows": 1000}
    data["mlflow"] = {**SETTINGS["mlflow"], "tracking_uri": f"sqlite:///{lake_root / 'mlflow.db'}"}
    conf.write_text(yaml.safe_dump(data))

    killed = _mmf("train", "--conf", str(conf), env={"MMF_TEST_KILL_AT": "mid_train:batches_done=2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    lake = Lakehouse(str(lake_root))
    at_kill = set(lake.read("gold/models")["batch"])
    assert 2 <= len(at_kill) < n and not lake.exists("gold/selection")
    # each committed batch's backtest forecasts were derived as it committed, not at the end
    assert _batches_committed(lake, "gold/backtest_forecasts") == sorted(at_kill)
    # and its parts staged for the steps after the engine (training/jobs/train_parts.py)
    (run_dir,) = (lake_root / "_runs").iterdir()
    assert {int(f.stem) for f in (run_dir / "parts").glob("*.json")} == at_kill

    again = _mmf("train", "--conf", str(conf), env={})
    assert again.returncode == 0, again.stderr[-3000:]

    trains, versions, aliases = _registry(lake_root)
    assert len(trains) == 1 and len(versions) == 1 and str(aliases["champion"]) == "1"
    run = trains[0]
    assert run.info.status == "FINISHED" and "mmf.recovered" in run.data.tags
    assert "mmf.failure" not in run.data.tags and versions[0].run_id == run.info.run_id
    for name in GOLD:
        assert set(lake.read(name)["run_id"]) == {run.info.run_id}, name
    got, want = _tables(lake_root), _tables(many)
    for name in GOLD:
        pd.testing.assert_frame_equal(got[name], want[name], check_dtype=False, obj=name)
    # the batches committed before the kill were not trained again, nor derived again
    assert _batches_committed(lake, "gold/backtest_forecasts") == list(range(n))
    models = lake.read("gold/models")
    first = models[models["batch"].isin(at_kill)]["created_at"].max()
    assert (models[~models["batch"].isin(at_kill)]["created_at"] > first).all()
    assert not run_dir.exists()  # the parts go once the run is recorded
    assert lake.txn_version("gold/selection", "mmf-train") == rep_many.silver_version
    assert lake.history("gold/selection")[0]["mmf.run_id"] == run.info.run_id
    metrics = (
        MlflowClient(tracking_uri=f"sqlite:///{lake_root / 'mlflow.db'}")
        .get_run(run.info.run_id)
        .data.metrics
    )
    for key, value in rep_many.metrics.items():
        if not key.startswith("gate."):
            assert metrics[key] == pytest.approx(value, rel=1e-12), key


def test_a_runs_parts_give_the_files_and_figures_its_gold_models_rows_give(batched, tmp_path):
    """The staged path (train_parts) against the path reading gold/models back: the same
    results.parquet, per_series.parquet, metrics, bundle rows and figures, gate facts
    and retrain counts."""
    from registry import pyfunc
    from registry.aggregates import Totals, challenger_facts
    from registry.results import StagedResults, _copy_staged, _write_batches
    from training.engines import get_engine
    from training.jobs import retrain
    from training.jobs.train_gold import METRIC_COLUMNS, run_sources
    from training.jobs.train_parts import RunParts
    from training.jobs.train_plan import Plan, run_batches

    many, _, rep, _, n = batched
    cfg = _config(many, 1000)
    lake = Lakehouse.from_config(cfg)
    plan = Plan(lake, rep.silver_version, lake.batches(SILVER_READINGS, rep.silver_version, 1000))
    parts = RunParts(tmp_path / "parts", cfg)
    parts.catch_up(lake, rep.run_id, plan)
    assert len(list((tmp_path / "parts").glob("*.json"))) == plan.n == n

    (tmp_path / "staged").mkdir()
    (tmp_path / "read").mkdir()
    staged, n_staged = _copy_staged(parts.results(plan), tmp_path / "staged")
    read, n_read = _write_batches(run_batches(lake, rep.run_id, plan), tmp_path / "read")
    assert n_staged == n_read == rep.metrics["n_series"]
    for name in ("results.parquet", "per_series.parquet"):
        assert pq.read_table(tmp_path / "staged" / name).equals(pq.read_table(tmp_path / "read" / name)), name
    assert staged.metrics(3) == read.metrics(3)
    assert isinstance(parts.results(plan), StagedResults)

    a = pyfunc.write_models(parts.models(plan), cfg, tmp_path / "staged" / "models.parquet")
    b = pyfunc.write_models(run_batches(lake, rep.run_id, plan), cfg, tmp_path / "read" / "models.parquet")
    assert a == b and a.n_series > 0
    got = pq.read_table(tmp_path / "staged" / "models.parquet")
    assert got.equals(pq.read_table(tmp_path / "read" / "models.parquet"))

    engine = get_engine(cfg)
    sources = run_sources(lake, rep.run_id, plan, "gold/models", METRIC_COLUMNS)
    want = engine.aggregate(sources, lambda rows: challenger_facts(rows, cfg.backtest.metric))
    totals = Totals()
    totals.add(parts.challenger_facts(plan))
    assert totals.stats() == want and want["challenger_metric"].n > 0
    wanted = retrain.counts(
        engine.aggregate(
            [
                TableBatch(
                    lake, "gold/models", r, None, ("series_id", "refit"), (("run_id", "=", rep.run_id),)
                )
                for r in plan.ranges
            ],
            retrain.retrain_facts,
        )
    )
    assert retrain.counts(parts.refit_stats(plan)) == wanted and wanted["n_refit"] == rep.metrics["n_series"]


def test_a_kept_sink_keeps_the_rows_a_read_of_its_commit_gives(batched, tmp_path):
    """The local training loop derives gold/backtest, gold/backtest_forecasts and the parts
    from the rows its gold/models sink kept as it committed them (KeptSink): the same
    rows, columns and types as reading that commit back."""
    from training.engines.base import KeptSink

    many, _, rep, _, _ = batched
    rows = Lakehouse(str(many)).read("gold/models", filters=[("run_id", "=", rep.run_id)])
    batch = rows[rows["batch"] == rows["batch"].min()]
    results = batch.drop(columns=["run_id", "silver_version", "batch", "created_at", "bucket"])
    assert len(results) > 0
    lake = Lakehouse(str(tmp_path / "lake"))
    kept: dict = {}
    constants = {
        "run_id": "r1",
        "silver_version": 3,
        "batch": 0,
        "created_at": pd.Timestamp.now("UTC"),
        "bucket": None,
    }
    sink = KeptSink(lake, "gold/models", constants, {"mmf.batch": 0}, create=True, kept=kept, key=0)
    # shuffled, so that the kept rows must be in the order the table stores them
    written = sink.commit(results.sample(frac=1.0, random_state=1).reset_index(drop=True))
    assert written.version == 0 and set(kept) == {0}
    back = lake.read_buckets("gold/models", (0, 2**31 - 1), version=written.version)
    pd.testing.assert_frame_equal(kept[0], back)


@pytest.mark.slow  # a train killed after two batches resumes in its own run: the test above, by default
def test_a_killed_train_with_a_global_model_resumes_with_the_models_it_trained(silver, tmp_path):
    """global_gbm trains on the first batches (a sample: the others get it as a failed
    candidate, saying why); a restart re-opens the run and reads the global model's
    entries and weights back from the run instead of training it again."""
    lake_root = _copy(silver, tmp_path / "lake")
    conf = tmp_path / "conf.yaml"
    data = {
        **SETTINGS,
        "lakehouse": str(lake_root),
        "batch_rows": 2500,
        "models": ["seasonal_naive", "global_gbm"],
    }
    data["mlflow"] = {**SETTINGS["mlflow"], "tracking_uri": f"sqlite:///{lake_root / 'mlflow.db'}"}
    conf.write_text(yaml.safe_dump(data))
    killed = _mmf("train", "--conf", str(conf), env={"MMF_TEST_KILL_AT": "mid_train:batches_done=1"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    again = _mmf("train", "--conf", str(conf), env={})
    assert again.returncode == 0, again.stderr[-3000:]

    trains, versions, _ = _registry(lake_root)
    assert len(trains) == 1 and len(versions) == 1 and trains[0].info.status == "FINISHED"
    uri = f"sqlite:///{lake_root / 'mlflow.db'}"
    artifacts = {
        a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(trains[0].info.run_id, "resume")
    }
    assert artifacts == {"resume/global_entries.json", "resume/global_models.npz"}
    models = Lakehouse(str(lake_root)).read("gold/models")
    assert not models.duplicated(["run_id", "series_id"]).any()
    candidates = [json.loads(c)["global_gbm"] for c in models["candidates_json"] if c]
    outside = [c for c in candidates if "training sample" in (c.get("reason") or "")]
    assert outside and len(outside) < len(candidates)  # some series in the sample, some not
    assert any(c["status"] == "ok" for c in candidates)


def test_the_bucket_is_crc32_of_the_id_whatever_form_the_ids_come_in():
    import zlib

    from forecasting import contract as C

    ids = [f"MTR-{i:05d}" for i in range(500)] + ["é-ü-😀", "", "None", "12"]
    rows = np.repeat(np.array(ids, dtype=object), 3)
    np.random.default_rng(0).shuffle(rows)
    want = np.array([zlib.crc32(s.encode("utf-8")) % C.N_BUCKETS for s in rows], dtype=np.int32)
    chunked = pa.chunked_array([pa.array(list(rows[:7])), pa.array(list(rows[7:]))])
    for form in (list(rows), rows, pd.Series(rows), pa.array(list(rows)), chunked):
        got = C.bucket_of(form)
        assert got.dtype == np.int32 and got.tolist() == want.tolist(), type(form)
    assert C.bucket_of([None, 12, "12"]).tolist() == [
        zlib.crc32(s.encode()) % C.N_BUCKETS for s in ("None", "12", "12")
    ]
    assert C.bucket_of([]).size == 0 and C.bucket_of(pa.chunked_array([], pa.string())).size == 0


def _model_rows(ids: list[str]) -> pa.Table:
    schema = Lakehouse("unused").schema("gold/models")
    return pa.table(
        {f.name: pa.array(ids) if f.name == "series_id" else pa.nulls(len(ids), f.type) for f in schema}
    )


def test_a_lakehouse_builds_a_snapshots_dataset_once_and_never_a_stale_one(tmp_path):
    """Batch reads of one snapshot share its dataset; another version, or a table made
    again under the same path (its versions start over), gets its own."""
    import pickle

    lake = Lakehouse(str(tmp_path / "lake"))

    def ids(version=None, buckets=(0, 1 << 20)) -> list[str]:
        return sorted(lake.read_buckets("gold/models", buckets, version, columns=["series_id"])["series_id"])

    lake.write("gold/models", _model_rows(["a", "b", "c"]))
    assert ids() == ids() == ["a", "b", "c"] and len(lake._datasets) == 1
    lake.write("gold/models", _model_rows(["d", "e"]))
    assert ids() == ["a", "b", "c", "d", "e"] and ids(0) == ["a", "b", "c"] and len(lake._datasets) == 2
    assert sorted(lake.read("gold/models", 1, columns=["series_id"])["series_id"]) == ids()
    shutil.rmtree(tmp_path / "lake" / "gold" / "models")
    lake.write("gold/models", _model_rows(["z"]))  # version 0 again, other rows
    assert ids() == ids(0) == ["z"]
    again = pickle.loads(pickle.dumps(lake))  # what a worker gets: no datasets
    assert not again._datasets and again.root == lake.root and ids() == ["z"]
