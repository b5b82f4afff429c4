"""The engine interface shared by the local and Spark engines."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from forecasting.config import Config
from registry.aggregates import Stat, Totals

GroupFn = Callable[[pd.DataFrame, Any], pd.DataFrame]
ErrorFn = Callable[[str, str], pd.DataFrame]  # (group key, reason) -> result rows
ProgressFn = Callable[[int, int], None]  # (groups done, groups in all)
# One batch of :meth:`Engine.map_batches`: its key and how to load its rows (called
# when the engine is ready for them, so at most a couple of batches are in memory).
Batch = tuple[Any, Callable[[], Any]]
RowsFn = Callable[[pd.DataFrame], pd.DataFrame]  # rows of a table -> rows derived from them (pure)
STATUS = "status"  # results with this column are counted by its values (Summary.statuses)


@dataclass(frozen=True)
class TableBatch:
    """A batch read straight from a lakehouse table: the rows of the series whose bucket is
    in ``buckets`` (at ``version``; only ``columns``; ``filters`` as
    :meth:`~training.tables.Lakehouse.read` takes them). Calling it reads them as pandas
    (the local engine); the Spark engine reads the same rows from Delta on its executors
    instead, so they never pass through the driver."""

    lake: Any  # training.tables.Lakehouse
    table: str
    buckets: tuple[int, int]
    version: int | None = None
    columns: tuple[str, ...] | None = None
    filters: tuple[tuple[str, str, Any], ...] = ()

    def __call__(self) -> pd.DataFrame:
        cols = list(self.columns) if self.columns else None
        return self.lake.read_buckets(
            self.table, self.buckets, self.version, cols, list(self.filters) or None
        )


@dataclass(frozen=True)
class Summary:
    """What a sink committed for one batch, small whatever the batch's size: its number
    of rows, those rows by ``status`` (when the rows have that column; a null status is
    not counted) and the table version of its commit (``None``: nothing committed)."""

    rows: int
    statuses: dict[str, int] = field(default_factory=dict)
    version: int | None = None

    @classmethod
    def of(cls, rows: pd.DataFrame) -> Summary:
        if STATUS not in rows.columns or not len(rows):
            return cls(len(rows))
        counts = rows[STATUS].value_counts()
        return cls(len(rows), {str(k): int(n) for k, n in counts.items()})


@dataclass(frozen=True)
class Sink:
    """Where an engine commits a batch's rows itself (``map_batches(..., sink=...)``,
    :meth:`Engine.derive`), so they never come back to the job: appended to ``table`` of
    ``lake`` (a :class:`~training.tables.Lakehouse`) with the constant ``columns`` set
    on every row (``None``: null), in one Delta commit carrying ``metadata`` (read back
    by :meth:`~training.tables.Lakehouse.history` alike from either engine's commits). A
    batch without rows commits nothing, unless ``create`` is set and the table does not
    exist yet (then its empty commit creates it) or ``always`` is set.

    ``predicate`` makes the commit a replace-where (the rows where it holds are replaced
    by the batch's); ``app_id``/``app_version`` record a Delta application transaction
    in the commit (as :meth:`~training.tables.Lakehouse.write` records it: never a
    reason to skip the write)."""

    lake: Any  # training.tables.Lakehouse
    table: str
    columns: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    create: bool = False
    predicate: str | None = None
    app_id: str | None = None
    app_version: int | None = None
    always: bool = False

    def commits(self, rows: int) -> bool:
        """Whether a batch of ``rows`` rows is committed."""
        return rows > 0 or self.always or (self.create and not self.lake.exists(self.table))

    def commit(self, rows: pd.DataFrame) -> Summary:
        """``rows`` committed here, through the lakehouse (deltalake)."""
        summary = Summary.of(rows)
        if not self.commits(summary.rows):
            return summary
        version = self.lake.write(
            self.table,
            rows.assign(**self.columns),
            mode="overwrite" if self.predicate else "append",
            predicate=self.predicate,
            app_id=self.app_id,
            app_version=self.app_version,
            metadata=dict(self.metadata),
        )
        return replace(summary, version=int(version))


@dataclass(frozen=True)
class KeptSink(Sink):
    """A :class:`Sink` that also keeps the rows it committed, as the table stores them
    (:meth:`~training.tables.Lakehouse.as_written`), in ``kept`` under ``key``: for a
    job that derives more from a batch's committed rows on this machine (the local
    engine), so that it does not read them back from the table."""

    kept: dict = field(default_factory=dict)
    key: Any = None

    @classmethod
    def keeping(cls, sink: Sink, kept: dict, key: Any) -> KeptSink:
        """``sink`` (every setting of it) keeping its rows in ``kept`` under ``key``."""
        return cls(**{f.name: getattr(sink, f.name) for f in fields(Sink)}, kept=kept, key=key)

    def commit(self, rows: pd.DataFrame) -> Summary:
        summary = super().commit(rows)
        if summary.version is not None:
            self.kept[self.key] = self.lake.as_written(self.table, rows.assign(**self.columns))
        return summary


SinkFn = Callable[[Any], Sink]  # batch key -> the sink of that batch's results


@dataclass(frozen=True)
class GroupJob:
    """One :meth:`Engine.map_groups` call: ``fn(group, config)`` on each group of rows
    sharing ``by``, each result with exactly ``schema``'s columns."""

    by: str
    fn: GroupFn
    schema: pa.Schema
    config: Any
    on_error: ErrorFn | None = None
    progress: ProgressFn | None = None

    def conform(self, df: pd.DataFrame) -> pd.DataFrame:
        return conform(df, self.schema)

    def report(self, done: int, total: int) -> None:
        if self.progress:
            self.progress(done, total)

    def after(self, before: int, total: int) -> GroupJob:
        """This job for one batch of a stream: its progress counts on from the ``before``
        groups of earlier batches, out of ``total`` (or of as many as are done)."""

        def told(done: int, _total: int) -> None:
            self.report(before + done, max(total, before + done))

        return replace(self, progress=told)


class Engine:
    name = "base"

    @classmethod
    def from_config(cls, config: Config) -> Engine:
        """The engine as ``config`` sets it up (:func:`training.engines.get_engine`)."""
        raise NotImplementedError

    @classmethod
    def warm(cls, config: Config) -> None:
        """Start, in the background, what the engine's first job under ``config`` would
        wait for (a job of several steps calls it first); nothing by default."""

    def map_groups(
        self,
        frame: Any,
        by: str,
        fn: GroupFn,
        schema: pa.Schema,
        config: Any,
        on_error: ErrorFn | None = None,
        progress: ProgressFn | None = None,
    ) -> pd.DataFrame:
        """``fn(group, config)`` for each group of ``frame``'s rows sharing ``by``: the
        results concatenated, with exactly ``schema``'s columns. A group whose worker
        fails gets ``on_error(key, reason)`` rows (``None``: the failure is raised);
        ``progress(done, total)`` is told as groups finish."""
        return self.run(frame, GroupJob(by, fn, schema, config, on_error, progress))

    def run(self, frame: Any, job: GroupJob) -> pd.DataFrame:
        raise NotImplementedError

    def map_batches(
        self,
        batches: Iterable[Batch],
        by: str,
        fn: GroupFn,
        schema: pa.Schema,
        config: Any,
        on_error: ErrorFn | None = None,
        progress: ProgressFn | None = None,
        total: int = 0,
        sink: SinkFn | None = None,
    ) -> Iterator[tuple[Any, Any]]:
        """:meth:`map_groups` over a stream of batches of whole groups: yields ``(key,
        results)`` as each batch's groups are all done (not necessarily in the order
        given), so results can be committed batch by batch and memory holds a batch or
        two, never the whole table. ``progress(done, total)`` counts groups across
        batches (``total``: the groups of all batches, when known).

        With ``sink`` (batch key -> :class:`Sink`) the engine commits each batch's
        results itself, in a commit of their own, and yields ``(key, Summary)``
        instead: the results never come back to the caller (on Spark, not even to the
        driver)."""
        job = GroupJob(by, fn, schema, config, on_error, progress)
        if sink is None:
            return self.stream(batches, job, total)
        return self.stream_into(batches, job, total, sink)

    def stream_into(
        self, batches: Iterable[Batch], job: GroupJob, total: int, sink: SinkFn
    ) -> Iterator[tuple[Any, Summary]]:
        """Each batch's results of :meth:`stream` committed here by its sink (engines
        whose results live elsewhere override it and commit them there)."""
        for key, results in self.stream(batches, job, total):
            yield key, sink(key).commit(results)

    def derive(self, source: TableBatch, fn: RowsFn, schema: pa.Schema, sink: Sink) -> Summary:
        """Rows computed from a table's batch, committed by ``sink``: ``fn`` (pure, row by
        row: the engine may hand it the batch in any number of pieces) maps ``source``'s
        rows to rows of ``schema`` (missing nullable columns are null)."""
        return sink.commit(fn(source()))

    def derive_all(
        self, parts: Sequence[tuple[TableBatch, RowsFn]], schema: pa.Schema, sink: Sink
    ) -> Summary:
        """:meth:`derive` from several sources at once: ``fn(source)`` of each
        ``(source, fn)``, all committed by ``sink`` in one commit."""
        rows = [conform_rows(fn(source()), schema) for source, fn in parts]
        return sink.commit(concat(rows, schema))

    def aggregate(
        self, sources: Sequence[TableBatch], facts: RowsFn, medians: Sequence[str] = ()
    ) -> dict[str, Stat]:
        """The facts of ``sources``' rows summed up per key (:mod:`registry.aggregates`):
        ``facts`` (pure, row by row) maps rows to rows ``key, value``; the result is a
        :class:`~registry.aggregates.Stat` per key (the median of the values only for
        ``medians``). Here batch by batch, each source read and summed up on its own
        (exact sums); engines that hold the data elsewhere sum up there, and only the
        sums come back."""
        totals = Totals(medians)
        for source in sources:
            totals.add(facts(source()))
        return totals.stats()

    def stream(
        self, batches: Iterable[Batch], job: GroupJob, total: int
    ) -> Iterator[tuple[Any, pd.DataFrame]]:
        """Batch after batch through :meth:`run` (engines that can overlap batches override it)."""
        done = 0
        for key, load in batches:
            frame = load()
            result = self.run(frame, job.after(done, total))
            done += count_groups(frame, job.by)
            yield key, result


def count_groups(frame: Any, by: str) -> int:
    """The number of distinct ``by`` values of a pandas frame (0 for anything else)."""
    return int(frame[by].nunique()) if isinstance(frame, pd.DataFrame) and len(frame) else 0


def conform(df: pd.DataFrame, schema: pa.Schema) -> pd.DataFrame:
    """Exactly ``schema``'s columns, in order (a missing column is an error of ``fn``);
    ``df`` itself when it has them (selecting copies the frame: a tenth of a carried
    series' time)."""
    if list(df.columns) == schema.names:
        return df
    missing = [n for n in schema.names if n not in df.columns]
    if missing:
        raise ValueError(f"group function returned no column(s) {missing}; expected {schema.names}")
    return df[schema.names]


def conform_rows(rows: pd.DataFrame, schema: pa.Schema) -> pd.DataFrame:
    """``rows`` with ``schema``'s columns in order, a missing one null (as a derived
    batch is written)."""
    return rows.reindex(columns=schema.names)


def concat(parts: list[pd.DataFrame], schema: pa.Schema) -> pd.DataFrame:
    """The non-empty ``parts`` as one frame (``schema``'s empty frame when there is none).

    Parts with the same columns and numpy dtypes (the usual case: conformed results of
    one function) are joined column by column with numpy, the frame ``pd.concat`` makes:
    pandas checks every value of an all-null object column (a null ``reason`` of every
    clean series) in Python before joining it, which took half of refine's driver time
    at 10,000 series."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return schema.empty_table().to_pandas()
    first = parts[0]
    dtypes = list(first.dtypes)
    same = all(list(p.columns) == list(first.columns) and list(p.dtypes) == dtypes for p in parts) and all(
        isinstance(d, np.dtype) for d in dtypes
    )
    if len(parts) == 1 or not same or first.columns.has_duplicates:
        return pd.concat(parts, ignore_index=True)
    columns = {name: np.concatenate([p[name].to_numpy() for p in parts]) for name in first.columns}
    return pd.DataFrame(columns, columns=first.columns)
