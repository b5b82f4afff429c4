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
from forecasting.models import (
    MODELS,
    EnsembleForecaster,
    all_models,
    get_model,
    load_fitted,
    load_model,
    model_class,
)
from forecasting.models.base import Field, Forecaster, Param, clean_y, normal_intervals

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


# -- the declared interface ----------------------------------------------------------
PARAMS = [(name, p) for name, cls in sorted(all_models().items()) for p in cls.parameters]


@pytest.mark.parametrize("name", sorted(all_models()))
def test_every_model_declares_its_parameters_and_state(name):
    cls = model_class(name)
    assert cls.parameters is not None and cls.state_fields
    model = cls()
    assert all(hasattr(model, p.name) for p in cls.parameters)  # the defaults, parsed
    with pytest.raises(ConfigError) as err:
        cls(no_such_param=1)
    assert err.value.allowed == "one of " + ", ".join(p.name for p in cls.parameters)


@pytest.mark.parametrize("name, param", PARAMS, ids=[f"{n}.{p.name}" for n, p in PARAMS])
def test_a_bad_value_names_the_parameter_the_value_and_what_is_allowed(name, param):
    bad = 123 if param.kind is str and not param.choices else "not a value"
    with pytest.raises(ConfigError) as err:
        get_model(name, **{param.name: bad})
    assert err.value.key == f"{name}.{param.name}" and err.value.value == bad
    assert err.value.allowed == param.describe()
    assert str(err.value) == f"invalid config {name}.{param.name}={bad!r}: expected {param.describe()}"


@pytest.mark.parametrize(
    "param, good, bad, allowed",
    [
        (Param("n", int, 1, within="[1, inf)"), [1, 5], [0, 1.5, True, None, "1"], "an integer >= 1"),
        (
            Param("x", float, 0.5, within="(0, 1]"),
            [1, 0.5, 1e-9],
            [0, 1.01, "0.5", float("nan")],
            "a number in (0, 1]",
        ),
        (
            Param("m", int, None, within="[10, inf)", nullable=True),
            [None, 10],
            [9, "10"],
            "null or an integer >= 10",
        ),
        (Param("t", default="add", choices=(None, "add")), [None, "add"], ["mul", 1], "null or 'add'"),
        (Param("s", str, "a", choices=("a", "b", "c")), ["a", "c"], ["d", None], "one of 'a', 'b', 'c'"),
        (Param("b", bool, True), [True, False], [1, "yes", None], "true or false"),
    ],
)
def test_param_checks_type_and_range(param, good, bad, allowed):
    assert [v for v in good if not param.accepts(v)] == []
    assert [v for v in bad if param.accepts(v)] == []
    assert param.describe() == allowed


class Drift(Forecaster):
    """The last value plus a drift per step: a whole model is its declarations, ``fit``
    and ``predict``.

    Params: ``drift`` per step, ``max_history``.
    """

    name = "drift_for_test"
    parameters = (Param("drift", float, 0.0, within="[-1, 1]"), Param.max_history(1))
    state_fields = (
        Field("last"),
        Field("tail", "array"),
        Field("n", "int"),
        Field("note", "str", optional=True),
    )

    def fit(self, y, X=None, ts=None):
        y = clean_y(self.name, y, self.max_history)
        self.last_, self.tail_, self.n_, self.note_ = float(y[-1]), y[-3:], len(y), None
        return self

    def predict(self, h, X=None, level=(80, 95)):
        return normal_intervals(self.last_ + self.drift * np.arange(1, h + 1), 1.0, level)


def test_a_model_declared_once_validates_serializes_and_reloads(monkeypatch):
    monkeypatch.setitem(MODELS, Drift.name, Drift)
    assert get_model(Drift.name).max_history == 168  # one longest season
    model = get_model(Drift.name, drift=0.5, max_history=None).fit(np.arange(20.0))
    assert (model.drift, model.max_history) == (0.5, None)
    data = json.loads(json.dumps(model.to_dict()))
    assert data["params"] == {"drift": 0.5, "max_history": None}  # as given, defaults left out
    assert data["state"] == {"last": 19.0, "tail": [17.0, 18.0, 19.0], "n": 20, "note": None}
    again = load_model(data)
    assert isinstance(again.tail_, np.ndarray)
    assert_same(model.predict(5), again.predict(5), rtol=0)
    with pytest.raises(ConfigError, match=r"drift_for_test.drift=2: expected a number in \[-1, 1\]"):
        get_model(Drift.name, drift=2)


def test_a_malformed_declaration_fails_where_it_is_made():
    with pytest.raises(TypeError, match="predict"):

        class Hiding(Forecaster):
            parameters = (Param("predict", float, 0.0),)

    with pytest.raises(ValueError, match="interval"):
        Param("x", float, 0.0, within="1..2")
    with pytest.raises(ValueError, match="kind 'matrix'"):
        Field("x", "matrix")


@pytest.mark.parametrize(
    "module",
    ["forecasting.models.base", "forecasting.models.ensemble", "forecasting.models.global_models.common"],
)
def test_any_model_module_can_be_imported_first(module):
    """No circle between the models and the global models: any entry point works."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"], cwd=root, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


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


def test_load_fitted_reads_one_model_or_an_ensemble(fitted):
    members = [fitted("seasonal_naive"), fitted("ets")]
    ensemble = EnsembleForecaster(members, "mean")
    again = load_fitted(json.dumps(ensemble.to_dict()))
    assert isinstance(again, EnsembleForecaster) and [type(m) for m in again.members] == [
        type(m) for m in members
    ]
    assert_same(ensemble.predict(H), again.predict(H))
    assert_same(members[1].predict(H), load_fitted(json.dumps(members[1].to_dict())).predict(H))
    with pytest.raises(ModelError, match="ensemble has format_version 99"):
        load_fitted(json.dumps({**ensemble.to_dict(), "format_version": 99}))
    with pytest.raises(ModelError, match="empty model_json"):
        load_fitted("")


def test_mstl_decomposition_is_statsmodels_without_jumps_and_close_with_them(data):
    from statsmodels.tsa.seasonal import MSTL as StatsmodelsMSTL

    from forecasting.models.mstl import mstl_seasonal

    y = data["y"][-672:]
    reference = StatsmodelsMSTL(y, periods=[24, 168], iterate=2).fit().seasonal
    np.testing.assert_allclose(mstl_seasonal(y, [24, 168], 2, jumps=False), reference, rtol=1e-10, atol=1e-10)
    with_jumps = mstl_seasonal(y, [24, 168], 2, jumps=True)
    assert not np.allclose(with_jumps, reference)  # the jumps do change the smoothing...
    assert np.abs(with_jumps - reference).max() < 0.1 * np.abs(reference).max()  # ...a little
