"""``mmf refine``: bronze/readings -> silver/readings, silver/series, silver/quarantine.

Bronze is read at a pinned version; the frequency is the configured one or inferred.
When inferred and the data mixes frequencies (two steps each shared by at least 10% of
the series), the lakehouse keeps one, the frequency of its current silver, else the step
of most series (ties: the one ingested first), and the series regular at another step
are quarantined ``mixed_frequency``: a file of another frequency stops only its own
series. Without any common step the data is refused. Every series goes through
:func:`forecasting.cleaning.clean_series` on the engine; good series land in
silver/readings and silver/series, bad ones in silver/quarantine with a reason. Each
silver table records the bronze version it was built from as a Delta application
transaction (app id ``mmf-refine``), so re-running on unchanged bronze writes nothing,
and a refine killed half-way redoes only what is left.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from forecasting import contract as C
from forecasting.cleaning import REFINE_OUT, clean_series, quarantine_row
from forecasting.config import Config
from forecasting.errors import TableError
from forecasting.frequency import alias, infer_freq, modal_step, step_of
from training.checkpoints import checkpoint
from training.engines import get_engine
from training.tables import BRONZE_READINGS, SILVER_QUARANTINE, SILVER_READINGS, SILVER_SERIES, Lakehouse

log = logging.getLogger(__name__)
APP_ID = "mmf-refine"
SILVER = (SILVER_QUARANTINE, SILVER_SERIES, SILVER_READINGS)
MIN_SHARE = 0.1  # a step shared by this share of the series is a frequency of the data


def lakehouse_freq(lake: Lakehouse, bronze: pd.DataFrame) -> tuple[str, dict[str, str]]:
    """The inferred frequency, and the series to quarantine as ``mixed_frequency``
    (series id -> detail) when the data mixes frequencies (see the module docstring)."""
    by_series = bronze.groupby(C.SERIES_ID, sort=False)
    steps = {sid: modal_step(g) for sid, g in by_series[C.TS]}
    counts = Counter(s for s in steps.values() if s is not None)
    total = sum(counts.values())
    major = [s for s, n in counts.items() if n / total >= MIN_SHARE] if total else []
    if len(major) < 2:
        return infer_freq(steps, min_share=MIN_SHARE), {}
    current = {step_of(f) for f in lake.read(SILVER_SERIES, columns=["freq"])["freq"].dropna().unique()}
    kept = [s for s in major if s in current]
    if len(kept) == 1:
        keep, why = kept[0], "the frequency of its silver"
    else:
        first = by_series["_ingested_at"].min().to_dict()
        seen: dict[pd.Timedelta, pd.Timestamp] = {}
        for sid, st in steps.items():
            if st in major:
                seen[st] = min(seen.get(st, first[sid]), first[sid])
        keep = min(major, key=lambda s: (-counts[s], seen[s], s))
        why = f"the step of most series ({counts[keep]})"
    freq = alias(keep)
    log.warning("bronze mixes frequencies %s; refining at %s", sorted(map(alias, major)), freq)
    mixed = {
        sid: f"readings mostly {alias(s)} apart ({counts[s]} series), the lakehouse's frequency is {freq} "
        f"({why}); keep such series in a lakehouse of their own, or set freq"
        for sid, s in steps.items()
        if s in major and s != keep
    }
    return freq, mixed


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
    freq, mixed = (config.freq, {}) if config.freq else lakehouse_freq(lake, bronze)
    if mixed:
        bronze = bronze[~bronze[C.SERIES_ID].isin(list(mixed))]
    cfg = config.replace(freq=freq)
    engine = get_engine(cfg)
    out = engine.map_groups(
        bronze,
        C.SERIES_ID,
        clean_series,
        REFINE_OUT,
        cfg,
        on_error=engine_error,
        progress=(lambda done, total: progress("refine", done, total)) if progress else None,
    )
    if mixed:
        rows = [quarantine_row(sid, "mixed_frequency", why) for sid, why in mixed.items()]
        out = pd.concat([out, *rows], ignore_index=True)

    bad = out["_reason"].notna()
    quarantine = out.loc[bad, [C.SERIES_ID, "_reason", "_detail"]].rename(
        columns={"_reason": "reason", "_detail": "detail"}
    )
    quarantine["bronze_version"] = version
    readings = out.loc[~bad].drop(columns=["_reason", "_detail"])

    attrs = bronze.groupby(C.SERIES_ID)[list(C.ATTRIBUTES)].last()
    series = readings.groupby(C.SERIES_ID).agg(
        start=(C.TS, "min"),
        end=(C.TS, "max"),
        n_obs=(C.Y, "size"),
        n_filled=("is_filled", "sum"),
        n_outliers=("is_outlier", "sum"),
        n_duplicates=("_n_duplicates", "first"),
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
        lake.write(
            name,
            frame,
            mode="overwrite",
            app_id=APP_ID,
            app_version=version,
            metadata={"mmf.bronze_version": version, "mmf.freq": freq},
        )
        if name == SILVER[0]:
            checkpoint("mid_refine")
    report.versions = {t: lake.version(t) for t in SILVER}
    return report
