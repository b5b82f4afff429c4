"""``mmf forecast``: the champion's forecasts into gold."""

from __future__ import annotations

import sys

import click

from training.commands.common import (
    conf_option,
    horizon_option,
    lake_of,
    load,
    stoppable,
    wait_option,
    writing,
)
from training.commands.progress import progress as _progress
from training.jobs.forecast import aggregate, forecast, missing_message


@click.command("forecast")
@conf_option
@horizon_option
@click.option("--force", is_flag=True, help="Rewrite even when this champion was already forecast.")
@wait_option
def forecast_cmd(conf, horizon, force, lock_timeout):
    """Forecast every series with the champion into gold/forecasts."""
    config = load(conf, horizon=horizon)
    lake = lake_of(config)
    with writing(config, lock_timeout), stoppable(), _progress() as progress:
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
