"""Shared bits of the benchmark scripts: machine description and result files."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    mem_kb = 0
    try:
        with open("/proc/meminfo") as fh:
            mem_kb = int(next(line for line in fh if line.startswith("MemTotal")).split()[1])
    except (OSError, StopIteration):
        pass
    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024**2, 1),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def git_sha() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
        ).stdout.strip()
    except Exception:
        return "unknown"


def save(
    name: str,
    payload: dict,
    markdown: str,
    folder: Path = RESULTS,
    argv: list[str] | None = None,
    module: str | None = None,
) -> None:
    """``folder/<name>.json`` (command, machine, commit and ``payload``) and ``<name>.md``;
    ``argv``: the script's arguments (default ``sys.argv[1:]``); ``module``: the script's
    (``benchmarks.<name>`` by default)."""
    folder.mkdir(parents=True, exist_ok=True)
    args = sys.argv[1:] if argv is None else argv
    payload = {
        "command": "python -m " + " ".join([module or f"benchmarks.{name}", *args]),
        "machine": machine(),
        "git": git_sha(),
        **payload,
    }
    (folder / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    (folder / f"{name}.md").write_text(markdown)


def first_ids(ids, n: int | None) -> list[str]:
    """The first ``n`` of ``ids`` by number (ids like ``H12``: the real EDRP households;
    ids without a number after their first letter come last, by name); all with ``None``."""
    return sorted(ids, key=lambda s: (int(s[1:]) if s[1:].isdigit() else float("inf"), s))[:n]


def first_series(data: Path, n_series: int | None, folder: Path) -> Path:
    """``data`` itself, or (with ``n_series``) a copy in ``folder`` holding only its first
    ``n_series`` series by number (ids like ``H12``: the real EDRP households)."""
    if not n_series:
        return data
    import pandas as pd

    frame = pd.read_parquet(data)
    keep = first_ids(frame["series_id"].unique(), n_series)
    path = folder / "subset.parquet"
    frame[frame["series_id"].isin(keep)].to_parquet(path)
    return path
