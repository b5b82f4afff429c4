"""Where MLflow lives: the tracking and registry URIs and the job's experiment."""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from forecasting.config import Config
from forecasting.errors import RegistryError


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
