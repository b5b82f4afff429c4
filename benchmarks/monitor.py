"""Peak memory and CPU time of a running job, sampled from a thread.

:class:`TreeMonitor` samples, every ``interval`` seconds, the resident set size (RSS)
of a root process (the *driver*), of the root and all its descendants (the *tree*: the
local engine's pool workers, a Spark driver's JVM and its Python workers) and of extra
processes that are not its children, with their own descendants (the *cluster*: the
JVMs of a Spark standalone master and workers, their executors and Python workers).
Peaks are taken over sums measured at the same instant. RSS counts pages shared by
forked workers once per process, as ``ps`` and the issue's figures do.

``run_monitored(cmd)`` runs a command to its end under a monitor.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

MB = 2**20


class TreeMonitor(threading.Thread):
    """Peak RSS of ``pid`` alone, of its process tree, and of ``extra_pids`` with theirs;
    CPU time summed per pid over all of them; the peak per phase (the monitored process
    writes the name of its current phase into ``phase_file``)."""

    def __init__(
        self,
        pid: int,
        interval: float = 0.2,
        phase_file: Path | None = None,
        extra_pids: Sequence[int] = (),
    ) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.extra = [psutil.Process(p) for p in extra_pids if psutil.pid_exists(p)]
        self.interval = interval
        self.phase_file = phase_file
        self.peak_by_phase: dict[str, int] = {}
        self.peak_driver = 0
        self.peak_tree = 0
        self.peak_extra = 0
        self.peak_total = 0  # tree + extra, at the same instant
        self.samples = 0
        self.cpu: dict[int, float] = {}
        self.stop = threading.Event()

    def _sum(self, procs: list[psutil.Process]) -> int:
        rss = 0
        for p in procs:
            try:
                rss += p.memory_info().rss
                t = p.cpu_times()
                # children's times are not added: each pid is sampled itself
                self.cpu[p.pid] = max(self.cpu.get(p.pid, 0.0), t.user + t.system)
            except psutil.Error:
                pass
        return rss

    @staticmethod
    def _tree(proc: psutil.Process) -> list[psutil.Process]:
        try:
            return [proc, *proc.children(recursive=True)]
        except psutil.Error:
            return []

    def sample(self) -> bool:
        """One sample; False once the root process is gone."""
        tree = self._tree(self.root)
        if not tree:
            return False
        try:
            driver = self.root.memory_info().rss
        except psutil.Error:
            return False
        rss = self._sum(tree)
        extra = self._sum([p for e in self.extra for p in self._tree(e)])
        self.samples += 1
        self.peak_driver = max(self.peak_driver, driver)
        self.peak_tree = max(self.peak_tree, rss)
        self.peak_extra = max(self.peak_extra, extra)
        self.peak_total = max(self.peak_total, rss + extra)
        if self.phase_file is not None:
            try:
                phase = self.phase_file.read_text().strip()
            except OSError:
                phase = ""
            if phase:
                self.peak_by_phase[phase] = max(self.peak_by_phase.get(phase, 0), rss + extra)
        return True

    def run(self) -> None:
        while not self.stop.is_set() and self.sample():
            time.sleep(self.interval)

    def finish(self) -> None:
        self.stop.set()
        self.join()

    @property
    def cpu_s(self) -> float:
        return sum(self.cpu.values())

    def figures(self) -> dict:
        """The peaks in MB and the CPU seconds, for a result row."""
        out = {
            "driver_peak_rss_mb": round(self.peak_driver / MB, 1),
            "tree_peak_rss_mb": round(self.peak_tree / MB, 1),
            "cpu_s": round(self.cpu_s, 1),
        }
        if self.extra:
            out["cluster_peak_rss_mb"] = round(self.peak_extra / MB, 1)
            out["all_peak_rss_mb"] = round(self.peak_total / MB, 1)
        return out


def run_monitored(
    cmd: Sequence[str],
    env: dict[str, str] | None = None,
    cwd: str | Path | None = None,
    timeout: float | None = None,
    interval: float = 0.2,
) -> tuple[subprocess.CompletedProcess, TreeMonitor]:
    """Run ``cmd`` to its end under a :class:`TreeMonitor`; its output is captured."""
    proc = subprocess.Popen(
        list(cmd),
        env=dict(os.environ if env is None else env),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    mon = TreeMonitor(proc.pid, interval=interval)
    mon.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    finally:
        mon.finish()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), mon
