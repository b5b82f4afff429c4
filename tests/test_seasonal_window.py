"""seasonal_window (the median of the same phase over the last seasons) and the choice
shrunk toward a preferred model (``backtest.prefer``)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from forecasting.choice import Candidate, decide, preferred
from forecasting.config import from_dict
from forecasting.contract import OK
from forecasting.errors import ConfigError
from forecasting.generator import generate
from forecasting.models import get_model, load_fitted
from forecasting.pipeline import process_series


def test_the_forecast_is_the_median_of_the_same_phase_over_the_last_seasons():
    days = np.array([[1.0, 10.0, 100.0], [2.0, 20.0, 200.0], [9.0, 90.0, 900.0], [3.0, 30.0, 300.0]])
    model = get_model("seasonal_window", season_length=3, seasons=3, spread=0).fit(days.ravel())
    fc = model.predict(7, level=[80])
    # the last three seasons only (the first is dropped); the profile repeats
    np.testing.assert_allclose(fc["mean"], [3, 30, 300, 3, 30, 300, 3])
    assert np.all(fc["lo-80"] <= fc["mean"]) and np.all(fc["mean"] <= fc["hi-80"])
    mean = get_model("seasonal_window", season_length=3, seasons=3, spread=0, method="mean").fit(days.ravel())
    np.testing.assert_allclose(mean.predict(3)["mean"], [14 / 3, 140 / 3, 1400 / 3])


def test_spread_pools_the_neighbouring_steps_in_time():
    y = np.array([0.0, 5.0, 0.0, 0.0, 5.0, 0.0])  # a spike at phase 1 on both days
    alone = get_model("seasonal_window", season_length=3, spread=0).fit(y).predict(3)["mean"]
    pooled = get_model("seasonal_window", season_length=3, spread=1).fit(y).predict(3)["mean"]
    np.testing.assert_allclose(alone, [0, 5, 0])
    # phase 1 pools {0, 5, 0} per day: the median no longer follows a one-step spike
    np.testing.assert_allclose(pooled, [0, 0, 0])


def test_a_short_history_uses_the_seasons_it_has():
    y = np.arange(10.0)  # one whole season of 8 plus 2 steps
    model = get_model("seasonal_window", season_length=8, spread=0).fit(y)
    assert model.window_.shape == (1, 8)
    np.testing.assert_allclose(model.predict(8)["mean"], [2, 3, 4, 5, 6, 7, 8, 9])


def test_intervals_cover_noisy_load_about_as_stated():
    rng = np.random.default_rng(0)
    profile = np.sin(np.arange(24) / 24 * 2 * np.pi) + 2
    y = np.concatenate([profile + rng.gamma(2, 0.3, 24) for _ in range(60)])
    fc = get_model("seasonal_window", season_length=24).fit(y[: -24 * 20]).predict(24 * 20, level=[80, 95])
    actual = y[-24 * 20 :]
    cover80 = np.mean((actual >= fc["lo-80"]) & (actual <= fc["hi-80"]))
    cover95 = np.mean((actual >= fc["lo-95"]) & (actual <= fc["hi-95"]))
    assert 0.7 < cover80 < 0.9 and 0.88 < cover95 <= 1.0


def test_bad_params_are_refused():
    with pytest.raises(ConfigError, match="seasons"):
        get_model("seasonal_window", seasons=0)
    with pytest.raises(ConfigError, match="method"):
        get_model("seasonal_window", method="mode")


def _weekly_load(days: int = 30):
    """Hourly load from a Monday: 1 on weekdays, 5 at weekends, +3 at 08:00 every day."""
    ts = pd.date_range("2024-01-01", periods=24 * days, freq="h")
    y = np.where(ts.dayofweek >= 5, 5.0, 1.0) + (ts.hour == 8) * 3.0
    return ts.to_numpy(), y


def test_daytype_pools_the_days_of_each_steps_own_type():
    ts, y = _weekly_load()
    cut = 24 * 26  # the history ends on Friday 26 January: the next 48 steps are the weekend
    model = get_model("seasonal_window", season_length=24, freq="h", spread=0, daytype="split")
    model.fit(y[:cut], None, ts[:cut])
    assert model.next_phase_ == 5 * 24  # Saturday 00:00
    fc = model.predict(72, level=[80])
    np.testing.assert_allclose(fc["mean"], y[cut : cut + 72])  # Sat, Sun at 5 (+3), Monday at 1 (+3)
    assert np.all(fc["lo-80"] <= fc["mean"]) and np.all(fc["mean"] <= fc["hi-80"])
    blind = (
        get_model("seasonal_window", season_length=24, freq="h", daytype="ignore")
        .fit(y[:cut], None, ts[:cut])
        .predict(72)
    )
    assert blind["mean"][0] == 1.0  # every day pooled: the weekday level (10 of 14 days)


def test_auto_splits_the_day_types_only_where_the_other_days_of_a_type_forecast_it_better():
    ts, y = _weekly_load()
    rng = np.random.default_rng(1)
    noisy = y + rng.gamma(2, 0.3, len(y))
    auto = dict(season_length=24, freq="h", daytype="auto")
    assert get_model("seasonal_window", **auto).fit(noisy, None, ts).next_phase_ is not None
    # auto is the default
    assert (
        get_model("seasonal_window", season_length=24, freq="h").fit(noisy, None, ts).next_phase_ is not None
    )
    # the same noise on one daily profile for every day: no weekly rhythm to pay for fewer days
    flat = 1.0 + (pd.DatetimeIndex(ts).hour == 8) * 3.0 + rng.gamma(2, 0.3, len(y))
    model = get_model("seasonal_window", **auto).fit(flat, None, ts)
    assert model.next_phase_ is None
    blind = get_model("seasonal_window", season_length=24, freq="h", daytype="ignore").fit(flat, None, ts)
    np.testing.assert_allclose(model.predict(48)["mean"], blind.predict(48)["mean"])


def test_daytype_pools_every_day_without_timestamps_or_a_daily_season():
    ts, y = _weekly_load()
    blind = (
        get_model("seasonal_window", season_length=24, freq="h", daytype="ignore").fit(y).predict(48)["mean"]
    )
    for model, args in (
        (get_model("seasonal_window", season_length=24, freq="h", daytype="split"), (y,)),
        (get_model("seasonal_window", season_length=12, freq="h", daytype="split"), (y, None, ts)),
    ):
        model.fit(*args)
        assert model.next_phase_ is None
    no_ts = (
        get_model("seasonal_window", season_length=24, freq="h", daytype="split").fit(y).predict(48)["mean"]
    )
    np.testing.assert_allclose(no_ts, blind)


def test_a_daytype_model_round_trips_and_an_older_state_still_loads():
    ts, y = _weekly_load()
    model = get_model("seasonal_window", season_length=24, freq="h", daytype="split").fit(
        y[:-30], None, ts[:-30]
    )
    again = load_fitted(json.dumps(model.to_dict()))
    np.testing.assert_allclose(again.predict(48)["mean"], model.predict(48)["mean"])
    old = get_model("seasonal_window", season_length=24, freq="h").fit(y).to_dict()
    del old["state"]["next_phase"]  # a state written before day types existed
    np.testing.assert_allclose(
        load_fitted(json.dumps(old)).predict(24)["mean"],
        get_model("seasonal_window", season_length=24, freq="h").fit(y).predict(24)["mean"],
    )


def _cand(name, score):
    return Candidate(name, score=score)


def test_the_preferred_model_stays_first_within_the_margin():
    ranking = [_cand("theta", 0.8), _cand("ets", 0.9), _cand("seasonal_window", 1.0)]
    assert [c.name for c in preferred(ranking, "seasonal_window", 0.3)][0] == "seasonal_window"
    assert [c.name for c in preferred(ranking, "seasonal_window", 0.2)][0] == "theta"  # 1.0 > 0.8 * 1.2
    assert preferred(ranking, None, 0.3) == ranking
    assert preferred(ranking, "mstl", 0.3) == ranking  # not a candidate: no effect
    nan = [_cand("theta", 0.8), _cand("seasonal_window", float("nan"))]
    assert preferred(nan, "seasonal_window", 10.0) == nan


def test_decide_refits_the_preferred_model():
    cands = [_cand("theta", 0.8), _cand("seasonal_window", 1.0)]
    d = decide(cands, lambda c: c.name, prefer="seasonal_window", prefer_margin=0.3)
    assert (d.status, d.model, d.metric_value) == (OK, "seasonal_window", 1.0)
    assert decide(cands, lambda c: c.name).model == "theta"


def test_process_series_shrinks_the_choice_toward_the_preferred_model():
    rows = generate(n_series=1, days=20, freq="h", seed=3, clean=True).readings
    base = {"horizon": 24, "models": ["seasonal_naive", "weekly_naive", "seasonal_window"]}
    free = process_series(rows, from_dict({**base, "backtest": {"windows": 2, "prefer": None}})).iloc[0]
    scores = {k: v["score"] for k, v in json.loads(free["candidates_json"]).items()}
    best = min(scores, key=scores.get)
    shrunk = process_series(
        rows,
        from_dict({**base, "backtest": {"windows": 2, "prefer": "seasonal_window", "prefer_margin": 100.0}}),
    ).iloc[0]
    assert free["model"] == best and shrunk["model"] == "seasonal_window"
    assert shrunk["metric_value"] == pytest.approx(scores["seasonal_window"])
