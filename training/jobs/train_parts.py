"""A training run's parts (the local engine): what the steps after the engine need of a
batch, derived from its ``gold/models`` rows as the batch commits and kept in files of
its own, so that those steps only merge files, and a restarted job derives them for the
batches it trains, not again for those the killed job committed.

Per batch ``i`` (:meth:`RunParts.stage`, one read of the batch's rows):

* ``results-i.parquet`` and ``per_series-i.parquet``: the batch's rows of the run's
  ``results.parquet`` and ``per_series.parquet`` (:func:`registry.results.stage_results`);
  the run's metrics are counted from the per-series rows (no backtest JSON parsed again);
* ``models-i.parquet``: its rows of the bundle's ``models.parquet``, sorted and spilled
  (:func:`registry.pyfunc.stage_models`), with their bundle figures in ``i.json`` (an
  embedded bundle only: a reference bundle reads gold/models);
* ``selection-i.parquet``: its rows of ``gold/selection`` but ``from_version`` (the
  run's own version is known only once registered): the selection columns with
  ``refit`` and ``from_run`` when the run has them, so that gold/selection is written
  from the parts in a few commits (:func:`training.jobs.train_gold.write_gold_selection`);
* in ``i.json`` too: the facts the gate needs without a champion (the challenger's
  metric per usable series) and the retrain counts (``refit.<reason>``), summed up.

``i.json`` is written last: a batch is staged when it exists. The folder is
``<lakehouse>/_runs/<run_id>/parts`` when the lakehouse is a local path (a restart finds
it), a folder under the system's temporary directory otherwise (a restart stages again
what it lacks: the result is the same, only slower). The batches committed without
parts (a job killed between the two, or run by an older version) are staged from
``gold/models`` before the steps after the engine (:meth:`RunParts.catch_up`); the
folder is removed when the run is recorded.

The Spark engine keeps its own path: the executors write the run's files from the table.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from forecasting import contract as C
from forecasting.config import Config
from registry.aggregates import Stat, challenger_facts, facts
from registry.pyfunc import REFERENCE, StagedModels, bundle_kind, stage_models
from registry.results import StagedResults, artifact_path, stage_results
from training.jobs.train_plan import (
    RESULT_COLUMNS,
    RETRAIN_SELECTION,
    SELECTION_COLUMNS,
    Plan,
    retrain_columns,
)
from training.tables import GOLD_MODELS, Lakehouse

REFIT = "refit"


class RunParts:
    """The parts folder of one run (see the module's docstring)."""

    def __init__(self, folder: Path, config: Config) -> None:
        self.folder = folder
        self.config = config
        self.embedded = bundle_kind(config) != REFERENCE  # a reference bundle copies no models
        self._columns: list[str] | None = None  # what read() reads of gold/models, found once

    @classmethod
    def of(cls, lake: Lakehouse, config: Config, run_id: str) -> RunParts:
        root = artifact_path(lake.root)
        base = root / "_runs" if root is not None else Path(tempfile.gettempdir()) / "mmf-runs"
        return cls(base / run_id / "parts", config)

    def _path(self, kind: str, i: int) -> Path:
        return self.folder / f"{kind}-{i:06d}.parquet"

    def _info(self, i: int) -> Path:
        return self.folder / f"{i:06d}.json"

    def staged(self, i: int) -> bool:
        """Whether batch ``i`` is staged (its ``i.json``, written last; and its selection
        rows, which parts staged by an older release lack)."""
        return self._info(i).exists() and self._path("selection", i).exists()

    def stage(self, i: int, rows: pd.DataFrame) -> None:
        """Batch ``i``'s parts from its TRAIN_RESULT rows (with ``refit`` and ``from_run``
        when the run's rows have them), sorted by series id as
        :func:`~training.jobs.train_plan.batch_rows` reads them."""
        self.folder.mkdir(parents=True, exist_ok=True)
        stage_results(rows, self._path("results", i), self._path("per_series", i))
        keep = SELECTION_COLUMNS + [c for c in RETRAIN_SELECTION if c in rows.columns]
        rows[keep].to_parquet(self._path("selection", i), index=False)
        bundle = stage_models(rows, self.config, self._path("models", i)) if self.embedded else {}
        chal = challenger_facts(rows, self.config.backtest.metric)["value"].to_numpy(dtype=float)
        reasons = rows[REFIT] if REFIT in rows.columns else pd.Series(None, index=rows.index, dtype=object)
        refit = reasons.fillna(C.FULL).astype(str).value_counts()  # as retrain.retrain_facts counts them
        info = {
            "bundle": bundle,
            "challenger": chal.tolist(),
            "refit": {str(k): int(v) for k, v in refit.items()},
        }
        tmp = self._info(i).with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(self._info(i))

    def catch_up(self, lake: Lakehouse, run_id: str, plan: Plan) -> None:
        """Stage the batches without parts from the run's gold/models rows."""
        for i in range(plan.n):
            if not self.staged(i):
                self.stage(i, self.read(lake, run_id, plan, i))

    def read(
        self, lake: Lakehouse, run_id: str, plan: Plan, i: int, version: int | None = None
    ) -> pd.DataFrame:
        """Batch ``i``'s TRAIN_RESULT rows of the run (with ``refit`` and ``from_run``
        when gold/models has them), by series id, at ``version`` of gold/models (``None``:
        the latest). The table's columns are looked up once per run, not per batch (it
        does not change within a run)."""
        rows = lake.read_buckets(
            GOLD_MODELS, plan.ranges[i], version, self._columns_of(lake), [("run_id", "=", run_id)]
        )
        return rows.sort_values(C.SERIES_ID, ignore_index=True)

    def select(self, lake: Lakehouse, rows: pd.DataFrame) -> pd.DataFrame:
        """What :meth:`read` reads of a batch, from its gold/models ``rows`` as committed."""
        return rows[self._columns_of(lake)].sort_values(C.SERIES_ID, ignore_index=True)

    def _columns_of(self, lake: Lakehouse) -> list[str]:
        if self._columns is None:
            self._columns = RESULT_COLUMNS + retrain_columns(lake)
        return self._columns

    def _infos(self, n: int) -> list[dict]:
        return [json.loads(self._info(i).read_text()) for i in range(n)]

    def results(self, plan: Plan) -> StagedResults:
        """The run's results files, in the plan's order."""
        n = range(plan.n)
        return StagedResults(
            tuple(self._path("results", i) for i in n), tuple(self._path("per_series", i) for i in n)
        )

    def models(self, plan: Plan) -> StagedModels:
        """The run's spilled bundle rows and their figures, in the plan's order."""
        infos = self._infos(plan.n)
        return StagedModels(
            tuple(self._path("models", i) for i in range(plan.n)), tuple(x["bundle"] for x in infos)
        )

    def selection_rows(self, i: int) -> int:
        """How many staged gold/selection rows batch ``i`` has (from the file's footer)."""
        return pq.ParquetFile(self._path("selection", i)).metadata.num_rows

    def selection(self, batches: list[int]) -> pd.DataFrame:
        """The staged gold/selection rows (without ``from_version``) of ``batches``."""
        return pd.concat([pd.read_parquet(self._path("selection", i)) for i in batches], ignore_index=True)

    def challenger_facts(self, plan: Plan) -> pd.DataFrame:
        """The gate's facts without a champion (``challenger_metric`` per usable series)."""
        values = [v for x in self._infos(plan.n) for v in x["challenger"]]
        return facts(["challenger_metric"] * len(values), values)

    def refit_stats(self, plan: Plan) -> dict[str, Stat]:
        """The retrain counts as :meth:`~training.engines.base.Engine.aggregate` sums up
        their facts (``refit.<reason>``: the series per reason)."""
        by: Counter = Counter()
        for x in self._infos(plan.n):
            by.update(x["refit"])
        return {f"refit.{k}": Stat(count=int(n)) for k, n in by.items()}

    def remove(self) -> None:
        """The run's parts folder, gone (the run is recorded), and the run's folder
        when nothing else is in it."""
        shutil.rmtree(self.folder, ignore_errors=True)
        try:
            self.folder.parent.rmdir()
        except OSError:
            pass
