"""The promotion gate's like-for-like comparison: challenger and champion scored on the
same actuals, series by series (pure pandas and numpy; the engines run
:func:`compare_series`, :mod:`registry.promotion` decides on the result).

The window of a series is the champion's own forecast window: from the champion's
cutoff for that series for ``horizon`` steps, clipped to the actuals in silver now. The
cutoff is that of the champion's latest ``gold/forecasts`` rows whose cutoff the actuals
have passed: on the night after it was trained, its training end (the ``end`` of its
results); after nights when it was kept and forecast again from newer data, the latest
of those forecasts. Without Gold rows it is its training end (:func:`champion_cutoffs`).
On it:

* the champion is scored on its own Gold forecasts for that window: they were made
  before those actuals existed, so they are truly held out. When they are missing
  (``mmf forecast`` did not run, or the rows were removed), its chosen model (model and
  parameters from its ``model_json``) is refit on the data up to its cutoff and forecast
  (``champion_source`` says which);
* the challenger's chosen model (model and parameters from its ``model_json``; each
  member of an ensemble) is refit on the same data, up to the same cutoff, and forecast
  the same steps. A challenger that carried the champion's model over (a partial
  ``retrain.policy``: the same chosen model and backtest, :func:`_same_fits`) is that
  model: the series is left out as a tie (no refit), so the decision turns on the
  series fitted again. That refit never sees the window, but the challenger's *choice* of
  model and its tuned parameters did: its backtest windows end at its own, newer, data
  end, and usually cover the gate window. ``challenger_saw_window`` records it per
  series, so the comparison is held out for the champion and only in its fit for the
  challenger.

Both are scored with ``backtest.metric`` (:func:`forecasting.metrics.evaluate`: MASE
scaled by the in-sample seasonal naive error up to the cutoff) on the steps where both
forecasts and the actuals exist. A future regressor (``temperature``) is the value one
week earlier, the rule ``mmf forecast`` uses. Global models are not refit per series:
such a series is left out with the reason.

The driver builds one plan row per challenger series (:func:`plan`): a JSON payload
for the series that can be compared, a reason for those that cannot (new series, no
actuals after the cutoff yet); :func:`attach` puts the payloads on the series' first
silver rows and the engine maps :func:`compare_series` over the series (one extra fit
per series for the challenger, and one for the champion only without its Gold rows).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from forecasting.choice import ENSEMBLE, short_reason
from forecasting.config import Config
from forecasting.contract import COLD_START, FALLBACK, GATE_SERIES, OK, SERIES_ID, TS
from forecasting.frequency import future_timestamps
from forecasting.jsontext import loads
from forecasting.metrics import evaluate, score
from forecasting.models import EnsembleForecaster, Forecaster, get_model
from forecasting.models.base import one_thread
from forecasting.models.calibrated import with_adjustment
from forecasting.models.cold_profile import NAME as COLD_MODEL
from forecasting.models.global_models import is_global
from forecasting.series import SeriesData, prepare, series_id_of
from forecasting.timeout import Alarm, run_seeded

PLAN_COLUMN = "_gate_plan"  # the series' comparison payload (JSON), on its first row
SKIP = "skip"  # in a payload: the series is left out, for this reason (attach_all)
USABLE = (OK, FALLBACK)  # per-series models: cold_start series are not compared (either side)
COLD_CHAMPION = "the champion forecast it by cold start (a profile of similar meters): not like for like"
NO_CHAMPION_MODEL = "the champion has no model for this series"
NO_ACTUALS = "no actuals after the champion's cutoff yet"
NOTHING_TO_SCORE = "no step with actuals and both forecasts"
CARRIED_CHAMPION = "carried over from the champion: the same model, a tie"
GOLD, REFIT = "gold", "refit"


class NotComparable(Exception):
    """A series the comparison leaves out, with the reason."""


@dataclass
class Comparison:
    """The comparison of one challenger with one champion: a GATE_SERIES row per
    challenger series."""

    champion_version: str
    series: pd.DataFrame


# -- the driver's plan -----------------------------------------------------------------
def plan(
    challenger: pd.DataFrame,
    champion: pd.DataFrame | None,
    forecasts: pd.DataFrame,
    config: Config,
) -> pd.DataFrame:
    """One row per challenger series with a model: ``series_id``, ``window_start`` (the
    first step after the champion's cutoff, when ``config.freq`` is set) and either the
    :data:`PLAN_COLUMN` payload (JSON) or the ``reason`` it cannot be compared.

    Args:
        challenger: the challenger's TRAIN_RESULT rows.
        champion: the champion's TRAIN_RESULT rows (its run's results.parquet), or
            ``None`` when they cannot be read (its cutoffs then come from its forecasts
            only, and it cannot be refit).
        forecasts: the champion version's ``gold/forecasts`` rows.
        config: the settings (``freq``).
    """
    chal = challenger[challenger["status"].isin(USABLE)].set_index(SERIES_ID)
    champ = champion[champion["status"].isin(USABLE)].set_index(SERIES_ID) if champion is not None else None
    cold = _cold_in_champion(champion, forecasts)
    cutoffs = champion_cutoffs(chal["end"], champ["end"] if champ is not None else None, forecasts)
    same = _same_fits(chal, champ)
    firsts: dict[Any, pd.Timestamp | None] = {}  # a fleet shares a few cutoffs: each first step once
    rows, compared = [], []
    for sid, end, cutoff, carried in zip(chal.index, chal["end"], cutoffs.reindex(chal.index), same):
        missing = cutoff is None or pd.isna(cutoff)
        if not missing and cutoff not in firsts:
            firsts[cutoff] = _first_step(cutoff, config)
        entry: dict[str, Any] = {
            SERIES_ID: sid,
            "window_start": None if missing else firsts[cutoff],
            PLAN_COLUMN: None,
            "reason": "",
        }
        if sid in cold:
            entry["reason"] = COLD_CHAMPION
        elif missing:
            entry["reason"] = NO_CHAMPION_MODEL
        elif pd.isna(end) or pd.Timestamp(end) <= pd.Timestamp(cutoff):
            entry["reason"] = NO_ACTUALS
        elif carried:
            entry["reason"] = CARRIED_CHAMPION
        else:
            compared.append((entry, chal.loc[sid], cutoff))
        rows.append(entry)
    # the champion's own forecasts only of the series compared (a partial retrain carries most)
    own = _own_forecasts(forecasts, cutoffs[cutoffs.index.isin([e[SERIES_ID] for e, _, _ in compared])])
    for entry, row, cutoff in compared:
        sid = entry[SERIES_ID]
        payload = {
            "cutoff": pd.Timestamp(cutoff).isoformat(),
            "challenger": row["model_json"],
            "champion": champ.at[sid, "model_json"] if champ is not None and sid in champ.index else "",
            "champion_forecast": own.get(sid),
            "selection_cutoff": _earliest_cutoff(row["backtest_json"]),
        }
        entry[PLAN_COLUMN] = json.dumps(payload, allow_nan=True)
    return pd.DataFrame(rows, columns=[SERIES_ID, "window_start", PLAN_COLUMN, "reason"])


def _same_fits(chal: pd.DataFrame, champ: pd.DataFrame | None) -> pd.Series:
    """Per challenger series (``chal``, by series id), whether its model is the
    champion's (``champ``), carried over (``retrain.policy`` other than full): the same
    chosen model with the same backtest, which only a carried row keeps (a series fitted
    again is backtested on newer data)."""
    if champ is None or not len(chal):
        return pd.Series(False, index=chal.index)
    theirs = champ[~champ.index.duplicated()].reindex(chal.index)
    mine = chal["backtest_json"]
    kept = mine.notna() & (mine.astype(object) != "")
    return (kept & (mine == theirs["backtest_json"]) & (chal["model"] == theirs["model"])).astype(bool)


def _cold_in_champion(champion: pd.DataFrame | None, forecasts: pd.DataFrame) -> set[str]:
    """The series the champion forecast by cold start: its rows say so (status
    ``cold_start``), or its Gold forecasts do (a ``cold_profile`` model)."""
    cold: set[str] = set()
    if champion is not None and len(champion):
        cold |= set(champion.loc[champion["status"] == COLD_START, SERIES_ID].astype(str))
    if "model" in forecasts.columns and len(forecasts):
        is_cold = forecasts["model"].astype(str).str.startswith(COLD_MODEL)
        cold |= set(forecasts.loc[is_cold.to_numpy(), SERIES_ID].astype(str))
    return cold


def _first_step(cutoff: Any, config: Config) -> pd.Timestamp | None:
    """The first step after ``cutoff`` (``None`` without a cutoff or a set frequency)."""
    if cutoff is None or pd.isna(cutoff) or not config.freq:
        return None
    return pd.Timestamp(future_timestamps(pd.Timestamp(cutoff).to_datetime64(), config.freq, [1])[0])


def champion_cutoffs(ends: pd.Series, train_ends: pd.Series | None, forecasts: pd.DataFrame) -> pd.Series:
    """Per series, the champion's cutoff the window starts after: the latest cutoff of
    its Gold forecasts that the actuals have passed (``ends``: the challenger's data end
    per series), else its training end (``train_ends``, by series; ``None`` when its
    results cannot be read), else its earliest Gold cutoff.

    The latest passed Gold cutoff is the champion's training end on the night after it
    was trained; when the champion was kept and forecast again from newer data, it is
    the most recent window that only the challenger's choice of model saw.
    """
    train_ends = pd.to_datetime(train_ends) if train_ends is not None else pd.Series(dtype="datetime64[ns]")
    if forecasts.empty:
        return train_ends
    fc = forecasts[[SERIES_ID, "cutoff"]].drop_duplicates()
    fc = fc.assign(cutoff=pd.to_datetime(fc["cutoff"]), end=pd.to_datetime(fc[SERIES_ID].map(ends)))
    passed = fc[fc["cutoff"] < fc["end"]].groupby(SERIES_ID)["cutoff"].max()
    earliest = fc.groupby(SERIES_ID)["cutoff"].min()
    return passed.combine_first(train_ends).combine_first(earliest)


def _own_forecasts(forecasts: pd.DataFrame, cutoffs: pd.Series) -> dict[str, dict[str, list]]:
    """Per series, the champion's Gold forecast made at its own cutoff: ``{ts: [iso],
    mean, lo-<lv>, hi-<lv>: [...]}``."""
    if forecasts.empty or cutoffs.empty:
        return {}
    fc = forecasts[forecasts[SERIES_ID].isin(cutoffs.index)]
    fc = fc[pd.to_datetime(fc["cutoff"]).to_numpy() == pd.to_datetime(fc[SERIES_ID].map(cutoffs)).to_numpy()]
    names = {"yhat": "mean"}
    for col in fc.columns:
        if col.startswith("yhat_lower_"):
            names[col] = "lo-" + col[len("yhat_lower_") :]
        elif col.startswith("yhat_upper_"):
            names[col] = "hi-" + col[len("yhat_upper_") :]
    out = {}
    for sid, rows in fc.sort_values(TS).groupby(SERIES_ID, sort=False):
        entry = {"ts": [pd.Timestamp(t).isoformat() for t in rows[TS]]}
        entry.update({key: rows[col].astype(float).tolist() for col, key in names.items()})
        out[str(sid)] = entry
    return out


def _earliest_cutoff(backtest_json: str | None) -> str | None:
    """The earliest backtest cutoff of any candidate: the challenger's choice saw every
    actual after it."""
    cutoffs = [w.get("cutoff") for w in loads(backtest_json or "[]") if w.get("cutoff")]
    return min(cutoffs, key=pd.Timestamp) if cutoffs else None


def attach(readings: pd.DataFrame, planned: pd.DataFrame) -> pd.DataFrame:
    """The silver rows of the planned series (those with a payload), the payload on each
    series' first row (:data:`PLAN_COLUMN`, null elsewhere)."""
    todo = planned[planned[PLAN_COLUMN].notna()].set_index(SERIES_ID)[PLAN_COLUMN]
    out = readings[readings[SERIES_ID].isin(todo.index)].copy()
    column = pd.Series(pd.NA, index=out.index, dtype="string")
    if len(out):
        first = ~out[SERIES_ID].astype(str).duplicated()
        column.loc[first] = todo.reindex(out.loc[first, SERIES_ID].astype(str)).to_numpy()
    out[PLAN_COLUMN] = column
    return out


def attach_all(readings: pd.DataFrame, planned: pd.DataFrame) -> pd.DataFrame:
    """:func:`attach`, and for each series planned with a reason only (it cannot be
    compared) its first silver row with a payload carrying that reason: the engine's
    rows then hold every planned series, and a series left out costs no fit (a batch
    with none compared needs no engine: :func:`left_out`)."""
    out = attach(readings, planned)
    skipped = planned[planned[PLAN_COLUMN].isna() & (planned["reason"] != "")]
    if not len(skipped):
        return out
    first = readings[readings[SERIES_ID].isin(set(skipped[SERIES_ID]))].drop_duplicates(SERIES_ID).copy()
    payloads = {
        sid: json.dumps(
            {SKIP: reason, "window_start": None if pd.isna(start) else pd.Timestamp(start).isoformat()}
        )
        for sid, reason, start in zip(skipped[SERIES_ID], skipped["reason"], skipped["window_start"])
    }
    first[PLAN_COLUMN] = first[SERIES_ID].astype(str).map(payloads).astype("string")
    return pd.concat([out, first], ignore_index=True)


def left_out(planned: pd.DataFrame) -> pd.DataFrame:
    """The GATE_SERIES rows of the series planned with a reason only (no payload): what
    :func:`compare_series` gives them, made without a per-series call (a batch whose
    series are all left out, as a partial retrain's carried ones are, needs no engine)."""
    skipped = planned[planned[PLAN_COLUMN].isna() & (planned["reason"] != "")]
    rows = [
        _row(sid, r, start)
        for sid, r, start in zip(skipped[SERIES_ID], skipped["reason"], skipped["window_start"])
    ]
    return gate_frame(rows)


# -- the per-series function -----------------------------------------------------------
def compare_series(pdf: pd.DataFrame, config: Config) -> pd.DataFrame:
    """Score the challenger and the champion of one series on the champion's window.

    Args:
        pdf: the series' silver rows, the :data:`PLAN_COLUMN` payload on one of them.
        config: the settings (``horizon``, ``levels``, ``backtest.metric``, ``seed``,
            ``model_timeout_s``, ``tune``).

    Returns:
        One GATE_SERIES row; a series that cannot be compared gets its reason.
    """
    sid = series_id_of(pdf)
    skipped = _skipped(pdf)
    if skipped is not None:
        return gate_frame([_row(sid, skipped.get(SKIP, ""), skipped.get("window_start"))])
    try:
        with one_thread(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence noise of the refits
            row = _compare(pdf, config)
    except NotComparable as exc:
        row = _row(sid, str(exc))
    except (Exception, Alarm) as exc:  # noqa: BLE001 - a failure is data: the series is left out
        row = _row(sid, short_reason(exc))
    return gate_frame([row])


def failed_comparison(series_id: str, reason: str, config: Config) -> pd.DataFrame:
    """The engines' ``on_error`` rows: the series is left out with ``reason``."""
    return gate_frame([_row(series_id, reason)])


def gate_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """``rows`` with exactly the GATE_SERIES columns and dtypes."""
    return pa.Table.from_pylist(rows, schema=GATE_SERIES).to_pandas()


def _row(series_id: str, reason: str, window_start: Any = None) -> dict[str, Any]:
    return {
        SERIES_ID: series_id,
        "window_start": None
        if window_start is None or pd.isna(window_start)
        else pd.Timestamp(window_start).to_pydatetime(),
        "window_end": None,
        "n_points": 0,
        "challenger_metric": None,
        "champion_metric": None,
        "champion_source": "",
        "challenger_saw_window": False,
        "reason": reason,
    }


def _skipped(pdf: pd.DataFrame) -> dict[str, Any] | None:
    """The payload of a series planned as left out (:func:`attach_all`), else ``None``."""
    values = pdf[PLAN_COLUMN].dropna() if PLAN_COLUMN in pdf.columns else pd.Series(dtype=object)
    if values.empty:
        return None
    payload = loads(values.iloc[0])
    return payload if SKIP in payload else None


def _payload(pdf: pd.DataFrame) -> dict[str, Any]:
    values = pdf[PLAN_COLUMN].dropna() if PLAN_COLUMN in pdf.columns else pd.Series(dtype=object)
    if values.empty:
        raise NotComparable("no comparison plan came with this series")
    return loads(values.iloc[0])


def _compare(pdf: pd.DataFrame, config: Config) -> dict[str, Any]:
    payload = _payload(pdf)
    data = prepare(pdf.drop(columns=[PLAN_COLUMN]), config)
    cutoff = np.datetime64(pd.Timestamp(payload["cutoff"]), "us")
    h, levels = config.horizon, list(config.levels)
    steps = future_timestamps(cutoff, data.freq, np.arange(1, h + 1))
    y = _actuals(data, steps)
    row = _row(data.series_id, "")
    row["window_start"] = pd.Timestamp(steps[0]).to_pydatetime()
    if not np.isfinite(y).any():
        raise NotComparable(NO_ACTUALS)
    history = data.head(int(np.searchsorted(data.ts, cutoff, side="right")))
    if len(history.y) < 2:
        raise NotComparable("fewer than 2 readings up to the champion's cutoff")
    challenger = refit(payload["challenger"], history, h, levels, config)
    if payload.get("champion_forecast"):
        champion, row["champion_source"] = _aligned(payload["champion_forecast"], steps), GOLD
    elif payload.get("champion"):
        champion, row["champion_source"] = refit(payload["champion"], history, h, levels, config), REFIT
    else:
        raise NotComparable("the champion has neither Gold forecasts for this window nor a model to refit")
    common = np.isfinite(y) & np.isfinite(challenger["mean"]) & np.isfinite(champion["mean"])
    if not common.any():
        raise NotComparable(NOTHING_TO_SCORE)
    metric, m = config.backtest.metric, history.season_length
    for side, forecast in (("challenger", challenger), ("champion", champion)):
        part = {k: np.asarray(v)[common] for k, v in forecast.items()}
        row[f"{side}_metric"] = score(evaluate(y[common], part, history.y, m, levels), metric)
    end = steps[common][-1]
    row.update(window_end=pd.Timestamp(end).to_pydatetime(), n_points=int(common.sum()))
    row["challenger_saw_window"] = _saw(data, payload.get("selection_cutoff"), end, config)
    return row


def _actuals(data: SeriesData, steps: np.ndarray) -> np.ndarray:
    """``y`` at each of ``steps`` (``nan`` where silver has no reading)."""
    pos = np.searchsorted(data.ts, steps)
    found = pos < len(data.ts)
    found[found] = data.ts[pos[found]] == steps[found]
    y = np.full(len(steps), np.nan)
    y[found] = data.y[pos[found]]
    return y


def _aligned(forecast: dict[str, list], steps: np.ndarray) -> dict[str, np.ndarray]:
    """A Gold forecast on ``steps`` (``nan`` at the steps it does not hold)."""
    ts = pd.to_datetime(forecast["ts"]).to_numpy().astype("datetime64[us]")
    index = pd.Index(ts)
    pos = index.get_indexer(steps)
    out = {}
    for key, values in forecast.items():
        if key == "ts":
            continue
        arr = np.asarray(values, dtype=float)
        out[key] = np.where(pos >= 0, arr[np.clip(pos, 0, None)] if len(arr) else np.nan, np.nan)
    return out


def _saw(data: SeriesData, selection_cutoff: str | None, window_end: np.datetime64, config: Config) -> bool:
    """Whether the challenger's model choice (its backtest windows, and the tuning
    windows before them) saw actuals of the window up to ``window_end``."""
    if not selection_cutoff:
        return False
    first = int(np.searchsorted(data.ts, np.datetime64(pd.Timestamp(selection_cutoff), "us"), side="right"))
    if config.tune.enabled:
        first -= config.tune.windows * config.backtest_step
    first = min(max(first, 1), len(data.ts))
    return bool(window_end > data.ts[first - 1])


# -- refits -----------------------------------------------------------------------------
def refit(
    model_json: str, history: SeriesData, h: int, levels: list[int], config: Config
) -> dict[str, np.ndarray]:
    """The model ``model_json`` describes (its model and parameters, not its fitted
    state), fitted again on ``history`` and forecast ``h`` steps after it.

    Raises:
        NotComparable: a global model (not refit per series) or an empty ``model_json``.
    """
    if not model_json:
        raise NotComparable("no model to refit")
    spec = loads(model_json)
    if spec.get("model") == ENSEMBLE:
        model: Any = EnsembleForecaster(
            [_fit_spec(m, history, config) for m in spec["members"]], spec["method"]
        )
    else:
        model = _fit_spec(spec, history, config)
    model = with_adjustment(model, spec)  # the calibration and bounds training gave it
    X = future_exog(history, h) if model.supports_exog else None
    forecast = model.predict(h, X=X, level=levels)
    return {k: np.asarray(v, dtype=float) for k, v in forecast.items()}


def _fit_spec(spec: dict[str, Any], history: SeriesData, config: Config) -> Forecaster:
    name = spec["model"]
    if is_global(name):
        raise NotComparable(f"{name} is a global model: not refit per series")
    model = get_model(
        name,
        season_length=spec["season_length"],
        seasonalities=spec["seasonalities"],
        freq=spec["freq"],
        **spec.get("params", {}),
    )
    fit = partial(model.fit, history.y, history.exog(name), history.ts)
    return run_seeded(fit, config.seed, config.model_timeout_s)


def future_exog(history: SeriesData, h: int) -> np.ndarray | None:
    """The regressor for the ``h`` steps after ``history``: its value one week earlier
    (the last known week repeated beyond it), as ``mmf forecast`` does; the last value
    when the history is shorter than a week or the step does not divide one."""
    if history.X is None:
        return None
    n = len(history.X)
    week = _steps_per_week(history.freq)
    idx = np.arange(n, n + h)
    if week and week <= n:
        while (idx >= n).any():
            idx = np.where(idx >= n, idx - week, idx)
    else:
        idx = np.full(h, n - 1)
    return history.X[idx]


def _steps_per_week(freq: str) -> int | None:
    off = pd.tseries.frequencies.to_offset(freq)
    if not isinstance(off, pd.offsets.Tick):
        return None
    ratio = pd.Timedelta("7D") / pd.Timedelta(off)
    return int(ratio) if float(ratio).is_integer() else None


__all__ = [
    "PLAN_COLUMN",
    "Comparison",
    "NotComparable",
    "attach",
    "compare_series",
    "failed_comparison",
    "future_exog",
    "gate_frame",
    "left_out",
    "plan",
    "refit",
]
