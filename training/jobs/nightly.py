"""``mmf nightly``: ingest -> refine -> train -> forecast -> aggregate, restartable.

Each step is skipped when its input Delta version has not changed since it last
succeeded; what "succeeded" means is read from the tables themselves (Delta
application transactions), never from a side file, so a run killed anywhere can simply
be started again (``tests/reliability`` kills it at every step with SIGKILL and checks
that the restart ends in the Gold tables, registry and quarantine of an uninterrupted
run; see :mod:`training.jobs.train` for how a killed training job is finished). Only
one writing job runs per lakehouse at a time (:func:`training.tables.lakehouse_lock`; a
second run waits ``lock_timeout_s`` and then exits with a message).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from forecasting.config import Config
from training.checkpoints import checkpoint
from training.jobs import forecast as forecast_job
from training.jobs import train as train_job
from training.jobs.ingest import ingest
from training.jobs.refine import refine
from training.tables import (  # noqa: F401 (LockedError: where callers have found it)
    GOLD_PORTFOLIO,
    GOLD_SELECTION,
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
    train: Any = None
    forecast: Any = None
    failed: bool = False
    failure: str = ""


def nightly(
    lake: Lakehouse,
    config: Config,
    horizon: int | None = None,
    lock_timeout_s: float = 0,
    progress: Callable[[str, int, int], None] | None = None,
) -> NightlyReport:
    report = NightlyReport()

    def step_progress(name):
        return (lambda done, total: progress(name, done, total)) if progress else None

    with lakehouse_lock(lake, lock_timeout_s):
        if config.nightly.source:
            report.ingest = ingest(lake, config.nightly.source, strict=False, extra_columns=config.ingest.extra_columns)
            rep = report.ingest
            report.steps["ingest"] = (
                (f"done: {rep.rows} rows from {len(rep.added)} file(s)" if rep.added
                 else f"skipped: {len(rep.skipped)} file(s) already ingested")
                + (f"; {len(rep.refused)} file(s) refused: " + "; ".join(rep.refused.values()) if rep.refused else "")
                + "".join(f"; {f}: ignored column(s) {', '.join(c)}" for f, c in rep.ignored_columns.items())
                + "".join(f"; {f}: added column(s) {', '.join(c)} to bronze" for f, c in rep.added_columns.items())
            )
        else:
            report.steps["ingest"] = "skipped: no nightly.source configured"

        report.refine = refine(lake, config, progress=step_progress("refine"))
        report.steps["refine"] = (
            f"skipped: silver already built from bronze version {report.refine.bronze_version}"
            if report.refine.skipped else f"done: bronze version {report.refine.bronze_version}"
        )

        silver_version = lake.version(SILVER_READINGS)
        if lake.txn_version(GOLD_SELECTION, train_job.APP_ID) == silver_version:
            report.steps["train"] = f"skipped: already trained on silver version {silver_version}"
            closed = train_job.close_killed_run(lake, config)  # a restart after a kill at the very end
            if closed:
                report.steps["train"] += f" (closed run {closed} of a killed job)"
        else:
            report.train = train_job.train(lake, config, progress=step_progress("train"))
            report.steps["train"] = f"done: run {report.train.run_id}, model version {report.train.model_version}"
            if report.train.failed_share > config.nightly.max_failed_share:
                report.failed = True
                report.failure = (
                    f"{report.train.failed_share:.0%} of series failed > nightly.max_failed_share="
                    f"{config.nightly.max_failed_share}"
                )

        report.forecast = forecast_job.forecast(lake, config, horizon=horizon)
        report.steps["forecast"] = (
            f"skipped: champion version {report.forecast.model_version} already forecast"
            if report.forecast.skipped else f"done: {report.forecast.n_rows} rows for version {report.forecast.model_version}"
        )
        checkpoint("after_forecast_commit")
        version = report.forecast.model_version
        if lake.txn_version(GOLD_PORTFOLIO, forecast_job.APP_PORTFOLIO) == int(version) and report.forecast.skipped:
            report.steps["aggregate"] = f"skipped: portfolio of version {version} is current"
        else:
            forecast_job.aggregate(lake, config, version)
            report.steps["aggregate"] = f"done: portfolio for version {version}"
    return report
