"""``mmf refine``: bronze/readings -> silver/readings, silver/series, silver/quarantine.

Bronze is read at a pinned version; the frequency is the configured one or inferred
(a mix is refused). Every series goes through :func:`forecasting.cleaning.clean_series`
on the engine; good series land in silver/readings and silver/series, bad ones in
silver/quarantine with a reason. Each silver table records the bronze version it was
built from as a Delta application transaction (app id ``mmf-refine``), so re-running on
unchanged bronze writes nothing, and a refine killed half-way redoes only what is left.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from forecasting import contract as C
from forecasting.cleaning import REFINE_OUT, clean_series, quarantine_row
from forecasting.config import Config
from forecasting.errors import TableError
from forecasting.frequency import infer_freq, modal_step
from training.checkpoints import checkpoint
from training.engines import get_engine
from training.tables import BRONZE_READINGS, SILVER_QUARANTINE, SILVER_READINGS, SILVER_SERIES, Lakehouse

log = logging.getLogger(__name__)
APP_ID = "mmf-refine"
SILVER = (SILVER_QUARANTINE, SILVER_SERIES, SILVER_READINGS)


@dataclass
class RefineReport:
    bronze_version: int
    freq: str
    skipped: bool = False
    n_series: int = 0
    n_rows: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)  # reason -> count
    versions: dict[str, int | None] = field(default_factory=dict)


def engine_error(series_id: str, why: str) -> pd.DataFrame:
    """Quarantine row for a series the engine could not clean: ``"<reason>: <detail>"``
    with a known reason keeps it (the Spark engine's ``too_large`` guard), anything else
    is ``processing_failed``."""
    reason, _, detail = why.partition(": ")
    if reason in C.QUARANTINE_REASONS and detail:
        return quarantine_row(series_id, reason, detail)
    return quarantine_row(series_id, "processing_failed", why)


def refine(
    lake: Lakehouse,
    config: Config,
    bronze_version: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> RefineReport:
    """``progress(step, done, total)`` is told when refining starts and as series are cleaned."""
    if progress:
        progress("refine", 0, 0)
    if not lake.exists(BRONZE_READINGS):
        raise TableError("bronze/readings does not exist: run `mmf ingest --source PATH` first")
    version = lake.version(BRONZE_READINGS) if bronze_version is None else bronze_version
    done = {t: lake.txn_version(t, APP_ID) for t in SILVER}
    if all(v == version for v in done.values()):
        series = lake.read(SILVER_SERIES, columns=["freq"])
        freq = series["freq"].iloc[0] if len(series) else (config.freq or "")
        return RefineReport(version, freq, skipped=True, versions={t: lake.version(t) for t in SILVER})

    # Only what cleaning uses: the lineage strings (file, hash, batch) and columns added
    # by ingest.extra_columns=add are as long as the data and would double its memory.
    skip = set(C.LINEAGE.names) - {"_ingested_at"}  # cleaning orders duplicates by ingestion time
    keep = [c for c in C.BRONZE_READINGS.names if c not in skip]
    bronze = lake.read(BRONZE_READINGS, version=version, columns=keep)
    bronze["_row"] = np.arange(len(bronze))
    freq = config.freq or infer_freq(
        {sid: modal_step(g) for sid, g in bronze.groupby(C.SERIES_ID, sort=False)[C.TS]}
    )
    cfg = config.replace(freq=freq)
    engine = get_engine(cfg)
    out = engine.map_groups(
        bronze, C.SERIES_ID, clean_series, REFINE_OUT, cfg,
        on_error=engine_error,
        progress=(lambda done, total: progress("refine", done, total)) if progress else None,
    )

    bad = out["_reason"].notna()
    quarantine = out.loc[bad, [C.SERIES_ID, "_reason", "_detail"]].rename(columns={"_reason": "reason", "_detail": "detail"})
    quarantine["bronze_version"] = version
    readings = out.loc[~bad].drop(columns=["_reason", "_detail"])

    attrs = bronze.groupby(C.SERIES_ID)[list(C.ATTRIBUTES)].last()
    series = readings.groupby(C.SERIES_ID).agg(
        start=(C.TS, "min"), end=(C.TS, "max"), n_obs=(C.Y, "size"),
        n_filled=("is_filled", "sum"), n_outliers=("is_outlier", "sum"), n_duplicates=("_n_duplicates", "first"),
    )
    series = series.join(attrs, how="left").reset_index()
    series["freq"] = freq
    series["bronze_version"] = version
    readings = readings.drop(columns=["_n_duplicates"])

    report = RefineReport(version, freq, n_series=len(series), n_rows=len(readings))
    report.quarantined = quarantine["reason"].value_counts().to_dict()
    for name, frame in zip(SILVER, (quarantine, series, readings)):
        if done[name] == version:
            continue
        lake.write(name, frame, mode="overwrite", app_id=APP_ID, app_version=version,
                   metadata={"mmf.bronze_version": version, "mmf.freq": freq})
        if name == SILVER[0]:
            checkpoint("mid_refine")
    report.versions = {t: lake.version(t) for t in SILVER}
    return report
