"""``mmf refine``: bronze/readings -> silver/readings, silver/series, silver/quarantine.

Bronze is read at a pinned version, in batches of whole series: bucket ranges of about
``batch_rows`` rows (:meth:`Lakehouse.batches`), streamed through the engine (one pool
across batches) and written as each batch completes, so memory holds a batch or two,
never all of bronze.

The frequency is the configured one or inferred, from a first light pass over the
batches that reads only the series id, time and ingestion time and keeps, per series,
its modal step and first ingestion. When inferred and the data mixes frequencies (two
steps each shared by at least 10% of the series), the lakehouse keeps one, the
frequency of its current silver, else the step of most series (ties: the one ingested
first), and the series regular at another step are quarantined ``mixed_frequency``: a
file of another frequency stops only its own series. Without any common step the data
is refused. Every series goes through :func:`forecasting.cleaning.clean_series` on the
engine; good series land in silver/readings and silver/series, bad ones in
silver/quarantine with a reason.

Silver is rebuilt whole from each bronze version: each batch is one commit per silver
table, with the commit metadata ``mmf.bronze_version``, ``mmf.freq``, ``mmf.batch`` (its
index in the plan), ``mmf.batches`` (the plan's size) and ``mmf.done`` (how many of the
rebuild's batches the table holds with this commit). A rebuild's first commit to a
table replaces the table, the later ones append, and the last one records the bronze
version as a Delta application transaction (app id ``mmf-refine``), so re-running on
unchanged bronze writes nothing. A refine killed half-way reads each table's done
batches back from its latest commits and does only the rest (a plan that differs,
another ``batch_rows`` or frequency, starts the rebuild over); until it is finished,
:func:`refine_in_progress` tells readers that silver/readings is incomplete.

With the Spark engine no bronze or silver row passes through the driver
(:mod:`training.engines.spark_refine`): the frequency pass runs on the executors (one
row per series comes back), and each batch is read from Delta, cleaned per series by
:func:`refine_group` (which also does what the local loader does over the batch: read
order, attributes) and written to the three silver tables by them, with the same
commits and commit metadata, so either engine resumes the other's rebuild.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from forecasting import contract as C
from forecasting.cleaning import REFINE_OUT, clean_series, quarantine_row
from forecasting.config import Config
from forecasting.errors import TableError
from forecasting.frequency import alias, infer_freq, modal_step, step_of
from training.checkpoints import checkpoint
from training.engines import get_engine
from training.engines.base import GroupJob
from training.jobs.covariates import refine_covariates
from training.tables import BRONZE_READINGS, SILVER_QUARANTINE, SILVER_READINGS, SILVER_SERIES, Lakehouse

log = logging.getLogger(__name__)
APP_ID = "mmf-refine"
SILVER = (SILVER_QUARANTINE, SILVER_SERIES, SILVER_READINGS)
MIN_SHARE = 0.1  # a step shared by this share of the series is a frequency of the data
# The commit metadata of a rebuild's batch commits (see the module docstring).
BRONZE_KEY, FREQ_KEY = "mmf.bronze_version", "mmf.freq"
BATCH_KEY, BATCHES_KEY, DONE_KEY = "mmf.batch", "mmf.batches", "mmf.done"
# Only what cleaning uses: the lineage strings (file, hash, batch) and columns added by
# ingest.extra_columns=add are as long as the data and would double its memory;
# cleaning orders duplicates by ingestion time.
KEEP = [c for c in C.BRONZE_READINGS.names if c not in set(C.LINEAGE.names) - {"_ingested_at"}]
Range = tuple[int, int]
# A batch's silver rows of all three tables in one frame (the Spark engine's): every
# column of silver/readings, silver/series and silver/quarantine but the bucket (the
# table layer adds it), and ``kind``, the table of the row.
_FIELDS = {f.name: f for t in (C.SILVER_READINGS, C.SILVER_SERIES, C.SILVER_QUARANTINE) for f in t}
SILVER_ROWS = pa.schema([*(f for n, f in _FIELDS.items() if n != C.BUCKET), ("kind", pa.string())])


@dataclass
class Steps:
    """What the frequency pass keeps: per series its modal step and first ingestion,
    and the number of series of each batch."""

    step: dict[str, pd.Timedelta | None] = field(default_factory=dict)
    first: dict[str, pd.Timestamp] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)


def series_steps(lake: Lakehouse, version: int, plan: list[Range]) -> Steps:
    """The frequency pass over bronze at ``version``, batch by batch, reading only the
    series id, time and ingestion time."""
    out = Steps()
    for buckets in plan:
        frame = lake.read_buckets(
            BRONZE_READINGS, buckets, version, columns=[C.SERIES_ID, C.TS, "_ingested_at"]
        )
        by = frame.groupby(C.SERIES_ID, sort=False)
        out.step.update({sid: modal_step(g) for sid, g in by[C.TS]})
        out.first.update(by["_ingested_at"].min().to_dict())
        out.sizes.append(by.ngroups)
    return out


def _series_steps(lake: Lakehouse, config: Config, version: int, plan: list[Range]) -> Steps:
    """The frequency pass on the engine's side: on Spark by the executors (only a row per
    series comes back), else :func:`series_steps` here."""
    if config.engine != "spark":
        return series_steps(lake, version, plan)
    from training.engines import spark_refine  # the optional pyspark

    return Steps(*spark_refine.series_steps(get_engine(config), lake, version, plan))


def _silver_steps(lake: Lakehouse, version: int | None) -> set[pd.Timedelta]:
    """The frequencies of silver/series at ``version`` (None: the latest; -1: none)."""
    if version == -1 or not lake.exists(SILVER_SERIES):
        return set()
    freqs = pc.unique(lake.arrow(SILVER_SERIES, version, columns=["freq"]).column(0)).to_pylist()
    return {step_of(f) for f in freqs if f}


def lakehouse_freq(
    lake: Lakehouse, steps: Steps, silver_version: int | None = None
) -> tuple[str, dict[str, str]]:
    """The inferred frequency, and the series to quarantine as ``mixed_frequency``
    (series id -> detail) when the data mixes frequencies (see the module docstring);
    the frequency of silver is that of silver/series at ``silver_version`` (None: the
    latest, -1: none), the version before the rebuild in progress began."""
    counts = Counter(s for s in steps.step.values() if s is not None)
    total = sum(counts.values())
    major = [s for s, n in counts.items() if n / total >= MIN_SHARE] if total else []
    if len(major) < 2:
        return infer_freq(steps.step, min_share=MIN_SHARE), {}
    kept = [s for s in major if s in _silver_steps(lake, silver_version)]
    if len(kept) == 1:
        keep, why = kept[0], "the frequency of its silver"
    else:
        seen: dict[pd.Timedelta, pd.Timestamp] = {}
        for sid, st in steps.step.items():
            if st in major:
                first = steps.first[sid]
                seen[st] = min(seen.get(st, first), first)
        keep = min(major, key=lambda s: (-counts[s], seen[s], s))
        why = f"the step of most series ({counts[keep]})"
    freq = alias(keep)
    log.warning("bronze mixes frequencies %s; refining at %s", sorted(map(alias, major)), freq)
    mixed = {
        sid: f"readings mostly {alias(s)} apart ({counts[s]} series), the lakehouse's frequency is {freq} "
        f"({why}); keep such series in a lakehouse of their own, or set freq"
        for sid, s in steps.step.items()
        if s in major and s != keep
    }
    return freq, mixed


@dataclass
class RefineReport:
    bronze_version: int
    freq: str
    skipped: bool = False
    n_series: int = 0
    n_rows: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)  # reason -> count
    versions: dict[str, int | None] = field(default_factory=dict)


def engine_error(series_id: str, why: str) -> pd.DataFrame:
    """Quarantine row for a series the engine could not clean: ``"<reason>: <detail>"``
    with a known reason keeps it (the Spark engine's ``too_large`` guard), anything else
    is ``processing_failed``."""
    reason, _, detail = why.partition(": ")
    if reason in C.QUARANTINE_REASONS and detail:
        return quarantine_row(series_id, reason, detail)
    return quarantine_row(series_id, "processing_failed", why)


# -- the rebuild's state, read back from the tables' commit history ----------------------


def _batch_of(commit: dict[str, Any]) -> tuple[str, int, int, int] | None:
    """(bronze version, batches, batch, done) of a rebuild's batch commit; None for any
    other commit."""
    try:
        return commit[BRONZE_KEY], int(commit[BATCHES_KEY]), int(commit[BATCH_KEY]), int(commit[DONE_KEY])
    except (KeyError, ValueError):
        return None


def unfinished_rebuild(lake: Lakehouse, name: str) -> list[dict[str, Any]]:
    """The commits of ``name``'s unfinished rebuild (from any bronze version, in any
    plan), newest first; empty when its newest commit is not a batch of one. Only as
    many commits of the history are read as the newest one says the rebuild has."""
    if not lake.exists(name):
        return []
    newest = lake.history(name, limit=1)  # with a delta-spark commit's metadata too
    batch = _batch_of(newest[0]) if newest else None
    if batch is None or not 0 < batch[3] < batch[1]:
        return []
    commits = lake.history(name, limit=batch[3])
    found = [_batch_of(c) for c in commits]
    same = {(b[0], b[1], c.get(FREQ_KEY)) if b else None for b, c in zip(found, commits)}
    if (
        None in found
        or len(same) != 1
        or [b[3] for b in found] != list(range(batch[3], 0, -1))
        or len({b[2] for b in found}) != len(found)
        or not all(0 <= b[2] < b[1] for b in found)
    ):
        log.warning("%s: the commits of its unfinished rebuild are not as expected; starting it over", name)
        return []
    return commits


def _resumable(commits: list[dict[str, Any]], version: int, n: int, freq: str) -> set[int]:
    """The batches of an unfinished rebuild's ``commits`` when it is the one to finish
    (from bronze ``version``, in a plan of ``n`` batches, at ``freq``), else none."""
    if not commits or _batch_of(commits[0])[:2] != (str(version), n) or commits[0].get(FREQ_KEY) != freq:
        return set()
    return {int(c[BATCH_KEY]) for c in commits}


def refine_in_progress(lake: Lakehouse) -> str | None:
    """Why silver/readings cannot be read as a whole now: its newest commit is a batch of
    a rebuild not finished (a refine was stopped half-way); None when it can."""
    if not lake.exists(SILVER_READINGS):
        return None
    newest = lake.history(SILVER_READINGS, limit=1)
    batch = _batch_of(newest[0]) if newest else None
    if batch is None or batch[3] >= batch[1]:
        return None
    version, n, _, done = batch
    return (
        f"silver/readings is being rebuilt (batch {done} of {n} for bronze version {version}): "
        "run `mmf refine` to finish it"
    )


# -- the job ----------------------------------------------------------------------------


def refine(
    lake: Lakehouse,
    config: Config,
    bronze_version: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> RefineReport:
    """``progress(step, done, total)`` is told when refining starts and as series are cleaned."""
    if progress:
        progress("refine", 0, 0)
    if not lake.exists(BRONZE_READINGS):
        raise TableError("bronze/readings does not exist: run `mmf ingest --source PATH` first")
    refine_covariates(lake)  # silver/covariates, when bronze/covariates changed
    version = lake.version(BRONZE_READINGS) if bronze_version is None else bronze_version
    current = {t: lake.txn_version(t, APP_ID) == version for t in SILVER}
    if all(current.values()):
        series = lake.read(SILVER_SERIES, columns=["freq"])
        freq = series["freq"].iloc[0] if len(series) else (config.freq or "")
        return RefineReport(version, freq, skipped=True, versions={t: lake.version(t) for t in SILVER})

    plan = lake.batches(BRONZE_READINGS, version, config.batch_rows)
    n = len(plan)
    unfinished = {t: [] if current[t] else unfinished_rebuild(lake, t) for t in SILVER}
    steps = None if config.freq else _series_steps(lake, config, version, plan)
    if steps is None:
        freq, mixed = str(config.freq), {}
    else:  # silver's frequency is the one it had before a rebuild left unfinished
        left = unfinished[SILVER_SERIES]
        freq, mixed = lakehouse_freq(lake, steps, left[-1]["version"] - 1 if left else None)
    done = {t: set(range(n)) if current[t] else _resumable(unfinished[t], version, n, freq) for t in SILVER}
    if any(done.values()):
        log.info(
            "resuming the rebuild of silver from bronze version %d: %s",
            version,
            {t: len(d) for t, d in done.items()},
        )
    _Rebuild(lake, config.replace(freq=freq), version, plan, done, mixed).run(steps, progress)
    return _report(lake, version, freq)


class _Rebuild:
    """The batches of one silver rebuild not done yet, cleaned on the engine and
    committed to each silver table that lacks them, as each batch completes."""

    def __init__(self, lake: Lakehouse, config: Config, version: int, plan: list[Range], done, mixed) -> None:
        self.lake, self.config, self.version, self.plan = lake, config, version, plan
        self.done: dict[str, set[int]] = done  # table -> its batches committed
        self.mixed: dict[str, str] = mixed
        buckets = C.bucket_of(np.array(list(mixed), dtype=object)) if mixed else np.array([], dtype=np.int32)
        starts = np.array([lo for lo, _ in plan])
        where = np.searchsorted(starts, buckets, side="right") - 1
        self.mixed_in: dict[int, list[str]] = {}
        for sid, i in zip(mixed, where):
            self.mixed_in.setdefault(int(i), []).append(sid)
        self.attrs: dict[int, pd.DataFrame] = {}  # batch -> its series' attributes (batches loaded)

    def run(self, steps: Steps | None, progress: Callable[[str, int, int], None] | None) -> None:
        n = len(self.plan)
        todo = [i for i in range(n) if any(i not in d for d in self.done.values())]
        # the series to clean, when the frequency pass counted them
        total = sum(steps.sizes[i] - len(self.mixed_in.get(i, ())) for i in todo) if steps else 0
        tell = (lambda d, t: progress("refine", d, t)) if progress else None
        if self.config.engine == "spark":
            return self._run_spark(todo, total, tell)
        results = get_engine(self.config).map_batches(
            ((i, self._loader(i)) for i in todo),
            C.SERIES_ID,
            clean_series,
            REFINE_OUT,
            self.config,
            on_error=engine_error,
            progress=tell,
            total=total,
        )
        for i, out in results:
            rows = self._mixed_rows(i)
            if rows:
                out = pd.concat([out, *rows], ignore_index=True)
            frames = dict(
                zip(SILVER, silver_frames(out, self.attrs.pop(i), self.version, str(self.config.freq)))
            )
            self._commit(i, partial(_write_frame, self.lake, frames))

    def _run_spark(self, todo: list[int], total: int, tell: Callable[[int, int], None] | None) -> None:
        """The batches on Spark: each read from bronze, cleaned and written to silver by
        the executors (:mod:`training.engines.spark_refine`), committed as the local
        engine's are; the driver gets counts."""
        from training.engines import spark_refine  # the optional pyspark

        engine, freq, done = get_engine(self.config), str(self.config.freq), 0
        fn = partial(refine_group, version=self.version, order=spark_refine.ORDER)
        on_error = partial(refine_error, version=self.version, freq=freq)
        for i in todo:
            job = GroupJob(C.SERIES_ID, fn, SILVER_ROWS, self.config, on_error, tell).after(done, total)
            mixed = self._mixed_rows(i)
            rows = (
                [silver_rows(silver_frames(pd.concat(mixed), _no_attrs(), self.version, freq))]
                if mixed
                else []
            )
            exclude = self.mixed_in.get(i, [])
            with spark_refine.clean_batch(
                engine, self.lake, self.version, self.plan[i], job, KEEP, exclude, rows
            ) as b:
                self._commit(i, b.write)
                done += b.groups
            if tell:
                tell(done, max(total, done))

    def _mixed_rows(self, i: int) -> list[pd.DataFrame]:
        """The quarantine rows of batch ``i``'s series of another frequency."""
        return [quarantine_row(sid, "mixed_frequency", self.mixed[sid]) for sid in self.mixed_in.get(i, ())]

    def _loader(self, i: int) -> Callable[[], pd.DataFrame]:
        def load() -> pd.DataFrame:
            frame = self.lake.read_buckets(BRONZE_READINGS, self.plan[i], self.version, columns=KEEP)
            frame["_row"] = np.arange(len(frame))  # the order of the rows: later ones win
            if self.mixed_in.get(i):
                frame = frame[~frame[C.SERIES_ID].isin(self.mixed_in[i])]
            self.attrs[i] = frame.groupby(C.SERIES_ID)[list(C.ATTRIBUTES)].last()
            return frame

        return load

    def _commit(self, i: int, write: Callable[..., int]) -> None:
        """Batch ``i``'s rows to each silver table that lacks them (``write(name,
        **how)`` commits the batch's rows of table ``name`` once, with the
        :meth:`~training.tables.Lakehouse.write` keywords ``how``): the rebuild's first
        commit to a table replaces it, its last one records the bronze version."""
        n = len(self.plan)
        for name in SILVER:
            done = self.done[name]
            if i in done:
                continue
            last = len(done) + 1 == n
            write(
                name,
                mode="append" if done else "overwrite",
                app_id=APP_ID if last else None,
                app_version=self.version if last else None,
                metadata={
                    BRONZE_KEY: self.version,
                    FREQ_KEY: self.config.freq,
                    BATCH_KEY: i,
                    BATCHES_KEY: n,
                    DONE_KEY: len(done) + 1,
                },
            )
            done.add(i)
            if name == SILVER[0]:
                checkpoint("mid_refine", batch=i)


def _write_frame(lake: Lakehouse, frames: dict[str, pd.DataFrame], name: str, **how: Any) -> int:
    """Table ``name``'s rows of ``frames`` committed through the lakehouse."""
    return lake.write(name, frames[name], **how)


def _no_attrs() -> pd.DataFrame:
    """No series attributes (a frame of :func:`silver_frames`'s ``attrs`` without rows)."""
    return pd.DataFrame(columns=list(C.ATTRIBUTES), index=pd.Index([], name=C.SERIES_ID), dtype=object)


def refine_group(pdf: pd.DataFrame, config: Any, version: int, order: Sequence[str]) -> pd.DataFrame:
    """One series' bronze rows -> its rows of the three silver tables
    (:data:`SILVER_ROWS`), what the local path makes of it in its batch: its rows put in
    the batch's read order (the ``order`` columns) and numbered ``_row`` as the local
    loader does, its attributes the last non-null ones, then
    :func:`~forecasting.cleaning.clean_series` and :func:`silver_frames`. Pure: the
    Spark engine runs it per series on the executors."""
    pdf = pdf.sort_values(list(order), kind="stable").drop(columns=list(order)).reset_index(drop=True)
    pdf["_row"] = np.arange(len(pdf))
    attrs = pdf.groupby(C.SERIES_ID)[list(C.ATTRIBUTES)].last()
    return silver_rows(silver_frames(clean_series(pdf, config), attrs, version, str(config.freq)))


def refine_error(series_id: str, why: str, version: int, freq: str) -> pd.DataFrame:
    """:func:`engine_error`'s quarantine row as :data:`SILVER_ROWS`."""
    return silver_rows(silver_frames(engine_error(series_id, why), _no_attrs(), version, freq))


def silver_rows(frames: tuple[pd.DataFrame, ...]) -> pd.DataFrame:
    """:func:`silver_frames`' three frames as one of :data:`SILVER_ROWS` (``kind``: the
    table), a column of another table null (NaN or NaT: Arrow takes it as a null of the
    column's type, integers included)."""
    parts = [f.assign(kind=name) for name, f in zip(SILVER, frames) if len(f)]
    if not parts:
        return SILVER_ROWS.empty_table().to_pandas()
    out = pd.concat(parts, ignore_index=True)
    for f in SILVER_ROWS:  # a column of none of them: nulls of its type
        if f.name not in out.columns:
            out[f.name] = pa.nulls(len(out), f.type).to_pandas()
    return out[SILVER_ROWS.names]


def silver_frames(
    out: pd.DataFrame, attrs: pd.DataFrame, version: int, freq: str
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A batch's cleaning results -> its rows of silver/quarantine, silver/series and
    silver/readings (the order of :data:`SILVER`); ``attrs``: the batch's series
    attributes (the last non-null value of each)."""
    bad = out["_reason"].notna()
    quarantine = out.loc[bad, [C.SERIES_ID, "_reason", "_detail"]].rename(
        columns={"_reason": "reason", "_detail": "detail"}
    )
    quarantine["bronze_version"] = version
    readings = out.loc[~bad].drop(columns=["_reason", "_detail"])
    series = readings.groupby(C.SERIES_ID).agg(
        start=(C.TS, "min"),
        end=(C.TS, "max"),
        n_obs=(C.Y, "size"),
        n_filled=("is_filled", "sum"),
        n_outliers=("is_outlier", "sum"),
        n_duplicates=("_n_duplicates", "first"),
        demand_class=("_demand_class", "first"),
    )
    series = series.join(attrs, how="left").reset_index()
    series["freq"] = freq
    series["bronze_version"] = version
    return quarantine, series, readings.drop(columns=["_n_duplicates", "_demand_class"])


def _report(lake: Lakehouse, version: int, freq: str) -> RefineReport:
    """The counts of the silver tables as rebuilt (read from the Delta log, and the
    quarantine's reasons): right whether this run did every batch or resumed."""
    versions = {t: lake.version(t) for t in SILVER}
    reasons = lake.arrow(SILVER_QUARANTINE, versions[SILVER_QUARANTINE], columns=["reason"]).column(0)
    return RefineReport(
        version,
        freq,
        n_series=lake.n_rows(SILVER_SERIES, versions[SILVER_SERIES]),
        n_rows=lake.n_rows(SILVER_READINGS, versions[SILVER_READINGS]),
        quarantined=dict(Counter(reasons.to_pylist())),
        versions=versions,
    )
