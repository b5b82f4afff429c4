"""Frequencies: inferring one from timestamps, and the seasons each one implies."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from forecasting.errors import FrequencyError

# Seasons (in steps) per frequency: daily then weekly for sub-daily data.
_SEASONS = {
    pd.Timedelta("15min"): (96, 672),
    pd.Timedelta("30min"): (48, 336),
    pd.Timedelta("1h"): (24, 168),
    pd.Timedelta("1D"): (7, 365),
}


def step_of(freq: str) -> pd.Timedelta:
    return pd.Timedelta(pd.tseries.frequencies.to_offset(freq))


def seasonalities_for(freq: str) -> tuple[int, ...]:
    """Seasons in steps, shortest first: ``h`` -> (24, 168), ``30min`` -> (48, 336)."""
    step = step_of(freq)
    if step in _SEASONS:
        return _SEASONS[step]
    if step < pd.Timedelta("1D"):
        day = int(pd.Timedelta("1D") / step)
        return (day, 7 * day)
    return (1,)


def alias(step: pd.Timedelta) -> str:
    """A canonical pandas alias for a step (``1h`` -> ``h``)."""
    return pd.tseries.frequencies.to_offset(step).freqstr


def modal_step(ts: np.ndarray) -> pd.Timedelta | None:
    """The most common positive spacing between sorted, distinct timestamps."""
    t = np.unique(np.asarray(ts, dtype="datetime64[ns]"))
    if len(t) < 3:
        return None
    diffs = np.diff(t).astype("int64")
    values, counts = np.unique(diffs, return_counts=True)
    return pd.Timedelta(int(values[np.argmax(counts)]), unit="ns")


def infer_freq(steps: dict[str, pd.Timedelta | None], min_share: float = 0.1) -> str:
    """One frequency for a collection from each series' modal step.

    Series with a minority step (below ``min_share`` of series) are left for the
    cleaning rules to quarantine as irregular; two or more steps each shared by at
    least ``min_share`` of the series are a mix, refused with the counts.
    """
    counts = Counter(s for s in steps.values() if s is not None)
    if not counts:
        raise FrequencyError(
            "cannot infer the frequency: no series has 3 or more distinct timestamps; "
            "set `freq` in the config (e.g. freq: h)"
        )
    total = sum(counts.values())
    major = [(s, n) for s, n in counts.most_common() if n / total >= min_share]
    if len(major) > 1:
        listing = ", ".join(f"{alias(s)} ({n} series)" for s, n in major)
        raise FrequencyError(
            f"the data mixes frequencies: {listing}; expected one frequency per lakehouse. "
            "Split the sources, or set `freq` in the config to keep one and quarantine the rest"
        )
    return alias(major[0][0])
