"""Jobs on Spark: a task that fails and is retried leaves no trace in Gold or MLflow;
``mmf score`` with the champion on Spark (grouped UDF) agrees with the local path and is
idempotent; ``mmf stream`` refreshes forecasts of the series that receive data and
neither loses nor duplicates a micro-batch when it crashes and restarts."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

pytest.importorskip("pyspark")

from forecasting import contract as C  # noqa: E402
from forecasting.config import load_config  # noqa: E402
from forecasting.errors import MMFError  # noqa: E402
from forecasting.generator import generate  # noqa: E402
from registry import recovery  # noqa: E402
from tests.reliability.faults import Faults, InjectedError  # noqa: E402
from training.cli import cli  # noqa: E402
from training.engines import spark as spark_engine  # noqa: E402
from training.jobs import forecast as forecast_job  # noqa: E402
from training.jobs import score as scoring  # noqa: E402
from training.jobs import stream as stream_job  # noqa: E402
from training.jobs.ingest import ingest  # noqa: E402
from training.jobs.refine import refine  # noqa: E402
from training.jobs.train import train  # noqa: E402
from training.tables import Lakehouse  # noqa: E402

pytestmark = pytest.mark.spark
H = 12
KEYS = [C.SERIES_ID, C.TS, "cutoff", "model_version"]
CUT = pd.Timestamp("2024-01-15")  # first part of the data: before it


def _readings(n_series: int = 6, days: int = 16) -> pd.DataFrame:
    return generate(n_series=n_series, days=days, freq="h", seed=5, clean=True).readings


def _setup(root, readings: pd.DataFrame, **changes):
    """A lakehouse with ``readings`` ingested, refined and trained (local engine: only the
    step under test runs on Spark)."""
    cfg = load_config(
        lakehouse=str(root / "lake"),
        horizon=H,
        models=["seasonal_naive"],
        workers=1,
        **{
            "cleaning.min_length": 96,
            "backtest.windows": 1,
            "mlflow.tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
            **changes,
        },
    )
    lake = Lakehouse.from_config(cfg)
    src = root / "part0.parquet"
    readings.to_parquet(src)
    ingest(lake, src)
    refine(lake, cfg)
    return cfg, lake


def _conf_file(cfg, folder) -> str:
    path = folder / "conf.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return str(path)


def test_failed_first_attempts_leave_no_duplicates(tmp_path, spark, checkpoint_hook):
    cfg, lake = _setup(tmp_path, _readings())
    cfg = cfg.replace(engine="spark")
    markers = tmp_path / "attempts"
    markers.mkdir()
    checkpoint_hook(Faults(fail_first_attempt=str(markers)))  # shipped to the Spark tasks
    rep = train(lake, cfg)
    checkpoint_hook(None)
    assert list(markers.iterdir()), "no task attempt was failed: the hook did not run"
    assert rep.status_counts == {C.OK: 6}

    client = mlflow.MlflowClient(cfg.mlflow_tracking_uri())
    runs = client.search_runs([client.get_experiment_by_name(cfg.mlflow.experiment).experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    sel = lake.read("gold/selection")
    assert len(sel) == 6 and sel[C.SERIES_ID].is_unique
    bt = lake.read("gold/backtest")
    assert not bt.duplicated([C.SERIES_ID, "model", "window"]).any()
    assert len(bt) == 6 * cfg.backtest.windows * len(cfg.models)
    fc = forecast_job.forecast(lake, cfg)
    assert fc.n_rows == 6 * H and not lake.read("gold/forecasts").duplicated(KEYS).any()


@pytest.fixture
def trained(tmp_path, spark):
    cfg, lake = _setup(tmp_path, _readings(n_series=4, days=10))
    rep = train(lake, cfg)
    return cfg, lake, rep


def test_score_on_spark_matches_local_and_is_idempotent(trained, tmp_path):
    cfg, lake, rep = trained
    ids = sorted(rep.results[C.SERIES_ID])
    request = pd.DataFrame({C.SERIES_ID: ids[:3] + ["NOT-A-METER"], "horizon": [5, 5, 5, 5]})
    src = str(tmp_path / "request.parquet")
    request.to_parquet(src)

    first = scoring.score(lake, cfg, src, engine="spark")
    assert (first.n_series, first.n_rows, first.n_unknown) == (3, 15, 1)
    # the same input with the same champion, through the CLI: replaced, not added
    result = CliRunner().invoke(
        cli, ["score", "--engine", "spark", "--input", src, "--conf", _conf_file(cfg, tmp_path)]
    )
    assert result.exit_code == 0, result.output
    assert "gold/scores version 1: 15 rows for 3 series" in result.output
    assert "1 series of the input have no model" in result.output
    spark_rows = lake.read("gold/scores").sort_values([C.SERIES_ID, C.TS], ignore_index=True)
    assert len(spark_rows) == 15 and (spark_rows["source"] == src).all()
    assert (
        spark_rows["cutoff"] == spark_rows[C.SERIES_ID].map(rep.results.set_index(C.SERIES_ID)["end"])
    ).all()

    scoring.score(lake, cfg, src, engine="local")  # replaces the same (source, version) rows
    local_rows = lake.read("gold/scores").sort_values([C.SERIES_ID, C.TS], ignore_index=True)
    assert len(local_rows) == 15
    cols = ["yhat", "yhat_lower_80", "yhat_upper_95"]
    np.testing.assert_allclose(spark_rows[cols].to_numpy(), local_rows[cols].to_numpy(), atol=1e-9)
    assert spark_rows[[C.SERIES_ID, C.TS, "model", "model_version"]].equals(
        local_rows[[C.SERIES_ID, C.TS, "model", "model_version"]]
    )

    # into gold/forecasts: MERGE next to the nightly forecast, never duplicating it
    fc = forecast_job.forecast(lake, cfg)
    out = scoring.score(lake, cfg, src, output="gold/forecasts", engine="spark")
    gold = lake.read("gold/forecasts")
    assert len(gold) == fc.n_rows and not gold.duplicated(KEYS).any()
    assert out.n_rows == 15
    with pytest.raises(MMFError, match="expected series_id and horizon"):
        bad = tmp_path / "bad.parquet"
        pd.DataFrame({"meter": ["x"]}).to_parquet(bad)
        scoring.score(lake, cfg, str(bad), engine="spark")


def test_score_on_spark_with_a_reference_bundle(tmp_path, spark):
    """A champion that refers to its run's gold/models rows (no models.parquet): each
    executor's pyfunc reads them there, and Spark scores as the local path does."""
    from registry import pyfunc

    cfg, lake = _setup(tmp_path, _readings(n_series=4, days=10), **{"mlflow.bundle": "reference"})
    rep = train(lake, cfg)
    champ = scoring.champion(cfg)
    assert pyfunc.bundle_config(champ.path)["bundle"] == "reference"
    ids = sorted(rep.results[C.SERIES_ID])
    src = str(tmp_path / "request.parquet")
    pd.DataFrame({C.SERIES_ID: ids[:3] + ["NOT-A-METER"], "horizon": 5}).to_parquet(src)
    first = scoring.score(lake, cfg, src, engine="spark")
    assert (first.n_series, first.n_rows, first.n_unknown) == (3, 15, 1)
    spark_rows = lake.read("gold/scores").sort_values([C.SERIES_ID, C.TS], ignore_index=True)
    assert (
        spark_rows["cutoff"] == spark_rows[C.SERIES_ID].map(rep.results.set_index(C.SERIES_ID)["end"])
    ).all()
    scoring.score(lake, cfg, src, engine="local")
    local_rows = lake.read("gold/scores").sort_values([C.SERIES_ID, C.TS], ignore_index=True)
    cols = ["yhat", "yhat_lower_80", "yhat_upper_95"]
    np.testing.assert_allclose(spark_rows[cols].to_numpy(), local_rows[cols].to_numpy(), atol=1e-9)


def test_stream_refreshes_touched_series_once_across_restarts(tmp_path, spark, checkpoint_hook):
    readings = _readings(n_series=4, days=10)
    start = readings[C.TS].min()
    first = readings[readings[C.TS] < start + pd.Timedelta("9D")]
    cfg, lake = _setup(tmp_path, first)
    train(lake, cfg)
    ends = first.groupby(C.SERIES_ID)[C.TS].max()

    rep = stream_job.stream(lake, cfg, once=True)  # batch 0: the whole of bronze
    assert [(b.batch_id, b.status, b.n_series, b.n_rows) for b in rep.batches] == [(0, "written", 4, 4 * H)]

    # new rows for two meters; the batch crashes right after its Gold commit
    touched = sorted(readings[C.SERIES_ID].unique())[:2]
    more = readings[
        (readings[C.TS] >= start + pd.Timedelta("9D")) & (readings[C.TS] < start + pd.Timedelta("9D12h"))
    ]
    more = more[more[C.SERIES_ID].isin(touched)]
    more.to_parquet(tmp_path / "part1.parquet")
    ingest(lake, tmp_path / "part1.parquet")
    checkpoint_hook(Faults(raise_at="stream_after_commit"))
    with pytest.raises(MMFError, match="injected crash"):
        stream_job.stream(lake, cfg, once=True)
    checkpoint_hook(None)
    rep = stream_job.stream(lake, cfg, once=True)  # restart: batch 1 replayed, already committed
    assert [(b.batch_id, b.status) for b in rep.batches] == [(1, "skipped")]

    # more rows for one meter; this batch crashes before its commit, then is redone
    late = readings[(readings[C.TS] >= start + pd.Timedelta("9D12h")) & (readings[C.SERIES_ID] == touched[0])]
    late.to_parquet(tmp_path / "part2.parquet")
    ingest(lake, tmp_path / "part2.parquet")
    checkpoint_hook(Faults(raise_at="stream_before_commit"))
    with pytest.raises(MMFError, match="injected crash"):
        stream_job.stream(lake, cfg, once=True)
    checkpoint_hook(None)
    rep = stream_job.stream(lake, cfg, once=True)
    assert [(b.batch_id, b.status, b.n_series) for b in rep.batches] == [(2, "written", 1)]
    # nothing new: the CLI's run processes no batch
    result = CliRunner().invoke(cli, ["stream", "--once", "--conf", _conf_file(cfg, tmp_path)])
    assert result.exit_code == 0, result.output
    assert "stream stopped after 0 batch(es)" in result.output

    gold = lake.read("gold/forecasts")
    assert not gold.duplicated(KEYS).any()
    got = gold.groupby([C.SERIES_ID, "cutoff"]).size().to_dict()
    new_end = more.groupby(C.SERIES_ID)[C.TS].max()
    expected = {(sid, ends[sid]): H for sid in ends.index}
    expected.update({(sid, new_end[sid]): H for sid in touched})
    expected[(touched[0], late[C.TS].max())] = H
    assert got == expected
    # each refreshed window starts right after the newest reading, on the hourly grid
    row = gold[(gold[C.SERIES_ID] == touched[0]) & (gold["cutoff"] == late[C.TS].max())]
    assert row[C.TS].min() == late[C.TS].max() + pd.Timedelta("1h")


def _gold(lake: Lakehouse, name: str, keys: list[str]) -> pd.DataFrame:
    """A Gold table sorted, without what differs between two runs: run ids, wall-clock
    times (``created_at``, the candidates' ``fit_s``)."""
    frame = lake.read(name).drop(columns=["run_id", "created_at"], errors="ignore")
    if "candidates_json" in frame:
        frame["candidates_json"] = [
            json.dumps({m: {k: v for k, v in c.items() if k != "fit_s"} for m, c in json.loads(s).items()})
            for s in frame["candidates_json"]
        ]
    return frame.sort_values(keys, ignore_index=True)


def _batch_commits(lake: Lakehouse, name: str, run_key: str) -> dict[int, dict]:
    commits = [c for c in lake.history(name) if "mmf.batch" in c]
    by_batch = {int(c["mmf.batch"]): c for c in commits}
    assert len(by_batch) == len(commits), f"{name}: a batch in two commits"
    assert {c[run_key] for c in commits} == {lake.read(name, columns=["run_id"])["run_id"].iloc[0]}
    return by_batch


# slow: CI's time; tests/test_spark_cluster.py runs this Spark path end to end against local
@pytest.mark.slow
def test_train_on_spark_writes_gold_from_the_executors(tmp_path, spark, monkeypatch):
    """``train --engine spark``: each batch's gold/models rows are written by delta-spark
    from the executors, its gold/backtest rows derived from them there too, each in a
    commit of its own with the same commit metadata as the local engine's; the per-series
    results never come back to the driver. The tables equal a local train's."""
    readings = _readings(n_series=8)
    for folder in ("local", "spark"):
        (tmp_path / folder).mkdir()
    cfg, lake = _setup(tmp_path / "local", readings, batch_rows=1000)
    cfg_s, lake_s = _setup(tmp_path / "spark", readings, batch_rows=1000)
    rep = train(lake, cfg)

    collected: list = []
    collect = spark_engine.to_pandas
    monkeypatch.setattr(
        spark_engine, "to_pandas", lambda df, schema: collected.append(schema) or collect(df, schema)
    )
    rep_s = train(lake_s, cfg_s.replace(engine="spark"))
    assert collected == [], "results came back to the driver"
    assert rep_s.status_counts == rep.status_counts == {C.OK: 8}

    keys = {
        "gold/models": [C.SERIES_ID],
        "gold/backtest": [C.SERIES_ID, "model", "window"],
        "gold/backtest_forecasts": [C.SERIES_ID, "model", "window", "lead"],
    }
    for name, by in keys.items():
        pd.testing.assert_frame_equal(_gold(lake_s, name, by), _gold(lake, name, by), obj=name)
    batches = set(lake_s.read("gold/models")["batch"])
    assert len(batches) >= 3
    for name, run_key in (
        ("gold/models", "mmf.run_id"),
        ("gold/backtest", "mmf.train_run"),
        ("gold/backtest_forecasts", "mmf.train_run"),
    ):
        local, remote = _batch_commits(lake, name, run_key), _batch_commits(lake_s, name, run_key)
        assert set(local) == set(remote) == batches, name
        assert {c["mmf.batches"] for c in remote.values()} == {c["mmf.batches"] for c in local.values()}
        assert all("userMetadata" in c for c in remote.values()), f"{name}: not committed by delta-spark"
        assert not any("userMetadata" in c for c in local.values())


# -- refine on Spark: bronze and silver rows never pass through the driver ------------------

SILVER_KEYS = {
    "silver/readings": [C.SERIES_ID, C.TS],
    "silver/series": [C.SERIES_ID],
    "silver/quarantine": [C.SERIES_ID],
}


def _refine_sources(folder) -> str:
    """Two files ingested in one call (one ingestion time, two bronze commits): hourly
    meters, 30% of them faulty (quarantined), two half-hourly ones (quarantined
    ``mixed_frequency``), attributes that go missing or change over a series, and a
    reading of the first file contradicted by the second (a tie of ingestion time: the
    read order decides)."""
    data = generate(n_series=12, days=10, seed=12, fault_share=0.3)
    raw = data.readings.astype({"site": object, "region": object})
    good = sorted(set(raw[C.SERIES_ID]) - set(data.faults[C.SERIES_ID]))
    late = raw[C.TS] >= raw[C.TS].min() + pd.Timedelta("5D")
    raw.loc[(raw[C.SERIES_ID] == good[0]) & late, "site"] = None  # the last known site stays
    raw.loc[(raw[C.SERIES_ID] == good[1]) & late, "region"] = "moved"  # the last one wins
    half = [
        pd.DataFrame(
            {C.SERIES_ID: f"HH{i}", C.TS: pd.date_range("2024-01-01", periods=96, freq="30min"), C.Y: 1.0 + i}
        )
        for i in range(2)
    ]
    half[0][C.Y] += np.arange(96) % 7
    half[1][C.Y] += np.arange(96) % 5
    folder.mkdir()
    pd.concat([raw, *half], ignore_index=True).to_parquet(folder / "part0.parquet", index=False)
    again = raw[raw[C.SERIES_ID] == good[2]].head(5).assign(**{C.Y: lambda d: d[C.Y] + 10.0})
    again.to_parquet(folder / "part1.parquet", index=False)
    return str(folder)


def _silver(lake: Lakehouse) -> dict[str, pd.DataFrame]:
    return {t: lake.read(t).sort_values(by, ignore_index=True) for t, by in SILVER_KEYS.items()}


@pytest.fixture(scope="module")
def refined(tmp_path_factory, spark):
    """The same bronze refined by the local engine and by Spark (tiny batches), what the
    driver of the Spark refine read of bronze, wrote through deltalake and collected."""
    tmp = tmp_path_factory.mktemp("refine")
    source = _refine_sources(tmp / "source")
    cfg = load_config(lakehouse=str(tmp / "local"), batch_rows=1000, workers=1, **{"cleaning.min_length": 96})
    lakes = {}
    for engine in ("local", "spark"):
        lakes[engine] = Lakehouse(str(tmp / engine))
        ingest(lakes[engine], source, batch_rows=1000)
    reports = {"local": refine(lakes["local"], cfg)}
    seen = {"bronze_reads": [], "written": [], "collected": []}
    read, write, collect = Lakehouse.read_buckets, Lakehouse.write, spark_engine.to_pandas

    def read_buckets(self, name, *args, **kwargs):
        seen["bronze_reads"].append(name)
        return read(self, name, *args, **kwargs)

    def written(self, name, df, *args, **kwargs):
        seen["written"].append((name, df.num_rows if hasattr(df, "num_rows") else len(df)))
        return write(self, name, df, *args, **kwargs)

    # the row counts of the report and of later jobs' batch plans come from the Delta
    # log's file statistics, which delta-spark collects by default (the test session
    # turns that off)
    stats = "spark.databricks.delta.stats.collect"
    spark.conf.set(stats, "true")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Lakehouse, "read_buckets", read_buckets)
        mp.setattr(Lakehouse, "write", written)
        mp.setattr(
            spark_engine,
            "to_pandas",
            lambda df, schema: seen["collected"].append(schema) or collect(df, schema),
        )
        try:
            reports["spark"] = refine(
                lakes["spark"], cfg.replace(lakehouse=str(tmp / "spark"), engine="spark")
            )
        finally:
            spark.conf.set(stats, "false")
    return lakes, reports, seen


def test_refine_on_spark_equals_local(refined):
    """``refine --engine spark`` over several batches: the silver tables equal the local
    engine's, quarantine (faults and a mix of frequencies) and attributes included, and
    each batch is one commit per table with the same commit metadata."""
    lakes, reports, _ = refined
    local, remote = _silver(lakes["local"]), _silver(lakes["spark"])
    for name in SILVER_KEYS:
        pd.testing.assert_frame_equal(remote[name], local[name], obj=name)
    quarantine = local["silver/quarantine"]
    assert (quarantine["reason"] == "mixed_frequency").sum() == 2 and len(quarantine) > 2
    series = local["silver/series"].set_index(C.SERIES_ID)
    assert "moved" in set(series["region"]) and series["site"].notna().all()
    assert (reports["spark"].n_series, reports["spark"].n_rows, reports["spark"].quarantined) == (
        reports["local"].n_series,
        reports["local"].n_rows,
        reports["local"].quarantined,
    )
    n = len(lakes["local"].batches("bronze/readings", 1, 1000))
    assert n >= 3
    keys = ("mmf.bronze_version", "mmf.freq", "mmf.batch", "mmf.batches", "mmf.done")
    for name in SILVER_KEYS:
        meta = {e: [tuple(c.get(k) for k in keys) for c in lakes[e].history(name)] for e in lakes}
        assert meta["spark"] == meta["local"] and len(meta["local"]) == n, name
        assert lakes["spark"].txn_version(name, "mmf-refine") == 1
    assert refine(lakes["spark"], load_config(lakehouse=lakes["spark"].root, engine="spark")).skipped


def test_refine_on_spark_keeps_rows_off_the_driver(refined):
    """The Spark refine's driver neither reads bronze (the frequency pass and the batches
    are read by the executors), nor collects results, nor writes a silver row itself: the
    commits holding rows are delta-spark's; deltalake only makes the empty commits of a
    batch without rows for a table (delta-spark commits nothing for an empty append)."""
    lakes, _, seen = refined
    assert seen["bronze_reads"] == [] and seen["collected"] == []
    assert seen["written"] and all(rows == 0 for _, rows in seen["written"]), seen["written"]
    for name in SILVER_KEYS:
        commits = lakes["spark"].history(name)
        by_spark = [c for c in commits if str(c.get("engineInfo", "")).startswith("Apache-Spark")]
        assert by_spark, f"{name}: no commit by Spark"
        for c in commits:
            if c not in by_spark:
                assert c["operationMetrics"]["num_added_rows"] == 0, (name, c)
    readings = lakes["spark"].history("silver/readings")
    assert all(str(c.get("engineInfo", "")).startswith("Apache-Spark") for c in readings)


# slow: CI's time; tests/test_spark_cluster.py runs this Spark path end to end against local
@pytest.mark.slow
def test_refine_stopped_on_spark_resumes_from_its_commits(refined, tmp_path, spark, checkpoint_hook):
    """A Spark refine stopped half-way (after batch 2's silver/quarantine commit) is
    finished by the local engine from the commits Spark made: their metadata is the
    local engine's, so each table does only its missing batches and silver ends equal."""
    lakes, _, _ = refined
    lake = Lakehouse(str(tmp_path / "lake"))
    ingest(lake, _refine_sources(tmp_path / "source"), batch_rows=1000)
    cfg = load_config(lakehouse=lake.root, batch_rows=1000, workers=1, **{"cleaning.min_length": 96})
    seen = []

    def stop(name: str, **info) -> None:
        if name == "mid_refine":
            seen.append(info)
            if len(seen) == 2:
                raise InjectedError(f"stopped at mid_refine {info}")

    checkpoint_hook(stop)
    with pytest.raises(InjectedError):
        refine(lake, cfg.replace(engine="spark"))
    checkpoint_hook(None)
    assert [len(lake.history(t)) for t in ("silver/quarantine", "silver/series", "silver/readings")] == [
        2,
        1,
        1,
    ]
    refine(lake, cfg)
    n = len(lake.batches("bronze/readings", 1, 1000))
    for name, frame in _silver(lakes["local"]).items():
        pd.testing.assert_frame_equal(_silver(lake)[name], frame, obj=name)
        assert len(lake.history(name)) == n, name
    engines = [str(c.get("engineInfo", ""))[:6] for c in lake.history("silver/readings")]
    assert engines == ["delta-"] * (n - 1) + ["Apache"]  # batch 0 by Spark, the rest by deltalake


# -- mmf forecast --engine spark --------------------------------------------------------
def _refit_lake(root, **changes):
    """8 hourly meters: a champion trained on 13 days (local engine), then 3 more days in
    silver, so a forecast refits every series on the newer silver version."""
    readings = _readings(n_series=8, days=16)
    day = (readings[C.TS] - readings[C.TS].min()) // pd.Timedelta("1D")
    cfg, lake = _setup(root, readings[day < 13].reset_index(drop=True), batch_rows=1000, **changes)
    train(lake, cfg)
    src = root / "part1.parquet"
    readings[day >= 13].reset_index(drop=True).to_parquet(src)
    ingest(lake, src)
    refine(lake, cfg)
    return cfg, lake


def _delivered(lake: Lakehouse):
    """gold/forecasts and gold/portfolio sorted, without their wall-clock times."""
    fc = lake.read("gold/forecasts")
    assert not fc.duplicated(KEYS).any()
    assert fc["created_at"].nunique() == 1  # one delivery, as if written at once
    portfolio = lake.read("gold/portfolio").drop(columns=["created_at"])
    return (
        fc.drop(columns=["created_at"]).sort_values(KEYS, ignore_index=True),
        portfolio.sort_values(["level", "key", "day"], ignore_index=True),
    )


def _drop_outputs(lake: Lakehouse) -> None:
    import shutil

    for name in ("gold/forecasts", "gold/portfolio"):
        shutil.rmtree(lake.uri(name))


def _forecast_commits(lake: Lakehouse) -> dict[int, dict]:
    commits = [c for c in lake.history("gold/forecasts") if "mmf.batch" in c]
    by_batch = {int(c["mmf.batch"]): c for c in commits}
    assert len(by_batch) == len(commits), "a batch in two commits"
    return by_batch


@pytest.mark.slow  # CI time: the cluster test forecasts on Spark and compares with local
@pytest.mark.parametrize("bundle", ["reference", "embedded"])
def test_forecast_on_spark_matches_local_and_resumes(tmp_path, spark, checkpoint_hook, monkeypatch, bundle):
    """``forecast --engine spark``: the executors read the silver rows and (reference
    bundle) the gold/models rows, refit and forecast each series, and delta-spark commits
    each batch with the local path's commit metadata; the forecast rows never come to the
    driver. gold/forecasts and gold/portfolio equal the local engine's, and a delivery
    stopped at ``mid_forecast`` resumes to the same tables. An embedded bundle (no table of
    its models) is looked up in each executor's copy of the model folder."""
    cfg, lake = _refit_lake(tmp_path, **{"mlflow.bundle": bundle})
    spark_cfg = cfg.replace(engine="spark")
    rep = forecast_job.forecast(lake, cfg)
    forecast_job.aggregate(lake, cfg, rep.model_version, delivery=rep.delivery)
    assert rep.fits == {C.REFIT: 8} and not rep.missing
    local_fc, local_portfolio = _delivered(lake)
    local_commits = _forecast_commits(lake)
    assert len(local_commits) >= 3

    _drop_outputs(lake)
    collected: list = []
    collect = spark_engine.to_pandas
    monkeypatch.setattr(
        spark_engine, "to_pandas", lambda df, schema: collected.append(schema) or collect(df, schema)
    )
    rep_s = forecast_job.forecast(lake, spark_cfg)
    assert collected == [], "forecast rows came back to the driver"
    assert (rep_s.n_rows, rep_s.n_series, rep_s.fits, rep_s.versions, rep_s.missing) == (
        rep.n_rows,
        rep.n_series,
        rep.fits,
        rep.versions,
        rep.missing,
    )
    assert lake.txn_version("gold/forecasts", forecast_job.APP_FORECAST) == rep.delivery
    forecast_job.aggregate(lake, spark_cfg, rep_s.model_version, delivery=rep_s.delivery)
    spark_fc, spark_portfolio = _delivered(lake)
    pd.testing.assert_frame_equal(spark_fc, local_fc, check_exact=False, rtol=1e-9)
    pd.testing.assert_frame_equal(spark_portfolio, local_portfolio, check_exact=False, rtol=1e-9)
    commits = _forecast_commits(lake)
    assert set(commits) == set(local_commits)
    assert all("userMetadata" in c for c in commits.values()), "not committed by delta-spark"
    assert not any("userMetadata" in c for c in local_commits.values())
    keys = ("mmf.delivery", "mmf.buckets", "mmf.counts", "mmf.missing", "mmf.batches", "mmf.final")
    for i, c in commits.items():
        assert {k: c.get(k) for k in keys} == {k: local_commits[i].get(k) for k in keys}, i
    # a rerun with the same champion and data skips (checked by Spark)
    assert forecast_job.forecast(lake, spark_cfg).skipped

    if bundle == "embedded":
        return  # the restart below does not depend on the bundle
    # stopped right after its first batch commit, then started again: it resumes
    _drop_outputs(lake)
    checkpoint_hook(Faults(raise_at="mid_forecast"))
    with pytest.raises(InjectedError, match="injected crash"):
        forecast_job.forecast(lake, spark_cfg)
    checkpoint_hook(None)
    assert len(_forecast_commits(lake)) == 1
    assert lake.txn_version("gold/forecasts", forecast_job.APP_FORECAST) is None
    again = forecast_job.forecast(lake, spark_cfg)
    assert (again.n_rows, again.fits, again.missing) == (rep.n_rows, rep.fits, rep.missing)
    assert len(_forecast_commits(lake)) == len(local_commits)  # no batch committed twice
    forecast_job.aggregate(lake, spark_cfg, again.model_version, delivery=again.delivery)
    resumed_fc, resumed_portfolio = _delivered(lake)
    pd.testing.assert_frame_equal(resumed_fc, local_fc, check_exact=False, rtol=1e-9)
    pd.testing.assert_frame_equal(resumed_portfolio, local_portfolio, check_exact=False, rtol=1e-9)


def _first_night(root, readings: pd.DataFrame, engine: str):
    """A lakehouse and MLflow store of their own, trained with ``engine`` (refined
    locally) on the days before the last one, then given the last day (refined)."""
    cut = readings[C.TS].max() - pd.Timedelta("1D")
    root.mkdir()
    cfg, lake = _setup(root, readings[readings[C.TS] <= cut], batch_rows=1000, freq="h")
    first = train(lake, cfg.replace(engine=engine))
    readings[readings[C.TS] > cut].to_parquet(root / "part1.parquet")
    ingest(lake, root / "part1.parquet")
    refine(lake, cfg)
    return cfg.replace(engine=engine), lake, first


def _two_trains(root, readings: pd.DataFrame, engine: str):
    """Two nights (:func:`_first_night`), each trained with ``engine``: the second once
    the last day arrived (gated against the first, its champion, on that day)."""
    cfg, lake, first = _first_night(root, readings, engine)
    return cfg, lake, first, train(lake, cfg)


def _artifact(cfg, run_id: str, path: str) -> pd.DataFrame:
    """A run's Parquet artifact (a file, or a folder of parts) sorted by series, without
    the candidates' wall-clock ``fit_s``."""
    local = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=path, tracking_uri=cfg.mlflow_tracking_uri()
    )
    frame = _without_fit_times(pd.read_parquet(local))
    return frame.sort_values(C.SERIES_ID, ignore_index=True)


def _without_fit_times(frame: pd.DataFrame) -> pd.DataFrame:
    if "candidates_json" in frame:
        frame["candidates_json"] = [
            json.dumps({m: {k: v for k, v in c.items() if k != "fit_s"} for m, c in json.loads(s).items()})
            for s in frame["candidates_json"]
        ]
    return frame


def _driver_reads(monkeypatch) -> list[tuple[str, tuple | None]]:
    """The reads of silver/readings and gold/models made through deltalake (on the
    driver) from now on: ``(table, columns)``."""
    reads: list[tuple[str, tuple | None]] = []
    read, read_buckets = Lakehouse.read, Lakehouse.read_buckets

    def seen(name, columns):
        if name in ("silver/readings", "gold/models"):
            reads.append((name, tuple(columns) if columns else None))

    def reading(self, name, version=None, columns=None, filters=None):
        seen(name, columns)
        return read(self, name, version, columns, filters)

    def reading_buckets(self, name, buckets, version=None, columns=None, filters=None):
        seen(name, columns)
        return read_buckets(self, name, buckets, version, columns, filters)

    monkeypatch.setattr(Lakehouse, "read", reading)
    monkeypatch.setattr(Lakehouse, "read_buckets", reading_buckets)
    return reads


def _metrics(cfg, run_id: str) -> dict[str, float]:
    return mlflow.MlflowClient(cfg.mlflow_tracking_uri()).get_run(run_id).data.metrics


# slow: CI's time; tests/test_spark_cluster.py runs this Spark path end to end against local
@pytest.mark.slow
def test_train_stages_after_the_engine_run_on_spark(tmp_path, spark, monkeypatch):
    """``train --engine spark`` after its batches: the run's metrics are a Spark
    aggregation over gold/models, gold/selection is derived per batch by the executors,
    the gate's comparison is computed and committed to gold/gate per batch by them and
    summed up by Spark; nothing per series comes back to the driver. Metrics, decisions
    and tables equal a local train's."""
    readings = _readings(n_series=8)
    short = readings[readings[C.SERIES_ID] == readings[C.SERIES_ID].iloc[0]].head(20)
    readings = pd.concat([readings, short.assign(**{C.SERIES_ID: "short-1"})], ignore_index=True)
    cfg, lake, _, rep = _two_trains(tmp_path / "local", readings, "local")

    collected: list = []
    collect = spark_engine.to_pandas
    monkeypatch.setattr(
        spark_engine, "to_pandas", lambda df, schema: collected.append(schema) or collect(df, schema)
    )
    reads = _driver_reads(monkeypatch)
    cfg_s, lake_s, first_s, rep_s = _two_trains(tmp_path / "spark", readings, "spark")
    assert collected == [], "per-series rows came back to the driver"
    # neither the gate's silver rows nor the run's results were read on the driver:
    # only the run's batch numbers (its done-set) and the champion's (has it rows?)
    assert {cols for name, cols in reads if name == "gold/models"} <= {("batch",)}, reads
    assert not [r for r in reads if r[0] == "silver/readings"], reads
    assert len(set(lake_s.read("gold/models")["batch"])) >= 3

    assert rep.metrics["n_quarantined"] == 1.0 and rep.metrics["n_ok"] == 8.0
    assert rep_s.metrics == pytest.approx(rep.metrics, rel=1e-9)
    logged, logged_s = _metrics(cfg, rep.run_id), _metrics(cfg_s, rep_s.run_id)
    assert set(logged_s) == set(logged) and {"gate.n_common_series", "metric_value_median"} <= set(logged)
    assert logged_s == pytest.approx(logged, rel=1e-9)

    d, d_s = rep.decision, rep_s.decision
    assert d.n_common_series == d_s.n_common_series == 8 and d.n_points == d_s.n_points > 0
    assert (d_s.promoted, d_s.champion_version, d_s.challenger_version) == (d.promoted, "1", "2")
    assert d_s.challenger_metric == pytest.approx(d.challenger_metric, rel=1e-9)
    assert d_s.champion_metric == pytest.approx(d.champion_metric, rel=1e-9)

    keys = {"gold/selection": ["silver_version", C.SERIES_ID], "gold/gate": [C.SERIES_ID]}
    for name, by in keys.items():
        pd.testing.assert_frame_equal(_gold(lake_s, name, by), _gold(lake, name, by), obj=name)
    gate = lake_s.read("gold/gate")
    assert gate["promoted"].eq(d_s.promoted).all() and len(gate) == 8
    pd.testing.assert_frame_equal(
        d_s.series, gate[list(C.GATE_SERIES.names)].sort_values(C.SERIES_ID, ignore_index=True)
    )
    assert lake_s.txn_version("gold/gate", "mmf-gate") == 2
    assert lake_s.txn_version("gold/selection", "mmf-train") == lake_s.version("silver/readings")

    # every commit of the second run's rows was made by delta-spark, batch by batch
    for name, run_key in (("gold/selection", "mmf.train_run"), ("gold/gate", "mmf.gate_run")):
        commits = [c for c in lake_s.history(name) if rep_s.run_id in (c.get(run_key), c.get("mmf.run_id"))]
        assert commits and all("userMetadata" in c for c in commits), name
        local = [c for c in lake.history(name) if rep.run_id in (c.get(run_key), c.get("mmf.run_id"))]
        assert len(commits) == len(local), name
    final = [c for c in lake_s.history("gold/selection") if c.get("mmf.run_id") == rep_s.run_id]
    assert len(final) == 1 and int(final[0]["mmf.batch"]) == int(final[0]["mmf.batches"]) - 1
    path = mlflow.artifacts.download_artifacts(
        run_id=rep_s.run_id, artifact_path="gate_series.parquet", tracking_uri=cfg_s.mlflow_tracking_uri()
    )
    got = pd.read_parquet(path).sort_values(C.SERIES_ID, ignore_index=True)
    pd.testing.assert_frame_equal(got, d_s.series, check_dtype=False)

    # the run's artifacts: written by the executors, with the local engine's contents
    for name in ("results.parquet", "per_series.parquet"):
        pd.testing.assert_frame_equal(
            _artifact(cfg_s, rep_s.run_id, name),
            _artifact(cfg, rep.run_id, name),
            check_dtype=False,
            obj=name,
        )
    client = mlflow.MlflowClient(cfg_s.mlflow_tracking_uri())
    plots = {a.path for a in client.list_artifacts(rep_s.run_id, "plots")}
    assert plots == {"plots/error_distribution.png", "plots/forecast_vs_actuals.png"}
    parts = {a.path for a in client.list_artifacts(rep_s.run_id, "results.parquet")}
    assert parts and all(p.endswith(".parquet") for p in parts), parts


# slow: CI's time; tests/test_spark_cluster.py runs this Spark path end to end against local
@pytest.mark.slow
def test_spark_train_killed_after_registering_resumes(tmp_path, spark, checkpoint_hook):
    """A Spark train killed once its version is registered (its results.parquet, a
    folder written by the executors, logged): the restart recognises the run, gates it
    on Spark and writes its Gold rows, as an uninterrupted local train's."""
    readings = _readings(n_series=5)
    cfg, lake, _, rep = _two_trains(tmp_path / "local", readings, "local")
    cfg_s, lake_s, _ = _first_night(tmp_path / "spark", readings, "spark")
    checkpoint_hook(Faults(raise_at="after_register"))
    with pytest.raises(InjectedError):
        train(lake_s, cfg_s)
    checkpoint_hook(None)
    client = mlflow.MlflowClient(cfg_s.mlflow_tracking_uri())
    exp = client.get_experiment_by_name(cfg_s.mlflow.experiment).experiment_id
    killed = client.search_runs([exp], order_by=["attributes.start_time DESC"])[0]
    assert not lake_s.exists("gold/gate") or not len(lake_s.read("gold/gate"))
    client.set_tag(killed.info.run_id, "mmf.failure", recovery.ORPHAN_REASON)  # what a kill leaves

    rep_s = train(lake_s, cfg_s)
    assert rep_s.run_id == killed.info.run_id and rep_s.model_version == "2"
    assert client.get_run(rep_s.run_id).data.tags.get("mmf.recovered")
    assert len(client.search_runs([exp])) == 2
    assert rep_s.decision.promoted == rep.decision.promoted
    assert rep_s.decision.challenger_metric == pytest.approx(rep.decision.challenger_metric, rel=1e-9)
    keys = {"gold/selection": ["silver_version", C.SERIES_ID], "gold/gate": [C.SERIES_ID]}
    for name, by in keys.items():
        pd.testing.assert_frame_equal(_gold(lake_s, name, by), _gold(lake, name, by), obj=name)
