"""``mmf stream``: refresh the forecasts of series with new bronze rows (Spark)."""

from __future__ import annotations

import click

from training.commands.common import conf_option, lake_of, load
from training.jobs.stream import stream as run_stream


@click.command()
@click.option(
    "--once", is_flag=True, help="Process the bronze rows not yet processed, then stop (availableNow)."
)
@click.option(
    "--checkpoint", default=None, help="Checkpoint location (default <lakehouse>/_checkpoints/stream)."
)
@click.option(
    "--starting-version",
    type=click.IntRange(min=0),
    default=None,
    help="First bronze version of a new stream (default: the whole table).",
)
@click.option(
    "--interval-s",
    type=click.FloatRange(min=1),
    default=60,
    show_default=True,
    help="Seconds between micro-batches (without --once).",
)
@click.option(
    "--timeout-s",
    type=click.FloatRange(min=1),
    default=None,
    help="Stop after this many seconds (without --once).",
)
@conf_option
def stream(once, checkpoint, starting_version, interval_s, timeout_s, conf):
    """Refresh the forecasts of series that receive new bronze rows (Spark Structured Streaming)."""

    def show(b):
        what = {
            "written": f"{b.n_rows:,} rows for {b.n_series} series (model version {b.model_version})",
            "skipped": "already committed",
            "empty": "nothing to forecast",
        }[b.status]
        extra = (f"; {len(b.quarantined)} quarantined" if b.quarantined else "") + (
            f"; {len(b.unknown)} without a model" if b.unknown else ""
        )
        click.echo(f"batch {b.batch_id}: {b.status}: {what}{extra} ({b.n_touched} series touched)")

    config = load(conf, engine="spark")
    rep = run_stream(
        lake_of(config),
        config,
        once=once,
        checkpoint=checkpoint,
        starting_version=starting_version,
        interval_s=interval_s,
        timeout_s=timeout_s,
        on_batch=show,
    )
    click.echo(f"stream stopped after {len(rep.batches)} batch(es); checkpoint {rep.checkpoint}")
