"""``mmf sql``: a read-only SQL statement over the lakehouse tables."""

from __future__ import annotations

import click

from forecasting.config import ENGINES
from training.commands.common import conf_option, format_option, lake_of, load, print_frame
from training.jobs.sql import run_sql


@click.command()
@click.argument("statement")
@format_option
@click.option(
    "--engine",
    type=click.Choice(list(ENGINES)),
    default=None,
    help="SQL engine: local (DuckDB in this process) or spark (Spark SQL, the spark extra). Default: engine in the config.",
)
@conf_option
def sql(statement, fmt, engine, conf):
    """Run the read-only SQL STATEMENT over the lakehouse tables (gold.forecasts, silver.readings, ...).

    The views gold.current_forecasts, gold.current_selection, gold.current_portfolio and
    gold.current_backtest_forecasts hold the champion's current rows (no older runs or versions); SHOW TABLES lists them all.
    A refused or failed statement is one error line and exit code 2."""
    config = load(conf, engine=engine)
    print_frame(run_sql(lake_of(config), statement, engine=config.engine, config=config), fmt)
