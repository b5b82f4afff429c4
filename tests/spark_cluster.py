"""A Spark standalone cluster on this machine for the tests: one master and two workers,
each a separate JVM started with the pip-installed pyspark's ``spark-class``, all bound to
127.0.0.1 on free ports, each worker capped at ``--cores 1 --memory 1g`` with its own
work folder.

:func:`start_cluster` waits until both workers have registered with the master (its JSON
status page) and returns a :class:`Cluster`; :meth:`Cluster.stop` ends the processes it
started (each in its own process group, so the executors a worker launched go with it)
and deletes the executors' copies of the jars.
``python -m tests.spark_cluster`` starts one and waits, for trying things by hand.

The executors' Python workers run :data:`sys.executable` (the driver sets
``PYSPARK_PYTHON``) and import mmf from the folder the tests import it from (the workers'
``PYTHONPATH``): on this machine the driver and the executors share the file system and
the virtual environment, as the nodes of a real cluster share the mmf wheel.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import forecasting

HOST = "127.0.0.1"
WORKERS = 2
WORKER_CORES = 1
WORKER_MEMORY = "1g"
EXECUTOR_MEMORY = "768m"  # inside the worker's cap, with room to spare
# Small JVMs that start fast: the daemons only keep track of a few processes.
JAVA_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
# The executors' JVM options: the same quick-start settings for the tests' tiny jobs; a
# benchmark sets "" (the JVM's defaults: the C2 compiler, the default collector), since C1
# alone makes Parquet, Delta and Arrow work in the executors several times slower.
EXECUTOR_JAVA_OPTS = JAVA_OPTS
CODE_ROOT = str(Path(forecasting.__file__).resolve().parents[1])  # the mmf code under test


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def cluster_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the daemons and of a driver that talks to them: everything on
    127.0.0.1, mmf importable, this interpreter for the Python workers."""
    env = dict(os.environ if base is None else base)
    path = [CODE_ROOT, *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != CODE_ROOT)]
    env.update(
        {
            "SPARK_HOME": str(spark_home()),
            "SPARK_LOCAL_IP": HOST,
            "SPARK_LOCAL_HOSTNAME": HOST,
            "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable,
            "PYTHONPATH": os.pathsep.join(path),
        }
    )
    return env


@dataclass
class Cluster:
    url: str  # spark://127.0.0.1:<port>
    webui: str  # http://127.0.0.1:<port>
    folder: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def status(self) -> dict:
        with urllib.request.urlopen(self.webui + "/json", timeout=5) as resp:
            return json.load(resp)

    def alive_workers(self) -> list[dict]:
        return [w for w in self.status().get("workers", []) if w.get("state") == "ALIVE"]

    def apps(self) -> set[str]:
        """The ids of every application the master has seen (running or finished)."""
        status = self.status()
        return {a["id"] for key in ("activeapps", "completedapps") for a in status.get(key, [])}

    def tasks_per_worker(self, app: str) -> dict[str, int]:
        """For each worker, the tasks its executors finished for application ``app`` (from
        the executors' logs in the worker's work folder)."""
        out = {}
        for i in range(WORKERS):
            logs = (self.folder / f"worker{i}" / app).glob("*/stderr")
            out[f"worker{i}"] = sum(log.read_text(errors="replace").count("Finished task") for log in logs)
        return out

    def submit_args(self, conf: dict[str, str]) -> str:
        """``PYSPARK_SUBMIT_ARGS`` for a driver on this cluster (``mmf ... --engine spark``
        in a subprocess) with ``conf`` and the driver and executor settings it needs."""
        settings = {
            **conf,
            "spark.driver.host": HOST,
            "spark.driver.bindAddress": HOST,
            "spark.executor.memory": EXECUTOR_MEMORY,
            "spark.executor.cores": str(WORKER_CORES),
            "spark.cores.max": str(WORKERS * WORKER_CORES),
            **({"spark.executor.extraJavaOptions": EXECUTOR_JAVA_OPTS} if EXECUTOR_JAVA_OPTS else {}),
            # both executors up before the first job, so the work is spread over both
            "spark.scheduler.minRegisteredResourcesRatio": "1.0",
            "spark.scheduler.maxRegisteredResourcesWaitingTime": "60s",
            # results come back through Parquet files in a folder all of them share
            "spark.mmf.resultsDir": str(self.folder / "results"),
        }
        return " ".join(f"--conf {shlex.quote(f'{k}={v}')}" for k, v in settings.items()) + " pyspark-shell"

    def logs(self, limit: int = 4000) -> str:
        """The tail of every daemon's log (for a failing test's message)."""
        out = []
        for log in sorted(self.folder.glob("*.log")):
            out.append(f"--- {log.name}\n{log.read_text(errors='replace')[-limit:]}")
        return "\n".join(out)

    def stop(self) -> None:
        for proc in reversed(self.procs):  # workers first, then the master
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.procs.clear()
        for jar in self.folder.glob("worker*/app-*/*/*.jar"):  # each executor's copy of the jars
            jar.unlink()  # (~80 MB an executor); its logs stay


def _daemon(folder: Path, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    spark_class = spark_home() / "bin" / "spark-class"
    log = open(folder / f"{name}.log", "wb")  # noqa: SIM115 - the process owns it
    try:
        return subprocess.Popen(
            [str(spark_class), *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=folder,
            start_new_session=True,  # a process group of its own: stop() ends it and its children
        )
    finally:
        log.close()


def start_cluster(folder: Path, timeout_s: float = 120) -> Cluster:
    """A master and :data:`WORKERS` workers under ``folder`` (logs, work folders), once
    every worker is registered and alive; raises (after stopping them) when they are not
    within ``timeout_s``."""
    folder.mkdir(parents=True, exist_ok=True)
    env = cluster_env()
    env["SPARK_DAEMON_MEMORY"] = "256m"
    env["SPARK_DAEMON_JAVA_OPTS"] = JAVA_OPTS
    env["SPARK_LOG_DIR"] = str(folder)
    port, ui = free_port(), free_port()
    cluster = Cluster(f"spark://{HOST}:{port}", f"http://{HOST}:{ui}", folder)
    master = "org.apache.spark.deploy.master.Master"
    cluster.procs.append(
        _daemon(folder, "master", [master, "--host", HOST, "--port", str(port), "--webui-port", str(ui)], env)
    )
    worker = "org.apache.spark.deploy.worker.Worker"
    for i in range(WORKERS):
        work = folder / f"worker{i}"
        work.mkdir(exist_ok=True)
        args = [worker, "--host", HOST, "--port", str(free_port()), "--webui-port", str(free_port())]
        args += [
            "--cores",
            str(WORKER_CORES),
            "--memory",
            WORKER_MEMORY,
            "--work-dir",
            str(work),
            cluster.url,
        ]
        cluster.procs.append(_daemon(folder, f"worker{i}", args, env))
    try:
        _wait_for_workers(cluster, timeout_s)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait_for_workers(cluster: Cluster, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        dead = [p.args[1] for p in cluster.procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"Spark daemon(s) exited: {dead}\n{cluster.logs()}")
        try:
            if len(cluster.alive_workers()) >= WORKERS:
                return
        except OSError:
            pass  # the master's web UI is not up yet
        if time.monotonic() > deadline:
            raise RuntimeError(f"{WORKERS} workers not registered within {timeout_s:.0f}s\n{cluster.logs()}")
        time.sleep(0.5)


if __name__ == "__main__":
    import tempfile

    c = start_cluster(Path(tempfile.mkdtemp(prefix="mmf-cluster-")))
    print(f"master {c.url}, web UI {c.webui}, logs in {c.folder}; Ctrl-C stops it", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        c.stop()
