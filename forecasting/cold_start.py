"""Cold start: forecasts for meters too short for per-series models (pure pandas/numpy).

A series with fewer observed readings than ``cleaning.min_length`` but at least
``cold_start.min_length`` (default one day of steps, at least 2) is not quarantined
(:mod:`forecasting.cleaning`); training forecasts it with the *profile* of similar
meters scaled to its own level (:class:`forecasting.models.cold_profile.ColdProfile`),
status ``cold_start`` and model ``cold_profile:<source>``. Once it has
``cleaning.min_length`` readings it is an ordinary series again (it graduates to
per-series models on the next training).

Profiles (built once per training run, before the per-series step):

1. Each *established* meter (at least ``cleaning.min_length`` observed readings) gives
   its last ``cold_start.history_days`` days: each observed reading over the meter's mean
   over that window (meters whose mean is not positive give nothing), at its phase of
   the season (the hour of the week for hourly data: :func:`period_for`).
2. Those normalised values are counted, per source (its ``site``, its ``region``, and
   the ``fleet``), phase and bin (:data:`BIN_WIDTH` wide up to :data:`MAX_NORM`, larger
   ones in the last bin), with the number of meters per source: :func:`reference_counts`
   gives the counts of a batch (or of one series: the Spark engine runs it per series)
   and :class:`ProfileCounts` sums them. Memory is bounded by sources x phases x bins,
   whatever the number of meters: the counts are made batch by batch and summed.
3. A source's profile (:func:`profile_of`) is, per phase, the median of its counts
   (the shape) and the quantiles ``(1 -+ level/100) / 2`` (the intervals). A phase no
   meter covered takes the counts of the same time of day over the season, else of the
   whole season.

Each cold-start series takes the profile of its site when that site has at least
``cold_start.min_meters`` established meters, else of its region (same rule), else of
the fleet (:func:`choose`); with no established meter at all, its own readings (a flat
profile at its mean, intervals from their spread: ``cold_profile:own``). The chosen
profile travels to the series as JSON in :data:`COLD_COLUMN` on its first row
(:func:`payload_rows`), as global models' results do.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa

from forecasting.backtest import check_forecast
from forecasting.cleaning import cold_start_min
from forecasting.contract import COLD_START, SERIES_ID, TS, Y
from forecasting.frequency import is_calendar, seasonalities_for
from forecasting.models import AdjustedForecaster, load_fitted
from forecasting.models.cold_profile import NAME, ColdProfile, phases, profile_params, steps_per_day
from forecasting.results import json_default
from forecasting.series import SeriesData

COLD_COLUMN = "_cold_profile"  # a cold-start series' profile (JSON), on its first row
SITE, REGION, FLEET, OWN, NEAREST = "site", "region", "fleet", "own", "nearest"
SOURCES = (SITE, REGION, FLEET)
MAX_NORM = 8.0  # normalised values above this many times the meter's mean share the last bin
BIN_WIDTH = 0.05
N_BINS = int(round(MAX_NORM / BIN_WIDTH))
METERS = -1  # phase and bin of the rows counting a source's meters
COUNTS = pa.schema(
    [
        ("source", pa.string()),
        ("key", pa.string()),
        ("phase", pa.int64()),
        ("bin", pa.int64()),
        ("n", pa.int64()),
    ]
)
# a cold-start series' profile on the row of its first reading (silver/series.start)
PAYLOADS = pa.schema([(SERIES_ID, pa.string()), (TS, pa.timestamp("us")), (COLD_COLUMN, pa.string())])
ATTR_COLUMNS = [SERIES_ID, "site", "region", "n_obs", "n_filled", "start"]


# -- which series -----------------------------------------------------------------------
def observed(pdf: pd.DataFrame) -> int:
    """The observed (not ``is_filled``) readings of one series' silver rows."""
    if "is_filled" not in pdf.columns:
        return int(len(pdf))
    return int((~pdf["is_filled"].fillna(False).astype(bool)).sum())


def is_cold(n_observed: int, config: Any) -> bool:
    """Whether a series with ``n_observed`` readings is forecast by cold start."""
    return bool(config.cold_start.enabled) and n_observed < config.cleaning.min_length


def period_for(freq: str, config: Any) -> int:
    """The season of the profiles, in steps: the longest of the frequency's seasons that
    ``cold_start.history_days`` cover (the week for hourly data), else the shortest that
    they do, else 1 (a calendar frequency: a flat profile)."""
    if not freq or is_calendar(freq):
        return 1
    window = config.cold_start.history_days * steps_per_day(freq)
    fits = [s for s in seasonalities_for(freq) if s <= window]
    return max(fits) if fits else 1


# -- the counts ---------------------------------------------------------------------------
def reference_counts(rows: pd.DataFrame, config: Any) -> pd.DataFrame:
    """The :data:`COUNTS` rows of the established meters among ``rows`` (silver rows with
    the series' ``site`` and ``region``; any number of whole series)."""
    freq = str(config.freq)
    period = period_for(freq, config)
    frame = rows[[SERIES_ID, TS, Y, "site", "region"]].copy()
    frame["_obs"] = ~rows["is_filled"].fillna(False).astype(bool) if "is_filled" in rows else True
    frame[TS] = pd.to_datetime(frame[TS]).astype("datetime64[us]")
    n_obs = frame.groupby(SERIES_ID)["_obs"].transform("sum")
    frame = frame[(n_obs >= config.cleaning.min_length).to_numpy()]
    last = frame.groupby(SERIES_ID)[TS].transform("max")
    frame = frame[(frame[TS] > last - pd.Timedelta(days=config.cold_start.history_days)) & frame["_obs"]]
    level = frame.groupby(SERIES_ID)[Y].transform("mean")
    frame = frame[(level > 0).to_numpy() & np.isfinite(level.to_numpy())]
    if frame.empty:
        return COUNTS.empty_table().to_pandas()
    norm = frame[Y].to_numpy(dtype=float) / level.loc[frame.index].to_numpy(dtype=float)
    frame = frame.assign(
        phase=phases(frame[TS].to_numpy(), freq, period),
        bin=np.clip(np.floor(np.nan_to_num(norm) / BIN_WIDTH), 0, N_BINS - 1).astype(np.int64),
        fleet="",
    )
    parts = []
    for source, column in ((SITE, "site"), (REGION, "region"), (FLEET, "fleet")):
        known = frame[frame[column].notna()]
        cells = known.groupby([column, "phase", "bin"]).size().rename("n").reset_index()
        meters = known.groupby(column)[SERIES_ID].nunique().rename("n").reset_index()
        meters = meters.assign(phase=METERS, bin=METERS)
        parts += [cells.rename(columns={column: "key"}).assign(source=source)]
        parts += [meters.rename(columns={column: "key"}).assign(source=source)]
    out = pd.concat(parts, ignore_index=True)
    return out.astype({"key": str, "phase": "int64", "bin": "int64", "n": "int64"})[COUNTS.names]


@dataclass
class ProfileCounts:
    """The :data:`COUNTS` of many batches summed: per (source, key) a phases x bins array
    of counts and its number of meters (bounded by the sources, not the meters)."""

    period: int
    cells: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    meters: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, counts: pd.DataFrame) -> None:
        for (source, key), part in counts.groupby(["source", "key"], sort=False):
            name = (str(source), str(key))
            is_meters = (part["phase"] == METERS).to_numpy()
            self.meters[name] = self.meters.get(name, 0) + int(part.loc[is_meters, "n"].sum())
            cells = part[~is_meters]
            grid = self.cells.setdefault(name, np.zeros((self.period, N_BINS), dtype=np.int64))
            np.add.at(
                grid,
                (cells["phase"].to_numpy(dtype=np.int64), cells["bin"].to_numpy(dtype=np.int64)),
                cells["n"].to_numpy(dtype=np.int64),
            )

    def profiles(self, freq: str, levels) -> dict[tuple[str, str], dict[str, Any]]:
        """Every source's profile (:func:`profile_of`)."""
        day = steps_per_day(freq) if not is_calendar(freq) else self.period
        return {
            name: profile_of(grid, name, self.meters.get(name, 0), day, levels)
            for name, grid in self.cells.items()
            if grid.sum() > 0
        }


def _quantiles(grid: np.ndarray, q: float) -> np.ndarray:
    """Per row of a phases x bins histogram, its ``q`` quantile (linear within the bin)."""
    cum = np.cumsum(grid, axis=1)
    total = cum[:, -1:]
    target = q * total
    b = np.argmax(cum >= target, axis=1)
    below = np.where(b > 0, cum[np.arange(len(b)), b - 1], 0)
    inside = grid[np.arange(len(b)), b]
    frac = np.where(inside > 0, (target[:, 0] - below) / np.maximum(inside, 1), 0.5)
    return (b + np.clip(frac, 0.0, 1.0)) * BIN_WIDTH


def _filled(grid: np.ndarray, day: int) -> np.ndarray:
    """``grid`` with each phase no meter covered given the counts of the same time of day
    over the season (``day``: steps per day), else those of the whole season."""
    empty = grid.sum(axis=1) == 0
    if not empty.any():
        return grid
    out = grid.copy()
    period = len(grid)
    daily = day if day < period and period % day == 0 else period
    by_time = grid.reshape(period // daily, daily, -1).sum(axis=0) if daily < period else None
    whole = grid.sum(axis=0)
    for p in np.flatnonzero(empty):
        same = by_time[p % daily] if by_time is not None else whole
        out[p] = same if same.sum() > 0 else whole
    return out


def profile_of(grid: np.ndarray, name: tuple[str, str], n_meters: int, day: int, levels) -> dict[str, Any]:
    """A source's profile: the median (``shape``) and interval quantiles (``lo``, ``hi``
    per level) of each phase, from its counts."""
    grid = _filled(grid, day)

    def rounded(values: np.ndarray) -> list[float]:
        return [round(float(v), 5) for v in values]

    lo = {str(lv): rounded(_quantiles(grid, (1 - lv / 100) / 2)) for lv in levels}
    hi = {str(lv): rounded(_quantiles(grid, 1 - (1 - lv / 100) / 2)) for lv in levels}
    return {
        "source": name[0],
        "key": name[1],
        "n_meters": int(n_meters),
        "period": int(len(grid)),
        "shape": rounded(_quantiles(grid, 0.5)),
        "lo": lo,
        "hi": hi,
    }


# -- each cold-start series' profile ----------------------------------------------------
def _known(key: Any) -> bool:
    return key is not None and not (isinstance(key, float) and math.isnan(key))


def choose(
    site: Any,
    region: Any,
    profiles: Mapping[tuple[str, str], dict],
    min_meters: int,
    readings: tuple[np.ndarray, np.ndarray, str] | None = None,
) -> dict | None:
    """The profile of the site when it has ``min_meters`` meters; else, given the meter's
    ``readings`` (``y, ts, freq``: ``cold_start.match: nearest``), the profile nearest to
    them (:func:`nearest`) among every site's, region's (with ``min_meters``) and the
    fleet's; else the region's (same rule), else the fleet's; ``None`` without any."""
    own = profiles.get((SITE, str(site))) if _known(site) else None
    if own is not None and own["n_meters"] >= min_meters:
        return own
    if readings is not None:
        pool = {k: p for k, p in profiles.items() if p["n_meters"] >= min_meters or k[0] == FLEET}
        if pool:
            return nearest(*readings, pool)
    found = profiles.get((REGION, str(region))) if _known(region) else None
    if found is not None and found["n_meters"] >= min_meters:
        return found
    return profiles.get((FLEET, ""))


def nearest(y: np.ndarray, ts: np.ndarray, freq: str, pool: Mapping[tuple[str, str], dict]) -> dict:
    """The profile of ``pool`` whose shape, scaled to the readings' level as
    :class:`ColdProfile` scales it, has the least mean absolute error on them (ties: the
    first by source and key); recorded as source ``nearest``, key ``<source>:<key>``."""
    best, score = None, math.inf
    for name in sorted(pool):
        prof = pool[name]
        shape = np.asarray(prof["shape"], dtype=float)[phases(ts, freq, int(prof["period"]))]
        weight = float(shape.sum())
        level = float(y.sum()) / weight if weight > 0 else float(y.mean())
        err = float(np.mean(np.abs(y - level * shape)))
        if err < score:
            best, score = name, err
    return {**pool[best], "source": NEAREST, "key": f"{best[0]}:{best[1]}" if best[1] else best[0]}


def payload_rows(
    attrs: pd.DataFrame,
    profiles: Mapping[tuple[str, str], dict],
    config: Any,
    rows: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """:data:`PAYLOADS` rows of the cold-start series among ``attrs`` (silver/series rows:
    ``series_id, site, region, n_obs, n_filled, start``): the profile each one takes
    (:func:`choose`; ``rows``: their silver rows, for ``cold_start.match: nearest``), as
    JSON (``{"source": "own"}`` when there is none), on the row of its first reading."""
    n = attrs["n_obs"].fillna(0).astype("int64") - attrs["n_filled"].fillna(0).astype("int64")
    short = attrs[[is_cold(int(k), config) for k in n]]
    by_series = _readings_of(rows, short, config)
    texts = []
    for sid, site, region in zip(short[SERIES_ID], short["site"], short["region"]):
        found = choose(site, region, profiles, config.cold_start.min_meters, by_series.get(str(sid)))
        texts.append(json.dumps(found if found is not None else {"source": OWN}))
    return pd.DataFrame(
        {
            SERIES_ID: short[SERIES_ID].astype(str).to_numpy(),
            TS: pd.to_datetime(short["start"]).astype("datetime64[us]").to_numpy(),
            COLD_COLUMN: pd.Series(texts, dtype=object).to_numpy(),
        }
    )


def _readings_of(rows: pd.DataFrame | None, short: pd.DataFrame, config: Any) -> dict[str, tuple]:
    """Per short series, its observed readings ``(y, ts, freq)`` for :func:`nearest`
    (none unless ``cold_start.match`` is ``nearest`` and ``rows`` are given)."""
    if rows is None or config.cold_start.match != "nearest" or short.empty:
        return {}
    mine = rows[rows[SERIES_ID].isin(short[SERIES_ID])]
    if "is_filled" in mine.columns:
        mine = mine[~mine["is_filled"].fillna(False).astype(bool)]
    out = {}
    for sid, part in mine.sort_values(TS).groupby(SERIES_ID):
        ts = pd.to_datetime(part[TS]).to_numpy().astype("datetime64[us]")
        out[str(sid)] = (part[Y].to_numpy(dtype=float), ts, str(config.freq))
    return out


def attach(rows: pd.DataFrame, payloads: pd.DataFrame) -> pd.DataFrame:
    """``rows`` (silver rows) with :data:`COLD_COLUMN`: each cold-start series' payload on
    the row of its first reading, null elsewhere."""
    if payloads.empty:
        return rows.assign(**{COLD_COLUMN: pd.Series([None] * len(rows), index=rows.index, dtype=object)})
    keys = payloads.astype({TS: "datetime64[us]"})
    left = rows.astype({TS: "datetime64[us]"}) if rows[TS].dtype != "datetime64[us]" else rows
    return left.merge(keys, on=[SERIES_ID, TS], how="left")


# -- the series' result -----------------------------------------------------------------
def own_payload(y: np.ndarray, levels) -> dict[str, Any]:
    """A flat profile from a series' own readings (no established meter to learn from)."""
    mean = float(np.mean(y))
    ratio = y / mean if mean > 0 else np.ones_like(y)
    tails = {lv: (1 - lv / 100) / 2 for lv in levels}
    return {
        "source": OWN,
        "key": "",
        "n_meters": 0,
        "period": 1,
        "shape": [1.0],
        "lo": {str(lv): [float(np.quantile(ratio, t))] for lv, t in tails.items()},
        "hi": {str(lv): [float(np.quantile(ratio, 1 - t))] for lv, t in tails.items()},
    }


def carried(pdf: pd.DataFrame) -> bool:
    """Whether a series' rows carry a cold-start payload (:func:`payload_rows`): training
    decided it is forecast by cold start."""
    return COLD_COLUMN in pdf.columns and bool(pdf[COLD_COLUMN].notna().any())


def payload_of(pdf: pd.DataFrame) -> dict[str, Any] | None:
    """The profile carried by a series' rows (``None``: none, or ``own``)."""
    if COLD_COLUMN not in pdf.columns:
        return None
    values = pdf[COLD_COLUMN].dropna()
    found = json.loads(values.iloc[0]) if len(values) else None
    return found if found and found.get("source") != OWN else None


def cold_fields(data: SeriesData, pdf: pd.DataFrame, config: Any) -> dict[str, Any]:
    """The TRAIN_RESULT fields of a cold-start series: its profile (:func:`payload_of`, else
    :func:`own_payload`) fitted to its readings, checked to load back and forecast."""
    levels = list(config.levels)
    payload = payload_of(pdf) or own_payload(data.y, levels)
    model: Any = ColdProfile(
        season_length=data.season_length,
        seasonalities=data.seasonalities,
        freq=data.freq,
        **profile_params(payload),
    ).fit(data.y, None, data.ts)
    if config.bounds is not None:
        model = AdjustedForecaster(model, {}, config.bounds, 0)
    text = json.dumps(model.to_dict(), default=json_default)
    check_forecast(load_fitted(text).predict(config.horizon, level=levels), config.horizon, levels, who=NAME)
    source, key = payload["source"], payload["key"]
    whose = f"the profile of {source} {key}" if key else f"the {source} profile"
    if source == NEAREST:
        whose = f"the profile of {key.replace(':', ' ')}, the nearest in shape to its readings"
    return {
        "status": COLD_START,
        "reason": (
            f"{observed(pdf)} readings < cleaning.min_length={config.cleaning.min_length}: "
            + (
                f"{whose} ({payload['n_meters']} meters)"
                if source != OWN
                else "no established meter: its own mean level"
            )
        ),
        "model": f"{NAME}:{source}",
        "metric": str(config.backtest.metric),
        "metric_value": float("nan"),
        "backtest_json": "[]",
        "candidates_json": "{}",
        "model_json": text,
        "tuned_json": "{}",
    }


def profiles_for(counts: ProfileCounts, config: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """The profiles of summed counts at ``config``'s frequency and interval levels."""
    return counts.profiles(str(config.freq), list(config.levels))


__all__ = [
    "COLD_COLUMN",
    "COUNTS",
    "PAYLOADS",
    "ProfileCounts",
    "attach",
    "choose",
    "cold_fields",
    "cold_start_min",
    "is_cold",
    "payload_rows",
    "period_for",
    "reference_counts",
]
