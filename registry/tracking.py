"""One MLflow run per training job, logged cheaply from the driver.

Everything per series goes into a single ``per_series.parquet`` artifact; MLflow only
ever sees a handful of calls per job (one batch of params, one of metrics, a few
artifacts), never one call per series.

Tags of a training run:

``mmf.job``             ``train``
``mmf.silver_version``  the pinned silver/readings Delta version the job read
``mmf.engine``          ``local`` or ``spark``
``mmf.code_version``    package version, ``+g<sha>`` when the git commit is known
``mmf.lakehouse``       the lakehouse root
``mmf.host``/``mmf.pid``  who runs it (lets :func:`mark_orphans_failed` leave live runs alone)
``mmf.config_hash``     :func:`config_hash` of the settings that shape the results
``mmf.failure``         set on runs found orphaned by a killed job
``mmf.recovered``       set when a restarted job finished a killed job's run
                        (:func:`resume_run`, :func:`close_recovered`)

Restart: a job killed after it registered its model version (run ``FAILED`` by
:func:`mark_orphans_failed`, or ``RUNNING`` by a dead pid) is found again by
:func:`find_resumable` (same silver version and config hash, a ``READY`` version of this
run) and finished from its ``results.parquet`` instead of training and registering again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.entities import RunStatus

from forecasting import __version__
from forecasting import contract as C
from forecasting.config import Config
from forecasting.errors import RegistryError
from forecasting.models import load_fitted
from forecasting.models.global_models.nn import build_module

log = logging.getLogger(__name__)

JOB_TAG = "mmf.job"
FAILURE_TAG = "mmf.failure"
RECOVERED_TAG = "mmf.recovered"
CONFIG_HASH_TAG = "mmf.config_hash"
ORPHAN_REASON = "orphaned: the job was killed before it finished"
RESULTS_FILE = "results.parquet"  # the engine's TRAIN_RESULT rows, for resuming a killed job
# where and how a job runs, not what it computes: left out of config_hash
_RUNTIME_KEYS = ("lakehouse", "storage_options", "retention_hours", "engine", "workers", "ingest",
                 "nightly", "spark", "serve")
PARAM_MAX = 6000  # MLflow's limit on one param value
TABLE_MAX_ROWS = 20_000  # per_series.json (mlflow.log_table) only below this size
HISTORY_TAIL_SEASONS = 3  # history drawn before the forecast, in horizons
_SECRET = "***"
_USABLE = (C.OK, C.FALLBACK)
_NOT_METRICS = {"model", "window", "cutoff"}


# -- connection ------------------------------------------------------------------------
def set_uris(config: Config) -> MlflowClient:
    """Point the fluent API at ``config.mlflow_tracking_uri()`` (tracking and registry)
    without creating anything; the read-only entry point of :mod:`registry`."""
    uri = config.mlflow_tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def artifact_location(config: Config) -> str | None:
    """``<lakehouse>/mlartifacts`` as a file URI when both the lakehouse and the tracking
    store are local, so artifacts never land in the working directory; ``None`` (the
    tracking server decides) otherwise."""
    uri = config.mlflow_tracking_uri()
    local_store = uri.startswith(("sqlite:", "file:")) or "://" not in uri
    if "://" in config.lakehouse or not local_store:
        return None
    return (Path(config.lakehouse).resolve() / "mlartifacts").as_uri()


def configure(config: Config) -> MlflowClient:
    """Set the tracking and registry URIs from the config, create the experiment
    ``config.mlflow.experiment`` when absent and make it the active one.

    Raises:
        RegistryError: the experiment exists but was deleted.
    """
    from mlflow.exceptions import MlflowException

    client = set_uris(config)
    name = config.mlflow.experiment
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            client.create_experiment(name, artifact_location=artifact_location(config))
        except MlflowException:  # another job created it in between
            pass
        exp = client.get_experiment_by_name(name)
    if exp is None:
        raise RegistryError(
            f"MLflow experiment {name!r} could not be created in {config.mlflow_tracking_uri()}"
        )
    if exp.lifecycle_stage == "deleted":
        raise RegistryError(
            f"MLflow experiment {name!r} (id {exp.experiment_id}) is deleted: restore it "
            f"(`mlflow experiments restore --experiment-id {exp.experiment_id}`) or set "
            "mlflow.experiment to another name"
        )
    mlflow.set_experiment(experiment_id=exp.experiment_id)
    return client


# -- the run ---------------------------------------------------------------------------
def code_version() -> str:
    """Package version, plus ``+g<sha>`` when the source is a git checkout (fail-safe)."""
    repo = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5, check=True
        )
        sha = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+g{sha[:12]}" if sha else __version__


def redacted_config(config: Config) -> dict[str, Any]:
    """The config as a dict with credentials replaced by ``***``: storage option
    values, the API key and any user:password in the tracking URI."""
    data = config.to_dict()
    data["storage_options"] = {k: _SECRET for k in data.get("storage_options") or {}}
    if data.get("serve", {}).get("api_key"):
        data["serve"]["api_key"] = _SECRET
    uri = data.get("mlflow", {}).get("tracking_uri")
    if uri and "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        data["mlflow"]["tracking_uri"] = f"{scheme}://{_SECRET}@{rest.split('@', 1)[1]}"
    return data


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys to string values (lists and empty mappings as JSON), each cut to
    MLflow's 6000-character limit."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
            continue
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        out[name] = text if len(text) <= PARAM_MAX else text[: PARAM_MAX - 3] + "..."
    return out


def config_hash(config: Config, series_ids: list[str] | None = None) -> str:
    """A digest of the settings that shape a training job's results (and of its series
    subset); where and how it runs (lakehouse, engine, workers, ...) is left out."""
    data = config.to_dict()
    for key in _RUNTIME_KEYS:
        data.pop(key, None)
    data["mlflow"].pop("tracking_uri", None)
    data["series_ids"] = sorted(series_ids) if series_ids else None
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def start_training_run(
    config: Config,
    silver_version: int,
    engine: str,
    run_name: str | None = None,
    series_ids: list[str] | None = None,
) -> mlflow.ActiveRun:
    """Start the job's one MLflow run (use it as a context manager: an exception inside
    ends the run ``FAILED``). Logs the flattened config as params, the full config as
    ``conf.yaml`` and the ``mmf.*`` tags."""
    configure(config)
    tags = {
        JOB_TAG: "train",
        CONFIG_HASH_TAG: config_hash(config, series_ids),
        "mmf.silver_version": str(int(silver_version)),
        "mmf.engine": engine,
        "mmf.code_version": code_version(),
        "mmf.lakehouse": config.lakehouse,
        "mmf.host": socket.gethostname(),
        "mmf.pid": str(os.getpid()),
    }
    run = mlflow.start_run(run_name=run_name or f"train-silver-v{int(silver_version)}", tags=tags)
    try:
        data = redacted_config(config)
        mlflow.log_params(flatten(data))
        mlflow.log_text(yaml.safe_dump(data, sort_keys=False), "conf.yaml")
    except Exception:
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    return run


def mark_orphans_failed(config: Config) -> list[str]:
    """Set runs left ``RUNNING`` by a killed job to ``FAILED``, tagged
    ``mmf.failure``; returns their ids.

    A run is left alone when it is this process's active run, or when it was started on
    this host by a process that is still alive. Runs of other hosts are taken as
    orphans: jobs of one experiment are expected to run one at a time.
    """
    client = configure(config)
    exp = client.get_experiment_by_name(config.mlflow.experiment)
    active = mlflow.active_run()
    active_id = active.info.run_id if active else None
    host = socket.gethostname()
    runs = client.search_runs(
        [exp.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000
    )
    orphans = []
    for run in runs:
        tags = run.data.tags
        if JOB_TAG not in tags or run.info.run_id == active_id:
            continue
        if _live(tags, host):
            continue
        client.set_tag(run.info.run_id, FAILURE_TAG, ORPHAN_REASON)
        client.set_terminated(run.info.run_id, status=RunStatus.to_string(RunStatus.FAILED))
        orphans.append(run.info.run_id)
    if orphans:
        log.warning("marked %d orphaned run(s) FAILED: %s", len(orphans), ", ".join(orphans))
    return orphans


def _live(tags: dict[str, str], host: str) -> bool:
    """The run's job is alive: started on this host by a process that still runs."""
    return tags.get("mmf.host") == host and _alive(tags.get("mmf.pid"))


def _alive(pid: str | None) -> bool:
    try:
        os.kill(int(pid), 0)  # type: ignore[arg-type]
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    try:  # a killed process its parent has not reaped yet is a zombie: dead
        stat = Path(f"/proc/{int(pid)}/stat").read_text()  # type: ignore[arg-type]
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


# -- restart ---------------------------------------------------------------------------
def find_resumable(config: Config, silver_version: int, series_ids: list[str] | None = None):
    """The newest training run a killed job left after registering its model version:
    ``(run, model_version)``, or ``None``. It must have been found orphaned (``FAILED``
    with ``mmf.failure``: run :func:`mark_orphans_failed` first; a run that failed on an
    exception is not resumed, its job is run again), carry this silver version and config
    hash, hold a ``results.parquet`` and own a ``READY`` version of
    ``mlflow.registered_model``."""
    client = set_uris(config)
    exp = client.get_experiment_by_name(config.mlflow.experiment)
    if exp is None:
        return None
    query = (
        f"attributes.status = 'FAILED' and tags.`{JOB_TAG}` = 'train' "
        f"and tags.`mmf.silver_version` = '{int(silver_version)}' "
        f"and tags.`{CONFIG_HASH_TAG}` = '{config_hash(config, series_ids)}'"
    )
    runs = client.search_runs([exp.experiment_id], filter_string=query, order_by=["attributes.start_time DESC"], max_results=20)
    name = config.mlflow.registered_model
    for run in runs:
        if run.data.tags.get(FAILURE_TAG) != ORPHAN_REASON:
            continue
        try:
            versions = client.search_model_versions(f"name = '{name}' and run_id = '{run.info.run_id}'")
        except Exception:  # noqa: BLE001 - no registered model yet
            return None
        ready = sorted((mv for mv in versions if mv.status == "READY"), key=lambda mv: int(mv.version))
        if ready and any(a.path == RESULTS_FILE for a in client.list_artifacts(run.info.run_id)):
            return run, ready[0]
    return None


def load_results(config: Config, run_id: str) -> pd.DataFrame:
    """The TRAIN_RESULT rows a run logged (``results.parquet``)."""
    import pyarrow.parquet as pq

    set_uris(config)
    with tempfile.TemporaryDirectory(prefix="mmf-results-") as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=RESULTS_FILE, dst_path=tmp)
        return pq.read_table(path).to_pandas()


@contextlib.contextmanager
def resume_run(config: Config, run_id: str, note: str):
    """Re-open a killed job's run as the active run (ended ``FINISHED``, or ``FAILED``
    on an exception, like :func:`start_training_run`), now owned by this process."""
    client = configure(config)
    with mlflow.start_run(run_id=run_id) as run:
        _mark_recovered(client, run_id, note)
        yield run


def close_recovered(config: Config, run_id: str, note: str) -> bool:
    """End as ``FINISHED`` a run whose job was killed after recording everything (its
    rows are in Gold) but before ending the run; a run still alive, or already
    finished, is left alone. Returns whether the run was closed."""
    client = configure(config)
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - an unknown id: nothing to close
        return False
    status, tags = run.info.status, run.data.tags
    if status == "FINISHED" or (status == "RUNNING" and _live(tags, socket.gethostname())):
        return False
    if status not in ("RUNNING", "FAILED"):
        return False
    _mark_recovered(client, run_id, note)
    client.set_terminated(run_id, status=RunStatus.to_string(RunStatus.FINISHED))
    log.warning("closed run %s of a killed job: %s", run_id, note)
    return True


def _mark_recovered(client: MlflowClient, run_id: str, note: str) -> None:
    tags = client.get_run(run_id).data.tags
    if FAILURE_TAG in tags:
        client.delete_tag(run_id, FAILURE_TAG)
    client.set_tag(run_id, RECOVERED_TAG, f"{note} (pid {os.getpid()} on {socket.gethostname()})")
    client.set_tag(run_id, "mmf.pid", str(os.getpid()))
    client.set_tag(run_id, "mmf.host", socket.gethostname())


# -- results ---------------------------------------------------------------------------
def chosen_backtest(results: pd.DataFrame) -> pd.DataFrame:
    """Per series, the chosen model's backtest metrics averaged over its windows
    (index ``series_id``; columns mae, rmse, ..., coverage_<lv>, pinball_<lv>)."""
    rows: list[dict[str, Any]] = []
    for sid, model, payload in zip(results[C.SERIES_ID], results["model"], results["backtest_json"]):
        if not model or not payload:
            continue
        sums: dict[str, list[float]] = {}
        for entry in json.loads(payload):
            if entry.get("model") != model:
                continue
            for key, value in entry.items():
                if key in _NOT_METRICS or isinstance(value, (str, bool)) or value is None:
                    continue
                if isinstance(value, (int, float)) and math.isfinite(value):
                    sums.setdefault(key, []).append(float(value))
        if sums:
            rows.append({C.SERIES_ID: sid, **{k: float(np.mean(v)) for k, v in sums.items()}})
    if not rows:
        return pd.DataFrame(index=pd.Index([], name=C.SERIES_ID, dtype=object))
    return pd.DataFrame(rows).set_index(C.SERIES_ID)


def per_series_table(results: pd.DataFrame) -> pd.DataFrame:
    """What ``per_series.parquet`` holds: one row per series with its status and the
    chosen model's mean backtest metrics."""
    base = results[
        [C.SERIES_ID, "status", "reason", "model", "metric", "metric_value", "n_obs", "end"]
    ].copy()
    bt = chosen_backtest(results)
    if len(bt.columns):
        base = base.merge(bt, left_on=C.SERIES_ID, right_index=True, how="left")
    return base.reset_index(drop=True)


def aggregate_metrics(results: pd.DataFrame, n_quarantined: int | None = None) -> dict[str, float]:
    """The run's aggregate metrics (see :func:`log_results`)."""
    status = results["status"]
    out: dict[str, float] = {
        "n_series": float(len(results)),
        "n_ok": float((status == C.OK).sum()),
        "n_fallback": float((status == C.FALLBACK).sum()),
        "n_failed": float((status == C.FAILED).sum()),
    }
    if n_quarantined is not None:
        out["n_quarantined"] = float(n_quarantined)
    usable = results[status.isin(_USABLE)]
    values = pd.to_numeric(usable["metric_value"], errors="coerce")
    values = values[np.isfinite(values)]
    if len(values):
        out["metric_value_mean"] = float(values.mean())
        out["metric_value_median"] = float(values.median())
    bt = chosen_backtest(usable)
    for col in bt.columns:
        mean = bt[col].mean()
        if pd.notna(mean) and math.isfinite(mean):
            out[f"backtest.{col}"] = float(mean)
    for model, count in usable["model"].value_counts().items():
        if model:
            out[f"chosen.{model}"] = float(count)
    return out


def log_results(
    results: pd.DataFrame,
    config: Config,
    history: pd.DataFrame | None = None,
    n_quarantined: int | None = None,
) -> dict[str, float]:
    """Log a training job's results to the active run in a few calls.

    Metrics: ``n_series``, ``n_ok``, ``n_fallback``, ``n_failed``, ``n_quarantined``
    (when given), ``metric_value_mean``/``metric_value_median`` (ok and fallback series),
    ``backtest.<m>`` (mean over series of the chosen model's backtest metric ``m``) and
    ``chosen.<model>`` (series per chosen model). Artifacts: ``per_series.parquet``,
    ``per_series.json`` (an MLflow table, up to 20,000 series),
    ``plots/forecast_vs_actuals.png`` (``config.mlflow.sample_plots`` series; needs
    ``history``: silver rows ``series_id, ts, y``) and ``plots/error_distribution.png``.

    Returns:
        The aggregate metrics logged.

    Raises:
        RegistryError: no active run.
    """
    if mlflow.active_run() is None:
        raise RegistryError("log_results needs an active MLflow run: call it inside start_training_run(...)")
    metrics = aggregate_metrics(results, n_quarantined)
    mlflow.log_metrics(metrics)
    table = per_series_table(results)
    with tempfile.TemporaryDirectory(prefix="mmf-run-") as tmp:
        path = Path(tmp) / "per_series.parquet"
        table.to_parquet(path, index=False)
        mlflow.log_artifact(str(path))
        _log_train_results(results, Path(tmp) / RESULTS_FILE)
        plots = Path(tmp) / "plots"
        plots.mkdir()
        plot_errors(results, config, plots / "error_distribution.png")
        if history is not None and config.mlflow.sample_plots > 0:
            plot_forecasts(results, config, history, plots / "forecast_vs_actuals.png")
        mlflow.log_artifacts(str(plots), artifact_path="plots")
    if len(table) <= TABLE_MAX_ROWS:
        json_table = table.assign(end=table["end"].astype(str))
        mlflow.log_table(json_table, artifact_file="per_series.json")
    return metrics


def _log_train_results(results: pd.DataFrame, path: Path) -> None:
    """``results.parquet``: the engine's rows as returned (TRAIN_RESULT), so a job killed
    after registering can write its Gold rows without training again."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = [n for n in C.TRAIN_RESULT.names if n in results.columns]
    schema = pa.schema([C.TRAIN_RESULT.field(n) for n in names])
    pq.write_table(pa.Table.from_pandas(results[names], schema=schema, preserve_index=False), path, compression="zstd")
    mlflow.log_artifact(str(path))


# -- plots -----------------------------------------------------------------------------
def _figure(width: float, height: float):
    # The object API renders with Agg without touching pyplot's global backend/state.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def plot_errors(results: pd.DataFrame, config: Config, path: Path) -> None:
    """Histogram of ``metric_value`` over ok and fallback series."""
    usable = results[results["status"].isin(_USABLE)]
    values = pd.to_numeric(usable["metric_value"], errors="coerce").to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    fig = _figure(7, 4)
    ax = fig.add_subplot()
    metric = config.backtest.metric
    if len(values):
        ax.hist(values, bins=min(50, max(5, len(values) // 5)), color="#4C72B0")
        ax.axvline(
            float(np.median(values)), color="k", linestyle="--", label=f"median {np.median(values):.3g}"
        )
        ax.legend()
    else:
        ax.text(
            0.5, 0.5, "no series with a backtest metric", ha="center", va="center", transform=ax.transAxes
        )
    ax.set_xlabel(f"backtest {metric} of the chosen model")
    ax.set_ylabel("series")
    ax.set_title(f"{metric} over {len(values)} series")
    fig.savefig(path, dpi=100)


def sample_series(results: pd.DataFrame, config: Config) -> list[str]:
    """``config.mlflow.sample_plots`` usable series, drawn with ``config.seed``."""
    ids = sorted(results.loc[results["status"].isin(_USABLE), C.SERIES_ID].astype(str))
    n = min(config.mlflow.sample_plots, len(ids))
    if n == 0:
        return []
    picked = np.random.default_rng(config.seed).choice(len(ids), size=n, replace=False)
    return [ids[i] for i in sorted(picked)]


def _model_freq(data: dict[str, Any]) -> str | None:
    if data.get("freq"):
        return data["freq"]
    for member in data.get("members") or []:
        if member.get("freq"):
            return member["freq"]
    return None


def plot_forecasts(results: pd.DataFrame, config: Config, history: pd.DataFrame, path: Path) -> None:
    """History tail and the chosen model's forecast (``config.horizon`` steps, widest
    interval shaded) for a sample of series. A model that needs future regressors gets
    the last observed ones repeated (a plot-only approximation)."""
    ids = sample_series(results, config)
    if not ids:
        return
    rows = results.set_index(results[C.SERIES_ID].astype(str))
    hist = history[history[C.SERIES_ID].astype(str).isin(ids)]
    groups = {str(k): g.sort_values(C.TS) for k, g in hist.groupby(C.SERIES_ID, sort=False)}
    levels = sorted(config.levels)
    h = config.horizon
    ncols = 2 if len(ids) > 1 else 1
    nrows = math.ceil(len(ids) / ncols)
    fig = _figure(6 * ncols, 3 * nrows)
    for i, sid in enumerate(ids):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        row = rows.loc[sid]
        g = groups.get(sid)
        if g is not None and len(g):
            tail = g.tail(HISTORY_TAIL_SEASONS * h)
            ax.plot(pd.to_datetime(tail[C.TS]), tail[C.Y], color="k", lw=1, label="actual")
        title = f"{sid}: {row['model']} ({row['status']})"
        try:
            fitted = load_fitted(row["model_json"])
            try:
                fc = fitted.predict(h, level=levels)
            except Exception:
                if g is None or "temperature" not in g or not g["temperature"].notna().any():
                    raise
                last = g["temperature"].ffill().to_numpy(dtype=float)[-h:]
                fc = fitted.predict(h, X=np.resize(last, h).reshape(-1, 1), level=levels)
            freq = _model_freq(json.loads(row["model_json"])) or config.freq
            future = future_index(pd.Timestamp(row["end"]), freq, h)
            ax.plot(future, fc["mean"], color="#C44E52", lw=1.2, label="forecast")
            for lv, alpha in zip(reversed(levels), np.linspace(0.15, 0.35, len(levels))):
                ax.fill_between(
                    future, fc[f"lo-{lv}"], fc[f"hi-{lv}"], color="#C44E52", alpha=alpha, lw=0, label=f"{lv}%"
                )
        except Exception as exc:  # noqa: BLE001 - a plot never fails the run
            title += f" - no forecast: {str(exc)[:60]}"
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=7)
    fig.savefig(path, dpi=90)


def future_index(end: pd.Timestamp, freq: str, h: int) -> pd.DatetimeIndex:
    """``end + k * freq`` for k = 1..h."""
    off = pd.tseries.frequencies.to_offset(freq)
    if isinstance(off, pd.offsets.Tick):
        return pd.DatetimeIndex(end + np.arange(1, h + 1) * pd.Timedelta(off))
    return pd.DatetimeIndex([end + k * off for k in range(1, h + 1)])


# -- reading a run back ---------------------------------------------------------------
def log_series_subset(series_ids: list[str]) -> None:
    """Record that the active run trained only these series (``mmf reproduce`` reads it)."""
    mlflow.log_dict({"series_ids": list(series_ids)}, "series_ids.json")


def run_record(config: Config, run_id: str) -> dict[str, Any]:
    """What a training run recorded: its config (as logged), silver version, metrics and
    series subset, for ``mmf reproduce``."""
    client = set_uris(config)
    try:
        run = client.get_run(run_id)
    except Exception:
        raise RegistryError(f"no MLflow run {run_id!r} in {config.mlflow_tracking_uri()}") from None
    if run.data.tags.get(JOB_TAG) != "train":
        raise RegistryError(f"run {run_id} is not a training run (tag {JOB_TAG}={run.data.tags.get(JOB_TAG)!r})")
    conf = yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{run_id}/conf.yaml"))
    try:
        subset = mlflow.artifacts.load_dict(f"runs:/{run_id}/series_ids.json")["series_ids"]
    except Exception:
        subset = None
    return {
        "config": conf,
        "silver_version": int(run.data.tags["mmf.silver_version"]),
        "metrics": dict(run.data.metrics),
        "series_ids": subset,
    }


# -- global models ---------------------------------------------------------------------
TRIAL_TAG = "mmf.trial_of"  # child runs of a global model's search (never tagged mmf.job)
GLOBAL_NN_ARTIFACT = "global_nn_pytorch"


def log_global_models(report: Any) -> dict[str, float]:
    """Log what the driver's global-model step did to the active (training) run.

    Per global model: metrics ``global.<name>.train_s`` (tuning + every fit),
    ``global.<name>.n_ok``, and for ``global_nn`` the loss per epoch of the final fit
    (``global.global_nn.loss``, step = epoch); ``global_models/<name>.json`` (params,
    fits, tuning summary). Each Hyperopt trial (and the untuned configuration) becomes a
    child run (``nested=True``) with its params, ``loss`` and ``trial_s``; a failed trial
    ends ``FAILED`` with its error. ``global_nn`` is also logged with MLflow's PyTorch
    flavour (artifact ``global_nn_pytorch``, pickled by that flavour: a secondary copy
    for the platform; the many-models pyfunc never reads it).

    ``report``: a :class:`training.global_models.GlobalReport`. Returns the metrics.
    """
    if mlflow.active_run() is None:
        raise RegistryError("log_global_models needs an active MLflow run: call it inside start_training_run(...)")
    metrics: dict[str, float] = {}
    for name, run in report.runs.items():
        metrics[f"global.{name}.train_s"] = float(run.seconds)
        metrics[f"global.{name}.n_ok"] = float(run.n_ok)
        summary = {
            "params": run.params,
            "error": run.error,
            "weights": run.weights.id if run.weights is not None else None,
            "weights_bytes": run.weights.n_bytes if run.weights is not None else 0,
            "fits": [vars(f) for f in run.fits],
            "tuning": None if run.tune is None else {**run.tune.summary(), "trials": run.trials_kind},
        }
        mlflow.log_dict(json.loads(json.dumps(summary, default=str)), f"global_models/{name}.json")
        final = next((f for f in run.fits if f.label == "full"), None)
        if final is not None and final.losses:
            for epoch, loss in enumerate(final.losses):
                mlflow.log_metric(f"global.{name}.loss", float(loss), step=epoch)
        if run.tune is not None:
            _log_trials(name, run.tune, run.trials_kind)
        if name == "global_nn" and run.weights is not None:
            try:
                _log_pytorch(run.weights)
            except Exception as exc:  # noqa: BLE001 - a secondary copy never fails the job
                log.warning("global_nn: the MLflow PyTorch flavour could not be logged: %s", exc)
                mlflow.set_tag("mmf.global_nn_pytorch_error", str(exc)[:500])
    if metrics:
        mlflow.log_metrics(metrics)
    return metrics


def _log_trials(name: str, result: Any, kind: str) -> None:
    """One child run per trial of ``name``'s search, plus one for the untuned values."""
    default = {"number": -1, "status": "ok", "loss": result.default_loss, "params": {}, "seconds": 0.0, "error": ""}
    for trial in [default, *result.trials]:
        label = "default" if trial["number"] < 0 else f"trial-{trial['number']}"
        tags = {TRIAL_TAG: name, "mmf.trials": kind, "mmf.trial": label}
        failed = trial["status"] != "ok" or not math.isfinite(float(trial["loss"]))
        with mlflow.start_run(run_name=f"{name}-{label}", nested=True, tags=tags):
            if trial["params"]:
                mlflow.log_params({k: json.dumps(v) if not isinstance(v, str) else v for k, v in trial["params"].items()})
            values = {"trial_s": float(trial["seconds"])}
            if not failed:
                values["loss"] = float(trial["loss"])
            mlflow.log_metrics(values)
            if failed:
                mlflow.set_tag("mmf.trial_error", str(trial.get("error") or "non-finite loss")[:500])
                mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))


def _log_pytorch(weights: Any) -> None:
    try:
        import torch
    except ImportError:  # serving-only install: nothing to log
        return
    import mlflow.pytorch

    module = build_module(weights.meta, weights.arrays)
    module.eval()
    mlflow.pytorch.log_model(
        module,
        name=GLOBAL_NN_ARTIFACT,
        serialization_format="pickle",  # 'pt2' needs a single-tensor signature; forward takes (x, ctx)
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        metadata={"mmf.weights": weights.id},
    )
