"""``mmf score``: score an input with the champion into Gold."""

from __future__ import annotations

import click

from training.commands.common import (
    conf_option,
    engine_option,
    lake_of,
    load,
    stoppable,
    wait_option,
    writing,
)
from training.commands.progress import progress as _progress
from training.jobs.score import score as run_score


@click.command()
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
    config = load(conf, engine=engine)
    with writing(config, lock_timeout), stoppable(), _progress() as progress:
        rep = run_score(lake_of(config), config, source, output=output, progress=progress)
    click.echo(
        f"{output} version {rep.table_version}: {rep.n_rows:,} rows for {rep.n_series} series from {rep.source} (model version {rep.model_version})"
    )
    if rep.n_unknown:
        click.echo(
            f"note: {rep.n_unknown} series of the input have no model in the champion and were left out",
            err=True,
        )
