"""How the commands render the jobs' progress callbacks on stderr."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Iterator

import click


def interactive() -> bool:
    """Live bars only on a terminal and outside CI (the ``CI`` variable set)."""
    return sys.stderr.isatty() and not os.environ.get("CI")


class Progress:
    """Renders the jobs' ``progress(step, done, total)`` callbacks: one line on stderr
    when a step starts (always), then a tqdm bar with done/total and ETA (only when
    :func:`interactive`, or when asked for). ``total`` 0 means "started, size unknown"."""

    def __init__(self, bars: bool | None = None) -> None:
        self.enabled = interactive() if bars is None else bars
        self.started: set[str] = set()
        self.bars: dict[str, object] = {}

    def __call__(self, step: str, done: int, total: int) -> None:
        if step not in self.started:
            self.started.add(step)
            click.echo(
                f"{time.strftime('%H:%M:%S')} {step}" + (f" ({total:,} {_unit(step)})" if total else ""),
                err=True,
            )
        if not self.enabled or total <= 0:
            return
        from tqdm import tqdm

        bar = self.bars.get(step)
        if bar is None:
            bar = self.bars[step] = tqdm(
                total=total, desc=step, unit=_unit(step), leave=_unit(step) != "epoch", dynamic_ncols=True
            )
        bar.n = done
        bar.refresh()
        if done >= total:
            bar.close()
            del self.bars[step]

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()

    def step(self, name: str):
        return lambda done, total: self(name, done, total)


def _unit(step: str) -> str:
    """What a step counts: ``"<model> epochs"`` and ``"<model> fits"`` steps say so, the others count series."""
    return {"epochs": "epoch", "fits": "fit"}.get(step.rsplit(" ", 1)[-1], "series")


@contextlib.contextmanager
def progress() -> Iterator[Progress]:
    bars = Progress()
    try:
        yield bars
    finally:
        bars.close()
