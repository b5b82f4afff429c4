"""Calendar frequencies end to end: weekly (W-SUN), monthly (MS) and quarterly (QS) series
through ``nightly`` on the local engine (daily: tests/test_intermittent.py), and on the
Spark engine against local; with the bad input of a retail lakehouse: missing weeks
(filled, or quarantined with the reason), an all-zero item (kept, scored without a 0/0),
and a series of another frequency (quarantined, not mixed in)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from forecasting import contract as C
from forecasting.frequency import seasonalities_for

# freq -> (periods of history, horizon, cleaning.min_length)
CASES = {
    "D": (200, 14, 60),
    "W-SUN": (160, 8, 60),
    "MS": (96, 6, 36),
    "QS": (60, 4, 20),
}
STARTS = {"D": "2023-01-01", "W-SUN": "2021-01-03", "MS": "2016-01-01", "QS": "2010-01-01"}


def calendar_sales(freq: str, seed: int = 4) -> pd.DataFrame:
    """Seasonal sales at ``freq``: two regular series, one with two missing steps, one
    with 30% of its steps missing, an item that never sold, and one series at another
    frequency (daily steps; weekly in a daily lakehouse)."""
    n = CASES[freq][0]
    season = seasonalities_for(freq)[0]
    rng = np.random.default_rng(seed)
    ts = pd.date_range(STARTS[freq], periods=n, freq=freq)
    shape = 1 + 0.4 * np.sin(2 * np.pi * np.arange(n) / season)
    frames = []

    def add(sid: str, stamps, y, store: str = "STORE-1") -> None:
        frames.append(
            pd.DataFrame({C.SERIES_ID: sid, C.TS: stamps, C.Y: y, "site": store, "region": "north"})
        )

    add("REG-1", ts, rng.poisson(40 * shape).astype(float))
    add("REG-2", ts, rng.poisson(15 * shape).astype(float), "STORE-2")
    gaps = np.ones(n, bool)
    gaps[[20, 41, 42]] = False  # one and two missing steps: filled, flagged
    add("GAPS-1", ts[gaps], rng.poisson(25 * shape)[gaps].astype(float))
    holes = np.ones(n, bool)
    holes[10 : 10 + int(0.3 * n)] = False  # 30% missing > cleaning.max_missing_share
    add("HOLES-1", ts[holes], rng.poisson(25 * shape)[holes].astype(float))
    add("ZERO-1", ts, np.zeros(n), "STORE-2")
    other = pd.date_range(STARTS[freq], periods=n, freq="W-SUN" if freq == "D" else "D")
    add("OTHER-1", other, rng.poisson(5, n).astype(float))
    return pd.concat(frames, ignore_index=True)


def _config(config, tmp_path, freq: str):
    n, horizon, min_length = CASES[freq]
    src = tmp_path / "raw"
    src.mkdir()
    calendar_sales(freq).to_parquet(src / "sales.parquet", index=False)
    return config.replace(
        lakehouse=str(tmp_path / "lake"),
        freq=freq,
        horizon=horizon,
        models=["seasonal_naive", "theta"],
        **{
            "nightly.source": str(src),
            "cleaning.min_length": min_length,
            "backtest.metric": "mase",
            "backtest.windows": 1,
        },
    )


def check_calendar_gold(lake, cfg) -> None:
    freq, horizon = cfg.freq, cfg.horizon
    offset = pd.tseries.frequencies.to_offset(freq)
    series = lake.read("silver/series").set_index(C.SERIES_ID)
    assert sorted(series.index) == ["GAPS-1", "REG-1", "REG-2", "ZERO-1"]
    assert (series["freq"] == freq).all()
    assert series.loc["GAPS-1", "n_filled"] == 3 and series.loc["REG-1", "n_filled"] == 0
    assert series.loc["ZERO-1", "demand_class"] == "intermittent"
    silver = lake.read("silver/readings")
    gaps = silver[silver[C.SERIES_ID] == "GAPS-1"].sort_values(C.TS)
    assert gaps["is_filled"].to_numpy().nonzero()[0].tolist() == [20, 41, 42]
    assert all(offset.is_on_offset(t) for t in gaps[C.TS])

    q = lake.read("silver/quarantine").set_index(C.SERIES_ID)
    assert q["reason"].to_dict() == {"HOLES-1": "too_many_gaps", "OTHER-1": "irregular"}
    assert "cleaning.max_missing_share=0.2" in q.loc["HOLES-1", "detail"]
    assert f"the collection's frequency {freq}" in q.loc["OTHER-1", "detail"]

    sel = lake.read("gold/selection").set_index(C.SERIES_ID)
    assert (sel.loc[series.index, "status"] == "ok").all()
    assert np.isfinite(sel.loc[series.index, "metric_value"]).all()
    assert sel.loc["ZERO-1", "metric_value"] == 0.0 and sel.loc["ZERO-1", "model"] in cfg.intermittent.models
    models = lake.read("gold/models").set_index(C.SERIES_ID)
    for sid in ("REG-1", "REG-2", "GAPS-1"):  # fitted with the frequency's seasons
        chosen = json.loads(models.loc[sid, "model_json"])
        assert chosen["freq"] == freq and tuple(chosen["seasonalities"]) == seasonalities_for(freq)
        assert json.loads(models.loc[sid, "candidates_json"])["seasonal_naive"]["status"] == "ok"

    fc = lake.read("gold/forecasts")
    assert sorted(fc[C.SERIES_ID].unique()) == sorted(series.index)
    assert (fc.groupby(C.SERIES_ID).size() == horizon).all()
    for sid, g in fc.groupby(C.SERIES_ID):
        g = g.sort_values(C.TS)
        cutoff = pd.Timestamp(g["cutoff"].iloc[0])
        assert cutoff == series.loc[sid, "end"]
        expected = pd.date_range(cutoff, periods=horizon + 1, freq=freq)[1:]
        assert list(g[C.TS]) == list(expected), sid
    zero = fc[fc[C.SERIES_ID] == "ZERO-1"].filter(like="yhat")
    assert (zero.to_numpy() == 0).all()


def test_missing_weeks_are_filled_by_max_gap_fill_or_quarantined_with_the_reason():
    """Weekly sales missing weeks: runs up to cleaning.max_gap_fill weeks interpolated,
    longer runs copied from the same weeks a year (52 weeks) earlier, every filled week
    flagged; more missing than cleaning.max_missing_share quarantines with the count."""
    from forecasting.cleaning import clean_series
    from forecasting.config import Config

    weeks = pd.date_range("2021-01-03", periods=156, freq="W-SUN")
    y = 100 + 30 * np.sin(2 * np.pi * np.arange(156) / 52) + np.arange(156) % 3
    keep = np.ones(156, bool)
    keep[[30, 31]] = False  # 2 weeks <= max_gap_fill (3): interpolated
    keep[120:128] = False  # 8 weeks > 3: the same weeks of the year before
    pdf = pd.DataFrame({C.SERIES_ID: "W", C.TS: weeks[keep].astype("datetime64[us]"), C.Y: y[keep]})
    cfg = Config(freq="W-SUN", cleaning={"min_length": 52, "max_gap_fill": 3})
    out = clean_series(pdf, cfg)
    assert out["_reason"].isna().all() and list(out[C.TS]) == list(weeks)
    filled = out["is_filled"].to_numpy()
    assert filled.nonzero()[0].tolist() == [30, 31, *range(120, 128)]
    np.testing.assert_allclose(out[C.Y].to_numpy()[[30, 31]], np.interp([30, 31], [29, 32], y[[29, 32]]))
    np.testing.assert_allclose(out[C.Y].to_numpy()[120:128], y[68:76])
    # max_gap_fill 0: every run is long; weeks 30-31 have no year before them: interpolated
    pdf2 = pdf[pdf[C.TS] != weeks[90]]  # one more missing week, a year after week 38
    zero = clean_series(pdf2, cfg.replace(**{"cleaning.max_gap_fill": 0}))
    assert zero["is_filled"].sum() == 11
    np.testing.assert_allclose(zero[C.Y].to_numpy()[90], y[38])
    np.testing.assert_allclose(zero[C.Y].to_numpy()[[30, 31]], out[C.Y].to_numpy()[[30, 31]])
    holes = clean_series(pdf, cfg.replace(**{"cleaning.max_missing_share": 0.05}))
    assert holes["_reason"].tolist() == ["too_many_gaps"]
    assert (
        holes["_detail"].iloc[0].startswith("10 of 156 steps missing (6% > cleaning.max_missing_share=0.05)")
    )


@pytest.mark.parametrize("freq", ["W-SUN", "MS", pytest.param("QS", marks=pytest.mark.slow)])
def test_nightly_on_calendar_frequencies(tmp_path, config, freq):
    from training.jobs.nightly import nightly
    from training.tables import Lakehouse

    cfg = _config(config, tmp_path, freq)
    lake = Lakehouse.from_config(cfg)
    rep = nightly(lake, cfg)
    assert not rep.failed, rep.steps
    check_calendar_gold(lake, cfg)


@pytest.mark.spark
def test_refine_on_spark_matches_local_on_a_calendar_grid(tmp_path, config, spark):
    """Spark's refine (each series cleaned by the executors) puts monthly series on the
    same calendar grid, with the same fills, classes and quarantines, as the local one."""
    from training.jobs.ingest import ingest
    from training.jobs.refine import refine
    from training.tables import Lakehouse

    cfg = _config(config, tmp_path, "MS")
    silver = {}
    for engine in ("local", "spark"):
        lake = Lakehouse(str(tmp_path / f"lake-{engine}"))
        ingest(lake, tmp_path / "raw")
        refine(lake, cfg.replace(engine=engine, lakehouse=lake.root))
        silver[engine] = {
            name: lake.read(name)
            .drop(columns=["bronze_version"], errors="ignore")
            .sort_values(keys, ignore_index=True)
            for name, keys in (
                ("silver/readings", [C.SERIES_ID, C.TS]),
                ("silver/series", [C.SERIES_ID]),
                ("silver/quarantine", [C.SERIES_ID]),
            )
        }
    for name, frame in silver["local"].items():
        pd.testing.assert_frame_equal(silver["spark"][name], frame, check_dtype=False, obj=name)
    series = silver["spark"]["silver/series"].set_index(C.SERIES_ID)
    assert (series["freq"] == "MS").all() and series.loc["GAPS-1", "n_filled"] == 3
    assert series.loc["ZERO-1", "demand_class"] == "intermittent"
    reasons = silver["spark"]["silver/quarantine"].set_index(C.SERIES_ID)["reason"].to_dict()
    assert reasons == {"HOLES-1": "too_many_gaps", "OTHER-1": "irregular"}


@pytest.mark.spark
@pytest.mark.slow  # CI time: the refine on Spark above is the calendar part; train and forecast are per series
@pytest.mark.parametrize("freq", ["MS", "W-SUN"])
def test_nightly_on_spark_matches_local_on_a_calendar_grid(tmp_path, config, spark, freq):
    """The Spark engine's refine (cleaning on the executors), train and forecast put the
    series on the same calendar grid, with the same fills, quarantines and forecasts."""
    from tests.test_pipeline_engines import assert_same_gold
    from training.jobs.nightly import nightly
    from training.tables import GOLD_BACKTEST, GOLD_FORECASTS, GOLD_PORTFOLIO, GOLD_SELECTION, Lakehouse

    cfg = _config(config, tmp_path, freq).replace(workers=1)
    gold = {
        "forecasts": (GOLD_FORECASTS, [C.SERIES_ID, C.TS]),
        "backtest": (GOLD_BACKTEST, [C.SERIES_ID, "model", "window"]),
        "selection": (GOLD_SELECTION, [C.SERIES_ID]),
        "portfolio": (GOLD_PORTFOLIO, ["level", "key", "day"]),
    }
    lakes = {}
    for engine in ("local", "spark"):
        run_cfg = cfg.replace(
            engine=engine,
            lakehouse=str(tmp_path / f"lake-{engine}"),
            **{"mlflow.tracking_uri": f"sqlite:///{tmp_path / engine}.db"},
        )
        lake = Lakehouse.from_config(run_cfg)
        rep = nightly(lake, run_cfg)
        assert not rep.failed, (engine, rep.steps)
        check_calendar_gold(lake, run_cfg)
        lakes[engine] = {
            k: lake.read(n).sort_values(keys, ignore_index=True) for k, (n, keys) in gold.items()
        }
    assert_same_gold(lakes["local"], lakes["spark"])
