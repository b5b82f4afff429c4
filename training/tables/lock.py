"""One writing job per lakehouse at a time: an exclusive lock file beside local tables.

Every ``mmf`` command that writes (ingest, refine, train, forecast, nightly, score,
restore, vacuum, promote, rollback, reproduce) holds it while it runs; a second one
waits ``--wait SECONDS`` for it and then exits with a message naming the holder's pid.
Remote roots (``s3://`` ...) are not locked: they rely on Delta's optimistic concurrency,
as does ``mmf stream``, which runs for hours and would hold off every nightly.
The lock is ``flock`` on ``<lakehouse>/_mmf.lock``: the kernel releases it when the
holder exits, SIGKILL included, so a killed job never leaves it held.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Iterator

from forecasting.errors import MMFError
from training.tables.lakehouse import Lakehouse

LOCK_FILE = "_mmf.lock"


class LockedError(MMFError):
    """Another job holds the lakehouse lock."""


@contextlib.contextmanager
def lakehouse_lock(lake: Lakehouse, timeout_s: float = 0) -> Iterator[None]:
    """An exclusive lock on a local lakehouse, waiting at most ``timeout_s`` seconds for
    it (remote roots rely on Delta's own optimistic concurrency and are not locked).

    Raises:
        LockedError: another job still holds it after ``timeout_s`` seconds.
    """
    if "://" in lake.root:
        yield
        return
    Path(lake.root).mkdir(parents=True, exist_ok=True)
    path = Path(lake.root) / LOCK_FILE
    with open(path, "a+") as fh:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    fh.seek(0)
                    holder = fh.read().strip() or "unknown"
                    raise LockedError(
                        f"another mmf job (pid {holder}) is running on lakehouse {lake.root}; "
                        "wait for it to finish, or pass --wait SECONDS to queue behind it"
                    ) from None
                time.sleep(0.5)
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


__all__ = ["LOCK_FILE", "LockedError", "lakehouse_lock"]
