"""``mmf generate``: synthetic smart-meter data."""

from __future__ import annotations

from pathlib import Path

import click

from forecasting.generator import generate as gen
from forecasting.generator import weather_table, write


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
@click.option(
    "--weather/--no-weather",
    default=True,
    show_default=True,
    help="Also write <out>_weather.parquet: the regions' observed temperature and 48-step forecasts "
    "issued daily (for `mmf ingest --covariates`).",
)
def generate(n_series, days, freq, seed, clean, out, weather):
    """Generate synthetic smart-meter data (with documented faults unless --clean)."""
    data = gen(n_series=n_series, days=days, freq=freq, seed=seed, clean=clean)
    write(data, out)
    click.echo(
        f"wrote {len(data.readings):,} readings of {n_series} series to {out} ({len(data.faults)} faulty series)"
    )
    if weather:
        path = Path(out).with_name(Path(out).stem + "_weather.parquet")
        table = weather_table(data.readings, seed=seed)
        table.to_parquet(path, index=False)
        click.echo(
            f"wrote {len(table):,} weather rows (observed and forecast temperature by region) to {path}"
        )
