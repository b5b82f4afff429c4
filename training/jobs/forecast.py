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
``silver_version`` (the silver/readings version of the data) and ``fit``.

A delivery works in batches of whole series: the bucket ranges of silver/readings at
its version, about ``config.batch_rows`` rows each (:meth:`Lakehouse.batches`). Each
batch is planned, refitted (the engine keeps one pool across batches), forecast and
written in its own commit as it completes, replace-where on each row's
(model_version, cutoff, series): the same forecast written again replaces and never
duplicates, and forecasts from earlier cutoffs stay (to be scored against the
actuals). Every batch commit's metadata names the delivery (``mmf.delivery`` =
:func:`delivery_key` of silver version, champion version and horizon; ``mmf.run_id``)
and the batch (``mmf.batch``, ``mmf.buckets``), with its counts and its series left
without a forecast. A restarted delivery reads its done-set back from the Delta log
(:func:`done_batches`: the commits of the same delivery and run since the last
finished one), skips those batches and keeps their ``created_at``, so the delivery
ends as one write would have. Only the LAST commit records the Delta application
transaction ``mmf-forecast`` = the delivery key (and ``mmf.final``): a rerun on the
same data with the same champion skips the step, unless the delivery is incomplete or
its champion rows come from another run than the champion's (an MLflow store lost and
trained again); then it forecasts again and says why (:attr:`ForecastReport.note`).
gold/portfolio (:func:`aggregate`) sums the delivery's totals a bucket range at a time
and writes them once.

With the Spark engine (:mod:`training.jobs.forecast_spark`) the same delivery goes
through Spark: the driver plans each batch with series ids only, the executors read the
silver rows and the models, refit and forecast each series with the functions of this
module, and delta-spark commits each batch (same predicate, metadata and transaction);
the missing check and gold/portfolio are Spark aggregations.

Future temperature, for models that use it, is the same hour one week earlier (a
persistence forecast). With declared covariates (``covariates:``, ``holidays``) the
models' regressors are those instead, joined per batch from silver/covariates as known at
each series' cutoff (:mod:`training.jobs.covariates`); a step no issue covers takes the
covariate's fallback, recorded per series in ``covariate_fallback``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections import Counter
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
from training.jobs.covariates import fallback_by_series, future_covariates, with_covariates
from training.tables import (
    GOLD_FORECASTS,
    GOLD_PORTFOLIO,
    GOLD_SELECTION,
    SILVER_READINGS,
    SILVER_SERIES,
    Lakehouse,
    bucket_ranges,
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
    """A registered version that forecasts in a delivery."""

    version: str
    run_id: str
    silver_version: int | None
    model: Any  # its ManyModels (registry.pyfunc)


@dataclass
class Part:
    """The series of one batch one source forecasts: its models of them (as
    ``ManyModels.models`` rows), those forecast as trained and those to refit first."""

    source: Source
    models: pd.DataFrame
    trained: list[str] = field(default_factory=list)
    refit: list[str] = field(default_factory=list)


@dataclass
class BatchPlan:
    """One bucket range of a delivery: its series (silver/series ``end, freq`` by id),
    the sources' parts and the series left without a forecast, with the reason."""

    index: int
    buckets: tuple[int, int]
    series: pd.DataFrame
    parts: list[Part]
    missing: dict[str, str]


def load_source(config: Config, info: dict[str, Any]) -> Source:
    model = pyfunc.load_version(config, info["version"]).unwrap_python_model()
    return Source(str(info["version"]), info["run_id"], info.get("silver_version"), model)


def series_to_forecast(lake: Lakehouse, buckets: tuple[int, int] | None = None) -> pd.DataFrame:
    """silver/series (the series not quarantined), of a bucket range: ``end`` and
    ``freq`` by series id."""
    cols = [C.SERIES_ID, "end", "freq"]
    if buckets is None:
        frame = lake.read(SILVER_SERIES, columns=cols)
    else:
        frame = lake.read_buckets(SILVER_SERIES, buckets, columns=cols)
    frame["end"] = frame["end"].astype("datetime64[us]")
    return frame.set_index(C.SERIES_ID)


def assign(source: Source, models: pd.DataFrame, wanted: pd.DataFrame, silver_version: int):
    """The part of ``wanted`` that ``source`` (whose models of the batch are ``models``)
    holds: as trained when it was trained on ``silver_version`` up to the series' end,
    else to refit. Returns the part and the series it does not hold."""
    ends = models.set_index(C.SERIES_ID)["end"]
    same_data = source.silver_version is not None and int(source.silver_version) == int(silver_version)
    part, left = Part(source, models[models[C.SERIES_ID].isin(wanted.index)].reset_index(drop=True)), []
    for sid, end in zip(wanted.index, wanted["end"]):
        if sid not in ends.index:
            left.append(sid)
        elif same_data and ends[sid] == end:
            part.trained.append(sid)
        else:
            part.refit.append(sid)
    return part, left


class Sources:
    """The champion, and the other versions as a delivery needs them (each loaded once)."""

    def __init__(self, config: Config, champion: Source) -> None:
        self.config, self.champion = config, champion
        self.loaded: dict[str, Source] = {champion.version: champion}
        self.by_run: dict[str, str] | None = None

    def get(self, version: str) -> Source:
        if version not in self.loaded:
            self.loaded[version] = load_source(self.config, pyfunc.version_details(self.config, version))
        return self.loaded[version]

    def runs(self) -> dict[str, str]:
        if self.by_run is None:
            self.by_run = pyfunc.versions_by_run(self.config)
        return self.by_run


def plan(
    lake: Lakehouse,
    sources: Sources,
    series: pd.DataFrame,
    silver_version: int,
    buckets,
    columns: list[str] | None = None,
):
    """The parts of a batch (the champion first, then the newest version holding each
    series it does not hold) and the series none holds, with the reason. ``columns``: of
    the parts' models, only those (by default every ``ManyModels.models`` column)."""
    champion = sources.champion
    first, left = assign(champion, champion.model.models_in(buckets, columns), series, silver_version)
    parts = [first]
    if not left:
        return parts, {}
    sel = lake.read(
        GOLD_SELECTION,
        columns=["run_id", C.SERIES_ID, "status", "reason", "created_at"],
        filters=[(C.SERIES_ID, "in", left)],
    )
    by_run = sources.runs()
    usable = sel[sel["status"].isin([C.OK, C.FALLBACK, C.COLD_START])].assign(
        version=lambda f: f["run_id"].map(by_run)
    )
    usable = usable[usable["version"].notna() & (usable["version"] != champion.version)]
    newest = usable.groupby(C.SERIES_ID)["version"].agg(lambda v: max(v, key=int))
    for version in sorted(set(newest), key=int, reverse=True):
        source = sources.get(str(version))
        wanted = series.loc[newest.index[newest == version]]
        parts.append(assign(source, source.model.models_in(buckets, columns), wanted, silver_version)[0])
    held = {sid for part in parts for sid in part.trained + part.refit}
    return parts, {sid: _why_unheld(sel, sid, by_run) for sid in left if sid not in held}


def _why_unheld(sel: pd.DataFrame, sid: str, by_run: dict[str, str]) -> str:
    rows = sel[sel[C.SERIES_ID] == sid].sort_values("created_at")
    if rows.empty:
        return "no training run has seen it yet (new in silver): run `mmf train`"
    last = rows.iloc[-1]
    if last["status"] in (C.OK, C.FALLBACK, C.COLD_START):
        return f"its training run {last['run_id']} has no registered version in the MLflow store"
    return f"{last['status']} in training run {last['run_id']}: {last['reason']}"


def refit_input(
    lake: Lakehouse, batch: BatchPlan, silver_version: int, config: Config | None = None
) -> pd.DataFrame:
    """The silver rows of the batch's series to refit (with their covariates, when
    ``config`` declares some), each series' spec on its first row."""
    specs: dict[str, str] = {}
    for part in batch.parts:
        specs.update(refit_specs(part.models[part.models[C.SERIES_ID].isin(part.refit)]))
    if not specs:
        return pd.DataFrame({C.SERIES_ID: pd.Series([], dtype=object)})
    readings = lake.read_buckets(
        SILVER_READINGS, batch.buckets, version=silver_version, filters=[(C.SERIES_ID, "in", sorted(specs))]
    )
    readings = readings.drop(columns=[C.BUCKET], errors="ignore")
    if config is not None:
        readings = with_covariates(lake, config, readings)
    return with_specs(readings, specs)


def refit_models(part: Part, out: pd.DataFrame, silver_version: int):
    """``part``'s models of the series it forecasts, those of ``part.refit`` replaced by
    their refit (``out``: REFIT_RESULT rows by series id); and the series whose refit
    failed, with the reason."""
    source = part.source
    models = part.models.set_index(C.SERIES_ID)
    keep = models.loc[part.trained]
    if not part.refit:
        return keep.reset_index(), {}
    mine = out[out.index.isin(part.refit)]
    ok = mine.index[mine["status"] == C.OK]
    failed = {sid: f"v{source.version} {mine.at[sid, 'reason']}" for sid in mine.index.difference(ok)}
    for sid in set(part.refit) - set(mine.index):
        failed[sid] = f"no rows in silver/readings version {silver_version} to refit v{source.version} on"
    fresh = models.loc[ok].assign(model_json=mine.loc[ok, "model_json"], end=mine.loc[ok, "end"])
    both = [f for f in (keep, fresh) if len(f)] or [keep]
    return pd.concat(both).reset_index(), failed


WEEK = pd.Timedelta("7D")  # future temperature: the same hour one week earlier


def future_frame(
    lake: Lakehouse,
    silver_version: int,
    ends: pd.Series,
    freq: str,
    horizon: int,
    buckets=(0, C.N_BUCKETS),
    config: Config | None = None,
) -> pd.DataFrame:
    """Rows (series_id, horizon, ts, temperature) for every series and future step (of
    the series of ``ends``, all in the bucket range ``buckets``); with covariates declared
    in ``config``, their columns as known at each cutoff instead of temperature, and
    ``covariate_fallback`` (:func:`training.jobs.covariates.future_covariates`)."""
    hist = lake.read_buckets(
        SILVER_READINGS,
        buckets,
        version=silver_version,
        columns=[C.SERIES_ID, C.TS, "temperature"],
        filters=[(C.TS, ">", (ends.min() - WEEK).to_pydatetime())],
    )
    frame = future_rows(ends, freq, horizon, hist, bool(hist["temperature"].notna().any()))
    return frame if config is None else future_covariates(lake, config, frame, ends)


def future_rows(
    ends: pd.Series, freq: str, horizon: int, hist: pd.DataFrame, temperature: bool
) -> pd.DataFrame:
    """:func:`future_frame` of the series of ``ends`` from their silver rows ``hist``
    (series_id, ts, temperature; at least those of the last week before each end), pure:
    with a ``temperature`` column when ``temperature`` (the batch has some)."""
    sids = ends.index.to_numpy()
    ts = future_timestamps(ends.to_numpy(dtype="datetime64[us]"), freq, np.arange(1, horizon + 1)).ravel()
    frame = pd.DataFrame({C.SERIES_ID: np.repeat(sids, horizon), "horizon": horizon, C.TS: ts})
    if temperature:
        hist = hist.assign(**{C.TS: hist[C.TS] + WEEK}).drop_duplicates([C.SERIES_ID, C.TS])
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
    n_clean = lake.n_rows(SILVER_SERIES)
    key = delivery_key(silver_version, version, h)
    report = ForecastReport(
        version,
        run_id,
        n_clean,
        0,
        lake.version(GOLD_FORECASTS) or 0,
        silver_version=silver_version,
        horizon=h,
        n_clean=n_clean,
        delivery=key,
    )
    ranges = lake.batches(SILVER_READINGS, silver_version, config.batch_rows)
    if not force and lake.txn_version(GOLD_FORECASTS, APP_FORECAST) == key:
        if config.engine == "spark":  # counted by Spark, the rows stay on the executors
            n_rows, report.note = _spark().check_delivery(lake, config, h, version, run_id)
        else:
            n_rows, report.note = check_delivery(lake, ranges, h, version, run_id)
        if not report.note:
            report.skipped, report.n_rows = True, n_rows
            return report
        log.warning("%s", report.note)
    return _deliver(lake, config, info, ranges, report, progress)


@dataclass
class Delivery:
    """What one delivery has committed so far (the batches done before a restart included):
    small counts only."""

    key: int
    run_id: str
    n_batches: int
    created_at: pd.Timestamp
    done: dict[str, dict[str, Any]]  # "lo:hi" -> the commit's metadata
    rows: int = 0
    fits: Counter = field(default_factory=Counter)
    versions: Counter = field(default_factory=Counter)
    missing: dict[str, str] = field(default_factory=dict)
    table_version: int | None = None
    final: bool = False
    config: Config | None = None  # the delivery's settings (declared covariates)

    def add(self, counts: dict[str, Any], missing: dict[str, str]) -> None:
        self.rows += int(counts.get("rows", 0))
        self.fits.update(counts.get("fits", {}))
        self.versions.update(counts.get("versions", {}))
        self.missing.update(missing)


def done_batches(lake: Lakehouse, key: int, run_id: str, limit: int) -> dict[str, dict[str, Any]]:
    """The batch commits of the unfinished delivery ``key`` of ``run_id`` in gold/forecasts
    (its done-set, by bucket range ``"lo:hi"``): the commits since the last commit of
    another delivery or of a finished one (``mmf.final``), read from the Delta log."""
    if not lake.exists(GOLD_FORECASTS):
        return {}
    done: dict[str, dict[str, Any]] = {}
    for commit in lake.history(GOLD_FORECASTS, limit):  # newest first, either layer's commits
        if "mmf.run_id" not in commit:
            continue  # not a delivery (a scoring merge, a maintenance commit)
        if (
            commit.get("mmf.delivery") != str(key)
            or commit["mmf.run_id"] != run_id
            or commit.get("mmf.final")
        ):
            break
        done.setdefault(str(commit["mmf.buckets"]), commit)
    return done


def _deliver(
    lake: Lakehouse,
    config: Config,
    info: dict[str, Any],
    ranges: list[tuple[int, int]],
    report: ForecastReport,
    progress: Callable[[str, int, int], None] | None = None,
) -> ForecastReport:
    """Plan, refit, forecast and write one delivery batch by batch; ``report`` filled in."""
    h = report.horizon
    t0 = time.perf_counter()
    sources = Sources(config, load_source(config, info))
    done = done_batches(lake, int(report.delivery or 0), report.run_id, len(ranges) + 100)
    now = pd.Timestamp(dt.datetime.now(dt.timezone.utc)).as_unit("us")
    if done:  # a restart: the delivery keeps its creation time (gold/portfolio reads it)
        now = pd.Timestamp(next(iter(done.values()))["mmf.created_at"]).as_unit("us")
    state = Delivery(int(report.delivery or 0), report.run_id, len(ranges), now, done)
    spark = _spark() if config.engine == "spark" else None  # data through Spark (forecast_spark)
    for rng, commit in done.items():
        state.add(json.loads(commit.get("mmf.counts", "{}")), json.loads(commit.get("mmf.missing", "{}")))
        lo, hi = (int(b) for b in rng.split(":"))
        if spark is not None:
            spark.check_batch(lake, config, (lo, hi), h, state.missing)
        else:
            check_batch(lake, series_to_forecast(lake, (lo, hi)), h, state.missing)
    todo = [(i, b) for i, b in enumerate(ranges) if f"{b[0]}:{b[1]}" not in done]
    if done:
        log.info("forecast: resuming delivery %s, %d of %d batches done", state.key, len(done), len(ranges))
    t1 = time.perf_counter()
    timings = {"refit_s": 0.0, "score_s": 0.0, "gold_write_s": 0.0}
    run = spark.run_batches if spark is not None else _run_batches
    run(lake, config, sources, todo, state, report, timings, progress)
    if not state.final and (state.rows or state.done):  # every batch was done but none marked final
        if spark is not None:
            spark.commit_final(lake, config, state, report)
        else:
            _commit(lake, state, report, -1, (0, 0), _empty(lake), {}, {}, final=True)
    report.n_rows, report.n_series = state.rows, sum(state.versions.values())
    report.fits, report.versions = dict(state.fits), dict(state.versions)
    report.missing = {sid: state.missing[sid] for sid in sorted(state.missing)}
    if state.table_version is not None:
        report.table_version = state.table_version
    report.timings = {"load_s": t1 - t0, **timings}
    return report


def _run_batches(lake, config, sources, todo, state: Delivery, report, timings, progress) -> None:
    """Refit on the engine (one pool across batches), forecast and commit each batch as
    it completes; the last one commits the delivery's application transaction."""
    silver_version, h = int(report.silver_version or 0), report.horizon
    plans: dict[int, BatchPlan] = {}

    def loader(i: int, buckets: tuple[int, int]):
        def load() -> pd.DataFrame:
            series = series_to_forecast(lake, buckets)
            parts, missing = plan(lake, sources, series, silver_version, buckets)
            plans[i] = BatchPlan(i, buckets, series, parts, missing)
            return refit_input(lake, plans[i], silver_version, config)

        return load

    # the batches' plans are made as the engine loads them; the freq of the first one
    # with series is the delivery's (as before, one frequency per lakehouse)
    freq, first = config.freq, next((series_to_forecast(lake, b) for _, b in todo), None)
    if freq is None and first is not None and len(first):
        freq = str(first["freq"].iloc[0])
    cfg = config.replace(horizon=h, freq=freq)
    state.config = cfg
    engine = get_engine(cfg)
    batches = [(i, loader(i, b)) for i, b in todo]
    stream = engine.map_batches(
        batches, C.SERIES_ID, refit_series, C.REFIT_RESULT, cfg, on_error=failed_refit
    )
    left, clock = len(todo), time.perf_counter()
    for i, out in stream:
        batch = plans.pop(i)
        left -= 1
        chosen = []
        for part in batch.parts:
            models, failed = refit_models(part, out.set_index(C.SERIES_ID), silver_version)
            batch.missing.update(failed)
            chosen.append((part, models))
        t = time.perf_counter()
        timings["refit_s"] += t - clock
        pred = _forecasts(lake, chosen, batch, silver_version, h, state, progress, report.n_clean)
        timings["score_s"] += time.perf_counter() - t
        t = time.perf_counter()
        final = left == 0 and (state.rows > 0 or len(pred) > 0 or bool(state.done))
        if len(pred) or final:
            _commit(lake, state, report, i, batch.buckets, pred, _counts(pred), batch.missing, final)
        state.missing.update(batch.missing)
        check_batch(lake, batch.series, h, state.missing)
        timings["gold_write_s"] += time.perf_counter() - t
        clock = time.perf_counter()
        if not final:
            checkpoint("mid_forecast", batch=i)


def _spark():
    """:mod:`training.jobs.forecast_spark`, imported when the Spark engine is chosen (it
    needs the optional pyspark)."""
    from training.jobs import forecast_spark

    return forecast_spark


def _counts(pred: pd.DataFrame) -> dict[str, Any]:
    """A batch's rows, and its series by fit and by model version."""
    if pred.empty:
        return {"rows": 0, "fits": {}, "versions": {}}
    firsts = pred.drop_duplicates(C.SERIES_ID)
    return {
        "rows": len(pred),
        "fits": {str(k): int(v) for k, v in firsts["fit"].value_counts().items()},
        "versions": {str(k): int(v) for k, v in firsts["model_version"].value_counts().items()},
    }


def _empty(lake: Lakehouse) -> pd.DataFrame:
    return pd.DataFrame(columns=list(C.forecast_schema(lake.levels).names))


def _commit(lake, state: Delivery, report, i, buckets, pred, counts, missing, final: bool) -> None:
    """One batch's gold/forecasts rows in their own commit: replace-where on each row's
    (model_version, cutoff, series), metadata naming the delivery and the batch; the
    last one also records the application transaction ``mmf-forecast``."""
    if state.table_version is None:
        checkpoint("before_forecast_commit")
    metadata, txn = commit_metadata(state, report, i, buckets, counts, missing, final)
    if len(pred):
        state.table_version = lake.write(
            GOLD_FORECASTS,
            pred,
            mode="overwrite",
            predicate=replace_predicate(pred),
            metadata=metadata,
            **txn,
        )
    else:
        state.table_version = lake.write(GOLD_FORECASTS, _empty(lake), metadata=metadata, **txn)
    state.add(counts, {})
    state.final = state.final or final


def commit_metadata(
    state: Delivery, report, i, buckets, counts, missing, final: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A batch commit's metadata (naming the delivery and the batch) and, on the last
    one, the application transaction (``app_id``, ``app_version``) it records."""
    metadata = {
        "mmf.run_id": report.run_id,
        "mmf.silver_version": report.silver_version,
        "mmf.delivery": state.key,
        "mmf.batch": i,
        "mmf.batches": state.n_batches,
        "mmf.buckets": f"{buckets[0]}:{buckets[1]}",
        "mmf.created_at": state.created_at.isoformat(),
        "mmf.counts": json.dumps(counts),
        "mmf.missing": json.dumps(missing),
    }
    txn: dict[str, Any] = {}
    if final:
        metadata["mmf.final"] = "1"
        txn = {"app_id": APP_FORECAST, "app_version": state.key}
    return metadata, txn


def _forecasts(
    lake: Lakehouse,
    chosen: list[tuple[Part, pd.DataFrame]],
    batch: BatchPlan,
    silver_version: int,
    h: int,
    state: Delivery,
    progress: Callable[[str, int, int], None] | None = None,
    total: int = 0,
) -> pd.DataFrame:
    """A batch's forecasts as gold/forecasts rows (failures go to ``batch.missing``);
    ``progress("forecast", series done, series in all)`` as they are forecast."""
    chosen = [(part, models) for part, models in chosen if len(models)]
    if not chosen:
        return _empty(lake)
    everything = pd.concat([m for _, m in chosen], ignore_index=True)
    ends = everything.set_index(C.SERIES_ID)["end"].astype("datetime64[us]")
    freq = str(everything["freq"].iloc[0])
    inputs = future_frame(lake, silver_version, ends, freq, h, batch.buckets, state.config)
    fallback = fallback_by_series(inputs)
    parts, start = [], sum(state.versions.values())
    for part, models in chosen:

        def tell(n: int, _: int, start: int = start) -> None:
            if progress:
                progress("forecast", start + n, max(total, start + n))

        pred, failed = predict_source(part.source, models, inputs, tell if progress else None)
        start += len(models)
        batch.missing.update(failed)
        if pred.empty:
            continue
        pred["model_version"] = part.source.version
        pred["run_id"] = part.source.run_id
        pred["cutoff"] = pred[C.SERIES_ID].map(ends).astype("datetime64[us]")
        pred["created_at"] = state.created_at
        pred["silver_version"] = silver_version
        pred["fit"] = np.where(pred[C.SERIES_ID].isin(set(part.refit)), C.REFIT, C.TRAINED)
        pred["covariate_fallback"] = pred[C.SERIES_ID].map(fallback) if len(fallback) else None
        parts.append(pred)
    return pd.concat(parts, ignore_index=True) if parts else _empty(lake)


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
        GOLD_FORECASTS,
        columns=cols,
        filters=[
            ("cutoff", ">=", series["end"].min().to_pydatetime()),
            (C.SERIES_ID, "in", list(series.index)),
        ],
    )
    ends = series["end"]
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


def check_batch(lake: Lakehouse, series: pd.DataFrame, h: int, missing: dict[str, str]) -> None:
    """Name in ``missing`` the series of a batch whose next ``h`` steps gold/forecasts lacks."""
    for sid in missing_series(series, delivered(lake, series, h), h):
        missing.setdefault(sid, "no forecast of its latest end in gold/forecasts after the write")


def check_delivery(
    lake: Lakehouse, ranges: list[tuple[int, int]], h: int, version: str, run_id: str
) -> tuple[int, str]:
    """The rows of a recorded delivery, batch by batch, and why it must be made again
    ("" when it stands): a series without its next ``h`` steps, or champion rows of
    another run than the champion's."""
    n_rows, n_missing, runs = 0, 0, set()
    for buckets in ranges:
        series = series_to_forecast(lake, buckets)
        rows = delivered(lake, series, h)
        n_rows += len(rows)
        n_missing += len(missing_series(series, rows, h))
        runs |= set(rows.loc[rows["model_version"] == version, "run_id"]) - {run_id}
    return n_rows, redo_reason(n_missing, sorted(runs), h, version, run_id)


def redo_reason(n_missing: int, runs: list[str], h: int, version: str, run_id: str) -> str:
    """Why a delivery already recorded must be made again ("" when it stands)."""
    if n_missing:
        return f"forecasting again: {n_missing} series had no forecast of the next {h} steps"
    if runs:
        return (
            f"forecasting again: gold/forecasts held version {version} from run {', '.join(runs)}, not from "
            f"the champion's run {run_id} (the MLflow store was lost or replaced and trained again)"
        )
    return ""


# -- gold/portfolio --------------------------------------------------------------------
LEVELS = ("total", "region", "site")


def aggregate(
    lake: Lakehouse, config: Config, model_version: str | None = None, delivery: int | None = None
) -> int:
    """gold/portfolio: daily forecast totals by region, site and overall of the latest
    delivery of one model version (the latest in gold/forecasts by default): every series
    of the gold/forecasts write that last forecast with that version, including series
    another version forecast in it; replace-where on the version. ``delivery``: the
    application-transaction version to record (by default the model version).

    gold/forecasts is read a bucket range of series at a time (about ``batch_rows``
    rows of the delivery each); the totals are summed across ranges (a series is in one
    range only, so the series counts add up) and written once. With the Spark engine,
    Spark reads, sums and writes them (:func:`training.jobs.forecast_spark.aggregate`)."""
    if config.engine == "spark":
        return _spark().aggregate(lake, config, model_version, delivery)
    ranges = bucket_ranges(lake.n_rows(SILVER_SERIES) * max(1, int(config.horizon)), config.batch_rows)
    version, newest = _newest_delivery(lake, ranges, model_version)
    sums: pd.DataFrame | None = None
    for buckets in ranges:
        part = _portfolio_part(lake, buckets, newest)
        if part is None:
            continue
        if sums is None:
            sums = part
        else:
            both = pd.concat([sums, part])
            sums = both.groupby(level=[0, 1, 2]).agg({"yhat": "sum", "n_series": "sum", "cutoff": "max"})
    if sums is None:
        raise RegistryError(f"gold/forecasts holds no rows of model version {version}")
    out = sums.reset_index()[["key", "day", "yhat", "n_series", "cutoff", "level"]]
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


def _newest_delivery(lake: Lakehouse, ranges, model_version: str | None) -> tuple[str, pd.Timestamp]:
    """The model version (``model_version``, else the latest in gold/forecasts) and the
    creation time of its latest write, read a bucket range at a time."""
    newest: dict[str, pd.Timestamp] = {}
    filters = [("model_version", "=", model_version)] if model_version else None
    for lo, hi in ranges:
        heads = _forecasts_in(lake, (lo, hi), ["model_version", "created_at"], filters)
        for v, ts in heads.groupby("model_version")["created_at"].max().items():
            newest[v] = max(ts, newest.get(v, ts))
    if not newest:
        raise RegistryError("gold/forecasts is empty: run `mmf forecast` first")
    version = model_version or max(newest, key=int)
    if version not in newest:
        raise RegistryError(f"gold/forecasts holds no rows of model version {version}")
    return version, newest[version]


def _forecasts_in(lake: Lakehouse, buckets, columns, filters=None) -> pd.DataFrame:
    """gold/forecasts rows of the series of a bucket range (the table has no bucket
    column: the series are those of silver/series in the range, or all when the range is
    the whole space)."""
    if buckets == (0, C.N_BUCKETS):
        return lake.read(GOLD_FORECASTS, columns=columns, filters=filters)
    ids = list(lake.read_buckets(SILVER_SERIES, buckets, columns=[C.SERIES_ID])[C.SERIES_ID])
    return lake.read(GOLD_FORECASTS, columns=columns, filters=[*(filters or []), (C.SERIES_ID, "in", ids)])


def _portfolio_part(lake: Lakehouse, buckets, newest: pd.Timestamp) -> pd.DataFrame | None:
    """The totals of one bucket range: yhat, n_series, cutoff by (level, key, day)."""
    fc = _forecasts_in(
        lake, buckets, [C.SERIES_ID, C.TS, "yhat", "cutoff"], [("created_at", "=", newest.to_pydatetime())]
    )
    if fc.empty:
        return None
    attrs = lake.read_buckets(SILVER_SERIES, buckets, columns=[C.SERIES_ID, "site", "region"])
    fc = fc.merge(attrs, on=C.SERIES_ID, how="left")
    fc["day"] = fc[C.TS].dt.date
    fc["total"] = "all"
    parts = []
    for level in LEVELS:
        keyed = fc.assign(key=fc[level].fillna("unknown"), level=level)
        parts.append(
            keyed.groupby(["level", "key", "day"]).agg(
                yhat=("yhat", "sum"), n_series=(C.SERIES_ID, "nunique"), cutoff=("cutoff", "max")
            )
        )
    return pd.concat(parts)
