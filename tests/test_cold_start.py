"""Cold start (issue 15, item 2): new meters too short for per-series models are
forecast from a profile of similar meters (status cold_start), graduate to per-series
models once they have cleaning.min_length readings, and stay out of the gate."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from forecasting import cold_start as cs
from forecasting import contract as C
from forecasting.cleaning import clean_series
from forecasting.comparison import COLD_CHAMPION
from forecasting.config import load_config
from forecasting.generator import generate, write
from forecasting.models import load_fitted
from forecasting.models.cold_profile import phases
from forecasting.pipeline import process_series
from training.jobs.nightly import nightly
from training.tables import Lakehouse

START = pd.Timestamp("2024-01-01")  # a Monday
H = 24


def _cfg(**extra):
    settings = {"horizon": H, "models": ["seasonal_naive"], "freq": "h", "cleaning.min_length": 168}
    return load_config(lakehouse="/tmp/unused", **{**settings, **extra})


def _bronze(sid: str, ts, y) -> pd.DataFrame:
    return pd.DataFrame(
        {
            C.SERIES_ID: sid,
            C.TS: pd.to_datetime(ts).astype("datetime64[us]"),
            C.Y: np.asarray(y, dtype=float),
            "temperature": np.nan,
        }
    )


# -- cleaning: the too_short rule -----------------------------------------------------------
def test_cleaning_lets_a_short_series_through_but_not_a_too_short_one():
    cfg = _cfg()
    day = pd.date_range(START, periods=24, freq="h")
    kept = clean_series(_bronze("A", day, np.arange(24) + 1.0), cfg)
    assert kept["_reason"].isna().all() and len(kept) == 24  # 24 >= one day of hourly steps
    one = clean_series(_bronze("B", day[:1], [3.0]), cfg)  # 1 reading < 24
    assert one["_reason"].tolist() == ["too_short"] and "cold_start.min_length=24" in one["_detail"].iloc[0]
    none = clean_series(_bronze("C", day[:3], [np.nan] * 3), cfg)  # no valid reading at all
    assert none["_reason"].tolist() == ["all_missing"]
    off = clean_series(_bronze("A", day, np.arange(24) + 1.0), _cfg(**{"cold_start.enabled": False}))
    assert (
        off["_reason"].tolist() == ["too_short"] and "cold_start.enabled is false" in off["_detail"].iloc[0]
    )
    # cold_start.min_length: 1 lets a single reading through
    assert (
        clean_series(_bronze("B", day[:1], [3.0]), _cfg(**{"cold_start.min_length": 1}))["_reason"]
        .isna()
        .all()
    )


# -- the profiles ------------------------------------------------------------------------
def _fleet(days: int = 21) -> pd.DataFrame:
    gen = generate(n_series=9, days=days, freq="h", seed=1, clean=True).readings
    return gen.assign(**{C.TS: gen[C.TS].astype("datetime64[us]")})


def test_a_meter_takes_its_site_else_its_region_else_the_fleet_profile():
    cfg = _cfg(**{"cold_start.min_meters": 2})
    rows = _fleet()
    counts = cs.ProfileCounts(cs.period_for("h", cfg))
    for _, part in rows.groupby(rows[C.SERIES_ID] < "MTR-00005"):  # two batches, summed
        counts.add(cs.reference_counts(part, cfg))
    profiles = cs.profiles_for(counts, cfg)
    assert profiles[("fleet", "")]["n_meters"] == 9 and profiles[("fleet", "")]["period"] == 168
    site, region = rows[C.SERIES_ID].map(rows.groupby(C.SERIES_ID)["site"].first()), rows["region"]
    a_site = site.value_counts().index[0]
    a_region = region.iloc[0]
    assert cs.choose(a_site, a_region, profiles, 2)["source"] == "site"
    assert cs.choose("SITE-NEW", a_region, profiles, 2)["source"] == "region"
    assert cs.choose(None, None, profiles, 2)["source"] == "fleet"  # no site, no region
    assert cs.choose(float("nan"), "nowhere", profiles, 2)["source"] == "fleet"
    assert cs.choose(a_site, a_region, profiles, 99)["source"] == "fleet"  # too few meters anywhere
    # nearest: a meter of no known site takes the profile whose shape fits its readings
    business = rows[rows[C.SERIES_ID] == "MTR-00001"].tail(48)
    y, ts = business[C.Y].to_numpy(), business[C.TS].to_numpy()
    found = cs.choose("SITE-NEW", None, profiles, 2, (y, ts, "h"))
    assert found["source"] == "nearest" and found["key"].startswith(("site:", "region:", "fleet"))
    err = {}
    for name, prof in profiles.items():
        if prof["n_meters"] < 2 and name[0] != "fleet":
            continue
        shape = np.asarray(prof["shape"])[phases(ts, "h", 168)]
        err[name] = np.abs(y - y.sum() / shape.sum() * shape).mean()
    assert found["shape"] == profiles[min(err, key=err.get)]["shape"]
    prof = profiles[("fleet", "")]
    assert np.all(np.asarray(prof["lo"]["80"]) <= np.asarray(prof["shape"]))
    assert np.all(np.asarray(prof["hi"]["95"]) >= np.asarray(prof["hi"]["80"]))
    # the same counts from one series at a time (the Spark engine's way)
    one_by_one = cs.ProfileCounts(168)
    for _, part in rows.groupby(C.SERIES_ID):
        one_by_one.add(cs.reference_counts(part, cfg))
    assert cs.profiles_for(one_by_one, cfg) == profiles


def test_a_cold_start_forecast_follows_the_profile_from_the_meter_s_own_level():
    cfg = _cfg(**{"cold_start.min_meters": 1})
    rows = _fleet(days=35)
    held = rows[C.SERIES_ID] == "MTR-00001"
    counts = cs.ProfileCounts(168)
    counts.add(cs.reference_counts(rows[~held], cfg))
    profiles = cs.profiles_for(counts, cfg)
    meter = rows[held].reset_index(drop=True)
    cut = meter.iloc[24 * 30 + 13 : 24 * 32 + 13]  # two days, starting a Wednesday 13:00
    attrs = pd.DataFrame(
        {C.SERIES_ID: ["MTR-00001"], "site": [meter["site"][0]], "region": [meter["region"][0]]}
    ).assign(n_obs=len(cut), n_filled=0, start=cut[C.TS].iloc[0])
    out = process_series(cs.attach(cut[[C.SERIES_ID, C.TS, C.Y]], cs.payload_rows(attrs, profiles, cfg)), cfg)
    row = out.iloc[0]
    assert row["status"] == C.COLD_START and row["model"] == "cold_profile:site", row["reason"]
    assert json.loads(row["backtest_json"]) == [] and np.isnan(row["metric_value"])
    fc = load_fitted(row["model_json"]).predict(H, level=[80, 95])
    nxt = pd.Timestamp(cut[C.TS].iloc[-1]) + pd.Timedelta("1h")
    state = json.loads(row["model_json"])
    assert state["state"]["next_phase"] == phases(np.array([nxt.to_datetime64()]), "h", 168)[0]
    assert np.all(fc["lo-95"] <= fc["lo-80"]) and np.all(fc["lo-80"] <= fc["mean"])
    assert np.all(fc["mean"] <= fc["hi-80"]) and np.all(fc["hi-80"] <= fc["hi-95"])
    actual = meter[C.Y].to_numpy()[24 * 32 + 13 : 24 * 32 + 13 + H]
    flat = np.full(H, cut[C.Y].mean())
    assert np.abs(fc["mean"] - actual).mean() < np.abs(flat - actual).mean()  # the shape helps


def test_without_any_established_meter_a_short_series_uses_its_own_level():
    cfg = _cfg()
    day = pd.date_range(START, periods=30, freq="h")
    rows = _bronze("NEW", day, 1 + np.sin(np.arange(30)))
    assert process_series(rows, cfg).iloc[0]["status"] in (C.OK, C.FALLBACK)  # no payload: per-series
    attrs = pd.DataFrame(
        {C.SERIES_ID: ["NEW"], "site": ["S"], "region": [None], "n_obs": [30], "n_filled": [0]}
    )
    payloads = cs.payload_rows(attrs.assign(start=day[0]), {}, cfg)  # no established meter anywhere
    row = process_series(cs.attach(rows, payloads), cfg).iloc[0]
    assert row["status"] == C.COLD_START and row["model"] == "cold_profile:own", row["reason"]
    fc = load_fitted(row["model_json"]).predict(H, level=[80, 95])
    assert np.allclose(fc["mean"], rows[C.Y].mean()) and np.all(fc["hi-95"] > fc["lo-95"])


def test_the_forecast_job_s_refit_keeps_the_profile_and_moves_the_level():
    """A kept champion's cold-start model refitted on newer readings (forecasting.refit):
    the same profile, the level of the new readings, the phase after the new end."""
    from forecasting.refit import refit_series, refit_specs, with_specs

    cfg = _cfg()
    day = pd.date_range(START, periods=30, freq="h")
    attrs = pd.DataFrame(
        {C.SERIES_ID: ["NEW"], "site": [None], "region": [None], "n_obs": [30], "n_filled": [0]}
    )
    payloads = cs.payload_rows(attrs.assign(start=day[0]), {}, cfg)
    row = process_series(cs.attach(_bronze("NEW", day, 1 + np.sin(np.arange(30))), payloads), cfg).iloc[0]
    later = _bronze("NEW", pd.date_range(START, periods=40, freq="h"), 3 + np.sin(np.arange(40)))
    specs = refit_specs(pd.DataFrame({C.SERIES_ID: ["NEW"], "model_json": [row["model_json"]]}))
    out = refit_series(with_specs(later, specs), cfg).iloc[0]
    assert out["status"] == C.OK, out["reason"]
    before, after = json.loads(row["model_json"]), json.loads(out["model_json"])
    assert after["params"] == before["params"] and after["model"] == "cold_profile"
    assert after["state"]["level"] == pytest.approx(later[C.Y].mean())
    fc = load_fitted(out["model_json"]).predict(H, level=[80, 95])
    assert np.allclose(fc["mean"], later[C.Y].mean())


# -- through the nightly ---------------------------------------------------------------
class Feed:
    """Generated hourly meters released into a nightly source folder, file by file."""

    def __init__(self, folder, n_series: int, days: int) -> None:
        self.gen = generate(n_series=n_series, days=days, freq="h", seed=5, clean=True)
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def release(self, name: str, days: tuple[int, int], ids, **columns) -> None:
        r = self.gen.readings
        day = (r[C.TS] - START) // pd.Timedelta("1D")
        part = r[(day >= days[0]) & (day <= days[1]) & r[C.SERIES_ID].isin(ids)].assign(**columns)
        write(
            dataclasses.replace(self.gen, readings=part.reset_index(drop=True)),
            self.folder / f"{name}.parquet",
        )


def _night_config(config, source, **extra):
    settings = {
        "nightly.source": str(source),
        "cleaning.min_length": 168,
        "cold_start.min_meters": 1,
        "cold_start.match": "hierarchy",  # site, else region, else fleet (nearest: tested below)
        "workers": 1,
        "mlflow.sample_plots": 0,
        "models": ["seasonal_naive", "weekly_naive"],
        "monitoring.enabled": False,
    }
    return config.replace(**{**settings, **extra})


def _new_meters(feed: Feed, last_day: int) -> dict[str, str]:
    """Three new meters with 3 days of history up to ``last_day``: one at a known site,
    one at a new site of a known region, one with neither; and one with a single reading."""
    ids = sorted(feed.gen.readings[C.SERIES_ID].unique())[-3:]
    first = (last_day - 2, last_day)
    feed.release("new-site", first, ids[:1])
    feed.release("new-region", first, ids[1:2], site="SITE-NEW")
    feed.release("new-fleet", first, ids[2:3], site=None, region=None)
    single = feed.gen.readings[feed.gen.readings[C.SERIES_ID] == ids[0]].iloc[:1]
    write(
        dataclasses.replace(feed.gen, readings=single.assign(series_id="ONE-READING")),
        feed.folder / "one.parquet",
    )
    return {ids[0]: "site", ids[1]: "region", ids[2]: "fleet"}


def _selection(lake: Lakehouse, run_id: str) -> pd.DataFrame:
    sel = lake.read("gold/selection")
    return sel[sel["run_id"] == run_id].set_index(C.SERIES_ID)


def test_new_meters_get_cold_start_forecasts_then_graduate(tmp_path, config):
    """Night 1: three new meters with 3 days each get cold-start forecasts (site, region,
    fleet profile), a meter with one reading is quarantined; night 2, a week later: they
    graduate to per-series models (under `retrain.policy: changed`, refit `cold_start`, the
    others carried), and the gate leaves them out of its comparison."""
    feed = Feed(tmp_path / "raw", n_series=8, days=21)
    old = sorted(feed.gen.readings[C.SERIES_ID].unique())[:-3]
    feed.release("history", (0, 12), old)
    new = _new_meters(feed, 12)
    lake = Lakehouse.from_config(config)
    cfg = _night_config(config, tmp_path / "raw")
    rep = nightly(lake, cfg)
    assert not rep.failed, rep.failure
    assert rep.train.status_counts.get(C.COLD_START) == 3, rep.train.status_counts
    sel = _selection(lake, rep.train.run_id)
    for sid, source in new.items():
        assert sel.at[sid, "status"] == C.COLD_START and sel.at[sid, "model"] == f"cold_profile:{source}"
    series = lake.read("silver/series").set_index(C.SERIES_ID)
    quarantine = lake.read("silver/quarantine").set_index(C.SERIES_ID)
    assert set(new) <= set(series.index) and not set(new) & set(quarantine.index)
    assert quarantine.at["ONE-READING", "reason"] == "too_short"
    fc = lake.read("gold/forecasts")
    cold = fc[fc[C.SERIES_ID].isin(list(new))]
    assert cold.groupby(C.SERIES_ID).size().to_dict() == {sid: H for sid in new}
    assert np.isfinite(cold["yhat"]).all() and (cold["yhat_lower_95"] <= cold["yhat_upper_95"]).all()
    assert set(cold["model"]) == {f"cold_profile:{s}" for s in new.values()}

    feed.release("week", (13, 19), list(feed.gen.readings[C.SERIES_ID].unique()))
    again = nightly(lake, cfg.replace(**{"retrain.policy": "changed"}))  # graduates under it too
    assert not again.failed, again.failure
    sel = _selection(lake, again.train.run_id)
    assert set(sel.loc[list(new), "status"]) <= {C.OK, C.FALLBACK}, sel.loc[list(new)]
    assert (sel.loc[list(new), "refit"] == C.COLD_START_REFIT).all(), sel.loc[list(new), "refit"]
    assert (sel.loc[old, "refit"] == C.CARRIED).all(), sel.loc[old, "refit"]
    assert C.COLD_START not in again.train.status_counts
    gate = lake.read("gold/gate")
    gate = gate[gate["run_id"] == again.train.run_id].set_index(C.SERIES_ID)
    assert (gate.loc[list(new), "reason"] == COLD_CHAMPION).all()
    assert (gate.drop(index=list(new))["reason"] != COLD_CHAMPION).all()


@pytest.mark.spark
def test_cold_start_profiles_and_batches_on_spark_equal_local(tmp_path, config, spark):
    """The Spark engine's profiles (counted by the executors over several batches) and
    batches (the profiles joined by them) are the local engine's."""
    from training.engines import get_engine
    from training.jobs import cold_start as cold_job
    from training.jobs.ingest import ingest
    from training.jobs.refine import refine
    from training.jobs.train import Plan

    feed = Feed(tmp_path / "raw", n_series=8, days=10)
    feed.release("history", (0, 8), sorted(feed.gen.readings[C.SERIES_ID].unique())[:-3])
    new = _new_meters(feed, 8)
    cfg = _night_config(
        config, tmp_path / "raw", batch_rows=1000, freq="h", **{"cold_start.match": "nearest"}
    )
    lake = Lakehouse.from_config(cfg)
    ingest(lake, str(tmp_path / "raw"))
    refine(lake, cfg)
    version = lake.version("silver/readings")
    plan = Plan(lake, version, lake.batches("silver/readings", version, cfg.batch_rows))
    assert plan.n > 1
    local = cold_job.prepare(lake, cfg, plan, get_engine(cfg))
    spark_cfg = cfg.replace(engine="spark")
    engine = get_engine(spark_cfg)
    remote = cold_job.prepare(lake, spark_cfg, plan, engine)
    assert remote.profiles == local.profiles and ("fleet", "") in local.profiles
    for i in range(plan.n):
        want = local.batch(get_engine(cfg), plan, i, plan.batch(i))()
        got = remote.batch(engine, plan, i, plan.batch(i))().toPandas()
        cols = [C.SERIES_ID, C.TS, cs.COLD_COLUMN]
        want, got = (f[cols].fillna("").sort_values(cols[:2], ignore_index=True) for f in (want, got))
        pd.testing.assert_frame_equal(want, got, check_dtype=False)
    found = [sid for i in range(plan.n) for sid in local.payloads(local.attrs(plan.ranges[i])())[C.SERIES_ID]]
    assert sorted(found) == sorted(new)


@pytest.mark.slow
@pytest.mark.spark
def test_cold_start_on_spark_matches_local(tmp_path, config, spark):
    """One nightly on each engine (Spark in several batches): the same cold-start series,
    profiles and forecasts."""
    feed = Feed(tmp_path / "raw", n_series=8, days=12)
    old = sorted(feed.gen.readings[C.SERIES_ID].unique())[:-3]
    feed.release("history", (0, 8), old)
    new = _new_meters(feed, 8)
    out = {}
    for engine, extra in (("local", {}), ("spark", {"batch_rows": 1000})):
        cfg = _night_config(
            config, tmp_path / "raw", engine=engine, lakehouse=str(tmp_path / engine), **extra
        )
        lake = Lakehouse.from_config(cfg)
        rep = nightly(lake, cfg)
        assert not rep.failed, rep.failure
        sel = _selection(lake, rep.train.run_id)
        fc = lake.read("gold/forecasts")
        out[engine] = (
            sel.loc[sorted(new), ["status", "model", "reason"]],
            fc[fc[C.SERIES_ID].isin(list(new))].sort_values([C.SERIES_ID, C.TS])[["yhat", "yhat_upper_95"]],
        )
    pd.testing.assert_frame_equal(out["local"][0], out["spark"][0])
    assert set(out["spark"][0]["status"]) == {C.COLD_START}
    np.testing.assert_allclose(out["local"][1].to_numpy(), out["spark"][1].to_numpy(), rtol=1e-9)
