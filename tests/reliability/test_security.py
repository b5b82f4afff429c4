"""Nothing is unpickled: the many-models pyfunc is logged as code plus data (no pickle
file among its artifacts or its run's), fitted models are rebuilt only through the
registry of model names, and the MLflow pin is past the 2.x CVEs."""

from __future__ import annotations

import configparser
import json
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from reliability_support import REPO

from forecasting.errors import UnknownModelError
from forecasting.pipeline import load_fitted

PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".cloudpickle", ".pt", ".pth")


def _is_pickle(path: Path) -> bool:
    head = path.read_bytes()[:2]
    return path.suffix in PICKLE_SUFFIXES or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def test_logged_model_and_run_hold_no_pickle(reference, tmp_path):
    uri = f"sqlite:///{reference.lake / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mv = client.get_model_version("mmf-many-models", "1")
    model_id = mv.model_id or mv.source.removeprefix("models:/")  # the registered source: models:/<model id>
    location = client.get_logged_model(model_id).artifact_location
    model_dir = Path(download_artifacts(artifact_uri=location, dst_path=str(tmp_path / "model")))
    run_dir = Path(download_artifacts(run_id=mv.run_id, dst_path=str(tmp_path / "run"), tracking_uri=uri))
    files = [p for d in (model_dir, run_dir) for p in d.rglob("*") if p.is_file()]
    assert any(p.name == "models.parquet" for p in files) and any(p.name == "results.parquet" for p in files)
    assert [str(p) for p in files if _is_pickle(p)] == []
    flavor = yaml.safe_load((model_dir / "MLmodel").read_text())["flavors"]["python_function"]
    # models from code: MLflow imports the logged mmf_many_models.py, no pickled python_model
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model" and "python_model" not in flavor
    assert Path(flavor["model_code_path"]).name == "mmf_many_models.py"
    assert (model_dir / "mmf_many_models.py").is_file()


def test_load_fitted_refuses_names_outside_the_registry_without_importing():
    for name in ("antigravity", "os.system", "__import__('os')"):
        with pytest.raises(UnknownModelError, match="valid models are"):
            load_fitted(json.dumps({"model": name, "format_version": 1, "state": {}}))
    assert "antigravity" not in sys.modules
    ensemble = {"model": "ensemble", "format_version": 1, "method": "mean", "members": [{"model": "pickle"}]}
    with pytest.raises(UnknownModelError):
        load_fitted(json.dumps(ensemble))


def test_mlflow_pin_is_past_the_2x_cves():
    """setup.cfg requires MLflow 3.1 or later, past the path-traversal and file-access CVEs
    of 2.x (CVE-2023-6831, CVE-2023-6909, CVE-2024-1483, CVE-2024-1558, CVE-2024-2928,
    CVE-2024-3573: fixed in 2.9-2.12), and the installed MLflow satisfies the pin. The
    pickle-deserialization CVEs (CVE-2024-37052..37060) have no fixed version: they are
    avoided by never logging or loading a pickled model (test above)."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    reqs = [r.split("#")[0].strip() for r in cfg["options"]["install_requires"].splitlines()]
    [pin] = [r for r in reqs if r.startswith("mlflow")]
    floor = tuple(int(x) for x in pin.split(">=")[1].split(",")[0].split(".")[:2])
    assert floor >= (3, 1), pin
    installed = tuple(int(x) for x in metadata.version("mlflow").split(".")[:2])
    assert installed >= floor
