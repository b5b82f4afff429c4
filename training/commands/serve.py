"""``mmf serve``: the REST API and the forecast page (the serve extra)."""

from __future__ import annotations

import click

from training.commands.common import conf_option, load


@click.command()
@click.option("--host", default=None, help="Interface to bind (default serve.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port (default serve.port, 8080).")
@click.option(
    "--refresh-s",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Seconds between checks of the champion alias and the Gold table versions (default 5).",
)
@click.option("--access-log/--no-access-log", default=True, show_default=True, help="Log every request.")
@conf_option
def serve(host, port, refresh_s, access_log, conf):
    """Serve the REST API and the forecast page (needs the serve extra)."""
    try:
        from training.serving.app import run
    except ImportError as exc:
        raise click.ClickException(
            f"mmf serve needs the serve extra ({exc.name} is missing): pip install 'mmf[serve]'"
        ) from None

    config = load(conf, **{"serve.host": host, "serve.port": port})
    auth = "on (X-API-Key)" if config.serve.api_key else "off"
    click.echo(
        f"serving {config.lakehouse} and {config.mlflow.registered_model}@champion on http://{config.serve.host}:{config.serve.port} (API key {auth})"
    )
    run(config, refresh_s=refresh_s, access_log=access_log)
