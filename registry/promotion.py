"""Aliases and the promotion gate.

Every registered version gets the alias ``challenger`` from :func:`gate`; the alias
``champion`` is what forecasting and serving load. The gate promotes a challenger when
its mean backtest metric on the series both versions hold is no worse than the
champion's, within ``mlflow.promotion_tolerance``:

    challenger <= champion * (1 + tolerance)     (absolute values for ``bias``)

The champion's per-series metrics come from its training run's ``per_series.parquet``
(the run named by the version tag ``mmf.run_id``), so the comparison is on the same
series, never on two different populations.

Bookkeeping, all in the registry itself:

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
from dataclasses import asdict, dataclass

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from forecasting import contract as C
from forecasting.config import Config
from forecasting.errors import RegistryError
from registry.aliases import CHALLENGER, CHAMPION, champion_version, require_version, versions
from registry.connection import set_uris
from registry.metrics import USABLE, chosen_backtest

log = logging.getLogger(__name__)

HISTORY_TAG = "mmf.champion_history"
PROMOTED_AT_TAG = "mmf.promoted_at"
HISTORY_MAX = 100


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


def _champion_series(tracking_uri: str, run_id: str, metric: str) -> pd.Series | None:
    """The champion's per-series ``metric`` from its run's per_series.parquet, or None."""
    try:
        with tempfile.TemporaryDirectory(prefix="mmf-gate-") as tmp:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path="per_series.parquet", dst_path=tmp, tracking_uri=tracking_uri
            )
            table = pd.read_parquet(path)
    except (MlflowException, OSError) as exc:
        log.warning("cannot read per_series.parquet of run %s: %s", run_id, exc)
        return None
    table = table[table["status"].isin(USABLE)]
    if len(table) and (table["metric"] == metric).all():
        values = table["metric_value"]
    elif metric in table.columns:
        values = table[metric]
    else:
        return None
    series = pd.Series(
        pd.to_numeric(values, errors="coerce").to_numpy(dtype=float),
        index=table[C.SERIES_ID].astype(str).to_numpy(),
    )
    return series[np.isfinite(series)]


def recorded_decision(config: Config, version: str | int) -> Decision | None:
    """The gate's verdict on ``version`` when the gate already ran on it (its version
    tag ``mmf.gate``), else ``None``: a restarted job does not gate the same version
    twice."""
    client = set_uris(config)
    name = config.mlflow.registered_model
    mv = require_version(client, name, str(version))
    reason = (mv.tags or {}).get("mmf.gate")
    if reason is None:
        return None
    champion = champion_version(client, name)
    return Decision(
        champion == str(version), str(version), champion, None, None, 0, reason, config.backtest.metric
    )


def _aggregate(values: pd.Series, metric: str) -> float:
    return float(values.abs().mean() if metric == "bias" else values.mean())


def gate(config: Config, version: str | int, results: pd.DataFrame) -> Decision:
    """Alias ``version`` as ``challenger`` and promote it when it is at least as good
    as the champion on their common series (see the module docstring); the first
    version is promoted. The decision goes to the active run, when there is one
    (metrics ``gate.challenger_metric``, ``gate.champion_metric``,
    ``gate.n_common_series``; tags ``gate.promoted``, ``gate.reason``; ``gate.json``).

    Args:
        config: settings (``mlflow.registered_model``, ``mlflow.promotion_tolerance``,
            ``backtest.metric``).
        version: the newly registered version.
        results: the challenger's training results (TRAIN_RESULT rows).
    """
    client = set_uris(config)
    name = config.mlflow.registered_model
    version = str(version)
    require_version(client, name, version)
    client.set_registered_model_alias(name, CHALLENGER, version)
    metric = config.backtest.metric
    tol = float(config.mlflow.promotion_tolerance)
    champion = champion_version(client, name)
    chal_all = _challenger_series(results, metric)
    chal_mean_all = _aggregate(chal_all, metric) if len(chal_all) else None

    if champion is None:
        promote(config, version)
        decision = Decision(
            True, version, None, chal_mean_all, None, 0, "no champion yet: first version promoted", metric
        )
    elif champion == version:
        decision = Decision(True, version, champion, chal_mean_all, None, 0, "already the champion", metric)
    else:
        decision = _compare(client, config, version, champion, chal_all, metric, tol)
        if decision.promoted:
            promote(config, version)
    client.set_model_version_tag(name, version, "mmf.gate", decision.reason)
    _log_decision(decision)
    log.info("gate %s v%s: %s", name, version, decision.reason)
    return decision


def _compare(
    client: MlflowClient,
    config: Config,
    version: str,
    champion: str,
    chal: pd.Series,
    metric: str,
    tol: float,
) -> Decision:
    name = config.mlflow.registered_model
    champ_mv = client.get_model_version(name, champion)
    run_id = (champ_mv.tags or {}).get("mmf.run_id") or champ_mv.run_id

    def refuse(reason: str, n: int = 0, c: float | None = None, p: float | None = None) -> Decision:
        return Decision(False, version, champion, c, p, n, reason, metric)

    champ = _champion_series(config.mlflow_tracking_uri(), run_id, metric) if run_id else None
    if champ is None:
        return refuse(
            f"champion v{champion} has no per-series {metric} to compare with (run {run_id}): "
            f"promote v{version} explicitly with `mmf promote {version}` if it should serve"
        )
    common = chal.index.intersection(champ.index)
    if len(common) == 0:
        return refuse(
            f"challenger v{version} and champion v{champion} have no series with a {metric} in common: "
            f"promote explicitly with `mmf promote {version}` if it should serve"
        )
    c = _aggregate(chal.loc[common], metric)
    p = _aggregate(champ.loc[common], metric)
    limit = p * (1 + tol)
    label = f"|{metric}|" if metric == "bias" else metric
    on = f"on {len(common)} common series"
    if math.isfinite(c) and c <= limit:
        return Decision(
            True,
            version,
            champion,
            c,
            p,
            len(common),
            f"promoted: challenger {label} {c:.6g} <= champion {p:.6g} x (1 + {tol:g}) {on}",
            metric,
        )
    return refuse(
        f"kept champion v{champion}: challenger {label} {c:.6g} > champion {p:.6g} x (1 + {tol:g}) {on}",
        len(common),
        c,
        p,
    )


def _log_decision(decision: Decision) -> None:
    if mlflow.active_run() is None:
        return
    metrics = {"gate.n_common_series": float(decision.n_common_series)}
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
        }
    )
    mlflow.log_dict(asdict(decision), "gate.json")


__all__ = ["Decision", "champion_history", "gate", "promote", "recorded_decision", "rollback"]
