"""Synthetic retail demand: item x store daily unit sales, seeded and vectorised.

``generate_retail(n_items, n_stores, days, ...)`` returns long-format readings (the
columns of :data:`forecasting.contract.BRONZE_READINGS` without lineage, plus
``promo``), the promotions as covariate rows (the days of the readings and the
``horizon`` days after them: a known future flag), and the truth per series (its
demand pattern).

The data
--------
* Series ``ITEM-0001@STORE-01``: every item is sold in every store. The store is the
  ``site`` and each store lies in one of five regions (``north`` ... ``central``), so
  ``gold/portfolio`` adds up stores and regions.
* ``y`` is the number of units sold that day (whole numbers, as floats), ``ts`` midnight
  of the day (naive UTC). ``temperature`` is null (no weather here).
* Demand pattern per item (its ``pattern`` in :attr:`RetailGenerated.items`), with the
  shares of :data:`PATTERN_SHARES`; all the stores of an item follow it at their own level:

  ================  ===============================================================
  pattern           daily sales
  ================  ===============================================================
  ``smooth``        Poisson with a rate of 3-30 units: a sale nearly every day
  ``erratic``       sales on ~90% of days, sizes lognormal (sigma 1.0-1.3)
  ``intermittent``  sales on 10-35% of days, sizes 1 + Poisson(0.3-2)
  ``lumpy``         sales on 4-30% of days, sizes ceil(lognormal, sigma 1.1-1.5)
  ``zero``          never sold (an all-zero item: listed but not selling)
  ================  ===============================================================

  The class cleaning records (:mod:`forecasting.demand`, ADI/CV²) is computed from the
  sales themselves and mostly matches the pattern; a store that sells an item seldom
  can fall in a sparser class.
* Weekly: more sales at the weekend (Friday to Sunday, +10% to +60% per item); public
  holidays of ``country`` sell like a Saturday. Annual: a mild yearly cycle (±0-20%).
  Stores differ in size (lognormal, median 1).
* ``promo``: 1.0 on the days an item is on promotion in a store's region (spells of 3-10
  days, about one every 5-10 weeks per item and region), else 0.0. A promotion multiplies
  the rate (and the chance of a sale) by 1.5-3 for that item. Promotions are planned
  ``horizon`` days ahead: :attr:`RetailGenerated.promo` holds them in the shape of a
  covariates table (``name`` = ``promo``, ``key`` = the series id, ``ts``, ``issued_at`` =
  ``ts`` - ``horizon`` days, ``value``), for the days of the readings and the ``horizon``
  days after them, so a forecast cut at any day knows the promotions of its horizon.

``write_retail(gen, path)`` stores the readings as Parquet (without ``promo``) and, beside
them, the promotions (``<stem>_promo.parquet``, the covariate rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from forecasting import contract as C
from forecasting.generator import REGIONS, _calendar, _check, _check_start

PROMO = "promo"
SMOOTH, ERRATIC, INTERMITTENT, LUMPY, ZERO = "smooth", "erratic", "intermittent", "lumpy", "zero"
# Share of items per demand pattern (the rest of the rounding goes to smooth).
PATTERN_SHARES = {SMOOTH: 0.35, ERRATIC: 0.15, INTERMITTENT: 0.25, LUMPY: 0.2, ZERO: 0.05}
READINGS_COLUMNS = (C.SERIES_ID, C.TS, C.Y, "temperature", *C.ATTRIBUTES, PROMO)
# The promotions as covariate rows (the shape of a covariates table: name, key, target
# time, issue time, value).
COVARIATE_SCHEMA = pa.schema(
    [
        ("name", pa.string()),
        ("key", pa.string()),
        (C.TS, C.TS_TYPE),
        ("issued_at", C.TS_TYPE),
        ("value", pa.float64()),
    ]
)


@dataclass
class RetailGenerated:
    """Output of :func:`generate_retail`.

    Attributes:
        readings: one row per series and day, sorted by ``series_id`` then ``ts``:
            ``series_id``, ``ts``, ``y``, ``temperature`` (null), ``site`` (the store),
            ``region``, ``promo`` (1.0 on promotion days; not written to the file).
        promo: the promotions as covariate rows (:data:`COVARIATE_SCHEMA`), per series
            and day of the readings and of the ``horizon`` days after them, each issued
            ``horizon`` days before its day.
        items: one row per series: ``series_id``, ``item``, ``store``, ``pattern``.
    """

    readings: pd.DataFrame
    promo: pd.DataFrame
    items: pd.DataFrame


def generate_retail(
    n_items: int = 200,
    n_stores: int = 10,
    days: int = 730,
    seed: int = 0,
    start: str = "2023-01-02",
    horizon: int = 28,
    country: str = "GB",
) -> RetailGenerated:
    """Synthetic item x store daily sales, deterministic for a given seed.

    Args:
        n_items: items (each sold in every store); patterns dealt by :data:`PATTERN_SHARES`.
        n_stores: stores (``site``), each in one of the five regions.
        days: days of sales per series.
        seed: same seed, same output.
        start: the first day.
        horizon: days promotions are planned ahead (and given after the last day).
        country: ISO code for public holidays (the ``holidays`` package).

    Raises:
        ConfigError: an argument out of range, an unknown country.
    """
    for key, value, low in (("n_items", n_items, 1), ("n_stores", n_stores, 1), ("days", days, 1)):
        _check(value, key, isinstance(value, (int, np.integer)) and value >= low, f"an integer >= {low}")
    _check(horizon, "horizon", isinstance(horizon, (int, np.integer)) and horizon >= 0, "an integer >= 0")
    _check(seed, "seed", isinstance(seed, (int, np.integer)) and seed >= 0, "an integer >= 0")
    t0 = np.datetime64(pd.Timestamp(_check_start(start)).normalize().value, "ns")
    rng_items, rng_promo, rng_sales = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )

    n = n_items * n_stores
    item = np.repeat(np.arange(n_items), n_stores)
    store = np.tile(np.arange(n_stores), n_items)
    store_region = rng_items.permutation(np.arange(n_stores) % len(REGIONS))
    patterns = _deal_patterns(n_items, rng_items)
    params = _item_params(patterns, rng_items)
    size = np.exp(rng_items.normal(0.0, 0.35, n_stores))

    total = days + horizon
    grid = t0 + np.arange(total) * np.timedelta64(1, "D")
    promo = _promotions(n_items, len(REGIONS), total, rng_promo)[item, store_region[store]]
    rate_factor = _calendar_factor(grid, params, country)[item] * size[store, None]
    y = _sales(patterns[item], {k: v[item] for k, v in params.items()}, rate_factor, promo, rng_sales)

    width = max(4, len(str(n_items)))
    sw = max(2, len(str(n_stores)))
    stores = np.array([f"STORE-{s + 1:0{sw}d}" for s in range(n_stores)], dtype=object)
    ids = np.array([f"ITEM-{i + 1:0{width}d}@{stores[s]}" for i, s in zip(item, store)], dtype=object)
    order = np.argsort(ids, kind="stable")
    readings = pd.DataFrame(
        {
            C.SERIES_ID: np.repeat(ids[order], days),
            C.TS: np.tile(grid[:days], n),
            C.Y: y[order, :days].ravel(),
            "temperature": np.full(n * days, np.nan),
            "site": np.repeat(stores[store[order]], days),
            "region": np.repeat(np.array(REGIONS, dtype=object)[store_region[store[order]]], days),
            PROMO: promo[order, :days].ravel().astype(float),
        }
    )
    plan = pd.DataFrame(
        {
            "name": PROMO,
            "key": np.repeat(ids[order], total),
            C.TS: np.tile(grid, n),
            "issued_at": np.tile(grid - np.timedelta64(horizon, "D"), n),
            "value": promo[order].ravel().astype(float),
        }
    )
    items = pd.DataFrame(
        {
            C.SERIES_ID: ids[order],
            "item": [f"ITEM-{i + 1:0{width}d}" for i in item[order]],
            "store": stores[store[order]],
            "pattern": patterns[item[order]],
        }
    )
    return RetailGenerated(readings=readings, promo=plan, items=items)


def write_retail(gen: RetailGenerated, path: str | Path) -> tuple[Path, Path]:
    """The readings (without ``promo``) as one Parquet file at ``path`` and the
    promotions' covariate rows beside it (``<stem>_promo.parquet``); returns both paths."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    schema = pa.schema(
        [
            (C.SERIES_ID, pa.string()),
            (C.TS, C.TS_TYPE),
            (C.Y, pa.float64()),
            ("temperature", pa.float64()),
            ("site", pa.string()),
            ("region", pa.string()),
        ]
    )
    table = pa.Table.from_pandas(gen.readings[schema.names], schema=schema, preserve_index=False)
    pq.write_table(table.replace_schema_metadata(None), path)
    promo_path = path.with_name(f"{path.stem}_promo.parquet")
    promo = pa.Table.from_pandas(gen.promo, schema=COVARIATE_SCHEMA, preserve_index=False)
    pq.write_table(promo.replace_schema_metadata(None), promo_path)
    return path, promo_path


# -- items, calendar, promotions, sales ------------------------------------------------


def _deal_patterns(n_items: int, rng: np.random.Generator) -> np.ndarray:
    """One pattern per item: round(share x n_items) of each (smooth takes the rest),
    shuffled; at least one zero item once there are 20 items."""
    counts = {k: int(round(v * n_items)) for k, v in PATTERN_SHARES.items() if k != SMOOTH}
    while sum(counts.values()) > n_items:  # tiny n: drop the rarest first
        rare = min((k for k in counts if counts[k]), key=lambda k: PATTERN_SHARES[k])
        counts[rare] -= 1
    dealt = [p for p, c in counts.items() for _ in range(c)]
    dealt += [SMOOTH] * (n_items - len(dealt))
    return rng.permutation(np.array(dealt, dtype=object))


def _item_params(patterns: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    n = len(patterns)
    u = lambda lo, hi: rng.uniform(lo, hi, n)  # noqa: E731
    is_ = {p: patterns == p for p in PATTERN_SHARES}
    occurrence = np.select(
        [is_[SMOOTH], is_[ERRATIC], is_[INTERMITTENT], is_[LUMPY]],
        [np.ones(n), u(0.85, 0.95), u(0.1, 0.35), u(0.04, 0.3)],
        0.0,
    )
    return {
        "rate": np.exp(u(np.log(3.0), np.log(30.0))),  # smooth: Poisson rate
        "occurrence": occurrence,
        "sigma": np.where(is_[ERRATIC], u(1.0, 1.3), u(1.1, 1.5)),  # erratic, lumpy sizes
        "size_mean": np.where(is_[ERRATIC], u(1.0, 2.5), u(0.5, 1.5)),  # log-scale centre
        "extra": u(0.3, 2.0),  # intermittent: sizes 1 + Poisson(extra)
        "weekend": u(0.1, 0.6),
        "annual": u(0.0, 0.2),
        "phase": u(0.0, 365.0),
        "uplift": u(1.5, 3.0),
    }


def _calendar_factor(grid: np.ndarray, params: dict[str, np.ndarray], country: str) -> np.ndarray:
    """(n_items, T): the weekly, holiday and yearly multiplier of each item's rate."""
    cal = _calendar(grid, country)
    ns = grid.astype("datetime64[ns]").astype(np.int64)
    epoch_day = ns // (86_400 * 10**9)
    weekday = (epoch_day + 3) % 7  # Monday = 0
    weekend = (weekday >= 4) | (cal.daytype[cal.day] > 0)  # Friday to Sunday, holidays
    yearly = np.sin(2 * np.pi * (epoch_day[None, :] - params["phase"][:, None]) / 365.25)
    return (1.0 + params["weekend"][:, None] * weekend[None, :]) * (1.0 + params["annual"][:, None] * yearly)


def _promotions(n_items: int, n_regions: int, total: int, rng: np.random.Generator) -> np.ndarray:
    """(n_items, n_regions, T) bool: promotion spells of 3-10 days, one starting every
    5-10 weeks on average per item and region."""
    out = np.zeros((n_items, n_regions, total), dtype=bool)
    every = rng.uniform(35.0, 70.0, (n_items, n_regions))
    starts = rng.random((n_items, n_regions, total)) < 1.0 / every[..., None]
    lengths = rng.integers(3, 11, (n_items, n_regions, total))
    for i, r, t in zip(*np.nonzero(starts)):
        out[i, r, t : t + lengths[i, r, t]] = True
    return out


def _sales(
    patterns: np.ndarray,
    p: dict[str, np.ndarray],
    factor: np.ndarray,
    promo: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """(n, T) units sold per series and day."""
    n, t = factor.shape
    boost = np.where(promo, p["uplift"][:, None], 1.0)
    col = lambda name: p[name][:, None]  # noqa: E731
    y = np.zeros((n, t))
    smooth = patterns == SMOOTH
    y[smooth] = rng.poisson(col("rate")[smooth] * factor[smooth] * boost[smooth])
    # the others: a sale happens with the occurrence probability (raised by the calendar
    # and promotions, at most 0.98), then a size by pattern
    chance = np.minimum(0.98, col("occurrence") * factor * boost)
    sells = rng.random((n, t)) < chance
    normal = rng.standard_normal((n, t))
    lognormal = np.exp(col("size_mean") + col("sigma") * normal)
    erratic = patterns == ERRATIC
    y[erratic] = np.where(sells[erratic], np.maximum(1.0, np.round(lognormal[erratic])), 0.0)
    inter = patterns == INTERMITTENT
    y[inter] = np.where(sells[inter], 1.0 + rng.poisson(col("extra")[inter] * boost[inter]), 0.0)
    lumpy = patterns == LUMPY
    y[lumpy] = np.where(sells[lumpy], np.ceil(lognormal[lumpy]), 0.0)
    return y  # ZERO rows stay 0
