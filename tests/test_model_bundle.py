"""The many-models bundle at scale (issue #12): ``models.parquet`` written from batches
of results sorted by bucket in small row groups, and loaded lazily (footer only; a
series' row group read on demand) — forecasting exactly as a bundle read whole does."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from forecasting import contract as C
from forecasting.models import get_model, load_fitted
from registry import pyfunc, runs

N = 120
H = 30  # more than a season: intervals widen


@pytest.fixture
def small_groups(monkeypatch):
    """Row groups of 16 series, sorted 40 rows at a time, spilled 7 rows a group: a
    hundred series span many of each."""
    monkeypatch.setattr(pyfunc, "BUNDLE_GROUP_ROWS", 16)
    monkeypatch.setattr(pyfunc, "_WINDOW_ROWS", 40)
    monkeypatch.setattr(pyfunc, "_SPILL_ROWS", 7)


def many_results(n: int = N) -> pd.DataFrame:
    """TRAIN_RESULT rows of ``n`` series with real fitted seasonal-naive models (every
    tenth an ensemble, every 13th failed), plus the extra columns of gold/models."""
    rows = []
    for i in range(n):
        y = 10 + i % 7 + np.sin(np.arange(48) * 2 * np.pi / 24) + np.random.default_rng(i).normal(0, 0.3, 48)
        fitted = get_model("seasonal_naive", season_length=24).fit(y)
        name, data = "seasonal_naive", fitted.to_dict()
        if i % 10 == 3:
            other = get_model("seasonal_naive", season_length=12).fit(y)
            name = "ensemble"
            data = {
                "model": "ensemble",
                "format_version": 1,
                "method": "median",
                "members": [data, other.to_dict()],
            }
        failed = i % 13 == 5
        rows.append(
            {
                "series_id": f"s-{i:04d}",
                "status": "failed" if failed else ("fallback" if i % 11 == 0 else "ok"),
                "reason": "",
                "model": "" if failed else name,
                "metric": "mase",
                "metric_value": np.nan if failed else 0.5 + (i % 9) / 10,
                "n_obs": 48,
                "end": pd.Timestamp("2024-01-02 23:00") + pd.Timedelta(hours=i % 5),
                "backtest_json": "[]",
                "candidates_json": "{}",
                "model_json": "" if failed else json.dumps(data),
                "tuned_json": "{}",
            }
        )
    out = pd.DataFrame(rows)
    out["end"] = out["end"].astype("datetime64[us]")
    return out.assign(
        run_id="r1", batch=0, bucket=C.bucket_of(out["series_id"]), created_at=pd.Timestamp.now()
    )


def batches(results: pd.DataFrame, n: int = 5):
    """A generator (read once) of ``n`` frames of ``results``: bucket ranges, given out
    of order, the last two ranges overlapping in rows shuffled between them."""
    edges = np.linspace(0, C.N_BUCKETS, n + 1).astype(int)
    parts = [
        results[(results["bucket"] >= a) & (results["bucket"] < b)] for a, b in zip(edges[:-1], edges[1:])
    ]
    mixed = pd.concat(parts[-2:]).sample(frac=1, random_state=0)
    parts = parts[:-2] + [mixed.iloc[::2], mixed.iloc[1::2]]
    for i in [2, 0, 3, 1][: len(parts) - 1] + [len(parts) - 1]:
        yield parts[i]


def usable(results: pd.DataFrame) -> pd.DataFrame:
    return results[results["status"].isin(["ok", "fallback"])]


def test_written_from_batches_equals_written_from_one_frame(config, small_groups, tmp_path):
    results = many_results()
    one, many = tmp_path / "one.parquet", tmp_path / "many.parquet"
    s1 = pyfunc.write_models(results.sample(frac=1, random_state=1), config, one)
    s2 = pyfunc.write_models(batches(results), config, many)
    assert one.read_bytes() == many.read_bytes()  # same rows, same order, same row groups
    assert (s1.n_series, s1.metric_count, s1.first_id) == (s2.n_series, s2.metric_count, s2.first_id)
    assert s1.n_series == len(usable(results)) and s1.metric_value == pytest.approx(s2.metric_value)
    assert s1.metric_value == pytest.approx(usable(results)["metric_value"].mean())

    table = pq.read_table(many)
    assert table.column_names == ["series_id", "model", "model_json", "end", "freq", "status", "bucket"]
    buckets = table.column("bucket").to_numpy()
    assert (np.diff(buckets) >= 0).all()  # sorted by bucket
    np.testing.assert_array_equal(buckets, C.bucket_of(table.column("series_id").to_pylist()))
    meta = pq.ParquetFile(many).metadata
    sizes = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
    assert max(sizes) <= 16 and sum(sizes) == len(usable(results)) and meta.num_row_groups >= 7
    first = table.slice(0, 1).to_pylist()[0]
    assert first["series_id"] == s1.first_id and first["bucket"] == buckets.min()


def _predict_all(model, ids: list[str]) -> pd.DataFrame:
    """``model`` (a loaded pyfunc, or the ManyModels inside one) forecasting ``ids``."""
    frame = pd.DataFrame({"series_id": ids, "horizon": H})
    if isinstance(model, pyfunc.ManyModels):
        return model.predict(None, frame)
    return model.predict(frame)


def test_lazy_bundle_forecasts_every_series_as_its_model_does(config, small_groups):
    results = many_results()
    with runs.start_training_run(config, silver_version=1, engine="local"):
        mv_one = pyfunc.log_many_models(results, config, silver_version=1)
    with runs.start_training_run(config, silver_version=1, engine="local"):
        mv_many = pyfunc.log_many_models(batches(results), config, silver_version=1)
    for key in ("mmf.n_series", "mmf.metric", "mmf.silver_version"):
        assert mv_one.tags[key] == mv_many.tags[key]
    assert mv_one.tags["mmf.n_series"] == str(len(usable(results)))
    assert float(mv_one.tags["mmf.metric_value"]) == pytest.approx(float(mv_many.tags["mmf.metric_value"]))
    one_hash = mv_one.tags["mmf.sha256.artifacts/models.parquet"]
    assert one_hash == mv_many.tags["mmf.sha256.artifacts/models.parquet"]

    ids = sorted(usable(results)["series_id"])
    lazy = pyfunc.load_version(config, mv_many.version)
    out = _predict_all(lazy, list(reversed(ids)))
    assert list(pd.unique(out["series_id"])) == list(reversed(ids))  # in the order asked
    pd.testing.assert_frame_equal(
        out, _predict_all(pyfunc.load_version(config, mv_one.version), list(reversed(ids)))
    )
    by_id = results.set_index("series_id")
    for sid, got in out.groupby("series_id"):
        want = load_fitted(by_id.loc[sid, "model_json"]).predict(H, level=[80, 95])
        np.testing.assert_array_equal(got["yhat"].to_numpy(), want["mean"])
        np.testing.assert_array_equal(got["yhat_lower_95"].to_numpy(), want["lo-95"])
        assert got["ts"].iloc[0] == pd.Timestamp(by_id.loc[sid, "end"]) + pd.Timedelta(hours=1)
        assert set(got["model"]) == {by_id.loc[sid, "model"]}
    one_by_one = pd.concat([_predict_all(lazy, [sid]) for sid in reversed(ids)], ignore_index=True)
    pd.testing.assert_frame_equal(out, one_by_one)

    inner = lazy.unwrap_python_model()
    assert sorted(inner.series_ids) == ids
    # what the server checks a request with, without a set of every id held
    assert inner.n_series == len(ids) and inner.holds([ids[0], "nope", ids[-1]]) == {ids[0], ids[-1]}
    assert inner.first_series() == inner.series_ids[0]  # bucket, then id
    ends = inner.series_ends().set_index("series_id").sort_index()
    assert ends["end"].dtype == "datetime64[us]" and set(ends["freq"]) == {"h"}
    assert (ends["end"] == by_id.loc[ids, "end"]).all()
    models = inner.models()
    assert list(models.columns) == ["series_id", "model", "model_json", "end", "freq"]
    assert sorted(models["series_id"]) == ids
    with pytest.raises(Exception, match="unknown series"):
        _predict_all(lazy, [ids[0], "nope"])
    with pytest.raises(KeyError):
        inner.fitted("nope")


def test_loading_reads_the_footer_and_a_lookup_one_row_group(config, small_groups):
    results = many_results()
    with runs.start_training_run(config, silver_version=1, engine="local"):
        mv = pyfunc.log_many_models(results, config, silver_version=1)
    inner = pyfunc.load_version(config, mv.version).unwrap_python_model()
    store = inner._store
    assert isinstance(store, pyfunc.ParquetModels) and store.groups.keys() == []  # no model read
    assert store.num_rows == len(usable(results)) and len(store.lo) >= 7

    # a series whose bucket lies in one row group only: its lookup reads that group
    alone = [
        g
        for g in range(len(store.lo))
        if (store.lo[g] > store.hi[:g]).all() and (store.hi[g] < store.lo[g + 1 :]).all()
    ]
    sid = next(
        s
        for s in inner.series_ids
        if C.bucket_of([s])[0] in range(store.lo[alone[0]], store.hi[alone[0]] + 1)
    )
    inner.fitted(sid)
    assert store.groups.keys() == [alone[0]]
    _predict_all(inner_model := pyfunc.load_version(config, mv.version), [sid])
    assert inner_model.unwrap_python_model()._store.groups.keys() == [alone[0]]

    # a bucket range: only the row groups covering it, the rows in it
    full = inner.models().assign(bucket=lambda f: C.bucket_of(f["series_id"]))
    lo, hi = int(np.median(full["bucket"])), C.N_BUCKETS - 5000
    got = inner.models_in((lo, hi))
    want = full[(full["bucket"] >= lo) & (full["bucket"] < hi)].drop(columns="bucket").reset_index(drop=True)
    pd.testing.assert_frame_equal(
        got.sort_values("series_id", ignore_index=True), want.sort_values("series_id", ignore_index=True)
    )
    assert list(got.columns) == ["series_id", "model", "model_json", "end", "freq"]

    # the forecast job's path: a bucket range's models, refitted or not, in memory
    sub = inner.with_models(got)
    asked = list(got["series_id"])
    pd.testing.assert_frame_equal(_predict_all(sub, asked), _predict_all(inner, asked))
    assert sorted(sub.series_ids) == sorted(asked)
    pd.testing.assert_frame_equal(sub.models_in((lo, hi)), got)


def test_lookups_from_threads_with_a_small_cache(config, small_groups, monkeypatch):
    monkeypatch.setattr(pyfunc, "CACHE_GROUPS", 2)
    monkeypatch.setattr(pyfunc, "FITTED_CACHE", 5)
    results = many_results()
    with runs.start_training_run(config, silver_version=1, engine="local"):
        mv = pyfunc.log_many_models(results, config, silver_version=1)
    model = pyfunc.load_version(config, mv.version)
    ids = sorted(usable(results)["series_id"])
    want = {sid: _predict_all(model, [sid]) for sid in ids}
    store = model.unwrap_python_model()._store
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for sid in np.random.default_rng(seed).permutation(ids)[:60]:
                pd.testing.assert_frame_equal(_predict_all(model, [str(sid)]), want[str(sid)])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(store.groups.keys()) <= 2


def test_a_bundle_written_before_buckets_loads_and_forecasts(config, tmp_path):
    """Old bundles: no bucket column, every series in one row group."""
    results = many_results(40)
    new = pyfunc.models_table(results, config)
    old_file = tmp_path / "old" / "models.parquet"
    old_file.parent.mkdir()
    old = new.drop_columns(["bucket"]).take(
        np.argsort(new.column("series_id").to_numpy(zero_copy_only=False))
    )
    pq.write_table(old, old_file, compression="zstd")
    assert pq.ParquetFile(old_file).metadata.num_row_groups == 1
    path = tmp_path / "model"
    mlflow.pyfunc.save_model(
        str(path),
        python_model=str(pyfunc.CODE_FILE),
        artifacts={pyfunc.MODELS_ARTIFACT: str(old_file)},
        model_config={"format_version": pyfunc.FORMAT_VERSION, "levels": [80, 95]},
    )
    model = mlflow.pyfunc.load_model(str(path))
    inner = model.unwrap_python_model()
    assert inner._store.groups.keys() == []
    ids = old.column("series_id").to_pylist()
    out = _predict_all(model, ids)
    by_id = results.set_index("series_id")
    for sid, got in out.groupby("series_id"):
        np.testing.assert_array_equal(
            got["yhat"].to_numpy(), load_fitted(by_id.loc[sid, "model_json"]).predict(H)["mean"]
        )
    assert inner._store.groups.keys() == [0]
    half = inner.models_in((0, C.N_BUCKETS // 2))
    assert sorted(half["series_id"]) == sorted(s for s in ids if C.bucket_of([s])[0] < C.N_BUCKETS // 2)
    assert sorted(inner.series_ids) == sorted(ids)
    assert isinstance(old, pa.Table) and Path(old_file).exists()
