"""``mmf generate``: synthetic smart-meter data."""

from __future__ import annotations

import click

from forecasting.generator import generate as gen
from forecasting.generator import write


@click.command()
@click.option(
    "--series",
    "n_series",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Number of meters.",
)
@click.option("--days", type=click.IntRange(min=1), default=90, show_default=True, help="Days of history.")
@click.option("--freq", default="h", show_default=True, help="Reading frequency (h, 30min, 15min, D).")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Random seed: the same seed writes the same data."
)
@click.option("--clean", is_flag=True, help="No faulty series or readings.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Parquet file to write.")
def generate(n_series, days, freq, seed, clean, out):
    """Generate synthetic smart-meter data (with documented faults unless --clean)."""
    data = gen(n_series=n_series, days=days, freq=freq, seed=seed, clean=clean)
    write(data, out)
    click.echo(
        f"wrote {len(data.readings):,} readings of {n_series} series to {out} ({len(data.faults)} faulty series)"
    )
