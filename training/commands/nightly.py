"""``mmf nightly``: every step in order, skipping what is current."""

from __future__ import annotations

import sys

import click

from training.commands.common import (
    conf_option,
    engine_option,
    horizon_option,
    lake_of,
    load,
    stoppable,
    wait_option,
)
from training.commands.progress import progress as _progress
from training.commands.train import print_train
from training.jobs.nightly import nightly


@click.command("nightly")
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
    config = load(conf, engine=engine, horizon=horizon, **{"nightly.source": source})
    with stoppable(), _progress() as progress:
        rep = nightly(
            lake_of(config), config, horizon=horizon, lock_timeout_s=lock_timeout, progress=progress
        )
    for step, what in rep.steps.items():
        click.echo(f"{step:<10} {what}")
    if rep.train is not None:
        print_train(rep.train)
    if rep.failed:
        click.echo(f"run FAILED: {rep.failure}", err=True)
        sys.exit(1)
