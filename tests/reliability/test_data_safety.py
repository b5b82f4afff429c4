"""Nothing lost: Gold restores to an earlier version, training re-runs on an earlier
silver version and gives the same models (same seed), `mmf vacuum` keeps the
configured retention (at least 7 days unless forced) so time travel keeps working, and a
corrupt commit file is diagnosed (`mmf doctor`, every reading command) and moved aside
(`mmf repair`) so the table reads at its last good version."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from click.testing import CliRunner
from reliability_support import lake_of, mlflow_template, mmf, mmf_lanes, new_lake, write_conf

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


def test_training_again_on_an_earlier_silver_version_gives_the_same_models(history):
    cfg, _, lake, first, _, _ = history
    from registry import pyfunc

    def models(version):
        frame = pyfunc.load_version(cfg, version).unwrap_python_model().models()
        return frame.sort_values("series_id").reset_index(drop=True)[
            ["series_id", "model", "model_json", "end"]
        ]

    # the same seed on the same silver version: the very same fitted models
    pd.testing.assert_frame_equal(models("2"), models("1"))
    # and night 1's forecasts (v1, trained on silver version 0) are exactly what it trained
    assert set(first["fit"]) == {"trained"} and set(first["silver_version"]) == {0}
    # v2 holds models that end where silver version 0 ended; every night ends with the next
    # horizon from the latest silver, so `mmf forecast` refits v2's choice on silver version 1
    fc = lake.read("gold/forecasts")
    again = fc[fc["model_version"] == "2"]
    assert len(again) == 6 * 24
    assert set(again["fit"]) == {"refit"} and set(again["silver_version"]) == {1}
    series = lake.read("silver/series").set_index("series_id")["end"]
    assert (again.groupby("series_id")["cutoff"].max() == series).all()


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
    # version 1's files out of the current version (a restore to version 0, as the test above
    # leaves it), so that a forced vacuum removes them whichever tests ran before this one
    restored = runner.invoke(
        cli, ["restore", "gold/forecasts", "--version", "0", "--conf", str(conf)], catch_exceptions=False
    )
    assert restored.exit_code == 0, restored.output
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


# -- a corrupt commit file: diagnosed, and repaired without losing earlier versions ----------


@pytest.fixture
def three_versions(tmp_path):
    """bronze/readings at versions 0, 1, 2 (one file each) and silver built from it, by
    `mmf ingest` and `mmf refine` in this process (the tests' own commands run in processes
    of their own)."""
    from training.cli import cli

    lake_dir = tmp_path / "lake"
    conf = write_conf(tmp_path / "conf.yaml", lake_dir, None)
    data = generate(n_series=3, days=3, freq="h", seed=6, clean=True).readings
    runner = CliRunner()
    for i, day in enumerate(sorted(data["ts"].dt.normalize().unique())):
        path = tmp_path / f"day{i}.parquet"
        data[data["ts"].dt.normalize() == day].to_parquet(path, index=False)
        done = runner.invoke(
            cli, ["ingest", "--source", str(path), "--conf", str(conf)], catch_exceptions=False
        )
        assert done.exit_code == 0, done.output
    done = runner.invoke(cli, ["refine", "--conf", str(conf)], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    return lake_dir, conf


# the second kind of damage takes the same diagnosis and repair path: slow
@pytest.mark.parametrize("damage", ["truncated", pytest.param("copy_to_output", marks=pytest.mark.slow)])
def test_a_corrupt_latest_commit_is_diagnosed_and_repaired(three_versions, damage):
    lake_dir, conf = three_versions
    lake = lake_of(lake_dir)
    assert lake.version("bronze/readings") == 2
    kept = {v: lake.read("bronze/readings", version=v) for v in (0, 1)}
    bad = lake_dir / "bronze" / "readings" / "_delta_log" / "00000000000000000002.json"
    good_text = bad.read_text()
    # a commit cut short (a full disk), or what `COPY (...) TO` wrote over it
    bad.write_text(good_text[: len(good_text) // 2] if damage == "truncated" else "x\n1\n")

    # every command that reads the table names it, the bad file and the fix, in one line;
    # two lanes of processes at once, the writing ones (the lakehouse lock) in one lane
    c = ["--conf", str(conf)]
    restore, refine, old, query, sql, doctor = mmf_lanes(
        [
            ["restore", "bronze/readings", "--version", "1", *c],
            ["refine", *c],
            ["query", "bronze/readings", "--version", "1", *c],
        ],
        [
            ["query", "bronze/readings", *c],
            ["sql", "SELECT count(*) AS n FROM silver.readings", *c],
            ["doctor", *c],
        ],
    )
    for name, proc in (("query", query), ("restore", restore), ("refine", refine)):
        # one error line (besides the step start lines, "HH:MM:SS step")
        errors = [line for line in proc.stderr.splitlines() if not re.match(r"\d\d:\d\d:\d\d ", line)]
        assert proc.returncode == 2 and len(errors) == 1, (name, proc.stderr)
        assert errors[0].startswith("error: table bronze/readings cannot be read: commit file "), proc.stderr
        assert str(bad) in proc.stderr and "mmf repair bronze/readings" in proc.stderr
        assert "read the table at version 1" in proc.stderr
    assert sql.returncode == 0 and "bronze/readings is left out" in sql.stderr, sql.stderr
    # time travel still works
    assert old.returncode == 0 and f"of {len(kept[1]):,} rows; version 1)" in old.stderr, old.stderr

    assert doctor.returncode == 1, doctor.stderr
    assert f"bronze/readings: CORRUPT: commit file {bad} (version 2)" in doctor.stdout
    assert "last good version is 1: run `mmf repair bronze/readings`" in doctor.stdout
    assert "silver/readings: ok (version 0)" in doctor.stdout

    repaired = mmf("repair", "bronze/readings", "--conf", str(conf))
    assert repaired.returncode == 0, repaired.stderr
    assert "bronze/readings reads at version 1" in repaired.stdout
    [moved] = (lake_dir / "_repair" / "bronze" / "readings").glob("*/00000000000000000002.json")
    assert moved.read_text() == (good_text[: len(good_text) // 2] if damage == "truncated" else "x\n1\n")
    assert not bad.exists()

    assert lake.version("bronze/readings") == 1
    for v, frame in kept.items():  # nothing lost from the earlier versions
        pd.testing.assert_frame_equal(lake.read("bronze/readings", version=v), frame)
    # a second doctor and a second repair (which finds nothing to do) read, at once
    healthy, again = mmf_lanes([["doctor", *c]], [["repair", "bronze/readings", *c]])
    assert healthy.returncode == 0, healthy.stdout
    assert again.returncode == 0 and "nothing to repair" in again.stdout
    # the table takes new commits again: the lost day is ingested anew as version 2
    day2 = sorted(p for p in lake_dir.parent.glob("day*.parquet"))[-1]
    assert mmf("ingest", "--source", str(day2), "--conf", str(conf)).returncode == 0
    assert lake.version("bronze/readings") == 2 and len(lake.read("bronze/readings")) == 72 * 3


def test_doctor_finds_a_commit_deltalake_silently_skips_and_repair_refuses_a_middle_one(three_versions):
    lake_dir, conf = three_versions
    log = lake_dir / "bronze" / "readings" / "_delta_log"
    (log / "00000000000000000002.json").write_text("")  # deltalake reads this as "no change"
    doctor = mmf("doctor", "--conf", str(conf))
    assert doctor.returncode == 1 and "bronze/readings: CORRUPT: commit file" in doctor.stdout
    assert "(version 2) is corrupt (empty)" in doctor.stdout

    (log / "00000000000000000002.json").write_text((log / "00000000000000000001.json").read_text())
    (log / "00000000000000000001.json").write_text("{not json\n")
    refused = mmf("repair", "bronze/readings", "--conf", str(conf))
    assert refused.returncode == 2 and "later commit(s) 2 are not corrupt" in refused.stderr, refused.stderr
    assert (log / "00000000000000000001.json").exists() and (log / "00000000000000000002.json").exists()
