"""``mmf train``: a model per series, one MLflow run, registered."""

from __future__ import annotations

import click

from training.commands.common import (
    conf_option,
    engine_option,
    horizon_option,
    lake_of,
    load,
    stoppable,
    wait_option,
    writing,
)
from training.commands.progress import progress as _progress
from training.jobs.train import train


@click.command("train")
@conf_option
@engine_option
@click.option("--models", default=None, help="Comma-separated candidate models (see `mmf candidates`).")
@click.option("--series-id", "series_ids", multiple=True, help="Train only these series (repeatable).")
@horizon_option
@click.option(
    "--silver-version", type=click.IntRange(min=0), default=None, help="Train on this silver version."
)
@click.option("--tune", is_flag=True, default=None, help="Hyperopt search per series (slower).")
@wait_option
def train_cmd(conf, engine, models, series_ids, horizon, silver_version, tune, lock_timeout):
    """Fit, backtest and choose a model per series; log one MLflow run; register."""
    config = load(
        conf,
        engine=engine,
        horizon=horizon,
        models=models.split(",") if models else None,
        **{"tune.enabled": tune},
    )
    with writing(config, lock_timeout), stoppable(), _progress() as progress:
        rep = train(
            lake_of(config),
            config,
            silver_version=silver_version,
            series_ids=list(series_ids) or None,
            progress=progress,
        )
    print_train(rep)


def print_train(rep):
    click.echo(f"MLflow run {rep.run_id} on silver version {rep.silver_version} (freq {rep.freq})")
    click.echo("  status: " + ", ".join(f"{k} {v}" for k, v in sorted(rep.status_counts.items())))
    click.echo(
        "  chosen: " + ", ".join(f"{k} {v}" for k, v in sorted(rep.chosen.items(), key=lambda kv: -kv[1]))
    )
    d = rep.decision
    if d is not None:
        verdict = (
            "promoted to champion"
            if d.promoted
            else f"kept as challenger (champion stays v{d.champion_version})"
        )
        click.echo(f"  model version {rep.model_version}: {verdict}: {d.reason}")
