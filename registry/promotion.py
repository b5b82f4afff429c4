"""Aliases and the promotion gate.

Every registered version gets the alias ``challenger`` from :func:`gate`; the alias
``champion`` is what forecasting and serving load. The gate compares the challenger
with the champion like for like: both scored on the same actuals, on a window that the
champion never saw (:mod:`forecasting.comparison`, run by the train job through its
engine):

* per series, the window is the champion's own forecast window: from its cutoff for
  ``horizon`` steps, clipped to the actuals in silver now. The cutoff is its training end,
  or, once it was kept and forecast again from newer data, the latest of its Gold
  forecasts that the actuals have passed;
* the champion is scored on its own ``gold/forecasts`` rows for that window (made
  before those actuals existed: truly held out), or, without them, on its chosen model
  refit up to its cutoff;
* the challenger's chosen model is refit on the same data up to the same cutoff and
  forecasts the same steps. The refit never sees the window, but the challenger's
  choice of model did (its backtest ends at its newer data end): the per-series column
  ``challenger_saw_window`` says where;
* both are scored with ``backtest.metric`` (MASE scaled by the in-sample seasonal
  naive error up to the cutoff) on the steps both forecasts and the actuals share.

The challenger is promoted when its mean over the compared series is no worse than the
champion's, within ``mlflow.promotion_tolerance``:

    challenger <= champion * (1 + tolerance)     (absolute values for ``bias``)

Fewer compared series than ``gate.min_common_series`` (a first night after a champion
trained on the same data, a champion whose cutoff is after the new data, only new
series) is too little data to judge: the decision says so in its reason and follows
``gate.insufficient`` (``promote`` by default: the challenger is trained on newer data;
or ``keep``). The first version is promoted.

The comparison is recorded per series and in total: in the training run (metrics
``gate.*``, ``gate.json`` and ``gate_series.parquet``) and, by the train job, in
``gold/gate``.

Bookkeeping, all in the registry itself:

* version tag ``mmf.gate``: the gate's reason, set once it decided (a restarted job
  reads the recorded decision, :func:`recorded_decision`, and does not gate again);
* version tag ``mmf.promoted_at``: UTC ISO time the version last became champion;
* registered-model tag ``mmf.champion_history``: JSON list of earlier champions, oldest
  first (the last 100). :func:`promote` pushes the outgoing champion;
  :func:`rollback` pops the most recent one that still exists and makes it champion.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from forecasting import contract as C
from forecasting.comparison import Comparison, gate_frame
from forecasting.config import Config
from forecasting.errors import RegistryError
from registry.aggregates import GateSummary, left_out_text
from registry.aliases import CHALLENGER, CHAMPION, champion_version, require_version, versions
from registry.connection import set_uris
from registry.metrics import USABLE, chosen_backtest
from registry.pyfunc import describe_gate
from registry.results import load_results

log = logging.getLogger(__name__)

HISTORY_TAG = "mmf.champion_history"
PROMOTED_AT_TAG = "mmf.promoted_at"
HISTORY_MAX = 100
GATE_TAG = "mmf.gate"
GATE_JSON = "gate.json"
GATE_SERIES_FILE = "gate_series.parquet"


@dataclass
class Decision:
    """The gate's verdict on one challenger."""

    promoted: bool
    challenger_version: str
    champion_version: str | None
    challenger_metric: float | None
    champion_metric: float | None
    n_common_series: int
    reason: str
    metric: str = ""
    n_points: int = 0  # common points scored, over all compared series
    insufficient: bool = False  # too little common data: decided by gate.insufficient
    series: pd.DataFrame | None = field(default=None, repr=False, compare=False)  # GATE_SERIES rows

    def to_dict(self) -> dict[str, Any]:
        """The decision as ``gate.json`` holds it (without the per-series rows)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "series"}


# -- history ---------------------------------------------------------------------------
def champion_history(client: MlflowClient, name: str) -> list[str]:
    """Earlier champions, oldest first (the registered-model tag ``mmf.champion_history``)."""
    try:
        text = client.get_registered_model(name).tags.get(HISTORY_TAG)
    except MlflowException:
        return []
    try:
        return [str(v) for v in json.loads(text)] if text else []
    except (ValueError, TypeError):
        log.warning("ignoring unreadable %s tag on %s: %r", HISTORY_TAG, name, text)
        return []


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _make_champion(client: MlflowClient, name: str, version: str, history: list[str]) -> None:
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, PROMOTED_AT_TAG, _now())
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-HISTORY_MAX:]))


def promote(config: Config, version: str | int) -> str:
    """Make ``version`` the champion; the outgoing champion goes on the history.

    Returns:
        The new champion version.

    Raises:
        RegistryError: the version does not exist.
    """
    client = set_uris(config)
    name = config.mlflow.registered_model
    version = str(version)
    require_version(client, name, version)
    current = champion_version(client, name)
    if current == version:
        return version
    history = champion_history(client, name)
    if current is not None:
        history.append(current)
    _make_champion(client, name, version, history)
    log.info("%s: champion %s -> %s", name, current, version)
    return version


def rollback(config: Config) -> str:
    """Move ``champion`` back to the previous champion (the last entry of the history
    that still exists).

    Returns:
        The new champion version.

    Raises:
        RegistryError: there is no earlier champion to go back to.
    """
    client = set_uris(config)
    name = config.mlflow.registered_model
    current = champion_version(client, name)
    history = champion_history(client, name)
    existing = set(versions(client, name))
    while history:
        previous = history.pop()
        if previous in existing and previous != current:
            _make_champion(client, name, previous, history)
            log.info("%s: rolled champion back %s -> %s", name, current, previous)
            return previous
    raise RegistryError(
        f"registered model {name!r} has no previous champion to roll back to (champion is "
        f"{current or 'unset'}): promote a version explicitly with `mmf promote VERSION`"
    )


# -- the gate --------------------------------------------------------------------------
def _challenger_series(results: pd.DataFrame, metric: str) -> pd.Series:
    usable = results[results["status"].isin(USABLE)]
    if len(usable) and (usable["metric"] == metric).all():
        values = pd.to_numeric(usable["metric_value"], errors="coerce")
    else:
        bt = chosen_backtest(usable)
        values = (
            bt[metric].reindex(usable[C.SERIES_ID]) if metric in bt else pd.Series(np.nan, index=usable.index)
        )
    series = pd.Series(values.to_numpy(dtype=float), index=usable[C.SERIES_ID].astype(str).to_numpy())
    return series[np.isfinite(series)]


def _aggregate(values: pd.Series, metric: str) -> float:
    return float(values.abs().mean() if metric == "bias" else values.mean())


def champion_run(config: Config, version: str | int) -> tuple[str, str | None] | None:
    """The champion the gate will compare ``version`` with and the id of the run that
    trained it (``None`` when unknown): the train job reads the champion's results of a
    batch of series from that run's ``gold/models`` rows. ``None`` when there is no
    champion, or it is ``version`` itself."""
    client = set_uris(config)
    champion = champion_version(client, config.mlflow.registered_model)
    if champion is None or champion == str(version):
        return None
    mv = client.get_model_version(config.mlflow.registered_model, champion)
    return champion, (mv.tags or {}).get("mmf.run_id") or mv.run_id or None


def champion_to_compare(config: Config, version: str | int) -> tuple[str, pd.DataFrame | None] | None:
    """The champion the gate will compare ``version`` with, and its training results
    (its run's ``results.parquet``; ``None`` when they cannot be read), all at once (a
    champion whose run predates ``gold/models``). ``None`` when there is no champion, or
    it is ``version`` itself."""
    found = champion_run(config, version)
    if found is None:
        return None
    champion, run_id = found
    try:
        return champion, load_results(config, run_id) if run_id else None
    except (MlflowException, OSError) as exc:
        log.warning("cannot read the results of champion v%s (run %s): %s", champion, run_id, exc)
        return champion, None


def gate(
    config: Config, version: str | int, results: pd.DataFrame, comparison: Comparison | None = None
) -> Decision:
    """Alias ``version`` as ``challenger`` and promote it when it is at least as good
    as the champion on their common window (see the module docstring); the first
    version is promoted. The decision goes to the active run, when there is one
    (metrics ``gate.challenger_metric``, ``gate.champion_metric``,
    ``gate.n_common_series``, ``gate.n_points``; tags ``gate.promoted``,
    ``gate.reason``, ``gate.insufficient``; ``gate.json`` and
    ``gate_series.parquet``), before the aliases move.

    Args:
        config: settings (``mlflow.registered_model``, ``mlflow.promotion_tolerance``,
            ``backtest.metric``, ``gate.*``).
        version: the newly registered version.
        results: the challenger's training results (TRAIN_RESULT rows).
        comparison: the per-series comparison with the champion
            (:mod:`forecasting.comparison`); none, or one with another champion, is no
            common data.
    """
    metric = config.backtest.metric
    chal = _challenger_series(results, metric)
    first = _aggregate(chal, metric) if len(chal) else None
    if comparison is None:
        return decide(config, version, first)
    summary = GateSummary.of(comparison.series, metric)
    return decide(config, version, first, comparison.champion_version, summary, comparison.series)


def decide(
    config: Config,
    version: str | int,
    first: float | None,
    compared_with: str | None = None,
    summary: GateSummary | None = None,
    series: pd.DataFrame | None = None,
) -> Decision:
    """:func:`gate` on summaries, small whatever the number of series: ``first`` is the
    challenger's mean ``backtest.metric`` over its usable series (the decision's metric
    when there is no champion yet), ``summary`` its comparison with champion
    ``compared_with``; ``series`` the comparison's rows, when the caller holds them
    (logged as ``gate_series.parquet``; a job writing them elsewhere logs that file
    itself)."""
    client = set_uris(config)
    name = config.mlflow.registered_model
    version = str(version)
    require_version(client, name, version)
    client.set_registered_model_alias(name, CHALLENGER, version)
    metric = config.backtest.metric
    champion = champion_version(client, name)
    if champion is None:
        decision = Decision(
            True, version, None, first, None, 0, "no champion yet: first version promoted", metric
        )
    elif champion == version:
        decision = Decision(True, version, champion, None, None, 0, "already the champion", metric)
    else:
        same = summary is not None and compared_with == champion
        decision = _verdict(config, version, champion, summary if same else None, series if same else None)
    _finish(config, decision)
    return decision


def _finish(config: Config, decision: Decision) -> None:
    """Record the decision (in the active run), then act on it: promote, and tag the
    version ``mmf.gate`` last, the mark that the gate is done."""
    _log_decision(decision)
    if decision.promoted:
        promote(config, decision.challenger_version)
    client = set_uris(config)
    name = config.mlflow.registered_model
    describe_gate(client, name, decision.challenger_version, decision.reason)
    client.set_model_version_tag(name, decision.challenger_version, GATE_TAG, decision.reason)
    log.info("gate %s v%s: %s", name, decision.challenger_version, decision.reason)


def _compare(config: Config, version: str, champion: str, series: pd.DataFrame | None) -> Decision:
    """The verdict on the per-series comparison (GATE_SERIES rows) with ``champion``."""
    summary = None if series is None else GateSummary.of(series, config.backtest.metric)
    return _verdict(config, version, champion, summary, series)


def _verdict(
    config: Config, version: str, champion: str, summary: GateSummary | None, series: pd.DataFrame | None
) -> Decision:
    """The verdict on the comparison with ``champion`` summed up (``None``: none was
    made); ``series``: its rows, when held here (the decision's ``series``)."""
    metric = config.backtest.metric
    tol = float(config.mlflow.promotion_tolerance)
    table = series if series is not None else (gate_frame([]) if summary is None else None)
    s = summary if summary is not None else GateSummary()
    n, points = s.compared, s.points
    if n < config.gate.min_common_series:
        return _insufficient(config, version, champion, s, table, summary is None)
    c, p = float(s.challenger_metric), float(s.champion_metric)
    label = f"|{metric}|" if metric == "bias" else metric
    on = f"on {n} common series ({points} points after the champion's cutoffs)"
    promoted = math.isfinite(c) and c <= p * (1 + tol)
    if promoted:
        reason = f"promoted: challenger {label} {c:.6g} <= champion {p:.6g} x (1 + {tol:g}) {on}"
    else:
        reason = (
            f"kept champion v{champion}: challenger {label} {c:.6g} > champion {p:.6g} x (1 + {tol:g}) {on}"
        )
    return Decision(promoted, version, champion, c, p, n, reason, metric, points, False, table)


def _insufficient(
    config: Config,
    version: str,
    champion: str,
    summary: GateSummary,
    table: pd.DataFrame | None,
    missing: bool,
) -> Decision:
    """The decision on too little common data: ``gate.insufficient``, said so."""
    n = summary.compared
    promoted = config.gate.insufficient == "promote"
    if missing:
        why = f"no comparison with champion v{champion} was made"
    else:
        why = left_out_text(summary.left_out) or (
            "every series was compared" if summary.rows else "the challenger holds no series"
        )
    verdict = f"promoted v{version}" if promoted else f"kept champion v{champion}"
    reason = (
        f"too little common data to compare v{version} with champion v{champion}: {n} series scored on a "
        f"common window, gate.min_common_series is {config.gate.min_common_series} ({why}); "
        f"gate.insufficient is {config.gate.insufficient}: {verdict}"
    )
    metric = config.backtest.metric
    return Decision(promoted, version, champion, None, None, n, reason, metric, 0, True, table)


def recorded_decision(config: Config, version: str | int) -> Decision | None:
    """The gate's verdict on ``version`` when the gate already ran on it, else ``None``:
    a restarted job does not gate the same version twice. The verdict is the one its run
    recorded (``gate.json``, ``gate_series.parquet``); a gate killed after recording it
    but before its version tag ``mmf.gate`` is finished here (promotion, tag)."""
    client = set_uris(config)
    name = config.mlflow.registered_model
    version = str(version)
    mv = require_version(client, name, version)
    tag = (mv.tags or {}).get(GATE_TAG)
    recorded = _read_recorded(config, (mv.tags or {}).get("mmf.run_id") or mv.run_id)
    if recorded is None:
        if tag is None:
            return None
        champion = champion_version(client, name)  # a gate of an earlier release: its tag only
        return Decision(champion == version, version, champion, None, None, 0, tag, config.backtest.metric)
    if tag is None:
        if recorded.promoted:
            promote(config, version)
        describe_gate(client, name, version, recorded.reason)
        client.set_model_version_tag(name, version, GATE_TAG, recorded.reason)
    return recorded


def _read_recorded(config: Config, run_id: str | None) -> Decision | None:
    """The decision a run recorded (``gate.json`` and ``gate_series.parquet``), if any."""
    if not run_id:
        return None
    client = set_uris(config)
    try:
        names = {a.path for a in client.list_artifacts(run_id)}
        if GATE_JSON not in names:
            return None
        with tempfile.TemporaryDirectory(prefix="mmf-gate-") as tmp:
            data = json.loads(Path(client.download_artifacts(run_id, GATE_JSON, tmp)).read_text())
            series = None
            if GATE_SERIES_FILE in names:
                series = pd.read_parquet(client.download_artifacts(run_id, GATE_SERIES_FILE, tmp))
    except (MlflowException, OSError, ValueError) as exc:
        log.warning("cannot read the gate decision of run %s: %s", run_id, exc)
        return None
    known = {f.name for f in fields(Decision)} - {"series"}
    return Decision(**{k: v for k, v in data.items() if k in known}, series=series)


def log_gate_series(batches: Iterable[pd.DataFrame]) -> None:
    """``gate_series.parquet`` in the active run, written a batch of GATE_SERIES rows at
    a time (each sorted by series), for a comparison whose rows are held elsewhere (a
    run's ``gold/gate`` rows)."""
    with tempfile.TemporaryDirectory(prefix="mmf-gate-") as tmp:
        path = Path(tmp) / GATE_SERIES_FILE
        with pq.ParquetWriter(path, C.GATE_SERIES) as writer:
            for rows in batches:
                rows = rows.reindex(columns=C.GATE_SERIES.names).sort_values(C.SERIES_ID, ignore_index=True)
                writer.write_table(pa.Table.from_pandas(rows, schema=C.GATE_SERIES, preserve_index=False))
        mlflow.log_artifact(str(path))


def _log_decision(decision: Decision) -> None:
    if mlflow.active_run() is None:
        return
    metrics = {
        "gate.n_common_series": float(decision.n_common_series),
        "gate.n_points": float(decision.n_points),
    }
    for key in ("challenger_metric", "champion_metric"):
        value = getattr(decision, key)
        if value is not None and math.isfinite(value):
            metrics[f"gate.{key}"] = float(value)
    mlflow.log_metrics(metrics)
    mlflow.set_tags(
        {
            "gate.promoted": str(decision.promoted).lower(),
            "gate.reason": decision.reason[:5000],
            "gate.challenger_version": decision.challenger_version,
            "gate.champion_version": decision.champion_version or "",
            "gate.insufficient": str(decision.insufficient).lower(),
        }
    )
    mlflow.log_dict(decision.to_dict(), GATE_JSON)
    if decision.series is not None:
        with tempfile.TemporaryDirectory(prefix="mmf-gate-") as tmp:
            path = Path(tmp) / GATE_SERIES_FILE
            decision.series.to_parquet(path, index=False)
            mlflow.log_artifact(str(path))


__all__ = [
    "Decision",
    "champion_history",
    "champion_run",
    "champion_to_compare",
    "decide",
    "gate",
    "log_gate_series",
    "promote",
    "recorded_decision",
    "rollback",
]
