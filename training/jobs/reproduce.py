"""``mmf reproduce RUN_ID``: re-train from a run's recorded config and silver version
and compare the aggregate metrics, metric by metric. Nothing is logged or registered:
the comparison is read-only."""

from __future__ import annotations

import math
from functools import partial

from forecasting import contract as C
from forecasting.config import Config, from_dict
from forecasting.pipeline import failed_result, process_series
from registry.connection import configure
from registry.metrics import aggregate_metrics
from registry.runs import run_record
from training.engines import get_engine
from training.jobs.train import read_silver
from training.tables import SILVER_QUARANTINE, Lakehouse


def reproduce(
    lake: Lakehouse, config: Config, run_id: str, rel_tol: float = 1e-6
) -> dict[str, tuple[float, float, bool]]:
    configure(config)
    record = run_record(config, run_id)
    recorded_cfg = record["config"]
    # the data and tracking locations are today's, everything else is the run's
    recorded_cfg.update(lakehouse=config.lakehouse, storage_options=config.storage_options)
    recorded_cfg["mlflow"]["tracking_uri"] = config.mlflow.tracking_uri
    cfg: Config = from_dict(recorded_cfg)
    version, readings = read_silver(lake, record["silver_version"], record.get("series_ids"))
    results = get_engine(cfg).map_groups(
        readings,
        C.SERIES_ID,
        process_series,
        C.TRAIN_RESULT,
        cfg,
        on_error=partial(failed_result, config=cfg),
    )
    quarantine = lake.read(SILVER_QUARANTINE)
    now = aggregate_metrics(
        results, n_quarantined=int(record["metrics"].get("n_quarantined", len(quarantine)))
    )
    out = {}
    for name, recorded in sorted(record["metrics"].items()):
        if name not in now:
            continue
        value = float(now[name])
        same = (math.isnan(recorded) and math.isnan(value)) or math.isclose(
            recorded, value, rel_tol=rel_tol, abs_tol=1e-9
        )
        out[name] = (float(recorded), value, same)
    return out
