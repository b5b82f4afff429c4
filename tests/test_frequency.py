"""Frequencies: seasons per alias, one frequency inferred per collection, mixes refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from forecasting.errors import DataContractError, FrequencyError
from forecasting.frequency import future_timestamps, infer_freq, modal_step, seasonalities_for, step_of
from forecasting.generator import generate


def _steps(readings: pd.DataFrame) -> dict[str, pd.Timedelta | None]:
    return {sid: modal_step(g["ts"].to_numpy()) for sid, g in readings.groupby("series_id")}


@pytest.mark.parametrize(
    "freq, seasons",
    [
        ("h", (24, 168)),
        ("30min", (48, 336)),
        ("15min", (96, 672)),
        ("10min", (144, 1008)),
        ("2h", (12, 84)),
        ("D", (7, 365)),
    ],
)
def test_seasonalities_for(freq, seasons):
    assert seasonalities_for(freq) == seasons


def test_seasons_are_shortest_first_and_whole_days():
    for freq in ("h", "30min", "15min"):
        day, week = seasonalities_for(freq)
        assert day < week == 7 * day
        assert step_of(freq) * day == pd.Timedelta("1D")


@pytest.mark.parametrize("freq, expected", [("h", "h"), ("30min", "30min")])
def test_infer_freq_on_generated_data(freq, expected):
    # faults included: gaps, duplicates and short series keep their modal step
    data = generate(n_series=20, days=4, freq=freq, seed=2, fault_share=0.4)
    assert infer_freq(_steps(data.readings)) == expected


def test_modal_step_ignores_order_duplicates_and_gaps():
    ts = pd.date_range("2024-01-01", periods=48, freq="h").to_numpy()
    messy = np.concatenate([ts[:10], ts[15:], ts[20:25]])  # a gap and repeated stamps
    np.random.default_rng(0).shuffle(messy)
    assert modal_step(messy) == pd.Timedelta("1h")
    assert modal_step(ts[:2]) is None  # fewer than 3 distinct timestamps


def test_a_mix_of_frequencies_is_refused_naming_both():
    hourly = generate(n_series=10, days=3, freq="h", seed=1, clean=True).readings
    half = generate(n_series=10, days=3, freq="30min", seed=2, clean=True).readings
    half["series_id"] = "HH-" + half["series_id"]
    steps = _steps(pd.concat([hourly, half]))
    with pytest.raises(FrequencyError) as err:
        infer_freq(steps)
    msg = str(err.value)
    assert "mixes frequencies" in msg
    assert "h (10 series)" in msg
    assert "30min (10 series)" in msg
    assert isinstance(err.value, DataContractError)


def test_a_minority_of_odd_series_is_not_a_mix():
    steps = {f"H{i}": pd.Timedelta("1h") for i in range(19)}
    steps["ODD"] = pd.Timedelta("30min")  # 5% < min_share: left to the cleaning rules
    steps["TINY"] = None  # too few timestamps to have a step
    assert infer_freq(steps) == "h"
    # the same odd series is a mix once it is a tenth of the collection
    steps.update({"ODD2": pd.Timedelta("30min")})
    del steps["H0"]
    with pytest.raises(FrequencyError, match="mixes frequencies"):
        infer_freq(steps)


def test_no_series_with_enough_timestamps():
    with pytest.raises(FrequencyError, match="set `freq`"):
        infer_freq({"A": None, "B": None})


def test_no_step_shared_by_enough_series_is_refused_not_a_crash():
    steps = {f"S{i}": pd.Timedelta(minutes=i + 1) for i in range(20)}  # 20 steps, 5% each
    with pytest.raises(FrequencyError, match="no step is shared"):
        infer_freq(steps)


def test_future_timestamps_for_one_end_and_for_many():
    end = pd.Timestamp("2024-01-31 23:00")
    got = future_timestamps(end, "h", [1, 2, 5])
    assert got.dtype == np.dtype("datetime64[us]")
    assert list(pd.DatetimeIndex(got)) == [end + pd.Timedelta(hours=k) for k in (1, 2, 5)]
    # calendar offsets step on the calendar, not by a fixed length
    assert list(pd.DatetimeIndex(future_timestamps(end.normalize(), "MS", np.arange(1, 3)))) == [
        pd.Timestamp("2024-02-01"),
        pd.Timestamp("2024-03-01"),
    ]
    ends = pd.Series(pd.to_datetime(["2024-01-01", "2024-02-28"])).to_numpy(dtype="datetime64[us]")
    grid = future_timestamps(ends, "D", np.arange(1, 3))
    assert grid.shape == (2, 2) and pd.Timestamp(grid[1, 1]) == pd.Timestamp("2024-03-01")
    monthly = future_timestamps(ends, "ME", np.arange(1, 3))
    assert [str(pd.Timestamp(t).date()) for t in monthly.ravel()] == [
        "2024-01-31",
        "2024-02-29",
        "2024-02-29",
        "2024-03-31",
    ]
    assert future_timestamps(ends[:0], "ME", [1, 2]).shape == (0, 2)
