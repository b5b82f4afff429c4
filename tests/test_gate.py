"""The like-for-like promotion gate, end to end on real Delta tables, a real MLflow store
and the local engine: challenger and champion scored on the same window (the champion's
forecast window, after its cutoff), the decision on too little common data, the records
in gold/gate and in the run, and a killed and restarted train.

The data make the old rule (the challenger's backtest on the newest day against the
champion's recorded backtest on an older day) and the like-for-like rule disagree: the
champion was scored on an easy day, and the new day is noisy for everybody, but on that
new day the challenger's model (weekly naive) is far better than the champion's
(seasonal naive: yesterday again).
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from forecasting import comparison
from forecasting import contract as C
from forecasting.metrics import mase
from registry import aliases
from tests.reliability.reliability_support import mmf
from training.jobs import forecast as forecast_job
from training.jobs.train import train
from training.tables import GOLD_GATE, SILVER_READINGS, SILVER_SERIES, Lakehouse

REPO = Path(__file__).resolve().parents[1]
IDS = ["g-1", "g-2", "g-3"]
DAYS = 15  # days 0..13 on the first night, day 14 arrives for the second
START = pd.Timestamp("2024-03-04")  # a Monday


def _signals() -> dict[str, np.ndarray]:
    """Hourly y per series: one daily shape every day except days 7 and 14, which have
    it upside down (so day 14 repeats last week, not yesterday); small noise, except
    on day 14 (a hard day)."""
    out = {}
    hour = np.arange(24)
    for i, sid in enumerate(IDS):
        rng = np.random.default_rng(100 + i)
        days = []
        for day in range(DAYS):
            sign = -1.0 if day in (7, 14) else 1.0
            noise = rng.normal(0, 1.0 if day == 14 else 0.05, 24)
            days.append(10 + i + 3 * sign * np.sin(2 * np.pi * hour / 24) + noise)
        out[sid] = np.concatenate(days)
    return out


SIGNALS = _signals()


def _silver(days: range) -> pd.DataFrame:
    ts = pd.date_range(START, periods=DAYS * 24, freq="h")
    parts = []
    for sid, y in SIGNALS.items():
        rows = slice(days.start * 24, days.stop * 24)
        parts.append(pd.DataFrame({C.SERIES_ID: sid, C.TS: ts[rows], C.Y: y[rows]}))
    frame = pd.concat(parts, ignore_index=True)
    frame[C.TS] = frame[C.TS].astype("datetime64[us]")
    return frame.assign(temperature=np.nan, is_filled=False, is_outlier=False)


def _series(lake: Lakehouse) -> None:
    """silver/series as refine leaves it: one row per series with its span (the forecast
    job forecasts the next horizon of each)."""
    readings = lake.read(SILVER_READINGS)
    span = readings.groupby(C.SERIES_ID)[C.TS].agg(["min", "max", "count"]).reset_index()
    series = pd.DataFrame(
        {
            C.SERIES_ID: span[C.SERIES_ID],
            "freq": "h",
            "start": span["min"].astype("datetime64[us]"),
            "end": span["max"].astype("datetime64[us]"),
            "n_obs": span["count"].astype("int64"),
        }
    )
    lake.write(SILVER_SERIES, series, mode="overwrite")


def first_night(lake: Lakehouse, cfg, forecast: bool = True):
    """Silver days 0..13, the first version trained (the champion) and, unless told
    otherwise, its forecasts in gold/forecasts."""
    lake.write(SILVER_READINGS, _silver(range(0, DAYS - 1)))
    _series(lake)
    rep = train(lake, cfg)
    assert rep.promoted and rep.model_version == "1"
    if forecast:
        forecast_job.forecast(lake, cfg)
    return rep


def new_day(lake: Lakehouse) -> None:
    lake.write(SILVER_READINGS, _silver(range(DAYS - 1, DAYS)), mode="append")
    _series(lake)


def expected_metrics(sid: str) -> tuple[float, float]:
    """Day 14 scored by hand: the champion repeats day 13, the challenger day 7; both
    scaled by the seasonal naive error of days 0..13."""
    y = SIGNALS[sid]
    history, actual = y[: 14 * 24], y[14 * 24 :]
    return mase(actual, history[-168:-144], history, 24), mase(actual, history[-24:], history, 24)


@pytest.fixture
def cfg(config):
    return config.replace(**{"mlflow.sample_plots": 0})


@pytest.fixture
def two_nights(cfg):
    """First night (seasonal naive, forecast), then the new day and a challenger trained
    with weekly naive."""
    lake = Lakehouse.from_config(cfg)
    rep1 = first_night(lake, cfg)
    new_day(lake)
    rep2 = train(lake, cfg.replace(models=["weekly_naive"]))
    return cfg, lake, rep1, rep2


def test_challenger_and_champion_are_scored_on_the_same_window(two_nights):
    cfg, lake, rep1, rep2 = two_nights
    # the old rule: the challenger's own backtest (the new, hard day) against the
    # champion's recorded one (an easy day) would have kept the champion
    assert rep2.results["metric_value"].mean() > 10 * rep1.results["metric_value"].mean()

    d = rep2.decision
    assert d.promoted and not d.insufficient, d.reason
    assert d.champion_version == "1" and d.challenger_version == "2"
    assert d.n_common_series == 3 and d.n_points == 3 * 24
    assert d.reason.startswith("promoted: challenger mase") and "on 3 common series (72 points" in d.reason
    assert aliases.champion_info(cfg)["version"] == "2"

    series = d.series.set_index(C.SERIES_ID)
    for sid in IDS:
        chal, champ = expected_metrics(sid)
        assert series.loc[sid, "challenger_metric"] == pytest.approx(chal, rel=1e-9)
        assert series.loc[sid, "champion_metric"] == pytest.approx(champ, rel=1e-9)
    assert d.challenger_metric == pytest.approx(np.mean([expected_metrics(s)[0] for s in IDS]))
    assert d.champion_metric == pytest.approx(np.mean([expected_metrics(s)[1] for s in IDS]))
    # the window: the day after the champion's cutoff, its own Gold forecasts; the
    # challenger's model choice saw that day, and says so
    assert (series["window_start"] == START + pd.Timedelta("14D")).all()
    assert (series["window_end"] == START + pd.Timedelta("14D 23h")).all()
    assert set(series["champion_source"]) == {"gold"}
    assert series["challenger_saw_window"].all()
    assert (series["reason"] == "").all()


def test_comparison_is_recorded_per_series_in_gold_and_in_the_run(two_nights):
    cfg, lake, rep1, rep2 = two_nights
    d = rep2.decision
    gold = lake.read(GOLD_GATE)
    assert list(gold.columns) == C.GOLD_GATE.names
    assert set(gold["run_id"]) == {rep2.run_id} and len(gold) == 3
    assert set(gold["challenger_version"]) == {"2"} and set(gold["champion_version"]) == {"1"}
    assert set(gold["metric"]) == {"mase"} and gold["promoted"].all()
    mine = gold.sort_values(C.SERIES_ID, ignore_index=True)
    cols = ["series_id", "window_start", "window_end", "n_points", "challenger_metric", "champion_metric"]
    pd.testing.assert_frame_equal(mine[cols], d.series[cols], check_dtype=False)

    client = MlflowClient()
    run = client.get_run(rep2.run_id)
    assert run.data.metrics["gate.n_common_series"] == 3 and run.data.metrics["gate.n_points"] == 72
    assert run.data.metrics["gate.challenger_metric"] == pytest.approx(d.challenger_metric)
    assert run.data.tags["gate.insufficient"] == "false" and run.data.tags["gate.promoted"] == "true"
    tmp = Path(mlflow.artifacts.download_artifacts(run_id=rep2.run_id, artifact_path="gate.json"))
    total = json.loads(tmp.read_text())
    assert total["n_common_series"] == 3 and total["champion_metric"] == pytest.approx(d.champion_metric)
    path = mlflow.artifacts.download_artifacts(run_id=rep2.run_id, artifact_path="gate_series.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(path)[cols], d.series[cols], check_dtype=False)


def test_champion_without_gold_forecasts_is_refit_up_to_its_cutoff(cfg):
    lake = Lakehouse.from_config(cfg)
    first_night(lake, cfg, forecast=False)
    new_day(lake)
    d = train(lake, cfg.replace(models=["weekly_naive"])).decision
    series = d.series.set_index(C.SERIES_ID)
    assert set(series["champion_source"]) == {"refit"} and (series["n_points"] == 24).all()
    for sid in IDS:  # the same numbers as with its Gold forecasts
        chal, champ = expected_metrics(sid)
        assert series.loc[sid, "champion_metric"] == pytest.approx(champ, rel=1e-9)
        assert series.loc[sid, "challenger_metric"] == pytest.approx(chal, rel=1e-9)
    assert d.promoted and d.n_common_series == 3


def test_too_little_common_data_says_so_and_follows_the_default(cfg):
    lake = Lakehouse.from_config(cfg)
    first_night(lake, cfg)
    # trained again on the same data: no actuals after the champion's cutoff yet
    rep = train(lake, cfg.replace(models=["weekly_naive"]))
    d = rep.decision
    assert d.insufficient and d.promoted and d.n_common_series == 0
    assert d.challenger_metric is None and d.champion_metric is None
    assert "too little common data to compare v2 with champion v1" in d.reason
    assert f"3 series: {comparison.NO_ACTUALS}" in d.reason
    assert d.reason.endswith("gate.insufficient is promote: promoted v2")
    assert aliases.champion_info(cfg)["version"] == "2"
    gold = lake.read(GOLD_GATE)
    assert len(gold) == 3 and (gold["n_points"] == 0).all() and set(gold["reason"]) == {comparison.NO_ACTUALS}
    assert (gold["window_start"] == START + pd.Timedelta("14D")).all()
    assert MlflowClient().get_run(rep.run_id).data.tags["gate.insufficient"] == "true"

    keep = cfg.replace(**{"gate.insufficient": "keep"})
    d3 = train(lake, keep).decision
    assert d3.insufficient and not d3.promoted
    assert d3.reason.endswith("gate.insufficient is keep: kept champion v2")
    assert aliases.champion_info(cfg)["version"] == "2"

    # more series required than were compared is too little data too
    new_day(lake)
    strict = cfg.replace(**{"gate.min_common_series": 4, "gate.insufficient": "keep"})
    d4 = train(lake, strict.replace(models=["seasonal_naive"])).decision
    assert d4.insufficient and not d4.promoted and d4.n_common_series == 3
    assert "3 series scored on a common window, gate.min_common_series is 4" in d4.reason


def test_the_window_starts_at_the_latest_champion_forecast_the_actuals_passed():
    """A champion kept and forecast again from newer data is compared on its latest
    forecast window whose actuals have arrived, not on its (older) training window."""
    d13, d14, d15 = (START + pd.Timedelta(f"{d}D 23h") for d in (13, 14, 15))
    champion = pd.Series([d13, d13, d13], index=["a", "b", "c"])  # training ends
    forecasts = pd.DataFrame({C.SERIES_ID: ["a", "a", "b", "b", "d"], "cutoff": [d13, d14, d13, d14, d14]})
    ends = pd.Series([d15, d14, d15, d15], index=["a", "b", "c", "d"])
    got = comparison.champion_cutoffs(ends, champion, forecasts)
    assert got.to_dict() == {"a": d14, "b": d13, "c": d13, "d": d14}
    # without the champion's results: its Gold cutoffs only
    assert comparison.champion_cutoffs(ends, None, forecasts).to_dict() == {"a": d14, "b": d13, "d": d14}
    # without Gold rows: its training ends
    assert comparison.champion_cutoffs(ends, champion, forecasts.iloc[:0]).to_dict() == dict.fromkeys(
        "abc", d13
    )


def test_series_left_out_get_the_rows_the_per_series_comparison_gives_them(cfg):
    """The plan's reasons (carried from the champion, no champion model, no actuals yet)
    and, for a batch where nothing is compared, the rows ``left_out`` makes on the
    driver: the same as :func:`~forecasting.comparison.compare_series` gives each of
    those series through the engine (``attach_all``)."""
    cfg = cfg.replace(freq="h")
    cut = START + pd.Timedelta("13D 23h")
    backtest = json.dumps([{"cutoff": str(cut - pd.Timedelta("1D")), "model": "seasonal_naive"}])

    def rows(ids, ends, backtests, model="seasonal_naive"):
        return pd.DataFrame(
            {
                C.SERIES_ID: ids,
                "status": C.OK,
                "end": ends,
                "backtest_json": backtests,
                "model": model,
                "model_json": "{}",
            }
        )

    later = cut + pd.Timedelta("1D")
    challenger = rows(["carried", "new", "waiting"], [later, later, cut], [backtest, backtest, backtest])
    champion = rows(["carried", "waiting"], [cut, cut], [backtest, "[]"])
    forecasts = pd.DataFrame(
        {
            C.SERIES_ID: ["carried", "waiting"],
            "cutoff": [cut, cut],
            C.TS: cut + pd.Timedelta("1h"),
            "yhat": 1.0,
        }
    )
    planned = comparison.plan(challenger, champion, forecasts, cfg)
    assert planned[comparison.PLAN_COLUMN].isna().all()
    reasons = planned.set_index(C.SERIES_ID)["reason"].to_dict()
    assert reasons == {
        "carried": comparison.CARRIED_CHAMPION,
        "new": comparison.NO_CHAMPION_MODEL,
        "waiting": comparison.NO_ACTUALS,
    }
    direct = comparison.left_out(planned).sort_values(C.SERIES_ID, ignore_index=True)
    attached = comparison.attach_all(planned[[C.SERIES_ID]], planned)
    through = pd.concat(
        [comparison.compare_series(g, cfg) for _, g in attached.groupby(C.SERIES_ID)], ignore_index=True
    )
    pd.testing.assert_frame_equal(direct, through.sort_values(C.SERIES_ID, ignore_index=True))
    assert direct.set_index(C.SERIES_ID).at["carried", "window_start"] == cut + pd.Timedelta("1h")
    # the same model with another backtest (fitted again): compared, not carried
    refitted = challenger.assign(backtest_json=backtest.replace("seasonal_naive", "x"))
    again = comparison.plan(refitted, champion, forecasts, cfg).set_index(C.SERIES_ID)
    assert again.at["carried", "reason"] == "" and again[comparison.PLAN_COLUMN].notna().sum() == 1


def test_future_regressor_is_last_weeks_value():
    from forecasting.series import SeriesData

    n = 24 * 8
    X = np.arange(n, dtype=float).reshape(-1, 1)
    data = SeriesData("s", np.zeros(n), np.zeros(n, dtype="datetime64[us]"), X, "h", (24, 168))
    got = comparison.future_exog(data, 200)[:, 0]
    assert list(got[:168]) == list(X[n - 168 :, 0]) and list(got[168:]) == list(X[n - 168 : n - 136, 0])
    assert comparison.future_exog(data.head(100), 3)[:, 0].tolist() == [99.0, 99.0, 99.0]


# -- a killed train, restarted ----------------------------------------------------------
def _mmf(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``mmf ARGS`` in a fresh process, with the test fault hook (tests/reliability)."""
    return mmf(*args, env=env, timeout=300)


@pytest.mark.parametrize("point", ["after_gate", "after_gold_backtest"])
def test_a_killed_and_restarted_train_writes_gold_gate_once(cfg, tmp_path, point):
    """Killed once the gate decided (its comparison only in the run), or once gold/gate
    was written (gold/selection not): the restart finishes the run, and gold/gate holds
    each series once, with the numbers of the comparison."""
    lake = Lakehouse.from_config(cfg)
    first_night(lake, cfg)
    new_day(lake)
    conf = tmp_path / "conf.yaml"
    data = {
        "lakehouse": cfg.lakehouse,
        "horizon": cfg.horizon,
        "models": ["weekly_naive"],
        "workers": 1,
        "cleaning": {"min_length": cfg.cleaning.min_length},
        "mlflow": {"sample_plots": 0, "tracking_uri": cfg.mlflow_tracking_uri()},
    }
    conf.write_text(yaml.safe_dump(data))
    killed = _mmf("train", "--conf", str(conf), env={"MMF_TEST_KILL_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    again = _mmf("train", "--conf", str(conf))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "promoted to champion" in again.stdout

    gold = lake.read(GOLD_GATE)
    assert len(gold) == 3 and not gold.duplicated(["run_id", C.SERIES_ID]).any()
    assert set(gold["challenger_version"]) == {"2"} and gold["promoted"].all()
    runs = MlflowClient().search_runs([mlflow.get_experiment_by_name("mmf").experiment_id])
    finished = [r for r in runs if r.data.tags.get("mmf.recovered") and r.info.status == "FINISHED"]
    assert len(finished) == 1 and set(gold["run_id"]) == {finished[0].info.run_id}
    assert lake.txn_version(GOLD_GATE, "mmf-gate") == 2
    for sid, row in gold.set_index(C.SERIES_ID).iterrows():
        chal, champ = expected_metrics(sid)
        assert row["challenger_metric"] == pytest.approx(chal) and row["champion_metric"] == pytest.approx(
            champ
        )
    assert aliases.champion_info(cfg)["version"] == "2"
