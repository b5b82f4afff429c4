"""Intermittent demand and calendar frequencies: demand classes, the Croston family,
candidates by class, cleaning onto calendar grids, and one nightly on daily retail-like
data through the local engine."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from forecasting import contract as C
from forecasting.cleaning import clean_series
from forecasting.config import Config, ConfigError
from forecasting.demand import demand_class, demand_stats
from forecasting.errors import FrequencyError
from forecasting.frequency import infer_freq, modal_step, seasonalities_for
from forecasting.models import INTERMITTENT, get_model, load_fitted
from forecasting.models.intermittent import best_alpha, ses

# -- demand classes ---------------------------------------------------------------------


def test_demand_stats_and_the_four_classes_at_the_cutoffs():
    assert demand_stats([0, 2, 0, 2]) == (2.0, 0.0)  # 4 readings / 2 demands; equal sizes
    assert demand_class([1, 1, 1, 1]) == "smooth"
    assert demand_class([1, 10, 1, 10]) == "erratic"  # CV² = 81/121 * ... > 0.49
    assert demand_class([0, 2, 0, 2, 0, 3]) == "intermittent"
    assert demand_class([0, 1, 0, 0, 20, 0]) == "lumpy"
    # ADI exactly 1.32 is intermittent, just below is not (Syntetos-Boylan: ADI >= 1.32)
    y = np.r_[np.ones(100), np.zeros(32)]
    assert demand_stats(y)[0] == pytest.approx(1.32) and demand_class(y) == "intermittent"
    assert demand_class(np.r_[np.ones(100), np.zeros(31)]) == "smooth"
    # never sold: ADI infinite, sizes that do not vary -> intermittent; no finite reading: no class
    assert demand_stats([0, 0, np.nan]) == (np.inf, 0.0) and demand_class([0, 0, np.nan]) == "intermittent"
    assert demand_class([np.nan, np.inf]) is None


# -- the models -------------------------------------------------------------------------
Y = np.array([0, 0, 4, 0, 0, 0, 2, 0, 6, 0, 0, 0, 0, 3, 0, 0, 5, 0, 0, 0], dtype=float)


def _fit(name, y=Y, **params):
    return get_model(name, season_length=7, seasonalities=(7,), freq="D", **params).fit(y)


def test_croston_and_sba_by_hand():
    a = 0.1
    sizes, gaps = Y[Y != 0], np.diff(np.r_[-1, np.flatnonzero(Y)])  # 4 2 6 3 5 | 3 4 2 5 3
    z, p = sizes[0], gaps[0]
    for s, g in zip(sizes[1:], gaps[1:]):
        z, p = z + a * (s - z), p + a * (g - p)
    assert _fit("croston").rate_ == pytest.approx(z / p)
    assert _fit("croston_sba").rate_ == pytest.approx((1 - a / 2) * z / p)
    assert _fit("croston", alpha=0.3).rate_ != pytest.approx(z / p)


def test_tsb_decays_with_zeros_where_croston_does_not():
    dead = np.r_[Y, np.zeros(30)]  # the item stopped selling
    assert _fit("tsb", dead).rate_ < 0.5 * _fit("tsb").rate_
    assert _fit("croston", dead).rate_ == pytest.approx(_fit("croston").rate_)
    prob = ses((Y != 0).astype(float), 0.1)[0]
    size = ses(Y[Y != 0], 0.1)[0]
    assert _fit("tsb").rate_ == pytest.approx(prob * size)


def test_adida_and_imapa_by_hand():
    # ADI = 20 / 5 = 4: blocks of 4 (20 % 4 = 0) -> sums 4, 8, 0, 3, 5; SES with alpha 0.2
    sums = Y.reshape(-1, 4).sum(axis=1)
    assert _fit("adida", alpha=0.2).rate_ == pytest.approx(ses(sums, 0.2)[0] / 4)
    assert _fit("adida", alpha=0.2, aggregation=5).rate_ == pytest.approx(
        ses(Y.reshape(-1, 5).sum(axis=1), 0.2)[0] / 5
    )
    levels = [_fit("adida", alpha=0.2, aggregation=k).rate_ for k in (1, 2, 3, 4)]
    assert _fit("imapa", alpha=0.2).rate_ == pytest.approx(np.mean(levels))
    # alpha=None: SES's alpha chosen in [0.1, 0.3] by the in-sample one-step error
    chosen = best_alpha(sums)
    assert 0.1 <= chosen <= 0.3
    assert _fit("adida").rate_ == pytest.approx(ses(sums, chosen)[0] / 4)


@pytest.mark.parametrize("name", INTERMITTENT)
def test_flat_forecast_intervals_round_trip_and_zero_history(name):
    rng = np.random.default_rng(3)
    y = np.where(rng.random(300) < 0.3, rng.poisson(3, 300) + 1, 0).astype(float)
    model = _fit(name, y)
    fc = model.predict(10, level=[50, 80, 95])
    assert np.ptp(fc["mean"]) == 0 and fc["mean"][0] > 0
    for lo, hi in (("lo-95", "lo-80"), ("lo-80", "lo-50"), ("hi-50", "hi-80"), ("hi-80", "hi-95")):
        assert (fc[lo] <= fc[hi]).all()
    assert (fc["lo-50"] <= fc["mean"]).all() and (fc["mean"] <= fc["hi-50"]).all()
    assert (fc["lo-95"] >= 0).all()  # a history never negative: lower bounds floored at 0
    # the 80% interval covers about 80% of the history's one-step errors' spread
    inside = np.mean((y >= fc["lo-80"][0]) & (y <= fc["hi-80"][0]))
    assert inside >= 0.7
    again = load_fitted(json.dumps(model.to_dict())).predict(10, level=[50, 80, 95])
    for key in fc:
        np.testing.assert_allclose(again[key], fc[key])
    zero = _fit(name, np.zeros(40)).predict(3)
    assert all((v == 0).all() for v in zero.values())


# -- candidates by class ------------------------------------------------------------------


def test_candidates_follow_the_demand_class_unless_configured_otherwise():
    cfg = Config(models=["seasonal_naive", "theta"])
    assert cfg.candidates("smooth") == ["seasonal_naive", "theta"]
    assert cfg.candidates("lumpy") == ["croston_sba", "adida", "imapa", "tsb"]
    add = cfg.replace(**{"intermittent.mode": "add", "intermittent.models": ["tsb", "theta"]})
    assert add.candidates("intermittent") == ["seasonal_naive", "theta", "tsb"]
    off = cfg.replace(**{"intermittent.classes": []})
    assert off.candidates("intermittent") == ["seasonal_naive", "theta"]
    with pytest.raises(ConfigError, match="intermittent.models"):
        cfg.replace(**{"intermittent.models": ["global_gbm"]})
    with pytest.raises(ConfigError, match="intermittent.classes"):
        cfg.replace(**{"intermittent.classes": ["sporadic"]})


# -- cleaning: zero-heavy series and calendar frequencies ---------------------------------


def _clean(ts, y, freq, **cleaning):
    cfg = Config(freq=freq, cleaning={"min_length": 5, **cleaning})
    pdf = pd.DataFrame(
        {C.SERIES_ID: "A", C.TS: pd.DatetimeIndex(ts).astype("datetime64[us]"), C.Y: y, "temperature": np.nan}
    )
    return clean_series(pdf, cfg)


def test_zero_heavy_series_are_kept_and_classed_and_all_zero_follows_the_setting():
    rng = np.random.default_rng(1)
    y = np.where(rng.random(120) < 0.2, np.ceil(np.exp(rng.normal(1, 1.2, 120))), 0)
    out = _clean(pd.date_range("2024-01-01", periods=120, freq="D"), y, "D", clip_outliers=True)
    assert out["_reason"].isna().all() and set(out["_demand_class"]) == {"lumpy"}
    np.testing.assert_array_equal(out[C.Y], y)  # no demand clipped as an outlier
    days = pd.date_range("2024-01-01", periods=60, freq="D")
    zeros = np.zeros(60)
    zeros[[10, 11]] = np.nan  # missing days of an item that never sold: filled with 0
    # auto (the default) keeps an all-zero item at a daily (or coarser) frequency ...
    kept = _clean(days, zeros, "D")
    assert kept["_reason"].isna().all() and set(kept["_demand_class"]) == {"intermittent"}
    assert (kept[C.Y] == 0).all() and kept["is_filled"].sum() == 2
    weeks = pd.date_range("2024-01-07", periods=30, freq="W-SUN")
    assert _clean(weeks, np.zeros(30), "W-SUN")["_reason"].isna().all()
    # ... and quarantines a dead meter below a day; either way when configured
    hours = pd.date_range("2024-01-01", periods=60, freq="h")
    for ts, freq, how in ((hours, "h", "auto"), (days, "D", "quarantine")):
        zero = _clean(ts, np.zeros(60), freq, all_zero=how)
        assert zero["_reason"].tolist() == ["constant"]
        assert "equal 0: no demand or consumption recorded" in zero["_detail"].iloc[0]
        assert "cleaning.all_zero: keep" in zero["_detail"].iloc[0]
    assert _clean(hours, np.zeros(60), "h", all_zero="keep")["_reason"].isna().all()
    flat = _clean(days, np.full(60, 2.0), "D", all_zero="keep")  # a stuck value is still constant
    assert flat["_reason"].tolist() == ["constant"]


@pytest.mark.parametrize(
    "freq, start, n, seasons",
    [
        ("D", "2024-01-01", 60, (7, 365)),
        ("W-SUN", "2024-01-07", 60, (52,)),
        ("W-WED", "2024-01-03", 60, (52,)),
        ("MS", "2020-01-01", 36, (12,)),
        ("ME", "2020-01-31", 36, (12,)),
        ("QS", "2015-01-01", 24, (4,)),
        ("QE", "2015-03-31", 24, (4,)),
    ],
)
def test_calendar_series_clean_onto_their_grid_with_gaps_filled(freq, start, n, seasons):
    ts = pd.date_range(start, periods=n, freq=freq)
    keep = np.ones(n, bool)
    keep[[4, 9, 10]] = False  # missing steps (weeks, months, quarters)
    out = _clean(ts[keep], np.arange(n, dtype=float)[keep] + 1, freq)
    assert out["_reason"].isna().all()
    assert list(out[C.TS]) == list(ts)
    assert out["is_filled"].to_numpy().nonzero()[0].tolist() == [4, 9, 10]
    np.testing.assert_allclose(out[C.Y], np.arange(n) + 1.0)  # short gaps: interpolated
    assert seasonalities_for(freq) == seasons


def test_weekly_series_with_too_many_missing_weeks_and_other_grids_are_quarantined():
    weeks = pd.date_range("2024-01-07", periods=40, freq="W-SUN")
    keep = np.r_[0:10, 22:40]  # 12 of 40 weeks missing (30% > 20%)
    gappy = _clean(weeks[keep], np.arange(40.0)[keep] + 1, "W-SUN")
    assert gappy["_reason"].tolist() == ["too_many_gaps"]
    assert "cleaning.max_missing_share=0.2" in gappy["_detail"].iloc[0]
    other = {
        "daily in a weekly lakehouse": (
            pd.date_range("2024-01-01", periods=60, freq="D"),
            "W-SUN",
            "mostly D",
        ),
        "Mondays in a W-SUN lakehouse": (
            pd.date_range("2024-01-01", periods=30, freq="W-MON"),
            "W-SUN",
            "off",
        ),
        "quarterly in a monthly lakehouse": (pd.date_range("2015-01-01", periods=20, freq="QS"), "MS", "92D"),
        "monthly in a quarterly lakehouse": (
            pd.date_range("2015-01-01", periods=30, freq="MS"),
            "QS",
            "apart",
        ),
    }
    for what, (ts, freq, fragment) in other.items():
        out = _clean(ts, np.arange(len(ts), dtype=float) + 1, freq)
        assert out["_reason"].tolist() == ["irregular"], what
        assert fragment in out["_detail"].iloc[0], what


def test_monthly_data_is_not_inferred_but_named():
    months = {
        f"S{i}": modal_step(pd.date_range("2020-01-01", periods=24, freq="MS").to_numpy()) for i in range(3)
    }
    with pytest.raises(FrequencyError, match="looks monthly.*MS"):
        infer_freq(months)
    weekly = {
        f"S{i}": modal_step(pd.date_range("2020-01-05", periods=24, freq="W-SUN").to_numpy())
        for i in range(3)
    }
    assert infer_freq(weekly) == "7D"


# -- end to end: one nightly on daily item x store demand ---------------------------------


def _retail(days: int = 120) -> pd.DataFrame:
    """Six daily items: two smooth, two intermittent, one lumpy, one that never sold;
    one smooth item misses a few days."""
    rng = np.random.default_rng(11)
    ts = pd.date_range("2024-01-01", periods=days, freq="D")
    weekly = 1 + 0.3 * np.sin(2 * np.pi * np.arange(days) / 7)
    series = {
        "SMOOTH-1": rng.poisson(20 * weekly).astype(float),
        "SMOOTH-2": rng.poisson(8 * weekly).astype(float),
        "INTER-1": np.where(rng.random(days) < 0.25, 3.0, 0.0),
        "INTER-2": np.where(rng.random(days) < 0.3, rng.integers(2, 4, days), 0).astype(float),
        "LUMPY-1": np.where(rng.random(days) < 0.15, np.ceil(np.exp(rng.normal(1, 1.2, days))), 0),
        "ZERO-1": np.zeros(days),
    }
    frames = []
    for i, (sid, y) in enumerate(series.items()):
        f = pd.DataFrame({C.SERIES_ID: sid, C.TS: ts, C.Y: y, "site": f"store-{i % 2}", "region": "north"})
        frames.append(f.drop(index=[30, 31, 50]) if sid == "SMOOTH-2" else f)
    return pd.concat(frames, ignore_index=True)


def test_nightly_on_daily_intermittent_demand(tmp_path, config):
    from deltalake import write_deltalake

    from training.jobs.nightly import nightly
    from training.tables import Lakehouse

    src = tmp_path / "raw"
    src.mkdir()
    _retail().to_parquet(src / "sales.parquet", index=False)
    cfg = config.replace(
        freq="D",
        horizon=7,
        models=["seasonal_naive", "theta"],
        **{"nightly.source": str(src), "cleaning.min_length": 60, "backtest.metric": "scaled_mae"},
    )
    lake = Lakehouse.from_config(cfg)
    # a silver/series written before demand_class existed: refine evolves it on write
    old = pa.schema([f for f in C.SILVER_SERIES if f.name != "demand_class"])
    write_deltalake(lake.uri("silver/series"), old.empty_table())

    rep = nightly(lake, cfg)
    assert not rep.failed, rep.steps

    series = lake.read("silver/series").set_index(C.SERIES_ID)
    assert series["demand_class"].to_dict() == {
        "SMOOTH-1": "smooth",
        "SMOOTH-2": "smooth",
        "INTER-1": "intermittent",
        "INTER-2": "intermittent",
        "LUMPY-1": "lumpy",
        "ZERO-1": "intermittent",  # never sold: kept (cleaning.all_zero auto, daily data)
    }
    assert (series["freq"] == "D").all() and series.loc["SMOOTH-2", "n_filled"] == 3
    assert not lake.exists("silver/quarantine") or lake.read("silver/quarantine").empty

    sel = lake.read("gold/selection").set_index(C.SERIES_ID)
    assert set(sel.loc[["INTER-1", "INTER-2", "LUMPY-1", "ZERO-1"], "model"]) <= set(cfg.intermittent.models)
    assert set(sel.loc[["SMOOTH-1", "SMOOTH-2"], "model"]) <= {"seasonal_naive", "theta"}
    assert (sel.loc[series.index, "status"] == "ok").all()
    assert np.isfinite(sel.loc[series.index, "metric_value"]).all()
    assert sel.loc["ZERO-1", "metric_value"] == 0.0  # a perfect forecast of no demand, no 0/0

    bt = lake.read("gold/backtest")
    assert set(bt.loc[bt[C.SERIES_ID] == "LUMPY-1", "model"]) == set(cfg.intermittent.models)
    models = lake.read("gold/models")
    entries = [e for text in models["backtest_json"] for e in json.loads(text)]
    assert all(np.isfinite(e["rmsse"]) and np.isfinite(e["scaled_mae"]) for e in entries)

    fc = lake.read("gold/forecasts")
    assert sorted(fc[C.SERIES_ID].unique()) == sorted(series.index)
    assert (fc.groupby(C.SERIES_ID).size() == 7).all()
    first = fc.sort_values(C.TS).groupby(C.SERIES_ID).first()
    assert ((first[C.TS] - first["cutoff"]) == pd.Timedelta("1D")).all()
    inter = fc[fc[C.SERIES_ID] == "INTER-1"]
    assert inter["yhat"].nunique() == 1 and 0 < inter["yhat"].iloc[0] < 3  # a flat demand rate
    zero = fc[fc[C.SERIES_ID] == "ZERO-1"].filter(like="yhat")
    assert (zero.to_numpy() == 0).all()  # no demand, intervals included
