"""The embedded default engine: a process pool on this machine.

Groups are streamed to the pool in small chunks of whole series (at most a few chunks
in flight per worker), so memory holds the input frame plus the results, not a copy
per worker. A worker that dies (OOM killer, SIGKILL) fails only the chunk it held: its
series are retried one by one in a fresh pool, and a series that kills its worker again
gets ``on_error(series, reason)`` rows instead. BLAS is pinned to one thread per worker.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa

from forecasting.config import Config
from training import faults
from training.engines.base import Engine, ErrorFn, GroupFn, conform

log = logging.getLogger(__name__)


def iter_groups(frame: pd.DataFrame, by: str) -> Iterator[tuple[str, pd.DataFrame]]:
    """(key, rows) for each group, without copying the frame per group."""
    if frame.empty:
        return
    keys = frame[by].to_numpy()
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    bounds = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [len(keys)]))
    for s, e in zip(starts, ends):
        yield str(sorted_keys[s]), frame.iloc[order[s:e]]


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


def _init_worker(driver_pid: int | None = None) -> None:
    # A driver killed with SIGKILL cannot shut its pool down, and the workers would wait
    # on their task queue forever: each one leaves when its driver is gone.
    if driver_pid is not None:
        threading.Thread(target=_watch_driver, args=(driver_pid,), daemon=True, name="mmf-driver-watch").start()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except Exception:  # threadpoolctl is best effort
        pass


def _run_chunk(
    fn: GroupFn,
    groups: list[pd.DataFrame],
    config: Any,
    keys: list[str] | None = None,
    doomed: frozenset[str] = frozenset(),
) -> list[pd.DataFrame]:
    out = []
    for i, g in enumerate(groups):
        if doomed and keys:  # test hook (training.faults): this worker dies on these keys
            faults.kill_worker_if(keys[i], doomed)
        out.append(fn(g, config))
    return out


class LocalEngine(Engine):
    name = "local"

    def __init__(self, workers: int | None = None, chunk_series: int = 8) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.chunk_series = chunk_series

    @classmethod
    def from_config(cls, config: Config) -> LocalEngine:
        return cls(workers=config.workers)

    def _pool(self) -> ProcessPoolExecutor:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["forecasting.pipeline"])
        return ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker, initargs=(os.getpid(),))

    def map_groups(
        self,
        frame: pd.DataFrame,
        by: str,
        fn: GroupFn,
        schema: pa.Schema,
        config: Any,
        on_error: ErrorFn | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> pd.DataFrame:
        groups = iter_groups(frame, by)
        total = int(frame[by].nunique()) if len(frame) else 0
        done = 0
        out: list[pd.DataFrame] = []
        retry: list[tuple[str, pd.DataFrame]] = []

        def chunks() -> Iterator[list[tuple[str, pd.DataFrame]]]:
            batch: list[tuple[str, pd.DataFrame]] = []
            for item in groups:
                batch.append(item)
                if len(batch) >= self.chunk_series:
                    yield batch
                    batch = []
            if batch:
                yield batch

        if total == 0:
            return schema.empty_table().to_pandas()
        if self.workers == 1:
            for _key, g in iter_groups(frame, by):
                out.append(conform(fn(g, config), schema))
                done += 1
                if progress:
                    progress(done, total)
            return _concat(out, schema)

        source = chunks()
        max_in_flight = 2 * self.workers
        doomed = faults.worker_kills(getattr(fn, "__name__", ""))  # empty outside the reliability tests
        pool = self._pool()
        pending: dict[Future, list[tuple[str, pd.DataFrame]]] = {}
        try:
            exhausted = False
            while pending or not exhausted:
                while not exhausted and len(pending) < max_in_flight:
                    try:
                        batch = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    pending[pool.submit(_run_chunk, fn, [g for _, g in batch], config, [k for k, _ in batch], doomed)] = batch
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                broken = False
                for fut in finished:
                    batch = pending.pop(fut)
                    try:
                        results = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        retry.extend(batch)
                        continue
                    out.extend(conform(r, schema) for r in results)
                    done += len(batch)
                    if progress:
                        progress(done, total)
                if broken:
                    # the pool is unusable: every chunk still in flight is lost with it
                    for batch in pending.values():
                        retry.extend(batch)
                    pending.clear()
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = self._pool()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

        if retry:
            log.warning("a worker died; retrying %d series one by one", len(retry))
            for key, g in retry:
                out.append(self._retry_one(key, g, fn, schema, config, on_error))
                done += 1
                if progress:
                    progress(done, total)
        return _concat(out, schema)

    def _retry_one(self, key, g, fn, schema, config, on_error) -> pd.DataFrame:
        ctx = mp.get_context("forkserver")
        with ProcessPoolExecutor(1, mp_context=ctx, initializer=_init_worker, initargs=(os.getpid(),)) as pool:
            try:
                doomed = faults.worker_kills(getattr(fn, "__name__", ""))
                return conform(pool.submit(_run_chunk, fn, [g], config, [key], doomed).result()[0], schema)
            except BrokenProcessPool:
                reason = "worker process died twice while processing this series (killed or out of memory)"
                log.error("series %s: %s", key, reason)
                if on_error is None:
                    raise
                return conform(on_error(key, reason), schema)


def _concat(parts: list[pd.DataFrame], schema: pa.Schema) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    if not parts:
        return schema.empty_table().to_pandas()
    return pd.concat(parts, ignore_index=True)
