"""A training job's one MLflow run: its tags, its configuration and reading it back.

Tags of a training run:

``mmf.job``             ``train``
``mmf.silver_version``  the pinned silver/readings Delta version the job read
``mmf.engine``          ``local`` or ``spark``
``mmf.code_version``    package version, ``+g<sha>`` when the git commit is known
``mmf.lakehouse``       the lakehouse root
``mmf.host``/``mmf.pid``  who runs it (lets :func:`registry.recovery.mark_orphans_failed`
                        leave live runs alone)
``mmf.config_hash``     :func:`config_hash` of the settings that shape the results
``mmf.batches``         the number of bucket ranges (batches) the job's plan has; a
                        restarted job re-opens the run only on the same plan
``mmf.failure``         why the run ended ``FAILED``: set on runs found orphaned by a killed
                        job (:mod:`registry.recovery`), and by the run itself when an
                        exception ends it (:class:`JobRun`): ``stopped: ...`` when the job
                        was stopped from outside (SIGTERM, a closed output pipe, Ctrl-C;
                        resumed by the next job like a killed one), ``failed: ...`` otherwise
``mmf.recovered``       set when a restarted job finished a killed job's run
                        (:mod:`registry.recovery`)

Params: the flattened, redacted config; artifacts: ``conf.yaml`` (the same config) and,
for a job on a subset of series, ``series_ids.json``.

The run is named for its day and data (``train 2026-12-03 14:05 UTC silver v12``), its
description (the ``mlflow.note.content`` tag) says what it trains on what, and its input
is the silver table at the pinned version (``mlflow.log_input``: a dataset whose source
is the Delta table's path and version, context ``training``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.data.delta_dataset_source import DeltaDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import RunStatus
from mlflow.types import ColSpec, Schema

from forecasting import __version__
from forecasting import contract as C
from forecasting.config import Config
from forecasting.errors import JobStopped, RegistryError
from registry.connection import configure, set_uris
from training.tables import SILVER_READINGS, Lakehouse

JOB_TAG = "mmf.job"
FAILURE_TAG = "mmf.failure"
STOPPED = "stopped: "  # mmf.failure of a job stopped from outside: resumed like a killed one
DESCRIPTION_TAG = "mlflow.note.content"  # what the MLflow UI shows as a run's description
CONFIG_HASH_TAG = "mmf.config_hash"
SILVER_VERSION_TAG = "mmf.silver_version"
BATCHES_TAG = "mmf.batches"
# where and how a job runs, not what it computes: left out of config_hash
_RUNTIME_KEYS = (
    "lakehouse",
    "storage_options",
    "retention_hours",
    "engine",
    "workers",
    "ingest",
    "nightly",
    "spark",
    "serve",
)
PARAM_MAX = 6000  # MLflow's limit on one param value
_SECRET = "***"


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
    data["mlflow"].pop("bundle", None)  # how the version holds its models, not what they are
    data["series_ids"] = sorted(series_ids) if series_ids else None
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def start_training_run(
    config: Config,
    silver_version: int,
    engine: str,
    run_name: str | None = None,
    series_ids: list[str] | None = None,
    batches: int | None = None,
) -> mlflow.ActiveRun:
    """Start the job's one MLflow run (use it as a context manager: an exception inside
    ends the run ``FAILED``). Logs the flattened config as params, the full config as
    ``conf.yaml`` and the ``mmf.*`` tags (``batches``: the job's number of batches)."""
    configure(config)
    tags = {
        JOB_TAG: "train",
        CONFIG_HASH_TAG: config_hash(config, series_ids),
        SILVER_VERSION_TAG: str(int(silver_version)),
        "mmf.engine": engine,
        "mmf.code_version": code_version(),
        "mmf.lakehouse": config.lakehouse,
        "mmf.host": socket.gethostname(),
        "mmf.pid": str(os.getpid()),
    }
    if batches is not None:
        tags[BATCHES_TAG] = str(int(batches))
    tags[DESCRIPTION_TAG] = run_description(config, silver_version, engine, series_ids)
    run = JobRun(mlflow.start_run(run_name=run_name or training_run_name(silver_version), tags=tags))
    try:
        data = redacted_config(config)
        mlflow.log_params(flatten(data))
        mlflow.log_text(yaml.safe_dump(data, sort_keys=False), "conf.yaml")
        mlflow.log_input(silver_dataset(config, silver_version), context="training")
    except BaseException as exc:
        tag_failure(exc)
        mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        raise
    return run


class JobRun(mlflow.ActiveRun):
    """The job's active run as a context manager that says why it failed: an exception
    leaving it tags the run ``mmf.failure`` (:func:`failure_reason`) before MLflow ends it
    ``FAILED``."""

    def __exit__(self, exc_type, exc_val, exc_tb):
        if exc_val is not None:
            tag_failure(exc_val)
        return super().__exit__(exc_type, exc_val, exc_tb)


def failure_reason(exc: BaseException) -> str:
    """``mmf.failure`` of a run an exception ended: ``stopped: ...`` for a job stopped
    from outside (SIGTERM, its output closed, Ctrl-C), else ``failed: <error>``."""
    if isinstance(exc, JobStopped):
        return f"{STOPPED}{exc}"
    if isinstance(exc, BrokenPipeError):
        return f"{STOPPED}broken pipe: the job's output was closed (e.g. by `| head`) before it finished"
    if isinstance(exc, KeyboardInterrupt):
        return f"{STOPPED}interrupted (Ctrl-C) before it finished"
    lines = str(exc).strip().splitlines()
    return f"failed: {type(exc).__name__}" + (f": {lines[0][:400]}" if lines else "")


def tag_failure(exc: BaseException) -> None:
    """The active run's ``mmf.failure`` for ``exc`` (nothing when no run is active; a
    store that refuses the tag does not hide ``exc``)."""
    if mlflow.active_run() is None:
        return
    with contextlib.suppress(Exception):
        mlflow.set_tag(FAILURE_TAG, failure_reason(exc))


def training_run_name(silver_version: int, now: dt.datetime | None = None) -> str:
    """``train 2026-12-03 14:05 UTC silver v12``: when it started and on what data."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"train {now:%Y-%m-%d %H:%M} UTC silver v{int(silver_version)}"


def run_description(
    config: Config, silver_version: int, engine: str, series_ids: list[str] | None = None
) -> str:
    """The run's description: the data, the candidates, the backtest and the engine."""
    which = f"{len(series_ids)} chosen series" if series_ids else "every clean series"
    tuned = ", tuned with Hyperopt" if config.tune.enabled else ""
    partial = ""
    if config.retrain.policy != "full":
        n = config.retrain.backtest_windows
        if config.freq:
            on = f"up to {config.selection_windows(config.freq)} windows (as many as its history holds)"
        else:  # the frequency not known yet: the setting as written
            on = f"{max(n, config.backtest.windows)} windows" if n else "the windows covering a week"
        partial = (
            f" (retrain.policy {config.retrain.policy}: series fitted again chosen on {on}, others carried)"
        )
    return (
        f"Training of {which} of silver/readings version {int(silver_version)} "
        f"(lakehouse {config.lakehouse}), one model per series: candidates "
        f"{', '.join(config.models)}{tuned}, chosen by {config.backtest.metric} on a "
        f"{config.backtest.windows}-window rolling-origin backtest of {config.horizon} steps{partial}; "
        f"engine {engine}. The fitted models are registered as one many-models pyfunc "
        f"({config.mlflow.registered_model}), promoted to champion by the gate."
    )


def silver_dataset(config: Config, silver_version: int) -> MetaDataset:
    """The job's input for ``mlflow.log_input``: silver/readings at ``silver_version``
    (a Delta source: the table's path and version; its schema; no rows are read)."""
    types = {"string": "string", "double": "double", "bool": "boolean", "int32": "integer"}
    cols = [
        ColSpec(
            types.get(str(f.type), "long") if not str(f.type).startswith("timestamp") else "datetime", f.name
        )
        for f in C.SILVER_READINGS
    ]
    source = DeltaDatasetSource(
        path=Lakehouse.from_config(config).uri(SILVER_READINGS), delta_table_version=int(silver_version)
    )
    return MetaDataset(source, name=f"silver/readings@v{int(silver_version)}", schema=Schema(cols))


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
        raise RegistryError(
            f"run {run_id} is not a training run (tag {JOB_TAG}={run.data.tags.get(JOB_TAG)!r})"
        )
    conf = yaml.safe_load(mlflow.artifacts.load_text(f"runs:/{run_id}/conf.yaml"))
    try:
        subset = mlflow.artifacts.load_dict(f"runs:/{run_id}/series_ids.json")["series_ids"]
    except Exception:
        subset = None
    return {
        "config": conf,
        "silver_version": int(run.data.tags[SILVER_VERSION_TAG]),
        "metrics": dict(run.data.metrics),
        "series_ids": subset,
    }
