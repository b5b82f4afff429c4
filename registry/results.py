"""A training job's results in its run, logged from the driver in a few calls (never
one call per series): the aggregate metrics, ``per_series.parquet`` (and
``per_series.json``), ``results.parquet`` and the plots; and ``results.parquet`` read
back, to finish a killed job (:mod:`registry.recovery`).

The results come as an iterable of batches (TRAIN_RESULT frames, e.g. a run's
``gold/models`` rows read back a bucket range at a time) and are never held together:
the metrics are accumulated (exact sums, counts, and one float per usable series for the
median and the error histogram), the two Parquet files are written batch by batch, and
the forecast plot reads back only its sampled series."""

from __future__ import annotations

import math
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence
from urllib.parse import urlparse
from urllib.request import url2pathname

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from forecasting import contract as C
from forecasting.config import Config
from forecasting.errors import RegistryError
from registry.aggregates import ExactSum
from registry.connection import set_uris
from registry.metrics import PER_SERIES_BASE, USABLE, chosen_backtest, finite_metric_values, per_series_table
from registry.plots import plot_error_histogram, plot_errors, plot_forecasts, sample_series

RESULTS_FILE = "results.parquet"  # the engine's TRAIN_RESULT rows, for resuming a killed job
PER_SERIES_FILE = "per_series.parquet"
# where a run's results are when they could not be written among its artifacts (Spark,
# artifact store not a path the executors write to): gold/models@version for the run
RESULTS_REF = "results.ref.json"
TABLE_MAX_ROWS = 20_000  # per_series.json (mlflow.log_table) only below this size
# ids -> rows of those series (history: silver rows ``series_id, ts, y``; results: TRAIN_RESULT)
Lookup = Callable[[Sequence[str]], pd.DataFrame]


@dataclass(frozen=True)
class StagedResults:
    """A run's ``results.parquet`` and ``per_series.parquet`` already written batch by
    batch (:func:`stage_results`, two files per batch, in the run's order):
    :func:`log_results` only copies them into the run's files."""

    results: tuple[Path, ...]
    per_series: tuple[Path, ...]


def stage_results(batch: pd.DataFrame, results_path: Path, per_series_path: Path) -> None:
    """One batch's rows of ``results.parquet`` and of ``per_series.parquet``, as
    :func:`log_results` writes them, in files of their own (a :class:`StagedResults`)."""
    cols = batch.reindex(columns=list(C.TRAIN_RESULT_CORE.names))  # a column the rows lack is written null
    pq.write_table(pa.Table.from_pandas(cols, schema=C.TRAIN_RESULT_CORE, preserve_index=False), results_path)
    per_series_table(batch).to_parquet(per_series_path, index=False)


@dataclass
class RunTotals:
    """What the driver keeps of a run's results across batches: counts, exact sums and the
    finite metric value of each usable series (the median and the error histogram)."""

    n_series: int = 0
    status: Counter = field(default_factory=Counter)
    chosen: Counter = field(default_factory=Counter)
    metric_values: list[np.ndarray] = field(default_factory=list)
    usable_ids: list[np.ndarray] = field(default_factory=list)
    bt_sums: dict[str, ExactSum] = field(default_factory=dict)
    bt_counts: Counter = field(default_factory=Counter)

    def add(self, results: pd.DataFrame, bt: pd.DataFrame | None = None) -> None:
        """Count one batch (``bt``: its :func:`chosen_backtest`, when already computed)."""
        usable = self._count(results)
        self._sum_backtest(
            chosen_backtest(usable) if bt is None else bt.loc[bt.index.isin(usable[C.SERIES_ID])]
        )

    def add_per_series(self, rows: pd.DataFrame) -> None:
        """Count one batch from its ``per_series.parquet`` rows (:func:`stage_results`):
        the same totals as :meth:`add` of its TRAIN_RESULT rows, without their JSON."""
        usable = self._count(rows)
        self._sum_backtest(usable[list(rows.columns[len(PER_SERIES_BASE) :])])

    def _count(self, rows: pd.DataFrame) -> pd.DataFrame:
        """The batch's series, statuses, chosen models and metric values counted; its usable rows."""
        self.n_series += len(rows)
        self.status.update(rows["status"].astype(str).tolist())
        usable = rows[rows["status"].isin(USABLE)]
        self.chosen.update(m for m in usable["model"].tolist() if m)
        self.metric_values.append(finite_metric_values(usable).to_numpy(dtype=float))
        self.usable_ids.append(usable[C.SERIES_ID].astype(str).to_numpy())
        return usable

    def _sum_backtest(self, bt: pd.DataFrame) -> None:
        """The usable series' chosen backtest metrics (a column per metric) summed up."""
        for col in bt.columns:
            values = pd.to_numeric(bt[col], errors="coerce").dropna()
            if len(values):
                self.bt_sums.setdefault(col, ExactSum()).add(values.tolist())
                self.bt_counts[col] += len(values)

    def values(self) -> np.ndarray:
        return np.concatenate(self.metric_values) if self.metric_values else np.empty(0)

    def metrics(self, n_quarantined: int | None = None) -> dict[str, float]:
        """The aggregate metrics (see :func:`log_results`)."""
        out: dict[str, float] = {
            "n_series": float(self.n_series),
            "n_ok": float(self.status.get(C.OK, 0)),
            "n_fallback": float(self.status.get(C.FALLBACK, 0)),
            "n_failed": float(self.status.get(C.FAILED, 0)),
            "n_cold_start": float(self.status.get(C.COLD_START, 0)),
        }
        if n_quarantined is not None:
            out["n_quarantined"] = float(n_quarantined)
        values = self.values()
        if len(values):
            summed = ExactSum()
            summed.add(values.tolist())
            out["metric_value_mean"] = summed.value() / len(values)
            out["metric_value_median"] = float(np.median(values))
        for col, total in self.bt_sums.items():
            mean = total.value() / self.bt_counts[col]
            if math.isfinite(mean):
                out[f"backtest.{col}"] = float(mean)
        for model, count in self.chosen.items():
            out[f"chosen.{model}"] = float(count)
        return out


def log_results(
    results: pd.DataFrame | Iterable[pd.DataFrame] | StagedResults,
    config: Config,
    history: pd.DataFrame | Lookup | None = None,
    n_quarantined: int | None = None,
    lookup: Lookup | None = None,
    metrics: dict[str, float] | None = None,
) -> dict[str, float]:
    """Log a training job's results to the active run in a few calls.

    ``results``: the TRAIN_RESULT rows, one frame or an iterable of batches of them
    (read once, one batch at a time), or a run's :class:`StagedResults` (its files only
    copied). Metrics: ``n_series``, ``n_ok``, ``n_fallback``,
    ``n_failed``, ``n_quarantined`` (when given), ``metric_value_mean``/
    ``metric_value_median`` (ok and fallback series), ``backtest.<m>`` (mean over series
    of the chosen model's backtest metric ``m``) and ``chosen.<model>`` (series per
    chosen model). Artifacts: ``per_series.parquet``, ``results.parquet``,
    ``per_series.json`` (an MLflow table, up to 20,000 series),
    ``plots/forecast_vs_actuals.png`` (``config.mlflow.sample_plots`` series; needs
    ``history``: silver rows ``series_id, ts, y``, or a function of the sampled ids
    returning them; and, for batches, ``lookup``: the sampled series' TRAIN_RESULT rows)
    and ``plots/error_distribution.png``. ``metrics``: the aggregate metrics, when the
    job summed them up already (:func:`registry.aggregates.run_metrics`; on Spark, by a
    Spark aggregation): logged instead of those of the batches.

    Returns:
        The aggregate metrics logged.

    Raises:
        RegistryError: no active run.
    """
    if mlflow.active_run() is None:
        raise RegistryError("log_results needs an active MLflow run: call it inside start_training_run(...)")
    if isinstance(results, pd.DataFrame):
        frame = results
        results = [frame]
        lookup = lookup or (lambda ids: frame[frame[C.SERIES_ID].astype(str).isin(set(ids))])
    with tempfile.TemporaryDirectory(prefix="mmf-run-") as tmp:
        folder = Path(tmp)
        if isinstance(results, StagedResults):
            totals, n_rows = _copy_staged(results, folder)
        else:
            totals, n_rows = _write_batches(results, folder)
        metrics = totals.metrics(n_quarantined) if metrics is None else dict(metrics)
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(folder / PER_SERIES_FILE))
        mlflow.log_artifact(str(folder / RESULTS_FILE))
        plots = folder / "plots"
        plots.mkdir()
        values = totals.values()
        plot_errors(
            pd.DataFrame({"status": C.OK, "metric_value": values}), config, plots / "error_distribution.png"
        )
        if history is not None and lookup is not None and config.mlflow.sample_plots > 0:
            _plot_sample(totals, config, history, lookup, plots / "forecast_vs_actuals.png")
        mlflow.log_artifacts(str(plots), artifact_path="plots")
        if n_rows <= TABLE_MAX_ROWS:
            table = pd.read_parquet(folder / "per_series.parquet")
            mlflow.log_table(table.assign(end=table["end"].astype(str)), artifact_file="per_series.json")
    return metrics


def _write_batches(batches: Iterable[pd.DataFrame], folder: Path) -> tuple[RunTotals, int]:
    """``results.parquet`` and ``per_series.parquet`` in ``folder``, written batch by
    batch, and the run's totals. The per-series table's metric columns are the union over
    batches (a batch without a metric gets it null), so its batches are kept as parts
    on disk and copied into the one file at the end."""
    totals = RunTotals()
    names = list(C.TRAIN_RESULT_CORE.names)  # the backtest forecasts are in gold/backtest_forecasts
    with pq.ParquetWriter(folder / RESULTS_FILE, C.TRAIN_RESULT_CORE, compression="zstd") as writer:
        parts: list[Path] = []
        for i, batch in enumerate(batches):
            cols = batch.reindex(columns=names)  # a column the rows lack is written null
            writer.write_table(pa.Table.from_pandas(cols, schema=C.TRAIN_RESULT_CORE, preserve_index=False))
            bt = chosen_backtest(batch)
            totals.add(batch, bt)
            part = folder / f"per_series-{i}.parquet"
            per_series_table(batch, bt).to_parquet(part, index=False)
            parts.append(part)
    n_rows = _merge_parts(parts, folder / "per_series.parquet")
    return totals, n_rows


def _copy_staged(staged: StagedResults, folder: Path) -> tuple[RunTotals, int]:
    """:func:`_write_batches` of a :class:`StagedResults`: its files copied into the two
    files in ``folder`` (kept: a failed log is tried again from them), the totals
    counted from its per-series rows."""
    totals = RunTotals()
    with pq.ParquetWriter(folder / RESULTS_FILE, C.TRAIN_RESULT_CORE, compression="zstd") as writer:
        for part in staged.results:
            writer.write_table(pq.read_table(part, schema=C.TRAIN_RESULT_CORE))
    for part in staged.per_series:
        totals.add_per_series(pd.read_parquet(part))
    return totals, _merge_parts(list(staged.per_series), folder / PER_SERIES_FILE, keep=True)


def _merge_parts(parts: list[Path], path: Path, keep: bool = False) -> int:
    """The parts' rows in one Parquet file with the union of their columns (in order of
    first appearance); returns the rows written. Parts are removed as they are copied
    (unless ``keep``)."""
    fields: dict[str, pa.Field] = {}
    for part in parts:
        for f in pq.read_schema(part):
            if f.name not in fields or pa.types.is_null(fields[f.name].type):
                fields[f.name] = f
    schema = pa.schema(list(fields.values()))
    n = 0
    with pq.ParquetWriter(path, schema) as writer:
        for part in parts:
            table = pq.read_table(part)
            cols = [
                table.column(f.name).cast(f.type)
                if f.name in table.column_names
                else pa.nulls(len(table), f.type)
                for f in schema
            ]
            writer.write_table(pa.Table.from_arrays(cols, schema=schema))
            n += len(table)
            if not keep:
                part.unlink()
    return n


def _plot_sample(totals: RunTotals, config: Config, history, lookup: Lookup, path: Path) -> None:
    """The forecast plot of the run's sampled series, read back by ``lookup``."""
    ids = np.concatenate(totals.usable_ids) if totals.usable_ids else np.empty(0, dtype=object)
    sample = sample_series(pd.DataFrame({C.SERIES_ID: ids, "status": C.OK}), config)
    if not sample:
        return
    rows = lookup(sample)
    hist = history(sample) if callable(history) else history
    plot_forecasts(rows, config, hist, path)


def local_artifact_dir() -> Path | None:
    """The active run's artifact folder when the artifact store is a local (or mounted)
    path that jobs may write into directly; ``None`` for any other store."""
    return artifact_path(mlflow.get_artifact_uri())


def artifact_path(uri: str) -> Path | None:
    """The local path of an artifact URI (``file:`` or a plain path); ``None`` for any
    other scheme (``s3://``, ``mlflow-artifacts:``, ``dbfs:``...)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(url2pathname(parsed.path))
    return Path(uri) if not parsed.scheme else None


def log_results_ref(ref: Mapping[str, Any]) -> None:
    """``results.ref.json`` in the active run: where its results are (see :data:`RESULTS_REF`)."""
    mlflow.log_dict(dict(ref), RESULTS_REF)


def log_summary_plots(
    config: Config,
    histogram: tuple[np.ndarray, np.ndarray] | None,
    median: float | None,
    sample: tuple[pd.DataFrame, pd.DataFrame] | None,
) -> None:
    """The run's plots from what was summed up elsewhere (on Spark): the error
    histogram's ``(counts, edges)`` and the values' median, and the sampled series'
    TRAIN_RESULT rows with their silver rows (``sample``)."""
    with tempfile.TemporaryDirectory(prefix="mmf-plots-") as tmp:
        plots = Path(tmp)
        counts, edges = histogram if histogram is not None else (np.zeros(0), np.zeros(1))
        plot_error_histogram(counts, edges, median, config, plots / "error_distribution.png")
        if sample is not None and len(sample[0]):
            plot_forecasts(sample[0], config, sample[1], plots / "forecast_vs_actuals.png")
        mlflow.log_artifacts(str(plots), artifact_path="plots")


def load_results(config: Config, run_id: str) -> pd.DataFrame:
    """The TRAIN_RESULT rows a run logged (``results.parquet``)."""
    set_uris(config)
    with tempfile.TemporaryDirectory(prefix="mmf-results-") as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=RESULTS_FILE, dst_path=tmp)
        return pq.read_table(path).to_pandas()  # a file, or a folder of parts (written by Spark)
