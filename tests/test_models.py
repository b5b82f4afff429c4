"""The forecaster contract, checked for every model in ``MODELS``.

Every model: forecasts of length ``h``, finite, with nested intervals around the mean;
the same forecast after a round trip through JSON; a clear ``ModelError`` (or a valid
forecast) on too short a series; and the golden files of format 1 still load and
forecast as they did when they were written (``tests/golden/make_golden.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from forecasting.errors import ConfigError, ModelError, UnknownModelError
from forecasting.generator import generate
from forecasting.models import MODELS, get_model, load_model, model_class

H = 48
NAMES = sorted(MODELS)
EXOG_NAMES = [name for name in NAMES if MODELS[name].supports_exog]
# seasonal_naive predates parameter validation and NaN checks.
VALIDATING = NAMES  # every model validates its params and input
GOLDEN = Path(__file__).parent / "golden" / "models_v1"


@pytest.fixture(scope="module")
def data():
    """15 days of one clean hourly meter (y, temperature as X, ts) and 2 days of future
    temperature."""
    readings = generate(n_series=1, days=17, freq="h", seed=5, clean=True).readings
    n = 15 * 24
    X = readings["temperature"].to_numpy(dtype=float)[:, None]
    return {
        "y": readings["y"].to_numpy(dtype=float)[:n],
        "X": X[:n],
        "ts": readings["ts"].to_numpy()[:n],
        "X_future": X[n : n + H],
    }


@pytest.fixture(scope="module")
def fitted(data):
    """One fitted model per (name, with regressors), fitted on first use."""
    cache = {}

    def get(name, exog=False):
        if (name, exog) not in cache:
            X = data["X"] if exog else None
            cache[name, exog] = get_model(name).fit(data["y"], X=X, ts=data["ts"])
        return cache[name, exog]

    return get


def check_forecast(forecast, h, level=(80, 95)):
    assert set(forecast) == {"mean", *(f"{side}-{lv}" for lv in level for side in ("lo", "hi"))}
    for key, values in forecast.items():
        assert isinstance(values, np.ndarray) and values.shape == (h,), key
        assert np.all(np.isfinite(values)), key
    mean = forecast["mean"]
    inner_lo, inner_hi = mean, mean
    for lv in sorted(level):
        lo, hi = forecast[f"lo-{lv}"], forecast[f"hi-{lv}"]
        assert np.all(lo <= inner_lo) and np.all(inner_hi <= hi), lv
        inner_lo, inner_hi = lo, hi


def assert_same(a, b, rtol=1e-9):
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=rtol, atol=0, err_msg=key)


# -- registry -----------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_model_class_is_described(name):
    cls = MODELS[name]
    assert cls.name == name
    assert cls.description and "\n" not in cls.description
    assert "Params" in (cls.__doc__ or "")


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownModelError) as info:
        get_model("no_such_model")
    for name in NAMES:
        assert name in str(info.value)
    with pytest.raises(UnknownModelError):
        load_model({"model": "no_such_model", "format_version": 1})


@pytest.mark.parametrize("name", VALIDATING)
def test_unknown_param_is_refused(name):
    with pytest.raises(ConfigError, match="no_such_param"):
        get_model(name, no_such_param=1)


# -- forecasts ----------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_forecast_contract(name, fitted):
    model = fitted(name)
    check_forecast(model.predict(H), H)
    check_forecast(model.predict(1), 1)
    check_forecast(model.predict(H, level=(50, 90, 99)), H, level=(50, 90, 99))


@pytest.mark.parametrize("name", NAMES)
def test_predict_does_not_change_the_model(name, fitted):
    model = fitted(name)
    assert_same(model.predict(H), model.predict(H), rtol=0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [5, 30])
def test_short_series_fails_clearly_or_forecasts(name, n, data):
    y, ts = data["y"][:n], data["ts"][:n]
    try:
        model = get_model(name).fit(y, ts=ts)
    except ModelError as exc:
        assert str(exc)
        return
    check_forecast(model.predict(H), H)


@pytest.mark.parametrize("name", VALIDATING)
def test_missing_values_are_refused(name, data):
    y = data["y"].copy()
    y[10] = np.nan
    with pytest.raises(ModelError):
        get_model(name).fit(y, ts=data["ts"])


@pytest.mark.parametrize("name", EXOG_NAMES)
def test_regressors(name, data, fitted):
    model = fitted(name, exog=True)
    forecast = model.predict(H, X=data["X_future"])
    check_forecast(forecast, H)
    with pytest.raises(ModelError, match="X"):
        model.predict(H)
    again = load_model(json.loads(json.dumps(model.to_dict())))
    assert_same(forecast, again.predict(H, X=data["X_future"]))


@pytest.mark.parametrize("name", NAMES)
def test_fitting_is_quiet_in_a_fresh_process(name):
    """No warning and no log line from statsmodels, Prophet or cmdstanpy, even on the
    first fit of a process (statsmodels' first import adds "always" warning filters)."""
    script = f"""
from forecasting.generator import generate
from forecasting.models import get_model
r = generate(n_series=1, days=10, freq="h", seed=1, clean=True).readings
y, X, ts = r.y.to_numpy(), r.temperature.to_numpy()[:, None], r.ts.to_numpy()
model = get_model({name!r})
exog = model.supports_exog
model.fit(y[:-24], X=X[:-24] if exog else None, ts=ts[:-24])
model.predict(24, X=X[-24:] if exog else None)
"""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""


def test_prophet_needs_timestamps(data):
    with pytest.raises(ModelError, match="ts"):
        get_model("prophet").fit(data["y"])


def test_prophet_leaves_the_global_random_state_alone(fitted):
    model = fitted("prophet")
    np.random.seed(123)
    expected = np.random.random_sample()
    np.random.seed(123)
    model.predict(H)
    assert np.random.random_sample() == expected


# -- serialization ------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_json_round_trip_gives_the_same_forecast(name, fitted):
    model = fitted(name)
    text = json.dumps(model.to_dict())
    again = load_model(json.loads(text))
    assert type(again) is model_class(name)
    assert_same(model.predict(H), again.predict(H))
    assert json.dumps(again.to_dict()) == text


@pytest.mark.parametrize("name", NAMES)
def test_other_format_version_is_refused(name, fitted):
    data = json.loads(json.dumps(fitted(name).to_dict()))
    data["format_version"] = 99
    with pytest.raises(ModelError, match="format_version"):
        load_model(data)


def test_every_model_has_a_golden_file():
    assert sorted(path.stem for path in GOLDEN.glob("*.json")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_golden_file_forecasts_as_written(name):
    data = json.loads((GOLDEN / f"{name}.json").read_text())
    expected = data.pop("expected")
    model = load_model(data)
    X = None if expected["X"] is None else np.asarray(expected["X"], dtype=float)
    forecast = model.predict(expected["h"], X=X, level=tuple(expected["level"]))
    for key, values in forecast.items():
        np.testing.assert_allclose(values, expected[key], rtol=1e-6, atol=1e-12, err_msg=key)


def test_mstl_decomposition_is_statsmodels_without_jumps_and_close_with_them(data):
    from statsmodels.tsa.seasonal import MSTL as StatsmodelsMSTL

    from forecasting.models.mstl import mstl_seasonal

    y = data["y"][-672:]
    reference = StatsmodelsMSTL(y, periods=[24, 168], iterate=2).fit().seasonal
    np.testing.assert_allclose(mstl_seasonal(y, [24, 168], 2, jumps=False), reference, rtol=1e-10, atol=1e-10)
    with_jumps = mstl_seasonal(y, [24, 168], 2, jumps=True)
    assert not np.allclose(with_jumps, reference)  # the jumps do change the smoothing...
    assert np.abs(with_jumps - reference).max() < 0.1 * np.abs(reference).max()  # ...a little
