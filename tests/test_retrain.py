"""Retrain only what changed (issue 16, item 3): ``retrain.policy: changed`` in the nightly.

Two nights as users run them: `nightly` on 30 days of readings, then 12 hours of new
readings land, with a level shift on one meter (it drifts), a revised old reading of
another (its history changed) and a meter never seen before; then `nightly` again. The
others keep their model, its state moved on to the new readings. Real Delta tables, a
real MLflow SQLite store, the local engine; the ETS state update checked against
statsmodels' own smoothing.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from mlflow import MlflowClient

from forecasting import comparison
from forecasting import contract as C
from forecasting.config import load_config
from forecasting.generator import generate, write
from forecasting.models import load_fitted
from forecasting.models.ets import ETS
from forecasting.retrain import carry_rows, decide, history_hash, retrain_series, update_ets, with_carry
from tests.reliability.reliability_support import mmf
from training.tables import Lakehouse

START = pd.Timestamp("2024-01-01")
FIRST_END = START + pd.Timedelta(days=30) - pd.Timedelta("1h")
ARRIVED = 12
SHIFTED, REVISED, NEWCOMER = "MTR-00002", "MTR-00004", "MTR-00006"
N_OLD = 6
GOLD = ("gold/models", "gold/backtest", "gold/selection", "gold/forecasts")
KEYS = {  # both nights' rows: the second night's carried backtest rows repeat the first's
    "gold/models": [C.SERIES_ID, "silver_version"],
    "gold/backtest": [C.SERIES_ID, "model", "window", "cutoff"],
    "gold/selection": [C.SERIES_ID, "silver_version"],
    "gold/forecasts": [C.SERIES_ID, "model_version", "cutoff", C.TS],
}
VOLATILE = ["run_id", "created_at", "batch", "candidates_json", "from_run"]


# -- the per-series rule ---------------------------------------------------------------
def test_ets_state_update_is_statsmodels_smoothing_with_the_fitted_parameters():
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    rng = np.random.default_rng(0)
    t = np.arange(24 * 20 + 30)
    y = 10 + 3 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.5, len(t)) + 0.01 * t
    n = 24 * 20
    fitted = ETS(season_length=24, seasonalities=(24,), freq="h", max_history=None).fit(y[:n])
    kw = dict(error="add", trend="add", damped_trend=True, seasonal="add", seasonal_periods=24)
    params = ETSModel(y[:n], initialization_method="heuristic", **kw).fit(disp=False, maxiter=200).params
    states = np.asarray(ETSModel(y, initialization_method="heuristic", **kw).smooth(params).states)
    moved = update_ets(fitted, y[n:])
    assert moved.level_ == pytest.approx(states[-1, 0], rel=1e-9)
    assert moved.slope_ == pytest.approx(states[-1, 1], rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(moved.season_, states[-24:, -1], rtol=1e-9, atol=1e-12)


def _series(sid: str, hours: int, shift: float = 0.0) -> pd.DataFrame:
    ts = pd.date_range(START, periods=hours, freq="h")
    y = 5 + np.sin(2 * np.pi * np.arange(hours) / 24) + shift
    return pd.DataFrame({C.SERIES_ID: sid, C.TS: ts.astype("datetime64[us]"), C.Y: y, "temperature": np.nan})


def test_the_reasons_in_their_order_and_the_carried_row():
    cfg = load_config(horizon=24, models=["ets"], **{"cleaning.min_length": 48, "retrain.policy": "changed"})
    old = _series("a", 24 * 10)
    prev = retrain_series(old, cfg).iloc[0].to_dict()
    assert prev["refit"] == C.NEW and prev["status"] == C.OK and prev["from_run"] is None
    prev |= {"run_id": "r1", "drifted": False}
    new = _series("a", 24 * 10 + 12)
    assert decide(prev, new, cfg) == C.CARRIED
    assert decide(prev | {"drifted": True}, new, cfg) == C.DRIFTED
    assert decide(prev | {"status": C.FAILED}, new, cfg) == C.PREVIOUS_FAILED
    assert (
        decide(prev | {"status": C.COLD_START, "model_json": ""}, new, cfg)
        == C.COLD_START_REFIT
        == "cold_start"
    )
    revised = new.copy()
    revised.loc[3, C.Y] += 1.0
    assert decide(prev, revised, cfg) == C.CHANGED
    assert decide(prev, revised, cfg.replace(**{"retrain.policy": "drifted+stale"})) == C.CARRIED
    assert decide(prev, new, cfg.replace(**{"retrain.max_model_age_days": 0.25})) == C.STALE
    assert decide(prev, new, cfg.replace(**{"retrain.policy": "full"})) == C.FULL
    assert decide(None, new, cfg) == C.NEW
    assert history_hash(new, prev["end"]) == prev["history_hash"] != history_hash(new, None)

    frame = with_carry(new, carry_rows(pd.DataFrame([prev])))
    row = retrain_series(frame, cfg).iloc[0]
    assert row["refit"] == C.CARRIED and row["from_run"] == "r1"
    assert row["end"] == new[C.TS].max() and row["fitted_end"] == prev["end"]
    for col in ("model", "backtest_json", "metric_value", "status"):
        assert row[col] == prev[col], col
    before, after = json.loads(prev["model_json"]), json.loads(row["model_json"])
    assert after["params"] == before["params"] and after["state"]["alpha"] == before["state"]["alpha"]
    assert after["state"]["level"] != before["state"]["level"]
    assert len(load_fitted(row["model_json"]).predict(24)["mean"]) == 24


# -- two nights --------------------------------------------------------------------------
def _release(gen, raw, name: str, rows: pd.DataFrame) -> None:
    write(dataclasses.replace(gen, readings=rows.reset_index(drop=True)), raw / f"{name}.parquet")


def _settings(lake_root, raw) -> dict:
    return {
        "lakehouse": str(lake_root),
        "horizon": 24,
        "models": ["seasonal_naive", "ets", "theta"],
        "workers": 1,
        "batch_rows": 1000,
        "nightly": {"source": str(raw)},
        "cleaning": {"min_length": 168},
        "backtest": {"windows": 1},
        "monitoring": {"factor": 4.0, "min_days": 0},  # the shift flagged on its first 12 hours
        "retrain": {"policy": "changed"},
        "mlflow": {"sample_plots": 0, "tracking_uri": f"sqlite:///{lake_root / 'mlflow.db'}"},
    }


@pytest.fixture(scope="module")
def first_night(tmp_path_factory):
    """A lakehouse after night 1 (6 meters, 30 days) with the next 12 hours released
    (SHIFTED shifted, REVISED's reading of day 3 revised, NEWCOMER's whole history):
    the root and the conf."""
    root = tmp_path_factory.mktemp("retrain")
    lake_root, raw = root / "lake", root / "raw"
    raw.mkdir()
    gen = generate(n_series=N_OLD + 1, days=32, freq="h", seed=5, clean=True)
    r = gen.readings
    old = r[r[C.SERIES_ID] != NEWCOMER]
    _release(gen, raw, "history", old[old[C.TS] <= FIRST_END])
    conf = root / "conf.yaml"
    conf.write_text(yaml.safe_dump(_settings(lake_root, raw)))
    first = mmf("nightly", "--conf", str(conf), timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    until = FIRST_END + pd.Timedelta(hours=ARRIVED)
    new = r[
        ((r[C.TS] > FIRST_END) & (r[C.TS] <= until)) | ((r[C.SERIES_ID] == NEWCOMER) & (r[C.TS] <= until))
    ]
    new = new.copy()
    scale = r.loc[r[C.SERIES_ID] == SHIFTED, C.Y].std()
    new.loc[(new[C.SERIES_ID] == SHIFTED) & (new[C.TS] > FIRST_END), C.Y] += 8 * scale
    fix = r[(r[C.SERIES_ID] == REVISED) & (r[C.TS] == START + pd.Timedelta(days=3))].copy()
    fix[C.Y] += 1.0
    _release(gen, raw, "next-hours", pd.concat([new, fix]))
    return root, conf


def _copy(first_night, tmp_path):
    """A copy of the lakehouse after night 1, with its conf."""
    root, conf = first_night
    dst = tmp_path / "lake"
    shutil.copytree(root / "lake", dst)
    data = yaml.safe_load(conf.read_text())
    data.update(
        lakehouse=str(dst), mlflow={**data["mlflow"], "tracking_uri": f"sqlite:///{dst / 'mlflow.db'}"}
    )
    out = tmp_path / "conf.yaml"
    out.write_text(yaml.safe_dump(data))
    return dst, out


def _tables(lake_root) -> dict[str, pd.DataFrame]:
    lake, out = Lakehouse(str(lake_root)), {}
    for name in GOLD:
        frame = lake.read(name)
        frame = frame.drop(columns=[c for c in VOLATILE if c in frame.columns])
        out[name] = frame.sort_values(KEYS[name], kind="stable").reset_index(drop=True)
    return out


@pytest.fixture(scope="module")
def second_night(first_night, tmp_path_factory):
    """Night 2, uninterrupted, on a copy: (lake root, conf)."""
    lake_root, conf = _copy(first_night, tmp_path_factory.mktemp("night2"))
    done = mmf("nightly", "--conf", str(conf), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return lake_root, conf


def test_the_second_night_refits_what_changed_and_carries_the_rest(second_night):
    lake_root, _ = second_night
    lake = Lakehouse(str(lake_root))
    sel = lake.read("gold/selection")
    runs = sel.groupby("run_id")["created_at"].min().sort_values().index
    first, last = sel[sel["run_id"] == runs[0]], sel[sel["run_id"] == runs[-1]].set_index(C.SERIES_ID)
    assert set(first["refit"]) == {C.NEW} and set(first["from_version"]) == {"1"}
    want = {SHIFTED: C.DRIFTED, REVISED: C.CHANGED, NEWCOMER: C.NEW}
    for sid, row in last.iterrows():
        assert row["refit"] == want.get(sid, C.CARRIED), sid
        assert row["from_version"] == ("2" if sid in want else "1"), sid
    models = lake.read("gold/models")
    old = models[models["run_id"] == runs[0]].set_index(C.SERIES_ID)
    new = models[models["run_id"] == runs[-1]].set_index(C.SERIES_ID)
    assert len(new) == N_OLD + 1  # the version holds every series
    carried = last.index[last["refit"] == C.CARRIED]
    assert len(carried) == N_OLD - 2
    for sid in carried:
        assert new.at[sid, "backtest_json"] == old.at[sid, "backtest_json"]
        assert new.at[sid, "model"] == old.at[sid, "model"]
        assert new.at[sid, "end"] == old.at[sid, "end"] + pd.Timedelta(hours=ARRIVED)
        assert new.at[sid, "fitted_end"] == old.at[sid, "end"] and new.at[sid, "from_run"] == runs[0]
    uri = f"sqlite:///{lake_root / 'mlflow.db'}"
    metrics = MlflowClient(tracking_uri=uri).get_run(runs[-1]).data.metrics
    assert metrics["n_refit"] == 3 and metrics["n_carried"] == N_OLD - 2 and metrics["n_drifted"] == 1
    fc = lake.read("gold/forecasts")
    fc = fc[fc["silver_version"] == fc["silver_version"].max()]
    assert fc[C.SERIES_ID].nunique() == N_OLD + 1
    if set(fc["model_version"]) == {"2"}:  # promoted: its carried models forecast as they are
        assert set(fc["fit"]) == {C.TRAINED}


def test_the_gate_leaves_a_carried_model_out_as_a_tie(second_night):
    """A carried series' challenger is the champion's model: the gate leaves it out as a
    tie (no refit); the series fitted again are compared on the champion's window."""
    lake = Lakehouse(str(second_night[0]))
    sel = lake.read("gold/selection")
    newest = sel.groupby("run_id")["created_at"].min().idxmax()
    last = sel[sel["run_id"] == newest].set_index(C.SERIES_ID)
    gate = lake.read("gold/gate")
    gate = gate[gate["run_id"] == newest].set_index(C.SERIES_ID)
    carried = last.index[last["refit"] == C.CARRIED]
    assert len(carried) == N_OLD - 2
    assert set(gate.loc[carried, "reason"]) == {comparison.CARRIED_CHAMPION}
    assert (gate.loc[carried, "n_points"] == 0).all() and gate.loc[carried, "challenger_metric"].isna().all()
    for sid in (SHIFTED, REVISED):  # fitted again: compared on the 12 hours that arrived
        assert gate.at[sid, "reason"] == "" and gate.at[sid, "n_points"] == ARRIVED, sid
        assert gate.at[sid, "champion_source"] == "gold"
    assert gate.at[SHIFTED, "challenger_metric"] != gate.at[SHIFTED, "champion_metric"]


def test_a_partial_retrain_nightly_killed_mid_train_restarts_to_the_same_gold(
    first_night, second_night, tmp_path
):
    lake_root, conf = _copy(first_night, tmp_path)
    killed = mmf(
        "nightly", "--conf", str(conf), env={"MMF_TEST_KILL_AT": "mid_train:batches_done=1"}, timeout=600
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    again = mmf("nightly", "--conf", str(conf), timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    got, want = _tables(lake_root), _tables(second_night[0])
    for name in GOLD:
        pd.testing.assert_frame_equal(got[name], want[name], check_dtype=False, obj=name)
    uri = f"sqlite:///{lake_root / 'mlflow.db'}"
    # the registry named too: MlflowClient(tracking_uri=...) alone asks the registry an
    # earlier test of this process set (mlflow.set_registry_uri is process-wide)
    versions = MlflowClient(tracking_uri=uri, registry_uri=uri).search_model_versions(
        "name = 'mmf-many-models'"
    )
    assert len(versions) == 2


# -- Spark -------------------------------------------------------------------------------
def _two_partial_trains(root, readings: pd.DataFrame, engine: str, revised: str, drifted: str):
    """Train on all days but the last, then (the last day and a revised reading of
    ``revised`` arrived, ``drifted`` flagged in gold/drift) train again, both with
    ``engine`` and ``retrain.policy: changed``."""
    from training.jobs.ingest import ingest
    from training.jobs.refine import refine
    from training.jobs.train import train

    cut = readings[C.TS].max() - pd.Timedelta("1D")
    root.mkdir()
    cfg = load_config(
        lakehouse=str(root / "lake"),
        horizon=12,
        models=["seasonal_naive", "ets"],
        workers=1,
        batch_rows=1000,
        freq="h",
        engine=engine,
        **{
            "cleaning.min_length": 96,
            "backtest.windows": 1,
            "retrain.policy": "changed",
            "mlflow.tracking_uri": f"sqlite:///{root / 'mlflow.db'}",
        },
    )
    lake = Lakehouse.from_config(cfg)
    readings[readings[C.TS] <= cut].to_parquet(root / "part0.parquet")
    ingest(lake, root / "part0.parquet")
    refine(lake, cfg.replace(engine="local"))
    first = train(lake, cfg)
    fix = readings[(readings[C.SERIES_ID] == revised)].head(1).assign(**{C.Y: lambda f: f[C.Y] + 1.0})
    pd.concat([readings[readings[C.TS] > cut], fix]).to_parquet(root / "part1.parquet")
    ingest(lake, root / "part1.parquet")
    refine(lake, cfg.replace(engine="local"))
    _flag_drifted(lake, drifted)
    return lake, first, train(lake, cfg)


def _flag_drifted(lake: Lakehouse, sid: str) -> None:
    """gold/drift as a monitoring run on the current silver version leaves it: ``sid``
    drifted."""
    from training.jobs.monitor import APP_MONITOR

    version = lake.version("silver/readings")
    row = {C.SERIES_ID: sid, "silver_version": version, "drifted": True, C.BUCKET: None}
    table = pa.Table.from_pylist([row], schema=lake.schema("gold/drift"))
    lake.write("gold/drift", table, app_id=APP_MONITOR, app_version=version)


@pytest.mark.spark
def test_a_partial_retrain_on_spark_equals_local_with_the_models_read_by_the_executors(
    tmp_path, spark, monkeypatch
):
    from tests.test_spark_jobs import _driver_reads, _readings

    readings = _readings(n_series=6)
    revised, drifted = sorted(readings[C.SERIES_ID].unique())[1:3]
    lake, _, local = _two_partial_trains(tmp_path / "local", readings, "local", revised, drifted)
    reads = _driver_reads(monkeypatch)
    spark_lake, _, on_spark = _two_partial_trains(tmp_path / "spark", readings, "spark", revised, drifted)
    # the previous models (model_json) never pass through the driver
    assert not [r for r in reads if r[0] == "gold/models" and (r[1] is None or "model_json" in r[1])], reads
    got, want = (
        _rows(x, rep.run_id).drop(columns=["candidates_json", "from_run"])
        for x, rep in ((spark_lake, on_spark), (lake, local))
    )
    pd.testing.assert_frame_equal(got, want, check_dtype=False)
    assert set(want["refit"]) == {C.CARRIED, C.CHANGED, C.DRIFTED}
    assert want.loc[want[C.SERIES_ID] == revised, "refit"].item() == C.CHANGED
    assert want.loc[want[C.SERIES_ID] == drifted, "refit"].item() == C.DRIFTED
    for key in ("n_refit", "n_carried", "n_drifted"):
        assert on_spark.metrics[key] == local.metrics[key] and key in local.metrics
    sel = spark_lake.read("gold/selection")
    assert set(sel.loc[sel["run_id"] == on_spark.run_id, "from_version"]) == {"1", "2"}


def _rows(lake: Lakehouse, run_id: str) -> pd.DataFrame:
    rows = lake.read("gold/models")
    rows = rows[rows["run_id"] == run_id].drop(columns=["run_id", "created_at", "batch"])
    return rows.sort_values(C.SERIES_ID, ignore_index=True)


def test_batches_holding_drifted_series_are_trained_first(tmp_path):
    from training.jobs import retrain as job
    from training.jobs.train_plan import Plan

    lake = Lakehouse(str(tmp_path / "lake"))
    ids = [f"MTR-{i:05d}" for i in range(60)]
    quarter = C.N_BUCKETS // 4
    ranges = [(k * quarter, (k + 1) * quarter) for k in range(4)]
    batch = C.bucket_of(ids) // quarter
    flagged = [i for i, b in zip(ids, batch) if b == 2] + [i for i, b in zip(ids, batch) if b == 3][:1]
    rows = [{C.SERIES_ID: i, "silver_version": 3, "drifted": i in flagged, C.BUCKET: None} for i in ids]
    lake.write("gold/drift", pa.Table.from_pylist(rows, schema=lake.schema("gold/drift")))
    plan = Plan(lake, 0, ranges)
    assert job.order(lake, job.Retrain("base", 3), plan, [0, 1, 2, 3]) == [2, 3, 0, 1]
    assert job.order(lake, job.Retrain("base", 2), plan, [0, 1, 3]) == [0, 1, 3]  # another night's drift
    assert job.order(lake, job.Retrain(None, None), plan, [1, 0]) == [1, 0]


# -- the windows a partial retrain chooses on ------------------------------------------
def _windows(row) -> int:
    return len({w["window"] for w in json.loads(row["backtest_json"])})


def test_a_partial_retrain_chooses_on_a_week_of_windows_as_far_as_the_history_holds():
    """Its choice is carried for days, over weekdays and the weekend: it is made on the
    windows covering a week (7 of 24 hours), not on the two latest days as ``full``."""
    cfg = load_config(
        horizon=24,
        models=["seasonal_naive", "ets"],
        **{"cleaning.min_length": 48, "retrain.policy": "changed"},
    )
    assert cfg.backtest.windows == 2 and cfg.retrain.backtest_windows is None
    long, short = _series("long", 24 * 10), _series("short", 24 * 5)
    row = retrain_series(long, cfg).iloc[0]
    assert row["status"] == C.OK and row["refit"] == C.NEW and _windows(row) == 7
    # 5 days: the oldest window needs 2 days to train on, so 3 windows fit (not 7, and
    # not a failure)
    row = retrain_series(short, cfg).iloc[0]
    assert row["status"] == C.OK and _windows(row) == 3
    assert _windows(retrain_series(long, cfg.replace(**{"retrain.policy": "full"})).iloc[0]) == 2
    assert _windows(retrain_series(long, cfg.replace(**{"retrain.backtest_windows": 4})).iloc[0]) == 4
    # never fewer than backtest.windows; a series too short for those is treated as under full
    assert _windows(retrain_series(long, cfg.replace(**{"retrain.backtest_windows": 1})).iloc[0]) == 2
    tiny = retrain_series(_series("tiny", 80), cfg).iloc[0]
    as_full = retrain_series(_series("tiny", 80), cfg.replace(**{"retrain.policy": "full"})).iloc[0]
    assert tiny["status"] == as_full["status"] == C.FALLBACK and tiny["reason"] == as_full["reason"]
    # the rule by frequency: a week of steps in windows of backtest.step (horizon by default)
    assert cfg.selection_windows("h") == 7 and cfg.selection_windows("30min") == 14
    assert cfg.replace(horizon=48).selection_windows("30min") == 7
    assert cfg.replace(horizon=48).selection_windows("h") == 4
    assert cfg.replace(horizon=7).selection_windows("D") == 2  # one window is a week
    assert cfg.replace(horizon=1).selection_windows("D") == 7
    assert cfg.selection_windows("W-SUN") == cfg.selection_windows("MS") == 2
    assert cfg.replace(models=["seasonal_naive", "global_gbm"]).selection_windows("h") == 2
    # with tuning, the tuning windows (3 days here) keep their room before the oldest
    # selection window: 10 days hold 5 selection windows (7 without tuning)
    tuned = cfg.replace(**{"tune.enabled": True, "tune.max_evals": 2, "tune.windows": 3})
    row = retrain_series(long, tuned).iloc[0]
    assert row["status"] == C.OK and _windows(row) == 5
    assert "skipped" not in json.dumps(json.loads(row["tuned_json"]))
