"""``mmf demo``: demo data, the nightly job on it, a summary."""

from __future__ import annotations

from pathlib import Path

import click

from forecasting.generator import generate as gen
from forecasting.generator import write
from registry.aliases import champion_info
from training.commands.common import conf_option, lake_of, load
from training.commands.progress import progress as _progress
from training.commands.train import print_train
from training.jobs.nightly import nightly


@click.command()
@click.option(
    "--series",
    "n_series",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Number of demo meters.",
)
@click.option(
    "--days", type=click.IntRange(min=14), default=60, show_default=True, help="Days of hourly history."
)
@click.option("--lakehouse", default=None, help="Where to put the demo lakehouse (default ./lakehouse).")
@conf_option
def demo(n_series, days, lakehouse, conf):
    """Generate demo data and run the nightly job on it, then summarise."""
    config = load(conf, lakehouse=lakehouse)
    lake = lake_of(config)
    src = (
        Path(config.lakehouse).resolve().parent / "demo-data"
        if "://" not in config.lakehouse
        else Path("demo-data")
    )
    src.mkdir(parents=True, exist_ok=True)
    path = src / f"meters_{n_series}x{days}d.parquet"
    if not path.exists():
        write(gen(n_series=n_series, days=days, freq="h", seed=config.seed, country=config.country), path)
        click.echo(f"generated {n_series} meters x {days} days hourly -> {path}")
    config = config.replace(**{"nightly.source": str(path)})
    with _progress() as progress:
        rep = nightly(lake, config, progress=progress)
    for step, what in rep.steps.items():
        click.echo(f"{step:<10} {what}")
    _summary(lake, config, rep)


def _summary(lake, config, rep):
    click.echo("")
    if rep.train is not None:
        print_train(rep.train)
        shown = {k: v for k, v in rep.train.metrics.items() if k.startswith("backtest.") and "_" not in k}
        if shown:
            click.echo(
                "  backtest of chosen models (mean over series): "
                + ", ".join(f"{k.split('.', 1)[1]} {v:.3f}" for k, v in shown.items())
            )
    info = champion_info(config)
    if info:
        click.echo(f"champion: {info['name']} version {info['version']} (run {info['run_id']})")
    click.echo(f"lakehouse: {lake.root}  ({', '.join(lake.existing())})")
    click.echo(
        'query it (after . .venv/bin/activate):  mmf query gold/forecasts --limit 5    or    mmf sql "SELECT model, count(*) FROM gold.current_selection GROUP BY 1"'
    )
    uri = config.mlflow_tracking_uri()
    click.echo(f"MLflow UI: mlflow ui --backend-store-uri {uri}   then open http://127.0.0.1:5000")
