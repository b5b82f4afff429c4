"""Where MLflow lives: the tracking and registry URIs and the job's experiment.

MLflow's usage telemetry (an outbound HTTPS connection) is off unless the user turns it
on: :func:`telemetry_off_by_default` sets ``MLFLOW_DISABLE_TELEMETRY=true`` when neither
``MLFLOW_DISABLE_TELEMETRY`` nor ``DO_NOT_TRACK`` is set (``MLFLOW_DISABLE_TELEMETRY=false``
turns it back on); it runs when this module is imported and on every connection.

A local SQLite tracking store is created whole or not at all. MLflow builds its schema
in place, table by table and migration by migration, each committed on its own: a
process killed in those seconds (the first ``mmf train`` on a new lakehouse) used to
leave a store every later start refused ("table ... already exists"). Here the schema
is built in a temporary file beside the store and renamed into place, under a lock
file, so the store path only ever holds a complete schema; and a half-made store left
by an older version or another tool is rebuilt when it holds no run and no registered
model (a store that holds either is never deleted: it is reported instead).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from pathlib import Path
from typing import Iterator

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.store.db.utils import _get_latest_schema_revision
from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.telemetry.client import set_telemetry_client
from sqlalchemy.engine import make_url

from forecasting.config import Config
from forecasting.errors import RegistryError

TELEMETRY_SWITCHES = ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")


def telemetry_off_by_default() -> None:
    """Switch MLflow's telemetry off unless the user set one of its switches; MLflow
    decides when it is imported, so its client is re-evaluated here."""
    if any(os.environ.get(var) is not None for var in TELEMETRY_SWITCHES):
        return
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    set_telemetry_client()


telemetry_off_by_default()


_READY: set[str] = set()  # SQLite stores this process found complete


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` URI (``None``: another kind of store, or in memory)."""
    if not uri.startswith("sqlite:"):
        return None
    database = make_url(uri).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database).resolve()


def _count(db: sqlite3.Connection, table: str) -> int:
    try:
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    except sqlite3.Error:  # the table was never created
        return 0


def store_state(path: Path) -> tuple[str, int]:
    """``(state, n_records)`` of the SQLite store at ``path``; ``n_records`` counts its
    runs and registered models. The state is ``absent`` (no file, or no table),
    ``complete`` (MLflow's whole schema at its head revision), ``outdated`` (a whole
    schema of another revision: MLflow upgrades it, or says how) or ``partial`` (a schema
    setup that stopped half-way: no revision recorded, or a migration's temporary tables
    left behind)."""
    if not path.exists() or path.stat().st_size == 0:
        return "absent", 0
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=60)) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables:
            return "absent", 0
        records = _count(db, "runs") + _count(db, "registered_models")
        try:
            revision = [row[0] for row in db.execute("SELECT version_num FROM alembic_version")]
        except sqlite3.Error:
            revision = []
    if len(revision) != 1 or any(t.startswith("_alembic_tmp_") for t in tables):
        return "partial", records
    return ("complete" if revision[0] == _get_latest_schema_revision() else "outdated"), records


@contextlib.contextmanager
def _init_lock(path: Path) -> Iterator[None]:
    with open(path.with_name(f".{path.name}.lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build(path: Path) -> None:
    """MLflow's schema in a temporary file beside ``path``, renamed onto ``path``."""
    for stale in path.parent.glob(f".{path.name}.init-*"):  # left by a killed build
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.init-{os.getpid()}")
    uri = f"sqlite:///{tmp}"
    try:
        SqlAlchemyStore(uri, DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)
    finally:
        engine = SqlAlchemyStore._engine_map.pop(uri, None)
        if engine is not None:
            engine.dispose()
    for suffix in ("-journal", "-wal", "-shm"):  # a half-made store's, never the new one's
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    os.replace(tmp, path)


def ensure_store(uri: str) -> None:
    """Make sure a local SQLite store at ``uri`` holds MLflow's complete schema before
    MLflow opens it (see the module docstring); other stores are left to MLflow.

    Raises:
        RegistryError: the store is half-made and holds runs or registered models.
    """
    path = sqlite_path(uri)
    if path is None or str(path) in _READY or not path.parent.is_dir():
        return
    if store_state(path)[0] != "complete":
        with _init_lock(path):
            state, records = store_state(path)
            if state == "partial" and records:
                raise RegistryError(
                    f"the MLflow store {path} is half-migrated (a schema upgrade stopped part-way) and "
                    f"holds {records} run(s) or registered model(s), so it is not rebuilt: restore it "
                    "from a backup, or drop its _alembic_tmp_* tables and run "
                    f"`mlflow db upgrade {uri}`"
                )
            if state == "outdated" and records:
                return  # MLflow's own upgrade path (or its message) applies
            if state != "complete":
                _build(path)
    _READY.add(str(path))


def set_uris(config: Config) -> MlflowClient:
    """Point the fluent API at ``config.mlflow_tracking_uri()`` (tracking and registry),
    making sure a local SQLite store is whole first (:func:`ensure_store`); creates no
    experiment: the read-only entry point of :mod:`registry`."""
    telemetry_off_by_default()
    uri = config.mlflow_tracking_uri()
    ensure_store(uri)
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


def _driver_message(exc: BaseException) -> str:
    """The first line of the database driver's error under MLflow's and SQLAlchemy's
    wrappers (``attempt to write a readonly database``), else of ``exc``."""
    for _ in range(10):
        inner = getattr(exc, "orig", None) or exc.__cause__
        if not isinstance(inner, BaseException):
            break
        exc = inner
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def configure(config: Config) -> MlflowClient:
    """Set the tracking and registry URIs from the config, create the experiment
    ``config.mlflow.experiment`` when absent and make it the active one.

    Raises:
        RegistryError: the experiment exists but was deleted.
    """
    client = set_uris(config)
    name = config.mlflow.experiment
    exp = client.get_experiment_by_name(name)
    refused = None
    if exp is None:
        try:
            client.create_experiment(name, artifact_location=artifact_location(config))
        except MlflowException as exc:  # another job created it in between, or the store refused
            refused = exc
        exp = client.get_experiment_by_name(name)
    if exp is None:
        why = f": {_driver_message(refused)}" if refused is not None else ""
        raise RegistryError(
            f"MLflow experiment {name!r} could not be created in {config.mlflow_tracking_uri()}{why}; "
            "check that mlflow.tracking_uri points at a store this user may write"
        )
    if exp.lifecycle_stage == "deleted":
        raise RegistryError(
            f"MLflow experiment {name!r} (id {exp.experiment_id}) is deleted: restore it "
            f"(`mlflow experiments restore --experiment-id {exp.experiment_id}`) or set "
            "mlflow.experiment to another name"
        )
    mlflow.set_experiment(experiment_id=exp.experiment_id)
    return client
