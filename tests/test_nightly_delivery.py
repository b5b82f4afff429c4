"""Every nightly ends with the next horizon of every clean series (issue 18).

Nights are simulated as users run them: ``mmf nightly`` on the data so far, then one
more day of readings lands in the source folder. On some nights the challenger is
genuinely worse (trained with only a naive last-value model, which a daily load cycle
punishes), so the gate keeps the champion: the champion must still forecast from the new
data (refitted on it), series it does not hold must get a forecast from the version that
does, and a series left without a forecast must fail the nightly by name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from deltalake import write_deltalake

from forecasting import contract as C
from forecasting.config import load_config
from forecasting.generator import generate, write
from forecasting.models import EnsembleForecaster, get_model, load_fitted
from forecasting.models.global_models import GlobalGBM
from forecasting.refit import SPEC_COLUMN, refit_series
from tests.reliability.faults import Faults
from training.cli import cli
from training.jobs import forecast as forecast_job
from training.jobs.ingest import ingest
from training.jobs.nightly import nightly
from training.jobs.refine import refine
from training.jobs.train import train
from training.tables import Lakehouse

ROOT = Path(__file__).resolve().parents[1]
H = 24
START = pd.Timestamp("2024-01-01")
GOOD = {"models": ["seasonal_naive", "weekly_naive"], "model_params": {}}
# the value of the last hour for the next 24: far worse than any seasonal model on load
# with a daily cycle, so an honest gate keeps the champion
BAD = {"models": ["seasonal_naive"], "model_params": {"seasonal_naive": {"season": 1}}}


class Feed:
    """Generated hourly meters released day by day into a nightly source folder."""

    def __init__(self, folder: Path, n_series: int, days: int, seed: int = 3) -> None:
        self.gen = generate(n_series=n_series, days=days, freq="h", seed=seed, clean=True)
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)

    def release(self, name: str, first_day: int, last_day: int, ids=None, edit=None) -> None:
        """Readings of days ``first_day..last_day`` (0 = START) of ``ids`` as one file."""
        r = self.gen.readings
        day = (r[C.TS] - START) // pd.Timedelta("1D")
        part = r[(day >= first_day) & (day <= last_day)]
        if ids is not None:
            part = part[part[C.SERIES_ID].isin(ids)]
        if edit is not None:
            part = edit(part.copy())
        write(
            dataclasses.replace(self.gen, readings=part.reset_index(drop=True)),
            self.folder / f"{name}.parquet",
        )

    @property
    def ids(self) -> list[str]:
        return sorted(self.gen.readings[C.SERIES_ID].unique())


def _config(config, source: Path, **extra):
    settings = {
        "nightly.source": str(source),
        "cleaning.min_length": 168,
        "workers": 1,
        "mlflow.sample_plots": 0,
    }
    return config.replace(**{**settings, **extra})


def assert_next_horizon(lake: Lakehouse, h: int = H) -> pd.DataFrame:
    """Every series of silver/series has ``h`` forecast rows at its latest silver end,
    from the latest silver version (in its newest delivery); returns those rows."""
    series = lake.read("silver/series").set_index(C.SERIES_ID)
    silver_version = lake.version("silver/readings")
    fc = lake.read("gold/forecasts")
    assert not fc.duplicated([C.SERIES_ID, C.TS, "cutoff", "model_version"]).any()
    rows = fc[fc["cutoff"] == fc[C.SERIES_ID].map(series["end"])]
    # the newest delivery of each series (an earlier champion may have forecast the same cutoff)
    rows = rows[rows["created_at"] == rows.groupby(C.SERIES_ID)["created_at"].transform("max")]
    assert sorted(rows[C.SERIES_ID].unique()) == sorted(series.index)
    for sid, got in rows.groupby(C.SERIES_ID):
        end = series.at[sid, "end"]
        want = pd.date_range(end + pd.Timedelta("1h"), periods=h, freq="h")
        assert sorted(got[C.TS]) == list(want), sid
        assert got["model_version"].nunique() == 1 and np.isfinite(got["yhat"]).all()
    assert (rows["silver_version"] == silver_version).all()
    assert set(rows["fit"]) <= {"trained", "refit"}
    return rows


def _champion(cfg) -> tuple[str, str]:
    from registry.aliases import champion_info

    info = champion_info(cfg)
    return info["version"], info["run_id"]


def test_seven_nights_each_end_with_the_next_horizon(tmp_path, config):
    """7 nights, the gate keeping the champion on 4 of them and new meters arriving on
    night 3: every night forecasts every clean series from its latest reading; a rerun
    of a night changes nothing."""
    feed = Feed(tmp_path / "raw", n_series=10, days=37)
    first, late = feed.ids[:8], feed.ids[8:]
    feed.release("day-00-29", 0, 29, ids=first)
    lake = Lakehouse.from_config(config)
    plan = {1: GOOD, 2: BAD, 3: BAD, 4: GOOD, 5: BAD, 6: GOOD, 7: BAD}
    for night, models in plan.items():
        cfg = _config(config, tmp_path / "raw", **models)
        if night == 3:  # two new meters, with their history so far
            feed.release("new-meters", 0, 28 + night, ids=late)
        before = _champion(cfg) if night > 1 else None
        rep = nightly(lake, cfg)
        assert not rep.failed, rep.failure
        assert rep.steps["forecast"].startswith("done"), rep.steps
        rows = assert_next_horizon(lake)
        ends = rows.groupby(C.SERIES_ID)["cutoff"].first()
        assert (ends == START + pd.Timedelta(days=28 + night, hours=23)).all(), ends
        if models is BAD:
            assert not rep.train.promoted, rep.train.decision
            version, run_id = _champion(cfg)
            assert (version, run_id) == before
            held = rows[rows[C.SERIES_ID].isin(first)]
            # the kept champion forecast its series from the new data: refitted
            assert set(held["model_version"]) == {version} and set(held["fit"]) == {"refit"}
            assert set(held["run_id"]) == {run_id}
        if night == 3:
            new = rows[rows[C.SERIES_ID].isin(late)]
            # the champion does not hold them: the challenger trained on this silver does
            assert set(new["model_version"]) == {rep.train.model_version}
            assert set(new["fit"]) == {"trained"}
        if night == 4:  # the same night again: nothing new anywhere
            gold = ("gold/forecasts", "gold/portfolio", "gold/selection", "gold/backtest")
            versions = {t: lake.version(t) for t in gold}
            again = nightly(lake, cfg)
            steps = ("ingest", "refine", "train", "forecast", "aggregate")
            assert all(again.steps[s].startswith("skipped") for s in steps), again.steps
            assert {t: lake.version(t) for t in gold} == versions and not again.failed
        feed.release(f"day-{29 + night}", 29 + night, 29 + night, ids=first if night < 3 else None)

    # every night's forecast is kept (one cutoff per night), each exactly once
    fc = lake.read("gold/forecasts")
    cutoffs = fc.loc[fc[C.SERIES_ID] == first[0], "cutoff"].unique()
    assert len(cutoffs) == 7
    # the portfolio is the last delivery's: the total equals its forecasts, all series
    pf = lake.read("gold/portfolio")
    version = _champion(cfg)[0]
    mine = pf[(pf["model_version"] == version) & (pf["level"] == "total")]
    last = fc[fc["created_at"] == fc["created_at"].max()]
    assert mine["yhat"].sum() == pytest.approx(last["yhat"].sum())
    assert mine["n_series"].max() == 10


def test_a_series_whose_refit_fails_fails_the_nightly_by_name(tmp_path, config):
    """The champion is ETS with multiplicative seasonality; a meter then reports zeros
    for a few hours (clean data, not quarantined) and the gate keeps the champion: that
    series' refit is impossible, so the nightly exits non-zero naming it and why, while
    every other series gets its forecast."""
    feed = Feed(tmp_path / "raw", n_series=6, days=31)
    feed.release("day-00-29", 0, 29)
    ets = {"models": ["ets"], "model_params": {"ets": {"seasonal": "mul", "trend": None}}}
    lake = Lakehouse.from_config(config)
    assert not nightly(lake, _config(config, tmp_path / "raw", **ets)).failed
    broken = feed.ids[2]

    def outage(part: pd.DataFrame) -> pd.DataFrame:
        hit = (part[C.SERIES_ID] == broken) & part[C.TS].dt.hour.between(2, 5)
        part.loc[hit, C.Y] = 0.0
        return part

    feed.release("day-30", 30, 30, edit=outage)
    conf = tmp_path / "conf.yaml"
    conf.write_text(
        yaml.safe_dump(
            {
                "lakehouse": config.lakehouse,
                "horizon": H,
                "workers": 1,
                "cleaning": {"min_length": 168},
                "mlflow": {"sample_plots": 0},
                "nightly": {"source": str(tmp_path / "raw")},
                **BAD,
            }
        )
    )
    for _ in range(2):  # a rerun tries again, and fails again the same way
        result = CliRunner().invoke(cli, ["nightly", "--conf", str(conf)])
        assert result.exit_code == 1, result.output
        assert "missing output: 1 of 6 series have no forecast of the next 24 steps" in result.output
        assert f"{broken} (v1 refit failed: ModelError: ets(seasonal='mul') needs strictly positive data" in (
            result.output
        )
    series = lake.read("silver/series").set_index(C.SERIES_ID)
    assert broken in series.index  # clean data: the alert is about output, not quarantine
    fc = lake.read("gold/forecasts")
    rows = fc[fc["cutoff"] == fc[C.SERIES_ID].map(series["end"])]
    assert sorted(rows[C.SERIES_ID].unique()) == sorted(set(feed.ids) - {broken})


def test_training_over_max_failed_share_is_trained_again(tmp_path, config, checkpoint_hook):
    """Two of four series kill their worker (50% > nightly.max_failed_share 0.2): the
    nightly fails, names the two series without a forecast, and the next nightly on the
    same data trains again instead of taking that training as done. (Few series: each
    series of the chunk a killed worker lost is retried in a process of its own.)"""
    feed = Feed(tmp_path / "raw", n_series=4, days=30)
    feed.release("day-00-29", 0, 29)
    lake = Lakehouse.from_config(config)
    cfg = _config(config, tmp_path / "raw", workers=2, **GOOD)
    doomed = feed.ids[:2]
    checkpoint_hook(Faults(kill_at=f"worker:retrain_series:{','.join(doomed)}"))
    rep = nightly(lake, cfg)
    assert rep.failed and "50% of series failed > nightly.max_failed_share=0.2" in rep.failure
    assert sorted(rep.missing) == doomed and "missing output: 2 of 4 series" in rep.failure
    assert all("failed in training run" in why for why in rep.missing.values())
    checkpoint_hook(None)

    again = nightly(lake, cfg)
    assert again.steps["train"].startswith("done") and "training again" in again.steps["train"], again.steps
    assert "failed 50% of its series > nightly.max_failed_share=0.2" in again.steps["train"]
    assert not again.failed, again.failure
    assert_next_horizon(lake)
    # and once a training succeeded, it is done
    third = nightly(lake, cfg)
    assert third.steps["train"].startswith("skipped") and not third.failed


def test_an_older_gold_forecasts_table_takes_the_new_columns(tmp_path, config):
    """A lakehouse whose gold/forecasts predates silver_version and fit keeps working:
    the next delivery adds the columns (null in the older rows) and replaces, never
    duplicates, the rows it forecasts again."""
    feed = Feed(tmp_path / "raw", n_series=4, days=31)
    feed.release("day-00-29", 0, 29)
    lake = Lakehouse.from_config(config)
    cfg = _config(config, tmp_path / "raw", **GOOD)
    nightly(lake, cfg)
    old = lake.arrow("gold/forecasts").drop_columns(["silver_version", "fit"])

    def as_before() -> None:  # the table as the old release wrote it
        shutil.rmtree(Path(lake.uri("gold/forecasts")))
        write_deltalake(lake.uri("gold/forecasts"), old)

    as_before()
    # the same champion on the same data: its old rows are replaced, not duplicated
    rep = forecast_job.forecast(lake, cfg, force=True)
    fc = lake.read("gold/forecasts")
    assert len(fc) == rep.n_rows == 4 * H and set(fc["fit"]) == {"trained"}
    # a new day: the old rows stay, with null in the new columns
    as_before()
    feed.release("day-30", 30, 30)
    assert not nightly(lake, cfg).failed
    fc = lake.read("gold/forecasts")
    assert fc["silver_version"].isna().sum() == 4 * H
    assert_next_horizon(lake)


def _mmf(*args: str) -> subprocess.CompletedProcess:
    """``mmf ARGS`` in a fresh process (its own MLflow store connection)."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MMF_", "MLFLOW_TRACKING_URI", "PYTEST_"))
    }
    env.update(PYTHONPATH=str(ROOT), MLFLOW_ENABLE_ASYNC_LOGGING="false", GIT_PYTHON_REFRESH="quiet")
    code = "from training.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_a_lost_mlflow_store_is_trained_and_forecast_again(tmp_path, monkeypatch):
    """Finding 10: the MLflow database is lost. The nightly does not take the recorded
    training as done (its run is gone) nor skip the forecast: it trains and forecasts
    again and says so. After a manual `mmf train` on the new store, the nightly replaces
    the Gold forecasts tied to the deleted run."""
    feed = Feed(tmp_path / "raw", n_series=4, days=30)
    feed.release("day-00-29", 0, 29)
    lake_root = tmp_path / "lake"
    conf = tmp_path / "conf.yaml"
    conf.write_text(
        yaml.safe_dump(
            {
                "lakehouse": str(lake_root),
                "horizon": H,
                "workers": 1,
                "models": ["seasonal_naive"],
                "cleaning": {"min_length": 168},
                "mlflow": {"sample_plots": 0},
                "nightly": {"source": str(tmp_path / "raw")},
            }
        )
    )
    lake = Lakehouse(str(lake_root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the store beside the tables
    assert not nightly(lake, load_config(str(conf))).failed
    lost_run = set(lake.read("gold/forecasts")["run_id"])

    (lake_root / "mlflow.db").unlink()
    second = _mmf("nightly", "--conf", str(conf))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "is not in the MLflow store" in second.stdout and "training again" in second.stdout
    assert "forecast   done" in second.stdout
    rows = assert_next_horizon(lake)
    assert not set(rows["run_id"]) & lost_run

    (lake_root / "mlflow.db").unlink()
    trained = _mmf("train", "--conf", str(conf))  # recovery by hand: train on the new store
    assert trained.returncode == 0, trained.stderr[-3000:]
    third = _mmf("nightly", "--conf", str(conf))
    assert third.returncode == 0, third.stderr[-3000:]
    assert "train      skipped" in third.stdout
    assert "forecasting again: gold/forecasts held version 1 from run" in third.stdout, third.stdout
    rows = assert_next_horizon(lake)
    # every row of the next horizon now comes from the run `mmf train` made
    new_run = trained.stdout.split("MLflow run ", 1)[1].split()[0]
    assert set(rows["run_id"]) == {new_run}


def test_standalone_forecast_refits_a_champion_trained_on_older_silver(tmp_path, config):
    """`mmf forecast` on its own: a champion trained on an earlier silver version
    forecasts from the latest silver (refitted), not from where its data ended."""
    feed = Feed(tmp_path / "raw", n_series=4, days=31)
    feed.release("day-00-29", 0, 29)
    lake = Lakehouse.from_config(config)
    cfg = _config(config, tmp_path / "raw", **GOOD)
    nightly(lake, cfg)
    feed.release("day-30", 30, 30)
    ingest(lake, str(tmp_path / "raw"), strict=False)
    refine(lake, cfg)
    rep = forecast_job.forecast(lake, cfg)
    assert not rep.skipped and rep.fits == {"refit": 4} and not rep.missing
    assert_next_horizon(lake)
    assert forecast_job.forecast(lake, cfg).skipped
    # training on an earlier silver version: still forecast from the latest
    train(lake, cfg, silver_version=0)
    rep = forecast_job.forecast(lake, cfg)
    assert rep.fits == {"refit": 4}
    assert_next_horizon(lake)


def _history(days: int) -> pd.DataFrame:
    r = generate(n_series=1, days=days, freq="h", seed=5, clean=True).readings
    return r[[C.SERIES_ID, C.TS, C.Y]]


def test_refit_keeps_the_choice_and_fits_it_on_the_new_history(config):
    """An ensemble refits each member with its own parameters and keeps its method; a
    global model keeps its weights and takes the new history as its inputs."""
    old, new = _history(20), _history(22)
    members = [
        get_model("seasonal_naive", season_length=24, seasonalities=(24, 168), freq="h", season=12),
        get_model("weekly_naive", season_length=24, seasonalities=(24, 168), freq="h"),
    ]
    ens = EnsembleForecaster([m.fit(old[C.Y].to_numpy()) for m in members], "mean")
    glob = GlobalGBM(season_length=24, seasonalities=(24, 168), freq="h")
    glob.set_state(
        {"weights": "global_gbm-0123456789abcdef", "loc": 0.0, "scale": 1.0, "last_y": [0.0] * 48,
         "last_ts": "2024-01-20T23:00:00"}
    )  # fmt: skip
    specs = {
        "ensemble": json.dumps({"model_json": json.dumps(ens.to_dict()), "global": {}}),
        "global": json.dumps(
            {
                "model_json": json.dumps(glob.to_dict()),
                "global": {"global_gbm-0123456789abcdef": {"input_size": 48}},
            }
        ),
    }
    for kind, spec in specs.items():
        rows = new.assign(**{SPEC_COLUMN: [spec] + [None] * (len(new) - 1)})
        out = refit_series(rows, config).iloc[0]
        assert out["status"] == "ok", out["reason"]
        assert out["end"] == new[C.TS].max() and out["n_obs"] == len(new)
        fitted = load_fitted(out["model_json"])
        if kind == "ensemble":
            assert fitted.method == "mean" and [m.name for m in fitted.members] == [
                "seasonal_naive",
                "weekly_naive",
            ]
            assert fitted.members[0].season == 12  # its own parameters, not the defaults
            np.testing.assert_array_equal(fitted.members[0].last_season_, new[C.Y].to_numpy()[-12:])
            np.testing.assert_array_equal(fitted.members[1].last_season_, new[C.Y].to_numpy()[-168:])
        else:
            state = fitted.get_state()
            assert state["weights"] == "global_gbm-0123456789abcdef"
            np.testing.assert_allclose(state["last_y"], new[C.Y].to_numpy()[-48:])
            assert pd.Timestamp(state["last_ts"]) == new[C.TS].max()
    # without a spec, or with weights whose settings are not given: a failed row, with the reason
    bad = refit_series(new, config).iloc[0]
    assert bad["status"] == "failed" and "carry no _refit_spec" in bad["reason"]
    rows = new.assign(**{SPEC_COLUMN: [json.dumps({"model_json": json.dumps(glob.to_dict()), "global": {}})]
                                      + [None] * (len(new) - 1)})  # fmt: skip
    bad = refit_series(rows, config).iloc[0]
    assert bad["status"] == "failed" and "settings of its global weights" in bad["reason"]
