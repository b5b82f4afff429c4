"""``mmf ingest``: raw files into bronze."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from training.commands.common import conf_option, lake_of, load, wait_option, writing
from training.jobs.ingest import ingest


@click.command("ingest")
@click.option(
    "--source", required=True, type=click.Path(exists=False), help="CSV/Parquet file or folder of them."
)
@conf_option
@wait_option
def ingest_cmd(source, conf, lock_timeout):
    """Append raw files to bronze/readings exactly as received (idempotent per file)."""
    config = load(conf)
    with writing(config, lock_timeout):
        rep = ingest(
            lake_of(config),
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
