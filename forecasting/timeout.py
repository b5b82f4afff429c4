"""One candidate's run: seeded, and stopped after ``config.model_timeout_s``.

:func:`run_with_timeout` is the time limit (``SIGALRM``); :func:`run_seeded` runs a fit
or a backtest the way the per-series step does: the global generators seeded first,
then under the limit.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from functools import partial
from typing import Any, Callable, TypeVar

import numpy as np

from forecasting.errors import ModelError

T = TypeVar("T")


class CandidateTimeout(ModelError):
    """A candidate ran past ``config.model_timeout_s``."""


class Alarm(BaseException):
    """The alarm of :func:`run_with_timeout` going off.

    A BaseException so that a model's own ``except Exception`` cannot swallow it; it
    leaves :func:`run_with_timeout` as :class:`CandidateTimeout`.
    """


def run_with_timeout(fn: Callable[[], T], timeout_s: float | None) -> T:
    """``fn()`` stopped after ``timeout_s`` seconds with :class:`CandidateTimeout`.

    Uses ``SIGALRM``/``setitimer``, so the limit only applies in the main thread of a
    process (true in process-pool and Spark Python workers); elsewhere ``fn`` runs
    without a limit. The alarm is seen when control returns to Python, so a long call
    inside compiled code overruns until it returns. An alarm already pending (a test
    runner's own timeout) is honoured: if it is due first its handler runs then,
    otherwise it is re-armed with what is left of it afterwards.
    """
    if (
        not timeout_s
        or not hasattr(signal, "SIGALRM")
        or threading.current_thread() is not threading.main_thread()
    ):
        return fn()
    token = object()
    armed = [True]
    limit = float(timeout_s)
    old_handler = signal.getsignal(signal.SIGALRM)
    pending = signal.getitimer(signal.ITIMER_REAL)[0]  # someone else's alarm (pytest-timeout...)
    outer_first = 0 < pending <= limit

    def on_alarm(signum: int, frame: Any) -> None:
        if not armed[0]:
            return
        if outer_first and callable(old_handler):
            armed[0] = False
            old_handler(signum, frame)  # the earlier deadline is the one that came due
            return
        raise Alarm(token)

    start = time.monotonic()
    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, pending if outer_first else limit)
    try:
        return fn()
    except Alarm as alarm:
        if alarm.args and alarm.args[0] is token:
            raise CandidateTimeout(f"timed out after {timeout_s:g} s (model_timeout_s)") from None
        raise
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if pending > 0 and not outer_first:  # give the earlier alarm back what is left of it
            left = max(pending - (time.monotonic() - start), 1e-6)
            signal.setitimer(signal.ITIMER_REAL, left)


def seeded(seed: int, fn: Callable[[], T]) -> T:
    """``fn()`` after seeding the global numpy and ``random`` generators: models that
    draw from them get the same draws whatever ran before."""
    np.random.seed(seed)
    random.seed(seed)
    return fn()


def run_seeded(fn: Callable[[], T], seed: int, timeout_s: float | None) -> T:
    """``fn()`` seeded with ``seed`` and stopped after ``timeout_s`` seconds."""
    return run_with_timeout(partial(seeded, seed, fn), timeout_s)
