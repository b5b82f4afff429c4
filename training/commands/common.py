"""What the commands share: the common options, loading the config, the lakehouse and
its lock, stopping a job on SIGTERM, printing a frame."""

from __future__ import annotations

import contextlib
import signal
import threading

import click
import pandas as pd

from forecasting.config import ENGINES, load_config
from forecasting.errors import JobStopped
from training.commands import State
from training.tables import Lakehouse, lakehouse_lock

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
format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)


def load(conf, **overrides):
    """The command's config (``conf`` over the defaults, then ``overrides``), kept in
    :class:`State` for error messages."""
    State.config = load_config(conf, **overrides)
    return State.config


def lake_of(config) -> Lakehouse:
    return Lakehouse.from_config(config)


@contextlib.contextmanager
def writing(config, wait: float):
    """Hold the lakehouse lock while a writing command runs (waiting ``wait`` seconds)."""
    with lakehouse_lock(lake_of(config), wait):
        yield


@contextlib.contextmanager
def stoppable():
    """While a job runs, SIGTERM raises :class:`~forecasting.errors.JobStopped` in it
    (the main thread) instead of ending the process at once: the job's MLflow run ends
    ``FAILED`` tagged ``mmf.failure`` (``stopped: ...``; the next job resumes it), its
    lock and worker processes are released, and the command exits 143 with one line. A
    second SIGTERM ends the process at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _stop(signum, frame) -> None:
    signal.signal(signum, signal.SIG_DFL)
    raise JobStopped(f"{signal.Signals(signum).name}: the job was told to stop before it finished")


def print_frame(df, fmt):
    if fmt == "csv":
        click.echo(df.to_csv(index=False), nl=False)
    elif fmt == "json":
        click.echo(df.to_json(orient="records", date_format="iso"))
    else:
        with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 60):
            click.echo(df.to_string(index=False))
