"""A training job's results in its run, logged from the driver in a few calls (never
one call per series): the aggregate metrics, ``per_series.parquet`` (and
``per_series.json``), ``results.parquet`` and the plots; and ``results.parquet`` read
back, to finish a killed job (:mod:`registry.recovery`)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from forecasting import contract as C
from forecasting.config import Config
from forecasting.errors import RegistryError
from registry.connection import set_uris
from registry.metrics import aggregate_metrics, per_series_table
from registry.plots import plot_errors, plot_forecasts

RESULTS_FILE = "results.parquet"  # the engine's TRAIN_RESULT rows, for resuming a killed job
TABLE_MAX_ROWS = 20_000  # per_series.json (mlflow.log_table) only below this size


def log_results(
    results: pd.DataFrame,
    config: Config,
    history: pd.DataFrame | None = None,
    n_quarantined: int | None = None,
) -> dict[str, float]:
    """Log a training job's results to the active run in a few calls.

    Metrics: ``n_series``, ``n_ok``, ``n_fallback``, ``n_failed``, ``n_quarantined``
    (when given), ``metric_value_mean``/``metric_value_median`` (ok and fallback series),
    ``backtest.<m>`` (mean over series of the chosen model's backtest metric ``m``) and
    ``chosen.<model>`` (series per chosen model). Artifacts: ``per_series.parquet``,
    ``per_series.json`` (an MLflow table, up to 20,000 series),
    ``plots/forecast_vs_actuals.png`` (``config.mlflow.sample_plots`` series; needs
    ``history``: silver rows ``series_id, ts, y``) and ``plots/error_distribution.png``.

    Returns:
        The aggregate metrics logged.

    Raises:
        RegistryError: no active run.
    """
    if mlflow.active_run() is None:
        raise RegistryError("log_results needs an active MLflow run: call it inside start_training_run(...)")
    metrics = aggregate_metrics(results, n_quarantined)
    mlflow.log_metrics(metrics)
    table = per_series_table(results)
    with tempfile.TemporaryDirectory(prefix="mmf-run-") as tmp:
        path = Path(tmp) / "per_series.parquet"
        table.to_parquet(path, index=False)
        mlflow.log_artifact(str(path))
        _log_train_results(results, Path(tmp) / RESULTS_FILE)
        plots = Path(tmp) / "plots"
        plots.mkdir()
        plot_errors(results, config, plots / "error_distribution.png")
        if history is not None and config.mlflow.sample_plots > 0:
            plot_forecasts(results, config, history, plots / "forecast_vs_actuals.png")
        mlflow.log_artifacts(str(plots), artifact_path="plots")
    if len(table) <= TABLE_MAX_ROWS:
        json_table = table.assign(end=table["end"].astype(str))
        mlflow.log_table(json_table, artifact_file="per_series.json")
    return metrics


def _log_train_results(results: pd.DataFrame, path: Path) -> None:
    """``results.parquet``: the engine's rows as returned (TRAIN_RESULT), so a job killed
    after registering can write its Gold rows without training again."""
    names = [n for n in C.TRAIN_RESULT.names if n in results.columns]
    schema = pa.schema([C.TRAIN_RESULT.field(n) for n in names])
    pq.write_table(
        pa.Table.from_pandas(results[names], schema=schema, preserve_index=False), path, compression="zstd"
    )
    mlflow.log_artifact(str(path))


def load_results(config: Config, run_id: str) -> pd.DataFrame:
    """The TRAIN_RESULT rows a run logged (``results.parquet``)."""
    set_uris(config)
    with tempfile.TemporaryDirectory(prefix="mmf-results-") as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=RESULTS_FILE, dst_path=tmp)
        return pq.read_table(path).to_pandas()
