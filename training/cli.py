"""The ``mmf`` command line: parse, load config, call a job, render progress and a summary.

Errors end as one line on stderr (what failed, on what, how to fix it) and a non-zero
exit code, never as a traceback (``mmf -v`` prints it too); see :func:`explain`. Every
command that writes holds the lakehouse lock (:func:`training.tables.lakehouse_lock`)
and takes ``--wait SECONDS``. The process ends with :func:`os._exit` once Python's own
shutdown steps have run, so the native thread pools of Arrow and deltalake are not torn
down by C++ static destructors (which, racing a pool thread, aborted a refused ingest
with "terminate called without an active exception" and exit code 134).
"""

from __future__ import annotations

import atexit
import contextlib
import difflib
import errno
import json
import logging
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Iterator

import click
import pandas as pd
import pyarrow as pa
from deltalake.exceptions import CommitFailedError, DeltaError, DeltaProtocolError, TableNotFoundError
from mlflow.exceptions import MlflowException

from forecasting.config import ENGINES, load_config
from forecasting.errors import MMFError
from forecasting.generator import generate as gen
from forecasting.generator import write
from forecasting.models import MODELS, all_models, unavailable_reason
from registry import promotion
from registry.aliases import champion_info
from registry.connection import configure, telemetry_off_by_default
from training.jobs.forecast import aggregate, forecast, missing_message
from training.jobs.ingest import ingest
from training.jobs.monitor import fleet, fleet_text, monitor
from training.jobs.nightly import nightly
from training.jobs.refine import refine
from training.jobs.reproduce import reproduce as repro
from training.jobs.score import score as run_score
from training.jobs.sql import run_sql
from training.jobs.stream import stream as run_stream
from training.jobs.train import train
from training.tables import Lakehouse, lakehouse_lock

log = logging.getLogger("mmf")

EXIT_FAILED = 1  # the command ran and reports a failure (refused files, failed series), or a bug
EXIT_ERROR = 2  # the command could not run: config, input, lock, file system, Delta or MLflow
EXIT_ABORTED = 130


class _State:
    verbose = False
    config = None  # of the running command, for error messages


def _config(conf, **overrides):
    _State.config = load_config(conf, **overrides)
    return _State.config


def _lake(config):
    return Lakehouse.from_config(config)


@contextlib.contextmanager
def _writing(config, wait: float):
    """Hold the lakehouse lock while a writing command runs (waiting ``wait`` seconds)."""
    with lakehouse_lock(_lake(config), wait):
        yield


def _interactive() -> bool:
    """Live bars only on a terminal and outside CI (the ``CI`` variable set)."""
    return sys.stderr.isatty() and not os.environ.get("CI")


class _Progress:
    """Renders the jobs' ``progress(step, done, total)`` callbacks: one line on stderr
    when a step starts (always), then a tqdm bar with done/total and ETA (only when
    :func:`_interactive`, or when asked for). ``total`` 0 means "started, size unknown"."""

    def __init__(self, bars: bool | None = None) -> None:
        self.enabled = _interactive() if bars is None else bars
        self.started: set[str] = set()
        self.bars: dict[str, object] = {}

    def __call__(self, step: str, done: int, total: int) -> None:
        if step not in self.started:
            self.started.add(step)
            click.echo(
                f"{time.strftime('%H:%M:%S')} {step}" + (f" ({total:,} {_unit(step)})" if total else ""),
                err=True,
            )
        if not self.enabled or total <= 0:
            return
        from tqdm import tqdm

        bar = self.bars.get(step)
        if bar is None:
            bar = self.bars[step] = tqdm(
                total=total, desc=step, unit=_unit(step), leave=_unit(step) != "epoch", dynamic_ncols=True
            )
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()
            del self.bars[step]

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()

    def step(self, name: str):
        return lambda done, total: self(name, done, total)


def _unit(step: str) -> str:
    """What a step counts: ``"<model> epochs"`` and ``"<model> fits"`` steps say so, the others count series."""
    return {"epochs": "epoch", "fits": "fit"}.get(step.rsplit(" ", 1)[-1], "series")


@contextlib.contextmanager
def _progress() -> Iterator[_Progress]:
    bars = _Progress()
    try:
        yield bars
    finally:
        bars.close()


conf_option = click.option(
    "--conf", type=click.Path(dir_okay=False), default=None, help="YAML file overriding conf/default.yaml."
)
engine_option = click.option(
    "--engine",
    type=click.Choice(list(ENGINES)),
    default=None,
    help="Where the per-series work runs: local (worker processes on this machine) or spark (the spark extra). Default: engine in the config.",
)
horizon_option = click.option(
    "--horizon",
    type=click.IntRange(min=1),
    default=None,
    help="Steps ahead to forecast (default: horizon in the config).",
)
wait_option = click.option(
    "--wait",
    "lock_timeout",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    help="Seconds to wait for another job that writes to the lakehouse.",
)


OWN_LOGGERS = ("mmf", "forecasting", "training", "registry")


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120, "terminal_width": 120}
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Show mmf's own log messages (DEBUG and up; other libraries stay at WARNING).",
)
def cli(verbose: bool) -> None:
    """mmf: many-models forecasting on Delta Lake and MLflow."""
    _State.verbose = verbose
    _setup_logging(verbose)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    telemetry_off_by_default()


def _setup_logging(verbose: bool) -> None:
    """The root logger (every third-party library) at WARNING; with ``-v`` mmf's own
    loggers at DEBUG."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.WARNING)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    for name in ("mlflow", "alembic"):  # MLflow configures its own loggers at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    if not verbose:
        # logs each database error with its traceback, then raises it: main() says it in one line
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def main() -> None:
    """``mmf``: run the command, render any error as one line, exit with its code."""
    _exit(_run())


def _run() -> int:
    try:
        code = cli(standalone_mode=False)  # an int after --help and other early exits
        return code if isinstance(code, int) else 0
    except SystemExit as exc:
        if isinstance(exc.code, str):
            click.echo(exc.code, err=True)
            return EXIT_FAILED
        return exc.code or 0
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return EXIT_ABORTED
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except Exception as exc:
        if _State.verbose:
            traceback.print_exc()
        line, code = explain(exc, _State.config)
        click.echo(f"error: {line}", err=True)
        return code


def _exit(code: int) -> None:
    """Python's shutdown (non-daemon threads, atexit: MLflow's run and queues, Spark),
    then :func:`os._exit`: no C++ static destructor runs against a live pool thread."""
    try:
        getattr(threading, "_shutdown", lambda: None)()
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _first_line(exc: BaseException, limit: int = 400) -> str:
    text = (getattr(exc, "message", None) or str(exc) or type(exc).__name__).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[:limit] + " ..."


_OS_HINTS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENOENT: "no such file or folder",
}


def _explain_os(exc: OSError, where: str) -> str:
    what = _OS_HINTS.get(exc.errno, exc.strerror or _first_line(exc))
    path = exc.filename or where
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "run mmf as a user who may write there, or set lakehouse (--conf) to a writable folder"
    elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free space (mmf vacuum removes old table files) or move the lakehouse"
    elif exc.errno == errno.ENOTDIR:
        fix = "check lakehouse in the config: every part of it must be a folder"
    else:
        fix = "check the path and the lakehouse setting"
    return f"{what}: {path}: {fix}"


def _explain_delta(exc: DeltaError, where: str) -> str:
    msg = _first_line(exc)
    if isinstance(exc, TableNotFoundError):
        return f"no Delta table ({msg}) in lakehouse {where}: run the step that writes it first (ingest -> refine -> train -> forecast)"
    if isinstance(exc, CommitFailedError):
        return f"another job committed to the same table first ({msg}) in lakehouse {where}: run the command again"
    if isinstance(exc, DeltaProtocolError):
        return f"the Delta table needs a feature this deltalake cannot handle ({msg}) in lakehouse {where}: upgrade deltalake"
    low = msg.lower()
    if "os error 13" in low or "permission denied" in low or "os error 30" in low or "read-only" in low:
        fix = "run mmf as a user who may write there, or set lakehouse (--conf) to a writable folder"
    elif "json" in low or "_delta_log" in low or "parse" in low:
        fix = "a file of the table is damaged: `mmf restore TABLE --version N` to the last good version, or restore the folder from a backup"
    else:
        fix = "check the table's files and permissions (mmf -v shows the traceback)"
    return f"Delta table operation failed in lakehouse {where}: {msg}: {fix}"


def _root_cause(exc: BaseException) -> BaseException:
    """The database driver's error under MLflow's and SQLAlchemy's wrappers."""
    for _ in range(10):
        inner = getattr(exc, "orig", None) or exc.__cause__
        if not isinstance(inner, BaseException):
            break
        exc = inner
    return exc


def _explain_mlflow(exc: MlflowException, uri: str) -> str:
    msg = _first_line(_root_cause(exc))
    low = msg.lower()
    if "readonly database" in low or "read-only" in low or "permission denied" in low:
        fix = "the store is read-only: run mmf as a user who may write it, or set mlflow.tracking_uri"
    elif "unable to open database" in low or "connection" in low:
        fix = "check mlflow.tracking_uri (or MLFLOW_TRACKING_URI) and that its store is reachable"
    else:
        fix = "check mlflow.tracking_uri and the state of the registry (mmf -v shows the traceback)"
    return f"MLflow failed on {uri}: {msg}: {fix}"


def _tracking_uri(config) -> str:
    try:
        return config.mlflow_tracking_uri()
    except Exception:
        return "the configured tracking store"


def explain(exc: Exception, config=None) -> tuple[str, int]:
    """One line for an error (what failed, on what, how to fix it) and the exit code:
    :data:`EXIT_ERROR` for the errors a user fixes (the platform's own, the file system,
    Delta, MLflow), :data:`EXIT_FAILED` for anything else (a bug: ``-v`` shows where).
    ``config`` (of the failed command, when loaded) names the lakehouse and tracking store."""
    where = config.lakehouse if config is not None else "(not loaded)"
    if isinstance(exc, MMFError):
        return str(exc), EXIT_ERROR
    if isinstance(exc, OSError):
        return _explain_os(exc, where), EXIT_ERROR
    if isinstance(exc, DeltaError):
        return _explain_delta(exc, where), EXIT_ERROR
    if isinstance(exc, MlflowException):
        return _explain_mlflow(
            exc, _tracking_uri(config) if config is not None else "the tracking store"
        ), EXIT_ERROR
    if isinstance(exc, pa.ArrowException):
        return f"reading or writing table data failed in lakehouse {where}: {_first_line(exc)}", EXIT_ERROR
    return (
        f"unexpected {type(exc).__name__}: {_first_line(exc)} (a bug: rerun with mmf -v for the "
        "traceback and report it)"
    ), EXIT_FAILED


@cli.command()
@click.option(
    "--series",
    "n_series",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Number of meters.",
)
@click.option("--days", type=click.IntRange(min=1), default=90, show_default=True, help="Days of history.")
@click.option("--freq", default="h", show_default=True, help="Reading frequency (h, 30min, 15min, D).")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Random seed: the same seed writes the same data."
)
@click.option("--clean", is_flag=True, help="No faulty series or readings.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Parquet file to write.")
def generate(n_series, days, freq, seed, clean, out):
    """Generate synthetic smart-meter data (with documented faults unless --clean)."""
    data = gen(n_series=n_series, days=days, freq=freq, seed=seed, clean=clean)
    write(data, out)
    click.echo(
        f"wrote {len(data.readings):,} readings of {n_series} series to {out} ({len(data.faults)} faulty series)"
    )


@cli.command("ingest")
@click.option(
    "--source", required=True, type=click.Path(exists=False), help="CSV/Parquet file or folder of them."
)
@conf_option
@wait_option
def ingest_cmd(source, conf, lock_timeout):
    """Append raw files to bronze/readings exactly as received (idempotent per file)."""
    config = _config(conf)
    with _writing(config, lock_timeout):
        rep = ingest(
            _lake(config),
            source,
            strict=not Path(source).is_dir(),
            extra_columns=config.ingest.extra_columns,
            batch_rows=config.batch_rows,
        )
    for f, n in rep.added.items():
        click.echo(f"ingested {n:,} rows from {f}")
    for f in rep.skipped:
        click.echo(f"skipped {f}: already ingested (same content)")
    for f, cols in rep.ignored_columns.items():
        click.echo(f"note: {f}: ignored column(s) outside the contract: {', '.join(cols)}")
    for f, cols in rep.added_columns.items():
        click.echo(f"note: {f}: column(s) outside the contract added to bronze only: {', '.join(cols)}")
    for f, why in rep.refused.items():
        click.echo(f"refused {f}: {why}", err=True)
    click.echo(f"bronze/readings version {rep.bronze_version} (batch {rep.batch_id})")
    if rep.refused:
        sys.exit(1)


@cli.command("refine")
@conf_option
@engine_option
@wait_option
def refine_cmd(conf, engine, lock_timeout):
    """Build silver (clean, regular, quarantined) from bronze."""
    config = _config(conf, engine=engine)
    with _writing(config, lock_timeout), _progress() as progress:
        rep = refine(_lake(config), config, progress=progress)
    if rep.skipped:
        click.echo(f"silver is current (built from bronze version {rep.bronze_version}); nothing to do")
        return
    click.echo(
        f"silver from bronze version {rep.bronze_version}: {rep.n_series} series, {rep.n_rows:,} rows, freq {rep.freq}"
    )
    for reason, n in sorted(rep.quarantined.items()):
        click.echo(f"  quarantined {n} series: {reason}")


@cli.command("train")
@conf_option
@engine_option
@click.option("--models", default=None, help="Comma-separated candidate models (see `mmf candidates`).")
@click.option("--series-id", "series_ids", multiple=True, help="Train only these series (repeatable).")
@horizon_option
@click.option(
    "--silver-version", type=click.IntRange(min=0), default=None, help="Train on this silver version."
)
@click.option("--tune", is_flag=True, default=None, help="Hyperopt search per series (slower).")
@wait_option
def train_cmd(conf, engine, models, series_ids, horizon, silver_version, tune, lock_timeout):
    """Fit, backtest and choose a model per series; log one MLflow run; register."""
    config = _config(
        conf,
        engine=engine,
        horizon=horizon,
        models=models.split(",") if models else None,
        **{"tune.enabled": tune},
    )
    with _writing(config, lock_timeout), _progress() as progress:
        rep = train(
            _lake(config),
            config,
            silver_version=silver_version,
            series_ids=list(series_ids) or None,
            progress=progress,
        )
    _print_train(rep)


def _print_train(rep):
    click.echo(f"MLflow run {rep.run_id} on silver version {rep.silver_version} (freq {rep.freq})")
    click.echo("  status: " + ", ".join(f"{k} {v}" for k, v in sorted(rep.status_counts.items())))
    click.echo(
        "  chosen: " + ", ".join(f"{k} {v}" for k, v in sorted(rep.chosen.items(), key=lambda kv: -kv[1]))
    )
    d = rep.decision
    if d is not None:
        verdict = (
            "promoted to champion"
            if d.promoted
            else f"kept as challenger (champion stays v{d.champion_version})"
        )
        click.echo(f"  model version {rep.model_version}: {verdict}: {d.reason}")


@cli.command("forecast")
@conf_option
@horizon_option
@click.option("--force", is_flag=True, help="Rewrite even when this champion was already forecast.")
@wait_option
def forecast_cmd(conf, horizon, force, lock_timeout):
    """Forecast every series with the champion into gold/forecasts."""
    config = _config(conf, horizon=horizon)
    lake = _lake(config)
    with _writing(config, lock_timeout), _progress() as progress:
        rep = forecast(lake, config, horizon=horizon, force=force, progress=progress)
        if rep.skipped:
            click.echo(
                f"gold/forecasts already holds champion version {rep.model_version} ({rep.n_rows:,} rows); use --force"
            )
            return
        if rep.note:
            click.echo(f"note: {rep.note}")
        if rep.n_rows:
            aggregate(lake, config, rep.model_version, delivery=rep.delivery)
            click.echo(
                f"gold/forecasts version {rep.table_version}: {rep.n_rows:,} rows for {rep.describe()}"
            )
    if rep.missing:
        click.echo("missing output: " + missing_message(rep.missing, rep.horizon, rep.n_clean), err=True)
        sys.exit(1)


@cli.command("nightly")
@conf_option
@engine_option
@horizon_option
@wait_option
@click.option(
    "--source",
    type=click.Path(exists=False),
    default=None,
    help="CSV/Parquet file or folder to ingest first (overrides nightly.source in the config).",
)
def nightly_cmd(conf, engine, horizon, lock_timeout, source):
    """Run ingest -> refine -> train -> forecast -> aggregate, skipping what is current."""
    config = _config(conf, engine=engine, horizon=horizon, **{"nightly.source": source})
    with _progress() as progress:
        rep = nightly(_lake(config), config, horizon=horizon, lock_timeout_s=lock_timeout, progress=progress)
    for step, what in rep.steps.items():
        click.echo(f"{step:<10} {what}")
    if rep.train is not None:
        _print_train(rep.train)
    if rep.failed:
        click.echo(f"run FAILED: {rep.failure}", err=True)
        sys.exit(1)


@cli.command("monitor")
@conf_option
@engine_option
@click.option(
    "--score", is_flag=True, help="Score the forecasts against the new actuals first (as the nightly does)."
)
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True, help="Worst series listed.")
@click.option("--json", "as_json", is_flag=True, help="The fleet view as one JSON object.")
@wait_option
def monitor_cmd(conf, engine, score, top, as_json, lock_timeout):
    """Live accuracy of the delivered forecasts: worst series, coverage vs nominal, drift counts."""
    config = _config(conf, engine=engine)
    lake = _lake(config)
    if score:
        with _writing(config, lock_timeout), _progress() as progress:
            rep = monitor(lake, config, progress=progress)
        if not as_json:
            click.echo(f"monitor {rep.describe()}")
    view = fleet(lake, config, top=top)
    click.echo(json.dumps(view, default=str) if as_json else "\n".join(fleet_text(view)))


@cli.command()
@click.option(
    "--series",
    "n_series",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Number of demo meters.",
)
@click.option(
    "--days", type=click.IntRange(min=14), default=60, show_default=True, help="Days of hourly history."
)
@click.option("--lakehouse", default=None, help="Where to put the demo lakehouse (default ./lakehouse).")
@conf_option
def demo(n_series, days, lakehouse, conf):
    """Generate demo data and run the nightly job on it, then summarise."""
    config = _config(conf, lakehouse=lakehouse)
    lake = _lake(config)
    src = (
        Path(config.lakehouse).resolve().parent / "demo-data"
        if "://" not in config.lakehouse
        else Path("demo-data")
    )
    src.mkdir(parents=True, exist_ok=True)
    path = src / f"meters_{n_series}x{days}d.parquet"
    if not path.exists():
        write(gen(n_series=n_series, days=days, freq="h", seed=config.seed, country=config.country), path)
        click.echo(f"generated {n_series} meters x {days} days hourly -> {path}")
    config = config.replace(**{"nightly.source": str(path)})
    with _progress() as progress:
        rep = nightly(lake, config, progress=progress)
    for step, what in rep.steps.items():
        click.echo(f"{step:<10} {what}")
    _summary(lake, config, rep)


def _summary(lake, config, rep):
    click.echo("")
    if rep.train is not None:
        _print_train(rep.train)
        shown = {k: v for k, v in rep.train.metrics.items() if k.startswith("backtest.") and "_" not in k}
        if shown:
            click.echo(
                "  backtest of chosen models (mean over series): "
                + ", ".join(f"{k.split('.', 1)[1]} {v:.3f}" for k, v in shown.items())
            )
    info = champion_info(config)
    if info:
        click.echo(f"champion: {info['name']} version {info['version']} (run {info['run_id']})")
    click.echo(f"lakehouse: {lake.root}  ({', '.join(lake.existing())})")
    click.echo(
        'query it (after . .venv/bin/activate):  mmf query gold/forecasts --limit 5    or    mmf sql "SELECT model, count(*) FROM gold.current_selection GROUP BY 1"'
    )
    uri = config.mlflow_tracking_uri()
    click.echo(f"MLflow UI: mlflow ui --backend-store-uri {uri}   then open http://127.0.0.1:5000")


@cli.command()
@click.argument("table")
@click.option("--series-id", "series_id", default=None, help="Only this series' rows (e.g. MTR-00001).")
@click.option("--version", type=click.IntRange(min=0), default=None, help="Delta version (time travel).")
@click.option(
    "--as-of",
    default=None,
    help="Time travel to the table as it was at this ISO 8601 date or timestamp (naive ones are UTC), e.g. 2026-11-27 or 2026-11-27T00:00:00.",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=20, show_default=True, help="Rows to print at most."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
@conf_option
def query(table, series_id, version, as_of, limit, fmt, conf):
    """Print rows of lakehouse TABLE (e.g. gold/forecasts), optionally at a version or timestamp."""
    if version is not None and as_of is not None:
        raise click.UsageError("give --version or --as-of, not both")
    config = _config(conf)
    lake = _lake(config)
    at = (
        version if version is not None else (_version_at(lake, table, _parse_as_of(as_of)) if as_of else None)
    )
    filters = [("series_id", "=", series_id)] if series_id else None
    if series_id and "series_id" not in lake.schema(table).names:
        raise click.BadParameter(f"{table} has no series_id column", param_hint="--series-id")
    df = lake.read(table, version=at, filters=filters)
    if series_id and df.empty:
        _unknown_series(lake, table, at, series_id)
    _print_frame(df.head(limit), fmt)
    rows = f"{min(limit, len(df)):,} of {len(df):,} rows" if len(df) > limit else f"{len(df):,} rows"
    click.echo(f"({rows}; version {at if at is not None else lake.version(table)})", err=True)


def _parse_as_of(text: str) -> pd.Timestamp:
    """An ISO 8601 date or timestamp as a UTC time (naive values are UTC)."""
    try:
        ts = pd.Timestamp(text.strip())
    except (ValueError, TypeError):
        ts = pd.NaT
    if pd.isna(ts):
        raise click.BadParameter(
            f"{text!r} is not an ISO 8601 date or timestamp (e.g. 2026-11-27 or 2026-11-27T00:00:00Z)",
            param_hint="--as-of",
        )
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _version_at(lake, table: str, when: pd.Timestamp) -> int:
    """The last version of ``table`` committed at or before ``when``; an error before its first commit."""
    commits = sorted((int(h["version"]), int(h["timestamp"])) for h in lake.history(table))
    ms = when.value // 1_000_000
    before = [v for v, t in commits if t <= ms]
    if not before:
        first_v, first_t = commits[0]
        first = pd.Timestamp(first_t, unit="ms", tz="UTC").isoformat()
        raise click.BadParameter(
            f"{when.isoformat()} is before {table}'s first commit (version {first_v} at {first}); give a later time",
            param_hint="--as-of",
        )
    return before[-1]


def _unknown_series(lake, table: str, at, series_id: str) -> None:
    """Raise a clear error when ``series_id`` has no row in ``table`` at all, naming the closest ids."""
    ids = lake.read(table, version=at, columns=["series_id"])["series_id"].dropna().unique().tolist()
    if series_id in ids:
        return
    scored = sorted((-difflib.SequenceMatcher(None, series_id, i).ratio(), i) for i in ids)
    close = [i for score, i in scored[:5] if -score >= 0.6]  # best first, ties in id order
    hint = (
        f"; closest: {', '.join(close)}"
        if close
        else (f"; ids look like {', '.join(sorted(ids)[:3])}" if ids else "")
    )
    raise click.BadParameter(
        f"series {series_id!r} is not in {table} (version {at if at is not None else lake.version(table)}){hint}",
        param_hint="--series-id",
    )


def _print_frame(df, fmt):
    if fmt == "csv":
        click.echo(df.to_csv(index=False), nl=False)
    elif fmt == "json":
        click.echo(df.to_json(orient="records", date_format="iso"))
    else:
        with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 60):
            click.echo(df.to_string(index=False))


@cli.command()
@click.argument("statement")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
@click.option(
    "--engine",
    type=click.Choice(list(ENGINES)),
    default=None,
    help="SQL engine: local (DuckDB in this process) or spark (Spark SQL, the spark extra). Default: engine in the config.",
)
@conf_option
def sql(statement, fmt, engine, conf):
    """Run the read-only SQL STATEMENT over the lakehouse tables (gold.forecasts, silver.readings, ...).

    The views gold.current_forecasts, gold.current_selection and gold.current_portfolio
    hold the champion's current rows (no older runs or versions); SHOW TABLES lists them all.
    A refused or failed statement is one error line and exit code 2."""
    config = _config(conf, engine=engine)
    _print_frame(run_sql(_lake(config), statement, engine=config.engine, config=config), fmt)


@cli.command("candidates")
def candidates():
    """List the candidate model types `mmf train` chooses from per series (not the MLflow Registry).

    Each with a one-line description and whether it can train here; pick them with
    `mmf train --models` or `models:` in the config. Registered model versions live in
    MLflow (`mmf promote VERSION`, the MLflow UI)."""
    for name, cls in sorted(MODELS.items()):
        click.echo(f"{name:<16} {cls.description}")
    for name, cls in all_models().items():
        if name in MODELS:
            continue
        why = unavailable_reason(name)
        note = f"  [unavailable: {why}]" if why else ""
        click.echo(f"{name:<16} {cls.description}{note}")


cli.add_command(
    click.Command(
        "models", callback=candidates.callback, hidden=True, help="Same as `mmf candidates` (old name)."
    )
)


@cli.command()
@click.argument("version")
@conf_option
@wait_option
def promote(version, conf, lock_timeout):
    """Move the champion alias to MLflow model version VERSION by hand.

    VERSION is a version number of the registered MLflow model (mlflow.registered_model
    in the config): `mmf train` prints it, the MLflow UI lists them."""
    config = _config(conf)
    with _writing(config, lock_timeout):
        configure(config)
        click.echo(f"champion is now version {promotion.promote(config, version)}")


@cli.command()
@conf_option
@wait_option
def rollback(conf, lock_timeout):
    """Move the champion alias back to the previous champion."""
    config = _config(conf)
    with _writing(config, lock_timeout):
        configure(config)
        click.echo(f"champion is now version {promotion.rollback(config)}")


@cli.command()
@click.argument("run_id")
@conf_option
@wait_option
def reproduce(run_id, conf, lock_timeout):
    """Re-train from the MLflow run RUN_ID's recorded config and silver version; compare metrics."""
    config = _config(conf)
    with _writing(config, lock_timeout):
        rep = repro(_lake(config), config, run_id)
    for name, (recorded, now, same) in rep.items():
        click.echo(
            f"{name:<28} recorded {recorded:<14.6g} now {now:<14.6g} {'match' if same else 'DIFFERENT'}"
        )
    if not all(same for _, _, same in rep.values()):
        sys.exit(1)


@cli.command()
@click.argument("table")
@click.option(
    "--version",
    type=click.IntRange(min=0),
    required=True,
    help="The Delta version to go back to (see `mmf query --version`).",
)
@conf_option
@wait_option
def restore(table, version, conf, lock_timeout):
    """Restore TABLE (e.g. gold/forecasts) to an earlier Delta version (as a new version)."""
    config = _config(conf)
    with _writing(config, lock_timeout):
        click.echo(
            f"{table} restored to version {version} (new version {_lake(config).restore(table, version)})"
        )


@cli.command()
@conf_option
def doctor(conf):
    """Check every table's commit log; name a corrupt commit file and the fix."""
    lake = _lake(_config(conf))
    sick = 0
    for name in lake.existing():
        diagnosis = lake.diagnose(name)
        click.echo(f"{name}: {diagnosis.summary()}")
        sick += not diagnosis.ok
    if sick:
        sys.exit(1)


@cli.command()
@click.argument("table")
@conf_option
def repair(table, conf):
    """Move TABLE's corrupt last commit file(s) aside; it reads at its last good version."""
    moved, version = _lake(_config(conf)).repair(table)
    if not moved:
        click.echo(f"{table}: nothing to repair (version {version})")
        return
    for path in moved:
        click.echo(f"moved aside: {path}")
    click.echo(f"{table} reads at version {version}")


@cli.command()
@click.option(
    "--retention-hours", type=click.IntRange(min=0), default=None, help="Default: retention_hours (168)."
)
@click.option("--force", is_flag=True, help="Allow a retention below 168 hours (7 days).")
@conf_option
@wait_option
def vacuum(retention_hours, force, conf, lock_timeout):
    """Delete files no table version within the retention needs (default 7 days)."""
    config = _config(conf)
    if retention_hours is None:
        retention_hours = config.retention_hours
    if retention_hours < 168 and not force:
        raise click.UsageError(
            f"retention {retention_hours} hours is below the 168-hour (7-day) minimum; add --force to allow it"
        )
    lake = _lake(config)
    with _writing(config, lock_timeout):
        for name in lake.existing():
            removed = lake.vacuum(name, retention_hours, force=force)
            click.echo(f"{name}: removed {len(removed)} file(s)")


@cli.command()
@click.option("--host", default=None, help="Interface to bind (default serve.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port (default serve.port, 8080).")
@click.option(
    "--refresh-s",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Seconds between checks of the champion alias and the Gold table versions (default 5).",
)
@click.option("--access-log/--no-access-log", default=True, show_default=True, help="Log every request.")
@conf_option
def serve(host, port, refresh_s, access_log, conf):
    """Serve the REST API and the forecast page (needs the serve extra)."""
    try:
        from training.serving.app import run
    except ImportError as exc:
        raise click.ClickException(
            f"mmf serve needs the serve extra ({exc.name} is missing): pip install 'mmf[serve]'"
        ) from None

    config = _config(conf, **{"serve.host": host, "serve.port": port})
    auth = "on (X-API-Key)" if config.serve.api_key else "off"
    click.echo(
        f"serving {config.lakehouse} and {config.mlflow.registered_model}@champion on http://{config.serve.host}:{config.serve.port} (API key {auth})"
    )
    run(config, refresh_s=refresh_s, access_log=access_log)


@cli.command()
@click.option(
    "--input",
    "source",
    required=True,
    help="Scoring input: a lakehouse table, a Delta table path, or a .parquet/.csv file (series_id, horizon; optional ts, temperature).",
)
@click.option(
    "--output",
    type=click.Choice(["gold/scores", "gold/forecasts"]),
    default="gold/scores",
    show_default=True,
    help="gold/scores: replace this input's rows; gold/forecasts: MERGE on (series_id, ts, cutoff, model_version).",
)
@engine_option
@conf_option
@wait_option
def score(source, output, engine, conf, lock_timeout):
    """Score an input with the champion many-models pyfunc and write the forecasts to Gold."""
    config = _config(conf, engine=engine)
    with _writing(config, lock_timeout), _progress() as progress:
        rep = run_score(_lake(config), config, source, output=output, progress=progress)
    click.echo(
        f"{output} version {rep.table_version}: {rep.n_rows:,} rows for {rep.n_series} series from {rep.source} (model version {rep.model_version})"
    )
    if rep.n_unknown:
        click.echo(
            f"note: {rep.n_unknown} series of the input have no model in the champion and were left out",
            err=True,
        )


@cli.command()
@click.option(
    "--once", is_flag=True, help="Process the bronze rows not yet processed, then stop (availableNow)."
)
@click.option(
    "--checkpoint", default=None, help="Checkpoint location (default <lakehouse>/_checkpoints/stream)."
)
@click.option(
    "--starting-version",
    type=click.IntRange(min=0),
    default=None,
    help="First bronze version of a new stream (default: the whole table).",
)
@click.option(
    "--interval-s",
    type=click.FloatRange(min=1),
    default=60,
    show_default=True,
    help="Seconds between micro-batches (without --once).",
)
@click.option(
    "--timeout-s",
    type=click.FloatRange(min=1),
    default=None,
    help="Stop after this many seconds (without --once).",
)
@conf_option
def stream(once, checkpoint, starting_version, interval_s, timeout_s, conf):
    """Refresh the forecasts of series that receive new bronze rows (Spark Structured Streaming)."""

    def show(b):
        what = {
            "written": f"{b.n_rows:,} rows for {b.n_series} series (model version {b.model_version})",
            "skipped": "already committed",
            "empty": "nothing to forecast",
        }[b.status]
        extra = (f"; {len(b.quarantined)} quarantined" if b.quarantined else "") + (
            f"; {len(b.unknown)} without a model" if b.unknown else ""
        )
        click.echo(f"batch {b.batch_id}: {b.status}: {what}{extra} ({b.n_touched} series touched)")

    config = _config(conf, engine="spark")
    rep = run_stream(
        _lake(config),
        config,
        once=once,
        checkpoint=checkpoint,
        starting_version=starting_version,
        interval_s=interval_s,
        timeout_s=timeout_s,
        on_batch=show,
    )
    click.echo(f"stream stopped after {len(rep.batches)} batch(es); checkpoint {rep.checkpoint}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
