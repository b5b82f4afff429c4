"""Per-series cleaning rules: bronze rows of one series -> silver rows, or quarantine.

``clean_series(pdf, config)`` is the group function of ``mmf refine`` (the engines run
it per series). It returns silver readings rows (``REFINE_OUT``), or a single row whose
``_reason`` is set when the series is quarantined. Rules, in order:

1. Non-finite ``y`` (NaN, ±inf) counts as missing. ``too_large``: more rows than
   ``cleaning.max_points_per_series``. ``all_missing``: no finite reading.
   ``future_timestamps``: a reading later than now + 1 day (:data:`FUTURE_TOLERANCE`).
   The whole series is quarantined rather than the readings dropped: a meter clock
   running ahead makes all its timestamps suspect, and its cutoff would be in the future.
2. Duplicated timestamps: ``duplicates: last`` keeps the reading ingested last (ties:
   the later row of the file); ``mean`` averages the conflicting values.
3. ``irregular``: the series' modal spacing is not a step of the collection's
   frequency, or more than 1% of its timestamps are off the grid (the phase most of
   them share; for a calendar frequency, the offset's days at the time of day most of
   them share: Sundays for ``W-SUN``, the 1st of the month for ``MS``, the last day for
   ``ME``); the few off-grid readings of a regular series are dropped.
4. The series is put on its grid from its first to its last reading: every step for a
   fixed frequency (``h``, ``D``), every calendar step for a calendar one (``W-SUN``,
   ``MS``, ``ME``, ``QS``, ``QE``; see :mod:`forecasting.frequency`), so a weekly
   series with missing weeks has those weeks as missing steps. Runs of
   missing steps up to ``cleaning.max_gap_fill`` are interpolated linearly; longer runs
   are filled from the same step one season earlier (else interpolated) and all filled
   steps are flagged ``is_filled``. ``too_many_gaps``: more than
   ``cleaning.max_missing_share`` of the grid was missing.
5. ``negative_values``: more negative readings than ``cleaning.max_negative_share``.
   ``constant``: a single distinct value over two or more readings. An all-zero series
   follows ``cleaning.all_zero``: ``quarantine`` makes it constant too, with the detail
   saying so (a dead feed should be seen rather than forecast as zero; its first
   non-zero reading brings it back); ``keep`` keeps it (an item that did not sell: it
   is classed intermittent and forecast as no demand); ``auto``, the default, keeps it
   at daily and coarser frequencies (retail) and quarantines it below a day (meters).
   A series with zeros and some demand is not constant, however few its demands.
   ``too_short``: fewer readings than ``cleaning.min_length`` and, with
   ``cold_start.enabled``, fewer than ``cold_start.min_length`` (default one day of
   steps, at least 2: :func:`cold_start_min`): a series between the two goes to silver
   and is forecast from a profile of similar meters (status ``cold_start``,
   :mod:`forecasting.cold_start`) until it has ``cleaning.min_length`` readings.
6. The demand class of the observed readings (:func:`forecasting.demand.demand_class`:
   smooth, erratic, intermittent or lumpy) goes in ``_demand_class`` on every row
   (refine writes it to ``silver/series.demand_class``).
7. Outliers: a robust z-score of the residual to the seasonal median (the same hour of
   the week over the 5 nearest weeks, or of the day over 7 days for short series),
   scaled by that hour's MAD, above ``cleaning.outlier_z`` is flagged ``is_outlier``;
   with ``cleaning.clip_outliers`` the reading is replaced by that seasonal median.
   Intermittent and lumpy series are not screened: their seasonal median is 0 and every
   demand would stand out.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from numpy.lib.stride_tricks import sliding_window_view

from forecasting import contract as C
from forecasting.demand import INTERMITTENT, LUMPY, demand_class
from forecasting.frequency import (
    alias,
    grid,
    grid_steps,
    is_calendar,
    modal_step,
    on_grid,
    seasonalities_for,
    step_of,
)

FUTURE_TOLERANCE = pd.Timedelta("1D")  # readings later than now + this: future_timestamps

REFINE_OUT = pa.schema(
    [
        *[f for f in C.SILVER_READINGS if f.name != C.BUCKET],  # the table layer adds the bucket
        ("_reason", pa.string()),
        ("_detail", pa.string()),
        ("_n_duplicates", pa.int64()),
        ("_demand_class", pa.string()),  # refine writes it to silver/series.demand_class
    ]
)


def quarantine_row(series_id: str, reason: str, detail: str) -> pd.DataFrame:
    assert reason in C.QUARANTINE_REASONS, reason
    return pd.DataFrame(
        {
            C.SERIES_ID: [series_id],
            C.TS: pd.Series([pd.NaT], dtype="datetime64[us]"),
            C.Y: [np.nan],
            "temperature": [np.nan],
            "is_filled": [False],
            "is_outlier": [False],
            "_reason": [reason],
            "_detail": [detail],
            "_n_duplicates": [0],
            "_demand_class": [None],
        }
    )


def clean_series(pdf: pd.DataFrame, config: Any) -> pd.DataFrame:
    """Clean one series' bronze rows (see the module docstring for the rules).

    Never raises for a bad series: an unexpected error quarantines it as
    ``processing_failed`` with the error in ``detail``.
    """
    sid = str(pdf[C.SERIES_ID].iloc[0])
    try:
        return _clean(sid, pdf, config)
    except _Quarantined as q:
        return quarantine_row(sid, q.reason, q.detail)
    except Exception as exc:  # a bad series never stops the others
        return quarantine_row(sid, "processing_failed", f"{type(exc).__name__}: {exc}")


class _Quarantined(Exception):
    """Raised by a cleaning step when the series breaks a rule: ``reason`` is one of
    :data:`forecasting.contract.QUARANTINE_REASONS`, ``detail`` says what was found."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


def _clean(sid: str, pdf: pd.DataFrame, config: Any) -> pd.DataFrame:
    """The rules of the module docstring, in order; a broken rule raises :class:`_Quarantined`."""
    cfg = config.cleaning
    seasons = seasonalities_for(config.freq)
    if len(pdf) > cfg.max_points_per_series:
        raise _Quarantined(
            "too_large", f"{len(pdf)} rows > cleaning.max_points_per_series={cfg.max_points_per_series}"
        )
    ts, y, t = _readings(pdf)
    ts, y, t, n_dup = _dedupe(ts, y, t, cfg.duplicates)
    keep = _on_grid(ts, config.freq)
    if keep is not None:
        ts, y, t = ts[keep], y[keep], t[keep]
    steps = grid(pd.Timestamp(ts[0]), pd.Timestamp(ts[-1]), config.freq).to_numpy(dtype="datetime64[us]")
    y, t = _regular(steps, ts, y, t)
    missing = ~np.isfinite(y)
    _check_gaps(missing, cfg.max_missing_share)
    _check_values(y[~missing], config, keeps_zero(config))
    filled = _fill(y, missing, cfg.max_gap_fill, seasons[0])
    kind = demand_class(y[~missing])
    if kind not in (INTERMITTENT, LUMPY):
        filled, is_outlier = _outliers(filled, missing, seasons, cfg)
        kind = demand_class(filled[~missing])  # of the readings as silver holds them
    else:
        is_outlier = np.zeros(len(filled), dtype=bool)
    n = len(steps)
    return pd.DataFrame(
        {
            C.SERIES_ID: np.full(n, sid, dtype=object),
            C.TS: steps,
            C.Y: filled,
            "temperature": _temperature(t),
            "is_filled": missing,
            "is_outlier": is_outlier,
            "_reason": np.full(n, None, dtype=object),
            "_detail": np.full(n, None, dtype=object),
            "_n_duplicates": np.full(n, n_dup, dtype="int64"),
            "_demand_class": np.full(n, kind, dtype=object),
        }
    )


def _readings(pdf: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rule 1: the rows in ingestion order as ``ts`` (datetime64[us]), ``y`` (non-finite
    -> NaN) and ``t`` (temperature) arrays, without rows lacking a timestamp.
    Quarantines ``all_missing`` and ``future_timestamps``. In numpy, as the rules after
    it: cleaning runs once per series and night, and a frame per step cost most of it."""
    sort_cols = [c for c in ("_ingested_at", "_row") if c in pdf.columns]
    df = pdf.sort_values(sort_cols, kind="stable") if sort_cols and not _in_order(pdf, sort_cols) else pdf
    y = pd.to_numeric(df[C.Y], errors="coerce").to_numpy(dtype=float)
    finite = np.isfinite(y)
    if not finite.any():
        raise _Quarantined("all_missing", f"{len(y)} rows, none with a finite reading")
    stamps = df[C.TS].to_numpy(dtype="datetime64[us]")
    limit = np.datetime64(pd.Timestamp.now(tz="UTC").tz_localize(None) + FUTURE_TOLERANCE, "us")
    future = stamps > limit  # NaT compares False
    if future.any():
        raise _Quarantined(
            "future_timestamps",
            f"{int(future.sum())} reading(s) later than now + 1 day ({limit}); the latest is {stamps[future].max()}",
        )
    temp = df["temperature"].to_numpy(dtype=float) if "temperature" in df else np.full(len(df), np.nan)
    y = np.where(finite, y, np.nan)
    dated = ~np.isnat(stamps)
    if dated.all():
        return stamps, y, temp
    return stamps[dated], y[dated], temp[dated]


def _in_order(pdf: pd.DataFrame, columns: list[str]) -> bool:
    """Whether the rows are already sorted by ``columns`` (as a batch's rows of one
    series come: ingested in order, numbered in read order), without nulls: then the
    stable sort would leave them as they are."""
    keys = [_sort_key(pdf[c]) for c in columns]
    if any(k is None for k in keys):
        return False
    ok = np.ones(max(len(pdf) - 1, 0), dtype=bool)
    decided = np.zeros_like(ok)  # the pair differs on an earlier key
    for k in keys:
        falls, rises = k[1:] < k[:-1], k[1:] > k[:-1]
        ok &= decided | ~falls
        decided |= falls | rises
    return bool(ok.all())


def _sort_key(column: pd.Series) -> np.ndarray | None:
    """The integers ``column`` sorts by (datetimes, naive or not, as their ticks); None
    for another type or with a null."""
    dtype = column.dtype
    if isinstance(dtype, pd.DatetimeTZDtype) or (isinstance(dtype, np.dtype) and dtype.kind == "M"):
        return None if column.isna().any() else np.asarray(column.array.asi8)
    if isinstance(dtype, np.dtype) and dtype.kind in "iu":
        return column.to_numpy()
    return None


def _dedupe(
    ts: np.ndarray, y: np.ndarray, t: np.ndarray, how: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Rule 2: one reading per timestamp, in time order, and how many rows were
    duplicates. ``how`` is ``last`` (the last ingested wins) or ``mean`` (of the values
    present, NaN where none is)."""
    ticks = ts.view("int64")
    if len(ticks) < 2 or bool((ticks[1:] > ticks[:-1]).all()):  # in order, no duplicate
        return ts, y, t, 0
    if how == "mean":
        stamps, inverse = np.unique(ts, return_inverse=True)
        n_dup = len(ts) - len(stamps)
        return stamps, _group_mean(inverse, y, len(stamps)), _group_mean(inverse, t, len(stamps)), n_dup
    stamps, first = np.unique(ts[::-1], return_index=True)  # the first from the end: the last ingested
    keep = len(ts) - 1 - first
    return stamps, y[keep], t[keep], len(ts) - len(stamps)


def _group_mean(groups: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Per group ``0..n-1``, the mean of its values that are not NaN (NaN for none)."""
    present = ~np.isnan(values)
    total = np.bincount(groups, weights=np.where(present, values, 0.0), minlength=n)
    count = np.bincount(groups, weights=present.astype(float), minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def _on_grid(ts: np.ndarray, freq: str) -> np.ndarray | None:
    """Rule 3: quarantines ``irregular`` series; the readings of the others to keep
    (``None``: all), dropping the few off-grid ones."""
    modal = modal_step(ts)
    if modal is not None and modal not in grid_steps(ts[0], ts[-1], freq):
        raise _Quarantined(
            "irregular", f"readings are mostly {alias(modal)} apart, not the collection's frequency {freq}"
        )
    if len(ts) < 2:
        return None
    on = on_grid(ts, freq)
    off_grid = int((~on).sum())
    if off_grid > 0.01 * len(ts):
        raise _Quarantined("irregular", f"{off_grid} of {len(ts)} timestamps are off the {freq} grid")
    return on if off_grid else None


def _regular(
    steps: np.ndarray, ts: np.ndarray, y: np.ndarray, t: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``y`` and ``t`` on the grid ``steps`` (sorted, as ``ts``): NaN where no reading is."""
    pos = np.minimum(np.searchsorted(steps, ts), len(steps) - 1)
    hit = steps[pos] == ts
    y_on, t_on = np.full(len(steps), np.nan), np.full(len(steps), np.nan)
    y_on[pos[hit]], t_on[pos[hit]] = y[hit], t[hit]
    return y_on, t_on


def _check_gaps(missing: np.ndarray, max_share: float) -> None:
    """Rule 4: quarantines ``too_many_gaps`` when more than ``max_share`` of the grid is missing."""
    n_missing = int(missing.sum())
    if len(missing) and n_missing / len(missing) > max_share:
        raise _Quarantined(
            "too_many_gaps",
            f"{n_missing} of {len(missing)} steps missing ({n_missing / len(missing):.0%} > cleaning.max_missing_share={max_share})",
        )


def keeps_zero(config: Any) -> bool:
    """Whether an all-zero series is kept (``cleaning.all_zero``; ``auto``: at daily and
    coarser frequencies)."""
    how = config.cleaning.all_zero
    if how != "auto":
        return how == "keep"
    return config.freq is not None and (
        is_calendar(config.freq) or step_of(config.freq) >= pd.Timedelta("1D")
    )


def _check_values(valid: np.ndarray, config: Any, keep_zero: bool = False) -> None:
    """Rule 5, on the readings present: ``negative_values``, ``constant`` (not an
    all-zero series when ``keep_zero``), ``too_short`` (not a cold-start series)."""
    cfg = config.cleaning
    neg_share = float((valid < 0).mean())
    if neg_share > cfg.max_negative_share:
        raise _Quarantined(
            "negative_values",
            f"{int((valid < 0).sum())} negative readings ({neg_share:.1%} > cleaning.max_negative_share={cfg.max_negative_share}); min {valid.min():g}",
        )
    # a single reading is too short rather than constant
    flat = len(valid) >= 2 and np.nanmax(valid) == np.nanmin(valid)
    if flat and not (keep_zero and valid[0] == 0):
        why = (
            ": no demand or consumption recorded (an all-zero item or a dead meter; "
            "cleaning.all_zero: keep forecasts it as no demand)"
            if valid[0] == 0
            else ""
        )
        raise _Quarantined("constant", f"all {len(valid)} readings equal {valid[0]:g}{why}")
    if len(valid) < cfg.min_length:
        cold = getattr(config, "cold_start", None)  # None: settings without it, no cold start
        enabled = cold is not None and cold.enabled
        floor = cold_start_min(config) if enabled else 0
        if enabled and len(valid) >= floor:
            return  # a cold-start series (forecasting.cold_start)
        why = f"; and < cold_start.min_length={floor}" if enabled else " (cold_start.enabled is false)"
        raise _Quarantined(
            "too_short", f"{len(valid)} valid readings < cleaning.min_length={cfg.min_length}{why}"
        )


def cold_start_min(config: Any) -> int:
    """The valid readings a series needs for a cold-start forecast: ``cold_start.min_length``,
    or one day of steps of ``config.freq``, at least 2 (2 for a calendar frequency)."""
    if config.cold_start.min_length is not None:
        return int(config.cold_start.min_length)
    freq = config.freq or "h"
    if is_calendar(freq):
        return 2
    return max(2, int(pd.Timedelta("1D") // step_of(freq)))


def _outliers(
    filled: np.ndarray, missing: np.ndarray, seasons: tuple[int, ...], cfg: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Rule 7: the readings (clipped to the seasonal median with ``clip_outliers``) and
    the outlier flags; filled steps are never outliers."""
    season = seasons[0]
    # weekly phase when there are enough weeks, so weekends are compared with weekends
    phase = seasons[-1] if len(seasons) > 1 and len(filled) >= 3 * seasons[-1] else season
    med, z = _seasonal_z(filled, phase, seasons=5 if phase != season else 7)
    is_outlier = (np.abs(z) > cfg.outlier_z) & ~missing
    if cfg.clip_outliers:
        filled = np.where(is_outlier, med, filled)
    return filled, is_outlier


def _temperature(t: np.ndarray) -> np.ndarray:
    """The temperature on the grid, interpolated (and extended at both ends) when any is known."""
    known = ~np.isnan(t)
    if known.any() and not known.all():  # pandas' linear interpolate(limit_direction="both"), in numpy
        steps = np.arange(len(t))
        t = np.interp(steps, steps[known], t[known])
    return t


def _seasonal_z(y: np.ndarray, season: int, seasons: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Robust z-scores against the same phase of nearby seasons.

    The reference of each step is the median of the same phase over the ``seasons``
    nearest seasons (the same hour on the surrounding days or weeks), so a meter busy
    only part of the time is compared with its own busy hours, not with its base load.
    The scale is the MAD of the residuals of that phase (load noise grows with load),
    floored at half the overall MAD.
    """
    n = len(y)
    rows = -(-n // season)
    padded = np.full(rows * season, np.nan)
    padded[:n] = y
    by_phase = padded.reshape(rows, season)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        # the centred rolling median of each phase over the seasons (as pandas'
        # rolling(seasons, center=True, min_periods=1).median(), NaNs skipped) in one
        # numpy call: pandas rolls each of the season's columns on its own, 8x slower
        before = seasons // 2
        window = np.full((rows + seasons - 1, season), np.nan)
        window[before : before + rows] = by_phase
        med = _nanmedian_last(sliding_window_view(window, seasons, axis=0))
        resid = by_phase - med
        centre = _nanmedian_last(resid.T)
        col_mad = 1.4826 * _nanmedian_last(np.abs(resid - centre).T)
        overall = 1.4826 * np.nanmedian(np.abs(resid - np.nanmedian(resid)))
        scale = np.fmax(np.nan_to_num(col_mad), 0.5 * overall)
        z = np.where(scale > 0, (resid - centre) / scale, 0.0)
    med = np.where(np.isfinite(med), med, by_phase).ravel()[:n]
    return med, np.nan_to_num(z.ravel()[:n])


def _nanmedian_last(a: np.ndarray) -> np.ndarray:
    """``np.nanmedian(a, axis=-1)``, the same values, from one sort (NaNs sort last): the
    middle of each row's non-NaN values, the mean of the two middle ones for an even
    count, NaN for none. numpy's nanmedian of short rows goes through masked arrays,
    ten times slower, and cleaning takes a few thousand such medians per series."""
    flat = np.sort(a.reshape(-1, a.shape[-1]), axis=-1)
    count = (~np.isnan(flat)).sum(axis=1)
    rows = np.arange(len(flat))
    low, high = flat[rows, np.maximum((count - 1) // 2, 0)], flat[rows, count // 2 - (count == 0)]
    out = np.where(count % 2 == 1, low, (low + high) / 2)
    return np.where(count > 0, out, np.nan).reshape(a.shape[:-1])


def _fill(y: np.ndarray, missing: np.ndarray, max_gap: int, season: int) -> np.ndarray:
    """Interpolate short gaps; fill long ones from one season earlier (else interpolate)."""
    if not missing.any():
        return y.copy()
    s = pd.Series(y)
    run_id = np.cumsum(~missing)
    run_len = pd.Series(missing).groupby(run_id).transform("sum").to_numpy()
    short = missing & (run_len <= max_gap)
    out = s.interpolate(limit_direction="both").to_numpy()
    long_ = missing & ~short
    if long_.any():
        seasonal = y.copy()
        for i in np.flatnonzero(long_):
            j = i - season
            while j >= 0 and not np.isfinite(seasonal[j]):
                j -= season
            if j >= 0:
                seasonal[i] = seasonal[j]
        out = np.where(long_ & np.isfinite(seasonal), seasonal, out)
    return out
