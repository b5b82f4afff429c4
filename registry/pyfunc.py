"""One "many-models" MLflow pyfunc for every series.

Logged as *models from code* (``python_model`` is the path of
``registry/mmf_many_models.py``), so nothing is pickled. The fitted models travel as
explicit data: the artifact ``models.parquet`` holds one row per series with
``series_id, model, model_json, end, freq, status``, where ``model_json`` is the
versioned ``Forecaster.to_dict()`` (or ensemble) JSON of the training result. The
interval levels, the metric and the format version are in the pyfunc's
``model_config``. Global models (``global_nn``, ``global_gbm``) keep their weights ONCE,
in the artifact ``global_models.npz`` (numpy arrays and JSON strings, read with
``allow_pickle=False``; :mod:`forecasting.models.global_models.common`); a series' model_json
holds only a reference to them, its scaling and its last inputs. ``load_context`` loads
that file once, and ``global_nn`` forecasts with numpy (no torch needed to serve).

Scoring input (one or more rows per series)::

    series_id    str       required
    horizon      int       required: steps after the series' training end
    ts           datetime  optional, naive UTC: the future timestamps wanted; the forecast
                           runs up to the last one and returns just those, in time order
                           (horizon is then unused)
    temperature  float     optional: the future regressor, one value per row (aligned
                           with ts, else with steps 1..n in row order), for models that
                           use it

Output: ``series_id, ts, yhat, yhat_lower_<lv>, yhat_upper_<lv> ..., model`` with
``ts = end + k * freq``. An unknown series id raises (the message lists up to 10);
``params={"unknown": "skip"}`` leaves unknown series out instead.

The scoring environment needs the ``mmf`` package installed (it holds the model code);
the model's ``requirements.txt`` pins the third-party packages ``mmf`` depends on.

Loading a version runs its stored ``mmf_many_models.py`` (and whatever its ``MLmodel``
names), so the artifact is checked first: at registration the sha256 of ``MLmodel``,
``mmf_many_models.py`` and every file under ``artifacts/`` (``models.parquet``,
``global_models.npz``) is recorded as a version tag ``mmf.sha256.<path>``, and
:func:`load_version` refuses (:class:`RegistryError`) a downloaded artifact whose files
differ from those tags, before any of it runs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import tempfile
import threading
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Iterable

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from forecasting import contract as C
from forecasting.config import Config
from forecasting.errors import RegistryError
from forecasting.frequency import future_timestamps
from forecasting.models import load_fitted
from forecasting.models.global_models import load as load_global_weights
from registry.aliases import champion_info, require_version, version_info
from registry.connection import set_uris
from registry.metrics import USABLE, finite_metric_values

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
    ]
)
# Requirement names of mmf that scoring needs; pinned to the installed versions.
_SCORING_REQUIREMENTS = (
    "mlflow",
    "numpy",
    "pandas",
    "pyarrow",
    "scipy",
    "statsmodels",
    "prophet",
    "holidays",
    "lightgbm",  # global_gbm forecasts with its booster
)


# -- the model -------------------------------------------------------------------------
class ManyModels(mlflow.pyfunc.PythonModel):
    """Every series' fitted model behind one ``predict``; see the module docstring for
    the input and output columns. Models are deserialized on first use and cached."""

    def load_context(self, context) -> None:
        config = dict(context.model_config or {})
        version = config.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise MlflowException(
                f"many-models format_version {version!r}: this release reads format_version {FORMAT_VERSION}"
            )
        self.levels: list[int] = [int(v) for v in config.get("levels", [80, 95])]
        table = pq.read_table(context.artifacts[MODELS_ARTIFACT]).to_pydict()
        if GLOBAL_ARTIFACT in (context.artifacts or {}):
            self.global_weights: list[str] = load_global_weights(context.artifacts[GLOBAL_ARTIFACT])
        else:
            self.global_weights = []
        self._entries: dict[str, tuple[str, str, pd.Timestamp, str]] = {
            sid: (name, text, pd.Timestamp(end), freq)
            for sid, name, text, end, freq in zip(
                table[C.SERIES_ID], table["model"], table["model_json"], table["end"], table["freq"]
            )
        }
        self._fitted: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def series_ids(self) -> list[str]:
        return list(self._entries)

    def series_ends(self) -> pd.DataFrame:
        """``series_id, end, freq`` of every series held: the training end (cutoff)
        its forecasts start after."""
        return pd.DataFrame(
            {
                C.SERIES_ID: list(self._entries),
                "end": pd.to_datetime([e[2] for e in self._entries.values()]).as_unit("us"),
                "freq": [e[3] for e in self._entries.values()],
            }
        )

    def models(self) -> pd.DataFrame:
        """``series_id, model, model_json, end, freq`` of every series held: the spec
        of each series' chosen model (name and parameters) and its fitted state."""
        entries = list(self._entries.values())
        return pd.DataFrame(
            {
                C.SERIES_ID: list(self._entries),
                "model": [e[0] for e in entries],
                "model_json": [e[1] for e in entries],
                "end": pd.to_datetime([e[2] for e in entries]).as_unit("us"),
                "freq": [e[3] for e in entries],
            }
        )

    def with_models(self, models: pd.DataFrame) -> "ManyModels":
        """A copy of this model that holds ``models`` (rows as :meth:`models` gives,
        e.g. refitted on newer data) instead of its own: same levels and global weights,
        so ``predict`` forecasts after each row's ``end``."""
        other = copy.copy(self)
        other._entries = {
            str(sid): (name, text, pd.Timestamp(end), freq)
            for sid, name, text, end, freq in zip(
                models[C.SERIES_ID], models["model"], models["model_json"], models["end"], models["freq"]
            )
        }
        other._fitted = {}
        other._lock = threading.Lock()
        return other

    def fitted(self, series_id: str) -> Any:
        """The fitted model of one series (deserialized once)."""
        model = self._fitted.get(series_id)
        if model is None:
            model = load_fitted(self._entries[series_id][1])
            with self._lock:
                self._fitted[series_id] = model
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
        unknown = sorted(set(ids) - self._entries.keys())
        if unknown and unknown_mode == "error":
            listed = ", ".join(unknown[:MAX_LISTED]) + (
                f" (first {MAX_LISTED} listed)" if len(unknown) > MAX_LISTED else ""
            )
            raise MlflowException(
                f"{len(unknown)} unknown series id(s): {listed}. This model holds {len(self._entries)} "
                "series (those with status ok or fallback at training); pass "
                "params={'unknown': 'skip'} to leave unknown series out",
                error_code=INVALID_PARAMETER_VALUE,
            )
        parts: list[dict[str, Any]] = []
        frame = frame.assign(**{C.SERIES_ID: ids})
        for sid, rows in frame.groupby(C.SERIES_ID, sort=False):
            if sid in self._entries:
                parts.append(self._forecast_one(sid, rows))
        return _output(parts, self.levels)

    # -- one series --------------------------------------------------------------------
    def _forecast_one(self, sid: str, rows: pd.DataFrame) -> dict[str, Any]:
        name, _, end, freq = self._entries[sid]
        off = pd.tseries.frequencies.to_offset(freq)
        ks: np.ndarray | None = None  # step of each row with a ts
        wanted_k: np.ndarray | None = None  # distinct steps returned
        if C.TS in rows.columns and rows[C.TS].notna().any():
            ts_rows = rows[rows[C.TS].notna()]
            wanted = pd.DatetimeIndex(pd.to_datetime(ts_rows[C.TS]))
            if wanted.tz is not None:
                wanted = wanted.tz_convert("UTC").tz_localize(None)
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
        model = self.fitted(sid)
        X = None
        if getattr(model, "supports_exog", False) and "temperature" in rows.columns:
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
    """Temperature for steps 1..h (h x 1), or None when the rows carry none."""
    temp = pd.to_numeric(rows["temperature"], errors="coerce")
    if not temp.notna().any():
        return None
    if ks is None:
        values = temp.to_numpy(dtype=float)
    else:
        values = np.full(h, np.nan)
        with_ts = rows[C.TS].notna().to_numpy()
        values[ks - 1] = temp.to_numpy(dtype=float)[with_ts]
    values = values[:h]
    if len(values) < h or not np.all(np.isfinite(values)):
        n_missing = h - int(np.isfinite(values).sum())
        raise MlflowException(
            f"series {sid}: temperature missing for {n_missing} of the {h} future step(s): its model uses "
            "the regressor, so give one finite value for every step up to the last one wanted",
            error_code=INVALID_PARAMETER_VALUE,
        )
    return values.reshape(-1, 1)


# -- logging ---------------------------------------------------------------------------
def models_table(results: pd.DataFrame, config: Config) -> pa.Table:
    """``models.parquet``: the usable series (status ok or fallback) and their models."""
    usable = results[results["status"].isin(USABLE) & results["model_json"].fillna("").ne("")]
    freqs = []
    for sid, text in zip(usable[C.SERIES_ID], usable["model_json"]):
        data = json.loads(text)
        freq = data.get("freq") or next(
            (m.get("freq") for m in data.get("members") or [] if m.get("freq")), None
        )
        freq = freq or config.freq
        if not freq:
            raise RegistryError(
                f"series {sid}: its model_json names no freq and config.freq is unset: set freq"
            )
        freqs.append(freq)
    frame = pd.DataFrame(
        {
            C.SERIES_ID: usable[C.SERIES_ID].astype(str).to_numpy(),
            "model": usable["model"].astype(str).to_numpy(),
            "model_json": usable["model_json"].to_numpy(),
            "end": pd.to_datetime(usable["end"]).to_numpy(dtype="datetime64[us]"),
            "freq": freqs,
            "status": usable["status"].to_numpy(),
        }
    )
    return pa.Table.from_pandas(frame, schema=MODELS_SCHEMA, preserve_index=False)


def signature(levels: list[int]):
    """Input/output schema and the ``unknown`` param of the many-models pyfunc."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema(
        [
            ColSpec("string", C.SERIES_ID),
            ColSpec("long", "horizon"),
            ColSpec("datetime", C.TS, required=False),
            ColSpec("double", "temperature", required=False),
        ]
    )
    outs = [ColSpec("string", C.SERIES_ID), ColSpec("datetime", C.TS), ColSpec("double", "yhat")]
    for lv in levels:
        outs += [ColSpec("double", f"yhat_lower_{lv}"), ColSpec("double", f"yhat_upper_{lv}")]
    outs.append(ColSpec("string", "model"))
    params = ParamSchema([ParamSpec("unknown", "string", "error")])
    return ModelSignature(inputs=inputs, outputs=Schema(outs), params=params)


def scoring_requirements() -> list[str]:
    """Pins of the installed third-party packages that scoring imports."""
    pins = []
    for name in _SCORING_REQUIREMENTS:
        try:
            pins.append(f"{name}=={importlib_metadata.version(name)}")
        except importlib_metadata.PackageNotFoundError:
            continue
    return pins


def _mean_metric(results: pd.DataFrame) -> float:
    values = finite_metric_values(results)
    return float(values.mean()) if len(values) else float("nan")


def log_many_models(
    results: pd.DataFrame | Iterable[pd.DataFrame],
    config: Config,
    silver_version: int,
    global_store: str | Path | None = None,
):
    """Log every usable series' model as one pyfunc (artifact ``model``) in the active
    run and register it as a new version of ``config.mlflow.registered_model``.
    ``global_store``: the ``global_models.npz`` of the run's global models (their
    weights, stored once), when any was trained.

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
    if not isinstance(results, pd.DataFrame):  # sc-bundle replaces this
        results = pd.concat(list(results), ignore_index=True)
    table = models_table(results, config)
    if table.num_rows == 0:
        raise RegistryError(
            "no series has a usable model (status ok or fallback): nothing to register; see the run's per_series.parquet"
        )
    levels = [int(v) for v in config.levels]
    first = table.column(C.SERIES_ID)[0].as_py()
    example = pd.DataFrame({C.SERIES_ID: [first], "horizon": [np.int64(min(3, config.horizon))]})
    model_config = {
        "format_version": FORMAT_VERSION,
        "levels": levels,
        "metric": config.backtest.metric,
        "silver_version": int(silver_version),
    }
    with tempfile.TemporaryDirectory(prefix="mmf-models-") as tmp:
        path = Path(tmp) / "models.parquet"
        pq.write_table(table, path, compression="zstd")
        info = mlflow.pyfunc.log_model(
            name=ARTIFACT_NAME,
            python_model=str(CODE_FILE),
            artifacts={
                MODELS_ARTIFACT: str(path),
                **({GLOBAL_ARTIFACT: str(global_store)} if global_store else {}),
            },
            model_config=model_config,
            signature=signature(levels),
            input_example=example,
            pip_requirements=scoring_requirements(),
            metadata={"mmf.format_version": FORMAT_VERSION, "mmf.n_series": table.num_rows},
            registered_model_name=config.mlflow.registered_model,
        )
    return tag_version(config, str(info.registered_model_version), run.info.run_id, results, silver_version)


def tag_version(config: Config, version: str, run_id: str, results: pd.DataFrame, silver_version: int):
    """Set the ``mmf.*`` tags of a registered version (see :func:`log_many_models`) and,
    once, the ``mmf.sha256.*`` hashes of its artifact (:func:`artifact_hashes`);
    idempotent, so a restarted job can complete the tags of a version registered by a
    job killed before it tagged it. Returns the ``ModelVersion``."""
    client = mlflow.MlflowClient()
    name = config.mlflow.registered_model
    usable = results[results["status"].isin(USABLE)]
    tags = {
        "mmf.silver_version": str(int(silver_version)),
        "mmf.run_id": run_id,
        "mmf.metric": config.backtest.metric,
        "mmf.metric_value": repr(_mean_metric(usable)),
        "mmf.n_series": str(models_table(results, config).num_rows),
    }
    current = client.get_model_version(name, version).tags or {}
    if not any(key.startswith(HASH_TAG) for key in current):  # recorded once, never overwritten
        tags.update({HASH_TAG + path: digest for path, digest in stored_hashes(name, version).items()})
    for key, value in tags.items():
        if current.get(key) != value:
            client.set_model_version_tag(name, version, key, value)
    return client.get_model_version(name, version)


# -- the artifact's hashes ------------------------------------------------------------
def artifact_hashes(model_dir: str | Path) -> dict[str, str]:
    """sha256 of the files of a model artifact that decide what runs and what it forecasts:
    ``MLmodel`` (it names the loader and the code), ``mmf_many_models.py`` (executed on
    load) and every file under ``artifacts/`` (read on load), by path in the artifact."""
    root = Path(model_dir)
    files = [root / "MLmodel", root / CODE_FILE.name, *sorted((root / "artifacts").rglob("*"))]
    return {f.relative_to(root).as_posix(): _sha256(f) for f in files if f.is_file()}


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
    (:func:`verify_artifact`).

    Raises:
        RegistryError: the version does not exist (the message lists those that do), or
            its stored artifact was changed after registration.
    """
    client = set_uris(config)
    name = config.mlflow.registered_model
    mv = require_version(client, name, str(version))
    with tempfile.TemporaryDirectory(prefix="mmf-model-") as tmp:
        path = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=tmp)
        verify_artifact(name, str(version), mv.tags or {}, path)
        return mlflow.pyfunc.load_model(path)  # everything is read on load: the copy can go


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
