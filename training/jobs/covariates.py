"""Covariates in the lakehouse: ``mmf ingest --covariates FILE`` -> bronze/covariates,
refine -> silver/covariates, and the joins of a batch of series with their covariates
(training, refit and forecast); the alignment itself is :mod:`forecasting.covariates`.

Ingest checks a file whole before anything is written (:func:`forecasting.covariates.check_rows`):
an undeclared covariate, a key silver/series does not have, a wrong type, two rows of
the same (name, key, ts, issued_at) in the file or already stored, or a forecast issue
with a missing step each refuse the file with a message naming the value, and no table
changes. A file already ingested (same content hash) is skipped; each commit records the
application transaction ``mmf-ingest-cov-<content hash>``.

Refine copies bronze/covariates into silver/covariates (without lineage, sorted by name,
key, ts, issued_at) when bronze changed since (application transaction
``mmf-refine-covariates`` = bronze's version). The table is read per batch of series,
filtered to the keys of that batch's series (their ids, sites or regions), so memory is
bounded by the batch and its keys.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from forecasting import contract as C
from forecasting import covariates as cov
from forecasting.config import Config
from forecasting.errors import DataContractError, TableError
from training.tables import BRONZE_COVARIATES, SILVER_COVARIATES, SILVER_SERIES, Lakehouse, to_arrow

APP_INGEST = "mmf-ingest-cov-"
APP_REFINE = "mmf-refine-covariates"
HISTORY_DAYS = 35  # covariate history read for a forecast's fallbacks (persistence, climatology)


def read_file(path: Path, content: bytes) -> pd.DataFrame:
    """A covariate CSV/Parquet file, typed (:func:`forecasting.covariates.typed`)."""
    if not content.strip():
        raise DataContractError(f"{path}: the file is empty; expected a header and rows")
    try:
        if path.suffix.lower() == ".csv":
            raw = pd.read_csv(io.BytesIO(content), dtype={cov.KEY: str, cov.NAME: str}, keep_default_na=True)
        else:
            raw = pq.read_table(io.BytesIO(content)).to_pandas()
    except Exception as exc:  # noqa: BLE001 - any parse error refuses the file
        raise DataContractError(f"{path}: cannot be read as {path.suffix or 'CSV'} ({exc})") from None
    if raw.empty:
        raise DataContractError(f"{path}: no rows")
    return cov.typed(raw, str(path))


def ingest_covariates(lake: Lakehouse, config: Config, source: str | Path) -> tuple[int, int | None]:
    """Append one covariate file to bronze/covariates; returns (rows added, bronze
    version); (0, version) when the same content was ingested before."""
    path = Path(source)
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise DataContractError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    digest = hashlib.sha256(content).hexdigest()
    exists = lake.exists(BRONZE_COVARIATES)
    if exists and lake.txn_version(BRONZE_COVARIATES, APP_INGEST + digest[:40]) is not None:
        return 0, lake.version(BRONZE_COVARIATES)
    frame = read_file(path, content)
    if not lake.exists(SILVER_SERIES):
        raise TableError(
            "silver/series does not exist: ingest and refine the readings before their covariates"
        )
    series = lake.read(SILVER_SERIES, columns=[C.SERIES_ID, "site", "region"])
    stored = None
    if exists:
        names = sorted(frame[cov.NAME].unique())
        keys = sorted(frame[cov.KEY].unique())
        stored = lake.read(
            BRONZE_COVARIATES,
            columns=[cov.NAME, cov.KEY, C.TS, cov.ISSUED_AT],
            filters=[(cov.NAME, "in", names), (cov.KEY, "in", keys)],
        )
    cov.check_rows(frame, cov.specs(config), cov.keys_of(series), stored, str(path))
    frame["_source_file"] = str(path)
    frame["_content_hash"] = digest
    frame["_batch_id"] = uuid.uuid4().hex[:12]
    frame["_ingested_at"] = pd.Timestamp(dt.datetime.now(dt.timezone.utc)).as_unit("us")
    version = lake.write(
        BRONZE_COVARIATES,
        to_arrow(frame, lake.schema(BRONZE_COVARIATES)),
        app_id=APP_INGEST + digest[:40],
        app_version=1,
        metadata={"mmf.file": str(path)},
    )
    return len(frame), version


def refine_covariates(lake: Lakehouse) -> int | None:
    """silver/covariates from bronze/covariates when bronze changed since; its version
    (``None`` without covariates)."""
    if not lake.exists(BRONZE_COVARIATES):
        return None
    version = lake.version(BRONZE_COVARIATES)
    if lake.exists(SILVER_COVARIATES) and lake.txn_version(SILVER_COVARIATES, APP_REFINE) == version:
        return lake.version(SILVER_COVARIATES)
    rows = lake.read(BRONZE_COVARIATES, version=version, columns=list(C.COVARIATES.names))
    rows = rows.sort_values([cov.NAME, cov.KEY, C.TS, cov.ISSUED_AT], kind="mergesort", ignore_index=True)
    return lake.write(
        SILVER_COVARIATES,
        to_arrow(rows, C.COVARIATES),
        mode="overwrite",
        app_id=APP_REFINE,
        app_version=version,
    )


def batch_series(lake: Lakehouse, ids) -> pd.DataFrame:
    """The attributes (``series_id, site, region``) of a batch's series."""
    ids = sorted({str(i) for i in ids})
    if not ids or not lake.exists(SILVER_SERIES):
        return pd.DataFrame({C.SERIES_ID: ids, "site": None, "region": None})
    return lake.read(
        SILVER_SERIES, columns=[C.SERIES_ID, "site", "region"], filters=[(C.SERIES_ID, "in", ids)]
    )


def batch_covariates(lake: Lakehouse, series: pd.DataFrame, config: Config, since=None) -> pd.DataFrame:
    """The silver/covariates rows of a batch's keys (and targets after ``since``, when given)."""
    filters = cov.read_filters(series, config)
    if filters is None or not lake.exists(SILVER_COVARIATES):
        return pd.DataFrame({c: pd.Series([], dtype=t) for c, t in _EMPTY.items()})
    if since is not None:
        filters.append((C.TS, ">", pd.Timestamp(since).to_pydatetime()))
    return lake.read(SILVER_COVARIATES, columns=list(C.COVARIATES.names), filters=filters)


_EMPTY = {
    cov.NAME: object,
    cov.KEY: object,
    C.TS: "datetime64[us]",
    cov.ISSUED_AT: "datetime64[us]",
    cov.VALUE: float,
}


def with_covariates(lake: Lakehouse, config: Config, readings: pd.DataFrame) -> pd.DataFrame:
    """A batch of silver rows with its covariate columns (:func:`forecasting.covariates.attach`);
    the rows unchanged when none is declared."""
    if not cov.enabled(config) or readings.empty:
        return readings
    series = batch_series(lake, readings[C.SERIES_ID].unique())
    return cov.attach(readings, series, batch_covariates(lake, series, config), config)


def future_covariates(lake: Lakehouse, config: Config, frame: pd.DataFrame, ends: pd.Series) -> pd.DataFrame:
    """The forecast input rows (``series_id, horizon, ts``...) with the regressor columns
    as known at each series' cutoff (``ends``) and ``covariate_fallback``."""
    if not cov.enabled(config) or frame.empty:
        return frame
    series = batch_series(lake, ends.index)
    since = None if ends.empty else ends.min() - pd.Timedelta(days=HISTORY_DAYS)
    covs = batch_covariates(lake, series, config, since)
    out = cov.future(ends, frame, series, covs, config)
    return out.drop(columns=["temperature"], errors="ignore")


def fallback_by_series(inputs: pd.DataFrame) -> pd.Series:
    """Each series' ``covariate_fallback`` from the forecast input rows (empty without)."""
    if cov.FALLBACK_COLUMN not in inputs:
        return pd.Series([], dtype=object)
    first = inputs.drop_duplicates(C.SERIES_ID)
    return pd.Series(first[cov.FALLBACK_COLUMN].to_numpy(dtype=object), index=first[C.SERIES_ID].to_numpy())


def n_fallbacks(inputs: pd.DataFrame) -> int:
    """Series whose forecast needed a covariate fallback."""
    fb = fallback_by_series(inputs)
    return int(np.sum(fb.fillna("").to_numpy(dtype=str) != ""))
