"""The local engine: same result as a plain pandas groupby-apply, whatever the row order
and the number of workers; exactly the declared columns; a worker that dies costs only
the series that killed it; the installed checkpoint hook reaches the workers."""

from __future__ import annotations

import os
import signal
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from tests.reliability.faults import Faults
from training import checkpoints
from training.engines.local import LocalEngine

SCHEMA = pa.schema(
    [("key", pa.string()), ("t", pa.int64()), ("cum", pa.int64()), ("n", pa.int64()), ("reason", pa.string())]
)


# Group functions live at module level so that worker processes can import them.
def running_total(pdf: pd.DataFrame, config) -> pd.DataFrame:
    """Per group: rows in time order with the running total of ``v`` (order-free input)."""
    g = pdf.sort_values("t", kind="stable")
    return pd.DataFrame(
        {
            "n": np.full(len(g), len(g), dtype="int64"),  # columns out of order on purpose
            "key": g["key"].to_numpy(dtype=object),
            "cum": g["v"].cumsum().to_numpy(dtype="int64"),
            "t": g["t"].to_numpy(dtype="int64"),
            "reason": pd.Series([None] * len(g), dtype=object),
            "debug": "not in the schema",
        }
    )


def kill_one(pdf: pd.DataFrame, config) -> pd.DataFrame:
    """Kills its own worker for one key (never the test process itself)."""
    if pdf["key"].iloc[0] == config["kill"] and os.getpid() != config["parent"]:
        os.kill(os.getpid(), signal.SIGKILL)
    return running_total(pdf, config)


def missing_column(pdf: pd.DataFrame, config) -> pd.DataFrame:
    return running_total(pdf, config).drop(columns=["cum"])


def died(key: str, reason: str) -> pd.DataFrame:
    return pd.DataFrame({"key": [key], "t": [-1], "cum": [0], "n": [0], "reason": [reason]})


def _frame(n_keys: int = 30, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 20, n_keys)
    keys = np.repeat([f"K{i:02d}" for i in range(n_keys)], sizes)
    t = np.concatenate([rng.permutation(s) for s in sizes])
    return pd.DataFrame(
        {"key": keys, "t": t.astype("int64"), "v": rng.integers(-50, 50, len(keys)).astype("int64")}
    )


def _expected(frame: pd.DataFrame) -> pd.DataFrame:
    parts = [running_total(g, None) for _, g in frame.groupby("key", sort=True)]
    return _canon(pd.concat(parts, ignore_index=True)[SCHEMA.names])


def _canon(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values(["key", "t"], kind="stable").reset_index(drop=True)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("shuffle", [False, True], ids=["ordered", "shuffled"])
def test_same_as_pandas_groupby(workers, shuffle):
    frame = _frame()
    expected = _expected(frame)
    if shuffle:
        frame = frame.sample(frac=1.0, random_state=1).reset_index(drop=True)
    seen = []
    out = LocalEngine(workers=workers, chunk_series=4).map_groups(
        frame, "key", running_total, SCHEMA, None, progress=lambda done, total: seen.append((done, total))
    )
    assert list(out.columns) == SCHEMA.names
    pd.testing.assert_frame_equal(_canon(out), expected)
    assert len(out) == len(frame)
    assert seen[-1] == (30, 30)


def test_the_queue_is_bounded_by_series_and_by_rows():
    """Chunks in flight: at most ``queued_series`` series' worth, and past two chunks per
    worker fewer than ``queued_rows`` input rows (``2 x batch_rows`` from a config); the
    tightest bound still gives every group's result."""
    from forecasting.config import from_dict

    engine = LocalEngine(workers=2, chunk_series=8, queued_series=64, queued_rows=100)
    assert engine.in_flight == 8
    assert engine.room(3, 10_000) and not engine.room(4, 100) and engine.room(4, 99)
    assert not engine.room(8, 0)
    assert LocalEngine(workers=2, queued_series=64).room(7, 10**9)  # no row bound
    assert LocalEngine.from_config(from_dict({"batch_rows": 5000, "workers": 2})).queued_rows == 10_000
    frame = _frame(40, seed=3)
    tight = LocalEngine(workers=2, chunk_series=2, queued_rows=1)
    out = tight.map_groups(frame, "key", running_total, SCHEMA, None)
    pd.testing.assert_frame_equal(_canon(out), _expected(frame))


def test_empty_input_gives_the_schema():
    empty = _frame().iloc[:0]
    for workers in (1, 2):
        out = LocalEngine(workers=workers).map_groups(empty, "key", running_total, SCHEMA, None)
        assert out.empty
        assert list(out.columns) == SCHEMA.names
        assert pa.Schema.from_pandas(out, preserve_index=False).names == SCHEMA.names


def test_a_missing_column_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"no column\(s\) \['cum'\]"):
        LocalEngine(workers=2).map_groups(_frame(6), "key", missing_column, SCHEMA, None)


def test_a_worker_killed_by_one_series_costs_only_that_series():
    frame = _frame(12, seed=3)
    config = {"kill": "K05", "parent": os.getpid()}
    out = LocalEngine(workers=2, chunk_series=2).map_groups(
        frame, "key", kill_one, SCHEMA, config, on_error=died
    )

    assert list(out.columns) == SCHEMA.names
    dead = out[out["key"] == "K05"]
    assert len(dead) == 1
    assert "worker process died" in dead["reason"].iloc[0]
    assert dead["t"].iloc[0] == -1

    rest = _canon(out[out["key"] != "K05"])
    pd.testing.assert_frame_equal(rest, _expected(frame[frame["key"] != "K05"]))
    assert rest["reason"].isna().all()
    assert set(out["key"]) == set(frame["key"])


def test_a_killed_worker_without_on_error_raises():
    frame = _frame(3, seed=4)
    config = {"kill": "K01", "parent": os.getpid()}
    with pytest.raises(BrokenProcessPool):
        LocalEngine(workers=2).map_groups(frame, "key", kill_one, SCHEMA, config)


def test_checkpoints_call_the_installed_hook_and_know_their_names(checkpoint_hook):
    checkpoints.checkpoint("mid_train")  # no hook: nothing happens
    seen = []
    checkpoint_hook(lambda name, **info: seen.append((name, info)))
    checkpoints.checkpoint("stream_after_commit", batch_id=3)
    assert seen == [("stream_after_commit", {"batch_id": 3})]
    with pytest.raises(ValueError, match="unknown checkpoint 'nowhere'"):
        checkpoints.checkpoint("nowhere")


def test_the_installed_hook_reaches_the_workers(checkpoint_hook):
    """A hook that kills the worker about to run ``running_total`` on K02 or K07 (every
    time, the retry included): it was shipped to the pool's workers with its settings."""
    frame = _frame(10, seed=5)
    checkpoint_hook(Faults(kill_at="worker:running_total:K02,K07"))
    out = LocalEngine(workers=2, chunk_series=3).map_groups(
        frame, "key", running_total, SCHEMA, None, on_error=died
    )
    dead = out[out["reason"].notna()]
    assert sorted(dead["key"]) == ["K02", "K07"]
    assert dead["reason"].str.contains("worker process died twice").all()
    rest = _canon(out[out["reason"].isna()])
    pd.testing.assert_frame_equal(rest, _expected(frame[~frame["key"].isin(["K02", "K07"])]))


PROBE = """
import sys
from training.engines.local import LocalEngine, preload


def imported(_):
    return "probe_main" in sys.modules, "training.jobs.nightly" in sys.modules


if __name__ == "__main__":
    import training.jobs.nightly  # noqa: F401 - what a job's main imports (a worker's run of this file does not)

    extra = preload()
    print("probe_main" in extra, "training.jobs.nightly" in extra)
    pool = LocalEngine(workers=2)._pool(1)
    print(pool.submit(imported, 0).result())
    pool.shutdown()
"""


def test_workers_of_a_python_m_driver_find_its_imports_without_importing_it(tmp_path):
    """A driver run as ``python -m MODULE``: its workers are forked from a server that
    imported the product modules the driver imported (here only under its ``__main__``
    guard, which a worker's run of MODULE skips: a worker that has them got them from the
    server), but not MODULE itself: a worker runs it again as ``__mp_main__``, and
    ``runpy`` warns in every worker when it finds MODULE imported already."""
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "probe_main.py").write_text(PROBE)
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), root])}
    out = subprocess.run(
        [sys.executable, "-m", "probe_main"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[-2] == "False True"  # preloaded: the jobs, not the main module
    assert lines[-1] == "(False, True)"  # the worker has the jobs, runs main as __mp_main__
    assert "RuntimeWarning" not in out.stderr, out.stderr
