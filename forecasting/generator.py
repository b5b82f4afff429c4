"""Synthetic smart-meter load: realistic, seeded, vectorised demo data.

``generate(n_series, days, freq, seed)`` returns long-format readings (the columns of
:data:`forecasting.contract.BRONZE_READINGS` without lineage) and a table saying which
series carry a deliberate fault and what the cleaning step should make of it.
``write(gen, path)`` stores the readings as Parquet.

The signal
----------
``y`` is the mean demand in kW over each step, so levels do not depend on ``freq``
(``D`` averages 24 hourly values). Timestamps are naive UTC (or, with ``tz``, the same
instants converted to that zone); the daily profiles follow the UTC clock.

* Meters belong to sites (about four meters a site) and sites to five regions
  (``north``, ``south``, ``east``, ``west``, ``central``). About 30% of sites are
  businesses, the rest households; every meter of a site shares its kind.
* Level: lognormal base load, median about 0.45 kW for households, 6 kW for businesses.
* Daily profile: households have a morning and a larger evening peak and a low night,
  with a later morning and more daytime use at weekends; businesses follow opening
  hours (some open on Saturdays) over an always-on base.
* Weekly: Saturday and Sunday differ from weekdays. Public holidays of ``country``
  (the ``holidays`` package) behave like Sundays.
* Annual: more lighting in winter, and the temperature response below.
* Temperature per region (°C, rounded to 0.1): an annual cycle coldest in late January,
  a daily cycle warmest mid-afternoon, persistent day-to-day weather anomalies shared in
  part across regions, and a small per-site offset. Load rises below 15.5 °C (heating:
  strong for the ~15% of households heating electrically) and, for some meters,
  above 20 °C (cooling).
* Noise: a multiplicative day-level factor and a multiplicative per-step factor.
  ``y`` is strictly positive on clean series.

Faults
------
Unless ``clean=True``, ``round(n_series * fault_share)`` randomly chosen series (20% by
default) get exactly one fault each. Kinds are dealt round-robin in the order below, so
every kind appears once ``n_series * fault_share >= 8`` (e.g. 50 series at 20%), and
with fewer faulty series the first kinds of the list are used. ``faults`` has one row
per faulty series: ``series_id``, ``fault`` and ``expected`` (the status ``ok`` or the
quarantine reason that the cleaning rules should give, with their default settings).

==============  ==========================================================  ===============
fault           what is done to the series                                  expected
==============  ==========================================================  ===============
gaps            1-3% of readings dropped at random plus 2-4 gaps of 3-12 h  ok
                (interior rows removed)
duplicates      1-3% of timestamps repeated with a conflicting ``y``        ok
                (x0.5-0.9 or x1.1-1.5), the extra row right after the first
outliers        3-6 spikes of 10-50x the series' median                     ok
negative        one run of 5% of the readings with the sign flipped         negative_values
constant        every reading 0.0 (dead meter) or a fixed value (stuck)     constant
too_short       only the last half day of readings is kept (at least one)   too_short
all_nan         every ``y`` is NaN (rows and temperature kept)              all_missing
long_gap        one interior outage of 35-50% of the readings (rows         too_many_gaps
                removed)
==============  ==========================================================  ===============

A dead meter (all 0.0) at ``freq="D"`` is expected ``ok``: ``cleaning.all_zero: auto``
keeps an all-zero series at a daily frequency (an item that did not sell, in retail data).

Series that are not faulty are identical to the ``clean=True`` output for the same
seed: faults use their own random stream.
"""

from __future__ import annotations

import datetime as dt
import warnings
from dataclasses import dataclass
from pathlib import Path

import holidays
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from forecasting import contract as C
from forecasting.errors import ConfigError
from forecasting.frequency import step_of

# Fault kind -> expected cleaning outcome (a status or a quarantine reason), in the
# round-robin order in which kinds are dealt to faulty series.
FAULTS: dict[str, str] = {
    "gaps": C.OK,
    "duplicates": C.OK,
    "outliers": C.OK,
    "negative": "negative_values",
    "constant": "constant",
    "too_short": "too_short",
    "all_nan": "all_missing",
    "long_gap": "too_many_gaps",
}

REGIONS = ("north", "south", "east", "west", "central")
# Per region: annual mean °C, half the annual range, mean daily range (GB-like climate).
_CLIMATE = np.array(
    [
        [8.5, 5.5, 6.0],  # north
        [11.0, 6.0, 8.0],  # south
        [10.0, 6.5, 9.0],  # east
        [10.5, 4.5, 5.5],  # west
        [9.5, 6.0, 8.0],  # central
    ]
)
_METERS_PER_SITE = 4
_BUSINESS_SHARE = 0.3
_HEATING_BASE_C = 15.5
_COOLING_BASE_C = 20.0
# Cells (series x internal steps) computed at once: bounds each temporary to ~16 MB
# whatever the number of series.
_CHUNK_CELLS = 2_000_000
_DAY_NS = 86_400 * 10**9
_YEAR_DAYS = 365.2425
# Days since 1970-01-01 of a coldest day (20 January) and of the winter solstice.
_COLDEST_DAY = 19.0
_DARKEST_DAY = -11.0

READINGS_COLUMNS = (C.SERIES_ID, C.TS, C.Y, *C.EXOG, *C.ATTRIBUTES)
FAULTS_COLUMNS = (C.SERIES_ID, "fault", "expected")


@dataclass
class Generated:
    """Output of :func:`generate`.

    Attributes:
        readings: one row per reading, sorted by ``series_id`` then ``ts``: ``series_id``
            (str), ``ts`` (``datetime64[ns]``, naive UTC, or tz-aware when ``tz`` was
            given), ``y`` and ``temperature`` (float64), ``site`` and ``region`` (str).
        faults: one row per faulty series: ``series_id``, ``fault``, ``expected``.
    """

    readings: pd.DataFrame
    faults: pd.DataFrame


def generate(
    n_series: int = 10,
    days: int = 90,
    freq: str = "h",
    seed: int = 0,
    clean: bool = False,
    start: str = "2024-01-01",
    fault_share: float = 0.2,
    country: str = "GB",
    tz: str | None = None,
) -> Generated:
    """Synthetic smart-meter readings, deterministic for a given seed.

    Args:
        n_series: number of meters (``MTR-00001`` ...).
        days: length of every (unfaulted) series in days.
        freq: step, a pandas alias dividing a day (``h``, ``30min``, ``15min``) or ``D``.
        seed: same seed, same output.
        clean: no faults at all when true.
        start: first timestamp (UTC).
        fault_share: share of series given one fault each (see the module docstring).
        country: ISO code for public holidays, as the ``holidays`` package knows them.
        tz: when given, ``ts`` is tz-aware: the UTC instants converted to this zone.

    Returns:
        :class:`Generated`: the readings and one row per faulty series.

    Raises:
        ConfigError: an argument out of range, an unknown frequency, country or zone.
    """
    step, steps_per_day = _check_freq(freq)
    t0 = _check_args(n_series, days, seed, fault_share, start, tz)
    n_series, days = int(n_series), int(days)

    seeds = np.random.SeedSequence(seed).spawn(4)
    meta_rng, weather_rng, signal_rng, fault_rng = (np.random.default_rng(s) for s in seeds)

    daily = steps_per_day == 1
    # Daily data is the mean of hourly values, so it keeps the weekly and weather effects.
    inner_step = np.timedelta64(1, "h") if daily else np.timedelta64(step.value, "ns")
    inner_per_day = 24 if daily else steps_per_day
    inner = t0 + np.arange(days * inner_per_day) * inner_step
    grid = inner[::24] if daily else inner

    meters = _meters(n_series, meta_rng)
    cal = _calendar(inner, country)
    region_temp = _weather(cal, weather_rng)
    y, temp = _signal(meters, cal, region_temp, signal_rng, group=24 if daily else 1)

    n_faulty = 0 if clean else int(round(n_series * fault_share))
    fault_rows, changed = _faults(y, n_faulty, fault_rng, steps_per_day, step)
    readings = _assemble(meters, grid, y, temp, changed)
    if tz is not None:
        readings[C.TS] = pd.DatetimeIndex(readings[C.TS]).tz_localize("UTC").tz_convert(tz)
    faults = pd.DataFrame(
        {
            C.SERIES_ID: pd.Series([meters.ids[i] for i, _ in fault_rows], dtype=object),
            "fault": pd.Series([kind for _, kind in fault_rows], dtype=object),
            "expected": pd.Series([_expected(kind, y[i], daily) for i, kind in fault_rows], dtype=object),
        }
    )
    faults = faults.sort_values(C.SERIES_ID, kind="stable").reset_index(drop=True)
    return Generated(readings=readings, faults=faults)


def write(gen: Generated, path: str | Path) -> Path:
    """Write ``gen.readings`` to one Parquet file (``ts`` as ``timestamp[us]``) and return its path.

    A tz-aware ``ts`` keeps its zone (``timestamp[us, tz=...]``); parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df = gen.readings
    ts_tz = getattr(df[C.TS].dtype, "tz", None)
    schema = pa.schema(
        [
            (C.SERIES_ID, pa.string()),
            (C.TS, pa.timestamp("us", tz=str(ts_tz)) if ts_tz is not None else C.TS_TYPE),
            (C.Y, pa.float64()),
            ("temperature", pa.float64()),
            ("site", pa.string()),
            ("region", pa.string()),
        ]
    )
    table = pa.Table.from_pandas(df, schema=schema, preserve_index=False)
    pq.write_table(table.replace_schema_metadata(None), path)
    return path


# -- validation ---------------------------------------------------------------------


def _check(value: object, key: str, ok: bool, allowed: str) -> None:
    if isinstance(value, bool) or not ok:
        raise ConfigError(key, value, allowed)


def _check_args(
    n_series: object, days: object, seed: object, fault_share: object, start: str, tz: str | None
) -> np.datetime64:
    """Validate the arguments of :func:`generate` other than ``freq``; return ``start`` as UTC."""
    _check(n_series, "n_series", isinstance(n_series, (int, np.integer)) and n_series >= 1, "an integer >= 1")
    _check(days, "days", isinstance(days, (int, np.integer)) and days >= 1, "an integer >= 1")
    _check(seed, "seed", isinstance(seed, (int, np.integer)) and seed >= 0, "an integer >= 0")
    _check(
        fault_share,
        "fault_share",
        isinstance(fault_share, (int, float)) and 0 <= fault_share <= 1,
        "a number in [0, 1]",
    )
    t0 = _check_start(start)
    if tz is not None:
        try:
            pd.Timestamp(0, tz="UTC").tz_convert(tz)
        except Exception:
            raise ConfigError(
                "tz", tz, "an IANA time zone such as 'Europe/London' or 'UTC', or None"
            ) from None
    return t0


def _check_freq(freq: str) -> tuple[pd.Timedelta, int]:
    allowed = "a pandas alias of a step that divides a day, such as 'h', '30min', '15min' or 'D' (not the deprecated 'H', 'T')"
    try:
        with warnings.catch_warnings():
            # pandas warns, then fails or guesses, on deprecated or mistyped aliases ('H', 'nope').
            warnings.simplefilter("error", FutureWarning)
            step = step_of(freq)
    except (ValueError, TypeError, FutureWarning):
        raise ConfigError("freq", freq, allowed) from None
    day = pd.Timedelta("1D")
    if step <= pd.Timedelta(0) or step > day or day % step != pd.Timedelta(0):
        raise ConfigError("freq", freq, allowed)
    return step, int(day / step)


def _check_start(start: str) -> np.datetime64:
    try:
        t0 = pd.Timestamp(start)
    except (ValueError, TypeError):
        raise ConfigError("start", start, "a timestamp such as '2024-01-01'") from None
    if t0 is pd.NaT:
        raise ConfigError("start", start, "a timestamp such as '2024-01-01'")
    if t0.tz is not None:
        t0 = t0.tz_convert("UTC").tz_localize(None)
    return np.datetime64(t0.as_unit("ns").value, "ns")


# -- meters, calendar and weather ----------------------------------------------------


@dataclass
class _Meters:
    ids: np.ndarray  # (n,) object: series ids
    site_names: np.ndarray  # (n_sites,) object
    region_names: np.ndarray  # (len(REGIONS),) object
    site: np.ndarray  # (n,) site index
    region: np.ndarray  # (n,) region index
    site_temp_offset: np.ndarray  # (n_sites,) °C added to the region's temperature
    business: np.ndarray  # (n,) bool
    level: np.ndarray  # (n,) weekday mean load before weather, kW
    params: dict[str, np.ndarray]  # (n,) each: profile, weather and noise parameters


def _meters(n: int, rng: np.random.Generator) -> _Meters:
    n_sites = max(1, int(round(n / _METERS_PER_SITE)))
    site = rng.permutation(np.arange(n) % n_sites)
    site_region = rng.integers(len(REGIONS), size=n_sites)
    site_business = rng.random(n_sites) < _BUSINESS_SHARE
    site_offset = np.round(rng.normal(0.0, 0.4, n_sites), 1)
    business = site_business[site]

    def pick(hh: np.ndarray, biz: np.ndarray) -> np.ndarray:
        return np.where(business, biz, hh)

    u = lambda lo, hi: rng.uniform(lo, hi, n)  # noqa: E731
    electric = rng.random(n) < 0.15
    cooled = rng.random(n) < pick(np.full(n, 0.1), np.full(n, 0.5))
    params = {
        "base": pick(u(0.25, 0.5), u(0.2, 0.45)),
        # households
        "m_peak": rng.normal(7.3, 0.6, n),
        "m_amp": u(0.3, 0.9),
        "e_peak": rng.normal(18.8, 0.7, n),
        "e_amp": u(0.8, 1.8),
        "day_amp": u(0.1, 0.4),
        # businesses
        "open": rng.normal(8.0, 0.7, n),
        "close": rng.normal(18.0, 1.0, n),
        "sat_open": np.where(rng.random(n) < 0.4, u(0.3, 0.8), 0.05),
        # weather, season, noise
        "heat": pick(np.where(electric, u(0.05, 0.09), u(0.01, 0.03)), u(0.01, 0.04)),
        "cool": np.where(cooled, pick(u(0.01, 0.03), u(0.02, 0.06)), 0.0),
        "light": pick(u(0.04, 0.12), u(0.0, 0.05)),
        "sigma": pick(u(0.12, 0.25), u(0.04, 0.1)),
        "day_sigma": pick(np.full(n, 0.08), np.full(n, 0.04)),
    }
    level = np.exp(pick(rng.normal(np.log(0.45), 0.5, n), rng.normal(np.log(6.0), 0.9, n)))
    width = max(5, len(str(n)))
    return _Meters(
        ids=np.array([f"MTR-{i:0{width}d}" for i in range(1, n + 1)], dtype=object),
        site_names=np.array(
            [f"SITE-{i:0{max(3, len(str(n_sites)))}d}" for i in range(1, n_sites + 1)], dtype=object
        ),
        region_names=np.array(REGIONS, dtype=object),
        site=site,
        region=site_region[site],
        site_temp_offset=site_offset,
        business=business,
        level=level,
        params=params,
    )


@dataclass
class _Calendar:
    hour: np.ndarray  # (T,) hour of the UTC day, fractional
    day: np.ndarray  # (T,) index of the day, from 0
    frac_day: np.ndarray  # (T,) days since the first midnight, fractional
    daytype: np.ndarray  # (n_days,) 0 weekday, 1 Saturday, 2 Sunday or public holiday
    cold: np.ndarray  # (T,) 1 on the coldest day of the year, -1 six months later
    dark: np.ndarray  # (T,) 1 at the winter solstice, -1 at the summer one


def _calendar(ts: np.ndarray, country: str) -> _Calendar:
    ns = ts.astype("datetime64[ns]").astype(np.int64)
    epoch_day = ns // _DAY_NS
    first = int(epoch_day[0])
    days_float = ns / _DAY_NS
    day_numbers = np.arange(first, int(epoch_day[-1]) + 1)
    weekday = (day_numbers + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    daytype = np.select([weekday == 5, weekday == 6], [1, 2], 0)
    daytype[np.isin(day_numbers, _holiday_days(country, day_numbers))] = 2
    return _Calendar(
        hour=(days_float - epoch_day) * 24.0,
        day=(epoch_day - first).astype(np.int64),
        frac_day=days_float - first,
        daytype=daytype,
        cold=np.cos(2 * np.pi * (days_float - _COLDEST_DAY) / _YEAR_DAYS),
        dark=np.cos(2 * np.pi * (days_float - _DARKEST_DAY) / _YEAR_DAYS),
    )


def _holiday_days(country: str, day_numbers: np.ndarray) -> np.ndarray:
    epoch = dt.date(1970, 1, 1)
    years = range(
        (epoch + dt.timedelta(days=int(day_numbers[0]))).year,
        (epoch + dt.timedelta(days=int(day_numbers[-1]))).year + 1,
    )
    try:
        calendar = holidays.country_holidays(country, years=years)
    except (NotImplementedError, KeyError, AttributeError, TypeError):
        raise ConfigError(
            "country", country, "an ISO country code known to the holidays package, e.g. 'GB'"
        ) from None
    return np.array(sorted((d - epoch).days for d in calendar), dtype=np.int64)


def _weather(cal: _Calendar, rng: np.random.Generator) -> np.ndarray:
    """Temperature (°C) per region and step, shape (len(REGIONS), T)."""
    n_days = int(cal.day[-1]) + 1
    # Day-to-day anomalies: an AR(1) shared by all regions plus a regional one.
    phi, sd = 0.75, 2.5
    shocks = rng.normal(0.0, sd * np.sqrt(1 - phi**2), (1 + len(REGIONS), n_days + 2))
    anomaly = np.empty_like(shocks)
    anomaly[:, 0] = rng.normal(0.0, sd, 1 + len(REGIONS))
    for k in range(1, n_days + 2):
        anomaly[:, k] = phi * anomaly[:, k - 1] + shocks[:, k]
    regional = 0.8 * anomaly[:1] + 0.6 * anomaly[1:]
    centres = np.arange(-1, n_days + 1) + 0.5
    mean, half_range, daily_range = (_CLIMATE[:, j : j + 1] for j in range(3))
    temp = mean - half_range * cal.cold
    # Wider daily swings in summer, warmest at 15:00.
    temp = temp + 0.5 * daily_range * (1 - 0.3 * cal.cold) * np.cos(2 * np.pi * (cal.hour - 15.0) / 24.0)
    for r in range(len(REGIONS)):
        temp[r] += np.interp(cal.frac_day, centres, regional[r])
    temp += rng.normal(0.0, 0.3, temp.shape)
    return temp


# -- the signal ------------------------------------------------------------------------


def _bump(hour: np.ndarray, centre: np.ndarray, width: np.ndarray | float) -> np.ndarray:
    """A Gaussian bump on the 24-hour circle."""
    d = (hour - centre + 12.0) % 24.0 - 12.0
    return np.exp(-0.5 * (d / width) ** 2)


def _window(hour: np.ndarray, start: np.ndarray | float, end: np.ndarray | float, soft: float) -> np.ndarray:
    """About 1 between ``start`` and ``end`` o'clock, 0 outside, with soft edges."""
    return 1.0 / ((1.0 + np.exp(-(hour - start) / soft)) * (1.0 + np.exp(-(end - hour) / soft)))


def _household(p: dict[str, np.ndarray], hour: np.ndarray, daytype: np.ndarray) -> np.ndarray:
    off = (daytype > 0).astype(float)  # weekends and holidays
    col = lambda name: p[name][:, None]  # noqa: E731
    return (
        col("base")
        + col("m_amp") * _bump(hour, col("m_peak") + 1.5 * off, 1.0 + 0.8 * off)
        + col("e_amp") * _bump(hour, col("e_peak"), 2.0)
        + col("day_amp") * (1.0 + 1.5 * off) * _window(hour, 9.0, 17.0, 1.5)
    )


def _business(p: dict[str, np.ndarray], hour: np.ndarray, daytype: np.ndarray) -> np.ndarray:
    open_share = np.where(daytype == 0, 1.0, np.where(daytype == 1, p["sat_open"][:, None], 0.03))
    return p["base"][:, None] + open_share * _window(hour, p["open"][:, None], p["close"][:, None], 0.5)


def _profile(
    p: dict[str, np.ndarray], business: np.ndarray, hour: np.ndarray, daytype: np.ndarray
) -> np.ndarray:
    out = np.empty((len(business), len(hour)))
    for kind, rows in ((_business, business), (_household, ~business)):
        if rows.any():
            out[rows] = kind({k: v[rows] for k, v in p.items()}, hour, daytype)
    return out


def _signal(
    m: _Meters, cal: _Calendar, region_temp: np.ndarray, rng: np.random.Generator, group: int
) -> tuple[np.ndarray, np.ndarray]:
    """Load and temperature, shape (n, T // group): means over ``group`` inner steps."""
    n, t_inner = len(m.ids), len(cal.hour)
    n_days = int(cal.day[-1]) + 1
    y = np.empty((n, t_inner // group))
    temp = np.empty_like(y)

    # The profile depends only on the time of day and the kind of day: evaluate it once
    # per meter on (3 day types x distinct times of day) and gather it per step.
    slot_hours, slot = np.unique(np.round(cal.hour, 6), return_inverse=True)
    n_slots = len(slot_hours)
    table = _profile(m.params, m.business, np.tile(slot_hours, 3), np.repeat([0, 1, 2], n_slots))
    # Scale each profile to a weekday mean of `level` (the slots split the day evenly).
    table *= (m.level / table[:, :n_slots].mean(axis=1))[:, None]
    column = cal.daytype[cal.day] * n_slots + slot.ravel()

    day_sigma = m.params["day_sigma"][:, None]
    day_factor = np.exp(day_sigma * rng.standard_normal((n, n_days)) - 0.5 * day_sigma**2)
    rows_per_chunk = max(1, _CHUNK_CELLS // t_inner)
    for lo in range(0, n, rows_per_chunk):
        sl = slice(lo, min(n, lo + rows_per_chunk))
        p = {k: v[sl, None] for k, v in m.params.items()}
        t = region_temp[m.region[sl]]
        t += m.site_temp_offset[m.site[sl], None]
        if group == 1:
            t = np.round(t, 1, out=t)
        load = table[sl][:, column]
        load *= 1.0 + p["light"] * cal.dark
        weather = np.logaddexp(0.0, _HEATING_BASE_C - t)
        weather *= p["heat"]
        weather += 1.0
        cooled = np.flatnonzero(p["cool"][:, 0] > 0)
        if len(cooled):
            weather[cooled] += p["cool"][cooled] * np.logaddexp(0.0, t[cooled] - _COOLING_BASE_C)
        load *= weather
        load *= day_factor[sl][:, cal.day]
        noise = rng.standard_normal(load.shape)
        noise *= p["sigma"]
        noise -= 0.5 * p["sigma"] ** 2
        load *= np.exp(noise, out=noise)
        if group > 1:
            load = load.reshape(load.shape[0], -1, group).mean(axis=2)
            t = np.round(t.reshape(t.shape[0], -1, group).mean(axis=2), 1)
        y[sl] = load
        temp[sl] = t
    return y, temp


# -- faults ----------------------------------------------------------------------------


def _expected(kind: str, row: np.ndarray, daily: bool) -> str:
    """The cleaning outcome of a fault with the default settings: :data:`FAULTS`, except a
    dead meter (all 0.0) in daily data, which ``cleaning.all_zero: auto`` keeps."""
    if kind == "constant" and daily and not row.any():
        return C.OK
    return FAULTS[kind]


def _faults(
    y: np.ndarray, n_faulty: int, rng: np.random.Generator, steps_per_day: int, step: pd.Timedelta
) -> tuple[list[tuple[int, str]], dict[int, tuple[np.ndarray, np.ndarray]]]:
    """Deal one fault to each of ``n_faulty`` random series, kinds round-robin, editing ``y``.

    Returns the ``(series index, kind)`` pairs in the order dealt, and the new rows of the
    series whose rows were dropped or duplicated (series index -> ``(steps, values)``).
    """
    if not n_faulty:
        return [], {}
    chosen = rng.choice(len(y), size=n_faulty, replace=False)
    kinds = list(FAULTS)
    fault_rows = [(int(i), kinds[k % len(kinds)]) for k, i in enumerate(chosen)]
    changed: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for i, kind in fault_rows:
        rows = _inject(kind, y[i], rng, steps_per_day, step)
        if rows is not None:
            changed[i] = rows
    return fault_rows, changed


def _inject(
    kind: str, row: np.ndarray, rng: np.random.Generator, steps_per_day: int, step: pd.Timedelta
) -> tuple[np.ndarray, np.ndarray] | None:
    """Apply one fault to one series' values ``row`` (edited in place).

    Returns ``(steps, values)`` when the fault changes which rows the series has (rows
    dropped or duplicated), else None.
    """
    n = len(row)
    if kind in ("gaps", "long_gap", "too_short"):
        keep = np.ones(n, dtype=bool)
        if kind == "gaps" and n >= 3:
            keep[1:-1] = rng.random(n - 2) >= rng.uniform(0.01, 0.03)
            for _ in range(int(rng.integers(2, 5))):
                hours = rng.uniform(3.0, 12.0)
                length = min(n - 2, max(1, int(round(hours * 3600 / step.total_seconds()))))
                s = int(rng.integers(1, n - length))
                keep[s : s + length] = False
        elif kind == "long_gap" and n >= 4:
            length = min(n - 2, int(round(rng.uniform(0.35, 0.5) * n)))
            s = int(rng.integers(1, n - length))
            keep[s : s + length] = False
        elif kind == "too_short":
            keep[: max(0, n - max(1, steps_per_day // 2))] = False
        steps = np.flatnonzero(keep)
        return steps, row[steps]
    if kind == "duplicates":
        k = min(n, max(1, int(round(rng.uniform(0.01, 0.03) * n))))
        at = np.sort(rng.choice(n, size=k, replace=False))
        copies = np.ones(n, dtype=np.int64)
        copies[at] = 2
        steps = np.repeat(np.arange(n), copies)
        values = row[steps]
        # The repeated row comes right after the original, with a conflicting value.
        factor = np.where(rng.random(k) < 0.5, rng.uniform(0.5, 0.9, k), rng.uniform(1.1, 1.5, k))
        values[np.cumsum(copies)[at] - 1] = row[at] * factor
        return steps, values
    if kind == "outliers":
        k = min(n, int(rng.integers(3, 7)))
        at = rng.choice(n, size=k, replace=False)
        row[at] = np.median(row) * rng.uniform(10.0, 50.0, k)
    elif kind == "negative":
        length = max(1, int(round(0.05 * n)))
        s = int(rng.integers(0, n - length + 1))
        row[s : s + length] = -np.abs(row[s : s + length])
    elif kind == "constant":
        row[:] = 0.0 if rng.random() < 0.5 else round(float(np.median(row)), 2)
    elif kind == "all_nan":
        row[:] = np.nan
    else:  # pragma: no cover - FAULTS and this function are kept in step
        raise AssertionError(kind)
    return None


# -- assembly ------------------------------------------------------------------------


def _assemble(
    m: _Meters,
    grid: np.ndarray,
    y: np.ndarray,
    temp: np.ndarray,
    changed: dict[int, tuple[np.ndarray, np.ndarray]],
) -> pd.DataFrame:
    """The long table, rows in series then time order; ``changed`` gives the rows of
    series whose rows were dropped or duplicated (series index -> (steps, values))."""
    n, n_steps = y.shape
    counts = np.full(n, n_steps, dtype=np.int64)
    if not changed:
        y_col, temp_col, ts_col = y.ravel(), temp.ravel(), np.tile(grid, n)
    else:
        # One pass per column: untouched runs of series are copied whole.
        ys, temps, tss = [], [], []
        prev = 0
        for i in sorted(changed):
            if prev < i:
                ys.append(y[prev:i].ravel())
                temps.append(temp[prev:i].ravel())
                tss.append(np.tile(grid, i - prev))
            steps, values = changed[i]
            ys.append(values)
            temps.append(temp[i, steps])
            tss.append(grid[steps])
            counts[i] = len(steps)
            prev = i + 1
        if prev < n:
            ys.append(y[prev:].ravel())
            temps.append(temp[prev:].ravel())
            tss.append(np.tile(grid, n - prev))
        y_col, temp_col, ts_col = np.concatenate(ys), np.concatenate(temps), np.concatenate(tss)
    return pd.DataFrame(
        {
            C.SERIES_ID: np.repeat(m.ids, counts),
            C.TS: ts_col,
            C.Y: y_col,
            "temperature": temp_col,
            "site": np.repeat(m.site_names[m.site], counts),
            "region": np.repeat(m.region_names[m.region], counts),
        },
        copy=False,
    )


# -- weather forecasts (covariates) -------------------------------------------------------
def weather_table(
    readings: pd.DataFrame,
    horizon: int = 48,
    issue_every: int = 24,
    error_sd: float = 0.35,
    seed: int = 0,
    name: str = "temperature",
) -> pd.DataFrame:
    """A covariate table (:data:`forecasting.contract.COVARIATES`) for the regions of
    generated ``readings``: each region's observed temperature (the mean over its meters,
    ``issued_at = ts``) and a forecast issued every ``issue_every`` steps at ``T`` for
    ``T+1..T+horizon`` whose error is a random walk, so it grows with the lead time (its
    standard deviation ``error_sd * sqrt(lead)`` °C)."""
    rng = np.random.default_rng(seed)
    frame = readings[[C.TS, "region", "temperature"]].dropna()
    obs = frame.groupby(["region", C.TS], sort=True)["temperature"].mean().reset_index()
    obs[C.TS] = (
        pd.DatetimeIndex(obs[C.TS]).tz_localize(None) if getattr(obs[C.TS].dtype, "tz", None) else obs[C.TS]
    )
    parts = [
        pd.DataFrame(
            {
                "name": name,
                "key": obs["region"],
                C.TS: obs[C.TS],
                "issued_at": obs[C.TS],
                "value": obs["temperature"],
            }
        )
    ]
    for region, rows in obs.groupby("region", sort=True):
        ts = rows[C.TS].to_numpy(dtype="datetime64[us]")
        temp = rows["temperature"].to_numpy(dtype=float)
        for start in range(0, len(ts) - 1, issue_every):
            lead = np.arange(1, min(horizon, len(ts) - 1 - start) + 1)
            error = np.cumsum(rng.normal(0.0, error_sd, len(lead)))
            parts.append(
                pd.DataFrame(
                    {
                        "name": name,
                        "key": region,
                        C.TS: ts[start + lead],
                        "issued_at": ts[start],
                        "value": temp[start + lead] + error,
                    }
                )
            )
    out = pd.concat(parts, ignore_index=True)
    out[C.TS] = out[C.TS].astype("datetime64[us]")
    out["issued_at"] = out["issued_at"].astype("datetime64[us]")
    return out.sort_values(["name", "key", C.TS, "issued_at"], kind="mergesort", ignore_index=True)
