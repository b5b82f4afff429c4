"""The synthetic smart-meter generator: shapes, determinism, faults and realism."""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from forecasting import contract as C
from forecasting.errors import ConfigError
from forecasting.generator import FAULTS, generate, write

STEPS_PER_DAY = {"h": 24, "30min": 48, "15min": 96, "D": 1}
DTYPES = {
    "series_id": np.dtype(object),
    "ts": np.dtype("datetime64[ns]"),
    "y": np.dtype("float64"),
    "temperature": np.dtype("float64"),
    "site": np.dtype(object),
    "region": np.dtype(object),
}


@pytest.fixture(scope="module")
def faulty():
    return generate(n_series=50, days=30, seed=3)


@pytest.fixture(scope="module")
def clean_hourly():
    return generate(n_series=200, days=90, seed=1, clean=True).readings


def _grid(days: int, freq: str = "h", start: str = "2024-01-01") -> pd.DatetimeIndex:
    return pd.date_range(start, periods=days * STEPS_PER_DAY[freq], freq=freq)


def _series(gen, fault: str) -> list[pd.DataFrame]:
    ids = gen.faults.loc[gen.faults["fault"] == fault, "series_id"]
    return [gen.readings[gen.readings["series_id"] == sid] for sid in ids]


# -- shape, types, order -------------------------------------------------------------


@pytest.mark.parametrize("freq", ["h", "30min", "15min", "D"])
def test_clean_rows_are_series_times_steps(freq):
    gen = generate(n_series=7, days=10, freq=freq, clean=True)
    r = gen.readings
    assert len(r) == 7 * 10 * STEPS_PER_DAY[freq]
    assert sorted(r["series_id"].unique()) == [f"MTR-{i:05d}" for i in range(1, 8)]
    assert (r.groupby("series_id").size() == 10 * STEPS_PER_DAY[freq]).all()
    assert gen.faults.empty


def test_dtypes_and_columns(faulty):
    r = faulty.readings
    assert list(r.columns) == [C.SERIES_ID, C.TS, C.Y, *C.EXOG, *C.ATTRIBUTES]
    assert r.dtypes.to_dict() == DTYPES
    for col in ("series_id", "site", "region"):
        assert all(isinstance(v, str) for v in r[col].iloc[:: len(r) // 50])
    assert list(faulty.faults.columns) == ["series_id", "fault", "expected"]


def test_rows_sorted_by_series_then_time(faulty):
    r = faulty.readings
    order = r.sort_values(["series_id", "ts"], kind="stable").index
    assert (order == r.index).all()
    assert r.index.equals(pd.RangeIndex(len(r)))


def test_ids_sites_regions():
    r = generate(n_series=120, days=2, clean=True).readings
    per_series = r.groupby("series_id")[["site", "region"]].nunique()
    assert (per_series == 1).all().all()  # a meter has one site and one region
    sites = r.drop_duplicates("series_id")
    assert sites["site"].str.fullmatch(r"SITE-\d{3}").all()
    assert sites.groupby("site").size().min() >= 2  # several meters a site
    assert (sites.groupby("site")["region"].nunique() == 1).all()
    assert set(sites["region"]) <= {"north", "south", "east", "west", "central"}
    assert len(set(sites["region"])) >= 3
    wide = generate(n_series=100_000, days=1, freq="D", clean=True).readings
    assert wide["series_id"].iloc[0] == "MTR-000001"


# -- determinism -----------------------------------------------------------------------


def test_same_seed_same_output_other_seed_differs():
    a, b = generate(n_series=20, days=14, seed=5), generate(n_series=20, days=14, seed=5)
    pd.testing.assert_frame_equal(a.readings, b.readings)
    pd.testing.assert_frame_equal(a.faults, b.faults)
    c = generate(n_series=20, days=14, seed=6)
    assert not np.allclose(a.readings["y"].iloc[:100], c.readings["y"].iloc[:100])


def test_unfaulted_series_equal_the_clean_output(faulty):
    clean = generate(n_series=50, days=30, seed=3, clean=True).readings
    ok = ~faulty.readings["series_id"].isin(faulty.faults["series_id"])
    pd.testing.assert_frame_equal(
        faulty.readings[ok].reset_index(drop=True),
        clean[clean["series_id"].isin(faulty.readings.loc[ok, "series_id"])].reset_index(drop=True),
    )


# -- clean data ------------------------------------------------------------------------


@pytest.mark.parametrize("freq", ["h", "15min", "D"])
def test_clean_has_no_faults(freq):
    r = generate(n_series=30, days=21, freq=freq, seed=2, clean=True).readings
    assert np.isfinite(r[["y", "temperature"]].to_numpy()).all()
    assert not r.duplicated(["series_id", "ts"]).any()
    assert (r["y"] > 0).all()
    grid = _grid(21, freq).to_numpy()
    for _, s in r.groupby("series_id"):
        np.testing.assert_array_equal(s["ts"].to_numpy(), grid)
        assert s["y"].nunique() > 1


# -- faults ----------------------------------------------------------------------------


def test_every_fault_kind_once_enough_series(faulty):
    f = faulty.faults
    assert len(f) == 10  # 50 series x 0.2
    assert f["series_id"].is_unique and f["series_id"].is_monotonic_increasing
    assert set(f["fault"]) == set(FAULTS)
    assert (f["expected"] == f["fault"].map(FAULTS)).all()
    assert set(f["expected"]) <= {C.OK, *C.QUARANTINE_REASONS}


def test_fault_share_and_round_robin():
    f = generate(n_series=100, days=3, fault_share=0.2).faults
    assert len(f) == 20
    assert set(f["fault"].value_counts()) <= {2, 3}
    assert generate(n_series=100, days=3, fault_share=0.0).faults.empty
    few = generate(n_series=10, days=3).faults  # 2 faulty series: the first kinds
    assert list(few["fault"].sort_values()) == ["duplicates", "gaps"]


def test_duplicates_conflict(faulty):
    for s in _series(faulty, "duplicates"):
        dup = s[s.duplicated("ts", keep=False)]
        assert len(dup) > 0
        assert (dup.groupby("ts")["y"].nunique() == 2).all()
        assert s["ts"].nunique() == 30 * 24


def test_all_nan_constant_negative(faulty):
    for s in _series(faulty, "all_nan"):
        assert len(s) == 30 * 24 and s["y"].isna().all() and s["temperature"].notna().all()
    for s in _series(faulty, "constant"):
        assert s["y"].notna().all() and s["y"].nunique() == 1
    for s in _series(faulty, "negative"):
        share = (s["y"] < 0).mean()
        assert 0.03 < share < 0.08
        neg = np.flatnonzero(s["y"].to_numpy() < 0)
        assert (np.diff(neg) == 1).all()  # one run


def test_outliers_are_spikes(faulty):
    for s in _series(faulty, "outliers"):
        spikes = s["y"] > 10 * s["y"].median()
        assert 3 <= spikes.sum() <= 6
        assert len(s) == 30 * 24


def test_missing_readings(faulty):
    grid = _grid(30)
    for s in _series(faulty, "too_short"):
        assert len(s) == 12  # half a day
        np.testing.assert_array_equal(s["ts"].to_numpy(), grid[-12:].to_numpy())
    for s in _series(faulty, "gaps"):
        missing = 1 - len(s) / len(grid)
        assert 0 < missing < 0.2  # cleaning fills these
        assert s["ts"].iloc[0] == grid[0] and s["ts"].iloc[-1] == grid[-1]
        assert s["ts"].diff().max() >= pd.Timedelta("3h")  # a multi-hour gap
    for s in _series(faulty, "long_gap"):
        assert 1 - len(s) / len(grid) > 0.3
        assert s["ts"].iloc[0] == grid[0] and s["ts"].iloc[-1] == grid[-1]


def test_faults_hold_at_other_frequencies():
    gen = generate(n_series=40, days=20, freq="15min", seed=4)
    assert set(gen.faults["fault"]) == set(FAULTS)
    for s in _series(gen, "too_short"):
        assert len(s) == 48
    for s in _series(gen, "long_gap"):
        assert 1 - len(s) / (20 * 96) > 0.3


def test_expected_outcomes_match_the_cleaning_rules(faulty):
    from forecasting.cleaning import clean_series
    from forecasting.config import Cleaning

    config = types.SimpleNamespace(cleaning=Cleaning(), freq="h")
    expected = dict(zip(faulty.faults["series_id"], faulty.faults["expected"]))
    for sid, pdf in faulty.readings.groupby("series_id"):
        reason = clean_series(pdf, config)["_reason"].iloc[0]
        assert (reason or C.OK) == expected.get(sid, C.OK), sid


# -- realism ---------------------------------------------------------------------------


def test_daily_seasonality(clean_hourly):
    y = clean_hourly["y"].to_numpy().reshape(200, -1)
    z = y - y.mean(axis=1, keepdims=True)
    acf24 = (z[:, 24:] * z[:, :-24]).sum(axis=1) / (z * z).sum(axis=1)
    assert np.median(acf24) > 0.6
    assert acf24.min() > 0.3


def test_weekends_differ(clean_hourly):
    day = clean_hourly["ts"].dt.floor("D")
    daily = clean_hourly.groupby(["series_id", day])["y"].mean().unstack()
    weekend = daily.columns.dayofweek >= 5
    ratio = daily.loc[:, weekend].mean(axis=1) / daily.loc[:, ~weekend].mean(axis=1)
    assert (ratio < 0.8).mean() > 0.1  # businesses close
    assert (ratio > 1.0).mean() > 0.3  # households are at home


def test_temperature_is_realistic_and_drives_heating(clean_hourly):
    t = clean_hourly["temperature"]
    assert -20 < t.min() and t.max() < 30 and 2 < t.mean() < 12  # a GB winter quarter
    hourly_mean = t.groupby(clean_hourly["ts"].dt.hour).mean()
    assert hourly_mean.idxmax() in range(12, 18) and hourly_mean.idxmin() in (*range(0, 9), 23)

    # Weather anomalies against daily load, on working days, after removing each
    # series' slow trend (the season moves both temperature and lighting load).
    day = clean_hourly["ts"].dt.floor("D")
    daily = clean_hourly.groupby(["series_id", day]).agg(y=("y", "mean"), t=("temperature", "mean"))
    y = np.log(daily["y"].unstack())
    temp = daily["t"].unstack()
    workday = (y.columns.dayofweek < 5) & ~y.columns.isin(pd.to_datetime(["2024-01-01", "2024-03-29"]))
    y, temp = y.loc[:, workday], temp.loc[:, workday]

    def anomaly(frame: pd.DataFrame) -> np.ndarray:
        trend = frame.T.rolling(11, center=True, min_periods=1).mean().T
        a = (frame - trend).to_numpy()
        return a - a.mean(axis=1, keepdims=True)

    ya, ta = anomaly(y), anomaly(temp)
    corr = (ya * ta).sum(axis=1) / np.sqrt((ya**2).sum(axis=1) * (ta**2).sum(axis=1))
    assert np.median(corr) < -0.2
    assert (corr < 0).mean() > 0.9


def test_holidays_lower_the_total_load_like_a_sunday(clean_hourly):
    day = clean_hourly["ts"].dt.floor("D")
    total = clean_hourly.groupby(day)["y"].mean()
    for holiday in pd.to_datetime(["2024-01-01", "2024-03-29"]):  # a Monday, Good Friday
        same_weekday = total[
            (total.index.dayofweek == holiday.dayofweek)
            & (total.index != holiday)
            & (abs(total.index - holiday) <= pd.Timedelta("21D"))
        ]
        assert total[holiday] < 0.8 * same_weekday.mean()
        sundays = total[(total.index.dayofweek == 6) & (abs(total.index - holiday) <= pd.Timedelta("21D"))]
        assert total[holiday] < 1.3 * sundays.mean()


def test_holidays_follow_the_country():
    # 2024-07-04 is a holiday in the US, not in GB; a Thursday.
    gb = generate(n_series=200, days=21, start="2024-06-20", clean=True, country="GB").readings
    us = generate(n_series=200, days=21, start="2024-06-20", clean=True, country="US").readings
    day = "2024-07-04"
    y_gb = gb.loc[gb["ts"].dt.floor("D") == day, "y"].mean()
    y_us = us.loc[us["ts"].dt.floor("D") == day, "y"].mean()
    assert y_us < 0.8 * y_gb


# -- time zones and Parquet --------------------------------------------------------------


@pytest.mark.parametrize("tz", ["Europe/London", "UTC"])
def test_tz_aware_when_asked(tz):
    naive = generate(n_series=5, days=200, seed=1).readings
    aware = generate(n_series=5, days=200, seed=1, tz=tz).readings
    assert str(aware["ts"].dt.tz) == tz
    assert aware["ts"].dt.tz_convert("UTC").dt.tz_localize(None).equals(naive["ts"])
    pd.testing.assert_frame_equal(aware.drop(columns="ts"), naive.drop(columns="ts"))


def test_write_parquet(tmp_path, faulty):
    path = write(faulty, tmp_path / "bronze" / "readings.parquet")
    assert path.exists()
    table = pq.read_table(path)
    assert table.schema.field("ts").type == pa.timestamp("us")
    assert table.schema.names == list(DTYPES)
    back = table.to_pandas()
    assert back["ts"].astype("datetime64[ns]").equals(faulty.readings["ts"])
    np.testing.assert_array_equal(back["y"].to_numpy(), faulty.readings["y"].to_numpy())

    aware = generate(n_series=3, days=2, tz="Europe/London")
    assert pq.read_schema(write(aware, tmp_path / "aware.parquet")).field("ts").type == pa.timestamp(
        "us", tz="Europe/London"
    )


# -- arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_series": 0},
        {"days": 0},
        {"freq": "W"},
        {"freq": "7min"},
        {"freq": "nope"},
        {"fault_share": 1.5},
        {"seed": -1},
        {"country": "XX"},
        {"tz": "Mars/Olympus"},
        {"start": "not a date"},
    ],
)
def test_bad_arguments_raise_config_error(kwargs):
    key = next(iter(kwargs))
    with pytest.raises(ConfigError, match=key):
        generate(**kwargs)
