"""One "many-models" MLflow pyfunc for every series.

Logged as *models from code* (``python_model`` is the path of
``registry/mmf_many_models.py``), so nothing is pickled. The fitted models travel as
explicit data: the artifact ``models.parquet`` holds one row per series with
``series_id, model, model_json, end, freq, status, bucket``, where ``model_json`` is the
versioned ``Forecaster.to_dict()`` (or ensemble) JSON of the training result and
``bucket`` is :func:`forecasting.contract.bucket_of` of the id. Rows are sorted by
bucket, in row groups of at most :data:`BUNDLE_GROUP_ROWS` series, and written a bucket
range at a time (:func:`write_models`), so neither writing nor loading ever holds every
series' model: ``load_context`` reads the file's footer (each row group's bucket range),
and a series' model is read with its row group when first asked for (a few row groups
are cached). Bundles written before buckets (no ``bucket`` column) load as well. The
interval levels, the metric and the format version are in the pyfunc's
``model_config``. Global models (``global_nn``, ``global_gbm``) keep their weights ONCE,
in the artifact ``global_models.npz`` (numpy arrays and JSON strings, read with
``allow_pickle=False``; :mod:`forecasting.models.global_models.common`); a series' model_json
holds only a reference to them, its scaling and its last inputs. ``load_context`` loads
that file once, and ``global_nn`` forecasts with numpy (no torch needed to serve).

A *reference* bundle (``mlflow.bundle: reference``; ``auto`` with the Spark engine)
copies no model: the artifact holds no ``models.parquet``, and its ``model_config``
names the run's rows of the Delta table gold/models, where training committed them
batch by batch: ``bundle: reference``, ``models_table`` (the table's URI),
``models_lakehouse``, ``models_run_id``, ``models_version`` (the table's version after
the run's last batch commit), ``n_series``, ``freq`` and ``storage_option_names`` (the
names of the storage options reading it needs, never their values). ``load_context``
reads the table's log at that version (:class:`DeltaModels`) and a series' model with
its block of buckets when first asked for: Delta file statistics and Parquet row groups
skip the rest. The storage options (credentials) are given at load time
(:func:`load_path`: the loading config's, or the environment's), never stored.

Scoring input (one or more rows per series)::

    series_id    str       required
    horizon      int       required: steps after the series' training end
    ts           datetime  optional, UTC (naive, or ISO 8601 text: ``2024-01-22T00:00:00Z``,
                           naive text taken as UTC): the future timestamps wanted; the forecast
                           runs up to the last one and returns just those, in time order
                           (horizon is then unused)
    temperature  float     optional: the future regressor, one value per row (aligned
                           with ts, else with steps 1..n in row order), for models that
                           use it

Output: ``series_id, ts, yhat, yhat_lower_<lv>, yhat_upper_<lv> ..., model`` with
``ts = end + k * freq`` (naive UTC datetimes; under ``mlflow models serve``, ISO 8601
text with a ``Z``, ``2024-01-22T00:00:00Z``, as ``mmf serve``'s ``/predict`` writes them,
see :func:`iso_timestamps`). An unknown series id raises (the message lists up to 10);
``params={"unknown": "skip"}`` leaves unknown series out instead.

The model's code travels with it: ``code/`` holds copies of the ``forecasting``,
``registry`` and ``training`` packages (``code_paths``), and its ``requirements.txt`` pins
the third-party packages ``mmf`` depends on, so ``mlflow models serve`` builds a working
environment with its default manager (virtualenv) without ``mmf`` installed. Where ``mmf``
is installed and imported (its own jobs), its packages are the ones used.

Loading a version runs its stored ``mmf_many_models.py`` (and whatever its ``MLmodel``
names), so the artifact is checked first: at registration the sha256 of ``MLmodel``,
``mmf_many_models.py`` and every file under ``artifacts/`` (``models.parquet``,
``global_models.npz``) is recorded as a version tag ``mmf.sha256.<path>``, and
:func:`load_version` refuses (:class:`RegistryError`) a downloaded artifact whose files
differ from those tags, before any of it runs. For a reference bundle the hashes cover
``MLmodel`` (with the reference in its ``model_config``), the code and ``global_models.npz``;
the models it refers to are protected by Delta's version pinning, not by a hash: the
loader reads gold/models as of ``models_version``, so rows committed later (other runs)
are never seen, and the run's rows read are those that version holds (until `mmf vacuum`
removes files that version needs, e.g. after `mmf restore gold/models`; loading then
fails with a :class:`RegistryError`).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import shutil
import sys
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Sequence

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from packaging.requirements import Requirement

from forecasting import contract as C
from forecasting.config import Config
from forecasting.covariates import HOLIDAY, exog_columns
from forecasting.covariates import column as cov_column
from forecasting.errors import RegistryError
from forecasting.frequency import future_timestamps
from forecasting.jsontext import loads
from forecasting.models import load_fitted
from forecasting.models.global_models import load as load_global_weights
from registry.aliases import champion_info, require_version, version_info
from registry.connection import set_uris
from registry.metrics import USABLE, finite_metric_values
from training.tables import GOLD_MODELS, Lakehouse

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ARTIFACT_NAME = "model"
MODELS_ARTIFACT = "models"  # context.artifacts key; the file is models.parquet
GLOBAL_ARTIFACT = "global_models"  # context.artifacts key of global_models.npz (when any)
CODE_FILE = Path(__file__).resolve().parent / "mmf_many_models.py"
MAX_LISTED = 10
HASH_TAG = "mmf.sha256."  # + a file's path in the model artifact: its sha256, recorded at registration
MAX_STEPS = 1_000_000  # no forecast runs further than this many steps
MODELS_SCHEMA = pa.schema(
    [
        (C.SERIES_ID, pa.string()),
        ("model", pa.string()),
        ("model_json", pa.string()),
        ("end", C.TS_TYPE),
        ("freq", pa.string()),
        ("status", pa.string()),
        (C.BUCKET, pa.int32()),  # bundles written before buckets have none
    ]
)
MODEL_COLUMNS = [C.SERIES_ID, "model", "model_json", "end", "freq"]  # what ManyModels.models gives
BUNDLE_GROUP_ROWS = 2_000  # series per row group of models.parquet: a lookup reads one or two
CACHE_GROUPS = 8  # row groups a loaded bundle keeps (least recently used out)
FITTED_CACHE = 4_096  # deserialized models a loaded bundle keeps (least recently used out)
_SPILL_ROWS = 1_000  # rows per row group of a frame spilled by write_models
_WINDOW_ROWS = 10 * BUNDLE_GROUP_ROWS  # rows write_models sorts at a time (about)
# Requirement names of mmf that scoring needs; pinned to the installed versions.
SERVING_ENV = "_MLFLOW_IS_IN_SERVING_ENVIRONMENT"  # set by MLflow's scoring server
PACKAGE = "mmf"  # the distribution whose requirements the model's environment pins
CODE_PACKAGES = ("forecasting", "registry", "training")  # copied into the model (code_paths)
_SCORING_REQUIREMENTS = (
    "mlflow",
    "numpy",
    "pandas",
    "pyarrow",
    "orjson",  # forecasting.jsontext decodes the model JSON
    "scipy",
    "statsmodels",
    "prophet",
    "holidays",
    "lightgbm",  # global_gbm forecasts with its booster
)


# -- the bundle: models.parquet ---------------------------------------------------------
Entry = tuple[str, str, pd.Timestamp, str]  # a series' model name, model_json, end, freq


class _LRU:
    """A small thread-safe least-recently-used cache."""

    def __init__(self, size: int):
        self.size = max(1, int(size))
        self._items: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def keys(self) -> list[Any]:
        with self._lock:
            return list(self._items)


def _entries(table: pa.Table) -> dict[str, Entry]:
    """series id -> :data:`Entry` of the rows of ``table`` (columns ``MODEL_COLUMNS``)."""
    cols = table.select(MODEL_COLUMNS).to_pydict()
    return {
        str(sid): (name, text, pd.Timestamp(end), freq)
        for sid, name, text, end, freq in zip(*(cols[c] for c in MODEL_COLUMNS))
    }


def _with_buckets(table: pa.Table) -> pa.Table:
    """``table`` with its ``bucket`` column (computed from the ids when it has none)."""
    if C.BUCKET in table.column_names:
        return table
    return table.append_column(C.BUCKET, pa.array(C.bucket_of(table.column(C.SERIES_ID))))


def _in_range(table: pa.Table, lo: int, hi: int) -> pa.Table:
    """The rows of ``table`` whose bucket is in ``[lo, hi)``."""
    bucket = table.column(C.BUCKET)
    return table.filter(pc.and_(pc.greater_equal(bucket, lo), pc.less(bucket, hi)))


def _frame(table: pa.Table, columns: list[str]) -> pd.DataFrame:
    frame = table.select(columns).to_pandas()
    if "end" in frame:
        frame["end"] = pd.to_datetime(frame["end"]).astype("datetime64[us]")
    return frame


class ParquetModels:
    """``models.parquet`` read lazily. Opening it reads the footer only: each row group's
    bucket range (the min/max statistics of ``bucket``; in a bundle written before
    buckets, a row group may hold any bucket). A series is found by its bucket: only the
    row groups covering it are read, and the last :data:`CACHE_GROUPS` of them are kept."""

    def __init__(self, path: str | Path, cache_groups: int | None = None):
        self.path = str(path)
        self._file = pq.ParquetFile(self.path)
        meta = self._file.metadata
        self.num_rows = int(meta.num_rows)
        self.columns = list(self._file.schema_arrow.names)
        self.lo, self.hi = _group_ranges(meta, self.columns)
        self.groups = _LRU(cache_groups or CACHE_GROUPS)  # row group index -> {series id: Entry}
        self._io = threading.Lock()

    def read(self, columns: list[str], groups: list[int] | None = None) -> pa.Table:
        with self._io:
            if groups is None:
                return self._file.read(columns=columns)
            return self._file.read_row_groups(groups, columns=columns)

    def group(self, g: int) -> dict[str, Entry]:
        held = self.groups.get(g)
        if held is None:
            held = _entries(self.read(MODEL_COLUMNS, [g]))
            self.groups.put(g, held)
        return held

    def entries(self, ids: list[str]) -> dict[str, Entry]:
        """The entries of those of ``ids`` the bundle holds."""
        wanted = np.asarray(ids, dtype=object)
        buckets = C.bucket_of(wanted)
        found: dict[str, Entry] = {}
        for g in range(len(self.lo)):
            mask = (buckets >= self.lo[g]) & (buckets <= self.hi[g])
            if not mask.any():
                continue
            held = self.group(g)
            for sid in wanted[mask]:
                entry = held.get(sid)
                if entry is not None:
                    found[sid] = entry
        return found

    def frame(self, columns: list[str]) -> pd.DataFrame:
        return _frame(self.read(columns), columns)

    def frame_in(self, lo: int, hi: int, columns: list[str]) -> pd.DataFrame:
        """The rows of the series whose bucket is in ``[lo, hi)`` (only the row groups
        that may hold them are read)."""
        groups = [g for g in range(len(self.lo)) if self.lo[g] < hi and self.hi[g] >= lo]
        extra = [C.BUCKET] if C.BUCKET in self.columns else []
        if C.SERIES_ID not in columns:
            extra.append(C.SERIES_ID)
        table = _with_buckets(self.read(list(dict.fromkeys(columns + extra)), groups))
        return _frame(_in_range(table, lo, hi), columns)


def _group_ranges(meta: pq.FileMetaData, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per row group, the lowest and highest bucket it may hold (inclusive)."""
    n = meta.num_row_groups
    lo, hi = np.zeros(n, dtype=np.int64), np.full(n, C.N_BUCKETS - 1, dtype=np.int64)
    if C.BUCKET not in names:
        return lo, hi
    col = names.index(C.BUCKET)
    for g in range(n):
        stats = meta.row_group(g).column(col).statistics
        if stats is not None and stats.has_min_max and not stats.null_count:
            lo[g], hi[g] = int(stats.min), int(stats.max)
    return lo, hi


class FrameModels:
    """Models held in memory (:meth:`ManyModels.with_models`), with the interface of
    :class:`ParquetModels`."""

    def __init__(self, models: pd.DataFrame):
        self._entries: dict[str, Entry] = {
            str(sid): (name, text, pd.Timestamp(end), freq)
            for sid, name, text, end, freq in zip(*(models[c] for c in MODEL_COLUMNS))
        }
        self.num_rows = len(self._entries)

    def entries(self, ids: list[str]) -> dict[str, Entry]:
        return {sid: self._entries[sid] for sid in ids if sid in self._entries}

    def frame(self, columns: list[str]) -> pd.DataFrame:
        entries = list(self._entries.values())
        full = {
            C.SERIES_ID: list(self._entries),
            "model": [e[0] for e in entries],
            "model_json": [e[1] for e in entries],
            "end": pd.to_datetime([e[2] for e in entries]).as_unit("us"),
            "freq": [e[3] for e in entries],
        }
        return pd.DataFrame({c: full[c] for c in columns})

    def frame_in(self, lo: int, hi: int, columns: list[str]) -> pd.DataFrame:
        buckets = C.bucket_of(list(self._entries))
        keep = (buckets >= lo) & (buckets < hi)
        return self.frame(columns)[keep].reset_index(drop=True)


# -- the reference bundle: the run's rows of gold/models ----------------------------------
EMBEDDED, REFERENCE = "embedded", "reference"  # bundle kinds (config ``mlflow.bundle``)


@dataclass(frozen=True)
class ModelsRef:
    """Where a reference bundle's models are: the rows of run ``run_id`` in gold/models
    under the lakehouse root ``lakehouse``, as of the table's Delta ``version`` (the one
    after the run's last batch commit)."""

    lakehouse: str
    run_id: str
    version: int

    @property
    def table(self) -> str:
        """The URI of the gold/models table."""
        return Lakehouse(self.lakehouse).uri(GOLD_MODELS)

    def model_config(self, storage_options: dict[str, str] | None) -> dict[str, Any]:
        """The ``model_config`` entries naming the rows; of the storage options only their
        names (the values, credentials among them, are given at load: :func:`load_path`)."""
        return {
            "bundle": REFERENCE,
            "models_table": self.table,
            "models_lakehouse": self.lakehouse,
            "models_run_id": self.run_id,
            "models_version": int(self.version),
            "storage_option_names": sorted(storage_options or {}),
            "storage_options": {},
        }

    @classmethod
    def from_model_config(cls, config: dict[str, Any]) -> "ModelsRef":
        return cls(
            str(config["models_lakehouse"]), str(config["models_run_id"]), int(config["models_version"])
        )


def bundle_kind(config: Config) -> str:
    """The bundle a training run registers: ``mlflow.bundle``, with ``auto`` resolved
    (reference with the Spark engine, embedded otherwise)."""
    kind = config.mlflow.bundle
    if kind == "auto":
        return REFERENCE if config.engine == "spark" else EMBEDDED
    return kind


def _usable_rows(run_id: str) -> pc.Expression:
    """The rows of a run a bundle holds: status ok or fallback, with a model."""
    model = pc.field("model_json")
    return (
        (pc.field("run_id") == run_id)
        & pc.field("status").isin(list(USABLE))
        & model.is_valid()
        & (model != "")
    )


def _run_files(ref: ModelsRef, storage_options: dict[str, str] | None) -> ds.Dataset:
    """The data files of gold/models at ``ref.version`` that may hold rows of its run.
    Each file keeps its Delta statistics as its partition expression, so a filter on
    ``bucket`` skips files, and Parquet row-group statistics skip row groups."""
    try:
        table = Lakehouse(ref.lakehouse, storage_options).table(GOLD_MODELS, int(ref.version))
        dataset = table.to_pyarrow_dataset()
    except Exception as exc:  # noqa: BLE001 - one message for every way the table is unreadable
        raise RegistryError(
            f"the models of run {ref.run_id} are in {ref.table} at version {ref.version}, which cannot be "
            f"read: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}. Check "
            "the storage options (given at load), and that the table's log and files of that version are "
            "still there (`mmf restore`/`mmf vacuum` of gold/models can remove them)"
        ) from None
    fragments = list(dataset.get_fragments(filter=pc.field("run_id") == ref.run_id))
    return ds.FileSystemDataset(fragments, dataset.schema, dataset.format, dataset.filesystem)


def _fill_buckets(table: pa.Table) -> pa.Table:
    """``table`` with null buckets (rows written before buckets) computed from the ids."""
    col = table.column(C.BUCKET)
    if not col.null_count:
        return table
    computed = pa.array(C.bucket_of(table.column(C.SERIES_ID)), pa.int32())
    return table.set_column(table.schema.get_field_index(C.BUCKET), C.BUCKET, pc.coalesce(col, computed))


class DeltaModels:
    """The models of a reference bundle: its run's usable rows of gold/models at the
    pinned version, read lazily, with the interface of :class:`ParquetModels`. Opening
    it reads the table's log only. A series is found by its bucket: the bucket space is
    cut in blocks of about :data:`BUNDLE_GROUP_ROWS` series, a lookup reads its block
    (only the files and row groups whose bucket statistics overlap it) and the last
    :data:`CACHE_GROUPS` blocks are kept."""

    def __init__(
        self,
        ref: ModelsRef,
        storage_options: dict[str, str] | None = None,
        n_series: int = 0,
        freq: str | None = None,
        cache_groups: int | None = None,
    ):
        self.ref, self.num_rows, self.freq = ref, int(n_series), freq
        self._data = _run_files(ref, storage_options)
        self._where = _usable_rows(ref.run_id)
        per_block = C.N_BUCKETS * BUNDLE_GROUP_ROWS // self.num_rows if self.num_rows else C.N_BUCKETS // 64
        self.width = int(min(C.N_BUCKETS, max(1, per_block)))  # buckets per block
        self.groups = _LRU(cache_groups or CACHE_GROUPS)  # block -> {series id: Entry}

    def _scan(self, columns: list[str], lo: int = 0, hi: int = C.N_BUCKETS) -> Iterator[pa.Table]:
        """The run's usable rows whose bucket is in ``[lo, hi)``, a record batch at a time:
        ``columns`` plus ``series_id`` and ``bucket`` (``freq`` computed from
        ``model_json``, as :func:`models_table` does)."""
        wanted = list(dict.fromkeys([*columns, C.SERIES_ID, C.BUCKET]))
        read = [c for c in wanted if c != "freq"] + (["model_json"] if "freq" in wanted else [])
        expr = self._where
        if (lo, hi) != (0, C.N_BUCKETS):
            bucket = pc.field(C.BUCKET)
            expr = expr & (((bucket >= lo) & (bucket < hi)) | bucket.is_null())
        for batch in self._data.to_batches(columns=list(dict.fromkeys(read)), filter=expr):
            if not batch.num_rows:
                continue
            table = _in_range(_fill_buckets(pa.Table.from_batches([batch])), lo, hi)
            if "freq" in wanted:
                ids, texts = table.column(C.SERIES_ID).to_pylist(), table.column("model_json").to_pylist()
                freqs = [_freq_of(sid, text, self.freq) for sid, text in zip(ids, texts)]
                table = table.append_column("freq", pa.array(freqs, pa.string()))
            yield table.select(wanted)

    def group(self, block: int) -> dict[str, Entry]:
        held = self.groups.get(block)
        if held is None:
            held = {}
            lo = block * self.width
            for table in self._scan(MODEL_COLUMNS, lo, min(C.N_BUCKETS, lo + self.width)):
                held.update(_entries(table))
            self.groups.put(block, held)
        return held

    def entries(self, ids: list[str]) -> dict[str, Entry]:
        """The entries of those of ``ids`` the bundle holds."""
        wanted = np.asarray(ids, dtype=object)
        blocks = C.bucket_of(wanted) // self.width
        found: dict[str, Entry] = {}
        for block in np.unique(blocks):
            held = self.group(int(block))
            for sid in wanted[blocks == block]:
                entry = held.get(sid)
                if entry is not None:
                    found[sid] = entry
        return found

    def frame(self, columns: list[str]) -> pd.DataFrame:
        return self.frame_in(0, C.N_BUCKETS, columns)

    def frame_in(self, lo: int, hi: int, columns: list[str]) -> pd.DataFrame:
        """The rows of the series whose bucket is in ``[lo, hi)``, in the order of
        ``models.parquet`` (bucket, then series id)."""
        parts = list(self._scan(columns, lo, hi))
        table = pa.concat_tables(parts) if parts else MODELS_SCHEMA.empty_table()
        table = table.sort_by([(C.BUCKET, "ascending"), (C.SERIES_ID, "ascending")])
        return _frame(table, columns)


def reference_stats(ref: ModelsRef, storage_options: dict[str, str] | None = None) -> BundleStats:
    """:class:`BundleStats` of a run's rows of gold/models, read a record batch at a time
    without their models (``model_json`` is only tested for being there)."""
    model = pc.field("model_json")
    columns = {
        C.SERIES_ID: pc.field(C.SERIES_ID),
        "status": pc.field("status"),
        "metric_value": pc.field("metric_value"),
        C.BUCKET: pc.field(C.BUCKET),
        "has_model": model.is_valid() & (model != ""),
    }
    usable = (pc.field("run_id") == ref.run_id) & pc.field("status").isin(list(USABLE))
    stats, first = BundleStats(), None
    for batch in _run_files(ref, storage_options).to_batches(columns=columns, filter=usable):
        if not batch.num_rows:
            continue
        frame = _fill_buckets(pa.Table.from_batches([batch])).to_pandas()
        frame["model_json"] = np.where(frame.pop("has_model").fillna(False).astype(bool), "m", "")
        stats.add(frame)
        held = frame[frame["model_json"] != ""]
        if len(held):
            key = min(zip(held[C.BUCKET].astype(int), held[C.SERIES_ID]))
            first = key if first is None or key < first else first
    stats.first_id = first[1] if first else None
    return stats


# -- the model -------------------------------------------------------------------------
class ManyModels(mlflow.pyfunc.PythonModel):
    """Every series' fitted model behind one ``predict``; see the module docstring for
    the input and output columns. Loading reads ``models.parquet``'s footer only (a
    reference bundle: gold/models' log at the pinned version, :class:`DeltaModels`); a
    series' model is read (with its row group, or block) and deserialized on first use,
    and the last ones used are cached."""

    def load_context(self, context) -> None:
        config = dict(context.model_config or {})
        version = config.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise MlflowException(
                f"many-models format_version {version!r}: this release reads format_version {FORMAT_VERSION}"
            )
        self.levels: list[int] = [int(v) for v in config.get("levels", [80, 95])]
        if GLOBAL_ARTIFACT in (context.artifacts or {}):
            self.global_weights: list[str] = load_global_weights(context.artifacts[GLOBAL_ARTIFACT])
        else:
            self.global_weights = []
        self._store: ParquetModels | DeltaModels | FrameModels
        if config.get("bundle", EMBEDDED) == REFERENCE:
            self._store = DeltaModels(
                ModelsRef.from_model_config(config),
                config.get("storage_options") or None,
                n_series=int(config.get("n_series") or 0),
                freq=config.get("freq"),
            )
        else:
            self._store = ParquetModels(context.artifacts[MODELS_ARTIFACT])
        self._fitted = _LRU(FITTED_CACHE)

    @property
    def series_ids(self) -> list[str]:
        return self._store.frame([C.SERIES_ID])[C.SERIES_ID].tolist()

    @property
    def n_series(self) -> int:
        """How many series this model holds (from the bundle's metadata: nothing read)."""
        return int(self._store.num_rows)

    def holds(self, ids: list[str]) -> set[str]:
        """Those of ``ids`` this model holds: only their blocks of the bundle are read,
        so a caller checks a request without a set of every id held."""
        return set(self._store.entries(list(ids)))

    def first_series(self) -> str | None:
        """The first series of the bundle (bucket, then id; ``None`` when empty), read
        from the lowest bucket ranges that hold any: growing ranges, so a large bundle
        reads little of itself."""
        lo, hi = 0, 64
        while lo < C.N_BUCKETS:
            ids = self._store.frame_in(lo, hi, [C.SERIES_ID])[C.SERIES_ID]
            if len(ids):
                return str(ids.iloc[0])
            lo, hi = hi, min(C.N_BUCKETS, hi * 16)
        return None

    def series_ends(self) -> pd.DataFrame:
        """``series_id, end, freq`` of every series held: the training end (cutoff)
        its forecasts start after."""
        return self._store.frame([C.SERIES_ID, "end", "freq"])

    def models(self) -> pd.DataFrame:
        """``series_id, model, model_json, end, freq`` of every series held: the spec
        of each series' chosen model (name and parameters) and its fitted state. All of
        them at once: a job works a bucket range at a time with :meth:`models_in`."""
        return self._store.frame(MODEL_COLUMNS)

    def models_in(self, buckets: tuple[int, int], columns: list[str] | None = None) -> pd.DataFrame:
        """:meth:`models` of the series whose bucket (:func:`forecasting.contract.bucket_of`)
        is in ``[lo, hi)`` (only ``columns`` of them, when given); only the row groups of
        that range are read."""
        lo, hi = buckets
        return self._store.frame_in(int(lo), int(hi), list(columns or MODEL_COLUMNS))

    def with_models(self, models: pd.DataFrame) -> "ManyModels":
        """A copy of this model that holds ``models`` (rows as :meth:`models` gives,
        e.g. refitted on newer data) instead of its own: same levels and global weights,
        so ``predict`` forecasts after each row's ``end``."""
        other = copy.copy(self)
        other._store = FrameModels(models)
        other._fitted = _LRU(FITTED_CACHE)
        return other

    def fitted(self, series_id: str, entry: Entry | None = None) -> Any:
        """The fitted model of one series (deserialized once, while it stays among the
        last :data:`FITTED_CACHE` used). Raises ``KeyError`` for a series not held."""
        model = self._fitted.get(series_id)
        if model is None:
            entry = entry or self._store.entries([series_id]).get(series_id)
            if entry is None:
                raise KeyError(series_id)
            model = load_fitted(entry[1])
            self._fitted.put(series_id, model)
        return model

    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Forecasts for the series named in ``model_input`` (columns in the module
        docstring); ``params={"unknown": "skip"}`` leaves unknown series out instead of
        raising."""
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        unknown_mode = (params or {}).get("unknown", "error")
        if unknown_mode not in ("error", "skip"):
            raise MlflowException(
                f"params unknown={unknown_mode!r}: expected 'error' or 'skip'",
                error_code=INVALID_PARAMETER_VALUE,
            )
        missing = [c for c in (C.SERIES_ID,) if c not in frame.columns]
        if missing or ("horizon" not in frame.columns and C.TS not in frame.columns):
            raise MlflowException(
                f"input columns {list(frame.columns)}: expected series_id and horizon "
                "(optional: ts, temperature)",
                error_code=INVALID_PARAMETER_VALUE,
            )
        ids = frame[C.SERIES_ID].astype(str)
        entries = self._store.entries(list(pd.unique(ids)))
        unknown = sorted(set(ids) - entries.keys())
        if unknown and unknown_mode == "error":
            listed = ", ".join(unknown[:MAX_LISTED]) + (
                f" (first {MAX_LISTED} listed)" if len(unknown) > MAX_LISTED else ""
            )
            raise MlflowException(
                f"{len(unknown)} unknown series id(s): {listed}. This model holds {self._store.num_rows} "
                "series (those with status ok or fallback at training); pass "
                "params={'unknown': 'skip'} to leave unknown series out",
                error_code=INVALID_PARAMETER_VALUE,
            )
        parts: list[dict[str, Any]] = []
        frame = frame.assign(**{C.SERIES_ID: ids})
        for sid, rows in frame.groupby(C.SERIES_ID, sort=False):
            if sid in entries:
                parts.append(self._forecast_one(sid, rows, entries[sid]))
        out = _output(parts, self.levels)
        return iso_timestamps(out) if in_mlflow_serving() else out

    # -- one series --------------------------------------------------------------------
    def _forecast_one(self, sid: str, rows: pd.DataFrame, entry: Entry) -> dict[str, Any]:
        name, _, end, freq = entry
        off = pd.tseries.frequencies.to_offset(freq)
        ks: np.ndarray | None = None  # step of each row with a ts
        wanted_k: np.ndarray | None = None  # distinct steps returned
        if C.TS in rows.columns and rows[C.TS].notna().any():
            ts_rows = rows[rows[C.TS].notna()]
            # datetimes or ISO 8601 text, naive (UTC) or with a zone (``Z``, ``+01:00``)
            wanted = pd.DatetimeIndex(pd.to_datetime(ts_rows[C.TS], utc=True)).tz_localize(None)
            ks = _steps(sid, end, off, wanted)
            wanted_k = np.unique(ks)
            h = int(wanted_k[-1])
        else:
            h = int(pd.to_numeric(rows["horizon"]).max())
        if not 1 <= h <= MAX_STEPS:
            raise MlflowException(
                f"series {sid}: horizon {h}: expected an integer between 1 and {MAX_STEPS}",
                error_code=INVALID_PARAMETER_VALUE,
            )
        model = self.fitted(sid, entry)
        X = None
        if getattr(model, "supports_exog", False) and exog_columns(rows.columns):
            X = _future_exog(sid, rows, h, ks)
        try:
            fc = model.predict(h, X=X, level=self.levels)
        except Exception as exc:
            raise MlflowException(
                f"series {sid} ({name}) could not forecast {h} step(s): {exc}",
                error_code=INVALID_PARAMETER_VALUE,
            ) from exc
        k = wanted_k if wanted_k is not None else np.arange(1, h + 1)
        idx = k - 1
        out = {
            C.SERIES_ID: np.full(len(k), sid, dtype=object),
            C.TS: future_timestamps(end, off, k),
            "yhat": np.asarray(fc["mean"], dtype=float)[idx],
            "model": np.full(len(k), name, dtype=object),
        }
        for lv in self.levels:
            out[f"yhat_lower_{lv}"] = np.asarray(fc[f"lo-{lv}"], dtype=float)[idx]
            out[f"yhat_upper_{lv}"] = np.asarray(fc[f"hi-{lv}"], dtype=float)[idx]
        return out


def in_mlflow_serving() -> bool:
    """Whether MLflow's scoring server (``mlflow models serve``) runs this model: it sets
    ``_MLFLOW_IS_IN_SERVING_ENVIRONMENT`` (MLflow's own switch for serving behaviour)."""
    return os.environ.get(SERVING_ENV, "").lower() == "true"


def iso_timestamps(out: pd.DataFrame) -> pd.DataFrame:
    """``out`` with ``ts`` as ISO 8601 UTC text with a ``Z`` (``2024-01-22T00:00:00Z``),
    the form ``mmf serve``'s ``/predict`` answers with: MLflow's JSON would otherwise write
    the naive UTC datetimes without a zone (``2024-01-22T00:00:00``)."""
    values = out[C.TS].to_numpy(dtype="datetime64[s]")
    return out.assign(**{C.TS: np.char.add(np.datetime_as_string(values, unit="s"), "Z").astype(object)})


def output_columns(levels: list[int]) -> list[str]:
    cols = [C.SERIES_ID, C.TS, "yhat"]
    for lv in levels:
        cols += [f"yhat_lower_{lv}", f"yhat_upper_{lv}"]
    return cols + ["model"]


def _output(parts: list[dict[str, Any]], levels: list[int]) -> pd.DataFrame:
    cols = output_columns(levels)
    if not parts:
        empty = {c: pd.Series(dtype=float) for c in cols}
        empty[C.SERIES_ID] = pd.Series(dtype=object)
        empty["model"] = pd.Series(dtype=object)
        empty[C.TS] = pd.Series(dtype="datetime64[us]")
        return pd.DataFrame(empty)[cols]
    data = {c: np.concatenate([p[c] for p in parts]) for c in cols if c != C.TS}
    data[C.TS] = pd.DatetimeIndex(np.concatenate([p[C.TS] for p in parts])).as_unit("us")
    return pd.DataFrame(data)[cols]


def _steps(sid: str, end: pd.Timestamp, off: pd.DateOffset, wanted: pd.DatetimeIndex) -> np.ndarray:
    """Step numbers k (``ts = end + k * freq``) of the wanted timestamps."""
    if isinstance(off, pd.offsets.Tick):
        step = pd.Timedelta(off).value
        delta = np.asarray(pd.TimedeltaIndex(wanted - end).as_unit("ns").asi8)  # step is in ns
        ks = delta // step
        bad = (delta % step != 0) | (ks < 1)
    else:
        # Calendar offsets: walk end + k * off (the grid the forecast uses) up to the last ts.
        last, pos, k = wanted.max(), {}, 1
        while end + k * off <= last and k <= MAX_STEPS:
            pos[end + k * off] = k
            k += 1
        ks = np.array([pos.get(t, -1) for t in wanted])
        bad = ks < 1
    if bad.any():
        first = wanted[np.flatnonzero(bad)[:3]]
        raise MlflowException(
            f"series {sid}: ts {', '.join(str(t) for t in first)} not after its training end {end} "
            f"on the {off.freqstr} grid: expected end + k * freq with k >= 1",
            error_code=INVALID_PARAMETER_VALUE,
        )
    return ks.astype(int)


def _future_exog(sid: str, rows: pd.DataFrame, h: int, ks: np.ndarray | None) -> np.ndarray | None:
    """The regressors for steps 1..h (h x k: temperature, or the declared covariates'
    ``cov_*`` columns, :func:`forecasting.covariates.exog_columns`), or None when the
    rows carry none."""
    cols = exog_columns(rows.columns)
    parts = []
    for col in cols:
        values = pd.to_numeric(rows[col], errors="coerce")
        if not values.notna().any():
            return None
        if ks is not None:
            full = np.full(h, np.nan)
            with_ts = rows[C.TS].notna().to_numpy()
            full[ks - 1] = values.to_numpy(dtype=float)[with_ts]
            values = full
        values = np.asarray(values, dtype=float)[:h]
        if len(values) < h or not np.all(np.isfinite(values)):
            n_missing = h - int(np.isfinite(values).sum())
            raise MlflowException(
                f"series {sid}: {col} missing for {n_missing} of the {h} future step(s): its model uses "
                "the regressor, so give one finite value for every step up to the last one wanted",
                error_code=INVALID_PARAMETER_VALUE,
            )
        parts.append(values)
    return np.column_stack(parts)


# -- logging ---------------------------------------------------------------------------
def _freq_of(sid: str, text: str, default: str | None) -> str:
    """A series' freq: its model_json's (or its first member's), else ``default``."""
    data = loads(text)
    freq = data.get("freq") or next((m.get("freq") for m in data.get("members") or [] if m.get("freq")), None)
    freq = freq or default
    if not freq:
        raise RegistryError(f"series {sid}: its model_json names no freq and config.freq is unset: set freq")
    return freq


def _freqs(usable: pd.DataFrame, config: Config) -> list[str]:
    """Each usable row's freq: its model_json's (or its first member's), else config.freq."""
    return [_freq_of(sid, text, config.freq) for sid, text in zip(usable[C.SERIES_ID], usable["model_json"])]


def models_table(results: pd.DataFrame, config: Config) -> pa.Table:
    """The ``models.parquet`` rows of ``results`` (TRAIN_RESULT rows; other columns are
    ignored): the usable series (status ok or fallback) and their models, with their
    bucket, sorted by bucket then series id."""
    usable = results[results["status"].isin(USABLE) & results["model_json"].fillna("").ne("")]
    ids = usable[C.SERIES_ID].astype(str).to_numpy(dtype=object)
    table = pa.table(
        {
            C.SERIES_ID: ids,
            "model": usable["model"].astype(str).to_numpy(dtype=object),
            "model_json": usable["model_json"].to_numpy(dtype=object),
            "end": pd.to_datetime(usable["end"]).to_numpy(dtype="datetime64[us]"),
            "freq": _freqs(usable, config),
            "status": usable["status"].astype(str).to_numpy(dtype=object),
            C.BUCKET: C.bucket_of(ids),
        },
        schema=MODELS_SCHEMA,
    )
    return table.sort_by([(C.BUCKET, "ascending"), (C.SERIES_ID, "ascending")])


@dataclass
class BundleStats:
    """What a bundle's version tags say of the results it was built from, summed up
    frame by frame (:meth:`add`)."""

    n_series: int = 0  # rows with a model: the rows of models.parquet
    metric_sum: float = 0.0  # of the finite metric_value of the usable rows
    metric_count: int = 0
    first_id: str | None = None  # the first series of models.parquet (the input example)

    def add(self, results: pd.DataFrame) -> None:
        usable = results[results["status"].isin(USABLE)]
        values = finite_metric_values(usable)
        self.metric_sum += float(values.sum())
        self.metric_count += len(values)
        self.n_series += int(usable["model_json"].fillna("").ne("").sum())

    @property
    def metric_value(self) -> float:
        """The mean metric over the usable series (nan without any)."""
        return self.metric_sum / self.metric_count if self.metric_count else float("nan")


def _frames(results: pd.DataFrame | Iterable[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    if isinstance(results, pd.DataFrame):
        yield results
    else:
        yield from results


def bundle_stats(results: pd.DataFrame | Iterable[pd.DataFrame]) -> BundleStats:
    """:class:`BundleStats` of results (one frame, or an iterable of frames)."""
    stats = BundleStats()
    for frame in _frames(results):
        stats.add(frame)
    return stats


@dataclass
class _Run:
    """A sorted run of models.parquet rows spilled to disk, and the bucket range (inclusive)
    of each of its row groups."""

    path: Path
    lo: np.ndarray
    hi: np.ndarray


def _spill(table: pa.Table, path: Path) -> _Run:
    pq.write_table(table, path, row_group_size=_SPILL_ROWS, compression="lz4")
    buckets = table.column(C.BUCKET).to_numpy()
    starts = np.arange(0, len(buckets), _SPILL_ROWS)
    return _Run(path, buckets[starts], buckets[np.minimum(starts + _SPILL_ROWS, len(buckets)) - 1])


def _read_run(run: _Run, lo: int, hi: int) -> pa.Table | None:
    """The rows of a spilled run whose bucket is in ``[lo, hi)``."""
    groups = np.flatnonzero((run.lo < hi) & (run.hi >= lo)).tolist()
    if not groups:
        return None
    with pq.ParquetFile(run.path) as f:
        return _in_range(f.read_row_groups(groups), lo, hi)


def _windows(counts: np.ndarray, rows: int) -> list[tuple[int, int]]:
    """Bucket ranges ``[lo, hi)`` of about ``rows`` rows each (never splitting a bucket)
    given the rows per bucket; empty ranges left out."""
    cum = np.cumsum(counts)
    cuts = np.searchsorted(cum, np.arange(rows, int(cum[-1]), rows), side="left") + 1
    edges = np.unique(np.concatenate([[0], cuts, [len(counts)]]))
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if cum[b - 1] > (cum[a - 1] if a else 0)]


@dataclass(frozen=True)
class StagedModels:
    """A run's ``models.parquet`` rows already spilled batch by batch (:func:`stage_models`,
    one file per batch, in the run's order) and the :class:`BundleStats` of each batch:
    :func:`write_models` only merges them."""

    paths: tuple[Path, ...]
    stats: tuple[dict, ...]


def stage_models(results: pd.DataFrame, config: Config, path: str | Path) -> dict:
    """One batch's :func:`models_table` rows spilled to ``path`` (sorted, as
    :func:`write_models` spills a frame) for a later :class:`StagedModels`; returns the
    batch's :class:`BundleStats` as a dict."""
    stats = BundleStats()
    stats.add(results)
    _spill(models_table(results, config), Path(path))
    return {"n_series": stats.n_series, "metric_sum": stats.metric_sum, "metric_count": stats.metric_count}


def _staged_run(path: Path) -> tuple[_Run, np.ndarray]:
    """A spilled file as a :class:`_Run` (its row groups' bucket ranges) and its bucket counts."""
    with pq.ParquetFile(path) as f:
        buckets = f.read(columns=[C.BUCKET]).column(C.BUCKET).to_numpy()
        sizes = [f.metadata.row_group(g).num_rows for g in range(f.num_row_groups)]
    starts = np.cumsum([0, *sizes[:-1]]).astype(int) if sizes else np.zeros(0, dtype=int)
    ends = starts + np.asarray(sizes, dtype=int) - 1
    run = _Run(path, buckets[starts] if len(buckets) else starts, buckets[ends] if len(buckets) else ends)
    return run, np.bincount(buckets, minlength=C.N_BUCKETS)


def write_models(
    results: pd.DataFrame | Iterable[pd.DataFrame] | StagedModels, config: Config, path: str | Path
) -> BundleStats:
    """Write ``models.parquet`` (:func:`models_table` rows) of ``results``: one frame of
    TRAIN_RESULT rows, or an iterable of them (e.g. a training run's batches), read one at
    a time, or a run's :class:`StagedModels`. Rows are sorted by bucket then series id,
    in row groups of at most :data:`BUNDLE_GROUP_ROWS` series, so each covers a narrow
    bucket range and a lookup reads little. The sort is external: each frame's rows are
    spilled to disk sorted (staged ones were), then merged a bucket range of about
    :data:`_WINDOW_ROWS` rows at a time, so memory is bounded by a frame and a window,
    never by the number of series. Returns what the version's tags say of ``results``."""
    stats = BundleStats()
    counts = np.zeros(C.N_BUCKETS, dtype=np.int64)
    with tempfile.TemporaryDirectory(prefix="mmf-models-spill-") as spill:
        runs: list[_Run] = []
        if isinstance(results, StagedModels):
            for part, batch in zip(results.paths, results.stats):
                stats.n_series += batch["n_series"]
                stats.metric_sum += batch["metric_sum"]
                stats.metric_count += batch["metric_count"]
                run, n = _staged_run(part)
                if n.sum():
                    runs.append(run)
                    counts += n
        else:
            for i, frame in enumerate(_frames(results)):
                stats.add(frame)
                table = models_table(frame, config)
                if table.num_rows:
                    runs.append(_spill(table, Path(spill) / f"{i:06d}.parquet"))
                    counts += np.bincount(table.column(C.BUCKET).to_numpy(), minlength=C.N_BUCKETS)
        with pq.ParquetWriter(path, MODELS_SCHEMA, compression="zstd") as writer:
            if not runs:
                return stats
            for lo, hi in _windows(counts, _WINDOW_ROWS):
                parts = [t for t in (_read_run(run, lo, hi) for run in runs) if t is not None]
                table = (
                    pa.concat_tables(parts)
                    .combine_chunks()
                    .sort_by([(C.BUCKET, "ascending"), (C.SERIES_ID, "ascending")])
                )
                if stats.first_id is None:
                    stats.first_id = table.column(C.SERIES_ID)[0].as_py()
                writer.write_table(table, row_group_size=BUNDLE_GROUP_ROWS)
    return stats


def regressor_columns(config: Config) -> list[str]:
    """The ``cov_*`` input columns of a config's declared covariates (and holidays)."""
    cols = [cov_column(c.name) for c in config.covariates]
    return sorted(cols + ([HOLIDAY] if config.holidays else []))


def signature(levels: list[int], covariates: Sequence[str] = ()):
    """Input/output schema and the ``unknown`` param of the many-models pyfunc
    (``covariates``: the optional regressor columns of declared covariates, ``cov_*``)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import AnyType

    inputs = Schema(
        [
            ColSpec("string", C.SERIES_ID),
            ColSpec("long", "horizon"),
            # any: datetimes, or ISO 8601 text with a Z as /predict writes it (MLflow's datetime
            # check refuses a zone); the model reads both
            ColSpec(AnyType(), C.TS, required=False),
            ColSpec("double", "temperature", required=False),
            *[ColSpec("double", col, required=False) for col in covariates],
        ]
    )
    outs = [ColSpec("string", C.SERIES_ID), ColSpec("datetime", C.TS), ColSpec("double", "yhat")]
    for lv in levels:
        outs += [ColSpec("double", f"yhat_lower_{lv}"), ColSpec("double", f"yhat_upper_{lv}")]
    outs.append(ColSpec("string", "model"))
    params = ParamSchema([ParamSpec("unknown", "string", "error")])
    return ModelSignature(inputs=inputs, outputs=Schema(outs), params=params)


def scoring_requirements() -> list[str]:
    """Pins of the installed third-party packages the model's code needs: ``mmf``'s own
    requirements (without its extras) when its distribution is installed, else the
    packages scoring imports. The code itself travels with the model (:func:`code_paths`),
    so an environment built from these pins (``mlflow models serve``'s default
    virtualenv) scores without ``mmf`` installed."""
    pins = []
    for name in _package_requirements() or _SCORING_REQUIREMENTS:
        try:
            pins.append(f"{name}=={importlib_metadata.version(name)}")
        except importlib_metadata.PackageNotFoundError:
            continue
    return pins


def _package_requirements() -> list[str]:
    """The names of the installed ``mmf`` distribution's requirements (extras left out)."""
    try:
        required = importlib_metadata.requires(PACKAGE) or []
    except importlib_metadata.PackageNotFoundError:
        return []
    names = [Requirement(text) for text in required]
    return [r.name for r in names if r.marker is None or "extra" not in str(r.marker)]


def code_paths(folder: str | Path) -> list[str]:
    """Copies, in ``folder``, of the packages the many-models code imports
    (:data:`CODE_PACKAGES`, their Python files only), for ``log_model(code_paths=...)``:
    the model then loads where ``mmf`` is not installed. Where it is (``mmf``'s own jobs),
    the installed packages, imported before the model loads, are the ones used."""
    out = []
    for package in CODE_PACKAGES:
        source = Path(__file__).resolve().parents[1] / package
        target = Path(folder) / package
        for path in sorted(source.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            dest = target / path.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
        out.append(str(target))
    return out


def log_many_models(
    results: pd.DataFrame | Iterable[pd.DataFrame] | StagedModels | None,
    config: Config,
    silver_version: int,
    global_store: str | Path | None = None,
    reference: ModelsRef | None = None,
):
    """Log every usable series' model as one pyfunc (artifact ``model``) in the active
    run and register it as a new version of ``config.mlflow.registered_model``.
    ``results``: the run's TRAIN_RESULT rows, as one frame or an iterable of frames (one
    per batch; other columns are ignored), read once, or the run's :class:`StagedModels`
    (:func:`write_models`).
    ``global_store``: the ``global_models.npz`` of the run's global models (their
    weights, stored once), when any was trained.
    ``reference``: register a *reference* bundle instead: no ``models.parquet``; the
    version's ``model_config`` names the run's rows of gold/models at a pinned Delta
    version (:class:`ModelsRef`), read there on load, and ``results`` is not read (the
    tags' figures come from the table, without its models: :func:`reference_stats`).

    Model version tags: ``mmf.silver_version``, ``mmf.run_id``, ``mmf.metric``,
    ``mmf.metric_value`` (mean over the model's series), ``mmf.n_series``.

    Returns:
        The registered ``ModelVersion``.

    Raises:
        RegistryError: no active run, or no series with status ok or fallback.
    """
    run = mlflow.active_run()
    if run is None:
        raise RegistryError(
            "log_many_models needs an active MLflow run: call it inside start_training_run(...)"
        )
    model_config = {
        "format_version": FORMAT_VERSION,
        "levels": [int(v) for v in config.levels],
        "metric": config.backtest.metric,
        "silver_version": int(silver_version),
    }
    glob = {GLOBAL_ARTIFACT: str(global_store)} if global_store else {}
    with tempfile.TemporaryDirectory(prefix="mmf-models-") as tmp:
        if reference is None:
            path = Path(tmp) / "models.parquet"
            stats = write_models(results if results is not None else [], config, path)
            artifacts = {MODELS_ARTIFACT: str(path), **glob}
        else:
            artifacts = glob
            stats = reference_stats(reference, config.storage_options)
            model_config.update(reference.model_config(config.storage_options))
            model_config.update(n_series=stats.n_series, freq=config.freq)
        if stats.n_series == 0:
            raise RegistryError(
                "no series has a usable model (status ok or fallback): nothing to register; see the run's per_series.parquet"
            )
        code = code_paths(Path(tmp) / "code")
        info = _log_model(config, model_config, artifacts, stats, reference is not None, code)
    return tag_version(config, str(info.registered_model_version), run.info.run_id, stats, silver_version)


def _log_model(
    config: Config,
    model_config: dict[str, Any],
    artifacts: dict[str, str],
    stats,
    reference: bool,
    code: list[str],
):
    """``mlflow.pyfunc.log_model`` of the many-models code, registered."""
    levels = model_config["levels"]
    example = pd.DataFrame({C.SERIES_ID: [stats.first_id], "horizon": [np.int64(min(3, config.horizon))]})
    metadata = {"mmf.format_version": FORMAT_VERSION, "mmf.n_series": stats.n_series}
    if reference:
        metadata["mmf.bundle"] = REFERENCE
    return mlflow.pyfunc.log_model(
        name=ARTIFACT_NAME,
        python_model=str(CODE_FILE),
        artifacts=artifacts or None,
        model_config=model_config,
        signature=signature(levels, regressor_columns(config)),
        input_example=example,
        pip_requirements=scoring_requirements(),
        code_paths=code,
        metadata=metadata,
        registered_model_name=config.mlflow.registered_model,
    )


def tag_version(
    config: Config,
    version: str,
    run_id: str,
    results: pd.DataFrame | Iterable[pd.DataFrame] | BundleStats,
    silver_version: int,
):
    """Set the ``mmf.*`` tags of a registered version (see :func:`log_many_models`;
    ``results`` as there, or their :class:`BundleStats`) and, once, the ``mmf.sha256.*``
    hashes of its artifact (:func:`artifact_hashes`); idempotent, so a restarted job can
    complete the tags of a version registered by a job killed before it tagged it.
    Returns the ``ModelVersion``."""
    client = mlflow.MlflowClient()
    name = config.mlflow.registered_model
    stats = results if isinstance(results, BundleStats) else bundle_stats(results)
    tags = {
        "mmf.silver_version": str(int(silver_version)),
        "mmf.run_id": run_id,
        "mmf.metric": config.backtest.metric,
        "mmf.metric_value": repr(stats.metric_value),
        "mmf.n_series": str(stats.n_series),
    }
    current = client.get_model_version(name, version).tags or {}
    if not any(key.startswith(HASH_TAG) for key in current):  # recorded once, never overwritten
        tags.update({HASH_TAG + path: digest for path, digest in stored_hashes(name, version).items()})
    for key, value in tags.items():
        if current.get(key) != value:
            client.set_model_version_tag(name, version, key, value)
    describe_version(client, config, client.get_model_version(name, version), run_id, stats, silver_version)
    return client.get_model_version(name, version)


# -- descriptions ----------------------------------------------------------------------
GATE_HEADING = "\n\nGate: "  # the gate's decision, appended to a version's description


def describe_version(
    client, config: Config, mv, run_id: str, stats: BundleStats, silver_version: int
) -> None:
    """Describe a registered version (what data, what models; the gate's decision, once
    made, is kept) and, when it has none, the registered model."""
    name = config.mlflow.registered_model
    try:
        metrics = client.get_run(run_id).data.metrics
    except MlflowException:
        metrics = {}
    chosen = sorted(
        ((k.removeprefix("chosen."), int(v)) for k, v in metrics.items() if k.startswith("chosen.")),
        key=lambda kv: (-kv[1], kv[0]),
    )
    embedded = (HASH_TAG + "artifacts/models.parquet") in (mv.tags or {})
    held = "in the artifact's models.parquet" if embedded else "read from the run's gold/models rows"
    text = (
        f"The chosen model of each of {stats.n_series} series (status ok or fallback) of training run "
        f"{run_id}, fitted on silver/readings version {int(silver_version)} of {config.lakehouse}; "
        f"models {held}. Candidates: {', '.join(config.models)}; chosen: "
        + (", ".join(f"{m} {n}" for m, n in chosen) or "(not recorded)")
        + f". Mean backtest {config.backtest.metric} over its series: {stats.metric_value:.4g}."
    )
    gate = (mv.description or "").partition(GATE_HEADING)[2]
    text += GATE_HEADING + gate if gate else ""
    if mv.description != text:
        client.update_model_version(name, mv.version, description=text)
    if not (client.get_registered_model(name).description or ""):
        client.update_registered_model(name, description=MODEL_DESCRIPTION)


def describe_gate(client, name: str, version: str, reason: str) -> None:
    """Append (or replace) the gate's decision in a version's description."""
    mv = client.get_model_version(name, version)
    text = (mv.description or "").partition(GATE_HEADING)[0] + GATE_HEADING + reason
    if mv.description != text:
        client.update_model_version(name, version, description=text)


MODEL_DESCRIPTION = (
    "mmf many-models forecasting: each version is one MLflow pyfunc holding the chosen, fitted "
    "model of every series of a training run (one model per series: seasonal naive, ETS, "
    "Theta, MSTL, ARIMA, Prophet or a global model, chosen by its own rolling-origin "
    "backtest). Input: series_id and horizon (optional: ts, temperature); output: series_id, "
    "ts, yhat and yhat_lower_<level>/yhat_upper_<level> per interval level, and model. "
    "Aliases: challenger (the newest version), champion (the version the promotion gate "
    "promoted: not worse than the previous champion on data it never saw)."
)


# -- the artifact's hashes ------------------------------------------------------------
def artifact_hashes(model_dir: str | Path) -> dict[str, str]:
    """sha256 of the files of a model artifact that decide what runs and what it forecasts:
    ``MLmodel`` (it names the loader and the code), ``mmf_many_models.py`` (executed on
    load) and every file under ``artifacts/`` (read on load), by path in the artifact;
    and under the key ``code``, one digest of every file under ``code/`` (the packages
    the model imports where ``mmf`` is not installed: their paths and sha256s)."""
    root = Path(model_dir)
    files = [root / "MLmodel", root / CODE_FILE.name, *sorted((root / "artifacts").rglob("*"))]
    hashes = {f.relative_to(root).as_posix(): _sha256(f) for f in files if f.is_file()}
    if (root / "code").is_dir():  # the packages the code imports (code_paths): one digest
        tree = hashlib.sha256()
        for f in sorted(p for p in (root / "code").rglob("*") if p.is_file()):
            tree.update(f"{f.relative_to(root).as_posix()}\0{_sha256(f)}\n".encode())
        hashes["code"] = tree.hexdigest()
    return hashes


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stored_hashes(name: str, version: str) -> dict[str, str]:
    """:func:`artifact_hashes` of a registered version as stored now."""
    with tempfile.TemporaryDirectory(prefix="mmf-model-") as tmp:
        path = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=tmp)
        return artifact_hashes(path)


def verify_artifact(name: str, version: str, tags: dict[str, str], model_dir: str | Path) -> None:
    """Check a downloaded artifact against the ``mmf.sha256.*`` tags of its version.

    A version registered before the hashes were recorded has none: it loads, with a
    warning.

    Raises:
        RegistryError: a file differs from its recorded hash, is missing, or is not recorded.
    """
    recorded = {key[len(HASH_TAG) :]: value for key, value in tags.items() if key.startswith(HASH_TAG)}
    if not recorded:
        log.warning(
            "model %s version %s has no recorded artifact hashes (registered before they were "
            "recorded): loading it unverified",
            name,
            version,
        )
        return
    found = artifact_hashes(model_dir)
    wrong = [
        f"{path} {'is missing' if path not in found else 'is not recorded' if path not in recorded else 'changed'}"
        for path in sorted(recorded.keys() | found.keys())
        if recorded.get(path) != found.get(path)
    ]
    if wrong:
        raise RegistryError(
            f"model {name!r} version {version}: the stored artifact differs from the one registered "
            f"({'; '.join(wrong)}; see the tags {HASH_TAG}*): refusing to load it, since loading runs its "
            "code. Restore the artifact's files, or register a new version (`mmf train`)"
        )


# -- loading ---------------------------------------------------------------------------
def load_version(config: Config, version: str | int):
    """The many-models pyfunc of one registered version, loaded from a local copy of its
    artifact once that copy matches the hashes recorded at registration
    (:func:`verify_artifact`). The copy stays while the model's ``models.parquet``
    reader lives (it reads row groups on demand). A reference bundle reads its models
    from gold/models with ``config.storage_options`` (:func:`load_path`).

    Raises:
        RegistryError: the version does not exist (the message lists those that do), or
            its stored artifact was changed after registration.
    """
    client = set_uris(config)
    name = config.mlflow.registered_model
    mv = require_version(client, name, str(version))
    tmp = tempfile.mkdtemp(prefix=f"mmf-model-v{version}-")
    try:
        path = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=tmp)
        verify_artifact(name, str(version), mv.tags or {}, path)
        model = load_path(path, config.storage_options)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # models.parquet is read lazily: the copy goes once its reader does (or at exit)
    store = getattr(model.unwrap_python_model(), "_store", None)
    weakref.finalize(store if store is not None else model, shutil.rmtree, tmp, True)
    return model


def bundle_config(model_dir: str | Path) -> dict[str, Any]:
    """The ``model_config`` a many-models artifact was logged with (its ``MLmodel``)."""
    meta = mlflow.models.Model.load(str(model_dir))
    return dict(meta.flavors.get("python_function", {}).get("config") or {})


def load_path(model_dir: str | Path, storage_options: dict[str, str] | None = None):
    """Load a local copy of a many-models artifact (check it first: :func:`verify_artifact`).
    A reference bundle reads gold/models with ``storage_options`` (the loading config's:
    credentials are never stored with the version), given as the load-time
    ``model_config`` override; without them, deltalake's own environment variables (or
    ``MLFLOW_PYFUNC_INFERENCE_CONFIG``) apply."""
    path = list(sys.path)  # MLflow puts the model's code/ first: mmf's own packages stay in use
    try:
        if storage_options and bundle_config(model_dir).get("bundle") == REFERENCE:
            return mlflow.pyfunc.load_model(
                str(model_dir), model_config={"storage_options": dict(storage_options)}
            )
        return mlflow.pyfunc.load_model(str(model_dir))
    finally:
        sys.path[:] = path


def version_details(config: Config, version: str | int) -> dict[str, Any]:
    """What the registry says of one version (:func:`registry.aliases.version_info`).

    Raises:
        RegistryError: the version does not exist.
    """
    client = set_uris(config)
    return version_info(require_version(client, config.mlflow.registered_model, str(version)))


def versions_by_run(config: Config) -> dict[str, str]:
    """Run id -> the newest ``READY`` version it registered (``{}`` without any)."""
    client = set_uris(config)
    try:
        found = client.search_model_versions(f"name = '{config.mlflow.registered_model}'")
    except MlflowException:
        return {}
    out: dict[str, str] = {}
    for mv in sorted(found, key=lambda mv: int(mv.version)):
        if mv.status == "READY":
            out[(mv.tags or {}).get("mmf.run_id") or mv.run_id] = str(mv.version)
    return out


def load_champion(config: Config):
    """The many-models pyfunc of the ``champion`` alias (verified, :func:`load_version`).

    Raises:
        RegistryError: there is no champion yet, or its artifact was changed.
    """
    info = champion_info(config)
    if info is None:
        raise RegistryError(
            f"registered model {config.mlflow.registered_model!r} has no champion: run `mmf train` "
            "(the first version is promoted) or `mmf promote VERSION`"
        )
    return load_version(config, info["version"])
