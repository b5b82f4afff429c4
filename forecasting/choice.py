"""Model choice for one series: rank the candidates on their backtest, optionally add
an ensemble of the best, then settle on the first that refits on the full history.

A candidate's score is the mean over backtest windows of
:func:`forecasting.metrics.score` of each window's metrics (so ``bias`` scores the mean
absolute bias of the windows). Smaller is better; ``nan`` and ``inf`` rank last; ties
keep the order of ``config.models`` (an ensemble comes after every single model, so a
tie prefers the simpler model).

Outcomes (:func:`decide`):

* ``ok``: the best candidate refits on the full history.
* ``fallback``: the best failed to refit and a lower-ranked candidate did, or every
  candidate failed and ``seasonal_naive`` fitted on the full history stands in.
* ``failed``: even the ``seasonal_naive`` fallback failed.

Shrinkage toward a preferred model (``backtest.prefer``, ``backtest.prefer_margin``):
one or two backtest days are a noisy sample, and a per-series choice on them often
picks a model that was lucky there. The preferred model is ranked first unless the best
candidate's score is more than ``prefer_margin`` below its own (:func:`preferred`). On
days before the held-out EDRP week, with ``seasonal_window`` preferred and a margin of
0.3, this took the default set from 0.711 to 0.678 mean MASE (the plain best-score choice
was worse than ``seasonal_window`` alone, 0.684; benchmarks/results/real_data.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from forecasting.contract import FAILED, FALLBACK, OK
from forecasting.metrics import evaluate, score

ENSEMBLE = "ensemble"
FALLBACK_MODEL = "seasonal_naive"

# Candidate statuses (candidates_json); series statuses are those of the contract.
CANDIDATE_OK, CANDIDATE_FAILED, CANDIDATE_TIMEOUT = "ok", "failed", "timeout"

_MAX_REASON = 300  # characters kept of one error message


@dataclass
class Candidate:
    """One model's backtest on one series."""

    name: str
    status: str = CANDIDATE_OK
    reason: str = ""
    score: float = float("nan")
    fit_s: float = 0.0
    windows: list[dict[str, Any]] = field(default_factory=list)
    members: tuple[str, ...] = ()  # ensemble only

    @property
    def ok(self) -> bool:
        return self.status == CANDIDATE_OK

    def summary(self) -> dict[str, Any]:
        """The candidates_json entry (non-finite scores become ``None``)."""
        out: dict[str, Any] = {
            "status": self.status,
            "reason": self.reason,
            "score": self.score if math.isfinite(self.score) else None,
            "fit_s": round(self.fit_s, 6),
        }
        if self.members:
            out["members"] = list(self.members)
        return out


@dataclass
class Decision:
    """What a series ends with: the contract status, its reason, the model used."""

    status: str
    reason: str
    model: str
    metric_value: float
    fitted: Any = None
    members: tuple[str, ...] = ()


def mean_score(windows: Sequence[Mapping[str, Any]], metric: str) -> float:
    """Mean over windows of each window's :func:`score`."""
    if not windows:
        return float("nan")
    return float(np.mean([score(w, metric) for w in windows]))


def scored(name: str, windows: list[dict[str, Any]], metric: str, fit_s: float = 0.0) -> Candidate:
    """A successful candidate from its backtest windows."""
    return Candidate(name=name, score=mean_score(windows, metric), fit_s=fit_s, windows=windows)


def short_reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def rank(candidates: Sequence[Candidate], order: Sequence[str] = ()) -> list[Candidate]:
    """Successful candidates, best first (ties and non-finite scores: by ``order``,
    then the ensemble, then anything else in input order)."""
    pos = {name: i for i, name in enumerate(order)}

    def key(item: tuple[int, Candidate]) -> tuple[int, float, int, int]:
        i, c = item
        finite = math.isfinite(c.score)
        return (0 if finite else 1, c.score if finite else 0.0, pos.get(c.name, len(pos)), i)

    return [c for _, c in sorted(enumerate(candidates), key=key) if c.ok]


def combine(forecasts: Sequence[Mapping[str, np.ndarray]], method: str) -> dict[str, np.ndarray]:
    """Element-wise mean or median of forecast dicts (every key of the first one).

    Both keep intervals ordered when every member's are: the k-th smallest lower bound
    never exceeds the k-th smallest upper bound.
    """
    if method not in ("mean", "median"):
        raise ValueError(f"ensemble method {method!r}: expected mean or median")
    reduce = np.mean if method == "mean" else np.median
    return {
        key: reduce(np.vstack([np.asarray(f[key], dtype=float) for f in forecasts]), axis=0)
        for key in forecasts[0]
    }


def ensemble_candidate(
    candidates: Sequence[Candidate],
    *,
    top_k: int,
    method: str,
    metric: str,
    y: np.ndarray,
    levels: Sequence[int],
    m: int,
    order: Sequence[str] = (),
) -> Candidate | None:
    """The ``method`` of the ``top_k`` best successful single models' backtest
    forecasts, scored like any candidate; ``None`` with fewer than 2 members with a
    finite score."""
    best = [c for c in rank([c for c in candidates if c.name != ENSEMBLE], order) if math.isfinite(c.score)]
    members = best[:top_k]
    if len(members) < 2:
        return None
    y = np.asarray(y, dtype=float)
    windows: list[dict[str, Any]] = []
    for per_window in zip(*(c.windows for c in members)):
        cut = per_window[0]["cutoff"]
        if any(w["cutoff"] != cut for w in per_window):  # same config, same windows: a bug if not
            raise ValueError("ensemble members were backtested on different windows")
        forecast = combine([w["forecast"] for w in per_window], method)
        h = len(forecast["mean"])
        metrics = evaluate(y[cut : cut + h], forecast, y[:cut], m, levels)
        windows.append({"window": per_window[0]["window"], "cutoff": cut, **metrics, "forecast": forecast})
    cand = scored(ENSEMBLE, windows, metric, fit_s=sum(c.fit_s for c in members))
    cand.members = tuple(c.name for c in members)
    return cand


def preferred(ranking: list[Candidate], prefer: str | None, margin: float) -> list[Candidate]:
    """``ranking`` with ``prefer`` moved first when its score is within ``margin`` (a
    share) of the best score: ``score(prefer) <= best * (1 + margin)``; unchanged when
    ``prefer`` is ``None``, absent, or either score is not finite."""
    if not prefer or not ranking:
        return ranking
    best = ranking[0]
    mine = next((c for c in ranking if c.name == prefer), None)
    if mine is None or mine is best or not (math.isfinite(mine.score) and math.isfinite(best.score)):
        return ranking
    if mine.score <= best.score * (1.0 + margin):
        return [mine, *(c for c in ranking if c is not mine)]
    return ranking


def _failures(candidates: Sequence[Candidate]) -> str:
    """``"a, b: same message; c: other message"``, grouping identical reasons."""
    groups: dict[str, list[str]] = {}
    for c in candidates:
        if not c.ok:
            groups.setdefault(c.reason or c.status, []).append(c.name)
    return "; ".join(f"{', '.join(names)}: {reason}" for reason, names in groups.items())


def decide(
    candidates: Sequence[Candidate],
    refit: Callable[[Candidate], Any],
    order: Sequence[str] = (),
    fallback: str = FALLBACK_MODEL,
    prefer: str | None = None,
    prefer_margin: float = 0.0,
) -> Decision:
    """Settle on a model: the best-ranked candidate that refits, else the fallback.

    Args:
        candidates: every candidate (failed ones included, and the ensemble if any).
        refit: fits a candidate on the full history and returns the fitted model;
            raises on failure. Called with ``Candidate(fallback)`` for the fallback.
        order: ``config.models``, for ties.
        fallback: model fitted on the full history when no candidate refits.
        prefer, prefer_margin: the choice shrunk toward ``prefer`` (:func:`preferred`).
    """
    ranking = preferred(rank(candidates, order), prefer, prefer_margin)
    refit_errors: list[str] = []
    for i, cand in enumerate(ranking):
        try:
            fitted = refit(cand)
        except Exception as exc:  # noqa: BLE001 - a failed refit is data, try the next
            refit_errors.append(f"{cand.name} failed to refit on the full history ({short_reason(exc)})")
            continue
        if i == 0:
            return Decision(OK, "", cand.name, cand.score, fitted, cand.members)
        reason = "; ".join(refit_errors) + f"; using {cand.name}, ranked {i + 1} on the backtest"
        return Decision(FALLBACK, reason, cand.name, cand.score, fitted, cand.members)

    if ranking:
        why = "every candidate failed to refit: " + "; ".join(refit_errors)
    elif candidates:
        why = "every candidate failed the backtest: " + _failures(candidates)
    else:
        why = "no candidate models"
    if refit_errors and any(not c.ok for c in candidates):
        why += "; backtest failures: " + _failures(candidates)
    try:
        fitted = refit(Candidate(fallback))
    except Exception as exc:  # noqa: BLE001
        return Decision(
            FAILED, f"{why}; fallback {fallback} failed too ({short_reason(exc)})", "", float("nan")
        )
    return Decision(FALLBACK, f"{why}; using {fallback} on the full history", fallback, float("nan"), fitted)
