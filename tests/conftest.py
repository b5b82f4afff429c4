"""Shared fixtures: every test gets its own lakehouse folder and its own MLflow store."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


@pytest.fixture
def lake_root(tmp_path):
    root = tmp_path / "lake"
    root.mkdir()
    return root


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    """A fresh SQLite tracking + registry store (and artifact folder) for this test."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture
def config(lake_root, mlflow_uri):
    """A small, fast config on a fresh lakehouse and MLflow store."""
    from forecasting.config import load_config

    return load_config(
        lakehouse=str(lake_root),
        horizon=24,
        models=["seasonal_naive"],
        workers=2,
        **{"cleaning.min_length": 48},
    )
