"""Nothing lost: Gold restores to an earlier version, training re-runs on an earlier
silver version and gives the same forecasts (same seed), and `mmf vacuum` keeps the
configured retention (at least 7 days unless forced) so time travel keeps working."""

from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner
from reliability_support import mlflow_template, new_lake, write_conf

from forecasting.generator import generate


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """Night 1 on 14 days (model v1, forecasts), then two more days land in silver
    (silver version 1), then `mmf train --silver-version 0` (v2) and `mmf forecast`."""
    from forecasting.config import load_config
    from training.cli import cli
    from training.jobs.ingest import ingest
    from training.jobs.nightly import nightly
    from training.jobs.refine import refine
    from training.tables import Lakehouse

    tmp = tmp_path_factory.mktemp("safety")
    night1, night2 = tmp / "night1", tmp / "night2"
    night1.mkdir()
    night2.mkdir()
    data = generate(n_series=6, days=16, freq="h", seed=4, clean=True).readings
    cut = data["ts"].min() + pd.Timedelta("14D")
    data[data["ts"] < cut].to_parquet(night1 / "a.parquet", index=False)
    data[data["ts"] >= cut].to_parquet(night2 / "b.parquet", index=False)
    lake_dir = new_lake(tmp / "lake", mlflow_template(tmp / "template"))
    uri = f"sqlite:///{lake_dir / 'mlflow.db'}"
    conf = write_conf(tmp / "conf.yaml", lake_dir, night1, **{"mlflow.tracking_uri": uri})
    # MLFLOW_TRACKING_URI (which mlflow.set_tracking_uri sets in this process) overrides a
    # config file: pin both to this store
    cfg = load_config(conf, **{"mlflow.tracking_uri": uri})
    lake = Lakehouse.from_config(cfg)
    assert not nightly(lake, cfg).failed
    first = lake.read("gold/forecasts")
    ingest(lake, night2)
    assert refine(lake, cfg).bronze_version == 1 and lake.version("silver/readings") == 1

    runner = CliRunner(env={"MLFLOW_TRACKING_URI": uri})
    trained = runner.invoke(
        cli, ["train", "--conf", str(conf), "--silver-version", "0"], catch_exceptions=False
    )
    assert trained.exit_code == 0, trained.output
    assert "on silver version 0" in trained.output and "model version 2: promoted" in trained.output
    forecast = runner.invoke(cli, ["forecast", "--conf", str(conf)], catch_exceptions=False)
    assert forecast.exit_code == 0, forecast.output
    return cfg, conf, lake, first, runner, cli


def test_training_again_on_an_earlier_silver_version_gives_the_same_forecasts(history):
    _, _, lake, first, _, _ = history
    fc = lake.read("gold/forecasts")
    assert set(fc["model_version"]) == {"1", "2"}
    cols = [c for c in fc.columns if c not in ("model_version", "run_id", "created_at")]

    def rows(frame):
        return frame[cols].sort_values(["series_id", "ts"]).reset_index(drop=True)

    again = rows(fc[fc["model_version"] == "2"])
    assert len(again) == 6 * 24
    pd.testing.assert_frame_equal(again, rows(first))
    # the cutoff is the end of silver version 0, not of today's silver
    series = lake.read("silver/series")
    assert (again.groupby("series_id")["cutoff"].max() < series.set_index("series_id")["end"]).all()


def test_gold_restores_to_an_earlier_version(history):
    _, conf, lake, first, runner, cli = history
    v0 = lake.read("gold/forecasts", version=0)
    before = lake.version("gold/forecasts")
    out = runner.invoke(
        cli, ["restore", "gold/forecasts", "--version", "0", "--conf", str(conf)], catch_exceptions=False
    )
    assert out.exit_code == 0, out.output
    assert lake.version("gold/forecasts") == before + 1  # a new version: history is kept
    key = ["series_id", "ts", "model_version"]
    restored = lake.read("gold/forecasts").sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(restored, v0.sort_values(key).reset_index(drop=True))
    pd.testing.assert_frame_equal(restored, first.sort_values(key).reset_index(drop=True))
    # and forward again: the replaced version is still there to restore
    assert set(lake.read("gold/forecasts", version=before)["model_version"]) == {"1", "2"}


def _files(lake) -> int:
    return sum(
        1 for p in __import__("pathlib").Path(lake.root).rglob("*.parquet") if "_delta_log" not in p.parts
    )


def test_vacuum_refuses_less_than_7_days_unless_forced_and_time_travel_survives(history, tmp_path):
    _, conf, lake, _, runner, cli = history
    n_files = _files(lake)
    old = lake.read("gold/forecasts", version=1)

    short = runner.invoke(cli, ["vacuum", "--retention-hours", "24", "--conf", str(conf)])
    assert short.exit_code == 2 and "below the 168-hour (7-day) minimum; add --force" in short.output
    short_conf = write_conf(tmp_path / "short.yaml", lake.root, None, retention_hours=24)
    by_config = runner.invoke(cli, ["vacuum", "--conf", str(short_conf)])
    assert by_config.exit_code == 2 and "retention 24 hours" in by_config.output
    assert _files(lake) == n_files

    kept = runner.invoke(cli, ["vacuum", "--conf", str(conf)], catch_exceptions=False)
    assert kept.exit_code == 0, kept.output
    assert _files(lake) == n_files  # every file is younger than 7 days
    pd.testing.assert_frame_equal(lake.read("gold/forecasts", version=1), old)

    forced = runner.invoke(
        cli, ["vacuum", "--retention-hours", "0", "--force", "--conf", str(conf)], catch_exceptions=False
    )
    assert forced.exit_code == 0, forced.output
    assert _files(lake) < n_files
    with pytest.raises(Exception):  # noqa: B017 - deltalake's error for a file vacuumed away
        lake.read("gold/forecasts", version=1)
    assert len(lake.read("gold/forecasts")) == 6 * 24  # the current version is whole
