"""Covariates: the leakage rule, fallbacks, holidays, the refusals of bad files, and a
series' regressors in a backtest (forecasting.covariates)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from forecasting import covariates as cov
from forecasting.backtest import backtest
from forecasting.config import Config
from forecasting.errors import DataContractError
from forecasting.models.seasonal_naive import SeasonalNaive
from forecasting.series import prepare

H = pd.Timedelta("1h")


def issues(rows):
    return pd.DataFrame(rows, columns=["ts", "issued_at", "value"]).astype(
        {"ts": "datetime64[us]", "issued_at": "datetime64[us]", "value": float}
    )


def test_known_at_takes_the_latest_issue_up_to_the_cutoff_only():
    t0 = pd.Timestamp("2024-01-01 00:00")
    rows = issues(
        [
            (t0 + 5 * H, t0, 1.0),  # forecast issued at t0
            (t0 + 5 * H, t0 + 2 * H, 2.0),  # a newer forecast
            (t0 + 5 * H, t0 + 5 * H, 99.0),  # the observation, issued at its own time
        ]
    )
    assert cov.known_at(rows, t0 + H).loc[t0 + 5 * H] == 1.0
    assert cov.known_at(rows, t0 + 3 * H).loc[t0 + 5 * H] == 2.0
    assert cov.known_at(rows, t0 + 5 * H).loc[t0 + 5 * H] == 99.0
    assert cov.known_at(rows, t0 - H).empty


def test_fallbacks_fill_only_from_the_history_up_to_the_cutoff():
    ts = pd.date_range("2024-01-01", periods=24 * 14, freq="h").to_numpy().astype("datetime64[us]")
    hist = np.arange(len(ts), dtype=float)
    cutoff = ts[-1]
    targets = (cutoff + np.arange(1, 4) * np.timedelta64(1, "h")).astype("datetime64[us]")
    values, used = cov.future_values(ts, hist, issues([]), cutoff, targets, "persistence")
    assert used and values.tolist() == [len(ts) - 168 + k for k in range(3)]
    zero, _ = cov.future_values(ts, hist, issues([]), cutoff, targets, "zero")
    assert zero.tolist() == [0, 0, 0]
    clim, _ = cov.future_values(ts, hist, issues([]), cutoff, targets, "climatology")
    # the same hour of the week, in the two weeks of history
    assert clim[0] == pytest.approx((hist[0] + hist[168]) / 2)
    covered, used = cov.future_values(
        ts, hist, issues([(targets[0], cutoff, -5.0)]), cutoff, targets[:1], "zero"
    )
    assert covered.tolist() == [-5.0] and not used


def test_holiday_flags_of_country_and_region():
    ts = pd.to_datetime(["2024-12-25 10:00", "2024-12-24 10:00", "2024-03-18 09:00"]).to_numpy()
    assert cov.holiday_flags(ts, "GB").tolist() == [1.0, 0.0, 0.0]
    # St Patrick's Day (observed on Monday 18 March 2024) is a holiday of Northern Ireland only
    assert cov.holiday_flags(ts, "GB", "NIR").tolist() == [1.0, 0.0, 1.0]


def _config(**kw):
    base = {
        "horizon": 6,
        "backtest.windows": 2,
        "covariates": [{"name": "temp", "key": "region", "fallback": "zero"}],
    }
    return Config().replace(**{**base, **kw})


def test_check_rows_refuses_unknown_names_keys_overlaps_and_holes():
    config = _config()
    t0 = pd.Timestamp("2024-01-01")
    good = pd.DataFrame(
        {"name": "temp", "key": "north", "ts": [t0 + k * H for k in (1, 2, 3)], "issued_at": t0, "value": 1.0}
    )
    keys = {"series": {"a"}, "site": set(), "region": {"north"}}
    cov.check_rows(good, cov.specs(config), keys, None, "f.csv")
    with pytest.raises(DataContractError, match="'wind' is not declared"):
        cov.check_rows(good.assign(name="wind"), cov.specs(config), keys, None, "f.csv")
    with pytest.raises(DataContractError, match="unknown region key 'south'"):
        cov.check_rows(good.assign(key="south"), cov.specs(config), keys, None, "f.csv")
    with pytest.raises(DataContractError, match="overlapping issues"):
        cov.check_rows(pd.concat([good, good.iloc[:1]]), cov.specs(config), keys, None, "f.csv")
    with pytest.raises(DataContractError, match="overlaps 3 stored"):
        cov.check_rows(good, cov.specs(config), keys, good, "f.csv")
    holed = good.iloc[[0, 2]]
    more = pd.concat([holed, holed.assign(ts=t0 + 4 * H).iloc[:1]])
    with pytest.raises(DataContractError, match="missing horizon step 2024-01-01 02:00"):
        cov.check_rows(more, cov.specs(config), keys, None, "f.csv")
    with pytest.raises(DataContractError, match="non-numeric value 'warm'"):
        cov.typed(good.assign(value=["1", "warm", "2"]), "f.csv")
    with pytest.raises(DataContractError, match="column issued_at has value 'yesterday'"):
        cov.typed(good.assign(issued_at="yesterday"), "f.csv")


def _series(n=24 * 10):
    ts = pd.date_range("2024-01-01", periods=n, freq="h")
    y = 10 + np.sin(np.arange(n) * 2 * np.pi / 24)
    return pd.DataFrame({"series_id": "a", "ts": ts, "y": y, "region": "north"})


def test_backtest_uses_only_covariate_values_issued_by_each_cutoff():
    """The leakage rule end to end: observations after a window's cutoff are poison (1e6);
    forecasts issued at the cutoff are 7.0. The model must see 7.0 (or its fallback,
    zero) in each window's forecast steps, never 1e6."""
    config = _config()
    rows = _series()
    ts = rows["ts"]
    n, h = len(rows), config.horizon
    cuts = [n - h - h, n - h]
    obs = issues([(t, t, 1.0) for t in ts])
    poison = ts[cuts[0] :]  # every value observed after the first cutoff
    obs.loc[obs["ts"].isin(poison), "value"] = 1e6
    fc = issues([(ts[c + k], ts[c - 1], 7.0) for c in cuts for k in range(h - 1)])  # the last step: none
    covs = pd.concat([obs, fc]).assign(name="temp", key="north")
    series = rows[["series_id", "region"]].drop_duplicates()
    attached = cov.attach(rows.drop(columns="region"), series, covs, config)
    data = prepare(attached, config)
    assert data.X is not None and data.covariates is not None

    seen: list[np.ndarray] = []

    class Recording(SeasonalNaive):
        def predict(self, h, X=None, level=(80, 95)):
            seen.append(np.array(X))
            return super().predict(h, X=None, level=level)

    out = backtest(
        lambda: Recording(season_length=24),
        data.y,
        data.X,
        data.ts,
        horizon=h,
        windows=2,
        step=h,
        levels=[80],
        m=24,
        future_X=data.covariates.future_X,
    )
    assert [r["cutoff"] for r in out] == cuts
    for x in seen:
        assert x[:, 0].tolist() == [7.0] * (h - 1) + [0.0]  # the issue, then the zero fallback
    # without the rule the window would have seen the poisoned observations
    assert np.all(data.X[cuts[1] :, 0] == 1e6)


def test_future_records_the_fallback_used_per_series():
    config = _config(covariates=[{"name": "temp", "key": "region", "fallback": "persistence"}], holidays=True)
    ends = pd.Series(
        pd.to_datetime(["2024-12-24 23:00", "2024-12-24 23:00"]).astype("datetime64[us]"), index=["a", "b"]
    )
    targets = pd.DataFrame(
        {
            "series_id": np.repeat(["a", "b"], 2),
            "horizon": 2,
            "ts": np.tile(pd.to_datetime(["2024-12-25 00:00", "2024-12-25 01:00"]), 2),
        }
    )
    series = pd.DataFrame({"series_id": ["a", "b"], "site": None, "region": ["north", "south"]})
    end = ends.iloc[0]
    rows = issues([(end + k * H, end, 3.0) for k in (1, 2)] + [(end - 167 * H, end - 167 * H, 5.0)])
    covs = pd.concat([rows.assign(key="north"), rows.iloc[2:].assign(key="south")]).assign(name="temp")
    out = cov.future(ends, targets, series, covs, config)
    assert out["cov_holiday"].tolist() == [1.0] * 4
    a, b = out[out.series_id == "a"], out[out.series_id == "b"]
    assert a["cov_temp"].tolist() == [3.0, 3.0] and a[cov.FALLBACK_COLUMN].iloc[0] == ""
    assert json.loads(b[cov.FALLBACK_COLUMN].iloc[0]) == {"temp": "persistence"}
    assert b["cov_temp"].tolist() == [5.0, 5.0]  # one week earlier, else the last known value


def test_past_only_covariates_enter_lagged_by_the_horizon():
    config = _config(covariates=[{"name": "load_prev", "kind": "past_only", "key": "series"}])
    rows = _series(60)
    obs = issues([(t, t, float(i)) for i, t in enumerate(rows["ts"])]).assign(name="load_prev", key="a")
    attached = cov.attach(rows.drop(columns="region"), rows[["series_id"]].drop_duplicates(), obs, config)
    data = prepare(attached, config)
    assert data.X[:, 0].tolist() == [0.0] * 6 + list(range(54))


# -- through the jobs: ingest, refine, nightly --------------------------------------------
def _weather_lake(tmp_path, config):
    """6 hourly meters x 14 days ingested and refined, ARIMA with holidays and the
    regions' temperature declared; the generated weather table, less the last region's
    final forecasts (so its horizon falls back), and a forecast issued at the data's end
    for the other regions, written to weather.parquet (not ingested)."""
    from forecasting.generator import generate, weather_table, write
    from training.jobs.ingest import ingest
    from training.jobs.refine import refine
    from training.tables import Lakehouse

    data = generate(n_series=6, days=14, freq="h", seed=3, clean=True)
    src = tmp_path / "raw"
    src.mkdir()
    write(data, src / "meters.parquet")
    cfg = config.replace(
        **{
            "models": ["arima"],
            "model_params": {"arima": {"seasonal": False, "max_history": 200}},
            "nightly.source": str(src),
            "holidays": True,
            "covariates": [{"name": "temperature", "key": "region", "fallback": "persistence"}],
            "backtest.prefer": None,
        }
    )
    lake = Lakehouse.from_config(cfg)
    ingest(lake, src, strict=False)
    refine(lake, cfg)
    weather = weather_table(data.readings, horizon=24, seed=1)
    regions = sorted(weather["key"].unique())
    end = data.readings["ts"].max()
    late = (
        (weather["key"] == regions[-1])
        & (weather["issued_at"] >= end - pd.Timedelta("1D"))
        & (weather["issued_at"] < weather["ts"])
    )
    ahead = end + pd.to_timedelta(np.arange(1, 25), "h")
    future = pd.concat(
        [
            pd.DataFrame({"name": "temperature", "key": r, "ts": ahead, "issued_at": end, "value": 5.0})
            for r in regions[:-1]
        ]
    )
    good = pd.concat([weather[~late], future], ignore_index=True)
    path = tmp_path / "weather.parquet"
    good.to_parquet(path, index=False)
    return cfg, lake, data, regions, good, path


def _fallbacks_as_expected(lake, data, regions):
    fc = lake.read("gold/forecasts")
    by_region = data.readings.drop_duplicates("series_id").set_index("series_id")["region"]
    fell = fc.drop_duplicates("series_id").set_index("series_id")["covariate_fallback"]
    assert len(fell) == 6
    for sid, text in fell.items():
        expected = {"temperature": "persistence"} if by_region[sid] == regions[-1] else {}
        assert (json.loads(text) if text else {}) == expected


def test_nightly_with_declared_weather_and_holidays(tmp_path, config):
    """A generated weather table ingested as covariates reaches ARIMA as X at training and
    at forecast time; a region whose forecasts stop early gets the fallback, recorded
    per series in gold/forecasts; bad files are refused and nothing is lost."""
    from training.jobs.covariates import ingest_covariates
    from training.jobs.nightly import nightly

    cfg, lake, data, regions, good, path = _weather_lake(tmp_path, config)
    bad = tmp_path / "bad.parquet"
    good.assign(key="atlantis").to_parquet(bad, index=False)
    with pytest.raises(DataContractError, match="unknown region key 'atlantis'"):
        ingest_covariates(lake, cfg, bad)
    assert not lake.exists("bronze/covariates")
    n, _ = ingest_covariates(lake, cfg, path)
    assert n == len(good)
    assert ingest_covariates(lake, cfg, path)[0] == 0  # the same file again: skipped
    good.iloc[:5].to_parquet(bad, index=False)
    with pytest.raises(DataContractError, match="overlaps 5 stored"):
        ingest_covariates(lake, cfg, bad)
    assert len(lake.read("bronze/covariates")) == n  # nothing lost, nothing added

    nightly(lake, cfg)
    assert len(lake.read("silver/covariates")) == n
    models = lake.read("gold/models")
    assert (models["status"] == "ok").all(), models["reason"].tolist()
    fitted = json.loads(models["model_json"].iloc[0])
    assert np.asarray(fitted["state"]["X"]).shape[1] == 2  # cov_holiday, cov_temperature
    _fallbacks_as_expected(lake, data, regions)


def test_global_gbm_takes_every_declared_covariate_and_forecasts_with_them():
    """global_gbm trains on cov_holiday and cov_temperature (two features), is scored and
    chosen like any candidate, and its fitted model forecasts from a (h, 2) X."""
    pytest.importorskip("lightgbm")
    from forecasting.generator import generate, weather_table
    from forecasting.models.global_models import gbm as gbm_mod
    from forecasting.pipeline import GLOBAL_COLUMN, load_fitted, process_series
    from training.global_models import train_global_models

    data = generate(n_series=4, days=21, freq="h", seed=1, clean=True).readings
    config = Config().replace(
        horizon=24,
        freq="h",
        models=["seasonal_naive", "global_gbm"],
        holidays=True,
        covariates=[{"name": "temperature", "key": "region"}],
        model_params={"global_gbm": {"num_boost_round": 15, "min_data_in_leaf": 5, "windows_per_series": 8}},
        **{"backtest.windows": 2},
    )
    series = data.drop_duplicates("series_id")[["series_id", "site", "region"]]
    attached = cov.attach(data[["series_id", "ts", "y"]], series, weather_table(data, horizon=24), config)
    report = train_global_models(attached, config)
    run = report.runs["global_gbm"]
    assert run.n_ok == 4
    weights = report.weights()[-1]  # the fit on the full histories
    assert weights.meta["n_exog"] == 2 and gbm_mod.feature_names(weights.meta)[-2:] == ["exog_0", "exog_1"]
    rows = [process_series(g, config).iloc[0] for _, g in report.attach(attached).groupby("series_id")]
    cands = json.loads(rows[0]["candidates_json"])
    assert cands["global_gbm"]["status"] == "ok", cands
    glob = json.loads(report.attach(attached)[GLOBAL_COLUMN].dropna().iloc[0])["global_gbm"]
    model = load_fitted(glob["model_json"])
    fc = model.predict(24, X=np.zeros((24, 2)), level=[80])
    assert np.all(np.isfinite(fc["mean"]))
    with pytest.raises(Exception, match=r"shape \(24, 2\)"):
        model.predict(24, X=np.zeros((24, 1)), level=[80])


def test_prophet_takes_every_regressor_column():
    pytest.importorskip("prophet")
    from forecasting.models import load_fitted
    from forecasting.models.prophet_model import ProphetModel

    n = 24 * 14
    ts = pd.date_range("2024-01-01", periods=n, freq="h")
    X = np.column_stack([np.arange(n) % 24 == 12, np.sin(np.arange(n) / 10)]).astype(float)
    y = 5 + 3 * X[:, 0] + 2 * X[:, 1] + np.random.default_rng(0).normal(0, 0.1, n)
    model = ProphetModel(country=None, uncertainty_samples=50, freq="h").fit(y, X, ts.to_numpy())
    back = load_fitted(json.dumps(model.to_dict()))
    fc = back.predict(24, X=X[:24], level=[80])
    np.testing.assert_allclose(fc["mean"], 5 + 3 * X[:24, 0] + 2 * X[:24, 1], atol=0.5)
    with pytest.raises(Exception, match="2 regressors"):
        back.predict(24, X=X[:24, :1], level=[80])


@pytest.mark.slow  # ~3.5 min here: a local nightly, then Spark's forecast and training
def test_spark_trains_and_forecasts_with_covariates_like_local(tmp_path, config, spark):
    """``--engine spark``: training ships each batch with its covariates (joined on the
    driver by key, a batch at a time) and fits the local path's models; the forecast's
    executors get each series' silver/covariates rows (read by delta-spark, joined by
    key) and give the local path's forecasts and fallbacks."""
    from training.jobs import forecast as forecast_job
    from training.jobs.covariates import ingest_covariates
    from training.jobs.nightly import nightly
    from training.jobs.train import train

    cfg, lake, data, regions, _, path = _weather_lake(tmp_path, config)
    ingest_covariates(lake, cfg, path)
    nightly(lake, cfg)
    cols = [
        "series_id",
        "ts",
        "yhat",
        "yhat_lower_80",
        "model_version",
        "cutoff",
        "fit",
        "covariate_fallback",
    ]
    local = lake.read("gold/forecasts")[cols].sort_values(["series_id", "ts"], ignore_index=True)
    forecast_job.forecast(lake, cfg.replace(engine="spark"), force=True)
    _fallbacks_as_expected(lake, data, regions)
    on_spark = lake.read("gold/forecasts")[cols].sort_values(["series_id", "ts"], ignore_index=True)
    pd.testing.assert_frame_equal(on_spark, local, check_exact=False, rtol=1e-9)
    rep = train(lake, cfg.replace(engine="spark"))
    models = lake.read("gold/models").sort_values(["run_id", "series_id"])
    first, second = (g.set_index("series_id") for _, g in models.groupby("run_id", sort=False))
    assert rep.run_id in set(models["run_id"]) and len(first) == len(second) == 6
    assert (second["model_json"] == first["model_json"].reindex(second.index)).all()
