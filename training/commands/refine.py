"""``mmf refine``: silver from bronze."""

from __future__ import annotations

import click

from training.commands.common import conf_option, engine_option, lake_of, load, wait_option, writing
from training.commands.progress import progress as _progress
from training.jobs.refine import refine


@click.command("refine")
@conf_option
@engine_option
@wait_option
def refine_cmd(conf, engine, lock_timeout):
    """Build silver (clean, regular, quarantined) from bronze."""
    config = load(conf, engine=engine)
    with writing(config, lock_timeout), _progress() as progress:
        rep = refine(lake_of(config), config, progress=progress)
    if rep.skipped:
        click.echo(f"silver is current (built from bronze version {rep.bronze_version}); nothing to do")
        return
    click.echo(
        f"silver from bronze version {rep.bronze_version}: {rep.n_series} series, {rep.n_rows:,} rows, freq {rep.freq}"
    )
    for reason, n in sorted(rep.quarantined.items()):
        click.echo(f"  quarantined {n} series: {reason}")
