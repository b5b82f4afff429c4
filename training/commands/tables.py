"""The table maintenance commands: ``mmf restore``, ``doctor``, ``repair``, ``vacuum``."""

from __future__ import annotations

import sys

import click

from training.commands.common import conf_option, lake_of, load, wait_option, writing


@click.command()
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
    config = load(conf)
    with writing(config, lock_timeout):
        click.echo(
            f"{table} restored to version {version} (new version {lake_of(config).restore(table, version)})"
        )


@click.command()
@conf_option
def doctor(conf):
    """Check every table's commit log; name a corrupt commit file and the fix."""
    lake = lake_of(load(conf))
    sick = 0
    for name in lake.existing():
        diagnosis = lake.diagnose(name)
        click.echo(f"{name}: {diagnosis.summary()}")
        sick += not diagnosis.ok
    if sick:
        sys.exit(1)


@click.command()
@click.argument("table")
@conf_option
def repair(table, conf):
    """Move TABLE's corrupt last commit file(s) aside; it reads at its last good version."""
    moved, version = lake_of(load(conf)).repair(table)
    if not moved:
        click.echo(f"{table}: nothing to repair (version {version})")
        return
    for path in moved:
        click.echo(f"moved aside: {path}")
    click.echo(f"{table} reads at version {version}")


@click.command()
@click.option(
    "--retention-hours", type=click.IntRange(min=0), default=None, help="Default: retention_hours (168)."
)
@click.option("--force", is_flag=True, help="Allow a retention below 168 hours (7 days).")
@conf_option
@wait_option
def vacuum(retention_hours, force, conf, lock_timeout):
    """Delete files no table version within the retention needs (default 7 days)."""
    config = load(conf)
    if retention_hours is None:
        retention_hours = config.retention_hours
    if retention_hours < 168 and not force:
        raise click.UsageError(
            f"retention {retention_hours} hours is below the 168-hour (7-day) minimum; add --force to allow it"
        )
    lake = lake_of(config)
    with writing(config, lock_timeout):
        for name in lake.existing():
            removed = lake.vacuum(name, retention_hours, force=force)
            click.echo(f"{name}: removed {len(removed)} file(s)")
