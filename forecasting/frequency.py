"""Frequencies: inferring one from timestamps, and the seasons each one implies."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from forecasting.errors import FrequencyError


def step_of(freq: str) -> pd.Timedelta:
    return pd.Timedelta(pd.tseries.frequencies.to_offset(freq))


def future_timestamps(end, freq: str | pd.DateOffset, steps) -> np.ndarray:
    """``end + k * freq`` for every step ``k`` in ``steps``, as ``datetime64[us]``.

    ``end``: one timestamp (the result has the shape of ``steps``) or an array of them
    (one row per end: ``len(end) x len(steps)``). Fixed steps (``h``, ``15min``, ``D``)
    are added as one vector; calendar offsets (``MS``, ``W-SUN``, ``B``) step by step.
    """
    off = pd.tseries.frequencies.to_offset(freq)
    k = np.asarray(steps, dtype="int64")
    ends = np.asarray(end, dtype="datetime64[us]")
    if isinstance(off, pd.offsets.Tick):
        step = pd.Timedelta(off).to_timedelta64().astype("timedelta64[us]")
        return ends[..., None] + k * step
    rows = [
        pd.DatetimeIndex([pd.Timestamp(e) + int(i) * off for i in k]).to_numpy(dtype="datetime64[us]")
        for e in ends.ravel()
    ]
    out = np.stack(rows) if rows else np.empty((0, len(k)), dtype="datetime64[us]")
    return out.reshape(ends.shape + k.shape)


def seasonalities_for(freq: str) -> tuple[int, ...]:
    """Season lengths in steps for a pandas frequency alias, main season first.

    Sub-daily steps that divide a day give (steps per day, steps per week): ``"h"`` →
    ``(24, 168)``, ``"30min"`` → ``(48, 336)``, ``"15min"`` → ``(96, 672)``. Daily gives
    ``(7, 365)``; business days ``(5, 260)``; weekly ``(52,)``; monthly ``(12,)``;
    quarterly ``(4,)``; anything else ``(1,)`` (no season).
    """
    off = pd.tseries.frequencies.to_offset(freq)
    if isinstance(off, pd.offsets.Tick):
        td, day = pd.Timedelta(off), pd.Timedelta(days=1)
        if td < day and day % td == pd.Timedelta(0):
            per_day = int(day // td)
            return (per_day, 7 * per_day)
        if td == day:
            return (7, 365)
        if td == 7 * day:
            return (52,)
        return (1,)
    base = off.name.split("-")[0]
    if base in ("B", "C"):
        return (5, 260) if off.n == 1 else (1,)
    if "Q" in base:
        per_year = 4
    elif "Y" in base or base.startswith("A"):
        per_year = 1
    elif base.startswith("SM"):
        per_year = 24
    elif "M" in base:
        per_year = 12
    elif base == "W":
        per_year = 52
    else:
        per_year = 1
    return (max(1, round(per_year / max(off.n, 1))),)


def freq_of(ts: np.ndarray) -> str:
    """The pandas alias of the timestamps' spacing (``pd.infer_freq``, else the median
    step).

    Raises:
        FrequencyError: fewer than 2 timestamps.
    """
    idx = pd.DatetimeIndex(ts)
    if len(idx) >= 3:
        try:
            freq = pd.infer_freq(idx)
        except (TypeError, ValueError):
            freq = None
        if freq:
            return freq
    if len(idx) < 2:
        raise FrequencyError(
            f"cannot infer the frequency from {len(idx)} timestamp(s): set freq in the config"
        )
    step = pd.Timedelta(int(np.median(np.diff(idx.asi8))), unit="ns")
    return pd.tseries.frequencies.to_offset(step).freqstr


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
    if not major:  # many different steps, none shared by min_share of the series
        listing = ", ".join(f"{alias(s)} ({n} series)" for s, n in counts.most_common(5))
        raise FrequencyError(
            f"cannot infer the frequency: no step is shared by {min_share:.0%} of the series "
            f"(most common: {listing}); set `freq` in the config (e.g. freq: h)"
        )
    if len(major) > 1:
        listing = ", ".join(f"{alias(s)} ({n} series)" for s, n in major)
        raise FrequencyError(
            f"the data mixes frequencies: {listing}; expected one frequency per lakehouse. "
            "Split the sources, or set `freq` in the config to keep one and quarantine the rest"
        )
    return alias(major[0][0])
