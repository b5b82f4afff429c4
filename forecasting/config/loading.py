"""Settings from the defaults, a YAML file, the environment and explicit overrides."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from forecasting.config.settings import Config
from forecasting.config.validation import set_dotted, validated
from forecasting.errors import ConfigError

# environment variable -> the setting it overrides (over the file, under explicit overrides)
ENV_OVERRIDES: dict[str, str] = {
    "MMF_LAKEHOUSE": "lakehouse",
    "MLFLOW_TRACKING_URI": "mlflow.tracking_uri",
    "SPARK_MASTER": "spark.master",
    "MMF_API_KEY": "serve.api_key",
}


def default_conf_path() -> Path:
    return Path(__file__).resolve().parents[2] / "conf" / "default.yaml"


def from_dict(data: dict[str, Any]) -> Config:
    """A validated Config from nested settings (absent keys keep their defaults)."""
    return validated(Config, data)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping of settings in YAML file ``path`` (an empty file is no setting)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("--conf", str(path), "an existing YAML file")
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError("--conf", str(path), f"valid YAML ({exc})") from None
    if not isinstance(loaded, dict):
        raise ConfigError("--conf", str(path), "a YAML mapping of settings")
    return loaded


def load_config(path: str | os.PathLike | None = None, **overrides: Any) -> Config:
    """Defaults, then ``path`` (YAML), then the environment (:data:`ENV_OVERRIDES`),
    then ``overrides`` (dotted keys allowed; ``None`` values are ignored)."""
    data = read_yaml(path) if path is not None else {}
    env = {key: os.environ.get(var) for var, key in ENV_OVERRIDES.items()}
    for key, value in {**env, **overrides}.items():
        if value is not None:
            set_dotted(data, key, value)
    return from_dict(data)
