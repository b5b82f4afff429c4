"""process_series, model choice and fallback, timeouts (forecasting.timeout), ensembles, load_fitted."""

from __future__ import annotations

import json
import math
import signal
import threading
import time

import numpy as np
import pandas as pd
import pytest

from forecasting import contract
from forecasting.choice import Candidate, combine, decide, rank
from forecasting.config import from_dict
from forecasting.frequency import freq_of as infer_freq
from forecasting.frequency import seasonalities_for
from forecasting.models import MODELS
from forecasting.models.base import Forecaster, normal_intervals
from forecasting.pipeline import load_fitted, process_series, result_frame_empty
from forecasting.timeout import CandidateTimeout, run_with_timeout

H = 24


# -- fake models -----------------------------------------------------------------------
class Shifted(Forecaster):
    """Seasonal naive plus a constant SHIFT, unit-sigma intervals: tiny and deterministic."""

    name = "fake_same"
    SHIFT = 0.0
    seen: list = []  # (class name, season_length, X shape or None) per fit

    def fit(self, y, X=None, ts=None):
        Shifted.seen.append((self.name, self.season_length, None if X is None else X.shape))
        m = min(self.season_length, len(y))
        self.last_ = np.asarray(y[-m:], dtype=float).copy()
        return self

    def predict(self, h, X=None, level=(80, 95)):
        mean = self.last_[np.arange(h) % len(self.last_)] + self.SHIFT
        return normal_intervals(mean, 1.0, level)

    def get_state(self):
        return {"last": self.last_.tolist()}

    def set_state(self, state):
        self.last_ = np.asarray(state["last"], dtype=float)


class Same2(Shifted):
    name = "fake_same2"


class Up(Shifted):
    name = "fake_up"
    SHIFT = 1.0


class Down(Shifted):
    name = "fake_down"
    SHIFT = -1.0


class WithExog(Shifted):
    name = "fake_exog"
    supports_exog = True


class Fails(Shifted):
    name = "fake_fail"

    def fit(self, y, X=None, ts=None):
        raise RuntimeError("boom in fit")


class Sleeps(Shifted):
    name = "fake_sleep"

    def fit(self, y, X=None, ts=None):
        time.sleep(5)
        return super().fit(y, X, ts)


FAKES = (Shifted, Same2, Up, Down, WithExog, Fails, Sleeps)


@pytest.fixture(autouse=True)
def fakes(monkeypatch):
    for cls in FAKES:
        monkeypatch.setitem(MODELS, cls.name, cls)
    Shifted.seen = []


def make_series(n=24 * 12, freq="h", seed=0, sid="meter-1", temperature=True):
    rng = np.random.default_rng(seed)
    ts = pd.date_range("2024-03-01", periods=n, freq=freq)
    t = np.arange(n)
    y = 10 + 3 * np.sin(2 * np.pi * t / 24) + rng.normal(0, 0.3, n)
    pdf = pd.DataFrame({"series_id": sid, "ts": ts, "y": y, "is_filled": False, "is_outlier": False})
    if temperature:
        pdf["temperature"] = 15 + rng.normal(0, 2, n)
    return pdf


def cfg(**kw):
    data = {"horizon": H, "models": ["seasonal_naive"], "backtest": {"windows": 2}, "model_timeout_s": 30}
    for key, value in kw.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return from_dict(data)


def stable(df):
    """The frame without the one non-reproducible field (candidates' wall-clock fit_s)."""
    df = df.copy()
    cands = json.loads(df.loc[0, "candidates_json"])
    for c in cands.values():
        c.pop("fit_s")
    df.loc[0, "candidates_json"] = json.dumps(cands)
    return df


# -- output shape ----------------------------------------------------------------------
def test_output_schema_matches_train_result():
    out = process_series(make_series(), cfg())
    empty = result_frame_empty()
    assert list(out.columns) == contract.TRAIN_RESULT.names == list(empty.columns)
    assert out.dtypes.to_dict() == empty.dtypes.to_dict()
    assert len(out) == 1
    # and it converts back to the Arrow schema without loss (what the engines do)
    import pyarrow as pa

    assert (
        pa.Table.from_pandas(out, schema=contract.TRAIN_RESULT, preserve_index=False).schema
        == contract.TRAIN_RESULT
    )


def test_the_backtest_forecasts_kept_follow_store_forecasts():
    """``forecasts_json`` holds the windows of the chosen model (default), of every
    candidate (``all``) or none; its gold/backtest_forecasts rows are the window's steps:
    the actuals of the series there and the forecasts scored in gold/backtest."""
    from forecasting.results import backtest_forecast_rows

    pdf = make_series()
    models = ["seasonal_naive", "weekly_naive"]
    kept = {}
    for store in ("chosen", "all", "none"):
        out = process_series(pdf, cfg(models=models, backtest={"store_forecasts": store}))
        kept[store] = backtest_forecast_rows(out, "r1", [80, 95])
    chosen = out.loc[0, "model"]
    assert len(kept["none"]) == 0 and set(kept["chosen"]["model"]) == {chosen}
    assert set(kept["all"]["model"]) == set(models) and len(kept["all"]) == 2 * 2 * H
    rows = kept["all"].sort_values(["model", "window", "lead"], ignore_index=True)
    assert list(rows["lead"][:H]) == list(range(1, H + 1)) and set(rows["run_id"]) == {"r1"}
    actual = pdf.set_index("ts")["y"]
    np.testing.assert_allclose(rows["y"], actual.loc[rows["ts"]].to_numpy())
    assert (
        rows["cutoff"] == rows.groupby(["model", "window"])["ts"].transform("min") - pd.Timedelta("1h")
    ).all()
    # the last window ends at the series' end; its point forecast is what gold/backtest scored
    last = rows[(rows["model"] == "seasonal_naive") & (rows["window"] == 1)]
    assert last["ts"].max() == pdf["ts"].max()
    assert (rows["yhat_lower_95"] <= rows["yhat_lower_80"]).all() and (
        rows["yhat_lower_80"] <= rows["yhat"]
    ).all()
    mae = json.loads(out.loc[0, "backtest_json"])
    want = next(w["mae"] for w in mae if w["model"] == "seasonal_naive" and w["window"] == 1)
    assert (last["yhat"] - last["y"]).abs().mean() == pytest.approx(want)


def test_the_stored_json_decodes_to_what_the_standard_library_gives():
    """:func:`forecasting.jsontext.loads` (orjson) on a result row's JSON columns gives
    what ``json.loads`` gives; texts with the NaN / Infinity tokens ``json.dumps``
    writes (a model's parameters may hold them) too; bad JSON is a JSONDecodeError."""
    from forecasting.jsontext import loads

    out = process_series(
        make_series(), cfg(models=["seasonal_naive", "ets"], backtest={"store_forecasts": "all"})
    )
    for col in ("model_json", "backtest_json", "candidates_json", "forecasts_json", "tuned_json"):
        text = out.loc[0, col]
        assert text and loads(text) == json.loads(text), col
    odd = json.dumps({"phi": float("nan"), "bounds": [float("-inf"), float("inf")], "n": 3})
    got = loads(odd)
    assert math.isnan(got["phi"]) and got["bounds"] == [-math.inf, math.inf] and got["n"] == 3
    with pytest.raises(json.JSONDecodeError, match="line 1 column 2"):
        loads("{not json")


def test_failed_row_has_the_schema_too():
    out = process_series(make_series().iloc[0:0], cfg())
    assert out.dtypes.to_dict() == result_frame_empty().dtypes.to_dict()
    assert out.loc[0, "status"] == "failed"


def test_ok_row_contents_and_cutoff_convention():
    pdf = make_series()
    out = process_series(pdf, cfg(models=["seasonal_naive"]))
    r = out.iloc[0]
    assert (r.series_id, r.status, r.reason, r.model, r.metric) == (
        "meter-1",
        "ok",
        "",
        "seasonal_naive",
        "mase",
    )
    assert r.n_obs == len(pdf) and r.end == pdf.ts.iloc[-1]
    assert r.tuned_json == "{}"
    bt = json.loads(r.backtest_json)
    assert [(b["model"], b["window"]) for b in bt] == [("seasonal_naive", 0), ("seasonal_naive", 1)]
    n = len(pdf)
    # cutoff = last training timestamp of the window; the last window ends at the end
    assert bt[1]["cutoff"] == pdf.ts.iloc[n - H - 1].isoformat()
    assert bt[0]["cutoff"] == pdf.ts.iloc[n - 2 * H - 1].isoformat()
    assert set(contract.METRICS) <= set(bt[0]) and {"coverage_80", "pinball_95"} <= set(bt[0])
    assert r.metric_value == pytest.approx(np.mean([b["mase"] for b in bt]))
    cands = json.loads(r.candidates_json)
    assert cands["seasonal_naive"]["status"] == "ok"
    assert cands["seasonal_naive"]["score"] == pytest.approx(r.metric_value)


def test_deterministic_and_order_independent():
    pdf = make_series()
    c = cfg(models=["seasonal_naive", "fake_up"], ensemble={"enabled": True, "top_k": 2})
    a = stable(process_series(pdf, c))
    b = stable(process_series(pdf, c))
    shuffled = stable(process_series(pdf.sample(frac=1.0, random_state=7).reset_index(drop=True), c))
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(a, shuffled)


# -- choice ----------------------------------------------------------------------------
def test_best_backtest_wins():
    out = process_series(make_series(), cfg(models=["fake_up", "seasonal_naive"], backtest={"metric": "mae"}))
    assert out.loc[0, "model"] == "seasonal_naive" and out.loc[0, "status"] == "ok"
    cands = json.loads(out.loc[0, "candidates_json"])
    assert cands["fake_up"]["score"] > cands["seasonal_naive"]["score"]


def test_ties_follow_config_order():
    pdf = make_series()
    assert process_series(pdf, cfg(models=["fake_same", "fake_same2"])).loc[0, "model"] == "fake_same"
    assert process_series(pdf, cfg(models=["fake_same2", "fake_same"])).loc[0, "model"] == "fake_same2"


def test_failing_candidate_is_recorded_and_skipped():
    out = process_series(make_series(), cfg(models=["fake_fail", "fake_same"]))
    r = out.iloc[0]
    assert (r.status, r.model, r.reason) == ("ok", "fake_same", "")
    cands = json.loads(r.candidates_json)
    assert cands["fake_fail"] == {
        "status": "failed",
        "reason": "RuntimeError: boom in fit",
        "score": None,
        "fit_s": cands["fake_fail"]["fit_s"],
    }
    assert {b["model"] for b in json.loads(r.backtest_json)} == {"fake_same"}


def test_every_candidate_fails_falls_back_to_seasonal_naive():
    out = process_series(make_series(), cfg(models=["fake_fail"]))
    r = out.iloc[0]
    assert (r.status, r.model) == ("fallback", "seasonal_naive")
    assert "fake_fail" in r.reason and "boom in fit" in r.reason and "seasonal_naive" in r.reason
    assert math.isnan(r.metric_value)
    assert json.loads(r.model_json)["model"] == "seasonal_naive"
    assert len(load_fitted(r.model_json).predict(H)["mean"]) == H


def test_too_short_for_the_backtest_falls_back():
    out = process_series(make_series(n=60), cfg(models=["seasonal_naive"], backtest={"windows": 3}))
    r = out.iloc[0]
    assert (r.status, r.model) == ("fallback", "seasonal_naive")
    assert "needs at least" in r.reason
    assert json.loads(r.backtest_json) == []


def test_fallback_failing_too_gives_failed(monkeypatch):
    monkeypatch.setitem(MODELS, "seasonal_naive", Fails)
    out = process_series(make_series(), cfg(models=["fake_fail"]))
    r = out.iloc[0]
    assert (r.status, r.model, r.model_json) == ("failed", "", "")
    assert "fallback seasonal_naive failed too" in r.reason


def test_bad_series_never_raises():
    pdf = make_series()
    pdf.loc[5, "y"] = np.nan
    r = process_series(pdf, cfg()).iloc[0]
    assert r.status == "failed" and "not finite" in r.reason and r.series_id == "meter-1"
    r = process_series(pd.concat([pdf.iloc[:3], pdf.iloc[:3]]), cfg()).iloc[0]
    assert r.status == "failed" and "duplicate" in r.reason
    r = process_series(pd.DataFrame({"x": [1]}), cfg()).iloc[0]
    assert r.status == "failed" and r.series_id == ""


def test_decide_refit_failure_moves_down_the_ranking():
    cands = [
        Candidate("a", score=1.0),
        Candidate("b", score=2.0),
        Candidate("c", status="failed", reason="x"),
    ]

    def refit(c):
        if c.name == "a":
            raise RuntimeError("no memory")
        return f"fitted {c.name}"

    d = decide(cands, refit)
    assert (d.status, d.model, d.fitted, d.metric_value) == ("fallback", "b", "fitted b", 2.0)
    assert "a failed to refit" in d.reason and "no memory" in d.reason
    assert decide(cands, lambda c: c.name).status == "ok"


def test_rank_puts_non_finite_last_and_breaks_ties_by_order():
    cands = [
        Candidate("x", score=math.nan),
        Candidate("y", score=1.0),
        Candidate("z", score=1.0),
        Candidate("w", score=math.inf),
    ]
    assert [c.name for c in rank(cands, ["z", "y", "w", "x"])] == ["z", "y", "w", "x"]


def test_combine_mean_and_median():
    fs = [{"mean": np.array([1.0, 2.0])}, {"mean": np.array([3.0, 2.0])}, {"mean": np.array([8.0, 5.0])}]
    np.testing.assert_allclose(combine(fs, "mean")["mean"], [4.0, 3.0])
    np.testing.assert_allclose(combine(fs, "median")["mean"], [3.0, 2.0])


# -- timeouts --------------------------------------------------------------------------
def test_slow_candidate_times_out():
    start = time.perf_counter()
    out = process_series(make_series(), cfg(models=["fake_sleep", "seasonal_naive"], model_timeout_s=0.2))
    elapsed = time.perf_counter() - start
    r = out.iloc[0]
    cands = json.loads(r.candidates_json)
    assert cands["fake_sleep"]["status"] == "timeout"
    assert "timed out after 0.2 s" in cands["fake_sleep"]["reason"]
    assert (r.status, r.model) == ("ok", "seasonal_naive")
    assert elapsed < 3


def test_run_with_timeout_restores_the_signal_handler():
    before = signal.getsignal(signal.SIGALRM)
    pending = signal.getitimer(signal.ITIMER_REAL)[0]  # e.g. pytest-timeout's own alarm
    with pytest.raises(CandidateTimeout):
        run_with_timeout(lambda: time.sleep(2), 0.05)
    assert run_with_timeout(lambda: 42, 1.0) == 42
    assert signal.getsignal(signal.SIGALRM) is before
    left = signal.getitimer(signal.ITIMER_REAL)[0]
    if pending:  # the earlier alarm is re-armed with what was left of it
        assert 0 < left <= pending
    else:
        assert left == 0.0


def test_an_earlier_outer_alarm_still_fires(monkeypatch):
    class Outer(Exception):
        pass

    def outer(signum, frame):
        raise Outer()

    previous = signal.signal(signal.SIGALRM, outer)
    saved = signal.setitimer(signal.ITIMER_REAL, 0.05)
    try:
        with pytest.raises(Outer):
            run_with_timeout(lambda: time.sleep(2), 1.0)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if saved[0] > 0:
            signal.setitimer(signal.ITIMER_REAL, saved[0])


def test_no_alarm_outside_the_main_thread():
    result = {}
    thread = threading.Thread(
        target=lambda: result.update(v=run_with_timeout(lambda: time.sleep(0.1) or 7, 0.01))
    )
    thread.start()
    thread.join()
    assert result["v"] == 7


# -- ensemble --------------------------------------------------------------------------
def test_ensemble_competes_and_wins():
    c = cfg(
        models=["fake_up", "fake_down"],
        backtest={"metric": "mae"},
        ensemble={"enabled": True, "top_k": 2, "method": "mean"},
    )
    r = process_series(make_series(), c).iloc[0]
    assert (r.status, r.model) == ("ok", "ensemble")
    cands = json.loads(r.candidates_json)
    assert sorted(cands["ensemble"]["members"]) == ["fake_down", "fake_up"]
    assert cands["ensemble"]["score"] < min(cands["fake_up"]["score"], cands["fake_down"]["score"])
    assert {b["model"] for b in json.loads(r.backtest_json)} == {"fake_up", "fake_down", "ensemble"}
    data = json.loads(r.model_json)
    assert data["model"] == "ensemble" and data["method"] == "mean" and len(data["members"]) == 2
    model = load_fitted(r.model_json)
    fc = model.predict(H, level=[80, 95])
    # mean of +1 and -1 shifted seasonal naive = the last day repeated
    pdf = make_series()
    np.testing.assert_allclose(fc["mean"], pdf.y.to_numpy()[-24:])
    assert np.all(fc["lo-95"] <= fc["lo-80"]) and np.all(fc["lo-80"] <= fc["mean"])
    assert np.all(fc["mean"] <= fc["hi-80"]) and np.all(fc["hi-80"] <= fc["hi-95"])


def test_no_ensemble_with_a_single_successful_candidate():
    c = cfg(models=["fake_fail", "seasonal_naive"], ensemble={"enabled": True})
    r = process_series(make_series(), c).iloc[0]
    assert "ensemble" not in json.loads(r.candidates_json) and r.model == "seasonal_naive"


# -- loading, regressors, frequencies --------------------------------------------------
def test_load_fitted_single_model_predicts_ordered_intervals():
    r = process_series(make_series(), cfg()).iloc[0]
    fc = load_fitted(r.model_json).predict(7, level=[80, 95])
    assert all(len(v) == 7 for v in fc.values())
    assert np.all(fc["lo-95"] <= fc["lo-80"]) and np.all(fc["lo-80"] <= fc["mean"])
    assert np.all(fc["mean"] <= fc["hi-80"]) and np.all(fc["hi-80"] <= fc["hi-95"])


def test_temperature_goes_only_to_models_that_support_it():
    pdf = make_series()
    process_series(pdf, cfg(models=["fake_exog", "fake_same"], backtest={"windows": 1}))
    shapes = {(name, shape) for name, _, shape in Shifted.seen}
    assert ("fake_exog", (len(pdf) - H, 1)) in shapes and ("fake_exog", (len(pdf), 1)) in shapes
    assert {shape for name, _, shape in Shifted.seen if name == "fake_same"} == {None}
    Shifted.seen = []
    pdf.loc[3, "temperature"] = np.nan
    process_series(pdf, cfg(models=["fake_exog"], backtest={"windows": 1}))
    assert {shape for _, _, shape in Shifted.seen} == {None}
    Shifted.seen = []
    process_series(pdf.drop(columns="temperature"), cfg(models=["fake_exog"], backtest={"windows": 1}))
    assert {shape for _, _, shape in Shifted.seen} == {None}


def test_season_length_from_inferred_or_configured_freq():
    process_series(make_series(n=48 * 8, freq="30min"), cfg(models=["fake_same"], backtest={"windows": 1}))
    assert {m for _, m, _ in Shifted.seen} == {48}
    Shifted.seen = []
    process_series(make_series(), cfg(models=["fake_same"], backtest={"windows": 1}, freq="15min"))
    assert {m for _, m, _ in Shifted.seen} == {96}


def test_seasonalities_for_and_infer_freq():
    assert seasonalities_for("h") == (24, 168)
    assert seasonalities_for("30min") == (48, 336)
    assert seasonalities_for("15min") == (96, 672)
    assert seasonalities_for("D") == (7, 365)
    assert seasonalities_for("W") == (52,)
    assert seasonalities_for("MS") == (12,)
    ts = pd.date_range("2024-01-01", periods=10, freq="30min").to_numpy()
    assert infer_freq(ts) == "30min"
    assert infer_freq(np.delete(ts, 4)) == "30min"  # a gap: median step
