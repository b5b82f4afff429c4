"""A training run summed up from facts: what the run's metrics and the gate's decision
need, small whatever the number of series (pure pandas, nothing logged here).

A *facts* function maps rows of a table (a run's ``gold/models`` rows, its ``gold/gate``
rows) to rows ``key, value``, one or a few per input row, each input row on its own (so
an engine may hand it the rows in any number of pieces). An engine sums the facts up per
key (:meth:`training.engines.base.Engine.aggregate`: on Spark, a Spark aggregation whose
result alone comes to the driver; locally, batch by batch with :class:`Totals`) into a
:class:`Stat` per key: the number of facts, the sum and the number of their non-null
values and, for the keys asked, the median of the values. :func:`run_metrics` and
:func:`gate_summary` read the numbers the run logs and the gate decides on from them.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa

from forecasting import contract as C
from registry.metrics import USABLE, chosen_backtest, finite_metric_values, gate_compared

KEY, VALUE = "key", "value"
FACTS = pa.schema([(KEY, pa.string()), (VALUE, pa.float64())])
METRIC_VALUE = "metric_value"  # the median of this key is wanted (run_metrics)
NOT_FINITE = "a metric that is not finite"


class ExactSum:
    """A float sum that is exact until its final rounding (Shewchuk's partials, as
    :func:`math.fsum`), so it does not depend on how the values were batched or ordered."""

    def __init__(self) -> None:
        self.partials: list[float] = []

    def add(self, values: Iterable[float]) -> None:
        partials = self.partials
        for x in values:
            i = 0
            for y in partials:
                if abs(x) < abs(y):
                    x, y = y, x
                hi = x + y
                lo = y - (hi - x)
                if lo:
                    partials[i] = lo
                    i += 1
                x = hi
            partials[i:] = [x]

    def value(self) -> float:
        return math.fsum(self.partials)


@dataclass(frozen=True)
class Stat:
    """The facts of one key summed up: ``count`` facts, ``n`` of them with a value,
    ``total`` the sum of those values, ``median`` their median (when asked for)."""

    count: int = 0
    n: int = 0
    total: float = 0.0
    median: float | None = None

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None


class Totals:
    """Facts summed up batch by batch (the local engine's :meth:`aggregate`): per key the
    counts and an exact sum; the values themselves only for the keys whose median is
    wanted."""

    def __init__(self, medians: Iterable[str] = ()) -> None:
        self.medians = set(medians)
        self.counts: Counter = Counter()
        self.ns: Counter = Counter()
        self.sums: dict[str, ExactSum] = {}
        self.values: dict[str, list[np.ndarray]] = {}

    def add(self, facts: pd.DataFrame) -> None:
        if not len(facts):
            return
        for key, group in facts.groupby(KEY, sort=False):
            key = str(key)
            values = pd.to_numeric(group[VALUE], errors="coerce").dropna().to_numpy(dtype=float)
            self.counts[key] += len(group)
            self.ns[key] += len(values)
            self.sums.setdefault(key, ExactSum()).add(values.tolist())
            if key in self.medians:
                self.values.setdefault(key, []).append(values)

    def stats(self) -> dict[str, Stat]:
        out = {}
        for key, count in self.counts.items():
            median = None
            if key in self.medians and self.ns[key]:
                median = float(np.median(np.concatenate(self.values[key])))
            out[key] = Stat(int(count), int(self.ns[key]), self.sums[key].value(), median)
        return out


def facts(keys: Iterable[str], values: Iterable[float | None] | None = None) -> pd.DataFrame:
    """Facts as a frame (``values`` ``None``: facts without a value, counted only)."""
    keys = list(keys)
    vals = [None] * len(keys) if values is None else list(values)
    return pd.DataFrame({KEY: pd.Series(keys, dtype=object), VALUE: pd.Series(vals, dtype=float)})


# -- the run's metrics -----------------------------------------------------------------
def run_facts(rows: pd.DataFrame) -> pd.DataFrame:
    """The facts of TRAIN_RESULT rows behind :func:`run_metrics`: ``n_series`` and
    ``n_<status>`` per row; per usable series ``chosen.<model>``, its finite
    ``metric_value`` and its chosen model's mean backtest metrics (``backtest.<m>``)."""
    status = rows["status"].astype(str)
    parts = [facts(["n_series"] * len(rows)), facts("n_" + status)]
    usable = rows[rows["status"].isin(USABLE)]
    parts.append(facts(["chosen." + m for m in usable["model"].tolist() if m]))
    values = finite_metric_values(usable)
    parts.append(facts([METRIC_VALUE] * len(values), values.tolist()))
    bt = chosen_backtest(usable)
    for col in bt.columns:
        got = pd.to_numeric(bt[col], errors="coerce").dropna()
        parts.append(facts([f"backtest.{col}"] * len(got), got.tolist()))
    return pd.concat([p for p in parts if len(p)] or [facts([])], ignore_index=True)


def run_metrics(stats: Mapping[str, Stat], n_quarantined: int | None = None) -> dict[str, float]:
    """The run's aggregate metrics (see :func:`registry.results.log_results`) from the
    sums of :func:`run_facts`."""

    def count(key: str) -> float:
        return float(stats[key].count) if key in stats else 0.0

    out: dict[str, float] = {
        k: count(k) for k in ("n_series", "n_ok", "n_fallback", "n_failed", "n_cold_start")
    }
    if n_quarantined is not None:
        out["n_quarantined"] = float(n_quarantined)
    value = stats.get(METRIC_VALUE)
    if value is not None and value.n:
        out["metric_value_mean"] = float(value.mean)
        out["metric_value_median"] = float(value.median)
    for key in sorted(k for k in stats if k.startswith("backtest.")):
        mean = stats[key].mean
        if mean is not None and math.isfinite(mean):
            out[key] = float(mean)
    for key in sorted(k for k in stats if k.startswith("chosen.")):
        out[key] = count(key)
    return out


# -- the gate --------------------------------------------------------------------------
@dataclass(frozen=True)
class GateSummary:
    """What the gate decides on, small whatever the number of series: the challenger's
    series in the comparison (``rows``), those scored (``compared``: a common point and
    a finite metric on both sides) with their ``points`` and mean metrics (``|.|`` for
    ``bias``), and why the others were left out (reason -> series, most common first)."""

    rows: int = 0
    compared: int = 0
    points: int = 0
    challenger_metric: float | None = None
    champion_metric: float | None = None
    left_out: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, series: pd.DataFrame, metric: str) -> GateSummary:
        """The summary of GATE_SERIES rows in one frame."""
        stats = Totals()
        stats.add(gate_facts(series, metric))
        return gate_summary(stats.stats(), order=_first_seen(series))


def _first_seen(series: pd.DataFrame) -> list[str]:
    """The left-out reasons of a frame in pandas' ``value_counts`` order."""
    scored = set(gate_compared(series)[C.SERIES_ID])
    rest = series[~series[C.SERIES_ID].isin(scored)]
    return rest["reason"].fillna("").replace("", NOT_FINITE).value_counts().index.tolist()


def gate_facts(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The facts of GATE_SERIES rows behind :class:`GateSummary`: ``rows`` per row; per
    scored row ``compared`` (its points), ``challenger_metric`` and ``champion_metric``
    (absolute values for ``bias``); per other row ``left_out:<reason>``."""
    common = gate_compared(rows)
    scored = rows[C.SERIES_ID].isin(set(common[C.SERIES_ID])).to_numpy()
    rest = rows[~scored]
    reasons = rest["reason"].fillna("").replace("", NOT_FINITE)
    chal = common["challenger_metric"].astype(float)
    champ = common["champion_metric"].astype(float)
    if metric == "bias":
        chal, champ = chal.abs(), champ.abs()
    parts = [
        facts(["rows"] * len(rows)),
        facts(["compared"] * len(common), common["n_points"].astype(float).tolist()),
        facts(["challenger_metric"] * len(common), chal.tolist()),
        facts(["champion_metric"] * len(common), champ.tolist()),
        facts(("left_out:" + reasons).tolist()),
    ]
    return pd.concat([p for p in parts if len(p)] or [facts([])], ignore_index=True)


def gate_summary(stats: Mapping[str, Stat], order: list[str] | None = None) -> GateSummary:
    """The :class:`GateSummary` from the sums of :func:`gate_facts` (left-out reasons
    most common first, ties by reason, unless ``order`` gives them)."""
    left = {k[len("left_out:") :]: s.count for k, s in stats.items() if k.startswith("left_out:")}
    keys = order if order is not None else sorted(left, key=lambda r: (-left[r], r))
    compared = stats.get("compared", Stat())
    return GateSummary(
        rows=stats["rows"].count if "rows" in stats else 0,
        compared=compared.count,
        points=int(round(compared.total)),
        challenger_metric=stats["challenger_metric"].mean if "challenger_metric" in stats else None,
        champion_metric=stats["champion_metric"].mean if "champion_metric" in stats else None,
        left_out={k: left[k] for k in keys if k in left},
    )


def left_out_text(left_out: Mapping[str, int], limit: int = 3) -> str:
    """Why series were left out: the first ``limit`` reasons with their counts."""
    items = list(left_out.items())
    parts = [f"{n} series: {why}" for why, n in items[:limit]]
    if len(items) > limit:
        parts.append(f"{sum(n for _, n in items[limit:])} series: other reasons")
    return "; ".join(parts)


def challenger_facts(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The facts of TRAIN_RESULT rows the gate needs without a champion: per usable
    series its finite ``backtest.metric`` (``metric_value`` where that is the metric it
    was chosen on, else its chosen model's backtest mean; absolute for ``bias``), as
    ``challenger_metric``."""
    usable = rows[rows["status"].isin(USABLE)]
    values = pd.to_numeric(usable["metric_value"], errors="coerce").to_numpy(dtype=float)
    other = (usable["metric"] != metric).to_numpy()
    if other.any():
        bt = chosen_backtest(usable[other])
        got = bt[metric].reindex(usable.loc[other, C.SERIES_ID]) if metric in bt else np.nan
        values[other] = np.asarray(got, dtype=float)
    values = values[np.isfinite(values)]
    if metric == "bias":
        values = np.abs(values)
    return facts(["challenger_metric"] * len(values), values.tolist())
