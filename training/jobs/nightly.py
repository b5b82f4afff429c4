"""``mmf nightly``: ingest -> refine -> monitor -> train -> forecast -> aggregate, restartable.

Each step is skipped when its input Delta version has not changed since it last
succeeded; what "succeeded" means is read from the tables themselves (Delta
application transactions), never from a side file, so a run killed anywhere can simply
be started again (``tests/reliability`` kills it at every step with SIGKILL and checks
that the restart ends in the Gold tables, registry and quarantine of an uninterrupted
run; see :mod:`training.jobs.train` for how a killed training job is finished). Only
one writing job runs per lakehouse at a time (:func:`training.tables.lakehouse_lock`; a
second run waits ``lock_timeout_s`` and then exits with a message).

What counts as done: training, when gold/selection records a run on the current silver
version that the MLflow store still holds and that failed at most
``nightly.max_failed_share`` of its series (:func:`training.jobs.train.training_due`:
a run over that share, or one lost with its MLflow store, is trained again, and the
step says why); the forecast, when gold/forecasts records the delivery of the current
silver version by the current champion, complete and from the champion's run
(:mod:`training.jobs.forecast`).

Monitoring (``monitoring.enabled``), after refine and before training, scores the earlier
deliveries against the new actuals and flags drift (:mod:`training.jobs.monitor`, skipped
when it already scored this silver version); the training run on this silver version
records how many series drifted.

A nightly ends with the next horizon of every clean series (silver/series), from the
latest silver, whatever the gate decided: a kept champion is refitted on the new data,
and series it does not hold are forecast by the newest version that holds them. A
series left without it (no version holds it, its refit or forecast failed) makes the
nightly fail: ``report.missing`` names each one with the reason, and ``mmf nightly``
exits non-zero.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

from forecasting.config import Config
from training.checkpoints import checkpoint
from training.engines import engine_class
from training.jobs import forecast as forecast_job
from training.jobs import hierarchy as hierarchy_job
from training.jobs import monitor as monitor_job
from training.jobs import train as train_job
from training.jobs.ingest import ingest
from training.jobs.refine import refine
from training.tables import (  # noqa: F401 (LockedError: where callers have found it)
    GOLD_PORTFOLIO,
    SILVER_READINGS,
    Lakehouse,
    LockedError,
    lakehouse_lock,
)

log = logging.getLogger(__name__)


@dataclass
class NightlyReport:
    steps: dict[str, str] = field(default_factory=dict)  # step -> "done" | "skipped: why"
    ingest: Any = None
    refine: Any = None
    monitor: Any = None  # training.jobs.monitor.MonitorReport (monitoring.enabled)
    hierarchy: Any = None  # training.jobs.hierarchy.HierarchyReport (hierarchy.enabled)
    train: Any = None
    forecast: Any = None
    failed: bool = False
    failure: str = ""
    missing: dict[str, str] = field(default_factory=dict)  # series left without the next horizon -> why
    timings: dict[str, float] = field(default_factory=dict)  # step -> wall seconds (the steps run)

    @contextmanager
    def timed(self, step: str):
        """Adds the wall time of the block to ``timings[step]``."""
        clock = time.perf_counter()
        try:
            yield
        finally:
            self.timings[step] = self.timings.get(step, 0.0) + time.perf_counter() - clock


def nightly(
    lake: Lakehouse,
    config: Config,
    horizon: int | None = None,
    lock_timeout_s: float = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> NightlyReport:
    """``progress(step, done, total)`` is told as each step starts and as its series finish."""
    report = NightlyReport()
    tell = progress or (lambda step, done, total: None)

    with lakehouse_lock(lake, lock_timeout_s):
        engine_class(config.engine).warm(config)  # the workers' server starts during ingest
        if config.nightly.source:
            tell("ingest", 0, 0)
            with report.timed("ingest"):
                report.ingest = ingest(
                    lake,
                    config.nightly.source,
                    strict=False,
                    extra_columns=config.ingest.extra_columns,
                    batch_rows=config.batch_rows,
                )
            rep = report.ingest
            report.steps["ingest"] = (
                (
                    f"done: {rep.rows} rows from {len(rep.added)} file(s)"
                    if rep.added
                    else f"skipped: {len(rep.skipped)} file(s) already ingested"
                )
                + (
                    f"; {len(rep.refused)} file(s) refused: " + "; ".join(rep.refused.values())
                    if rep.refused
                    else ""
                )
                + "".join(f"; {f}: ignored column(s) {', '.join(c)}" for f, c in rep.ignored_columns.items())
                + "".join(
                    f"; {f}: added column(s) {', '.join(c)} to bronze" for f, c in rep.added_columns.items()
                )
            )
        else:
            report.steps["ingest"] = "skipped: no nightly.source configured"

        with report.timed("refine"):
            report.refine = refine(lake, config, progress=progress)
        report.steps["refine"] = (
            f"skipped: silver already built from bronze version {report.refine.bronze_version}"
            if report.refine.skipped
            else f"done: bronze version {report.refine.bronze_version}"
        )

        if config.monitoring.enabled:
            with report.timed("monitor"):
                _monitor_step(lake, config, report)
        with report.timed("train"):
            _train_step(lake, config, report, progress)
        if report.monitor is not None:
            with report.timed("monitor"):
                _record_drift(lake, config, report)
        tell("forecast", 0, 0)
        _forecast_step(lake, config, report, horizon)
    return report


def _train_step(lake: Lakehouse, config: Config, report: NightlyReport, progress) -> None:
    """Train unless training on the current silver is recorded as done (see
    :func:`training.jobs.train.training_due`); a share of failed series above
    ``nightly.max_failed_share`` fails the nightly (and the next one trains again)."""
    silver_version = lake.version(SILVER_READINGS)
    why = train_job.training_due(lake, config, silver_version)
    if why is None:
        report.steps["train"] = f"skipped: already trained on silver version {silver_version}"
        closed = train_job.close_killed_run(lake, config)  # a restart after a kill at the very end
        if closed:
            report.steps["train"] += f" (closed run {closed} of a killed job)"
        return
    if why:
        log.warning("%s", why)
    report.train = train_job.train(lake, config, progress=progress)
    report.steps["train"] = f"done: run {report.train.run_id}, model version {report.train.model_version}"
    if why:
        report.steps["train"] += f" ({why})"
    if report.train.failed_share > config.nightly.max_failed_share:
        _fail(
            report,
            f"{report.train.failed_share:.0%} of series failed > nightly.max_failed_share="
            f"{config.nightly.max_failed_share}",
        )


def _monitor_step(lake: Lakehouse, config: Config, report: NightlyReport) -> None:
    """Score the earlier deliveries; a failure is reported (the nightly exits non-zero)
    but does not keep the night from training and forecasting."""
    try:
        report.monitor = monitor_job.monitor(lake, config)
    except Exception as exc:  # noqa: BLE001 - monitoring must not stop the delivery
        log.exception("monitoring failed")
        why = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
        report.steps["monitor"] = f"failed: {why}"
        _fail(report, f"monitoring failed: {why}")
        return
    report.steps["monitor"] = report.monitor.describe()


def _record_drift(lake: Lakehouse, config: Config, report: NightlyReport) -> None:
    """The MLflow run trained on this silver version records how many series had
    drifted (:func:`training.jobs.monitor.record_on_run`; a rerun finds it recorded)."""
    run_id = report.train.run_id if report.train is not None else train_job.last_trained_run(lake)
    if run_id and monitor_job.record_on_run(config, run_id, report.monitor.drifted):
        report.steps["monitor"] += f"; recorded on run {run_id}"


def _forecast_step(lake: Lakehouse, config: Config, report: NightlyReport, horizon: int | None) -> None:
    """The next horizon of every clean series (:mod:`training.jobs.forecast`), then the
    portfolio; a series left without it fails the nightly, named with the reason."""
    with report.timed("forecast"):
        fc = report.forecast = forecast_job.forecast(lake, config, horizon=horizon)
    if fc.skipped:
        report.steps["forecast"] = (
            f"skipped: champion version {fc.model_version} already forecast on silver version {fc.silver_version}"
        )
    else:
        report.steps["forecast"] = f"done: {fc.n_rows} rows for version {fc.model_version}: {fc.describe()}"
        if fc.note:
            report.steps["forecast"] += f" ({fc.note})"
    checkpoint("after_forecast_commit")
    version = fc.model_version
    if fc.n_rows == 0:
        report.steps["aggregate"] = "skipped: nothing was forecast"
    elif config.hierarchy.enabled:
        with report.timed("hierarchy"):
            _hierarchy_step(lake, config, report)
    elif lake.txn_version(GOLD_PORTFOLIO, forecast_job.APP_PORTFOLIO) == fc.delivery and fc.skipped:
        report.steps["aggregate"] = f"skipped: portfolio of version {version} is current"
    else:
        with report.timed("aggregate"):
            forecast_job.aggregate(lake, config, version, delivery=fc.delivery)
        report.steps["aggregate"] = f"done: portfolio for version {version}"
    if fc.missing:
        report.missing = dict(fc.missing)
        _fail(report, "missing output: " + forecast_job.missing_message(fc.missing, fc.horizon, fc.n_clean))


def _hierarchy_step(lake: Lakehouse, config: Config, report: NightlyReport) -> None:
    """Every level forecast and reconciled (gold/hierarchy), and gold/portfolio as its
    coherent daily totals with intervals (:mod:`training.jobs.hierarchy`); skipped when
    this delivery's hierarchy is recorded. A failure fails the nightly (exit non-zero) and
    keeps the delivery; the next nightly builds the levels again."""
    fc = report.forecast
    delivery = hierarchy_job.Delivery(
        fc.model_version, fc.run_id, int(fc.delivery or 0), int(fc.silver_version or 0), fc.horizon
    )
    try:
        # a delivery made again (incomplete, or from another run) is reconciled again too
        rep = report.hierarchy = hierarchy_job.hierarchy(lake, config, delivery, force=not fc.skipped)
    except Exception as exc:  # noqa: BLE001 - the delivery stands; the levels are reported missing
        log.exception("the hierarchy step failed")
        why = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
        report.steps["hierarchy"] = f"failed: {why}"
        _fail(report, f"hierarchy failed: {why}")
        return
    if rep.skipped:
        report.steps["hierarchy"] = f"skipped: hierarchy of delivery {delivery.key} is current"
    else:
        report.steps["hierarchy"] = f"done: {rep.describe()}"


def _fail(report: NightlyReport, why: str) -> None:
    report.failed = True
    report.failure = f"{report.failure}; {why}" if report.failure else why
