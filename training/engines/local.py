"""The embedded default engine: a process pool on this machine.

Groups are streamed to the pool in small chunks of whole series (a bounded number in
flight: :attr:`LocalEngine.in_flight`), so memory holds the input frame plus the
results, not a copy per worker. :meth:`LocalEngine.stream` (``map_batches``) keeps one pool across a stream
of batches, loading the next batch while the last chunks of the previous one run, and
hands back each batch's results as it completes. A worker that dies (OOM killer, SIGKILL) fails only the chunk it held: its
series are retried one by one in a fresh pool, and a series that kills its worker again
gets ``on_error(series, reason)`` rows instead. BLAS is pinned to one thread per worker.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import os
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from forecasting.config import Config
from training import checkpoints
from training.engines.base import Batch, Engine, GroupFn, GroupJob, concat, conform

log = logging.getLogger(__name__)

Group = tuple[str, pd.DataFrame]  # (key, rows)
Tagged = tuple[int, str, pd.DataFrame]  # (batch index, key, rows)
OWN = ("forecasting", "training", "registry")  # this product's packages


def iter_groups(frame: pd.DataFrame, by: str) -> Iterator[Group]:
    """(key, rows) for each group: the frame sorted by ``by`` once (not at all when it
    is), each group a slice of it (a view: copy it before changing it). The keys are
    sorted as integer codes (``pd.factorize``, sorted): an argsort of Python strings
    took four times as long, and a batch is grouped at every step of a night."""
    if frame.empty:
        return
    keys = frame[by].to_numpy()
    codes, _ = pd.factorize(keys, sort=True)
    order = np.argsort(codes, kind="stable")
    sorted_keys, sorted_codes = keys[order], codes[order]
    bounds = np.flatnonzero(sorted_codes[1:] != sorted_codes[:-1]) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [len(keys)]))
    if (np.diff(order) != 1).any():
        frame = frame.iloc[order]
    for s, e in zip(starts, ends):
        yield str(sorted_keys[s]), frame.iloc[s:e]


def preload() -> list[str]:
    """What the forkserver imports once, for every worker it forks: what each worker
    would import first anyway. A worker starts by running the driver's main module again
    as ``__mp_main__`` (multiprocessing's ``prepare``), which for the ``mmf`` command, a
    job script or ``python -m benchmarks...`` imports the jobs, MLflow and
    hierarchicalforecast: seconds of CPU per worker and per pool, a third of a nightly's
    worker time at 2,000 meters when each pool's workers did it. So when the driver has a
    main module (run from a file or by name), the product modules the driver has imported
    are preloaded, and the main module's run in the worker finds them imported. The main
    module itself is not: a worker runs it again anyway, and one run by name that is
    already imported makes ``runpy`` warn in every worker. (Python 3.11's forkserver never
    preloads a main file itself: it filters the preparation data for ``main_path``, a key
    named ``init_main_from_path``.) ``python -m pytest`` and interactive drivers, whose
    workers run no main module, preload nothing more: a test session's imports stay its
    own."""
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None) or ""
    # as multiprocessing does: a package's __main__ is not run again in the workers
    runs_again = not (name == "__main__" or name.endswith(".__main__"))
    if runs_again and (name or getattr(main, "__file__", None)):
        extra = sorted(m for m in list(sys.modules) if m.partition(".")[0] in OWN and m != name)
    else:
        extra = []
    return ["forecasting.pipeline", *extra]


def _driver_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, someone else's
        return True
    try:  # killed but not yet reaped by its parent
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _watch_driver(pid: int, every_s: float = 1.0) -> None:
    while _driver_alive(pid):
        time.sleep(every_s)
    os._exit(1)


def _init_worker(driver_pid: int | None = None, hook: checkpoints.Hook | None = None) -> None:
    # A driver killed with SIGKILL cannot shut its pool down, and the workers would wait
    # on their task queue forever: each one leaves when its driver is gone.
    if driver_pid is not None:
        threading.Thread(
            target=_watch_driver, args=(driver_pid,), daemon=True, name="mmf-driver-watch"
        ).start()
    checkpoints.set_hook(hook)  # the driver's, so that the worker checkpoints reach it
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except Exception:  # threadpoolctl is best effort
        pass


def _run_chunk(
    fn: GroupFn, config: Any, groups: list[Group], runs: list[int], schema: pa.Schema
) -> list[pd.DataFrame]:
    """In a worker: ``fn`` on each (key, rows) group, each result with exactly
    ``schema``'s columns; the results of each run of ``runs`` consecutive groups (of
    one batch) come back as one frame, so that the driver handles a frame per chunk,
    not per series."""
    function = getattr(fn, "__name__", "")
    out, it = [], iter(groups)
    for n in runs:
        parts = []
        for key, g in itertools.islice(it, n):
            checkpoints.checkpoint("worker_group", function=function, key=key)
            parts.append(conform(fn(g, config), schema))
        out.append(concat(parts, schema))
    return out


def _chunks(groups: Iterator[Group], size: int) -> Iterator[list[Group]]:
    batch: list[Group] = []
    for item in groups:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class _Batches:
    """The batches of one :meth:`LocalEngine.stream`: the groups each still waits for, and
    the results each has; a batch is complete when it is loaded and none is left."""

    def __init__(self, job: GroupJob, total: int) -> None:
        self.job, self.total, self.done = job, total, 0
        self.keys: list[Any] = []
        self.left: dict[int, int] = {}
        self.parts: dict[int, list[pd.DataFrame]] = {}
        self.loaded: set[int] = set()

    def groups(self, batches: Iterable[Batch]) -> Iterator[Tagged]:
        """Every group of every batch, tagged with its batch; each batch loaded only when
        the previous one is all handed out."""
        for tag, (key, load) in enumerate(batches):
            frame = load()
            self.keys.append(key)
            self.parts[tag] = []
            self.left[tag] = int(frame[self.job.by].nunique()) if len(frame) else 0
            self.loaded.add(tag)
            for gkey, g in iter_groups(frame, self.job.by):
                yield tag, gkey, g
            del frame

    def add(self, tag: int, results: list[pd.DataFrame], n: int = 1) -> Iterator[tuple[Any, pd.DataFrame]]:
        """Record the results of ``n`` groups of batch ``tag``; yields the batch when
        they were the last ones left."""
        self.parts[tag].extend(results)
        self.left[tag] -= n
        self.done += n
        self.job.report(self.done, max(self.total, self.done))
        if self.left[tag] == 0:
            yield self._complete(tag)

    def rest(self) -> Iterator[tuple[Any, pd.DataFrame]]:
        """The loaded batches not yielded yet (those with no group at all)."""
        for tag in sorted(t for t in self.loaded if t in self.parts and self.left[t] == 0):
            yield self._complete(tag)

    def _complete(self, tag: int) -> tuple[Any, pd.DataFrame]:
        parts = self.parts.pop(tag)
        return self.keys[tag], concat(parts, self.job.schema)


class LocalEngine(Engine):
    name = "local"

    def __init__(
        self,
        workers: int | None = None,
        chunk_series: int = 8,
        queued_series: int = 1024,
        queued_rows: int | None = None,
    ) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.chunk_series = chunk_series
        self.queued_series = queued_series
        self.queued_rows = queued_rows

    @property
    def in_flight(self) -> int:
        """The most chunks submitted to the pool and not yet collected: two per worker,
        or enough for ``queued_series`` series when that is more. The driver submits
        only between its own steps, and after each completed batch the job it streams to
        commits and derives that batch's rows (two or three seconds a batch at 10,000
        meters): with two chunks of cheap series (a carried model, a score) each the
        workers ran dry in that time; a queue of a thousand such series (two seconds of
        the pool's work) keeps them going. What it costs is memory: the queued series'
        rows (the chunks hold slices of their batches, so those batches stay loaded),
        bounded by ``queued_rows`` too (:meth:`room`)."""
        return max(2 * self.workers, -(-self.queued_series // self.chunk_series))

    def room(self, chunks: int, rows: int) -> bool:
        """Whether another chunk may be submitted with ``chunks`` chunks of ``rows``
        input rows in flight: fewer than :attr:`in_flight` chunks and, past two chunks
        per worker, fewer than ``queued_rows`` rows when that is set (:meth:`from_config`
        sets two batches' rows, ``2 x batch_rows``: a job holds a few batches at most,
        however long its series are)."""
        if chunks >= self.in_flight:
            return False
        return chunks < 2 * self.workers or self.queued_rows is None or rows < self.queued_rows

    @classmethod
    def from_config(cls, config: Config) -> LocalEngine:
        return cls(workers=config.workers, queued_rows=2 * int(config.batch_rows))

    @classmethod
    def warm(cls, config: Config) -> None:
        """The forkserver started now: it imports :func:`preload`'s modules while the
        driver goes on (the nightly's ingest), not when the first pool waits for it;
        not at all with one worker (the series run in the driver, no pool)."""
        if cls.from_config(config).workers == 1:
            return
        cls._context()
        from multiprocessing import forkserver

        forkserver.ensure_running()

    @staticmethod
    def _context() -> Any:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(preload())  # used when the forkserver starts
        return ctx

    def _pool(self, workers: int) -> ProcessPoolExecutor:
        ctx = self._context()
        initargs = (os.getpid(), checkpoints.installed())
        return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=initargs)

    def run(self, frame: pd.DataFrame, job: GroupJob) -> pd.DataFrame:
        total = int(frame[job.by].nunique()) if len(frame) else 0
        for _key, result in self.stream([(None, lambda: frame)], job, total):
            return result
        return concat([], job.schema)  # pragma: no cover - one batch is always yielded

    def stream(
        self, batches: Iterable[Batch], job: GroupJob, total: int
    ) -> Iterator[tuple[Any, pd.DataFrame]]:
        """One pool for all batches: the next batch is loaded as soon as the previous one
        is all submitted, so the workers never wait on a batch boundary; a batch is yielded
        when all its groups are done."""
        state = _Batches(job, total)
        groups = state.groups(batches)
        if self.workers == 1:
            for tag, _key, g in groups:
                yield from state.add(tag, [job.conform(job.fn(g.copy(), job.config))])
            yield from state.rest()
            return
        retry: list[Tagged] = []
        yield from self._run_in_pool(groups, job, state, retry)
        if retry:
            log.warning("a worker died; retrying %d series one by one", len(retry))
        yield from self._retry(retry, job, state)
        yield from state.rest()

    def _run_in_pool(
        self, groups: Iterator[Tagged], job: GroupJob, state: "_Batches", retry: list[Tagged]
    ) -> Iterator[tuple[Any, pd.DataFrame]]:
        """Chunks of ``groups`` through the pool, each batch yielded as it completes; the
        groups of the chunks a dead worker lost (the whole pool's, when it breaks) go
        to ``retry``."""
        source = _chunks(groups, self.chunk_series)
        # each pending chunk: its groups, its runs of groups per batch, its input rows
        pending: dict[Future, tuple[list[Tagged], list[tuple[int, int]], int]] = {}
        pool = self._pool(self.workers)
        try:
            exhausted = False
            while pending or not exhausted:
                while not exhausted and self.room(len(pending), sum(n for _, _, n in pending.values())):
                    batch = next(source, None)
                    if batch is None:
                        exhausted = True
                        break
                    chunk = [(key, g) for _, key, g in batch]
                    runs = [(tag, len(list(run))) for tag, run in itertools.groupby(t for t, _, _ in batch)]
                    fut = pool.submit(_run_chunk, job.fn, job.config, chunk, [n for _, n in runs], job.schema)
                    pending[fut] = (batch, runs, sum(len(g) for _, g in chunk))
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                broken = False
                for fut in finished:
                    batch, runs, _ = pending.pop(fut)
                    try:
                        results = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        retry.extend(batch)
                        continue
                    for (tag, n), r in zip(runs, results):
                        yield from state.add(tag, [r], n)
                if broken:
                    # the pool is unusable: every chunk still in flight is lost with it
                    for batch, _, _ in pending.values():
                        retry.extend(batch)
                    pending.clear()
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = self._pool(self.workers)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _retry(
        self, retry: list[Tagged], job: GroupJob, state: "_Batches"
    ) -> Iterator[tuple[Any, pd.DataFrame]]:
        """The groups a dead worker lost, one at a time in a pool of one worker: a group
        that kills that worker too gets ``job.on_error`` (the pool is replaced for the
        next group; the others share one pool rather than starting one each)."""
        pool: ProcessPoolExecutor | None = None
        try:
            for tag, key, g in retry:
                pool = pool or self._pool(1)
                try:
                    result = pool.submit(
                        _run_chunk, job.fn, job.config, [(key, g)], [1], job.schema
                    ).result()[0]
                except BrokenProcessPool:
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = None
                    reason = (
                        "worker process died twice while processing this series (killed or out of memory)"
                    )
                    log.error("series %s: %s", key, reason)
                    if job.on_error is None:
                        raise
                    result = job.conform(job.on_error(key, reason))
                yield from state.add(tag, [result])
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
