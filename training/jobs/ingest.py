"""``mmf ingest``: raw CSV/Parquet files -> bronze/readings, exactly as received.

Each file is validated whole before anything is written: a file with missing or
mistyped columns, no rows, or bytes that are not UTF-8 is refused with a message naming
the file and the column, and no table changes; so is a file that cannot be read (an I/O
or permission error, a link whose target is gone). Rows are appended with lineage columns
(source file, content hash, batch id, ingested-at). A file whose content hash is
already in bronze is skipped, so ingesting the same file twice adds nothing, even from
runs at the same time: each file's commit records the Delta application transaction
``mmf-ingest-<content hash>``, checked against the snapshot it commits on (see
:func:`_commit`).
Timestamps are stored as naive UTC: timezone-aware values are converted, naive ones
are taken as UTC; a ``ts`` column of numbers is refused, not read as epoch offsets.
Columns outside the contract follow ``ingest.extra_columns``: ``ignore`` (the default:
the file lands without them and they are reported), ``refuse`` (the file is refused,
naming them) or ``add`` (they are stored as new nullable string columns of bronze only;
silver and gold schemas never change). Bronze is written in commits of whole files of
about ``batch_rows`` rows each (a larger file is a commit of its own), files read one at
a time, so memory holds one commit's files: a job killed before a commit leaves none of
its rows, and one killed after it skips its files next time.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from forecasting import contract as C
from forecasting.errors import DataContractError, TableError
from training.checkpoints import checkpoint
from training.tables import BRONZE_READINGS, Lakehouse, TransactionConflict, to_arrow

log = logging.getLogger(__name__)

SUFFIXES = (".csv", ".parquet", ".pq")
BRONZE = BRONZE_READINGS
KNOWN = set(C.REQUIRED) | set(C.EXOG) | set(C.ATTRIBUTES)
_BAD_NAME_CHARS = set(" ,;{}()\n\t=")  # not allowed in Delta column names
APP_PREFIX = "mmf-ingest-"  # + a file's content hash: the Delta application transaction of its commit
COMMIT_TRIES = 5


@dataclass
class IngestReport:
    batch_id: str
    added: dict[str, int] = field(default_factory=dict)  # file -> rows appended
    skipped: list[str] = field(default_factory=list)  # already ingested (same content)
    refused: dict[str, str] = field(default_factory=dict)  # file -> reason
    ignored_columns: dict[str, list[str]] = field(default_factory=dict)
    added_columns: dict[str, list[str]] = field(default_factory=dict)  # ingest.extra_columns=add
    bronze_version: int | None = None

    @property
    def rows(self) -> int:
        return sum(self.added.values())


def list_sources(source: str | Path) -> list[Path]:
    p = Path(source)
    if p.is_dir():
        # a link whose target is gone is listed, so that it is refused rather than missed
        files = sorted(
            f
            for f in p.rglob("*")
            if (f.is_file() or f.is_symlink() and not f.exists()) and f.suffix.lower() in SUFFIXES
        )
        if not files:
            raise DataContractError(f"source folder {p} holds no .csv or .parquet file")
        return files
    if not p.is_file():
        raise DataContractError(
            f"source {p} does not exist: expected a CSV or Parquet file or a folder of them"
        )
    if p.suffix.lower() not in SUFFIXES:
        raise DataContractError(f"source {p} has suffix {p.suffix!r}: expected .csv or .parquet")
    return [p]


def read_raw(path: Path, content: bytes) -> pd.DataFrame:
    """Parse one raw file and check it against the contract; raise naming file and column."""
    name = str(path)
    types: dict[str, str] = {}  # column -> its type in the file (Parquet), for messages
    if not content.strip():
        raise DataContractError(f"{name}: the file is empty; expected a header and rows")
    if path.suffix.lower() == ".csv":
        try:
            text = content.decode("utf-8-sig")  # a byte-order mark (Excel) is still UTF-8
        except UnicodeDecodeError as exc:
            raise DataContractError(
                f"{name}: not UTF-8 (byte {exc.start}: {content[exc.start : exc.start + 1]!r}); save the file as UTF-8"
            ) from None
        try:
            df = pd.read_csv(io.StringIO(text), dtype={C.SERIES_ID: str}, keep_default_na=True)
        except Exception as exc:
            raise DataContractError(f"{name}: cannot be parsed as CSV ({exc})") from None
    else:
        try:
            table = pq.read_table(io.BytesIO(content))
            df = table.to_pandas()
        except Exception as exc:
            raise DataContractError(f"{name}: cannot be read as Parquet ({exc})") from None
        types = {f.name: str(f.type) for f in table.schema}

    missing = [c for c in C.REQUIRED if c not in df.columns]
    if missing:
        raise DataContractError(
            f"{name}: missing column(s) {', '.join(missing)}; expected {', '.join(C.REQUIRED)} "
            f"(found {', '.join(map(str, df.columns))})"
        )
    if df.empty:
        raise DataContractError(f"{name}: the file has a header but no rows")

    sid = df[C.SERIES_ID]
    if sid.isna().any():
        raise DataContractError(
            f"{name}: column series_id has {int(sid.isna().sum())} empty value(s); every row needs a series id"
        )
    _check_kind(name, C.SERIES_ID, sid, types, ID_KINDS, "text (or integer ids)")
    df[C.SERIES_ID] = sid.astype(str)

    df[C.TS] = _parse_ts(df[C.TS], name)
    y = df[C.Y]
    _check_kind(name, C.Y, y, types, Y_KINDS, "numbers")
    if y.dtype == object or not pd.api.types.is_numeric_dtype(y):
        num = pd.to_numeric(y, errors="coerce")
        bad = y[
            num.isna() & y.notna() & ~y.astype(str).str.strip().str.lower().isin(["", "nan", "null", "na"])
        ]
        if len(bad):
            raise DataContractError(
                f"{name}: column y has non-numeric value {bad.iloc[0]!r} (row {bad.index[0]}); expected numbers"
            )
        y = num
    df[C.Y] = y.astype(float)
    if "temperature" in df.columns:
        t = pd.to_numeric(df["temperature"], errors="coerce")
        bad = df["temperature"][t.isna() & df["temperature"].notna()]
        if len(bad):
            raise DataContractError(
                f"{name}: column temperature has non-numeric value {bad.iloc[0]!r}; expected numbers"
            )
        df["temperature"] = t.astype(float)
    for col in C.ATTRIBUTES:
        if col in df.columns:
            df[col] = df[col].astype("string").astype(object).where(df[col].notna(), None)
    return df


# What a column holds, in the words of a refusal, by pandas' inferred type.
_KIND_WORDS = {
    "string": "text",
    "integer": "integers",
    "floating": "decimal numbers",
    "mixed-integer-float": "numbers",
    "decimal": "decimal numbers",
    "boolean": "booleans",
    "bytes": "bytes",
    "datetime64": "timestamps",
    "datetime": "timestamps",
    "date": "dates",
    "timedelta64": "durations",
    "timedelta": "durations",
    "empty": "no values",
}
ID_KINDS = ("text", "integers")  # an integer meter id lands as its text
Y_KINDS = ("integers", "decimal numbers", "numbers", "text", "no values")  # text: parsed as numbers


def _kind(col: pd.Series) -> str:
    """What ``col`` holds, in words: ``text``, ``integers``, ``booleans``, ``lists``, ..."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        return _kind(pd.Series(col.cat.categories))
    inferred = pd.api.types.infer_dtype(col, skipna=True)
    if inferred in _KIND_WORDS:
        return _KIND_WORDS[inferred]
    if col.dtype == object:  # nested values (Parquet lists, structs, maps) come as objects
        values = col.dropna()
        if values.map(lambda v: isinstance(v, (list, tuple, np.ndarray))).any():
            return "lists"
        if values.map(lambda v: isinstance(v, dict)).any():
            return "structs"
    return f"{inferred} values"


def _check_kind(
    name: str, column: str, col: pd.Series, types: dict[str, str], allowed, expected: str
) -> None:
    """Refuse the file when ``col`` holds anything but ``allowed`` kinds, naming the
    column, what it holds (with its Parquet type) and what is expected."""
    kind = _kind(col)
    if kind in allowed:
        return
    found = types.get(column, str(col.dtype))
    raise DataContractError(f"{name}: column {column} holds {kind} ({found}); expected {expected}")


def _parse_ts(col: pd.Series, name: str) -> pd.Series:
    if isinstance(col.dtype, pd.DatetimeTZDtype):
        return col.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[us]")
    if pd.api.types.is_datetime64_any_dtype(col):
        return col.astype("datetime64[us]")
    if pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        # numbers would silently become nanoseconds after 1970
        raise DataContractError(
            f"{name}: column ts holds numbers ({col.iloc[0]!r}), not timestamps; expected ISO 8601 times"
        )
    try:
        parsed = pd.to_datetime(col, utc=True, format="mixed")
    except (ValueError, TypeError) as exc:
        raise DataContractError(
            f"{name}: column ts has a value that is not a timestamp ({exc}); expected ISO 8601 times"
        ) from None
    if parsed.isna().any():
        first = col[parsed.isna()].iloc[0]
        raise DataContractError(
            f"{name}: column ts has a value that is not a timestamp: {first!r}; expected ISO 8601 times"
        )
    return parsed.dt.tz_localize(None).astype("datetime64[us]")


def ingested_hashes(lake: Lakehouse) -> set[str]:
    """The content hashes of the files in bronze, read a batch of rows at a time."""
    if not lake.exists(BRONZE):
        return set()
    hashes: set[str] = set()
    for batch in lake.table(BRONZE).to_pyarrow_dataset().to_batches(columns=["_content_hash"]):
        hashes.update(pc.unique(batch.column(0)).to_pylist())
    return hashes


def _extra_columns(name: str, df: pd.DataFrame, mode: str) -> list[str]:
    """Columns outside the contract; raise when ``mode`` refuses them."""
    extra = [str(c) for c in df.columns if c not in KNOWN]
    if not extra or mode == "ignore":
        return extra
    if mode == "refuse":
        raise DataContractError(
            f"{name}: column(s) {', '.join(extra)} outside the contract ({', '.join(sorted(KNOWN))}); "
            "remove them or set ingest.extra_columns to ignore or add"
        )
    reserved = [c for c in extra if c in C.LINEAGE.names]
    bad = [c for c in extra if set(c) & _BAD_NAME_CHARS or not c]
    if reserved or bad:
        raise DataContractError(
            f"{name}: column(s) {', '.join(map(repr, reserved + bad))} cannot be added to bronze "
            "(reserved lineage names, or characters Delta refuses: space , ; { } ( ) = tab newline); rename them"
        )
    return extra


def ingest(
    lake: Lakehouse,
    source: str | Path,
    strict: bool = True,
    extra_columns: str = "ignore",
    batch_rows: int = 1_000_000,
) -> IngestReport:
    """Append every new file under ``source`` to bronze, in commits of whole files of
    about ``batch_rows`` rows (``config.batch_rows``; a larger file is a commit of its
    own), so memory holds a commit's files, never all of them. With ``strict`` (the
    CLI's default for a single file) a refused file raises, and every file is checked
    before anything is written; otherwise it is reported and the other files still land.
    ``extra_columns`` is ``ingest.extra_columns`` (see the module docstring)."""
    report = IngestReport(batch_id=uuid.uuid4().hex[:12])
    files = list_sources(source)
    seen = ingested_hashes(lake)
    now = pd.Timestamp(dt.datetime.now(dt.timezone.utc)).as_unit("us")
    if strict and len(files) > 1:  # a refused file raises here, before any commit
        for _ in _new_files(files, set(seen), IngestReport(report.batch_id), now, True, extra_columns):
            pass
    group: list[tuple[str, str, pd.DataFrame]] = []  # (file, content hash, rows) of the next commit
    rows = 0
    for item in _new_files(files, seen, report, now, strict, extra_columns):
        if group and rows + len(item[2]) > batch_rows:
            _commit_group(lake, group, report)
            group, rows = [], 0
        group.append(item)
        rows += len(item[2])
        if rows >= batch_rows:
            _commit_group(lake, group, report)
            group, rows = [], 0
    if group:
        _commit_group(lake, group, report)
    if report.bronze_version is None:
        report.bronze_version = lake.version(BRONZE)
    return report


def _new_files(
    files: list[Path],
    seen: set[str],
    report: IngestReport,
    now: pd.Timestamp,
    strict: bool,
    extra_columns: str,
) -> Iterator[tuple[str, str, pd.DataFrame]]:
    """(file, content hash, rows with lineage) of each file not in bronze (``seen``:
    the content hashes there, and those of the files yielded), read and checked one at
    a time; the files skipped, refused and with extra columns go to ``report``."""
    for path in files:
        try:
            content = path.read_bytes()
        except OSError as exc:  # unreadable (permissions, a dangling link, I/O error)
            why = f"{path}: cannot be read ({exc.strerror or exc}); fix the file or its permissions"
            _refuse(report, path, DataContractError(why), strict)
            continue
        digest = hashlib.sha256(content).hexdigest()
        if digest in seen:
            report.skipped.append(str(path))
            continue
        try:
            df = read_raw(path, content)
            extra = _extra_columns(str(path), df, extra_columns)
        except DataContractError as exc:
            _refuse(report, path, exc, strict)
            continue
        del content
        if extra and extra_columns == "add":
            report.added_columns[str(path)] = extra
        elif extra:
            report.ignored_columns[str(path)] = extra
            df = df.drop(columns=extra)
        df["_source_file"] = str(path)
        df["_content_hash"] = digest
        df["_batch_id"] = report.batch_id
        df["_ingested_at"] = now
        seen.add(digest)
        yield str(path), digest, df


def _commit_group(lake: Lakehouse, group: list[tuple[str, str, pd.DataFrame]], report: IngestReport) -> None:
    checkpoint("before_ingest_commit")
    _commit(lake, group, report)
    checkpoint("after_ingest_commit")


def _refuse(report: IngestReport, path: Path, exc: DataContractError, strict: bool) -> None:
    if strict:
        raise exc
    report.refused[str(path)] = str(exc)
    log.error("refused %s", exc)


def _commit(lake: Lakehouse, frames: list[tuple[str, str, pd.DataFrame]], report: IngestReport) -> None:
    """Append ``frames`` (a group of whole files) in one commit that also records, per
    file, the Delta application transaction ``mmf-ingest-<content hash>``, checked
    against the snapshot it commits on: two runs that both found a file new cannot both commit it (Delta refuses the
    second commit as concurrent on the same app id). The loser re-reads bronze's content
    hashes, skips the files that landed meanwhile and commits the rest."""
    for attempt in range(1, COMMIT_TRIES + 1):
        table, new = _bronze_table(lake, frames, report)
        try:
            report.bronze_version = lake.write(
                BRONZE,
                table,
                metadata={"mmf.batch_id": report.batch_id},
                new_columns=new,
                transactions=[(APP_PREFIX + digest, 1) for _, digest, _ in frames],
            )
        except TransactionConflict as exc:
            landed = {a.removeprefix(APP_PREFIX) for a in exc.app_ids}
            if exc.version is not None:  # committed anyway, as the second creator of bronze
                report.bronze_version = _take_back(lake, report.batch_id, landed)
            else:
                landed |= ingested_hashes(lake)
            report.skipped += [p for p, digest, _ in frames if digest in landed]
            frames = [f for f in frames if f[1] not in landed]
            if exc.version is None:
                if frames and attempt < COMMIT_TRIES:
                    log.info(
                        "bronze/readings changed while committing; retry %d of %d", attempt + 1, COMMIT_TRIES
                    )
                    continue
                if frames:
                    raise TableError(
                        f"bronze/readings: no commit after {attempt} tries: other writers kept committing"
                    ) from None
                report.bronze_version = lake.version(BRONZE)
        report.added.update({p: len(f) for p, _, f in frames})
        return


def _take_back(lake: Lakehouse, batch_id: str, hashes: set[str]) -> int:
    """Delete this batch's rows of files another run committed first."""
    listed = ", ".join(f"'{h}'" for h in sorted(hashes))
    log.warning(
        "bronze/readings: %d file(s) committed by another run at the same time; ours taken back", len(hashes)
    )
    return lake.delete(BRONZE, f"_batch_id = '{batch_id}' AND _content_hash IN ({listed})")


def _bronze_table(lake: Lakehouse, frames, report: IngestReport) -> tuple[pa.Table, list[str]]:
    """The rows of ``frames`` as one Arrow table of bronze's schema, plus the columns
    ``ingest.extra_columns=add`` brings (nullable strings, bronze only)."""
    rows = pd.concat([f for _, _, f in frames], ignore_index=True)
    table = to_arrow(rows, lake.schema(BRONZE))
    files = {p for p, _, _ in frames}
    new = list(dict.fromkeys(c for p, cols in report.added_columns.items() if p in files for c in cols))
    for col in new:
        values = rows[col].astype(object).where(rows[col].notna(), None)
        table = table.append_column(
            col, pa.array([None if v is None else str(v) for v in values], pa.string())
        )
    return table, new
