"""``mmf query``: rows of a lakehouse table, optionally by time travel."""

from __future__ import annotations

import difflib

import click
import pandas as pd

from training.commands.common import conf_option, format_option, lake_of, load, print_frame


@click.command()
@click.argument("table")
@click.option("--series-id", "series_id", default=None, help="Only this series' rows (e.g. MTR-00001).")
@click.option("--version", type=click.IntRange(min=0), default=None, help="Delta version (time travel).")
@click.option(
    "--as-of",
    default=None,
    help="Time travel to the table as it was at this ISO 8601 date or timestamp (naive ones are UTC), e.g. 2026-11-27 or 2026-11-27T00:00:00.",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=20, show_default=True, help="Rows to print at most."
)
@format_option
@conf_option
def query(table, series_id, version, as_of, limit, fmt, conf):
    """Print rows of lakehouse TABLE (e.g. gold/forecasts), optionally at a version or timestamp."""
    if version is not None and as_of is not None:
        raise click.UsageError("give --version or --as-of, not both")
    config = load(conf)
    lake = lake_of(config)
    at = (
        version if version is not None else (_version_at(lake, table, _parse_as_of(as_of)) if as_of else None)
    )
    filters = [("series_id", "=", series_id)] if series_id else None
    if series_id and "series_id" not in lake.schema(table).names:
        raise click.BadParameter(f"{table} has no series_id column", param_hint="--series-id")
    df = lake.read(table, version=at, filters=filters)
    if series_id and df.empty:
        _unknown_series(lake, table, at, series_id)
    print_frame(df.head(limit), fmt)
    rows = f"{min(limit, len(df)):,} of {len(df):,} rows" if len(df) > limit else f"{len(df):,} rows"
    click.echo(f"({rows}; version {at if at is not None else lake.version(table)})", err=True)


def _parse_as_of(text: str) -> pd.Timestamp:
    """An ISO 8601 date or timestamp as a UTC time (naive values are UTC)."""
    try:
        ts = pd.Timestamp(text.strip())
    except (ValueError, TypeError):
        ts = pd.NaT
    if pd.isna(ts):
        raise click.BadParameter(
            f"{text!r} is not an ISO 8601 date or timestamp (e.g. 2026-11-27 or 2026-11-27T00:00:00Z)",
            param_hint="--as-of",
        )
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _version_at(lake, table: str, when: pd.Timestamp) -> int:
    """The last version of ``table`` committed at or before ``when``; an error before its first commit."""
    commits = sorted((int(h["version"]), int(h["timestamp"])) for h in lake.history(table))
    ms = when.value // 1_000_000
    before = [v for v, t in commits if t <= ms]
    if not before:
        first_v, first_t = commits[0]
        first = pd.Timestamp(first_t, unit="ms", tz="UTC").isoformat()
        raise click.BadParameter(
            f"{when.isoformat()} is before {table}'s first commit (version {first_v} at {first}); give a later time",
            param_hint="--as-of",
        )
    return before[-1]


def _unknown_series(lake, table: str, at, series_id: str) -> None:
    """Raise a clear error when ``series_id`` has no row in ``table`` at all, naming the closest ids."""
    ids = lake.read(table, version=at, columns=["series_id"])["series_id"].dropna().unique().tolist()
    if series_id in ids:
        return
    scored = sorted((-difflib.SequenceMatcher(None, series_id, i).ratio(), i) for i in ids)
    close = [i for score, i in scored[:5] if -score >= 0.6]  # best first, ties in id order
    hint = (
        f"; closest: {', '.join(close)}"
        if close
        else (f"; ids look like {', '.join(sorted(ids)[:3])}" if ids else "")
    )
    raise click.BadParameter(
        f"series {series_id!r} is not in {table} (version {at if at is not None else lake.version(table)}){hint}",
        param_hint="--series-id",
    )
