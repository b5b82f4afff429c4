"""The benchmark scripts run (tiny sizes); their numbers are recorded in
benchmarks/results/, never asserted here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _scaling(tmp_path, *extra: str) -> tuple[str, dict]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.scaling", "--smoke", "--work", str(tmp_path), *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # the smoke run writes its results beside its cells, never over the recorded ones
    return out.stdout, json.loads((tmp_path / "scaling.json").read_text())


def test_scaling_smoke(tmp_path):
    stdout, result = _scaling(tmp_path)
    rows = [line for line in stdout.splitlines() if line.startswith(("| platform", "| loop"))]
    assert len(rows) == 2, stdout  # the platform cell, then its loop cell
    platform, loop = result["cells"]
    assert (platform["tool"], loop["tool"], loop["pair"]) == ("platform", "loop", "local")
    assert platform["n_series"] == 20 and platform["models"] == ["seasonal_naive", "weekly_naive", "theta"]
    assert platform["wall_s"] > 0 and platform["silver_rows"] == 20 * 21 * 24
    assert 0 < platform["driver_peak_rss_mb"] <= platform["tree_peak_rss_mb"]
    assert platform["bundle_bytes"] > 0 and platform["silver_bytes"] > 0
    assert platform["overhead_vs_loop"] == round(platform["wall_s"] / loop["wall_s"], 3)
    projected = result["projection"]["engines"]["local"]["at"]["1000000"]
    assert projected["batches"] > 0 and projected["wall_s"] > 0 and projected["bundle_bytes"] > 0


def test_scaling_starts_a_cell_from_a_prepared_lakehouse_without_touching_it(tmp_path):
    """--prepared SERIES=DIR: the platform cell trains on a copy of a lakehouse that
    `--cell prepare` ingested and refined (how the 100,000-series cells skip an hour of
    ingest and refine), and says so: no total with ingest."""
    base = tmp_path / "base"
    prep = subprocess.run(
        [sys.executable, "-m", "benchmarks.scaling", "--cell", "prepare", "20", "--lake", str(base)]
        + ["--work", str(tmp_path), "--days", "21", "--models", "cheap"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert prep.returncode == 0, prep.stderr[-3000:]
    before = sorted(p.relative_to(base) for p in base.rglob("*"))
    _, result = _scaling(tmp_path / "run", "--prepared", f"20={base}", "--baselines")
    platform, loop = result["cells"]
    assert platform["prepared"] and platform["total_wall_s"] is None and platform["ingest_refine_s"] is None
    assert platform["silver_rows"] == 20 * 21 * 24 and platform["wall_s"] > 0 and loop["wall_s"] > 0
    assert sorted(p.relative_to(base) for p in base.rglob("*")) == before  # trained on a copy
    bad = subprocess.run(
        [sys.executable, "-m", "benchmarks.scaling", "--smoke", "--prepared", f"20={tmp_path / 'nowhere'}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "expected SERIES=DIR" in bad.stderr and "nowhere" in bad.stderr


@pytest.mark.slow
def test_scaling_restart_smoke(tmp_path):
    """train killed at 80% of its series then run again ends with the Gold of a full run."""
    _, result = _scaling(tmp_path, "--restart-at", "0.8")
    (restart,) = result["restarts"]
    assert restart["kill_killed"] and restart["kill_share_done"] >= 0.8
    identical = restart["gold_identical"]
    assert {"gold/selection", "gold/backtest"} <= set(identical) and all(identical.values()), identical
    assert restart["restarted_state"]["model_versions"] == restart["full_state"]["model_versions"] == 1


def test_nights_smoke(tmp_path, mlflow_uri):
    """Two simulated nights on tiny generated meters, the gate forced to keep the champion
    on the second: both nights end with the next horizon of every series (the kept
    champion refitted on the new data), scored against the day that followed."""
    import yaml

    from benchmarks.nights import main
    from forecasting.generator import generate, write

    data = write(generate(n_series=4, days=16, freq="h", seed=5, clean=True), tmp_path / "meters.parquet")
    conf = tmp_path / "conf.yaml"
    conf.write_text(
        yaml.safe_dump(
            {
                "models": ["seasonal_naive", "weekly_naive"],
                "workers": 1,
                "cleaning": {"min_length": 168},
                "mlflow": {"sample_plots": 0},
            }
        )
    )
    argv = ["--data", str(data), "--nights", "2", "--reject", "2", "--conf", str(conf)]
    r = main(argv, results=tmp_path / "results")
    first, second = r["per_night"]
    assert r["horizon"] == 24
    for night in (first, second):
        assert (night["n_clean"], night["n_with_horizon"], night["missing"]) == (4, 4, [])
        assert not night["nightly_failed"], night["nightly_failure"]
        assert night["n_scored"] == 4 and 0 <= night["coverage_95"] <= 1
        assert night["mase"] > 0 and night["naive_mase"] > 0
    assert first["promoted"] and first["fits"] == {"trained": 4}
    assert second["forced_reject"] and second["promoted"] is False and second["insufficient"]
    assert second["versions"] == {"v1": 4} and second["fits"] == {"refit": 4}
    assert first["cutoffs"] != second["cutoffs"]  # each night forecast from its latest reading
    assert r["totals"]["nights_complete"] == 2 and r["totals"]["series_nights_with_horizon"] == 8
    text = (tmp_path / "results" / "nights.md").read_text()
    assert "2 of 2 nights complete; 8 of 8 series-nights with the next horizon" in text


def test_real_data_holds_the_scored_days_out(tmp_path, mlflow_uri):
    """The held-out benchmark on tiny generated meters: each night trains, backtests and
    chooses only on readings before the day it is scored on (gold/backtest's windows and
    the forced candidates' inputs included), and is scored only on that day."""
    import pandas as pd
    import yaml

    from benchmarks.real_data import main

    conf = tmp_path / "conf.yaml"
    conf.write_text(
        yaml.safe_dump(
            {
                "models": ["seasonal_naive", "weekly_naive", "seasonal_window"],
                "workers": 1,
                "cleaning": {"min_length": 168},
                "mlflow": {"sample_plots": 0},
            }
        )
    )
    argv = ["--generated", "3", "--days", "17", "--nights", "2", "--conf", str(conf)]
    r = main([*argv, "--candidates", "seasonal_window"], results=tmp_path / "results")
    assert r["horizon"] == 24 and len(r["per_night"]) == 2
    for night in r["per_night"]:
        s = {k: pd.Timestamp(v) for k, v in night["split"].items()}
        start, end = s["day_start"], s["day_start"] + pd.Timedelta("1D")
        assert s["train_silver_end"] < start  # the night trained before the day
        assert s["backtest_last_target"] <= s["train_silver_end"]  # every window chose on it
        assert s["candidates_silver_end"] < start
        assert start <= s["scored_first"] <= s["scored_last"] < end  # scored on the day only
        assert night["n_scored"] == 3 and set(night["by"]) >= {"mmf", "naive_daily", "naive_weekly"}
    assert r["per_night"][0]["day_scored"] < r["per_night"][1]["day_scored"]
    by = r["by"]
    assert by["only:seasonal_window"]["n_scored"] == by["naive_weekly"]["n_scored"] == 6
    assert 0 <= by["mmf"]["coverage_80"] <= 1 and by["mmf"]["pinball_95"] > 0
    text = (tmp_path / "results" / "real_data.md").read_text()
    assert "seasonal_window forced alone" in text and "--skip-days" not in text


def test_retail_holds_the_last_days_out(tmp_path, mlflow_uri):
    """The retail benchmark on a tiny generated shop: trained before the held-out days,
    every series scored by every forecaster on them, per demand class, no 0/0."""
    import yaml

    from benchmarks.retail import main

    conf = tmp_path / "conf.yaml"
    conf.write_text(
        yaml.safe_dump(
            {
                "models": ["seasonal_naive"],
                "workers": 1,
                "cleaning": {"min_length": 60},
                "backtest": {"windows": 1},
                "mlflow": {"sample_plots": 0},
            }
        )
    )
    argv = ["--items", "20", "--stores", "1", "--days", "90", "--horizon", "7", "--conf", str(conf)]
    r = main([*argv, "--alone", "croston", "tsb"], results=tmp_path / "results")
    assert r["train_end"] == "2023-03-25" and r["held_out"] == ["2023-03-26", "2023-04-01"]
    assert r["n_scored"] == {"mmf": 20, "only:seasonal_naive": 20, "only:croston": 20, "only:tsb": 20}
    assert r["nonfinite"] == 0 and r["n_quarantined"] == 0
    assert r["patterns"]["zero"] == 1 and r["by"]["mmf"]["never sold"]["n"] == 1
    assert r["by"]["mmf"]["never sold"]["mase"] == 0.0  # forecast as no demand, scored without 0/0
    assert set(r["by"]["mmf"]) >= {"all", "smooth", "intermittent"}
    text = (tmp_path / "results" / "retail.md").read_text()
    assert "croston alone" in text and "Mean RMSSE per demand class" in text


def test_hierarchy_benchmark_regroups_meters_under_the_sites_and_regions_asked():
    import pandas as pd

    from benchmarks.hierarchy import regroup
    from forecasting.generator import generate

    gen = generate(n_series=40, days=2, freq="h", seed=3, clean=True)
    out = regroup(gen.readings, sites=8, regions=3)
    assert len(out) == len(gen.readings)
    pd.testing.assert_frame_equal(
        out.drop(columns=["site", "region"]).reset_index(drop=True),
        gen.readings.drop(columns=["site", "region"]).reset_index(drop=True),
    )
    per = out.drop_duplicates("series_id")
    assert per["site"].nunique() == 8 and per["region"].nunique() == 3
    assert per.groupby("site").size().tolist() == [5] * 8  # dealt round-robin: 40 / 8
    assert (out.groupby("series_id")[["site", "region"]].nunique() == 1).all().all()  # one per meter
    assert (per.groupby("site")["region"].nunique() == 1).all()  # a site lies in one region
    assert regroup(gen.readings, None, None) is gen.readings
    with pytest.raises(ValueError, match="--sites 41: expected 1 to the number of meters"):
        regroup(gen.readings, sites=41, regions=None)


def test_daytype_benchmark_scores_the_variants_on_the_last_two_weeks(tmp_path):
    from benchmarks.daytype import main

    results = main(["--edrp", "0", "--generated", "4", "--days", "44", "--out", str(tmp_path / "daytype")])
    r = results["generated"]
    assert set(r["by_week"]) == {"development", "held out"} and len(r["days"]) == 14
    assert set(r["by_week"]["held out"]) == {"ignore", "split", "auto", "weekly_naive"}
    # the generated meters have weekend profiles: auto splits some of them
    assert 0 < r["auto_split_share"]["held out"] <= 1
    assert (tmp_path / "daytype.md").read_text().startswith("# daytype")


def test_retrain_night_times_one_more_night_of_a_finished_week_on_copies(tmp_path):
    """benchmarks.retrain_night: night ``nights + 1`` of each policy of a finished
    ``benchmarks.retrain`` week, on copies of its lakehouses (the week's own untouched)."""
    import pandas as pd

    from benchmarks import retrain
    from training.tables import Lakehouse

    week = tmp_path / "week"
    week.mkdir()
    conf = {"horizon": 24, "mlflow": {"sample_plots": 0}}
    retrain.run(6, 10, 1, conf, week)  # what `python -m benchmarks.retrain` runs, tiny
    before = sorted(p.name for p in (week / "changed" / "raw").iterdir())
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.retrain_night",
            "--work",
            str(week),
            "--label",
            "smoke",
            "--repeat",
            "2",
        ]
        + ["--scratch", str(tmp_path / "copies"), "--results", str(tmp_path / "results")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads((tmp_path / "results" / "retrain_night.json").read_text())
    assert [r["policy"] for r in got["runs"]] == ["full", "changed"] * 2  # a second round in the same process
    assert {r["night"] for r in got["runs"]} == {2}
    runs = {r["policy"]: r for r in got["runs"][2:]}
    assert not runs["full"]["failed"] and not runs["changed"]["failed"]
    assert runs["full"]["n_refit"] == 6 and runs["changed"]["n_carried"] + runs["changed"]["n_refit"] == 6
    assert runs["changed"]["wall_s"] > 0 and runs["changed"]["steps_s"]["train"] > 0
    assert sorted(p.name for p in (week / "changed" / "raw").iterdir()) == before  # the week untouched
    assert (tmp_path / "copies" / "changed-2" / "raw" / "day-2.parquet").exists()

    # each policy's snapshot after its last recorded night: --resume rolls a cut night back to it
    snaps = week / retrain.SNAPSHOTS
    assert sorted(p.name for p in snaps.iterdir()) == ["changed-1", "full-1"]
    folder, snap = week / "changed", snaps / "changed-1"
    data = next((folder / "lake").rglob("*.parquet"))
    twin = snap / data.relative_to(folder)
    assert os.path.samefile(data, twin)  # Parquet files linked, never rewritten
    assert not os.path.samefile(folder / "mlflow.db", snap / "mlflow.db")  # the SQLite store copied
    lake = Lakehouse(str(folder / "lake"))
    versions = {t: lake.version(t) for t in ("silver/readings", "gold/models", "gold/forecasts")}
    forecasts = lake.read("gold/forecasts")
    shutil.copy(folder / "raw" / "day-1.parquet", folder / "raw" / "day-2.parquet")  # night 2 cut off
    shutil.rmtree(folder / "lake" / "silver")
    assert retrain.released_days(folder / "raw") == [1, 2]
    assert retrain.roll_back(week, "changed", 1) and not retrain.roll_back(week, "changed", 2)
    assert retrain.released_days(folder / "raw") == [1]
    lake = Lakehouse(str(folder / "lake"))
    assert {t: lake.version(t) for t in versions} == versions
    pd.testing.assert_frame_equal(lake.read("gold/forecasts"), forecasts)


def test_retrain_runs_on_real_readings_with_a_day_of_their_steps(tmp_path):
    """benchmarks.retrain --data: the first households by number, the last whole days,
    a horizon of one day of their steps (48 half-hours), scored on the day after."""
    import numpy as np
    import pandas as pd

    from benchmarks import retrain

    ts = pd.date_range("2009-03-01", "2009-03-13 11:30", freq="30min")  # 12 whole days and half of one
    rng = np.random.default_rng(3)
    frame = pd.concat(
        pd.DataFrame(
            {
                "series_id": sid,
                "ts": ts,
                "y": 1 + np.sin(np.arange(len(ts)) * 2 * np.pi / 48) ** 2 + rng.random(len(ts)) * 0.1,
                "household_idx": k,
            }
        )
        for k, sid in enumerate(["H10", "H2", "H1"])
    )
    path = tmp_path / "households.parquet"
    frame.to_parquet(path, index=False)

    src = retrain.data_source(path, 2, 10)
    assert src.season == 48 and sorted(src.readings["series_id"].unique()) == ["H1", "H2"]
    assert src.readings["ts"].min() == pd.Timestamp("2009-03-03") and src.readings[
        "ts"
    ].max() == pd.Timestamp("2009-03-12 23:30")
    assert list(src.readings.columns) == ["series_id", "ts", "y"]

    work = tmp_path / "week"
    work.mkdir()
    r = retrain.run(2, 10, 1, {"mlflow": {"sample_plots": 0}}, work, data=path)
    assert r["conf"]["horizon"] == 48 and r["data"] == str(path) and "households.parquet" in r["source"]
    for policy in retrain.POLICIES:
        (night,) = r["policies"][policy]["nights"]
        assert not night["failed"] and night["series"] == 2 and night["points"] == 2 * 48
        assert 0 < night["mase"] < 5
    raw = sorted(p.name for p in (work / "full" / "raw").iterdir())
    assert raw == ["day-1.parquet", "history.parquet"]
    day = pd.read_parquet(work / "full" / "raw" / "day-1.parquet")
    assert day["ts"].min() == pd.Timestamp("2009-03-11") and len(day) == 2 * 48  # the day after the history
    assert "households.parquet" in retrain.markdown(r, "cmd")
    with pytest.raises(SystemExit, match="holds a run of"):  # a resume asks for the same data
        retrain.run(2, 10, 1, {"mlflow": {"sample_plots": 0}}, work, resume=True)
