"""Exceptions raised by the platform.

Every message names the bad value, what was expected, and how to fix it.

    MMFError
    ├── ConfigError          invalid setting (key, value, allowed)
    ├── DataContractError    input rows or files that break the data contract
    │   └── FrequencyError   frequency cannot be inferred, or a mix of frequencies
    ├── UnknownModelError    a model name that is not registered
    ├── ModelError           a model failed to fit or predict on one series
    ├── TableError           a lakehouse table is missing or cannot be written
    └── RegistryError        MLflow registry state does not allow the operation

    JobStopped (a BaseException)  the job was stopped from outside (SIGTERM)
"""

from __future__ import annotations


class MMFError(Exception):
    """Base class of every error the platform raises on purpose."""


class ConfigError(MMFError):
    """A setting has a value that is not allowed."""

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"invalid config {key}={value!r}: expected {allowed}")


class DataContractError(MMFError):
    """Input data does not follow the long-format contract."""


class FrequencyError(DataContractError):
    """The time frequency cannot be inferred, or the data mixes frequencies."""


class UnknownModelError(MMFError):
    """A model name that is not in the registry."""

    def __init__(self, name: str, valid: list[str]) -> None:
        self.name, self.valid = name, valid
        super().__init__(f"unknown model {name!r}: valid models are {', '.join(sorted(valid))}")


class ModelError(MMFError):
    """A model failed on one series (recorded, never fatal for the run)."""


class TableError(MMFError):
    """A lakehouse table is missing, or a write was refused."""


class RegistryError(MMFError):
    """The MLflow model registry is not in a state that allows the operation."""


class JobStopped(BaseException):
    """The job was stopped from outside (SIGTERM) before it finished. A
    ``BaseException``, like ``KeyboardInterrupt``, so that no ``except Exception`` (a
    series' or a candidate's failure recorded as data) takes it and goes on."""
