"""The engine interface shared by the local and Spark engines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import pandas as pd
import pyarrow as pa

from forecasting.config import Config

GroupFn = Callable[[pd.DataFrame, Any], pd.DataFrame]
ErrorFn = Callable[[str, str], pd.DataFrame]  # (group key, reason) -> result rows
ProgressFn = Callable[[int, int], None]  # (groups done, groups in all)
# One batch of :meth:`Engine.map_batches`: its key and how to load its rows (called
# when the engine is ready for them, so at most a couple of batches are in memory).
Batch = tuple[Any, Callable[[], Any]]


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


class Engine:
    name = "base"

    @classmethod
    def from_config(cls, config: Config) -> Engine:
        """The engine as ``config`` sets it up (:func:`training.engines.get_engine`)."""
        raise NotImplementedError

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
    ) -> Iterator[tuple[Any, pd.DataFrame]]:
        """:meth:`map_groups` over a stream of batches of whole groups: yields ``(key,
        results)`` as each batch's groups are all done (not necessarily in the order
        given), so results can be committed batch by batch and memory holds a batch or
        two, never the whole table. ``progress(done, total)`` counts groups across
        batches (``total``: the groups of all batches, when known)."""
        return self.stream(batches, GroupJob(by, fn, schema, config, on_error, progress), total)

    def stream(
        self, batches: Iterable[Batch], job: GroupJob, total: int
    ) -> Iterator[tuple[Any, pd.DataFrame]]:
        """Batch after batch through :meth:`run` (engines that can overlap batches override it)."""
        done = 0
        for key, load in batches:
            frame = load()

            def told(d: int, _t: int, before: int = done) -> None:
                job.report(before + d, max(total, before + d))

            inner = GroupJob(job.by, job.fn, job.schema, job.config, job.on_error, told)
            result = self.run(frame, inner)
            done += count_groups(frame, job.by)
            yield key, result


def count_groups(frame: Any, by: str) -> int:
    """The number of distinct ``by`` values of a pandas frame (0 for anything else)."""
    return int(frame[by].nunique()) if isinstance(frame, pd.DataFrame) and len(frame) else 0


def conform(df: pd.DataFrame, schema: pa.Schema) -> pd.DataFrame:
    """Exactly ``schema``'s columns, in order (a missing column is an error of ``fn``)."""
    missing = [n for n in schema.names if n not in df.columns]
    if missing:
        raise ValueError(f"group function returned no column(s) {missing}; expected {schema.names}")
    return df[schema.names]


def concat(parts: list[pd.DataFrame], schema: pa.Schema) -> pd.DataFrame:
    """The non-empty ``parts`` as one frame (``schema``'s empty frame when there is none)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return schema.empty_table().to_pandas()
    return pd.concat(parts, ignore_index=True)
