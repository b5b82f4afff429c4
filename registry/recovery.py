"""Crash recovery: runs a killed job left behind.

A job killed mid-run leaves its run ``RUNNING``: :func:`mark_orphans_failed` ends such
runs ``FAILED`` with the tag ``mmf.failure`` (unless their process still lives). The
next job with the same silver version, config hash and batch plan finds that run again
(:func:`find_resumable`) and re-opens it (:func:`resume_run`): a run killed while its
batches were being trained goes on with the batches missing from ``gold/models``; one
killed after it registered its model version is finished from its recorded results
instead of training and registering again; one killed after everything was recorded
only has its run closed (:func:`close_recovered`). Both tag the run ``mmf.recovered``.
What a re-opened run needs again that is not in a table (the global models' weights and
per-series entries) is kept as run artifacts under ``resume/``
(:func:`log_resume_state`, :func:`load_resume_state`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import RunStatus

from forecasting.config import Config
from registry.connection import configure, set_uris
from registry.results import RESULTS_FILE, RESULTS_REF
from registry.runs import (
    BATCHES_TAG,
    CONFIG_HASH_TAG,
    FAILURE_TAG,
    JOB_TAG,
    SILVER_VERSION_TAG,
    STOPPED,
    config_hash,
    tag_failure,
)

log = logging.getLogger(__name__)

RECOVERED_TAG = "mmf.recovered"
RESUME_DIR = "resume"  # run artifacts a re-opened run reads back
ORPHAN_REASON = "orphaned: the job was killed before it finished"


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


def find_resumable(
    config: Config,
    silver_version: int,
    series_ids: list[str] | None = None,
    n_batches: int | None = None,
):
    """The newest training run a killed job left that the next job must finish:
    ``(run, model_version)``, ``model_version`` ``None`` when it did not register one
    yet; or ``None``. It must have been found orphaned (``FAILED`` with
    ``mmf.failure``: run :func:`mark_orphans_failed` first) or stopped from outside
    (:func:`resumable`; a run that failed on an error is not resumed, its job is run
    again) and carry this silver version and
    config hash. Then either it owns a ``READY`` version of
    ``mlflow.registered_model`` (it trained every batch and logged its results), or it
    recorded the same batch plan (tag ``mmf.batches`` equal to ``n_batches``): its
    batches committed to ``gold/models`` are kept and the others trained."""
    client = set_uris(config)
    exp = client.get_experiment_by_name(config.mlflow.experiment)
    if exp is None:
        return None
    query = (
        f"attributes.status = 'FAILED' and tags.`{JOB_TAG}` = 'train' "
        f"and tags.`{SILVER_VERSION_TAG}` = '{int(silver_version)}' "
        f"and tags.`{CONFIG_HASH_TAG}` = '{config_hash(config, series_ids)}'"
    )
    runs = client.search_runs(
        [exp.experiment_id], filter_string=query, order_by=["attributes.start_time DESC"], max_results=20
    )
    for run in runs:
        if not resumable(run.data.tags.get(FAILURE_TAG)):
            continue
        version = _registered(client, config, run)
        if version is not None:
            return run, version
        if n_batches is not None and run.data.tags.get(BATCHES_TAG) == str(int(n_batches)):
            return run, None
    return None


def resumable(failure: str | None) -> bool:
    """Whether a run that ended with this ``mmf.failure`` is finished by the next job:
    its job was killed (found orphaned) or stopped from outside (SIGTERM, a closed
    output, Ctrl-C); not a job that failed on an error (it is run again)."""
    return failure == ORPHAN_REASON or (failure or "").startswith(STOPPED)


def _registered(client: MlflowClient, config: Config, run):
    """The first ``READY`` version registered from ``run``, when it has one and its
    results were logged (``results.parquet``, or ``results.ref.json`` where a Spark job
    left them in the lakehouse)."""
    name = config.mlflow.registered_model
    try:
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run.info.run_id}'")
    except Exception:  # noqa: BLE001 - no registered model yet
        return None
    ready = sorted((mv for mv in versions if mv.status == "READY"), key=lambda mv: int(mv.version))
    if ready and any(a.path in (RESULTS_FILE, RESULTS_REF) for a in client.list_artifacts(run.info.run_id)):
        return ready[0]
    return None


def log_resume_state(folder: str | Path) -> None:
    """Keep the files of ``folder`` in the active run (under ``resume/``) for a job that
    re-opens it after a kill."""
    mlflow.log_artifacts(str(folder), artifact_path=RESUME_DIR)


def load_resume_state(config: Config, run_id: str, dst: str | Path) -> Path | None:
    """The files :func:`log_resume_state` kept in the run, downloaded under ``dst``
    (``None`` when it kept none)."""
    client = set_uris(config)
    if not any(a.path == RESUME_DIR for a in client.list_artifacts(run_id)):
        return None
    return Path(client.download_artifacts(run_id, RESUME_DIR, str(dst)))


@contextlib.contextmanager
def resume_run(config: Config, run_id: str, note: str):
    """Re-open a killed job's run as the active run (ended ``FINISHED``, or ``FAILED``
    on an exception, like :func:`registry.runs.start_training_run`), now owned by this
    process."""
    client = configure(config)
    with mlflow.start_run(run_id=run_id) as run:
        _mark_recovered(client, run_id, note)
        try:
            yield run
        except BaseException as exc:
            tag_failure(exc)  # why it ended FAILED (again)
            raise


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
