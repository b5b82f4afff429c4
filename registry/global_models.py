"""The driver's global models in the training run: per model its metrics, a summary
JSON, one child run per tuning trial and, for ``global_nn``, a copy with MLflow's
PyTorch flavour."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import mlflow
from mlflow.entities import RunStatus

from forecasting.errors import RegistryError
from forecasting.models.global_models.nn import build_module

log = logging.getLogger(__name__)

TRIAL_TAG = "mmf.trial_of"  # child runs of a global model's search (never tagged mmf.job)
GLOBAL_NN_ARTIFACT = "global_nn_pytorch"


def log_global_models(report: Any) -> dict[str, float]:
    """Log what the driver's global-model step did to the active (training) run.

    Per global model: metrics ``global.<name>.train_s`` (tuning + every fit),
    ``global.<name>.n_ok``, and for ``global_nn`` the loss per epoch of the final fit
    (``global.global_nn.loss``, step = epoch); ``global_models/<name>.json`` (params,
    fits, tuning summary). Each Hyperopt trial (and the untuned configuration) becomes a
    child run (``nested=True``) with its params, ``loss`` and ``trial_s``; a failed trial
    ends ``FAILED`` with its error. ``global_nn`` is also logged with MLflow's PyTorch
    flavour (artifact ``global_nn_pytorch``, pickled by that flavour: a secondary copy
    for the platform; the many-models pyfunc never reads it).

    ``report``: a :class:`training.global_models.GlobalReport`. Returns the metrics.
    """
    if mlflow.active_run() is None:
        raise RegistryError(
            "log_global_models needs an active MLflow run: call it inside start_training_run(...)"
        )
    metrics: dict[str, float] = {}
    for name, run in report.runs.items():
        metrics[f"global.{name}.train_s"] = float(run.seconds)
        metrics[f"global.{name}.n_ok"] = float(run.n_ok)
        summary = {
            "params": run.params,
            "error": run.error,
            "weights": run.weights.id if run.weights is not None else None,
            "weights_bytes": run.weights.n_bytes if run.weights is not None else 0,
            "fits": [vars(f) for f in run.fits],
            "tuning": None if run.tune is None else {**run.tune.summary(), "trials": run.trials_kind},
        }
        mlflow.log_dict(json.loads(json.dumps(summary, default=str)), f"global_models/{name}.json")
        final = next((f for f in run.fits if f.label == "full"), None)
        if final is not None and final.losses:
            for epoch, loss in enumerate(final.losses):
                mlflow.log_metric(f"global.{name}.loss", float(loss), step=epoch)
        if run.tune is not None:
            _log_trials(name, run.tune, run.trials_kind)
        if name == "global_nn" and run.weights is not None:
            try:
                _log_pytorch(run.weights)
            except Exception as exc:  # noqa: BLE001 - a secondary copy never fails the job
                log.warning("global_nn: the MLflow PyTorch flavour could not be logged: %s", exc)
                mlflow.set_tag("mmf.global_nn_pytorch_error", str(exc)[:500])
    if metrics:
        mlflow.log_metrics(metrics)
    return metrics


def _log_trials(name: str, result: Any, kind: str) -> None:
    """One child run per trial of ``name``'s search, plus one for the untuned values."""
    default = {
        "number": -1,
        "status": "ok",
        "loss": result.default_loss,
        "params": {},
        "seconds": 0.0,
        "error": "",
    }
    for trial in [default, *result.trials]:
        label = "default" if trial["number"] < 0 else f"trial-{trial['number']}"
        tags = {TRIAL_TAG: name, "mmf.trials": kind, "mmf.trial": label}
        failed = trial["status"] != "ok" or not math.isfinite(float(trial["loss"]))
        with mlflow.start_run(run_name=f"{name}-{label}", nested=True, tags=tags):
            if trial["params"]:
                mlflow.log_params(
                    {k: json.dumps(v) if not isinstance(v, str) else v for k, v in trial["params"].items()}
                )
            values = {"trial_s": float(trial["seconds"])}
            if not failed:
                values["loss"] = float(trial["loss"])
            mlflow.log_metrics(values)
            if failed:
                mlflow.set_tag("mmf.trial_error", str(trial.get("error") or "non-finite loss")[:500])
                mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))


def _log_pytorch(weights: Any) -> None:
    try:
        import torch
    except ImportError:  # serving-only install: nothing to log
        return
    import mlflow.pytorch

    module = build_module(weights.meta, weights.arrays)
    module.eval()
    mlflow.pytorch.log_model(
        module,
        name=GLOBAL_NN_ARTIFACT,
        serialization_format="pickle",  # 'pt2' needs a single-tensor signature; forward takes (x, ctx)
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
        metadata={"mmf.weights": weights.id},
    )
