"""``mmf promote`` and ``mmf rollback``: move the champion alias by hand."""

from __future__ import annotations

import click

from registry import promotion
from registry.connection import configure
from training.commands.common import conf_option, load, wait_option, writing


@click.command()
@click.argument("version")
@conf_option
@wait_option
def promote(version, conf, lock_timeout):
    """Move the champion alias to MLflow model version VERSION by hand.

    VERSION is a version number of the registered MLflow model (mlflow.registered_model
    in the config): `mmf train` prints it, the MLflow UI lists them."""
    config = load(conf)
    with writing(config, lock_timeout):
        configure(config)
        click.echo(f"champion is now version {promotion.promote(config, version)}")


@click.command()
@conf_option
@wait_option
def rollback(conf, lock_timeout):
    """Move the champion alias back to the previous champion."""
    config = load(conf)
    with writing(config, lock_timeout):
        configure(config)
        click.echo(f"champion is now version {promotion.rollback(config)}")
