"""``mmf generate``: synthetic smart-meter data, or retail item x store demand (``--retail``)."""

from __future__ import annotations

from pathlib import Path

import click

from forecasting.generator import generate as gen
from forecasting.generator import weather_table, write
from forecasting.generator_retail import generate_retail, write_retail


@click.command()
@click.option(
    "--series",
    "n_series",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Number of meters.",
)
@click.option(
    "--days",
    type=click.IntRange(min=1),
    default=None,
    help="Days of history (default 90 for meters, 730 with --retail).",
)
@click.option("--freq", default=None, help="Reading frequency (h, 30min, 15min, D; default h). Meters only.")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Random seed: the same seed writes the same data."
)
@click.option("--clean", is_flag=True, help="No faulty series or readings (meters).")
@click.option(
    "--retail",
    is_flag=True,
    help="Daily item x store unit sales instead of meters: smooth, erratic, intermittent, lumpy and "
    "all-zero items, stores as site, regions; promotions (planned --horizon days ahead, up to "
    "--horizon days past the data) as covariate rows beside --out.",
)
@click.option("--items", type=click.IntRange(min=1), default=200, show_default=True, help="Items (--retail).")
@click.option(
    "--stores", type=click.IntRange(min=1), default=10, show_default=True, help="Stores (--retail)."
)
@click.option(
    "--horizon",
    type=click.IntRange(min=0),
    default=28,
    show_default=True,
    help="Days promotions are planned ahead and given past the data (--retail).",
)
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Parquet file to write.")
@click.option(
    "--weather/--no-weather",
    default=False,
    show_default=True,
    help="Also write <out>_weather.parquet: the regions' observed temperature and 48-step forecasts "
    "issued daily (for `mmf ingest --covariates`).",
)
def generate(n_series, days, freq, seed, clean, retail, items, stores, horizon, out, weather):
    """Generate synthetic smart-meter data (with documented faults unless --clean).

    With --retail: daily item x store sales (forecasting/generator_retail.py).
    """
    if retail:
        if freq not in (None, "D"):
            raise click.UsageError(f"--retail writes daily sales: --freq {freq} is not D")
        data = generate_retail(n_items=items, n_stores=stores, days=days or 730, seed=seed, horizon=horizon)
        path, promo = write_retail(data, out)
        counts = data.items["pattern"].value_counts()
        mix = ", ".join(
            f"{counts.get(k, 0)} {k}" for k in ("smooth", "erratic", "intermittent", "lumpy", "zero")
        )
        click.echo(
            f"wrote {len(data.readings):,} daily sales of {len(data.items)} item x store series to {path} "
            f"({mix}); promotions, to {horizon} days past the data: {promo}"
        )
        return
    data = gen(n_series=n_series, days=days or 90, freq=freq or "h", seed=seed, clean=clean)
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
