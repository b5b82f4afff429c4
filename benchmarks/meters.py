"""Generated meters for the scale benchmarks, written in bounded memory.

``write_meters(folder, n, days)`` writes ``n`` clean hourly meters as Parquet files of
``per_file`` series each (``meters-00000.parquet`` ...), generating one file at a time,
so memory stays at one file's worth whatever ``n`` (100,000 meters x 90 days is 216 M
rows). File ``k`` is ``forecasting.generator.generate(per_file, seed=seed + k)`` with
the meters renumbered ``MTR-<global number>`` and the sites prefixed by the file
(``F00003-SITE-017``), so ids are unique across files; each file has its own weather.
With ``n <= per_file`` the one file is exactly ``generate(n, seed=seed)`` but for the
width of the ids. A ``_complete`` marker names the finished set, so an interrupted
write is redone and a finished one reused.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from forecasting import contract as C

PER_FILE = 1000
MARKER = "_complete"


def write_meters(
    folder: Path, n: int, days: int, freq: str = "h", seed: int = 42, per_file: int = PER_FILE
) -> Path:
    """``folder`` holding ``n`` meters x ``days`` (see the module docstring)."""
    from forecasting.generator import generate, write

    folder = Path(folder)
    spec = {"n": n, "days": days, "freq": freq, "seed": seed, "per_file": per_file}
    marker = folder / MARKER
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("meters-*.parquet"):
        old.unlink()
    width = max(5, len(str(n)))
    for k, lo in enumerate(range(0, n, per_file)):
        size = min(per_file, n - lo)
        gen = generate(n_series=size, days=days, freq=freq, seed=seed + k, clean=True)
        frame = gen.readings
        codes, ids = pd.factorize(frame[C.SERIES_ID])  # MTR-00001 ... of this file
        renamed = np.array([f"MTR-{lo + int(i[4:]):0{width}d}" for i in ids], dtype=object)
        frame[C.SERIES_ID] = renamed[codes]
        codes, sites = pd.factorize(frame["site"])
        frame["site"] = np.array([f"F{k:05d}-{s}" for s in sites], dtype=object)[codes]
        write(gen, folder / f"meters-{k:05d}.parquet")
        del gen, frame
    marker.write_text(json.dumps(spec))
    return folder


def files(folder: Path) -> list[Path]:
    return sorted(Path(folder).glob("meters-*.parquet"))
