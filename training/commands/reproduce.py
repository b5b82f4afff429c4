"""``mmf reproduce``: re-train an MLflow run and compare its metrics."""

from __future__ import annotations

import sys

import click

from training.commands.common import conf_option, lake_of, load, wait_option, writing
from training.jobs.reproduce import reproduce as repro


@click.command()
@click.argument("run_id")
@conf_option
@wait_option
def reproduce(run_id, conf, lock_timeout):
    """Re-train from the MLflow run RUN_ID's recorded config and silver version; compare metrics."""
    config = load(conf)
    with writing(config, lock_timeout):
        rep = repro(lake_of(config), config, run_id)
    for name, (recorded, now, same) in rep.items():
        click.echo(
            f"{name:<28} recorded {recorded:<14.6g} now {now:<14.6g} {'match' if same else 'DIFFERENT'}"
        )
    if not all(same for _, _, same in rep.values()):
        sys.exit(1)
