"""``mmf forecast`` and the portfolio aggregate: the next horizon of every clean series.

Every series of silver/series (quarantined series are not there) gets ``horizon`` steps
after its latest silver timestamp, its cutoff, whatever the promotion gate decided:

* a series the champion (``models:/<name>@champion``) holds is forecast by the
  champion: as trained (``fit = trained``) when the champion was trained on this very
  silver version and the series' training end is its silver end; otherwise the
  champion's chosen model and parameters are first fitted again on the series' current
  silver history (``fit = refit``; :mod:`forecasting.refit`, mapped over the series by
  the engine like training), so a champion the gate kept forecasts from the new data;
* a series the champion does not hold (new since it was trained, or failed in its run)
  is forecast the same way by the newest registered version that holds it (in practice
  the challenger the gate did not promote), found through gold/selection;
* a series no version holds, or whose refit or forecast fails, gets no rows: the report
  lists it with the reason (:attr:`ForecastReport.missing`), and ``mmf nightly`` and
  ``mmf forecast`` exit non-zero.

Rows carry ``model_version`` and ``run_id`` of the version that forecast,
``silver_version`` (the silver/readings version of the data) and ``fit``. A delivery
is one write, replace-where on each row's (model_version, cutoff, series): the same
forecast written again replaces and never duplicates, and forecasts from earlier
cutoffs stay (to be scored against the actuals). The write records the Delta
application transaction ``mmf-forecast`` = :func:`delivery_key` (silver version,
champion version, horizon): a rerun on the same data with the same champion skips the
step, unless the delivery is incomplete or its champion rows come from another run
than the champion's (an MLflow store lost and trained again); then it forecasts again
and says why (:attr:`ForecastReport.note`).

Future temperature, for models that use it, is the same hour one week earlier (a
persistence forecast; a weather feed can replace it by passing its own frame).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from forecasting import contract as C
from forecasting.config import Config
from forecasting.errors import RegistryError, TableError
from forecasting.frequency import future_timestamps
from forecasting.refit import failed_refit, refit_series, refit_specs, with_specs
from registry import pyfunc
from registry.aliases import champion_info
from registry.connection import configure
from training.checkpoints import checkpoint
from training.engines import get_engine
from training.tables import (
    GOLD_FORECASTS,
    GOLD_PORTFOLIO,
    GOLD_SELECTION,
    SILVER_READINGS,
    SILVER_SERIES,
    Lakehouse,
)

log = logging.getLogger(__name__)
APP_FORECAST = "mmf-forecast"
APP_PORTFOLIO = "mmf-portfolio"
MAX_LISTED = 5  # series named in a message about missing output


@dataclass
class ForecastReport:
    model_version: str  # the champion's
    run_id: str
    n_series: int
    n_rows: int
    table_version: int
    skipped: bool = False
    timings: dict[str, float] = field(default_factory=dict)  # load_s, refit_s, score_s, gold_write_s
    silver_version: int | None = None  # the silver/readings version forecast from
    horizon: int = 0
    n_clean: int = 0  # the series to forecast: those of silver/series
    delivery: int | None = None  # the application-transaction version (delivery_key)
    fits: dict[str, int] = field(default_factory=dict)  # trained | refit -> series
    versions: dict[str, int] = field(default_factory=dict)  # model version -> series it forecast
    missing: dict[str, str] = field(default_factory=dict)  # series left without the horizon -> why
    note: str = ""  # why a delivery already recorded was made again

    def describe(self) -> str:
        """One line: which versions forecast how many series, and how."""
        parts = [f"v{v}: {n}" for v, n in sorted(self.versions.items(), key=lambda kv: -int(kv[0]))]
        fits = ", ".join(f"{k} {n}" for k, n in sorted(self.fits.items()))
        return (
            f"{self.n_series} series from silver version {self.silver_version} ({', '.join(parts)}; {fits})"
        )


def missing_message(missing: dict[str, str], horizon: int, n_series: int) -> str:
    """``N of M series have no forecast of the next H steps: a (why), b (why), ...``."""
    shown = "; ".join(f"{sid} ({why})" for sid, why in list(missing.items())[:MAX_LISTED])
    more = f"; and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
    return f"{len(missing)} of {n_series} series have no forecast of the next {horizon} steps: {shown}{more}"


def delivery_key(silver_version: int, model_version: str | int, horizon: int) -> int:
    """The application-transaction version of the delivery of ``horizon`` steps from
    ``silver_version`` with champion ``model_version`` (one int64: silver versions below
    9e7, model versions below 1e5, horizons below 1e6)."""
    return (int(silver_version) * 100_000 + int(model_version)) * 1_000_000 + int(horizon)


@dataclass
class Source:
    """A registered version and the series it forecasts in a delivery."""

    version: str
    run_id: str
    silver_version: int | None
    model: Any  # its ManyModels (registry.pyfunc)
    trained: list[str] = field(default_factory=list)  # forecast as trained
    refit: list[str] = field(default_factory=list)  # fitted again on the current silver first


def load_source(config: Config, info: dict[str, Any]) -> Source:
    model = pyfunc.load_version(config, info["version"]).unwrap_python_model()
    return Source(str(info["version"]), info["run_id"], info.get("silver_version"), model)


def series_to_forecast(lake: Lakehouse) -> pd.DataFrame:
    """silver/series (the series not quarantined): ``end`` and ``freq`` by series id."""
    frame = lake.read(SILVER_SERIES, columns=[C.SERIES_ID, "end", "freq"])
    frame["end"] = frame["end"].astype("datetime64[us]")
    return frame.set_index(C.SERIES_ID)


def assign(source: Source, wanted: pd.DataFrame, silver_version: int) -> list[str]:
    """Give ``source`` the series of ``wanted`` it holds: as trained when it was trained
    on ``silver_version`` up to the series' end, else to refit. Returns the others."""
    ends = source.model.series_ends().set_index(C.SERIES_ID)["end"]
    same_data = source.silver_version is not None and int(source.silver_version) == int(silver_version)
    left = []
    for sid, end in zip(wanted.index, wanted["end"]):
        if sid not in ends.index:
            left.append(sid)
        elif same_data and ends[sid] == end:
            source.trained.append(sid)
        else:
            source.refit.append(sid)
    return left


def plan(lake: Lakehouse, config: Config, champion: Source, series: pd.DataFrame, silver_version: int):
    """The sources of a delivery (the champion first, then the newest version holding
    each series it does not hold) and the series none holds, with the reason."""
    left = assign(champion, series, silver_version)
    sources = [champion]
    if not left:
        return sources, {}
    sel = lake.read(
        GOLD_SELECTION,
        columns=["run_id", C.SERIES_ID, "status", "reason", "created_at"],
        filters=[(C.SERIES_ID, "in", left)],
    )
    by_run = pyfunc.versions_by_run(config)
    usable = sel[sel["status"].isin([C.OK, C.FALLBACK])].assign(version=lambda f: f["run_id"].map(by_run))
    usable = usable[usable["version"].notna() & (usable["version"] != champion.version)]
    newest = usable.groupby(C.SERIES_ID)["version"].agg(lambda v: max(v, key=int))
    for version in sorted(set(newest), key=int, reverse=True):
        source = load_source(config, pyfunc.version_details(config, version))
        assign(source, series.loc[newest.index[newest == version]], silver_version)
        sources.append(source)
    held = {sid for src in sources for sid in src.trained + src.refit}
    return sources, {sid: _why_unheld(sel, sid, by_run) for sid in left if sid not in held}


def _why_unheld(sel: pd.DataFrame, sid: str, by_run: dict[str, str]) -> str:
    rows = sel[sel[C.SERIES_ID] == sid].sort_values("created_at")
    if rows.empty:
        return "no training run has seen it yet (new in silver): run `mmf train`"
    last = rows.iloc[-1]
    if last["status"] in (C.OK, C.FALLBACK):
        return f"its training run {last['run_id']} has no registered version in the MLflow store"
    return f"{last['status']} in training run {last['run_id']}: {last['reason']}"


def refit_models(lake: Lakehouse, cfg: Config, source: Source, silver_version: int):
    """``source``'s models of the series it forecasts (as ``ManyModels.models`` rows),
    those of ``source.refit`` fitted again on silver (on the engine); and the series
    whose refit failed, with the reason."""
    models = source.model.models().set_index(C.SERIES_ID)
    keep = models.loc[source.trained]
    if not source.refit:
        return keep.reset_index(), {}
    specs = refit_specs(models.loc[source.refit].reset_index())
    readings = lake.read(SILVER_READINGS, version=silver_version, filters=[(C.SERIES_ID, "in", source.refit)])
    out = (
        get_engine(cfg)
        .map_groups(
            with_specs(readings, specs), C.SERIES_ID, refit_series, C.REFIT_RESULT, cfg, on_error=failed_refit
        )
        .set_index(C.SERIES_ID)
    )
    ok = out.index[out["status"] == C.OK]
    failed = {sid: f"v{source.version} {out.at[sid, 'reason']}" for sid in out.index.difference(ok)}
    for sid in set(source.refit) - set(out.index):
        failed[sid] = f"no rows in silver/readings version {silver_version} to refit v{source.version} on"
    fresh = models.loc[ok].assign(model_json=out.loc[ok, "model_json"], end=out.loc[ok, "end"])
    both = [f for f in (keep, fresh) if len(f)] or [keep]
    return pd.concat(both).reset_index(), failed


def future_frame(
    lake: Lakehouse, silver_version: int, ends: pd.Series, freq: str, horizon: int
) -> pd.DataFrame:
    """Rows (series_id, horizon, ts, temperature) for every series and future step."""
    sids = ends.index.to_numpy()
    ts = future_timestamps(ends.to_numpy(dtype="datetime64[us]"), freq, np.arange(1, horizon + 1)).ravel()
    frame = pd.DataFrame({C.SERIES_ID: np.repeat(sids, horizon), "horizon": horizon, C.TS: ts})
    week = pd.Timedelta("7D")
    hist = lake.read(
        SILVER_READINGS,
        version=silver_version,
        columns=[C.SERIES_ID, C.TS, "temperature"],
        filters=[(C.TS, ">", (ends.min() - week).to_pydatetime())],
    )
    if hist["temperature"].notna().any():
        hist = hist.assign(**{C.TS: hist[C.TS] + week}).drop_duplicates([C.SERIES_ID, C.TS])
        frame = frame.merge(hist, on=[C.SERIES_ID, C.TS], how="left")
        # beyond one week ahead, repeat the last known week
        frame["temperature"] = frame.groupby(C.SERIES_ID)["temperature"].transform(
            lambda s: s.ffill().bfill() if s.isna().any() else s
        )
    return frame


def predict_by_series(
    predict: Callable[[pd.DataFrame], pd.DataFrame],
    inputs: pd.DataFrame,
    progress: Callable[[int, int], None] | None = None,
    chunks: int = 100,
) -> pd.DataFrame:
    """``predict(inputs)`` in about ``chunks`` calls on whole series, telling
    ``progress(series done, series in all)`` after each (a single call without progress)."""
    if progress is None or inputs.empty:
        return predict(inputs)
    codes, ids = pd.factorize(inputs[C.SERIES_ID])
    size = max(1, -(-len(ids) // chunks))
    parts = []
    for block, part in inputs.groupby(codes // size, sort=True):
        parts.append(predict(part))
        progress(min((int(block) + 1) * size, len(ids)), len(ids))
    return pd.concat(parts, ignore_index=True)


def predict_source(
    source: Source,
    models: pd.DataFrame,
    inputs: pd.DataFrame,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[pd.DataFrame, dict[str, str]]:
    """The forecasts of ``models`` (with ``source``'s levels and global weights); a
    series whose forecast fails is left out, with the reason."""
    predictor = source.model.with_models(models)
    mine = inputs[inputs[C.SERIES_ID].isin(models[C.SERIES_ID])]
    try:
        return predict_by_series(lambda part: predictor.predict(None, part), mine, progress=progress), {}
    except Exception:  # noqa: BLE001 - find the series that fail, forecast the others
        log.warning("version %s: a forecast failed; forecasting series one by one", source.version)
    parts, failed = [], {}
    for sid, rows in mine.groupby(C.SERIES_ID, sort=False):
        try:
            parts.append(predictor.predict(None, rows))
        except Exception as exc:  # noqa: BLE001
            failed[str(sid)] = f"v{source.version} forecast failed: {str(exc).splitlines()[0][:300]}"
    return (pd.concat(parts, ignore_index=True) if parts else predictor.predict(None, mine.iloc[:0])), failed


def forecast(
    lake: Lakehouse,
    config: Config,
    horizon: int | None = None,
    force: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> ForecastReport:
    """``progress(step, done, total)`` is told when forecasting starts and as series are forecast."""
    if progress:
        progress("forecast", 0, 0)
    configure(config)
    info = champion_info(config)
    if info is None:
        raise RegistryError(
            f"registered model {config.mlflow.registered_model!r} has no champion: run `mmf train` "
            "(the first version is promoted) or `mmf promote VERSION`"
        )
    silver_version = lake.version(SILVER_READINGS)
    if silver_version is None:
        raise TableError("silver/readings does not exist: run `mmf refine` first")
    version, run_id, h = str(info["version"]), info["run_id"], horizon or config.horizon
    series = series_to_forecast(lake)
    key = delivery_key(silver_version, version, h)
    report = ForecastReport(
        version,
        run_id,
        len(series),
        0,
        lake.version(GOLD_FORECASTS) or 0,
        silver_version=silver_version,
        horizon=h,
        n_clean=len(series),
        delivery=key,
    )
    if not force and lake.txn_version(GOLD_FORECASTS, APP_FORECAST) == key:
        rows = delivered(lake, series, h)
        report.note = redo_reason(rows, series, h, version, run_id)
        if not report.note:
            report.skipped, report.n_rows = True, len(rows)
            return report
        log.warning("%s", report.note)
    return _deliver(lake, config, info, series, report, progress)


def _deliver(
    lake: Lakehouse,
    config: Config,
    info: dict[str, Any],
    series: pd.DataFrame,
    report: ForecastReport,
    progress: Callable[[str, int, int], None] | None = None,
) -> ForecastReport:
    """Plan, refit, forecast and write one delivery; ``report`` filled in."""
    silver_version, h = int(report.silver_version or 0), report.horizon
    t0 = time.perf_counter()
    sources, missing = plan(lake, config, load_source(config, info), series, silver_version)
    t1 = time.perf_counter()
    freq = config.freq or (str(series["freq"].iloc[0]) if len(series) else None)
    cfg = config.replace(horizon=h, freq=freq)
    chosen = []
    for source in sources:
        models, failed = refit_models(lake, cfg, source, silver_version)
        missing.update(failed)
        chosen.append((source, models))
    t2 = time.perf_counter()
    pred = _forecasts(lake, chosen, silver_version, h, missing, progress)
    t3 = time.perf_counter()
    checkpoint("before_forecast_commit")
    if len(pred):
        report.table_version = lake.write(
            GOLD_FORECASTS,
            pred,
            mode="overwrite",
            predicate=replace_predicate(pred),
            app_id=APP_FORECAST,
            app_version=report.delivery,
            metadata={"mmf.run_id": report.run_id, "mmf.silver_version": silver_version},
        )
    report.n_rows, report.n_series = len(pred), int(pred[C.SERIES_ID].nunique()) if len(pred) else 0
    report.fits = pred.drop_duplicates(C.SERIES_ID)["fit"].value_counts().to_dict() if len(pred) else {}
    report.versions = (
        pred.drop_duplicates(C.SERIES_ID)["model_version"].value_counts().to_dict() if len(pred) else {}
    )
    rows = delivered(lake, series, h)
    for sid in missing_series(series, rows, h):
        missing.setdefault(sid, "no forecast of its latest end in gold/forecasts after the write")
    report.missing = {sid: missing[sid] for sid in sorted(missing)}
    report.timings = {
        "load_s": t1 - t0,
        "refit_s": t2 - t1,
        "score_s": t3 - t2,
        "gold_write_s": time.perf_counter() - t3,
    }
    return report


def _forecasts(
    lake: Lakehouse,
    chosen: list[tuple[Source, pd.DataFrame]],
    silver_version: int,
    h: int,
    missing: dict[str, str],
    progress: Callable[[str, int, int], None] | None = None,
) -> pd.DataFrame:
    """Every source's forecasts as gold/forecasts rows (failures go to ``missing``);
    ``progress("forecast", series done, series in all)`` as they are forecast."""
    chosen = [(source, models) for source, models in chosen if len(models)]
    if not chosen:
        return pd.DataFrame(columns=list(C.forecast_schema(lake.levels).names))
    everything = pd.concat([m for _, m in chosen], ignore_index=True)
    ends = everything.set_index(C.SERIES_ID)["end"].astype("datetime64[us]")
    inputs = future_frame(lake, silver_version, ends, str(everything["freq"].iloc[0]), h)
    now = pd.Timestamp(dt.datetime.now(dt.timezone.utc)).as_unit("us")
    parts, done, total = [], 0, len(ends)
    for source, models in chosen:
        start = done

        def tell(n: int, _: int, start: int = start) -> None:
            if progress:
                progress("forecast", start + n, total)

        pred, failed = predict_source(source, models, inputs, tell if progress else None)
        done += len(models)
        missing.update(failed)
        if pred.empty:
            continue
        refit = set(source.refit)
        pred["model_version"] = source.version
        pred["run_id"] = source.run_id
        pred["cutoff"] = pred[C.SERIES_ID].map(ends).astype("datetime64[us]")
        pred["created_at"] = now
        pred["silver_version"] = silver_version
        pred["fit"] = np.where(pred[C.SERIES_ID].isin(refit), C.REFIT, C.TRAINED)
        parts.append(pred)
    if not parts:
        return pd.DataFrame(columns=list(C.forecast_schema(lake.levels).names))
    return pd.concat(parts, ignore_index=True)


def _quote(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def replace_predicate(pred: pd.DataFrame) -> str:
    """The rows a delivery replaces: same model version, cutoff and series as its rows."""
    keys = pred[["model_version", "cutoff", C.SERIES_ID]].drop_duplicates()
    parts = []
    for (version, cutoff), group in keys.groupby(["model_version", "cutoff"], sort=True):
        ids = ", ".join(_quote(s) for s in sorted(group[C.SERIES_ID]))
        when = pd.Timestamp(cutoff).isoformat(sep=" ")
        parts.append(f"(model_version = {_quote(version)} AND cutoff = '{when}' AND series_id IN ({ids}))")
    return " OR ".join(parts)


# -- what gold/forecasts holds ---------------------------------------------------------
def delivered(lake: Lakehouse, series: pd.DataFrame, h: int) -> pd.DataFrame:
    """The gold/forecasts rows of the next horizon of ``series`` (cutoff = the series'
    latest silver end, ts within ``h`` steps after it): series_id, ts, model_version, run_id."""
    cols = [C.SERIES_ID, C.TS, "cutoff", "model_version", "run_id"]
    if series.empty or not lake.exists(GOLD_FORECASTS):
        return pd.DataFrame(columns=cols)
    fc = lake.read(
        GOLD_FORECASTS, columns=cols, filters=[("cutoff", ">=", series["end"].min().to_pydatetime())]
    )
    ends = series["end"]
    fc = fc[fc[C.SERIES_ID].isin(ends.index)]
    fc = fc[fc["cutoff"] == fc[C.SERIES_ID].map(ends)]
    last = pd.Series(
        future_timestamps(ends.to_numpy(dtype="datetime64[us]"), series["freq"].iloc[0], [h])[:, 0],
        index=ends.index,
    )
    return fc[(fc[C.TS] > fc["cutoff"]) & (fc[C.TS] <= fc[C.SERIES_ID].map(last))]


def missing_series(series: pd.DataFrame, rows: pd.DataFrame, h: int) -> list[str]:
    """The series of ``series`` whose next ``h`` steps are not all in ``rows``."""
    n = rows.groupby(C.SERIES_ID)[C.TS].nunique() if len(rows) else pd.Series(dtype="int64")
    return [sid for sid in series.index if int(n.get(sid, 0)) < h]


def redo_reason(rows: pd.DataFrame, series: pd.DataFrame, h: int, version: str, run_id: str) -> str:
    """Why a delivery already recorded must be made again ("" when it stands)."""
    missing = missing_series(series, rows, h)
    if missing:
        return f"forecasting again: {len(missing)} series had no forecast of the next {h} steps"
    runs = sorted(set(rows.loc[rows["model_version"] == version, "run_id"]) - {run_id})
    if runs:
        return (
            f"forecasting again: gold/forecasts held version {version} from run {', '.join(runs)}, not from "
            f"the champion's run {run_id} (the MLflow store was lost or replaced and trained again)"
        )
    return ""


def aggregate(
    lake: Lakehouse, config: Config, model_version: str | None = None, delivery: int | None = None
) -> int:
    """gold/portfolio: daily forecast totals by region, site and overall of the latest
    delivery of one model version (the latest in gold/forecasts by default): every series
    of the gold/forecasts write that last forecast with that version, including series
    another version forecast in it; replace-where on the version. ``delivery``: the
    application-transaction version to record (by default the model version)."""
    heads = lake.read(GOLD_FORECASTS, columns=["model_version", "created_at"])
    if heads.empty:
        raise RegistryError("gold/forecasts is empty: run `mmf forecast` first")
    version = model_version or max(heads["model_version"].unique(), key=int)
    newest = heads.loc[heads["model_version"] == version, "created_at"].max()
    fc = lake.read(
        GOLD_FORECASTS,
        columns=[C.SERIES_ID, C.TS, "yhat", "model_version", "cutoff"],
        filters=[("created_at", "=", newest.to_pydatetime())],
    )
    attrs = lake.read(SILVER_SERIES, columns=[C.SERIES_ID, "site", "region"])
    fc = fc.merge(attrs, on=C.SERIES_ID, how="left")
    fc["day"] = fc[C.TS].dt.date
    fc["total"] = "all"
    parts = []
    for level in ("total", "region", "site"):
        keyed = fc.assign(key=fc[level].fillna("unknown"))
        agg = keyed.groupby(["key", "day"]).agg(
            yhat=("yhat", "sum"), n_series=(C.SERIES_ID, "nunique"), cutoff=("cutoff", "max")
        )
        parts.append(agg.reset_index().assign(level=level))
    out = pd.concat(parts, ignore_index=True)
    out["model_version"] = version
    out["created_at"] = pd.Timestamp(dt.datetime.now(dt.timezone.utc)).as_unit("us")
    return lake.write(
        GOLD_PORTFOLIO,
        out,
        mode="overwrite",
        predicate=f"model_version = '{version}'",
        app_id=APP_PORTFOLIO,
        app_version=int(delivery if delivery is not None else version),
    )
