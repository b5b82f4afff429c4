"""Frequencies: inferring one from timestamps, the seasons each one implies, and the
grid a series is cleaned onto.

Two kinds of frequency: a *fixed step* (``h``, ``30min``, ``D``, ``7D``: a pandas
``Tick``), where every step has the same length, and a *calendar* frequency (``W-SUN``,
``MS``, ``ME``, ``QS``, ``QE``, ``YS``, ``B``), whose steps follow the calendar: a
month start is 28 to 31 days after the previous one, a weekly ``W-SUN`` step always
lands on a Sunday. :func:`on_grid` and :func:`grid` treat both alike, so cleaning
puts a series on its grid either way.
"""

from __future__ import annotations

import functools
from collections import Counter

import numpy as np
import pandas as pd

from forecasting.errors import FrequencyError


def step_of(freq: str) -> pd.Timedelta:
    """The length of one step of a fixed-step frequency (``ValueError`` for a calendar one)."""
    return pd.Timedelta(pd.tseries.frequencies.to_offset(freq))


def is_calendar(freq: str | pd.DateOffset) -> bool:
    """Whether ``freq`` follows the calendar (``W-SUN``, ``MS``, ``QE``) rather than a
    fixed step (``h``, ``D``)."""
    return not isinstance(pd.tseries.frequencies.to_offset(freq), pd.offsets.Tick)


def grid(first, last, freq: str) -> pd.DatetimeIndex:
    """Every step of ``freq`` from ``first`` (on the grid) to ``last``."""
    return pd.date_range(first, last, freq=pd.tseries.frequencies.to_offset(freq))


def grid_steps(first, last, freq: str) -> set[pd.Timedelta]:
    """The distinct spacings of the ``freq`` grid between ``first`` and ``last`` (at
    least one step past ``first``): one length for a fixed step, e.g. 28 to 31 days for
    ``MS``."""
    off = pd.tseries.frequencies.to_offset(freq)
    if not is_calendar(off):
        return {pd.Timedelta(off)}
    start = off.rollback(pd.Timestamp(first))
    end = max(pd.Timestamp(last), start + 2 * off)
    idx = pd.date_range(start, end, freq=off)
    return {pd.Timedelta(int(d), unit="ns") for d in np.unique(np.diff(idx.asi8))}


def on_grid(ts: np.ndarray, freq: str) -> np.ndarray:
    """Per timestamp, whether it lies on the grid of ``freq`` that most of ``ts`` share.

    Fixed steps: the phase (the remainder modulo the step) most timestamps share, so one
    stray first reading does not put every other off the grid. Calendar frequencies: on
    the offset (a Sunday for ``W-SUN``, the 1st for ``MS``, the last day for ``ME``) at
    the time of day most of them share (midnight, usually).
    """
    ts = np.asarray(ts, dtype="datetime64[ns]")
    if len(ts) == 0:
        return np.zeros(0, dtype=bool)
    off = pd.tseries.frequencies.to_offset(freq)
    if not is_calendar(off):
        step = pd.Timedelta(off).value
        residues = ts.astype("int64") % step
        values, counts = np.unique(residues, return_counts=True)
        return (residues - values[np.argmax(counts)]) % step == 0
    idx = pd.DatetimeIndex(ts)
    tod = (idx - idx.normalize()).asi8
    values, counts = np.unique(tod, return_counts=True)
    day = idx.normalize()
    on = np.fromiter((off.is_on_offset(d) for d in day), bool, len(day))
    return on & (tod == values[np.argmax(counts)])


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


@functools.lru_cache(maxsize=256)
def steps_per_week(freq: str) -> int | None:
    """Steps of ``freq`` in one week (``"h"`` → 168, ``"30min"`` → 336, ``"D"`` → 7,
    business days → 5), or ``None`` when a step is longer than a day or does not divide
    it (no weekly cycle within the data's steps)."""
    off = pd.tseries.frequencies.to_offset(freq)
    if isinstance(off, pd.offsets.Tick):
        td, day = pd.Timedelta(off), pd.Timedelta(days=1)
        return int(7 * day // td) if td <= day and day % td == pd.Timedelta(0) else None
    return 5 if off.name.split("-")[0] in ("B", "C") and off.n == 1 else None


@functools.lru_cache(maxsize=256)  # pure; called for every series, and to_offset is slow
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
    if len(major) > 1 and not _calendar_like([s for s, _ in major]):
        listing = ", ".join(f"{alias(s)} ({n} series)" for s, n in major)
        raise FrequencyError(
            f"the data mixes frequencies: {listing}; expected one frequency per lakehouse. "
            "Split the sources, or set `freq` in the config to keep one and quarantine the rest"
        )
    step = major[0][0]
    if _calendar_like([step]):
        kind = "monthly" if step <= pd.Timedelta(days=31) else "quarterly"
        fix = "MS (month start) or ME (month end)" if kind == "monthly" else "QS or QE"
        raise FrequencyError(
            f"the data looks {kind} (readings mostly {alias(step)} apart, as calendar "
            f"{'months' if kind == 'monthly' else 'quarters'} are): set `freq` in the config "
            f"to {fix}; calendar frequencies are not inferred"
        )
    return alias(step)


def _calendar_like(steps: list[pd.Timedelta]) -> bool:
    """Whether every step is the length of a calendar month (28-31 days) or quarter
    (89-92 days): readings one calendar month apart are not a fixed step."""
    days = [s / pd.Timedelta(days=1) for s in steps]
    return bool(days) and (all(28 <= d <= 31 for d in days) or all(89 <= d <= 92 for d in days))
