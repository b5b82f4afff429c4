"""Reconciliation of the aggregate levels' forecasts, with Nixtla's hierarchicalforecast.

``S`` (nodes x bottom nodes) has the aggregate nodes first and the bottom nodes last
(an identity block), as :func:`forecasting.hierarchy.tree` builds it and
hierarchicalforecast expects. Coherent forecasts are ``S P yhat`` with ``P`` from

* ``bottom_up``: :class:`hierarchicalforecast.methods.BottomUp`;
* ``mint_shrink``: :class:`hierarchicalforecast.methods.MinTrace` (``method=
  "mint_shrink"``): ``P = (S' W^-1 S)^-1 S' W^-1`` with ``W`` the Schäfer-Strimmer
  shrunk covariance of the nodes' errors. Its "in-sample" errors here are the chosen
  models' backtest errors (every window and step of every node, aligned in time), the
  out-of-sample errors MinT's covariance stands for. Errors all but zero (an overfitted
  node set) make hierarchicalforecast refuse; then bottom-up is used, and said.

Intervals (:func:`reconcile`): the reconciled errors of the backtest windows are
``S P e`` (``e``: the nodes' base errors at one step of one window; the actuals are
coherent, so ``y - S P yhat = S P (y - yhat)``): each node's interval is its reconciled
point plus the empirical quantiles of its own reconciled errors (:func:`interval_offsets`).
A total's errors are thus summed from its members' joint errors, step by step, so the
correlation across series is in them (not the square root of summed variances, which
assumes independence). hierarchicalforecast's own intervals (normality, bootstrap,
PERMBU) need the base models' sigmas or in-sample fits, which per-series model choice
does not give for every candidate; the empirical route needs only the backtest.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from hierarchicalforecast.methods import BottomUp, MinTrace

from forecasting.hierarchy import METHODS


def projection(
    S: np.ndarray, method: str, actual: np.ndarray | None = None, fitted: np.ndarray | None = None
) -> tuple[np.ndarray, str]:
    """``P`` (bottom nodes x nodes) of ``method`` and the method used (``bottom_up`` when
    MinT refuses the errors): ``actual``/``fitted`` are nodes x observations (the
    backtest's actuals and forecasts)."""
    if method == "bottom_up":
        return BottomUp()._get_PW_matrices(S=S)[0], method
    if method != "mint_shrink":
        raise ValueError(f"reconciliation method {method!r}: expected one of {', '.join(METHODS)}")
    if actual is None or fitted is None:
        raise ValueError("mint_shrink needs the nodes' backtest actuals and forecasts")
    try:
        mint = MinTrace(method="mint_shrink").fit(
            S=S, y_hat=np.zeros((S.shape[0], 1)), y_insample=actual, y_hat_insample=fitted
        )
    except Exception:  # noqa: BLE001 - hierarchicalforecast raises bare Exceptions
        return BottomUp()._get_PW_matrices(S=S)[0], "bottom_up"
    return np.asarray(mint.P, dtype=float), method


def interval_offsets(
    rec_errors: np.ndarray, levels: Sequence[int]
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per level, the lower and upper offsets (per node) of the interval around the
    reconciled point: the empirical quantiles of each node's reconciled errors
    (``rec_errors``: observations x nodes, actual - forecast)."""
    x = np.asarray(rec_errors, dtype=float)
    x = x[np.all(np.isfinite(x), axis=1)]
    out = {}
    for lv in levels:
        a = (1 - lv / 100) / 2
        lo, hi = np.quantile(x, [a, 1 - a], axis=0)
        out[int(lv)] = (np.minimum(lo, 0.0), np.maximum(hi, 0.0))
    return out


def reconcile(
    S: np.ndarray,
    yhat: np.ndarray,
    method: str,
    actual: np.ndarray,
    fitted: np.ndarray,
    levels: Sequence[int],
    nonnegative: bool = False,
) -> dict[str, object]:
    """Coherent forecasts of every node (``yhat``: nodes x horizon base forecasts) with
    intervals from the reconciled backtest errors (``actual``, ``fitted``: nodes x
    observations): ``mean`` (nodes x h), ``lo-<lv>``/``hi-<lv>`` (nodes x h), ``P`` and
    ``method`` (the one used). With ``nonnegative`` the points and lower bounds stay >= 0
    (the bottom nodes clipped, then summed, so coherence holds)."""
    P, used = projection(S, method, actual, fitted)
    bottom = P @ yhat
    if nonnegative:
        bottom = np.maximum(bottom, 0.0)
    mean = S @ bottom
    out: dict[str, object] = {"mean": mean, "P": P, "method": used}
    rec = (np.asarray(actual, dtype=float) - np.asarray(fitted, dtype=float)).T @ (S @ P).T
    for lv, (lo, hi) in interval_offsets(rec, levels).items():
        low = mean + lo[:, None]
        out[f"lo-{lv}"] = np.maximum(low, 0.0) if nonnegative else low
        out[f"hi-{lv}"] = mean + hi[:, None]
    return out


def evaluate(
    S: np.ndarray,
    node_levels: np.ndarray,
    base: np.ndarray,
    actual: np.ndarray,
    scales: np.ndarray,
    method: str,
    levels: Sequence[int],
    visible: np.ndarray | None = None,
) -> dict[str, float]:
    """MASE per level before and after reconciling, and the coverage of the reconciled
    intervals, on the last backtest window, with ``P`` and the intervals estimated on
    the earlier ones (no leakage). ``base``/``actual``: windows x nodes x h; ``scales``:
    the nodes' MASE denominators; ``node_levels``: the level of each node; ``visible``:
    the nodes scored (hidden ones are reconciled, not scored). Empty with fewer than 2
    windows."""
    if base.shape[0] < 2:
        return {}
    flat = lambda a: a.transpose(1, 0, 2).reshape(a.shape[1], -1)  # noqa: E731 - nodes x obs
    rec = reconcile(S, base[-1], method, flat(actual[:-1]), flat(base[:-1]), levels)
    shown = np.ones(len(node_levels), bool) if visible is None else np.asarray(visible, bool)
    metrics: dict[str, float] = {}
    for level in dict.fromkeys(node_levels):
        rows = (node_levels == level) & shown
        if not rows.any():
            continue
        scale = np.where(scales[rows] > 0, scales[rows], np.nan)[:, None]
        y = actual[-1][rows]
        metrics[f"mase_{level}_base"] = float(np.nanmean(np.abs(y - base[-1][rows]) / scale))
        metrics[f"mase_{level}_{method}"] = float(np.nanmean(np.abs(y - rec["mean"][rows]) / scale))
        if method == rec["method"]:
            for lv in levels:
                inside = (y >= rec[f"lo-{lv}"][rows]) & (y <= rec[f"hi-{lv}"][rows])
                metrics[f"coverage_{lv}_{level}_{method}"] = float(np.mean(inside))
    return metrics
