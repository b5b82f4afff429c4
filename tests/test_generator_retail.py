"""mmf generate --retail: item x store daily demand with every demand pattern, a promo
flag known ahead, and a store/region hierarchy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from forecasting import contract as C
from forecasting.demand import demand_class
from forecasting.errors import ConfigError
from forecasting.generator_retail import PROMO, generate_retail


@pytest.fixture(scope="module")
def retail():
    return generate_retail(n_items=40, n_stores=4, days=200, seed=3, horizon=14)


def test_item_by_store_daily_sales_with_a_hierarchy(retail):
    r = retail.readings
    assert list(r.columns) == [C.SERIES_ID, C.TS, C.Y, "temperature", "site", "region", PROMO]
    assert r[C.SERIES_ID].nunique() == 160 and (r.groupby(C.SERIES_ID).size() == 200).all()
    assert r[C.TS].min() == pd.Timestamp("2023-01-02") and r[C.TS].max() == pd.Timestamp("2023-07-20")
    assert (r[C.Y] >= 0).all() and (r[C.Y] == np.round(r[C.Y])).all() and r["temperature"].isna().all()
    assert r.equals(r.sort_values([C.SERIES_ID, C.TS], ignore_index=True))
    # one region per store, one store per series: gold/portfolio's levels add up
    assert (r.groupby("site")["region"].nunique() == 1).all() and r["site"].nunique() == 4
    assert (r.groupby(C.SERIES_ID)[["site", "region"]].nunique() == 1).all().all()
    assert set(r["region"]) <= {"north", "south", "east", "west", "central"}


def test_every_demand_pattern_and_classes_that_mostly_match(retail):
    items = retail.items
    counts = items.drop_duplicates("item")["pattern"].value_counts().to_dict()
    assert counts == {"smooth": 14, "intermittent": 10, "lumpy": 8, "erratic": 6, "zero": 2}
    y = retail.readings.groupby(C.SERIES_ID)[C.Y].apply(lambda s: s.to_numpy())
    cls = items.assign(cls=[demand_class(y[s]) for s in items[C.SERIES_ID]])
    zero = cls[cls["pattern"] == "zero"]
    assert all((y[s] == 0).all() for s in zero[C.SERIES_ID]) and len(zero) == 8
    others = cls[cls["pattern"] != "zero"]
    assert all((y[s] > 0).any() for s in others[C.SERIES_ID])
    assert (others["pattern"] == others["cls"]).mean() > 0.85


def test_promotions_lift_sales_and_are_covariate_rows_planned_ahead(retail):
    r = retail.readings
    assert set(r[PROMO]) == {0.0, 1.0} and 0.05 < r[PROMO].mean() < 0.25
    # an item's promotions are the same in every store of a region
    per_region = r.groupby([r[C.SERIES_ID].str.split("@").str[0], "region", C.TS])[PROMO].nunique()
    assert (per_region == 1).all()
    smooth = r[r[C.SERIES_ID].isin(retail.items.loc[retail.items["pattern"] == "smooth", C.SERIES_ID])]
    lift = smooth.groupby(PROMO)[C.Y].mean()
    assert lift[1.0] > 1.4 * lift[0.0]
    # covariate rows: the days of the readings (the same flags) and the 14 after them,
    # each issued 14 days before its day, so a cutoff at the last reading knows them all
    cov = retail.promo
    assert list(cov.columns) == ["name", "key", C.TS, "issued_at", "value"] and len(cov) == 160 * 214
    assert (cov["name"] == PROMO).all() and ((cov[C.TS] - cov["issued_at"]) == pd.Timedelta("14D")).all()
    past = cov.rename(columns={"key": C.SERIES_ID}).merge(r[[C.SERIES_ID, C.TS, PROMO]])
    assert len(past) == len(r) and (past["value"] == past[PROMO]).all()
    future = cov[cov[C.TS] > r[C.TS].max()]
    assert future[C.TS].nunique() == 14 and future[C.TS].min() == r[C.TS].max() + pd.Timedelta("1D")
    assert future["issued_at"].max() == r[C.TS].max() and future["value"].sum() > 0
    again = generate_retail(n_items=40, n_stores=4, days=200, seed=3, horizon=14)
    pd.testing.assert_frame_equal(again.readings, r)
    pd.testing.assert_frame_equal(again.promo, cov)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="n_items"):
        generate_retail(n_items=0)
    with pytest.raises(ConfigError, match="country"):
        generate_retail(n_items=2, n_stores=1, days=10, country="XX")


def test_mmf_generate_retail(tmp_path):
    from training.cli import cli

    out = tmp_path / "sales.parquet"
    args = ["generate", "--retail", "--items", "5", "--stores", "2", "--days", "30", "--out", str(out)]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "wrote 300 daily sales of 10 item x store series" in res.output
    assert "promotions, to 28 days past the data: " in res.output and "sales_promo.parquet" in res.output
    frame = pd.read_parquet(out)
    assert frame[C.SERIES_ID].nunique() == 10 and list(frame.columns) == list(C.BRONZE_READINGS.names[:6])
    promo = pd.read_parquet(tmp_path / "sales_promo.parquet")
    assert len(promo) == 10 * (30 + 28) and list(promo.columns) == ["name", "key", C.TS, "issued_at", "value"]
    bad = CliRunner().invoke(cli, ["generate", "--retail", "--freq", "h", "--out", str(out)])
    assert bad.exit_code == 2 and "--freq h is not D" in bad.output


def test_daily_meters_expected_outcomes_follow_all_zero():
    """generate()'s expected outcomes at freq D: a dead meter (all 0) is kept there
    (cleaning.all_zero: auto), a stuck one is constant; cleaning agrees with every one."""
    from forecasting.cleaning import clean_series
    from forecasting.config import Config
    from forecasting.generator import generate

    data = generate(n_series=80, days=60, freq="D", seed=1, fault_share=0.5)
    cfg = Config(freq="D", cleaning={"min_length": 30})
    by_id = dict(tuple(data.readings.groupby(C.SERIES_ID)))
    seen = set()
    for row in data.faults.itertuples(index=False):
        out = clean_series(by_id[row.series_id], cfg)
        reason = out["_reason"].iloc[0] if out["_reason"].notna().any() else "ok"
        if row.fault == "constant":
            dead = (by_id[row.series_id][C.Y] == 0).all()
            assert row.expected == ("ok" if dead else "constant")
            seen.add(bool(dead))
        assert reason == row.expected, row
    assert seen == {True, False}
