"""The ``mmf`` command line: parse, load config, call a job, render progress and a summary."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click
import pandas as pd

from forecasting.config import ENGINES, load_config
from forecasting.errors import MMFError
from forecasting.generator import generate as gen
from forecasting.generator import write
from forecasting.models import MODELS, all_models, unavailable_reason
from registry import promotion
from registry.aliases import champion_info
from registry.connection import configure
from training.jobs.forecast import aggregate, forecast, missing_message
from training.jobs.ingest import ingest
from training.jobs.nightly import nightly
from training.jobs.refine import refine
from training.jobs.reproduce import reproduce as repro
from training.jobs.score import score as run_score
from training.jobs.sql import run_sql
from training.jobs.stream import stream as run_stream
from training.jobs.train import train
from training.tables import Lakehouse

log = logging.getLogger("mmf")


def _config(conf, **overrides):
    return load_config(conf, **overrides)


def _lake(config):
    return Lakehouse.from_config(config)


class _Progress:
    """A tqdm bar per step, only on a terminal or when asked for."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bars: dict[str, object] = {}

    def __call__(self, step: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self.bars.get(step)
        if bar is None:
            bar = self.bars[step] = tqdm(total=total, desc=step, unit="series", leave=True)
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()

    def step(self, name: str):
        return lambda done, total: self(name, done, total)


conf_option = click.option("--conf", type=click.Path(dir_okay=False), default=None, help="YAML file overriding conf/default.yaml.")
engine_option = click.option("--engine", type=click.Choice(list(ENGINES)), default=None, help="Where per-series work runs.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120, "terminal_width": 120})
@click.option("-v", "--verbose", is_flag=True, help="Log debug detail.")
def cli(verbose: bool) -> None:
    """mmf: many-models forecasting on Delta Lake and MLflow."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except MMFError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


@cli.command()
@click.option("--series", "n_series", type=click.IntRange(min=1), default=100, show_default=True, help="Number of meters.")
@click.option("--days", type=click.IntRange(min=1), default=90, show_default=True, help="Days of history.")
@click.option("--freq", default="h", show_default=True, help="Reading frequency (h, 30min, 15min, D).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--clean", is_flag=True, help="No faulty series or readings.")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Parquet file to write.")
def generate(n_series, days, freq, seed, clean, out):
    """Generate synthetic smart-meter data (with documented faults unless --clean)."""
    data = gen(n_series=n_series, days=days, freq=freq, seed=seed, clean=clean)
    write(data, out)
    click.echo(f"wrote {len(data.readings):,} readings of {n_series} series to {out} ({len(data.faults)} faulty series)")


@cli.command("ingest")
@click.option("--source", required=True, type=click.Path(exists=False), help="CSV/Parquet file or folder of them.")
@conf_option
def ingest_cmd(source, conf):
    """Append raw files to bronze/readings exactly as received (idempotent per file)."""
    config = _config(conf)
    rep = ingest(_lake(config), source, strict=not Path(source).is_dir(), extra_columns=config.ingest.extra_columns)
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


@cli.command("refine")
@conf_option
@engine_option
def refine_cmd(conf, engine):
    """Build silver (clean, regular, quarantined) from bronze."""
    config = _config(conf, engine=engine)
    rep = refine(_lake(config), config, progress=_Progress().step("refine"))
    if rep.skipped:
        click.echo(f"silver is current (built from bronze version {rep.bronze_version}); nothing to do")
        return
    click.echo(f"silver from bronze version {rep.bronze_version}: {rep.n_series} series, {rep.n_rows:,} rows, freq {rep.freq}")
    for reason, n in sorted(rep.quarantined.items()):
        click.echo(f"  quarantined {n} series: {reason}")


@cli.command("train")
@conf_option
@engine_option
@click.option("--models", default=None, help="Comma-separated candidate models (see `mmf models`).")
@click.option("--series-id", "series_ids", multiple=True, help="Train only these series (repeatable).")
@click.option("--horizon", type=click.IntRange(min=1), default=None)
@click.option("--silver-version", type=click.IntRange(min=0), default=None, help="Train on this silver version.")
@click.option("--tune", is_flag=True, default=None, help="Hyperopt search per series (slower).")
def train_cmd(conf, engine, models, series_ids, horizon, silver_version, tune):
    """Fit, backtest and choose a model per series; log one MLflow run; register."""
    config = _config(conf, engine=engine, horizon=horizon, models=models.split(",") if models else None,
                     **{"tune.enabled": tune})
    rep = train(_lake(config), config, silver_version=silver_version, series_ids=list(series_ids) or None,
                progress=_Progress().step("train"))
    _print_train(rep)


def _print_train(rep):
    click.echo(f"MLflow run {rep.run_id} on silver version {rep.silver_version} (freq {rep.freq})")
    click.echo("  status: " + ", ".join(f"{k} {v}" for k, v in sorted(rep.status_counts.items())))
    click.echo("  chosen: " + ", ".join(f"{k} {v}" for k, v in sorted(rep.chosen.items(), key=lambda kv: -kv[1])))
    d = rep.decision
    if d is not None:
        verdict = "promoted to champion" if d.promoted else f"kept as challenger (champion stays v{d.champion_version})"
        click.echo(f"  model version {rep.model_version}: {verdict}: {d.reason}")


@cli.command("forecast")
@conf_option
@click.option("--horizon", type=click.IntRange(min=1), default=None)
@click.option("--force", is_flag=True, help="Rewrite even when this champion was already forecast.")
def forecast_cmd(conf, horizon, force):
    """Forecast every series with the champion into gold/forecasts."""
    config = _config(conf, horizon=horizon)
    lake = _lake(config)
    rep = forecast(lake, config, horizon=horizon, force=force)
    if rep.skipped:
        click.echo(f"gold/forecasts already holds champion version {rep.model_version} ({rep.n_rows:,} rows); use --force")
        return
    if rep.note:
        click.echo(f"note: {rep.note}")
    if rep.n_rows:
        aggregate(lake, config, rep.model_version, delivery=rep.delivery)
        click.echo(f"gold/forecasts version {rep.table_version}: {rep.n_rows:,} rows for {rep.describe()}")
    if rep.missing:
        click.echo("missing output: " + missing_message(rep.missing, rep.horizon, rep.n_clean), err=True)
        sys.exit(1)


@cli.command("nightly")
@conf_option
@engine_option
@click.option("--horizon", type=click.IntRange(min=1), default=None)
@click.option("--wait", "lock_timeout", type=float, default=0, help="Seconds to wait for another running job.")
def nightly_cmd(conf, engine, horizon, lock_timeout):
    """Run ingest -> refine -> train -> forecast -> aggregate, skipping what is current."""
    config = _config(conf, engine=engine, horizon=horizon)
    rep = nightly(_lake(config), config, horizon=horizon, lock_timeout_s=lock_timeout, progress=_Progress())
    for step, what in rep.steps.items():
        click.echo(f"{step:<10} {what}")
    if rep.train is not None:
        _print_train(rep.train)
    if rep.failed:
        click.echo(f"run FAILED: {rep.failure}", err=True)
        sys.exit(1)


@cli.command()
@click.option("--series", "n_series", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--days", type=click.IntRange(min=14), default=60, show_default=True)
@click.option("--lakehouse", default=None, help="Where to put the demo lakehouse (default ./lakehouse).")
@conf_option
def demo(n_series, days, lakehouse, conf):
    """Generate demo data and run the nightly job on it, then summarise."""
    config = _config(conf, lakehouse=lakehouse)
    lake = _lake(config)
    src = Path(config.lakehouse).resolve().parent / "demo-data" if "://" not in config.lakehouse else Path("demo-data")
    src.mkdir(parents=True, exist_ok=True)
    path = src / f"meters_{n_series}x{days}d.parquet"
    if not path.exists():
        write(gen(n_series=n_series, days=days, freq="h", seed=config.seed, country=config.country), path)
        click.echo(f"generated {n_series} meters x {days} days hourly -> {path}")
    config = config.replace(**{"nightly.source": str(path)})
    rep = nightly(lake, config, progress=_Progress())
    for step, what in rep.steps.items():
        click.echo(f"{step:<10} {what}")
    _summary(lake, config, rep)


def _summary(lake, config, rep):
    click.echo("")
    if rep.train is not None:
        _print_train(rep.train)
        shown = {k: v for k, v in rep.train.metrics.items() if k.startswith("backtest.") and "_" not in k}
        if shown:
            click.echo("  backtest of chosen models (mean over series): " + ", ".join(f"{k.split('.', 1)[1]} {v:.3f}" for k, v in shown.items()))
    info = champion_info(config)
    if info:
        click.echo(f"champion: {info['name']} version {info['version']} (run {info['run_id']})")
    click.echo(f"lakehouse: {lake.root}  ({', '.join(lake.existing())})")
    click.echo('query it (after . .venv/bin/activate):  mmf query gold/forecasts --limit 5    or    mmf sql "SELECT model, count(*) FROM gold.selection GROUP BY 1"')
    uri = config.mlflow_tracking_uri()
    click.echo(f"MLflow UI: mlflow ui --backend-store-uri {uri}   then open http://127.0.0.1:5000")


@cli.command()
@click.argument("table")
@click.option("--series-id", "series_id", default=None)
@click.option("--version", type=click.IntRange(min=0), default=None, help="Delta version (time travel).")
@click.option("--as-of", default=None, help="Timestamp (ISO 8601) for time travel.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table")
@conf_option
def query(table, series_id, version, as_of, limit, fmt, conf):
    """Print rows of a lakehouse table, optionally at a version or timestamp."""
    if version is not None and as_of is not None:
        raise click.UsageError("give --version or --as-of, not both")
    config = _config(conf)
    lake = _lake(config)
    at = version if version is not None else as_of
    filters = [("series_id", "=", series_id)] if series_id else None
    df = lake.read(table, version=at, filters=filters)
    _print_frame(df.head(limit), fmt)
    click.echo(f"({len(df):,} rows; version {at if at is not None else lake.version(table)})", err=True)


def _print_frame(df, fmt):
    if fmt == "csv":
        click.echo(df.to_csv(index=False), nl=False)
    elif fmt == "json":
        click.echo(df.to_json(orient="records", date_format="iso"))
    else:
        with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 60):
            click.echo(df.to_string(index=False))


@cli.command()
@click.argument("statement")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table")
@engine_option
@conf_option
def sql(statement, fmt, engine, conf):
    """Run SQL over the lakehouse tables (gold.forecasts, silver.readings, ...)."""
    config = _config(conf, engine=engine)
    _print_frame(run_sql(_lake(config), statement, engine=config.engine), fmt)


@cli.command()
def models():
    """List every registered model with a one-line description (and whether it can train here)."""
    for name, cls in sorted(MODELS.items()):
        click.echo(f"{name:<16} {cls.description}")
    for name, cls in all_models().items():
        if name in MODELS:
            continue
        why = unavailable_reason(name)
        note = f"  [unavailable: {why}]" if why else ""
        click.echo(f"{name:<16} {cls.description}{note}")


@cli.command()
@click.argument("version")
@conf_option
def promote(version, conf):
    """Move the champion alias to VERSION by hand."""
    config = _config(conf)
    configure(config)
    click.echo(f"champion is now version {promotion.promote(config, version)}")


@cli.command()
@conf_option
def rollback(conf):
    """Move the champion alias back to the previous champion."""
    config = _config(conf)
    configure(config)
    click.echo(f"champion is now version {promotion.rollback(config)}")


@cli.command()
@click.argument("run_id")
@conf_option
def reproduce(run_id, conf):
    """Re-train from a run's recorded config and silver version; compare metrics."""
    config = _config(conf)
    rep = repro(_lake(config), config, run_id)
    for name, (recorded, now, same) in rep.items():
        click.echo(f"{name:<28} recorded {recorded:<14.6g} now {now:<14.6g} {'match' if same else 'DIFFERENT'}")
    if not all(same for _, _, same in rep.values()):
        sys.exit(1)


@cli.command()
@click.argument("table")
@click.option("--version", type=click.IntRange(min=0), required=True)
@conf_option
def restore(table, version, conf):
    """Restore a table to an earlier Delta version."""
    config = _config(conf)
    click.echo(f"{table} restored to version {version} (new version {_lake(config).restore(table, version)})")


@cli.command()
@click.option("--retention-hours", type=click.IntRange(min=0), default=None, help="Default: retention_hours (168).")
@click.option("--force", is_flag=True, help="Allow a retention below 168 hours (7 days).")
@conf_option
def vacuum(retention_hours, force, conf):
    """Delete files no table version within the retention needs (default 7 days)."""
    config = _config(conf)
    if retention_hours is None:
        retention_hours = config.retention_hours
    if retention_hours < 168 and not force:
        raise click.UsageError(f"retention {retention_hours} hours is below the 168-hour (7-day) minimum; add --force to allow it")
    lake = _lake(config)
    for name in lake.existing():
        removed = lake.vacuum(name, retention_hours, force=force)
        click.echo(f"{name}: removed {len(removed)} file(s)")


@cli.command()
@click.option("--host", default=None, help="Interface to bind (default serve.host, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port (default serve.port, 8080).")
@click.option("--refresh-s", type=click.FloatRange(min=0.1), default=None, help="Seconds between checks of the champion alias and the Gold table versions (default 5).")
@click.option("--access-log/--no-access-log", default=True, show_default=True, help="Log every request.")
@conf_option
def serve(host, port, refresh_s, access_log, conf):
    """Serve the REST API and the forecast page (needs the serve extra)."""
    try:
        from training.serving.app import run
    except ImportError as exc:
        raise click.ClickException(f"mmf serve needs the serve extra ({exc.name} is missing): pip install 'mmf[serve]'") from None

    config = _config(conf, **{"serve.host": host, "serve.port": port})
    auth = "on (X-API-Key)" if config.serve.api_key else "off"
    click.echo(f"serving {config.lakehouse} and {config.mlflow.registered_model}@champion on http://{config.serve.host}:{config.serve.port} (API key {auth})")
    run(config, refresh_s=refresh_s, access_log=access_log)



@cli.command()
@click.option("--input", "source", required=True, help="Scoring input: a lakehouse table, a Delta table path, or a .parquet/.csv file (series_id, horizon; optional ts, temperature).")
@click.option("--output", type=click.Choice(["gold/scores", "gold/forecasts"]), default="gold/scores", show_default=True, help="gold/scores: replace this input's rows; gold/forecasts: MERGE on (series_id, ts, cutoff, model_version).")
@engine_option
@conf_option
def score(source, output, engine, conf):
    """Score an input with the champion many-models pyfunc and write the forecasts to Gold."""
    config = _config(conf, engine=engine)
    rep = run_score(_lake(config), config, source, output=output)
    click.echo(f"{output} version {rep.table_version}: {rep.n_rows:,} rows for {rep.n_series} series from {rep.source} (model version {rep.model_version})")
    if rep.n_unknown:
        click.echo(f"note: {rep.n_unknown} series of the input have no model in the champion and were left out", err=True)


@cli.command()
@click.option("--once", is_flag=True, help="Process the bronze rows not yet processed, then stop (availableNow).")
@click.option("--checkpoint", default=None, help="Checkpoint location (default <lakehouse>/_checkpoints/stream).")
@click.option("--starting-version", type=click.IntRange(min=0), default=None, help="First bronze version of a new stream (default: the whole table).")
@click.option("--interval-s", type=click.FloatRange(min=1), default=60, show_default=True, help="Seconds between micro-batches (without --once).")
@click.option("--timeout-s", type=click.FloatRange(min=1), default=None, help="Stop after this many seconds (without --once).")
@conf_option
def stream(once, checkpoint, starting_version, interval_s, timeout_s, conf):
    """Refresh the forecasts of series that receive new bronze rows (Spark Structured Streaming)."""
    def show(b):
        what = {"written": f"{b.n_rows:,} rows for {b.n_series} series (model version {b.model_version})",
                "skipped": "already committed", "empty": "nothing to forecast"}[b.status]
        extra = (f"; {len(b.quarantined)} quarantined" if b.quarantined else "") + (f"; {len(b.unknown)} without a model" if b.unknown else "")
        click.echo(f"batch {b.batch_id}: {b.status}: {what}{extra} ({b.n_touched} series touched)")

    config = _config(conf, engine="spark")
    rep = run_stream(_lake(config), config, once=once, checkpoint=checkpoint, starting_version=starting_version,
                     interval_s=interval_s, timeout_s=timeout_s, on_batch=show)
    click.echo(f"stream stopped after {len(rep.batches)} batch(es); checkpoint {rep.checkpoint}")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
