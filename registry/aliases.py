"""The registered versions and their aliases: names and look-ups, no changes.

``champion`` is the version forecasting and serving load; ``challenger`` the version
the gate last judged (:mod:`registry.promotion` moves both).
"""

from __future__ import annotations

from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from forecasting.config import Config
from forecasting.errors import RegistryError
from registry.connection import set_uris

CHAMPION, CHALLENGER = "champion", "challenger"


def versions(client: MlflowClient, name: str) -> list[str]:
    """The registered model's versions, oldest first (none when it does not exist)."""
    try:
        found = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return []
    return sorted((str(mv.version) for mv in found), key=int)


def require_version(client: MlflowClient, name: str, version: str):
    """The ``ModelVersion``; :class:`RegistryError` listing the existing versions
    when it does not exist."""
    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        existing = versions(client, name)
        if not existing:
            raise RegistryError(
                f"registered model {name!r} has no versions: run `mmf train` to register one"
            ) from None
        raise RegistryError(
            f"version {version!r} of registered model {name!r} does not exist: existing versions are "
            f"{', '.join(existing)}"
        ) from None


def champion_version(client: MlflowClient, name: str) -> str | None:
    """The version behind the ``champion`` alias, or ``None``."""
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def champion_info(config: Config) -> dict[str, Any] | None:
    """``name, version, run_id, silver_version, promoted_at, metric, metric_value,
    n_series`` of the champion, or ``None`` when there is none."""
    client = set_uris(config)
    name = config.mlflow.registered_model
    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    return version_info(mv)


def version_info(mv) -> dict[str, Any]:
    """What the ``mmf.*`` tags of a ``ModelVersion`` say, typed (``None`` when unset)."""
    tags = mv.tags or {}

    def num(key: str, cast):
        try:
            return cast(tags[key])
        except (KeyError, ValueError, TypeError):
            return None

    return {
        "name": mv.name,
        "version": str(mv.version),
        "run_id": tags.get("mmf.run_id") or mv.run_id,
        "silver_version": num("mmf.silver_version", int),
        "promoted_at": tags.get("mmf.promoted_at"),
        "metric": tags.get("mmf.metric"),
        "metric_value": num("mmf.metric_value", float),
        "n_series": num("mmf.n_series", int),
        "aliases": list(getattr(mv, "aliases", []) or []),
    }
