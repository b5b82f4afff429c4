"""Models for intermittent demand: many zeros, occasional demands of varying size.

Each forecasts a flat demand *rate* (expected demand per step) for every step ahead:

* :class:`Croston` (``croston``): Croston (1972), "Forecasting and stock control for
  intermittent demands", ORQ 23(3). Simple exponential smoothing (SES) of the non-zero
  demand sizes ``z`` and, separately, of the intervals ``p`` between them, each updated
  only when a demand occurs; the rate is ``z / p``.
* :class:`CrostonSBA` (``croston_sba``): the Syntetos-Boylan approximation, Syntetos &
  Boylan (2005), "The accuracy of intermittent demand estimates", IJF 21(2): Croston's
  rate times ``1 - alpha / 2``, which removes its positive bias.
* :class:`TSB` (``tsb``): Teunter, Syntetos & Babai (2011), "Intermittent demand:
  linking forecasting to inventory obsolescence", EJOR 214(3). SES of the demand
  *probability* (updated every step, so a long run of zeros lowers the forecast) times
  SES of the demand size (updated at demands); the rate is ``p * z``.
* :class:`ADIDA` (``adida``): Nikolopoulos, Syntetos, Boylan, Petropoulos &
  Assimakopoulos (2011), "An aggregate-disaggregate intermittent demand approach
  (ADIDA) to forecasting", JORS 62(3). The series summed over non-overlapping blocks of
  ``k`` steps (the last full blocks), SES of the block sums, divided by ``k``.
* :class:`IMAPA` (``imapa``): Petropoulos & Kourentzes (2015), "Forecast combinations
  for intermittent demand", JORS 66(6). The mean of the ADIDA rates at every
  aggregation level ``1..k``.

``k`` defaults to the series' average inter-demand interval (ADI) rounded, at least 1,
as statsforecast's ADIDA and IMAPA do; ADIDA's and IMAPA's SES smoothing is chosen per
series from ``[0.1, 0.3]`` by the smallest in-sample one-step squared error (the range
statsforecast optimizes over), unless ``alpha`` is given. SES starts at the first value
(of the sizes, intervals, probabilities or block sums) in every model.

Intervals: empirical quantiles of the in-sample one-step errors ``y[t] - rate[t]``
(``rate[t]``: the model's rate fitted on ``y[:t]``, from its first defined value on),
added to the point forecast and the same for every step ahead (the models' forecast is
the same for every step; the uncertainty of the rate itself is left out). The state
keeps those errors' quantiles at 0.5%, 1%, ..., 99.5% (:data:`QUANTILE_GRID`), which
cover every integer level exactly. The bounds are then widened to contain the point
forecast (a series with zero demand on 95% of its steps would otherwise have a 90%
interval of [0, 0] below its rate) and, when the history is never negative, the lower
bound is floored at 0. With fewer than 2 one-step errors (a single demand) the
deviations of the whole history from the rate are used.
"""

from __future__ import annotations

import warnings
from typing import ClassVar, Sequence

import numpy as np

from forecasting.errors import ModelError
from forecasting.models.base import Field, Forecaster, Param, check_h, clean_y

#: the probabilities at which the state keeps the one-step error quantiles
QUANTILE_GRID = np.arange(1, 200) / 200.0
SES_ALPHAS = np.round(np.linspace(0.1, 0.3, 21), 3)  # the optimized SES's choices


def ses(x: np.ndarray, alpha: float) -> tuple[float, np.ndarray]:
    """SES of ``x`` started at ``x[0]``: the level after the last value, and the level
    after each value (``levels[i]`` is the forecast of ``x[i + 1]``)."""
    from scipy.signal import lfilter

    x = np.asarray(x, dtype=float)
    if x.size == 1:
        return float(x[0]), x.copy()
    levels, _ = lfilter([alpha], [1.0, -(1.0 - alpha)], x[1:], zi=[(1.0 - alpha) * x[0]])
    levels = np.concatenate(([x[0]], levels))
    return float(levels[-1]), levels


def best_alpha(x: np.ndarray) -> float:
    """The alpha of :data:`SES_ALPHAS` with the smallest in-sample one-step squared
    error on ``x`` (the first on ties; 0.1 for fewer than 3 values)."""
    if len(x) < 3:
        return float(SES_ALPHAS[0])
    sse = [float(np.sum((x[1:] - ses(x, a)[1][:-1]) ** 2)) for a in SES_ALPHAS]
    return float(SES_ALPHAS[int(np.argmin(sse))])


def inter_demand(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The indices of the non-zero values of ``y`` and the interval before each (the
    first counted from the start: index + 1)."""
    idx = np.flatnonzero(y != 0)
    return idx, np.diff(np.concatenate(([-1], idx))).astype(float)


def at_demands(values: np.ndarray, idx: np.ndarray, n: int) -> np.ndarray:
    """Per step ``t`` of ``n``, ``values[j]`` of the last demand ``idx[j] < t`` (the
    value known when forecasting ``t``); ``nan`` before the first demand."""
    j = np.searchsorted(idx, np.arange(n), side="left") - 1
    return np.where(j >= 0, values[np.maximum(j, 0)], np.nan)


def aggregation_level(y: np.ndarray) -> int:
    """The series' average inter-demand interval rounded (at least 1)."""
    n_demands = int(np.count_nonzero(y))
    return max(1, int(round(len(y) / n_demands))) if n_demands else 1


def adida_rate(y: np.ndarray, k: int, alpha: float | None) -> tuple[float, np.ndarray, float]:
    """ADIDA at aggregation ``k``: the rate, the per-step one-step fitted rates (``nan``
    where undefined) and the alpha used."""
    n = len(y)
    r = n % k
    sums = y[r:].reshape(-1, k).sum(axis=1)
    if sums.size == 0:
        raise ModelError(f"adida needs at least one block of {k} steps; got {n}")
    a = best_alpha(sums) if alpha is None else alpha
    level, levels = ses(sums, a)
    fitted = np.full(n, np.nan)
    if sums.size > 1:  # block j is forecast by the level after block j - 1
        fitted[r + k :] = np.repeat(levels[:-1] / k, k)
    return level / k, fitted, a


class IntermittentForecaster(Forecaster):
    """What the intermittent-demand models share: the flat forecast of ``rate_`` and its
    intervals from the one-step errors' quantiles (module docstring). A subclass
    implements :meth:`rates`."""

    state_fields = (Field("rate"), Field("quantiles", "array"), Field("nonnegative", "bool"))

    def rates(self, y: np.ndarray) -> tuple[float, np.ndarray]:
        """The rate forecast after ``y`` and the one-step fitted rate of each step."""
        raise NotImplementedError

    def fit(self, y, X=None, ts=None):
        y = clean_y(self.name, y, self.max_history)
        if len(y) == 0:
            raise ModelError(f"{self.name} needs at least one observation")
        rate, fitted = self.rates(y)
        if not np.isfinite(rate):
            raise ModelError(f"{self.name} fit on {len(y)} points gave a non-finite rate")
        errors = (y - fitted)[np.isfinite(fitted)]
        if errors.size < 2:
            errors = y - rate
        self.rate_ = float(rate)
        self.quantiles_ = np.quantile(errors, QUANTILE_GRID)
        self.nonnegative_ = bool(np.min(y) >= 0)
        return self

    def predict(self, h, X=None, level: Sequence[int] = (80, 95)):
        h = check_h(h)
        mean = np.full(h, self.rate_)
        out = {"mean": mean}
        for lv in level:
            lo_q, hi_q = np.interp([0.5 - lv / 200.0, 0.5 + lv / 200.0], QUANTILE_GRID, self.quantiles_)
            lo, hi = min(self.rate_ + lo_q, self.rate_), max(self.rate_ + hi_q, self.rate_)
            if self.nonnegative_:
                lo = max(lo, 0.0)
            out[f"lo-{lv}"], out[f"hi-{lv}"] = np.full(h, lo), np.full(h, hi)
        return out


_HISTORY = Param("max_history", int, None, within="[10, inf)", nullable=True)
_ALPHA = Param("alpha", float, 0.1, within="(0, 1]")
_OPT_ALPHA = Param("alpha", float, None, within="(0, 1]", nullable=True)
_AGGREGATION = Param("aggregation", int, None, within="[1, inf)", nullable=True)


class Croston(IntermittentForecaster):
    """Croston's method (module docstring).

    Params:
        alpha: SES smoothing of the sizes and intervals, in (0, 1] (default 0.1).
        max_history: fit on at most this many trailing points (default ``None``: all).
    """

    name = "croston"
    description = "Croston (1972): SES of demand sizes over SES of the intervals between them."
    parameters = (_ALPHA, _HISTORY)
    sba: ClassVar[bool] = False  # the rate times 1 - alpha / 2 (Syntetos-Boylan)

    def rates(self, y):
        idx, intervals = inter_demand(y)
        if idx.size == 0:  # no demand in the history: a zero rate
            return 0.0, np.zeros(len(y))
        size, sizes = ses(y[idx], self.alpha)
        interval, gaps = ses(intervals, self.alpha)
        c = 1.0 - self.alpha / 2.0 if self.sba else 1.0
        return c * size / interval, c * at_demands(sizes / gaps, idx, len(y))


class CrostonSBA(Croston):
    """Croston's rate times ``1 - alpha / 2`` (Syntetos & Boylan 2005; module docstring).

    Params: as :class:`Croston`.
    """

    name = "croston_sba"
    description = "Croston with the Syntetos-Boylan bias correction (1 - alpha/2)."
    sba = True


class TSB(IntermittentForecaster):
    """Teunter-Syntetos-Babai (module docstring).

    Params:
        alpha_d: SES smoothing of the demand probability, every step (default 0.1).
        alpha_p: SES smoothing of the demand size, at demands (default 0.1).
        max_history: fit on at most this many trailing points (default ``None``: all).
    """

    name = "tsb"
    description = "TSB (2011): SES of the demand probability times SES of the demand size."
    parameters = (
        Param("alpha_d", float, 0.1, within="(0, 1]"),
        Param("alpha_p", float, 0.1, within="(0, 1]"),
        _HISTORY,
    )

    def rates(self, y):
        idx, _ = inter_demand(y)
        if idx.size == 0:
            return 0.0, np.zeros(len(y))
        prob, probs = ses((y != 0).astype(float), self.alpha_d)
        size, sizes = ses(y[idx], self.alpha_p)
        fitted = np.full(len(y), np.nan)
        fitted[1:] = probs[:-1] * at_demands(sizes, idx, len(y))[1:]
        return prob * size, fitted


class ADIDA(IntermittentForecaster):
    """ADIDA (module docstring).

    Params:
        aggregation: block length ``k`` in steps (default ``None``: the ADI rounded).
        alpha: SES smoothing of the block sums (default ``None``: chosen in [0.1, 0.3]).
        max_history: fit on at most this many trailing points (default ``None``: all).
    """

    name = "adida"
    description = "ADIDA (2011): SES of demand summed over blocks of ~ADI steps, per step."
    parameters = (_AGGREGATION, _OPT_ALPHA, _HISTORY)

    def rates(self, y):
        k = self.aggregation or aggregation_level(y)
        rate, fitted, _ = adida_rate(y, min(k, len(y)), self.alpha)
        return rate, fitted


class IMAPA(IntermittentForecaster):
    """IMAPA (module docstring).

    Params:
        aggregation: the largest block length (default ``None``: the ADI rounded).
        alpha: SES smoothing at every level (default ``None``: chosen per level).
        max_history: fit on at most this many trailing points (default ``None``: all).
    """

    name = "imapa"
    description = "IMAPA (2015): the mean of ADIDA over aggregation levels 1..~ADI."
    parameters = (_AGGREGATION, _OPT_ALPHA, _HISTORY)

    def rates(self, y):
        top = min(self.aggregation or aggregation_level(y), len(y))
        runs = [adida_rate(y, k, self.alpha) for k in range(1, top + 1)]
        fitted = np.vstack([f for _, f, _ in runs])
        with warnings.catch_warnings():  # steps no level has a fitted rate for stay nan
            warnings.simplefilter("ignore", RuntimeWarning)
            mean_fitted = np.nanmean(fitted, axis=0)
        return float(np.mean([r for r, _, _ in runs])), mean_fitted


INTERMITTENT_MODELS = (Croston, CrostonSBA, TSB, ADIDA, IMAPA)
