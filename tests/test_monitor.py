"""Forecast monitoring (issue 16, item 2): the delivered forecasts scored against the
actuals that arrive later (gold/accuracy), drift per series (gold/drift), `mmf monitor`,
the nightly's monitoring step and the API's live accuracy.

Nights as users run them: `nightly` on the data so far, then readings of the next hours
land in the source folder. Real Delta tables, a real MLflow SQLite store, the local engine.
"""

from __future__ import annotations

import dataclasses
import json

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from forecasting import contract as C
from forecasting.generator import generate, write
from training.cli import cli
from training.jobs.monitor import DRIFT_METRIC, DRIFT_TAG, _days_over, drift_rows, monitor
from training.jobs.nightly import nightly
from training.tables import Lakehouse

H = 24
START = pd.Timestamp("2024-01-01")
N_SERIES = 4
SHIFTED = "MTR-00002"  # its readings after the first night jump by a level shift
FIRST_NIGHT_END = START + pd.Timedelta(days=30) - pd.Timedelta("1h")
ARRIVED = 12  # hours of readings that land between the two nights


@pytest.fixture
def two_nights(tmp_path, config):
    """Night 1 on 30 days (forecast of the next 24 h), then 12 hours of readings (a
    level shift on SHIFTED), then night 2: returns (config, lake, forecasts of night 1,
    the reports)."""
    gen = generate(n_series=N_SERIES, days=32, freq="h", seed=5, clean=True)
    raw = tmp_path / "raw"
    raw.mkdir()
    r = gen.readings

    def release(name: str, rows: pd.DataFrame) -> None:
        write(dataclasses.replace(gen, readings=rows.reset_index(drop=True)), raw / f"{name}.parquet")

    release("history", r[r[C.TS] <= FIRST_NIGHT_END])
    cfg = config.replace(
        **{
            "nightly.source": str(raw),
            "cleaning.min_length": 168,
            "workers": 1,
            "mlflow.sample_plots": 0,
            "monitoring.factor": 2.0,
            "monitoring.min_days": 0,  # flagged on its first 12 hours (see the test of min_days)
        }
    )
    lake = Lakehouse.from_config(cfg)
    first = nightly(lake, cfg)
    assert not first.failed, first.failure
    assert first.monitor is not None and first.monitor.scored == 0  # nothing delivered yet
    night1 = lake.read("gold/forecasts")
    new = r[(r[C.TS] > FIRST_NIGHT_END) & (r[C.TS] <= FIRST_NIGHT_END + pd.Timedelta(hours=ARRIVED))].copy()
    scale = r.loc[r[C.SERIES_ID] == SHIFTED, C.Y].std()
    new.loc[new[C.SERIES_ID] == SHIFTED, C.Y] += 8 * scale
    release("next-hours", new)
    second = nightly(lake, cfg)
    assert not second.failed, second.failure
    return cfg, lake, night1, first, second


def hand_accuracy(lake: Lakehouse, night1: pd.DataFrame, levels) -> pd.DataFrame:
    """The expected gold/accuracy rows, computed here from gold/forecasts and silver."""
    silver = lake.read("silver/readings").sort_values([C.SERIES_ID, C.TS])
    rows = []
    for (sid, cutoff), fc in night1.groupby([C.SERIES_ID, "cutoff"]):
        hist = silver[(silver[C.SERIES_ID] == sid)]
        x = hist.loc[hist[C.TS] <= cutoff, C.Y].to_numpy()
        scale = np.mean(np.abs(x[24:] - x[:-24]))  # hourly: season 24 steps
        actual = hist[~hist["is_filled"]].set_index(C.TS)[C.Y]
        for lead, (_, f) in enumerate(fc.sort_values(C.TS).iterrows(), start=1):
            if f[C.TS] not in actual.index:
                continue
            y = actual[f[C.TS]]
            row = {C.SERIES_ID: sid, "cutoff": cutoff, "lead": lead, C.TS: f[C.TS], "y": y}
            row |= {"mae": abs(f["yhat"] - y), "bias": f["yhat"] - y, "mase": abs(f["yhat"] - y) / scale}
            for lv in levels:
                row[f"coverage_{lv}"] = float(f[f"yhat_lower_{lv}"] <= y <= f[f"yhat_upper_{lv}"])
            rows.append(row)
    return pd.DataFrame(rows).sort_values([C.SERIES_ID, "lead"]).reset_index(drop=True)


def test_second_night_scores_the_first_nights_forecasts_and_flags_the_shift(two_nights):
    cfg, lake, night1, first, second = two_nights
    levels = list(cfg.levels)
    assert second.steps["monitor"].startswith("done"), second.steps
    acc = lake.read("gold/accuracy").sort_values([C.SERIES_ID, "lead"]).reset_index(drop=True)
    # only the steps whose actuals arrived: the first ARRIVED hours of night 1's forecast
    assert len(acc) == N_SERIES * ARRIVED
    assert set(acc["lead"]) == set(range(1, ARRIVED + 1))
    assert (acc[C.TS] <= FIRST_NIGHT_END + pd.Timedelta(hours=ARRIVED)).all()
    assert (acc["cutoff"] == FIRST_NIGHT_END).all() and (acc["n"] == 1).all()
    assert set(acc["model_version"]) == set(night1["model_version"])
    assert (acc["created_at"] == night1["created_at"].iloc[0]).all()
    assert (
        pd.to_datetime(acc["forecast_day"]) == night1["created_at"].iloc[0].tz_convert(None).normalize()
    ).all()
    want = hand_accuracy(lake, night1, levels)
    for col in ["y", "mae", "bias", "mase", *[f"coverage_{lv}" for lv in levels]]:
        np.testing.assert_allclose(
            acc[col].to_numpy(float), want[col].to_numpy(float), rtol=1e-9, err_msg=col
        )
    assert list(acc[C.TS]) == list(want[C.TS])

    drift = lake.read("gold/drift").set_index(C.SERIES_ID)
    assert len(drift) == N_SERIES and (drift["silver_version"] == lake.version("silver/readings")).all()
    assert drift.index[drift["drifted"]].tolist() == [SHIFTED], drift[["mase", "backtest_mase", "ratio"]]
    live = acc.groupby(C.SERIES_ID)["mase"].mean()
    np.testing.assert_allclose(drift["mase"].sort_index(), live.sort_index(), rtol=1e-12)
    # the backtest MASE is the chosen model's, in the forecasting run's gold/backtest rows
    bt = lake.read("gold/backtest")
    run_id = night1["run_id"].iloc[0]
    mine = bt[
        (bt["run_id"] == run_id) & (bt[C.SERIES_ID] == SHIFTED) & (bt["model"] == drift.at[SHIFTED, "model"])
    ]
    assert drift.at[SHIFTED, "backtest_mase"] == pytest.approx(mine["mase"].mean())
    assert drift.at[SHIFTED, "ratio"] > cfg.monitoring.factor
    # the nightly's training run records how many series drifted
    run = mlflow.MlflowClient().get_run(second.train.run_id)
    assert run.data.tags[DRIFT_TAG] == "1" and run.data.metrics[DRIFT_METRIC] == 1.0
    assert second.monitor.drifted == 1 and second.monitor.drifted_ids == [SHIFTED]


def test_drift_waits_for_min_days_of_actuals(two_nights):
    """The shift is flagged from its first 12 hours of actuals with min_days 0, not
    with min_days 1 (12 hours cover half a day); ratios are the same either way."""
    cfg, lake, *_ = two_nights
    acc = lake.read("gold/accuracy")
    ends = lake.read("silver/series").set_index(C.SERIES_ID)["end"].astype("datetime64[us]")
    version = lake.version("silver/readings")
    rows = {
        d: drift_rows(lake, cfg.replace(**{"monitoring.min_days": d}), acc, ends, version) for d in (0, 1)
    }
    assert rows[0].loc[rows[0]["drifted"], C.SERIES_ID].tolist() == [SHIFTED]
    assert not rows[1]["drifted"].any()
    np.testing.assert_allclose(rows[0]["ratio"], rows[1]["ratio"])
    assert rows[0].set_index(C.SERIES_ID).at[SHIFTED, "ratio"] > cfg.monitoring.factor


def test_drift_is_sustained_error_not_one_bad_day():
    """Drift needs each of the last min_days days over factor x the backtest MASE: one
    bad day (a holiday: every model misses it) among good ones is not drift, three bad
    days in a row are; a series with fewer days than that is not flagged yet."""
    hours = pd.date_range("2026-03-01", periods=24 * 4, freq="h")
    day = (hours - hours[0]).days

    def series(sid: str, daily_mase: list[float], n_days: int = 4) -> pd.DataFrame:
        keep = day < n_days
        return pd.DataFrame({C.SERIES_ID: sid, C.TS: hours[keep], "mase": np.asarray(daily_mase)[day[keep]]})

    rows = pd.concat(
        [
            series("holiday", [1.0, 1.0, 6.0, 1.0]),  # its mean over the window is 2.25x, still not drift
            series("shift", [1.0, 2.0, 2.0, 2.0]),
            series("new", [2.0, 2.0, 2.0, 2.0], n_days=2),
        ],
        ignore_index=True,
    )
    live = pd.DataFrame({C.SERIES_ID: ["holiday", "shift", "new"], "backtest_mase": 1.0})
    assert _days_over(rows, live, 1.5, 3).tolist() == [False, True, False]
    assert _days_over(rows, live, 1.5, 1).tolist() == [False, True, True]
    assert _days_over(rows, live, 2.5, 3).tolist() == [False, False, False]


def test_rerunning_monitor_writes_nothing_new(two_nights):
    cfg, lake, *_ = two_nights
    tables = ("gold/accuracy", "gold/drift")
    versions = {t: lake.version(t) for t in tables}
    before = {t: lake.read(t) for t in tables}
    rep = monitor(lake, cfg)
    assert rep.skipped and rep.drifted == 1 and rep.series == N_SERIES
    rerun = nightly(lake, cfg)  # the whole nightly again on the same data
    assert rerun.steps["monitor"].startswith("skipped"), rerun.steps
    assert {t: lake.version(t) for t in tables} == versions
    # scored again (as a restart killed before its completion marker would), in smaller
    # batches: every row compares equal to what the tables hold, so nothing is written
    redo = monitor(lake, cfg.replace(batch_rows=1000), force=True)
    assert redo.batches > 1 and redo.scored == N_SERIES * ARRIVED and redo.written == 0
    assert {t: lake.version(t) for t in tables} == versions
    for t, frame in before.items():
        pd.testing.assert_frame_equal(lake.read(t), frame)


def test_mmf_monitor_prints_the_fleet_view(two_nights, tmp_path):
    cfg, lake, *_ = two_nights
    conf = tmp_path / "conf.yaml"
    conf.write_text(yaml.safe_dump(cfg.to_dict()))
    result = CliRunner().invoke(cli, ["monitor", "--conf", str(conf)])
    assert result.exit_code == 0, result.output
    out = result.output
    silver = lake.version("silver/readings")
    assert (
        f"live accuracy on silver version {silver} (last 7 days of actuals): {N_SERIES} series, 1 drifted"
        in out
    )
    assert "coverage vs nominal: 80%: " in out and "95%: " in out
    assert f"drifted: {SHIFTED}" in out
    worst = out.split("worst series (live MASE):")[1].splitlines()[2]
    assert worst.split()[0] == SHIFTED  # the level shift is the worst series
    assert f"drift counts: silver v{silver}: 1 of {N_SERIES}" in out

    result = CliRunner().invoke(cli, ["monitor", "--conf", str(conf), "--json", "--top", "2"])
    assert result.exit_code == 0, result.output
    view = json.loads(result.output)
    assert view["silver_version"] == silver and view["series"] == N_SERIES and view["drifted"] == 1
    assert [w[C.SERIES_ID] for w in view["worst"]][0] == SHIFTED and len(view["worst"]) == 2
    acc = lake.read("gold/accuracy")
    for c in view["coverage"]:
        assert c["observed"] == pytest.approx(acc[f"coverage_{c['level']}"].mean())
        assert c["nominal"] == c["level"] / 100
    assert view["fleet"]["mase"] == pytest.approx(acc["mase"].mean())

    # --score runs the job first (nothing new here: the silver version is scored)
    result = CliRunner().invoke(cli, ["monitor", "--conf", str(conf), "--score"])
    assert result.exit_code == 0, result.output
    assert "monitor skipped: silver version" in result.output


def test_api_forecast_carries_live_accuracy(two_nights):
    """GET /series/{id}/forecast answers the snapshot's body: it carries the series'
    live accuracy from the latest monitoring run."""
    from training.serving import schemas as S
    from training.serving.state import ServingState

    cfg, lake, *_ = two_nights
    state = ServingState(cfg)
    state.refresher.refresh()
    drift = lake.read("gold/drift").set_index(C.SERIES_ID)
    for sid in drift.index:
        body = json.loads(state.forecast_body(sid))
        S.Forecast.model_validate(body)
        a = body["accuracy"]
        assert a["n"] == ARRIVED and a["drifted"] == (sid == SHIFTED)
        assert a["mase"] == pytest.approx(drift.at[sid, "mase"]) and a["mae"] == pytest.approx(
            drift.at[sid, "mae"]
        )
        assert a["coverage"]["80"] == pytest.approx(drift.at[sid, "coverage_80"])
        assert a["backtest_mase"] == pytest.approx(drift.at[sid, "backtest_mase"])
        assert a["silver_version"] == lake.version("silver/readings")
        night2_end = FIRST_NIGHT_END + pd.Timedelta(hours=ARRIVED)
        assert body["cutoff"] == night2_end.strftime("%Y-%m-%dT%H:%M:%SZ")  # night 2's forecast, next to it


def test_spark_engine_scores_the_same(two_nights, spark):
    """The scoring runs through the engine's map_batches: on Spark it computes the same
    rows, so scoring the same silver version again writes nothing."""
    cfg, lake, *_ = two_nights
    tables = ("gold/accuracy", "gold/drift")
    versions = {t: lake.version(t) for t in tables}
    redo = monitor(lake, cfg.replace(engine="spark", batch_rows=1000), force=True)
    assert redo.batches > 1 and redo.scored == N_SERIES * ARRIVED and redo.written == 0
    assert redo.drifted == 1 and redo.drifted_ids == [SHIFTED]
    assert {t: lake.version(t) for t in tables} == versions


def test_mase_scale_follows_the_metrics_rule():
    from training.jobs.monitor import mase_scale

    hourly = np.tile(np.arange(24.0), 3) + np.repeat([0.0, 1.0, 3.0], 24)
    assert mase_scale(hourly, 24) == pytest.approx(np.mean(np.abs(hourly[24:] - hourly[:-24])))
    seasonal = np.tile(np.arange(24.0), 3)  # perfectly seasonal: the lag-1 naive MAE
    assert mase_scale(seasonal, 24) == pytest.approx(np.mean(np.abs(np.diff(seasonal))))
    assert mase_scale(np.full(50, 4.0), 24) == 4.0  # flat: its level
    assert mase_scale(np.zeros(50), 24) == 1.0 and np.isnan(mase_scale(np.array([1.0]), 24))
