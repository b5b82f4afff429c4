"""The ``mmf`` command line: parse, load config, call a job, render progress and a summary.

The commands live in :mod:`training.commands`; :data:`COMMANDS` names each one's module
and its short help, and :class:`LazyGroup` imports a command's module only when that
command runs or shows its help (Click's "lazily loading subcommands"): ``mmf --help``
lists them all from the table, and ``mmf ingest`` never imports MLflow, whose own import
costs seconds. That ``importlib.import_module`` is the CLI's one import made inside a
function (tests/test_structure.py allows exactly the table's modules).

Errors end as one line on stderr (what failed, on what, how to fix it) and a non-zero
exit code, never as a traceback (``mmf -v`` prints it too); see :func:`explain`, which
recognises MLflow's and Arrow's errors by their classes' names, so neither library is
imported for it. A job stopped by SIGTERM exits 143 with one line; one whose output was
closed (a broken pipe, ``mmf train 2>&1 | head -1``) exits 1 quietly (Click's handling of
``EPIPE``); either way its MLflow run ends ``FAILED`` with ``mmf.failure`` saying why
(:class:`registry.runs.JobRun`). Every command that writes holds the lakehouse lock
(:func:`training.tables.lakehouse_lock`) and takes ``--wait SECONDS``. The process ends
with :func:`os._exit` once Python's own shutdown steps have run, so the native thread
pools of Arrow and deltalake are not torn down by C++ static destructors (which, racing
a pool thread, aborted a refused ingest with "terminate called without an active
exception" and exit code 134).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import importlib
import logging
import os
import sys
import threading
import traceback
from collections.abc import Iterator, Mapping

import click
from deltalake.exceptions import CommitFailedError, DeltaError, DeltaProtocolError, TableNotFoundError

from forecasting.errors import JobStopped, MMFError
from training.commands import State
from training.commands.progress import Progress as _Progress  # noqa: F401 (where tests find it)

log = logging.getLogger("mmf")

EXIT_FAILED = 1  # the command ran and reports a failure (refused files, failed series), or a bug
EXIT_ERROR = 2  # the command could not run: config, input, lock, file system, Delta or MLflow
EXIT_ABORTED = 130
EXIT_STOPPED = 143  # SIGTERM (128 + 15, as a shell reports a process it ended)

# name -> ("module:attribute" of the click command, its short help in `mmf --help`; None: hidden)
COMMANDS: dict[str, tuple[str, str | None]] = {
    "candidates": (
        "training.commands.candidates:candidates",
        "List the candidate model types `mmf train` chooses from per series (not the MLflow Registry).",
    ),
    "demo": (
        "training.commands.demo:demo",
        "Generate demo data and run the nightly job on it, then summarise.",
    ),
    "doctor": (
        "training.commands.tables:doctor",
        "Check every table's commit log; name a corrupt commit file and the fix.",
    ),
    "forecast": (
        "training.commands.forecast:forecast_cmd",
        "Forecast every series with the champion into gold/forecasts.",
    ),
    "generate": (
        "training.commands.generate:generate",
        "Generate synthetic smart-meter data (with documented faults unless --clean).",
    ),
    "ingest": (
        "training.commands.ingest:ingest_cmd",
        "Append raw files to bronze/readings exactly as received (idempotent per file).",
    ),
    "models": ("training.commands.candidates:models", None),
    "monitor": (
        "training.commands.monitor:monitor_cmd",
        "Live accuracy of the delivered forecasts: worst series, coverage vs nominal, drift counts.",
    ),
    "nightly": (
        "training.commands.nightly:nightly_cmd",
        "Run ingest -> refine -> train -> forecast -> aggregate, skipping what is current.",
    ),
    "promote": (
        "training.commands.promote:promote",
        "Move the champion alias to MLflow model version VERSION by hand.",
    ),
    "query": (
        "training.commands.query:query",
        "Print rows of lakehouse TABLE (e.g. gold/forecasts), optionally at a version or timestamp.",
    ),
    "refine": (
        "training.commands.refine:refine_cmd",
        "Build silver (clean, regular, quarantined) from bronze.",
    ),
    "repair": (
        "training.commands.tables:repair",
        "Move TABLE's corrupt last commit file(s) aside; it reads at its last good version.",
    ),
    "reproduce": (
        "training.commands.reproduce:reproduce",
        "Re-train from the MLflow run RUN_ID's recorded config and silver version; compare metrics.",
    ),
    "restore": (
        "training.commands.tables:restore",
        "Restore TABLE (e.g. gold/forecasts) to an earlier Delta version (as a new version).",
    ),
    "rollback": (
        "training.commands.promote:rollback",
        "Move the champion alias back to the previous champion.",
    ),
    "score": (
        "training.commands.score:score",
        "Score an input with the champion many-models pyfunc and write the forecasts to Gold.",
    ),
    "serve": (
        "training.commands.serve:serve",
        "Serve the REST API and the forecast page (needs the serve extra).",
    ),
    "sql": (
        "training.commands.sql:sql",
        "Run the read-only SQL STATEMENT over the lakehouse tables (gold.forecasts, silver.readings, ...).",
    ),
    "stream": (
        "training.commands.stream:stream",
        "Refresh the forecasts of series that receive new bronze rows (Spark Structured Streaming).",
    ),
    "train": (
        "training.commands.train:train_cmd",
        "Fit, backtest and choose a model per series; log one MLflow run; register.",
    ),
    "vacuum": (
        "training.commands.tables:vacuum",
        "Delete files no table version within the retention needs (default 7 days).",
    ),
}


class _Commands(Mapping):
    """:data:`COMMANDS` as a click group's ``commands``: a command's module is imported
    when the command is first looked up (listing the names imports none)."""

    def __getitem__(self, name: str) -> click.Command:
        module, _, attr = COMMANDS[name][0].partition(":")
        return getattr(importlib.import_module(module), attr)

    def __contains__(self, name: object) -> bool:
        return name in COMMANDS

    def __iter__(self) -> Iterator[str]:
        return iter(COMMANDS)

    def __len__(self) -> int:
        return len(COMMANDS)


class LazyGroup(click.Group):
    """The group of :data:`COMMANDS`, each imported when it is first used (Click's
    lookups, suggestions for a mistyped name and ``group.commands[name]`` all go through
    :class:`_Commands`); its help lists them from the table without importing any."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.commands = _Commands()

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, short) for name, (_, short) in sorted(COMMANDS.items()) if short is not None]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


OWN_LOGGERS = ("mmf", "forecasting", "training", "registry")
TELEMETRY_SWITCHES = ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")  # as registry.connection's


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120, "terminal_width": 120},
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Show mmf's own log messages (DEBUG and up; other libraries stay at WARNING).",
)
def cli(verbose: bool) -> None:
    """mmf: many-models forecasting on Delta Lake and MLflow."""
    State.verbose = verbose
    _setup_logging(verbose)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    _telemetry_off_by_default()


def _telemetry_off_by_default() -> None:
    """MLflow's telemetry off unless the user set one of its switches, as
    :func:`registry.connection.telemetry_off_by_default` (which runs when a command's
    module imports MLflow) does, without importing MLflow: when a host process imported
    it already, its telemetry client is re-evaluated."""
    if any(os.environ.get(var) is not None for var in TELEMETRY_SWITCHES):
        return
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    client = sys.modules.get("mlflow.telemetry.client")
    if client is not None:
        client.set_telemetry_client()


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
    except JobStopped as exc:  # SIGTERM (training.commands.common.stoppable)
        with contextlib.suppress(OSError):
            click.echo(f"stopped: {exc}", err=True)
        return EXIT_STOPPED
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except Exception as exc:
        if State.verbose:
            traceback.print_exc()
        line, code = explain(exc, State.config)
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


def _is_a(exc: BaseException, module: str, name: str) -> bool:
    """Whether ``exc`` is an instance of the class ``module.name``, by the names of its
    classes: the library (MLflow takes seconds to import) need not be imported."""
    return any(c.__module__ == module and c.__name__ == name for c in type(exc).__mro__)


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


def _explain_mlflow(exc: Exception, uri: str) -> str:
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
    if _is_a(exc, "mlflow.exceptions", "MlflowException"):
        return _explain_mlflow(
            exc, _tracking_uri(config) if config is not None else "the tracking store"
        ), EXIT_ERROR
    if _is_a(exc, "pyarrow.lib", "ArrowException"):
        return f"reading or writing table data failed in lakehouse {where}: {_first_line(exc)}", EXIT_ERROR
    return (
        f"unexpected {type(exc).__name__}: {_first_line(exc)} (a bug: rerun with mmf -v for the "
        "traceback and report it)"
    ), EXIT_FAILED


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
