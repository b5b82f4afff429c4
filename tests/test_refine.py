"""``mmf refine``: bronze -> silver. Every faulty series ends where the generator says it
should, good series land on a regular grid, re-running changes nothing, versions time
travel, and bad input writes nothing."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from forecasting import contract as C
from forecasting.config import load_config
from forecasting.errors import FrequencyError, TableError
from forecasting.generator import generate, write
from tests.reliability.faults import InjectedError
from training.jobs.ingest import ingest
from training.jobs.refine import SILVER, refine, refine_in_progress
from training.jobs.train import read_silver
from training.tables import Lakehouse

MMF = str(Path(sys.executable).with_name("mmf"))
H = pd.Timedelta("1h")


def _config(root: Path, **overrides):
    return load_config(**{"lakehouse": str(root), "workers": 2, "models": ["seasonal_naive"], **overrides})


def _hourly(sid: str, y, start: str = "2024-01-01", step: str = "h", **cols) -> pd.DataFrame:
    y = np.asarray(y, dtype=float)
    ts = pd.date_range(start, periods=len(y), freq=step)
    return pd.DataFrame({C.SERIES_ID: sid, C.TS: ts, C.Y: y, **cols})


def _load(n: int, seed: int) -> np.ndarray:
    """A positive, non-constant hourly load with a daily cycle."""
    rng = np.random.default_rng(seed)
    hours = np.arange(n)
    return np.round(1.0 + 0.5 * np.sin(2 * np.pi * hours / 24) + 0.1 * rng.random(n), 4)


def _versions(lake: Lakehouse) -> dict[str, int | None]:
    return {t: lake.version(t) for t in SILVER}


def _ingest_frame(lake: Lakehouse, df: pd.DataFrame, path: Path):
    df.to_parquet(path, index=False)
    return ingest(lake, path)


# -- generated data with every fault kind ---------------------------------------------------


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    """50 hourly meters x 28 days, 30% faulty (every fault kind), refined once."""
    tmp = tmp_path_factory.mktemp("faulty")
    data = generate(n_series=50, days=28, seed=11, fault_share=0.3)
    assert set(data.faults["fault"]) == {
        "gaps",
        "duplicates",
        "outliers",
        "negative",
        "constant",
        "too_short",
        "all_nan",
        "long_gap",
    }
    lake = Lakehouse(str(tmp / "lake"))
    # too_short series keep 3 days (72 readings): below a one-week minimum
    config = _config(tmp / "lake", **{"cleaning.min_length": 168})
    ingest(lake, write(data, tmp / "meters.parquet"))
    report = refine(lake, config)
    return data, lake, report


def _silver(lake: Lakehouse):
    return (lake.read("silver/readings"), lake.read("silver/series"), lake.read("silver/quarantine"))


def test_report_counts_match_tables(faulty):
    data, lake, report = faulty
    readings, series, quarantine = _silver(lake)
    assert not report.skipped
    assert report.freq == "h"
    assert report.bronze_version == 0
    assert report.n_series == len(series)
    assert report.n_rows == len(readings)
    assert report.quarantined == quarantine["reason"].value_counts().to_dict()
    assert report.versions == {t: 0 for t in SILVER}
    assert len(series) + len(quarantine) == data.readings[C.SERIES_ID].nunique()


def test_quarantine_holds_exactly_the_expected_series(faulty):
    data, lake, report = faulty
    readings, series, quarantine = _silver(lake)
    expected = data.faults[data.faults["expected"] != C.OK].set_index(C.SERIES_ID)["expected"]

    got = quarantine.set_index(C.SERIES_ID)
    assert got.index.is_unique
    assert got["reason"].sort_index().to_dict() == expected.sort_index().to_dict()
    assert (got["detail"].str.len() > 0).all()
    assert (got["bronze_version"] == 0).all()
    assert set(got["reason"]) <= set(C.QUARANTINE_REASONS)
    # quarantined series are nowhere else in silver
    assert not set(got.index) & set(readings[C.SERIES_ID])
    assert not set(got.index) & set(series[C.SERIES_ID])


def _ok_series(data, fault):
    return data.faults.loc[data.faults["fault"] == fault, C.SERIES_ID].tolist()


def test_ok_faults_land_on_a_regular_grid(faulty):
    data, lake, _ = faulty
    readings, _, _ = _silver(lake)
    for fault in ("gaps", "duplicates", "outliers"):
        for sid in _ok_series(data, fault):
            s = readings[readings[C.SERIES_ID] == sid].sort_values(C.TS)
            raw = data.readings[data.readings[C.SERIES_ID] == sid]
            assert len(s), (fault, sid)
            assert s[C.TS].is_unique
            assert (s[C.TS].diff().dropna() == H).all()
            assert s[C.TS].iloc[0] == raw[C.TS].min() and s[C.TS].iloc[-1] == raw[C.TS].max()
            assert np.isfinite(s[C.Y]).all()
            assert s["temperature"].notna().all()


def test_gaps_filled_and_flagged_exactly_at_missing_steps(faulty):
    data, lake, _ = faulty
    readings, series, _ = _silver(lake)
    for sid in _ok_series(data, "gaps"):
        s = readings[readings[C.SERIES_ID] == sid].set_index(C.TS).sort_index()
        raw = data.readings[data.readings[C.SERIES_ID] == sid].set_index(C.TS)
        missing = ~s.index.isin(raw.index)
        assert missing.sum() > 0
        np.testing.assert_array_equal(s["is_filled"].to_numpy(), missing)
        # readings that were there are kept as they were
        kept = s.loc[~missing, C.Y]
        np.testing.assert_allclose(kept.to_numpy(), raw.loc[kept.index, C.Y].to_numpy())
        row = series.set_index(C.SERIES_ID).loc[sid]
        assert row["n_filled"] == missing.sum()
        assert row["n_obs"] == len(s)


def test_duplicates_resolved_later_row_wins(faulty):
    data, lake, _ = faulty
    readings, series, _ = _silver(lake)
    for sid in _ok_series(data, "duplicates"):
        raw = data.readings[data.readings[C.SERIES_ID] == sid]
        n_dup = int(raw[C.TS].duplicated().sum())
        assert n_dup > 0
        later = raw.drop_duplicates(C.TS, keep="last").set_index(C.TS)[C.Y]
        s = readings[readings[C.SERIES_ID] == sid].set_index(C.TS)[C.Y]
        assert s.index.is_unique and len(s) == len(later)
        np.testing.assert_allclose(s.sort_index().to_numpy(), later.sort_index().to_numpy())
        assert series.set_index(C.SERIES_ID).loc[sid, "n_duplicates"] == n_dup


def test_spikes_flagged_as_outliers(faulty):
    data, lake, _ = faulty
    readings, series, _ = _silver(lake)
    for sid in _ok_series(data, "outliers"):
        raw = data.readings[data.readings[C.SERIES_ID] == sid]
        spikes = set(raw.loc[raw[C.Y] > 8 * raw[C.Y].median(), C.TS])
        assert 3 <= len(spikes) <= 6
        s = readings[readings[C.SERIES_ID] == sid]
        flagged = set(s.loc[s["is_outlier"], C.TS])
        assert spikes <= flagged
        # the reading is flagged, not changed (clip_outliers is off)
        assert s.loc[s[C.TS].isin(spikes), C.Y].min() > 8 * raw[C.Y].median()
        assert series.set_index(C.SERIES_ID).loc[sid, "n_outliers"] == len(flagged)


def test_clean_series_kept_as_they_are(faulty):
    data, lake, _ = faulty
    readings, _, _ = _silver(lake)
    clean_ids = sorted(set(data.readings[C.SERIES_ID]) - set(data.faults[C.SERIES_ID]))
    assert len(clean_ids) == 35
    shares = {}
    for sid in clean_ids:
        s = readings[readings[C.SERIES_ID] == sid].sort_values(C.TS)
        raw = data.readings[data.readings[C.SERIES_ID] == sid].sort_values(C.TS)
        assert len(s) == len(raw) == 28 * 24
        assert not s["is_filled"].any()
        np.testing.assert_allclose(s[C.Y].to_numpy(), raw[C.Y].to_numpy())
        shares[sid] = s["is_outlier"].mean()
    assert max(shares.values()) < 0.03, {k: round(v, 3) for k, v in shares.items() if v >= 0.03}


def test_silver_series_one_row_per_good_series(faulty):
    data, lake, report = faulty
    readings, series, quarantine = _silver(lake)
    good = sorted(set(data.readings[C.SERIES_ID]) - set(quarantine[C.SERIES_ID]))
    assert sorted(series[C.SERIES_ID]) == good
    assert sorted(readings[C.SERIES_ID].unique()) == good

    attrs = data.readings.groupby(C.SERIES_ID)[["site", "region"]].first()
    s = series.set_index(C.SERIES_ID)
    pd.testing.assert_frame_equal(s[["site", "region"]], attrs.loc[good], check_names=False)
    assert s["site"].notna().all() and s["region"].notna().all()
    assert (s["freq"] == "h").all()
    assert (s["bronze_version"] == 0).all()
    per = readings.groupby(C.SERIES_ID).agg(start=(C.TS, "min"), end=(C.TS, "max"), n=(C.Y, "size"))
    assert (s["start"] == per.loc[s.index, "start"]).all()
    assert (s["end"] == per.loc[s.index, "end"]).all()
    assert (s["n_obs"] == per.loc[s.index, "n"]).all()


# -- idempotence, versions and time travel -------------------------------------------------


def test_rerun_writes_nothing_then_new_bronze_rebuilds_and_time_travels(lake_root, tmp_path, config):
    lake = Lakehouse(str(lake_root))
    data = generate(n_series=10, days=7, seed=5, fault_share=0.5)  # gaps .. constant
    ingest(lake, write(data, tmp_path / "first.parquet"))
    first = refine(lake, config)
    assert not first.skipped and first.versions == {t: 0 for t in SILVER}
    q0 = lake.read("silver/quarantine")
    assert set(q0["reason"]) == {"negative_values", "constant"}
    commits = {t: len(lake.history(t)) for t in SILVER}

    again = refine(lake, config)
    assert again.skipped
    assert again.bronze_version == 0 and again.freq == "h"
    assert _versions(lake) == {t: 0 for t in SILVER}
    assert {t: len(lake.history(t)) for t in SILVER} == commits

    # a second file: a dead meter and one more good meter
    extra = pd.concat([_hourly("NEW-DEAD", np.full(72, np.nan)), _hourly("NEW-GOOD", _load(72, 1))])
    _ingest_frame(lake, extra, tmp_path / "second.parquet")
    second = refine(lake, config)
    assert not second.skipped
    assert second.bronze_version == 1
    assert _versions(lake) == {t: 1 for t in SILVER}
    q1 = lake.read("silver/quarantine")
    assert q1.set_index(C.SERIES_ID).loc["NEW-DEAD", "reason"] == "all_missing"
    assert (q1["bronze_version"] == 1).all()
    assert "NEW-GOOD" in set(lake.read("silver/series")[C.SERIES_ID])

    # time travel: version 0 is the first build
    old = lake.read("silver/quarantine", version=0)
    pd.testing.assert_frame_equal(
        old.sort_values(C.SERIES_ID).reset_index(drop=True),
        q0.sort_values(C.SERIES_ID).reset_index(drop=True),
    )
    assert "NEW-DEAD" not in set(old[C.SERIES_ID])
    assert "NEW-GOOD" not in set(lake.read("silver/readings", version=0)[C.SERIES_ID])

    env = {**os.environ, "MMF_LAKEHOUSE": str(lake_root)}
    proc = subprocess.run(
        [MMF, "query", "silver/quarantine", "--version", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for sid, reason in zip(q0[C.SERIES_ID], q0["reason"]):
        line = next(ln for ln in proc.stdout.splitlines() if sid in ln)
        assert reason in line
    assert "NEW-DEAD" not in proc.stdout
    assert f"({len(q0)} rows; version 0)" in proc.stderr

    latest = subprocess.run(
        [MMF, "query", "silver/quarantine", "--format", "csv"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert latest.returncode == 0, latest.stderr
    assert "NEW-DEAD,all_missing," in latest.stdout


def test_refine_at_a_pinned_bronze_version(lake_root, tmp_path, config):
    lake = Lakehouse(str(lake_root))
    _ingest_frame(lake, _hourly("A", _load(72, 1)), tmp_path / "a.parquet")
    _ingest_frame(lake, _hourly("B", _load(72, 2)), tmp_path / "b.parquet")
    rep = refine(lake, config, bronze_version=0)
    assert rep.bronze_version == 0
    assert lake.read("silver/series")[C.SERIES_ID].tolist() == ["A"]
    assert (lake.read("silver/series")["bronze_version"] == 0).all()


# -- hand-made series: one per quarantine reason ---------------------------------------------

REASONS = [
    # (series_id, reason, fragment of the detail)
    ("ALL-NAN", "all_missing", "none with a finite reading"),
    ("ALL-INF", "all_missing", "none with a finite reading"),
    ("TOO-SHORT", "too_short", "cleaning.min_length=24"),
    ("ONE-POINT", "too_short", "1 valid readings"),
    ("CONST", "constant", "equal 2.5"),
    ("CONST-ZERO", "constant", "equal 0"),
    ("NEGATIVE", "negative_values", "6 negative readings"),
    ("GAPPY", "too_many_gaps", "cleaning.max_missing_share=0.2"),
    ("OFF-GRID", "irregular", "off the h grid"),
    ("DAILY", "irregular", "mostly D apart"),
    ("TOO-LARGE", "too_large", "cleaning.max_points_per_series=150"),
]


@pytest.fixture(scope="module")
def handmade(tmp_path_factory):
    """Eight good hourly series and one per quarantine reason, refined once."""
    tmp = tmp_path_factory.mktemp("handmade")
    parts = [_hourly(f"GOOD-{i}", _load(72, i), site=f"S{i % 3}", region="north") for i in range(8)]
    neg = _load(72, 20)
    neg[10:16] *= -1
    gappy = _hourly("GAPPY", _load(72, 21))
    off = _hourly("OFF-GRID", _load(72, 22))
    off.loc[off.index[5:13], C.TS] += pd.Timedelta("20min")  # 8 of 72 off the grid
    inf = _load(72, 23)
    inf[[3, 40]] = [np.inf, -np.inf]
    stray = _hourly("STRAY-FIRST", _load(150, 27))
    stray.loc[0, C.TS] -= pd.Timedelta("30min")  # one reading off the grid, and it is the first
    parts += [
        _hourly("ALL-NAN", np.full(48, np.nan)),
        _hourly("ALL-INF", np.full(48, np.inf)),
        _hourly("TOO-SHORT", _load(10, 24)),
        _hourly("ONE-POINT", [3.0]),
        _hourly("CONST", np.full(72, 2.5)),
        _hourly("CONST-ZERO", np.zeros(72)),
        _hourly("NEGATIVE", neg),
        gappy[(gappy.index < 20) | (gappy.index >= 60)],  # 40 of 72 steps missing
        off,
        _hourly("DAILY", _load(30, 25), step="D"),
        _hourly("TOO-LARGE", _load(200, 26)),
        _hourly("INF", inf),
        stray,
    ]
    df = pd.concat(parts, ignore_index=True)
    lake = Lakehouse(str(tmp / "lake"))
    _ingest_frame(lake, df, tmp / "handmade.parquet")
    config = _config(tmp / "lake", **{"cleaning.min_length": 24, "cleaning.max_points_per_series": 150})
    report = refine(lake, config)
    return df, lake, report


@pytest.mark.parametrize("sid, reason, detail", REASONS, ids=[r[0] for r in REASONS])
def test_each_quarantine_reason(handmade, sid, reason, detail):
    _, lake, report = handmade
    q = lake.read("silver/quarantine").set_index(C.SERIES_ID)
    assert q.loc[sid, "reason"] == reason
    assert detail in q.loc[sid, "detail"]
    assert q.loc[sid, "bronze_version"] == report.bronze_version == 0
    assert sid not in set(lake.read("silver/readings")[C.SERIES_ID])
    assert sid not in set(lake.read("silver/series")[C.SERIES_ID])


def test_handmade_good_series_and_nothing_else_land(handmade):
    _, lake, report = handmade
    assert report.freq == "h"  # the daily series is a minority, not a mix
    q = lake.read("silver/quarantine")
    assert sorted(q[C.SERIES_ID]) == sorted(r[0] for r in REASONS)
    series = lake.read("silver/series").set_index(C.SERIES_ID)
    assert sorted(series.index) == sorted([f"GOOD-{i}" for i in range(8)] + ["INF", "STRAY-FIRST"])
    assert series.loc["GOOD-4", "site"] == "S1" and series.loc["GOOD-4", "region"] == "north"
    assert series.loc["INF", "site"] is None
    readings = lake.read("silver/readings")
    sizes = readings.groupby(C.SERIES_ID).size()
    assert (sizes.drop("STRAY-FIRST") == 72).all()


def test_a_stray_first_reading_is_dropped_not_the_series(handmade):
    df, lake, _ = handmade
    s = lake.read("silver/readings")
    s = s[s[C.SERIES_ID] == "STRAY-FIRST"].sort_values(C.TS)
    raw = df[df[C.SERIES_ID] == "STRAY-FIRST"]
    assert len(s) == 149
    assert s[C.TS].iloc[0] == raw[C.TS].iloc[1]  # the grid of the other 149 readings
    assert (s[C.TS].diff().dropna() == H).all()
    np.testing.assert_allclose(s[C.Y].to_numpy(), raw[C.Y].iloc[1:].to_numpy())


def test_infinite_values_are_missing_and_filled(handmade):
    df, lake, _ = handmade
    s = lake.read("silver/readings")
    s = s[s[C.SERIES_ID] == "INF"].sort_values(C.TS).reset_index(drop=True)
    raw = df[df[C.SERIES_ID] == "INF"].reset_index(drop=True)
    assert np.isfinite(s[C.Y]).all()
    assert s.index[s["is_filled"]].tolist() == [3, 40]
    # short gaps are interpolated between the neighbours
    assert s.loc[3, C.Y] == pytest.approx((raw.loc[2, C.Y] + raw.loc[4, C.Y]) / 2)
    np.testing.assert_allclose(s.loc[~s["is_filled"], C.Y], raw.loc[~s["is_filled"], C.Y])


def test_conflicting_duplicates_last_ingested_wins(lake_root, tmp_path, config):
    lake = Lakehouse(str(lake_root))
    y = _load(48, 3)
    first = _hourly("D", y)
    t5, t9 = first[C.TS].iloc[5], first[C.TS].iloc[9]
    # within one file the later row wins
    first = pd.concat([first, pd.DataFrame({C.SERIES_ID: ["D"], C.TS: [t5], C.Y: [50.0]})], ignore_index=True)
    _ingest_frame(lake, first, tmp_path / "first.parquet")
    # a later file wins over an earlier one, whatever the order of rows
    _ingest_frame(
        lake,
        pd.DataFrame({C.SERIES_ID: ["D", "D"], C.TS: [t9, t5], C.Y: [90.0, 55.0]}),
        tmp_path / "second.parquet",
    )

    refine(lake, config)
    s = lake.read("silver/readings").set_index(C.TS)[C.Y]
    assert s.index.is_unique and len(s) == 48
    assert s[t5] == 55.0
    assert s[t9] == 90.0
    assert s.drop([t5, t9]).to_numpy() == pytest.approx(np.delete(y, [5, 9]))
    assert lake.read("silver/series")["n_duplicates"].tolist() == [3]

    # the same bronze averaged instead
    mean_cfg = config.replace(**{"cleaning.duplicates": "mean", "lakehouse": str(tmp_path / "other")})
    other = Lakehouse(str(tmp_path / "other"))
    _ingest_frame(other, first, tmp_path / "first.parquet")
    refine(other, mean_cfg)
    m = other.read("silver/readings").set_index(C.TS)[C.Y]
    assert m[t5] == pytest.approx((y[5] + 50.0) / 2)


def test_one_point_series_alone(lake_root, tmp_path, config):
    lake = Lakehouse(str(lake_root))
    _ingest_frame(lake, _hourly("ONE", [4.2]), tmp_path / "one.parquet")
    with pytest.raises(FrequencyError, match="set `freq`"):
        refine(lake, config)  # nothing to infer a frequency from
    assert not any(lake.exists(t) for t in SILVER)

    rep = refine(lake, config.replace(freq="h"))
    q = lake.read("silver/quarantine")
    assert q[[C.SERIES_ID, "reason"]].values.tolist() == [["ONE", "too_short"]]
    assert rep.n_series == 0 and len(lake.read("silver/readings")) == 0


# -- a mix of frequencies stops only the series of the other frequency -------------------------


def test_mix_of_frequencies_in_a_new_lakehouse_keeps_the_most_common(lake_root, tmp_path, config):
    """No silver yet: the step of most series is the lakehouse's; the series regular at
    another step are quarantined ``mixed_frequency``, the others refined."""
    lake = Lakehouse(str(lake_root))
    parts = [_hourly(f"H{i}", _load(72, i)) for i in range(6)]
    parts += [_hourly(f"HH{i}", _load(144, 50 + i), step="30min") for i in range(4)]
    _ingest_frame(lake, pd.concat(parts, ignore_index=True), tmp_path / "mixed.parquet")
    rep = refine(lake, config)
    assert rep.freq == "h" and rep.n_series == 6
    assert rep.quarantined == {"mixed_frequency": 4}
    q = lake.read("silver/quarantine").set_index(C.SERIES_ID)
    assert sorted(q.index) == [f"HH{i}" for i in range(4)]
    assert "30min apart (4 series)" in q.loc["HH0", "detail"] and "frequency is h" in q.loc["HH0", "detail"]
    assert sorted(lake.read("silver/series")[C.SERIES_ID]) == [f"H{i}" for i in range(6)]

    # with freq set, the cleaning rules judge every series: the other frequency is irregular
    other = Lakehouse(str(tmp_path / "other"))
    _ingest_frame(other, pd.concat(parts, ignore_index=True), tmp_path / "mixed.parquet")
    rep = refine(other, config.replace(freq="h", lakehouse=str(tmp_path / "other")))
    q = other.read("silver/quarantine")
    assert sorted(q[C.SERIES_ID]) == [f"HH{i}" for i in range(4)]
    assert set(q["reason"]) == {"irregular"} and rep.n_series == 6


def test_a_file_of_another_frequency_quarantines_its_series_not_the_fleet(lake_root, tmp_path, config):
    """An hourly lakehouse receives a half-hourly file (as many series): silver keeps
    its frequency and every hourly series; the new ones are quarantined with the reason."""
    lake = Lakehouse(str(lake_root))
    _ingest_frame(lake, pd.concat([_hourly(f"H{i}", _load(72, i)) for i in range(6)]), tmp_path / "h.parquet")
    refine(lake, config)
    before = lake.read("silver/readings")

    _ingest_frame(
        lake,
        pd.concat([_hourly(f"HH{i}", _load(144, i), step="30min") for i in range(6)]),
        tmp_path / "hh.parquet",
    )
    rep = refine(lake, config)
    assert rep.bronze_version == 1 and rep.freq == "h" and rep.n_series == 6
    q = lake.read("silver/quarantine").set_index(C.SERIES_ID)
    assert sorted(q.index) == [f"HH{i}" for i in range(6)]
    assert set(q["reason"]) == {"mixed_frequency"} and set(q["bronze_version"]) == {1}
    detail = q.loc["HH3", "detail"]
    assert "30min apart (6 series)" in detail and "the frequency of its silver" in detail
    after = lake.read("silver/readings")
    assert set(after[C.SERIES_ID]) == {f"H{i}" for i in range(6)}
    pd.testing.assert_frame_equal(
        after.sort_values([C.SERIES_ID, C.TS]).reset_index(drop=True),
        before.sort_values([C.SERIES_ID, C.TS]).reset_index(drop=True),
    )
    assert (lake.read("silver/series")["bronze_version"] == 1).all()


def test_no_common_step_is_still_refused(lake_root, tmp_path, config):
    """Many series, each at its own step: no frequency to keep, refused, nothing written."""
    lake = Lakehouse(str(lake_root))
    steps = ["h", "30min", "15min", "2h", "3h", "4h", "6h", "12h", "20min", "10min", "5min"]
    parts = [_hourly(f"S{i}", _load(40, i), step=st) for i, st in enumerate(steps)]
    _ingest_frame(lake, pd.concat(parts, ignore_index=True), tmp_path / "steps.parquet")
    with pytest.raises(FrequencyError, match="no step is shared"):
        refine(lake, config)
    assert not any(lake.exists(t) for t in SILVER)


def test_half_hourly_real_layout_refines(lake_root, tmp_path, config):
    """The layout of the real EDRP file (naive GMT ``ts``, extra columns) gives 30min silver."""
    ts = pd.date_range("2009-03-28", periods=3 * 48, freq="30min")
    df = pd.DataFrame(
        {
            "series_id": np.repeat(["X1", "X2", "X3"], len(ts)),
            "ts": np.tile(ts.to_numpy(), 3),
            "y": np.concatenate([_load(len(ts), i) for i in range(3)]),
            "household_idx": np.repeat(np.array([1, 2, 3], dtype="int16"), len(ts)),
        }
    )
    df["ts_europe_london"] = (
        pd.DatetimeIndex(df["ts"]).tz_localize("UTC").tz_convert("Europe/London").tz_localize(None)
    )
    lake = Lakehouse(str(lake_root))
    _ingest_frame(lake, df, tmp_path / "edrp_like.parquet")
    rep = refine(lake, config)
    assert rep.freq == "30min"
    s = lake.read("silver/readings")
    assert len(s) == len(df) and not s["is_filled"].any()
    assert (s.groupby(C.SERIES_ID)[C.TS].diff().dropna() == pd.Timedelta("30min")).all()
    assert (lake.read("silver/series")["freq"] == "30min").all()


# -- batches: bounded memory, resumable ---------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
SORT = {
    "silver/readings": [C.SERIES_ID, C.TS],
    "silver/series": [C.SERIES_ID],
    "silver/quarantine": [C.SERIES_ID],
}


def _tables(lake: Lakehouse) -> dict[str, pd.DataFrame]:
    return {t: lake.read(t).sort_values(SORT[t]).reset_index(drop=True) for t in SILVER}


def _assert_same_silver(lake: Lakehouse, reference: dict[str, pd.DataFrame]) -> None:
    got = _tables(lake)
    for t in SILVER:
        pd.testing.assert_frame_equal(got[t], reference[t], obj=t)
    assert got["silver/readings"][[C.SERIES_ID, C.TS]].duplicated().sum() == 0
    assert got["silver/series"][C.SERIES_ID].is_unique and got["silver/quarantine"][C.SERIES_ID].is_unique


def _rebuild_batches(lake: Lakehouse, name: str) -> list[int]:
    """The batches of the table's latest rebuild, in commit order (from its history)."""
    batches = []
    for commit in lake.history(name):  # newest first
        batches.append(int(commit["mmf.batch"]))
        if commit["mmf.done"] == "1":
            return batches[::-1]
    raise AssertionError(f"{name}: no first commit of a rebuild")


@pytest.fixture(scope="module")
def mixed_bronze(tmp_path_factory):
    """50 hourly meters (30% faulty) and 8 half-hourly ones (a mix: quarantined), in one
    bronze file, and its silver refined in one batch."""
    tmp = tmp_path_factory.mktemp("batches")
    data = generate(n_series=50, days=14, seed=12, fault_share=0.3).readings
    half = [_hourly(f"HH{i}", _load(96, 60 + i), step="30min") for i in range(8)]
    raw = pd.concat([data, *half], ignore_index=True)
    path = tmp / "meters.parquet"
    raw.to_parquet(path, index=False)
    lake = Lakehouse(str(tmp / "one"))
    ingest(lake, path)
    report = refine(lake, _config(tmp / "one", **{"cleaning.min_length": 48}))
    assert len(lake.history("silver/readings")) == 1  # one batch
    assert report.quarantined.get("mixed_frequency") == 8
    return path, _tables(lake), report


def test_tiny_batches_equal_one_batch(mixed_bronze, tmp_path):
    path, reference, one = mixed_bronze
    lake = Lakehouse(str(tmp_path / "lake"))
    ingest(lake, path)
    config = _config(tmp_path / "lake", batch_rows=1000, **{"cleaning.min_length": 48})
    n = len(lake.batches("bronze/readings", 0, 1000))
    assert n >= 10
    report = refine(lake, config)
    _assert_same_silver(lake, reference)
    assert (report.n_series, report.n_rows, report.quarantined, report.freq) == (
        one.n_series,
        one.n_rows,
        one.quarantined,
        one.freq,
    )
    for t in SILVER:  # one commit per batch, each batch once; the completion marker on the last only
        assert sorted(_rebuild_batches(lake, t)) == list(range(n))
        assert len(lake.history(t)) == n
        assert lake.txn_version(t, "mmf-refine") == 0
        assert lake.table(t, n - 2).transaction_version("mmf-refine") is None
        last = lake.history(t)[0]
        assert (last["mmf.bronze_version"], last["mmf.batches"], last["mmf.freq"]) == ("0", str(n), "h")
    assert refine_in_progress(lake) is None
    assert refine(lake, config).skipped
    assert len(lake.history("silver/readings")) == n


class _FailAt:
    """A checkpoint hook raising at the ``nth`` time ``mid_refine`` is reached."""

    def __init__(self, nth: int) -> None:
        self.nth, self.seen = nth, 0

    def __call__(self, name: str, **info) -> None:
        if name == "mid_refine":
            self.seen += 1
            if self.seen == self.nth:
                raise InjectedError(f"stopped at mid_refine {info}")


def test_stopped_half_way_resumes_without_duplicates(mixed_bronze, tmp_path, checkpoint_hook):
    """A refine stopped after 3 batches of silver/quarantine (2 of the other tables): the
    readers are told, and the next refine does only the rest, ending as a one-batch run."""
    path, reference, one = mixed_bronze
    lake = Lakehouse(str(tmp_path / "lake"))
    ingest(lake, path)
    config = _config(tmp_path / "lake", batch_rows=1000, workers=1, **{"cleaning.min_length": 48})
    n = len(lake.batches("bronze/readings", 0, 1000))
    checkpoint_hook(_FailAt(3))
    with pytest.raises(InjectedError):
        refine(lake, config)
    checkpoint_hook(None)
    assert [len(lake.history(t)) for t in SILVER] == [3, 2, 2]
    assert all(lake.txn_version(t, "mmf-refine") is None for t in SILVER)
    message = f"silver/readings is being rebuilt (batch 2 of {n} for bronze version 0): run `mmf refine`"
    assert refine_in_progress(lake).startswith(message)
    with pytest.raises(TableError, match=re.escape(message)):
        read_silver(lake, None)

    report = refine(lake, config)
    _assert_same_silver(lake, reference)
    assert (report.n_series, report.n_rows, report.quarantined) == (one.n_series, one.n_rows, one.quarantined)
    for t in SILVER:  # the done batches were not committed again
        assert sorted(_rebuild_batches(lake, t)) == list(range(n)) and len(lake.history(t)) == n
    assert refine_in_progress(lake) is None
    assert read_silver(lake, None)[0] == n - 1


def test_another_batch_plan_starts_the_rebuild_over(mixed_bronze, tmp_path, checkpoint_hook):
    path, reference, _ = mixed_bronze
    lake = Lakehouse(str(tmp_path / "lake"))
    ingest(lake, path)
    config = _config(tmp_path / "lake", batch_rows=1000, workers=1, **{"cleaning.min_length": 48})
    checkpoint_hook(_FailAt(4))
    with pytest.raises(InjectedError):
        refine(lake, config)
    checkpoint_hook(None)
    refine(lake, config.replace(batch_rows=5000))
    _assert_same_silver(lake, reference)
    n = len(lake.batches("bronze/readings", 0, 5000))
    for t in SILVER:
        assert sorted(_rebuild_batches(lake, t)) == list(range(n))


@pytest.mark.slow  # the in-process stop above and tests/reliability/test_restart.py[mid_refine] run by default
def test_killed_at_mid_refine_twice_then_finished(mixed_bronze, tmp_path):
    """`mmf refine` (a pool of 2 workers, tiny batches) killed with SIGKILL at mid_refine,
    then killed there again while resuming, then run to the end: silver equals a one-batch
    run, without a duplicated row."""
    path, reference, _ = mixed_bronze
    root = tmp_path / "lake"
    lake = Lakehouse(str(root))
    ingest(lake, path)
    conf = tmp_path / "conf.yaml"
    conf.write_text(
        f"lakehouse: {root}\nworkers: 2\nbatch_rows: 1000\nmodels: [seasonal_naive]\ncleaning:\n  min_length: 48\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MMF_", "PYTEST_"))}
    env["PYTHONPATH"] = str(REPO)

    def run(**extra: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "tests.reliability.launch", "refine", "--conf", str(conf)]
        return subprocess.run(
            cmd, cwd=REPO, env={**env, **extra}, capture_output=True, text=True, timeout=300
        )

    first = run(MMF_TEST_KILL_AT="mid_refine")
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert [lake.exists(t) for t in SILVER] == [True, False, False]
    assert len(lake.history("silver/quarantine")) == 1
    second = run(MMF_TEST_KILL_AT="mid_refine")
    assert second.returncode == -signal.SIGKILL, second.stderr[-2000:]
    assert len(lake.history("silver/quarantine")) == 2
    assert all(lake.txn_version(t, "mmf-refine") is None for t in SILVER)

    done = run()
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_same_silver(lake, reference)
    n = len(lake.batches("bronze/readings", 0, 1000))
    for t in SILVER:
        assert sorted(_rebuild_batches(lake, t)) == list(range(n))
        assert lake.txn_version(t, "mmf-refine") == 0
    assert refine(lake, _config(root, batch_rows=1000)).skipped
