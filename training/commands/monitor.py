"""``mmf monitor``: live accuracy of the delivered forecasts."""

from __future__ import annotations

import json

import click

from training.commands.common import conf_option, engine_option, lake_of, load, wait_option, writing
from training.commands.progress import progress as _progress
from training.jobs.monitor import fleet, fleet_text, monitor


@click.command("monitor")
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
    config = load(conf, engine=engine)
    lake = lake_of(config)
    if score:
        with writing(config, lock_timeout), _progress() as progress:
            rep = monitor(lake, config, progress=progress)
        if not as_json:
            click.echo(f"monitor {rep.describe()}")
    view = fleet(lake, config, top=top)
    click.echo(json.dumps(view, default=str) if as_json else "\n".join(fleet_text(view)))
