"""Covariates: declared regressors beyond the readings, their alignment and the leakage rule.

A covariate (``covariates:`` in the config, :class:`forecasting.config.settings.Covariate`)
has a ``name``, a ``kind`` (``future_known``: calendar, holidays, a weather forecast;
``past_only``: known only up to now), a ``key`` (``series``, ``site``, ``region``, or
``none`` for one global value) and a ``fallback`` for a future step no issue covers
(``persistence``: the value one week earlier, else the last known one;
``climatology``: the mean of its known values at the same hour of the week;
``zero``).

Its values live in ``silver/covariates`` (:data:`forecasting.contract.COVARIATES`): one
row per (name, key, target time ``ts``, ``issued_at``). An observed value is issued at its
own time; a forecast issued at ``T`` for ``T+1..T+48`` keeps ``issued_at = T``.

The leakage rule (:func:`known_at`): for a cutoff ``c``, the value of target time ``t``
is the one of the latest issue with ``issued_at <= c``. A row's history value (the
regressor a model is fitted on) is the value known at the row's own time.
``past_only`` covariates enter the models lagged by the horizon (the value ``horizon``
steps earlier), so all of a forecast's steps are known at its cutoff.

Models see the covariates as the columns ``cov_<name>`` (and ``cov_holiday``, 1.0 on a
public holiday of ``country``/``holiday_region`` when ``holidays`` is on), sorted by name
(:func:`exog_columns`); with no such column the readings' ``temperature`` stays the
one regressor. The forecast issues a backtest needs travel with each series' first row
in :data:`ISSUES_COLUMN` (JSON), and the fallbacks used at forecast time are recorded in
gold/forecasts ``covariate_fallback`` (JSON ``{name: fallback}``, empty when none).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import holidays
import numpy as np
import pandas as pd

from forecasting.contract import SERIES_ID, TS
from forecasting.errors import ConfigError, DataContractError
from forecasting.frequency import freq_of

KINDS = ("future_known", "past_only")
KEYS = ("series", "site", "region", "none")
FALLBACKS = ("persistence", "climatology", "zero")
PREFIX = "cov_"
HOLIDAY = PREFIX + "holiday"
ISSUES_COLUMN = "covariate_issues"
FALLBACK_COLUMN = "covariate_fallback"
NAME, KEY, ISSUED_AT, VALUE = "name", "key", "issued_at", "value"
WEEK = np.timedelta64(7, "D")


def column(name: str) -> str:
    """The frame column of covariate ``name``."""
    return PREFIX + name


def exog_columns(columns: Iterable[str]) -> list[str]:
    """The regressor columns of a frame, in model order: its ``cov_*`` columns sorted,
    else ``temperature`` when it has one (the regressor before covariates existed)."""
    cols = list(columns)
    cov = sorted(c for c in cols if c.startswith(PREFIX))
    return cov if cov else (["temperature"] if "temperature" in cols else [])


def enabled(config: Any) -> bool:
    """Whether the config declares covariates or holiday features."""
    return bool(config.covariates or config.holidays)


# -- the leakage rule -------------------------------------------------------------------
def known_at(issues: pd.DataFrame, cutoff: Any) -> pd.Series:
    """Per target time, the value of the latest issue with ``issued_at <= cutoff``
    (``issues``: ``ts, issued_at, value`` of one covariate and key), indexed by ``ts``."""
    seen = issues[issues[ISSUED_AT] <= pd.Timestamp(cutoff)]
    last = seen.sort_values([TS, ISSUED_AT], kind="mergesort").drop_duplicates(TS, keep="last")
    return pd.Series(last[VALUE].to_numpy(dtype=float), index=pd.DatetimeIndex(last[TS]))


def as_of_own_time(issues: pd.DataFrame, targets: np.ndarray) -> np.ndarray:
    """Each target's value as known at the target time itself (an observation, or the
    latest forecast issued no later); NaN where none was."""
    own = issues[issues[ISSUED_AT] <= issues[TS]]
    last = own.sort_values([TS, ISSUED_AT], kind="mergesort").drop_duplicates(TS, keep="last")
    values = pd.Series(last[VALUE].to_numpy(dtype=float), index=pd.DatetimeIndex(last[TS]))
    return values.reindex(pd.DatetimeIndex(targets)).to_numpy(dtype=float)


def fallback_values(hist_ts: np.ndarray, hist: np.ndarray, targets: np.ndarray, fallback: str) -> np.ndarray:
    """Values for ``targets`` from the known history (``hist_ts``, ``hist``; NaN = unknown)
    by ``fallback``: ``persistence`` (the value one week earlier, else the last known
    one), ``climatology`` (the mean at the same hour of the week, else the mean) or ``zero``."""
    targets = np.asarray(targets, dtype="datetime64[us]")
    ok = np.isfinite(hist)
    if fallback == "zero" or not ok.any():
        return np.zeros(len(targets))
    known = pd.Series(hist[ok], index=pd.DatetimeIndex(np.asarray(hist_ts)[ok]))
    if fallback == "climatology":
        idx = known.index
        by_hour = known.groupby(idx.dayofweek * 24 + idx.hour).mean()
        t = pd.DatetimeIndex(targets)
        out = by_hour.reindex(t.dayofweek * 24 + t.hour).to_numpy(dtype=float)
        return np.where(np.isfinite(out), out, float(known.mean()))
    out = known.reindex(pd.DatetimeIndex(targets - WEEK)).to_numpy(dtype=float)
    return np.where(np.isfinite(out), out, float(known.iloc[-1]))


def future_values(
    hist_ts: np.ndarray,
    hist: np.ndarray,
    issues: pd.DataFrame,
    cutoff: Any,
    targets: np.ndarray,
    fallback: str,
) -> tuple[np.ndarray, bool]:
    """A future-known covariate's values at ``targets`` as known at ``cutoff``
    (:func:`known_at`; never an issue after it), the steps no issue covers by
    ``fallback`` from the history up to the cutoff; and whether the fallback was used."""
    targets = np.asarray(targets, dtype="datetime64[us]")
    values = known_at(issues, cutoff).reindex(pd.DatetimeIndex(targets)).to_numpy(dtype=float)
    missing = ~np.isfinite(values)
    if missing.any():
        past = np.asarray(hist_ts, dtype="datetime64[us]") <= np.datetime64(pd.Timestamp(cutoff))
        values[missing] = fallback_values(hist_ts[past], hist[past], targets[missing], fallback)
    return values, bool(missing.any())


def fill_history(values: np.ndarray) -> np.ndarray:
    """A history column with its gaps filled from the past (the last known value; before
    the first one, the first)."""
    s = pd.Series(values, dtype=float)
    if not s.notna().any():
        return np.zeros(len(s))
    return s.ffill().bfill().to_numpy(dtype=float)


def lagged(values: np.ndarray, lag: int) -> np.ndarray:
    """A past-only covariate as a regressor: the value ``lag`` steps earlier (the first
    value before that), so every step of a ``lag``-step forecast is known at its cutoff."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0 or lag <= 0:
        return values
    return np.concatenate([np.full(min(lag, len(values)), values[0]), values[:-lag]])[: len(values)]


# -- holidays ---------------------------------------------------------------------------
def holiday_flags(ts: np.ndarray, country: str, region: str | None = None) -> np.ndarray:
    """1.0 where ``ts`` falls on a public holiday of ``country`` (and ``region``, a
    subdivision the ``holidays`` package knows), else 0.0."""
    days = pd.DatetimeIndex(np.asarray(ts, dtype="datetime64[us]"))
    if len(days) == 0:
        return np.zeros(0)
    years = range(int(days.year.min()), int(days.year.max()) + 1)
    try:
        calendar = holidays.country_holidays(country, subdiv=region, years=years)
    except (NotImplementedError, KeyError, AttributeError, TypeError):
        raise ConfigError(
            "holiday_region" if region else "country",
            region or country,
            "a country (and subdivision) known to the holidays package, e.g. GB and ENG",
        ) from None
    wanted = np.array(sorted(np.datetime64(d, "D") for d in calendar), dtype="datetime64[D]")
    return np.isin(days.to_numpy().astype("datetime64[D]"), wanted).astype(float)


# -- one series' regressors ---------------------------------------------------------------
@dataclass
class Spec:
    """What alignment needs of a declared covariate."""

    name: str
    kind: str
    key: str
    fallback: str


def specs(config: Any) -> dict[str, Spec]:
    """The declared covariates by column name."""
    return {column(c.name): Spec(c.name, c.kind, c.key, c.fallback) for c in config.covariates}


def issues_payload(frames: Mapping[str, pd.DataFrame]) -> str:
    """The forecast issues of one series (covariate column -> ``ts, issued_at, value``)
    as the JSON of :data:`ISSUES_COLUMN`."""
    out = {}
    for col, f in frames.items():
        if len(f):
            out[col] = {
                TS: f[TS].astype("datetime64[us]").astype("int64").tolist(),
                ISSUED_AT: f[ISSUED_AT].astype("datetime64[us]").astype("int64").tolist(),
                VALUE: f[VALUE].astype(float).tolist(),
            }
    return json.dumps(out)


def parse_payload(text: Any) -> dict[str, pd.DataFrame]:
    """:func:`issues_payload` read back."""
    if not isinstance(text, str) or not text:
        return {}
    return {
        col: pd.DataFrame(
            {
                TS: np.asarray(d[TS], dtype="int64").astype("datetime64[us]"),
                ISSUED_AT: np.asarray(d[ISSUED_AT], dtype="int64").astype("datetime64[us]"),
                VALUE: np.asarray(d[VALUE], dtype=float),
            }
        )
        for col, d in json.loads(text).items()
    }


@dataclass
class CovariateView:
    """One series' regressors with what a backtest window may know of their future.

    ``columns``: the regressor columns (of ``X``); ``raw``: each future-known
    covariate's history values (known at their own time, before any fill); ``issues``:
    its forecast issues; ``specs``: the declared covariates by column."""

    ts: np.ndarray
    columns: list[str]
    raw: dict[str, np.ndarray]
    issues: dict[str, pd.DataFrame]
    specs: dict[str, Spec]

    def future_X(self, X: np.ndarray, cut: int, h: int) -> np.ndarray:
        """The regressors of steps ``cut..cut+h-1`` as known at the cutoff (the time of row
        ``cut - 1``): a future-known covariate from the issues up to then and its
        fallback (never its later observations); holidays and lagged past-only
        covariates as they are (known at the cutoff)."""
        out = np.array(X[cut : cut + h], dtype=float)
        cutoff = self.ts[cut - 1]
        targets = self.ts[cut : cut + h]
        for j, col in enumerate(self.columns):
            spec = self.specs.get(col)
            if spec is None or spec.kind != "future_known":
                continue
            issues = self.issues.get(col, _NO_ISSUES)
            out[:, j], _ = future_values(
                self.ts[:cut], self.raw[col][:cut], issues, cutoff, targets, spec.fallback
            )
        return out


_NO_ISSUES = pd.DataFrame(
    {
        TS: pd.Series([], dtype="datetime64[us]"),
        ISSUED_AT: pd.Series([], dtype="datetime64[us]"),
        VALUE: pd.Series([], dtype=float),
    }
)


def series_regressors(
    df: pd.DataFrame, config: Any, ts: np.ndarray
) -> tuple[np.ndarray | None, CovariateView | None]:
    """One series' regressor matrix (``df``: its rows sorted by time, ``ts`` their
    naive UTC times) and, when it has
    covariates, the view backtests read their future from; ``(None, None)`` when a
    regressor column is incomplete (the legacy ``temperature``) or there is none."""
    cols = exog_columns(df.columns)
    if not cols:
        return None, None
    if cols == ["temperature"]:
        temp = pd.to_numeric(df["temperature"], errors="coerce").to_numpy(dtype=float)
        return (temp.reshape(-1, 1), None) if np.all(np.isfinite(temp)) else (None, None)
    declared = specs(config)
    raw, parts = {}, []
    for col in cols:
        values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=float)
        spec = declared.get(col)
        if spec is not None:
            raw[col] = values
            values = fill_history(values)
            if spec.kind == "past_only":
                values = lagged(values, config.horizon)
        parts.append(values)
    issues = parse_payload(next(iter(df[ISSUES_COLUMN].dropna()), None)) if ISSUES_COLUMN in df else {}
    X = np.column_stack(parts)
    if not np.all(np.isfinite(X)):
        return None, None
    return X, CovariateView(ts, cols, raw, issues, declared)


# -- a batch of series -------------------------------------------------------------------
def series_keys(series: pd.DataFrame, spec_key: str) -> pd.Series:
    """Each series' key for a covariate keyed by ``spec_key`` (``series``: its id;
    ``site``/``region``: that attribute; ``none``: ``""``), indexed by series id."""
    ids = series[SERIES_ID].astype(str)
    if spec_key == "series":
        keys = ids
    elif spec_key == "none":
        keys = pd.Series("", index=series.index)
    else:
        keys = (
            series[spec_key].fillna("").astype(str)
            if spec_key in series
            else pd.Series("", index=series.index)
        )
    return pd.Series(keys.to_numpy(), index=ids.to_numpy())


def attach(
    readings: pd.DataFrame,
    series: pd.DataFrame,
    covs: pd.DataFrame,
    config: Any,
    issue_rows: int | None = None,
) -> pd.DataFrame:
    """``readings`` (silver rows of whole series) with a ``cov_<name>`` column per declared
    covariate (the value known at each row's time; NaN where none was), ``cov_holiday``
    when ``holidays`` is on, and each series' forecast issues of its last
    ``issue_rows`` rows (default: enough for every backtest window) on its first row in
    :data:`ISSUES_COLUMN`. ``series``: the series' attributes (``series_id, site,
    region``); ``covs``: the silver/covariates rows of their keys."""
    out = readings.sort_values([SERIES_ID, TS], kind="mergesort", ignore_index=True)
    if config.holidays:
        out[HOLIDAY] = holiday_flags(out[TS].to_numpy(), config.country, config.holiday_region)
    if not config.covariates:
        return out
    payload: dict[str, dict[str, pd.DataFrame]] = {}
    for spec, col, sid, idx, issues in _each_series(out, series, covs, config):
        if issues is None:
            continue
        ts = out[TS].to_numpy()[idx]
        out.loc[out.index[idx], col] = as_of_own_time(issues, ts)
        if spec.kind == "future_known":
            span = issue_rows or backtest_span(config, ts)
            start = ts[max(0, len(ts) - span)]
            ahead = issues[(issues[ISSUED_AT] < issues[TS]) & (issues[TS] > start)]
            payload.setdefault(str(sid), {})[col] = ahead[[TS, ISSUED_AT, VALUE]]
    first = ~out[SERIES_ID].duplicated()
    out[ISSUES_COLUMN] = None
    out.loc[first, ISSUES_COLUMN] = [
        issues_payload(payload.get(str(s), {})) for s in out.loc[first, SERIES_ID]
    ]
    return out


def _each_series(out: pd.DataFrame, series: pd.DataFrame, covs: pd.DataFrame, config: Any):
    """Per declared covariate (its ``cov_<name>`` column added to ``out`` as NaN) and per
    series of ``out``: ``(spec, column, series id, its row positions, the issues of its
    key)``, the issues ``None`` where its key has none."""
    for spec in specs(config).values():
        col = column(spec.name)
        out[col] = np.nan
        keys = series_keys(series, spec.key)
        mine = covs[covs[NAME] == spec.name]
        by_key = dict(tuple(mine.groupby(KEY, sort=False))) if len(mine) else {}
        for sid, idx in out.groupby(SERIES_ID, sort=False).indices.items():
            yield spec, col, sid, idx, by_key.get(keys.get(str(sid), ""))


def backtest_span(config: Any, ts: np.ndarray | None = None) -> int:
    """Rows at the end of a series (its timestamps ``ts``) that backtest (and tuning)
    windows forecast: a partial retrain may choose on more windows
    (``Config.selection_windows``)."""
    windows = config.backtest.windows
    if ts is not None and len(ts) >= 2:
        windows = config.selection_windows(config.freq or freq_of(np.sort(ts)))
    windows += config.tune.windows if config.tune.enabled else 0
    return config.horizon + config.backtest_step * windows + 1


def future(
    ends: pd.Series,
    targets: pd.DataFrame,
    series: pd.DataFrame,
    covs: pd.DataFrame,
    config: Any,
) -> pd.DataFrame:
    """``targets`` (``series_id, ts``: the future steps of the series of ``ends``, their
    cutoffs by id) with the regressor columns the models were trained on, as known at
    each series' cutoff, and :data:`FALLBACK_COLUMN`: JSON ``{name: fallback}`` of the
    future-known covariates a fallback filled for that series (``""``: none)."""
    out = targets.copy()
    if config.holidays:
        out[HOLIDAY] = holiday_flags(out[TS].to_numpy(), config.country, config.holiday_region)
    used: dict[str, dict[str, str]] = {}
    for spec, col, sid, idx, issues in _each_series(out, series, covs, config):
        values, fell = _future_of(issues, ends[sid], out[TS].to_numpy()[idx], spec, config)
        out.loc[out.index[idx], col] = values
        if fell:
            used.setdefault(str(sid), {})[spec.name] = spec.fallback
    out[FALLBACK_COLUMN] = [
        json.dumps(used[s], sort_keys=True) if s in used else "" for s in out[SERIES_ID].astype(str)
    ]
    return out


def _future_of(issues: pd.DataFrame | None, cutoff: Any, targets: np.ndarray, spec: Spec, config: Any):
    """One series' future values of one covariate, and whether a fallback filled any."""
    cutoff = np.datetime64(pd.Timestamp(cutoff), "us")
    targets = np.asarray(targets, dtype="datetime64[us]")
    if issues is None or not len(issues):
        issues = _NO_ISSUES
    hist = known_at(issues, cutoff)
    hist = hist[hist.index <= pd.Timestamp(cutoff)]
    hist_ts, hist_v = hist.index.to_numpy().astype("datetime64[us]"), hist.to_numpy(dtype=float)
    if spec.kind == "past_only":
        # the regressor of step k is the value `horizon` steps earlier: the last known ones
        if not len(hist_v):
            return np.zeros(len(targets)), True
        lag = fill_history(hist_v)[-config.horizon :]
        lag = np.concatenate([np.full(max(0, config.horizon - len(lag)), lag[0]), lag])
        return lag[: len(targets)], False
    return future_values(hist_ts, hist_v, issues, cutoff, targets, spec.fallback)


# -- checks of a covariate file -------------------------------------------------------------
def check_rows(
    frame: pd.DataFrame,
    declared: Mapping[str, Spec],
    known_keys: Mapping[str, set[str]],
    stored: pd.DataFrame | None,
    source: str,
) -> None:
    """Refuse a covariate file: an undeclared name, a key the series do not have (for
    its covariate's ``key``), a repeated (name, key, ts, issued_at) in the file or one
    already stored, or a forecast issue whose target times have a hole (a missing step
    of its horizon). Raises :class:`DataContractError` naming the value."""
    by_name = {s.name: s for s in declared.values()}
    for name in pd.unique(frame[NAME]):
        if name not in by_name:
            raise DataContractError(
                f"{source}: covariate {name!r} is not declared: declare it under covariates: in the config "
                f"(declared: {sorted(by_name) or 'none'})"
            )
    for name, part in frame.groupby(NAME, sort=True):
        spec = by_name[name]
        allowed = {""} if spec.key == "none" else known_keys.get(spec.key, set())
        bad = sorted(set(part[KEY]) - allowed)
        if bad:
            raise DataContractError(
                f"{source}: covariate {name!r} has unknown {spec.key} key {bad[0]!r}"
                + (
                    " (key none: leave key empty)"
                    if spec.key == "none"
                    else f": expected a {spec.key} of silver/series"
                )
            )
    ids = [NAME, KEY, TS, ISSUED_AT]
    dup = frame[frame.duplicated(ids, keep=False)]
    if len(dup):
        r = dup.iloc[0]
        raise DataContractError(
            f"{source}: covariate {r[NAME]!r} key {r[KEY]!r}: overlapping issues: {len(dup)} rows share ts {r[TS]} issued_at {r[ISSUED_AT]}"
        )
    if stored is not None and len(stored):
        both = frame[ids].merge(stored[ids], on=ids)
        if len(both):
            r = both.iloc[0]
            raise DataContractError(
                f"{source}: covariate {r[NAME]!r} key {r[KEY]!r}: ts {r[TS]} issued_at {r[ISSUED_AT]} overlaps "
                f"{len(both)} stored issue value(s): give a later issued_at for a revised issue"
            )
    _check_horizons(frame, source)


def _check_horizons(frame: pd.DataFrame, source: str) -> None:
    """Refuse a forecast issue whose target times skip a step of its own spacing."""
    ahead = frame[frame[ISSUED_AT] < frame[TS]]
    for (name, key, issued), part in ahead.groupby([NAME, KEY, ISSUED_AT], sort=True):
        ts = np.sort(part[TS].to_numpy().astype("datetime64[us]"))
        if len(ts) < 3:
            continue
        d = np.diff(ts)
        step = d.min()
        if np.any(d != step):
            gap = ts[int(np.argmax(d != step))] + step
            raise DataContractError(
                f"{source}: covariate {name!r} key {key!r} issued at {pd.Timestamp(issued)}: missing horizon step "
                f"{pd.Timestamp(gap)} (its targets run {pd.Timestamp(ts[0])}..{pd.Timestamp(ts[-1])} every {pd.Timedelta(step)})"
            )


def typed(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """A covariate file's rows as ``name, key, ts, issued_at, value`` (naive UTC times;
    ``issued_at`` defaults to ``ts``: an observation). Raises :class:`DataContractError`
    naming the first value of a wrong type."""
    missing = [c for c in (NAME, TS, VALUE) if c not in frame.columns]
    if missing:
        raise DataContractError(
            f"{source}: missing column(s) {missing}: expected name, key, ts, issued_at, value"
        )
    out = pd.DataFrame({NAME: frame[NAME].astype(str)})
    out[KEY] = frame[KEY].fillna("").astype(str) if KEY in frame else ""
    for col in (TS, ISSUED_AT):
        raw = frame[col] if col in frame else frame[TS]
        out[col] = _times(raw, col, source)
    v = pd.to_numeric(frame[VALUE], errors="coerce")
    bad = frame[VALUE][v.isna() & frame[VALUE].notna()]
    if len(bad) or v.isna().any():
        shown = bad.iloc[0] if len(bad) else None
        raise DataContractError(f"{source}: column value has non-numeric value {shown!r}; expected numbers")
    out[VALUE] = v.astype(float)
    return out


def _times(raw: pd.Series, col: str, source: str) -> pd.Series:
    """Naive UTC times of a column (aware ones converted); numbers and text that is not a
    time are refused, naming the value."""
    if isinstance(raw.dtype, pd.DatetimeTZDtype):
        return raw.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[us]")
    if pd.api.types.is_datetime64_any_dtype(raw):
        return raw.astype("datetime64[us]")
    if pd.api.types.is_numeric_dtype(raw) or pd.api.types.is_bool_dtype(raw):
        raise DataContractError(
            f"{source}: column {col} holds numbers ({raw.iloc[0]!r}); expected ISO 8601 times"
        )
    parsed = pd.to_datetime(raw, errors="coerce", utc=True, format="mixed")
    bad = raw[parsed.isna()]
    if len(bad):
        raise DataContractError(f"{source}: column {col} has value {bad.iloc[0]!r}; expected a timestamp")
    return parsed.dt.tz_localize(None).astype("datetime64[us]")


def keys_of(series: pd.DataFrame) -> dict[str, set[str]]:
    """The keys covariates may use: series ids, sites and regions of silver/series."""
    out = {"series": set(series[SERIES_ID].astype(str))} if SERIES_ID in series else {"series": set()}
    for attr in ("site", "region"):
        out[attr] = set(series[attr].dropna().astype(str)) if attr in series else set()
    return out


def needed_keys(series: pd.DataFrame, config: Any) -> dict[str, list[str]]:
    """Per declared covariate, the keys a batch of series (``series_id, site, region``) reads."""
    return {s.name: sorted(set(series_keys(series, s.key))) for s in specs(config).values()}


def read_filters(series: pd.DataFrame, config: Any) -> list[tuple[str, str, Any]] | None:
    """Parquet filters for the silver/covariates rows of a batch's keys (``None``: no covariates)."""
    needed = needed_keys(series, config)
    if not needed:
        return None
    keys = sorted({k for ks in needed.values() for k in ks})
    return [(NAME, "in", sorted(needed)), (KEY, "in", keys)]
