"""Diagnose and repair a table's Delta commit log (``mmf doctor``, ``mmf repair``).

A commit file (``_delta_log/<version>.json``) cut short by a full disk or a crash, or
overwritten by something else, makes the table unreadable at that version and after it
(or, for an empty file or one without Delta actions, silently drops that commit's
changes). :func:`diagnose` names the corrupt commit files and the last good version;
:func:`repair` moves the corrupt commit files at the end of the log (with any checkpoint
of their versions) into a quarantine folder, so the table reads at the last good version
and takes new commits again. Nothing is deleted, and the earlier versions keep every row.
A corrupt commit followed by good ones is not repaired: moving those would drop commits
that are not corrupt. The log is listed on the local file system only: for a remote
lakehouse the diagnosis is deltalake's error, and the repair is refused.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from deltalake import DeltaTable

from forecasting.errors import TableError

ACTIONS = {
    "add", "remove", "metaData", "protocol", "commitInfo", "txn", "cdc", "domainMetadata",
    "checkpointMetadata", "sidecar",
}  # fmt: skip
_COMMIT = re.compile(r"^(\d{20})\.json$")
_VERSIONED = re.compile(r"^(\d{20})\.(?:checkpoint.*\.parquet|crc|json)$")


@dataclass
class BadCommit:
    version: int
    path: str
    why: str


@dataclass
class Diagnosis:
    """The health of one table's commit log."""

    name: str
    latest: int | None = None  # the version deltalake loads (None: it cannot load the table)
    bad: list[BadCommit] = field(default_factory=list)  # corrupt commit files, oldest first
    error: str | None = None  # deltalake's error loading the latest version

    @property
    def ok(self) -> bool:
        return not self.bad and self.error is None

    @property
    def last_good(self) -> int | None:
        """The version the table reads at once the corrupt commits are moved aside."""
        return self.bad[0].version - 1 if self.bad else self.latest

    def summary(self) -> str:
        """One line: ``ok (version N)`` or what is corrupt and the fix."""
        if self.ok:
            return f"ok (version {self.latest})"
        if not self.bad:
            return f"UNREADABLE: {self.error}; the commit files look sound, so `mmf repair` cannot help"
        b = self.bad[0]
        more = f" (and {len(self.bad) - 1} later corrupt commit(s))" if len(self.bad) > 1 else ""
        head = f"CORRUPT: commit file {b.path} (version {b.version}) is corrupt ({b.why}){more}"
        if b.version == 0:
            return f"{head}; no earlier version to keep: restore the table's folder from a backup"
        return f"{head}; the last good version is {b.version - 1}: run `mmf repair {self.name}`"


def commit_files(log_dir: Path) -> dict[int, Path]:
    if not log_dir.is_dir():
        return {}
    return {int(m.group(1)): p for p in log_dir.iterdir() if (m := _COMMIT.match(p.name))}


def commit_problem(path: Path) -> str | None:
    """Why a commit file is corrupt, or None: every line a JSON object with a Delta action."""
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        return f"cannot be read: {exc}"
    if not lines:
        return "empty"
    for i, line in enumerate(lines, 1):
        try:
            action = json.loads(line)
        except json.JSONDecodeError as exc:
            return f"line {i} is not JSON: {exc.msg}"
        if not isinstance(action, dict) or not ACTIONS.intersection(action):
            return f"line {i} is not a Delta action"
    return None


def loads_at(uri: str, version: int, storage_options: dict[str, str] | None = None) -> bool:
    try:
        DeltaTable(uri, version=version, storage_options=storage_options)
    except Exception:  # noqa: BLE001 - any failure means this version does not load
        return False
    return True


def diagnose(uri: str, name: str, storage_options: dict[str, str] | None = None) -> Diagnosis:
    """Load the table's latest version and check every commit file (local tables)."""
    diagnosis = Diagnosis(name)
    try:
        diagnosis.latest = DeltaTable(uri, storage_options=storage_options).version()
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        diagnosis.error = str(exc).strip().splitlines()[0]
    if "://" not in uri:
        files = commit_files(Path(uri) / "_delta_log")
        for version, path in sorted(files.items()):
            why = commit_problem(path)
            if why:
                diagnosis.bad.append(BadCommit(version, str(path), why))
    return diagnosis


def repair(uri: str, name: str, quarantine: str, storage_options: dict[str, str] | None = None) -> list[str]:
    """Move the corrupt commit files at the end of the log (and any checkpoint of their
    versions) into a new folder under ``quarantine``; returns the moved files."""
    if "://" in uri:
        raise TableError(f"mmf repair works on a local lakehouse; move {name}'s corrupt commit file by hand")
    diagnosis = diagnose(uri, name, storage_options)
    if not diagnosis.bad:
        if diagnosis.error:
            raise TableError(f"{name}: {diagnosis.summary()}")
        return []
    first = diagnosis.bad[0].version
    log_dir = Path(uri) / "_delta_log"
    bad = {b.version for b in diagnosis.bad}
    sound = sorted(v for v in commit_files(log_dir) if v > first and v not in bad)
    why = None
    if first == 0:
        why = "it is the first commit"
    elif sound:
        why = f"later commit(s) {', '.join(map(str, sound))} are not corrupt, and moving them aside would drop them"
    elif not loads_at(uri, first - 1, storage_options):
        why = f"version {first - 1} does not load either"
    if why:
        raise TableError(
            f"cannot repair {name}: commit {first} is corrupt but {why}; restore the table's folder "
            "from a backup, or move the corrupt file(s) aside by hand"
        )
    moving = [p for p in log_dir.iterdir() if (m := _VERSIONED.match(p.name)) and int(m.group(1)) >= first]
    last_checkpoint = log_dir / "_last_checkpoint"
    if last_checkpoint.exists():
        version = _checkpoint_version(last_checkpoint)
        if version is None or version >= first:
            moving.append(last_checkpoint)
    target = Path(quarantine) / dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    target.mkdir(parents=True)
    for path in sorted(moving):
        shutil.move(str(path), str(target / path.name))
    return [str(target / p.name) for p in sorted(moving)]


def _checkpoint_version(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text())["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
