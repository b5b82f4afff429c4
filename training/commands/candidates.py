"""``mmf candidates`` (and its old name ``mmf models``): the candidate model types."""

from __future__ import annotations

import click

from forecasting.models import MODELS, all_models, unavailable_reason


@click.command("candidates")
def candidates():
    """List the candidate model types `mmf train` chooses from per series (not the MLflow Registry).

    Each with a one-line description and whether it can train here; pick them with
    `mmf train --models` or `models:` in the config. Registered model versions live in
    MLflow (`mmf promote VERSION`, the MLflow UI)."""
    for name, cls in sorted(MODELS.items()):
        click.echo(f"{name:<16} {cls.description}")
    for name, cls in all_models().items():
        if name in MODELS:
            continue
        why = unavailable_reason(name)
        note = f"  [unavailable: {why}]" if why else ""
        click.echo(f"{name:<16} {cls.description}{note}")


models = click.Command(
    "models", callback=candidates.callback, hidden=True, help="Same as `mmf candidates` (old name)."
)
