"""Where MLflow lives: the tracking and registry URIs and the job's experiment.

MLflow's usage telemetry (an outbound HTTPS connection) is off unless the user turns it
on: :func:`telemetry_off_by_default` sets ``MLFLOW_DISABLE_TELEMETRY=true`` when neither
``MLFLOW_DISABLE_TELEMETRY`` nor ``DO_NOT_TRACK`` is set (``MLFLOW_DISABLE_TELEMETRY=false``
turns it back on); it runs when this module is imported and on every connection.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.telemetry.client import set_telemetry_client

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


def set_uris(config: Config) -> MlflowClient:
    """Point the fluent API at ``config.mlflow_tracking_uri()`` (tracking and registry)
    without creating anything; the read-only entry point of :mod:`registry`."""
    telemetry_off_by_default()
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
