"""``mmf ingest``: raw files into bronze."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from forecasting.errors import DataContractError
from training.commands.common import conf_option, lake_of, load, wait_option, writing
from training.jobs.covariates import ingest_covariates
from training.jobs.ingest import ingest


@click.command("ingest")
@click.option("--source", type=click.Path(exists=False), help="CSV/Parquet file or folder of them.")
@click.option(
    "--covariates",
    "cov_file",
    type=click.Path(exists=False),
    help="A CSV/Parquet file of covariate values (name, key, ts, issued_at, value) -> bronze/covariates.",
)
@conf_option
@wait_option
def ingest_cmd(source, cov_file, conf, lock_timeout):
    """Append raw files to bronze/readings exactly as received (idempotent per file).

    With --covariates, a file of covariate values to bronze/covariates instead."""
    config = load(conf)
    if bool(source) == bool(cov_file):
        raise click.UsageError("give exactly one of --source (readings) or --covariates (covariate values)")
    if cov_file:
        with writing(config, lock_timeout):
            try:
                n, version = ingest_covariates(lake_of(config), config, cov_file)
            except DataContractError as exc:
                click.echo(f"refused {cov_file}: {exc}", err=True)
                sys.exit(1)
        what = (
            f"ingested {n:,} covariate rows from {cov_file}" if n else f"skipped {cov_file}: already ingested"
        )
        click.echo(f"{what}; bronze/covariates version {version}")
        return
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
