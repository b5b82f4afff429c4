"""Fault injection for the tests: a checkpoint hook (:mod:`training.checkpoints`) that
kills, pauses or fails the process, a local-engine worker or a Spark task at a named
checkpoint. Nothing of it is in the product: a test installs it with
``checkpoints.set_hook(Faults(...))``, or starts ``mmf`` through
:mod:`tests.reliability.launch`, which installs it from the environment:

``MMF_TEST_KILL_AT=<checkpoint>``
    SIGKILL the process when it reaches ``<checkpoint>`` (one of ``checkpoints.POINTS``).
``MMF_TEST_KILL_AT=<checkpoint>:<info>=<value>``
    SIGKILL the process when it reaches ``<checkpoint>`` with that info (e.g.
    ``mid_train:batches_done=1``: once one batch of the training is committed).
``MMF_TEST_KILL_AT=worker:<function>:<key>[,<key>...]``
    SIGKILL the local-engine worker that is about to run ``<function>`` (e.g.
    ``retrain_series``, what train maps) on one of these group keys, every time, so the engine's one-by-one
    retry dies too.
``MMF_TEST_PAUSE_AT=<checkpoint>:<path>``
    On reaching ``<checkpoint>``, create ``<path>.reached`` and wait until ``<path>``
    exists (at most :data:`PAUSE_MAX_S` seconds), so a test can line up processes.
``MMF_TEST_BUSY_AT=<checkpoint>:<parquet file>``
    On reaching ``<checkpoint>``, start Arrow scans of ``<parquet file>`` through a
    Python file system in daemon threads that never end, so Arrow's (C++) I/O threads
    are calling into the interpreter when the process exits, as deltalake's reads do.

The hook travels to the engines' workers pickled by reference: this module must be
importable as ``tests.reliability.faults`` (run from the repository root).
"""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from training import checkpoints

KILL_ENV = "MMF_TEST_KILL_AT"
PAUSE_ENV = "MMF_TEST_PAUSE_AT"
BUSY_ENV = "MMF_TEST_BUSY_AT"
PAUSE_MAX_S = 600.0


class InjectedError(RuntimeError):
    """Raised by :class:`Faults` where a test asked for a failure."""


@dataclass(frozen=True)
class Faults:
    kill_at: str | None = None  # <checkpoint>, or worker:<function>:<key>[,<key>...]
    pause_at: str | None = None  # <checkpoint>:<gate path>
    raise_at: str | None = None  # <checkpoint>: raise InjectedError there
    fail_first_attempt: str | None = None  # a folder: each Spark task's first attempt raises, marked there
    busy_at: str | None = None  # <checkpoint>:<parquet file>: native scans still running at exit

    def __post_init__(self) -> None:
        for spec in (self.kill_at, self.pause_at, self.raise_at, self.busy_at):
            name = (spec or "").split(":", 1)[0]
            assert not spec or name == "worker" or name in checkpoints.NAMES, spec

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Faults | None:
        """The faults ``MMF_TEST_KILL_AT``, ``MMF_TEST_PAUSE_AT`` and ``MMF_TEST_BUSY_AT``
        ask for (``None``: none)."""
        kill, pause, busy = (env.get(k) or None for k in (KILL_ENV, PAUSE_ENV, BUSY_ENV))
        return cls(kill_at=kill, pause_at=pause, busy_at=busy) if kill or pause or busy else None

    def __call__(self, name: str, **info: Any) -> None:
        if (
            name == self.kill_at
            or self._kill_with(name, info)
            or (name == "worker_group" and self._doomed(**info))
        ):
            os.kill(os.getpid(), signal.SIGKILL)
        if self.pause_at and self.pause_at.split(":", 1)[0] == name:
            _pause(Path(self.pause_at.split(":", 1)[1]))
        if self.busy_at and self.busy_at.split(":", 1)[0] == name:
            _busy(Path(self.busy_at.split(":", 1)[1]))
        if name == self.raise_at:
            raise InjectedError(f"injected crash at checkpoint {name} {info}")
        if name == "spark_task" and self.fail_first_attempt and info.get("attempt") == 0:
            where = f"stage{info['stage']}-part{info['partition']}-attempt0"
            (Path(self.fail_first_attempt) / where).touch()
            raise InjectedError(f"injected failure of the first attempt of task {where}")

    def _kill_with(self, name: str, info: dict[str, Any]) -> bool:
        """``kill_at`` is ``<checkpoint>:<info>=<value>`` and this is that checkpoint with that info."""
        point, _, cond = (self.kill_at or "").partition(":")
        key, eq, value = cond.partition("=")
        return point == name and point != "worker" and bool(eq) and str(info.get(key)) == value

    def _doomed(self, function: str, key: str) -> bool:
        parts = (self.kill_at or "").split(":", 2)
        return len(parts) == 3 and parts[:2] == ["worker", function] and key in parts[2].split(",")


def _pause(gate: Path) -> None:
    Path(f"{gate}.reached").touch()
    deadline = time.monotonic() + PAUSE_MAX_S
    while not gate.exists() and time.monotonic() < deadline:
        time.sleep(0.05)


class _SlowLocalFiles(pafs.FileSystemHandler):
    """Local files read through Python, a little slowly: Arrow's (C++) I/O threads call
    back into the interpreter for every read, as they do through deltalake's file system
    handler (``DeltaTable.to_pyarrow_dataset``)."""

    def get_type_name(self):
        return "mmf-test-slow"

    def normalize_path(self, path):
        return path

    def get_file_info(self, paths):
        return [pafs.FileInfo(p, pafs.FileType.File, size=os.path.getsize(p)) for p in paths]

    def open_input_file(self, path):
        return pa.PythonFile(_SlowFile(path), mode="r")

    def _unsupported(self, *args, **kwargs):
        raise NotImplementedError

    get_file_info_selector = create_dir = delete_dir = delete_dir_contents = _unsupported
    delete_root_dir_contents = delete_file = move = copy_file = _unsupported
    open_input_stream = open_output_stream = open_append_stream = _unsupported


class _SlowFile(io.FileIO):
    def read(self, size=-1):
        time.sleep(0.001)
        return super().read(size)


def _busy(parquet: Path, threads: int = 3) -> None:
    files = pafs.PyFileSystem(_SlowLocalFiles())

    def scan() -> None:
        while True:
            ds.dataset(str(parquet), filesystem=files, format="parquet").to_table()

    for _ in range(threads):
        threading.Thread(target=scan, daemon=True, name="mmf-test-busy").start()
    time.sleep(0.2)  # the scans have started their native readers
