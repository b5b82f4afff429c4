"""``mmf ingest``: raw files -> bronze/readings as received, with lineage; bad files are
refused whole and change nothing; the same content twice adds nothing."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from forecasting import contract as C
from forecasting.errors import DataContractError
from forecasting.generator import generate, write
from training.jobs.ingest import ingest
from training.tables import Lakehouse

BRONZE = "bronze/readings"
DATA_COLS = [C.SERIES_ID, C.TS, C.Y, "temperature", "site", "region"]
MMF = str(Path(sys.executable).with_name("mmf"))


@pytest.fixture
def lake(lake_root):
    return Lakehouse(str(lake_root))


@pytest.fixture(scope="module")
def small():
    """6 hourly meters x 2 days, with faults (NaN values, duplicates, gaps)."""
    return generate(n_series=6, days=2, seed=4, fault_share=0.5)


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    return df.sort_values([C.SERIES_ID, C.TS, C.Y], kind="stable").reset_index(drop=True)


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _history_len(lake: Lakehouse) -> int:
    return len(lake.history(BRONZE))


# -- the happy path -----------------------------------------------------------------------


def test_ingest_parquet_rows_and_lineage(lake, tmp_path, small):
    path = write(small, tmp_path / "meters.parquet")
    before = pd.Timestamp.now(tz="UTC")
    rep = ingest(lake, path)

    bronze = lake.read(BRONZE)
    assert rep.added == {str(path): len(small.readings)}
    assert rep.rows == len(bronze) == len(small.readings)
    assert rep.bronze_version == lake.version(BRONZE) == 0
    assert list(bronze.columns) == C.BRONZE_READINGS.names

    got = _sorted(bronze[DATA_COLS]).astype({C.TS: "datetime64[ns]"})
    pd.testing.assert_frame_equal(got, _sorted(small.readings[DATA_COLS]), check_dtype=False)

    assert (bronze["_source_file"] == str(path)).all()
    assert (bronze["_content_hash"] == hashlib.sha256(path.read_bytes()).hexdigest()).all()
    assert (bronze["_batch_id"] == rep.batch_id).all()
    assert bronze["_ingested_at"].nunique() == 1
    stamp = bronze["_ingested_at"].iloc[0]
    assert str(stamp.tz) == "UTC"
    assert before <= stamp <= pd.Timestamp.now(tz="UTC")
    # the batch id is recorded on the commit
    assert lake.history(BRONZE)[0]["mmf.batch_id"] == rep.batch_id


def test_same_file_twice_adds_nothing(lake, tmp_path, small):
    path = write(small, tmp_path / "meters.parquet")
    first = ingest(lake, path)
    n_rows, n_commits = len(lake.read(BRONZE)), _history_len(lake)

    again = ingest(lake, path)
    assert again.added == {}
    assert again.skipped == [str(path)]
    assert again.bronze_version == first.bronze_version == lake.version(BRONZE)
    assert len(lake.read(BRONZE)) == n_rows
    assert _history_len(lake) == n_commits


def test_same_content_under_another_name_is_skipped(lake, tmp_path, small):
    path = write(small, tmp_path / "meters.parquet")
    ingest(lake, path)
    copy = tmp_path / "renamed" / "copy.parquet"
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())

    rep = ingest(lake, copy)
    assert rep.skipped == [str(copy)]
    assert rep.added == {}
    assert lake.version(BRONZE) == 0
    bronze = lake.read(BRONZE)
    assert set(bronze["_source_file"]) == {str(path)}


def test_same_content_twice_in_one_folder_lands_once(lake, tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    text = "series_id,ts,y\nA,2024-01-01 00:00,1.5\nA,2024-01-01 01:00,2.5\n"
    _csv(src / "a.csv", text)
    _csv(src / "b.csv", text)
    rep = ingest(lake, src, strict=False)
    assert rep.added == {str(src / "a.csv"): 2}
    assert rep.skipped == [str(src / "b.csv")]
    assert len(lake.read(BRONZE)) == 2


# -- refused files change nothing -----------------------------------------------------------


def test_missing_column_refused_and_no_table_created(lake, tmp_path):
    path = _csv(tmp_path / "noy.csv", "series_id,ts,value\nA,2024-01-01 00:00,1\n")
    with pytest.raises(DataContractError) as err:
        ingest(lake, path)
    msg = str(err.value)
    assert str(path) in msg
    assert "missing column(s) y" in msg
    assert "found series_id, ts, value" in msg
    assert not lake.exists(BRONZE)


def test_missing_column_refused_and_existing_bronze_unchanged(lake, tmp_path, small):
    ingest(lake, write(small, tmp_path / "meters.parquet"))
    n_rows, n_commits = len(lake.read(BRONZE)), _history_len(lake)

    path = _csv(tmp_path / "noy.csv", "series_id,ts\nA,2024-01-01 00:00\n")
    with pytest.raises(DataContractError, match=r"noy\.csv: missing column\(s\) y"):
        ingest(lake, path)
    assert lake.version(BRONZE) == 0
    assert len(lake.read(BRONZE)) == n_rows
    assert _history_len(lake) == n_commits


def test_mistyped_y_refused_naming_column_and_value(lake, tmp_path):
    path = _csv(tmp_path / "abc.csv", "series_id,ts,y\nA,2024-01-01 00:00,1\nA,2024-01-01 01:00,abc\n")
    with pytest.raises(DataContractError) as err:
        ingest(lake, path)
    msg = str(err.value)
    assert str(path) in msg
    assert "column y" in msg
    assert "'abc'" in msg
    assert not lake.exists(BRONZE)


def test_bad_timestamp_refused_naming_column_and_value(lake, tmp_path):
    path = _csv(tmp_path / "ts.csv", "series_id,ts,y\nA,2024-01-01 00:00,1\nA,yesterday,2\n")
    with pytest.raises(DataContractError) as err:
        ingest(lake, path)
    assert "column ts" in str(err.value)
    assert "yesterday" in str(err.value)
    assert not lake.exists(BRONZE)


@pytest.mark.parametrize(
    "content, fragment", [(b"", "the file is empty"), (b"series_id,ts,y\n", "header but no rows")]
)
def test_empty_file_refused(lake, tmp_path, content, fragment):
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    with pytest.raises(DataContractError) as err:
        ingest(lake, path)
    assert str(path) in str(err.value)
    assert fragment in str(err.value)
    assert not lake.exists(BRONZE)


def test_empty_parquet_refused(lake, tmp_path):
    path = tmp_path / "empty.parquet"
    pd.DataFrame(
        {
            "series_id": pd.Series([], dtype=object),
            "ts": pd.Series([], dtype="datetime64[ns]"),
            "y": pd.Series([], dtype=float),
        }
    ).to_parquet(path)
    with pytest.raises(DataContractError, match="header but no rows"):
        ingest(lake, path)
    assert not lake.exists(BRONZE)


def test_non_utf8_csv_refused(lake, tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("series_id,ts,y,site\nA,2024-01-01 00:00,1,Zürich\n".encode("latin-1"))
    with pytest.raises(DataContractError) as err:
        ingest(lake, path)
    assert str(path) in str(err.value)
    assert "not UTF-8" in str(err.value)
    assert not lake.exists(BRONZE)


def test_utf8_csv_with_byte_order_mark_is_accepted(lake, tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffseries_id,ts,y,site\nA,2024-01-01 00:00,1.5,Zürich\n".encode("utf-8"))
    rep = ingest(lake, path)
    assert rep.added == {str(path): 1}
    row = lake.read(BRONZE).iloc[0]
    assert (row[C.SERIES_ID], row[C.Y], row["site"]) == ("A", 1.5, "Zürich")


# -- values as received ---------------------------------------------------------------------


def test_timezone_aware_timestamps_stored_as_naive_utc(lake, tmp_path):
    # across the spring DST change in London, and in summer time
    kw = dict(n_series=3, days=3, seed=1, clean=True, start="2024-03-30")
    local = generate(tz="Europe/London", **kw)
    utc = generate(**kw)
    assert str(local.readings[C.TS].dt.tz) == "Europe/London"
    ingest(lake, write(local, tmp_path / "london.parquet"))

    bronze = _sorted(lake.read(BRONZE))
    assert bronze[C.TS].dtype == np.dtype("datetime64[us]")
    expected = _sorted(utc.readings)
    np.testing.assert_array_equal(
        bronze[C.TS].to_numpy("datetime64[ns]"), expected[C.TS].to_numpy("datetime64[ns]")
    )
    np.testing.assert_array_equal(bronze[C.Y].to_numpy(), expected[C.Y].to_numpy())


def test_csv_offsets_converted_and_naive_taken_as_utc(lake, tmp_path):
    path = _csv(
        tmp_path / "offsets.csv",
        "series_id,ts,y\n"
        "A,2024-06-01T01:00:00+01:00,1\n"  # 00:00 UTC
        "A,2024-06-01T01:00:00Z,2\n"
        "A,2024-06-01 02:00:00,3\n",  # naive: UTC
    )
    ingest(lake, path)
    got = lake.read(BRONZE).sort_values(C.Y)[C.TS].tolist()
    assert got == [
        pd.Timestamp("2024-06-01 00:00"),
        pd.Timestamp("2024-06-01 01:00"),
        pd.Timestamp("2024-06-01 02:00"),
    ]


def test_missing_and_infinite_values_kept_as_received(lake, tmp_path):
    path = _csv(
        tmp_path / "na.csv",
        "series_id,ts,y\nB,2024-01-01 00:00,1\nB,2024-01-01 01:00,\nB,2024-01-01 02:00,NaN\nB,2024-01-01 03:00,-inf\n",
    )
    ingest(lake, path)
    y = lake.read(BRONZE).sort_values(C.TS)[C.Y].to_numpy()
    assert y[0] == 1 and np.isnan(y[1]) and np.isnan(y[2]) and y[3] == -np.inf


def test_extra_columns_reported_and_not_stored(lake, tmp_path, small):
    df = small.readings.assign(meter_type="smart", firmware=3)
    path = tmp_path / "extra.parquet"
    df.to_parquet(path)
    rep = ingest(lake, path)
    assert rep.ignored_columns == {str(path): ["meter_type", "firmware"]}
    bronze = lake.read(BRONZE)
    assert list(bronze.columns) == C.BRONZE_READINGS.names
    assert len(bronze) == len(df)


def test_real_dataset_layout_ingests(lake, tmp_path):
    """The layout of ../shared/data (series_id, ts, y, household_idx, ts_europe_london),
    built here: ts is kept, the two extra columns are reported and ignored."""
    ts = pd.date_range("2009-03-28", periods=4 * 48, freq="30min")  # spans the DST change
    n = len(ts)
    df = pd.DataFrame(
        {
            "series_id": np.repeat(["X1", "X2"], n),
            "ts": np.tile(ts.to_numpy(), 2),
            "y": np.round(np.random.default_rng(0).gamma(2.0, 0.1, 2 * n), 3),
            "household_idx": np.repeat(np.array([1, 2], dtype="int16"), n),
        }
    )
    df["ts_europe_london"] = (
        pd.DatetimeIndex(df["ts"]).tz_localize("UTC").tz_convert("Europe/London").tz_localize(None)
    )
    path = tmp_path / "edrp_like.parquet"
    df.to_parquet(path, index=False)

    rep = ingest(lake, path)
    assert rep.added == {str(path): 2 * n}
    assert rep.ignored_columns == {str(path): ["household_idx", "ts_europe_london"]}
    bronze = _sorted(lake.read(BRONZE))
    np.testing.assert_array_equal(bronze[C.TS].to_numpy("datetime64[ns]"), _sorted(df)["ts"].to_numpy())
    np.testing.assert_array_equal(bronze[C.Y].to_numpy(), _sorted(df)["y"].to_numpy())
    assert bronze[["temperature"]].isna().all().all()
    assert bronze["site"].isna().all() and bronze["region"].isna().all()


# -- folders and concurrency ------------------------------------------------------------------


def test_folder_with_a_bad_file_not_strict(lake, tmp_path, small):
    src = tmp_path / "raw"
    src.mkdir()
    good = write(small, src / "good.parquet")
    bad = _csv(src / "bad.csv", "series_id,ts,y\nA,2024-01-01 00:00,abc\n")

    rep = ingest(lake, src, strict=False)
    assert rep.added == {str(good): len(small.readings)}
    assert list(rep.refused) == [str(bad)]
    assert "column y" in rep.refused[str(bad)]
    bronze = lake.read(BRONZE)
    assert len(bronze) == len(small.readings)
    assert set(bronze["_source_file"]) == {str(good)}


def _parquet(path: Path, series_id: pa.Array, y: pa.Array) -> Path:
    ts = pa.array(pd.date_range("2024-01-01", periods=len(y), freq="h").to_numpy(), pa.timestamp("us"))
    pq.write_table(pa.table({"series_id": series_id, "ts": ts, "y": y}), path)
    return path


@pytest.mark.parametrize(
    "name, series_id, y, fragments",
    [
        (
            "list_ids.parquet",
            pa.array([["A"], ["A"]], pa.list_(pa.string())),
            pa.array([1.0, 2.0]),
            ["column series_id", "lists", "expected text"],
        ),
        (
            "bool_y.parquet",
            pa.array(["A", "A"]),
            pa.array([True, False]),
            ["column y", "booleans", "expected numbers"],
        ),
        (
            "list_y.parquet",
            pa.array(["A", "A"]),
            pa.array([[1.0], [2.0]], pa.list_(pa.float64())),
            ["column y", "lists", "expected numbers"],
        ),
        (
            "bool_ids.parquet",
            pa.array([True, True]),
            pa.array([1.0, 2.0]),
            ["column series_id", "booleans", "expected text"],
        ),
    ],
)
def test_wrongly_typed_series_id_or_y_refused_other_files_land(
    lake, tmp_path, small, name, series_id, y, fragments
):
    """A Parquet ``series_id`` of lists (or booleans) is not an id, a boolean ``y`` is not
    a reading: the file is refused naming the column, the type found and what is
    expected (never turned into text or 0/1), and the other files still land."""
    src = tmp_path / "raw"
    src.mkdir()
    good = write(small, src / "good.parquet")
    bad = _parquet(src / name, series_id, y)
    rep = ingest(lake, src, strict=False)
    assert rep.added == {str(good): len(small.readings)}
    assert list(rep.refused) == [str(bad)]
    for fragment in fragments:
        assert fragment in rep.refused[str(bad)], rep.refused
    assert set(lake.read(BRONZE)["_source_file"]) == {str(good)}
    with pytest.raises(DataContractError, match="column"):
        ingest(lake, bad)


def test_boolean_y_in_csv_refused(lake, tmp_path):
    path = _csv(tmp_path / "flags.csv", "series_id,ts,y\nA,2024-01-01 00:00,True\nA,2024-01-01 01:00,False\n")
    with pytest.raises(DataContractError) as err:
        ingest(lake, path)
    msg = str(err.value)
    assert str(path) in msg and "column y" in msg and "booleans" in msg and "expected numbers" in msg
    assert not lake.exists(BRONZE)


def test_integer_and_categorical_series_ids_still_land_as_text(lake, tmp_path):
    """Integer meter ids and dictionary-encoded text are ids: they land as text."""
    ints = _parquet(tmp_path / "ints.parquet", pa.array([7, 7], pa.int64()), pa.array([1.0, 2.0]))
    cats = _parquet(
        tmp_path / "cats.parquet", pa.array(["B", "B"]).dictionary_encode(), pa.array([1, 2], pa.int32())
    )
    ingest(lake, ints)
    ingest(lake, cats)
    bronze = lake.read(BRONZE)
    assert sorted(bronze[C.SERIES_ID].unique()) == ["7", "B"]
    assert bronze[C.Y].tolist() == [1.0, 2.0, 1.0, 2.0]


def test_folder_with_a_bad_file_strict_writes_nothing(lake, tmp_path, small):
    src = tmp_path / "raw"
    src.mkdir()
    write(small, src / "a_good.parquet")
    _csv(src / "b_bad.csv", "series_id,ts\nA,2024-01-01 00:00\n")
    with pytest.raises(DataContractError, match="b_bad.csv"):
        ingest(lake, src, strict=True)
    assert not lake.exists(BRONZE)


def test_cli_exit_code_and_messages_for_a_folder(lake_root, tmp_path, small):
    src = tmp_path / "raw"
    src.mkdir()
    write(small, src / "good.parquet")
    _csv(src / "bad.csv", "series_id,ts,value\nA,2024-01-01 00:00,1\n")
    env = {**os.environ, "MMF_LAKEHOUSE": str(lake_root)}
    proc = subprocess.run(
        [MMF, "ingest", "--source", str(src)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 1
    assert f"ingested {len(small.readings):,} rows from {src / 'good.parquet'}" in proc.stdout
    assert f"refused {src / 'bad.csv'}" in proc.stderr
    assert len(Lakehouse(str(lake_root)).read(BRONZE)) == len(small.readings)


def test_concurrent_ingests_from_two_processes_both_land(lake_root, tmp_path):
    a = write(generate(n_series=4, days=3, seed=1, clean=True), tmp_path / "a.parquet")
    b_data = generate(n_series=5, days=3, seed=2, clean=True)
    b_data.readings["series_id"] = "B-" + b_data.readings["series_id"]
    b = write(b_data, tmp_path / "b.parquet")
    env = {**os.environ, "MMF_LAKEHOUSE": str(lake_root)}

    procs = [
        subprocess.Popen(
            # the second queues behind the first on the lakehouse lock
            [MMF, "ingest", "--source", str(p), "--wait", "120"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for p in (a, b)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs

    lake = Lakehouse(str(lake_root))
    bronze = lake.read(BRONZE)
    assert len(bronze) == 4 * 72 + 5 * 72
    assert bronze.groupby("_source_file").size().to_dict() == {str(a): 4 * 72, str(b): 5 * 72}
    assert bronze.groupby("_source_file")["_batch_id"].nunique().to_dict() == {str(a): 1, str(b): 1}
    # each process reports the version it committed, not the other's
    reported = sorted(int(out.strip().rsplit("version ", 1)[1].split()[0]) for out, _ in outs)
    assert reported == [0, 1]
    assert lake.version(BRONZE) == 1


def test_report_version_is_the_commit_of_this_ingest(lake, tmp_path):
    first = ingest(lake, _csv(tmp_path / "a.csv", "series_id,ts,y\nA,2024-01-01,1\n"))
    second = ingest(lake, _csv(tmp_path / "b.csv", "series_id,ts,y\nB,2024-01-01,2\n"))
    assert (first.bronze_version, second.bronze_version) == (0, 1)
    assert lake.read(BRONZE, version=0)[C.SERIES_ID].tolist() == ["A"]
    assert sorted(lake.read(BRONZE, version=1)[C.SERIES_ID]) == ["A", "B"]


def test_an_unreadable_file_is_refused_and_the_others_land(lake, lake_root, tmp_path, small):
    """A file whose read fails (root ignores permissions, so a link to /proc/self/mem,
    which raises EIO, and a link whose target is gone) is refused naming the file."""
    src = tmp_path / "raw"
    src.mkdir()
    good = write(small, src / "good.parquet")
    broken = src / "broken.csv"
    broken.symlink_to("/proc/self/mem")
    gone = src / "gone.parquet"
    gone.symlink_to(tmp_path / "moved-away.parquet")

    rep = ingest(lake, src, strict=False)
    assert rep.added == {str(good): len(small.readings)}
    assert sorted(rep.refused) == [str(broken), str(gone)]
    assert rep.refused[str(broken)].startswith(f"{broken}: cannot be read (Input/output error)")
    assert rep.refused[str(gone)].startswith(f"{gone}: cannot be read (No such file or directory)")
    assert set(lake.read(BRONZE)["_source_file"]) == {str(good)}

    with pytest.raises(DataContractError, match="broken.csv: cannot be read"):
        ingest(lake, broken)  # one file (the CLI's strict mode): a clean error
    env = {**os.environ, "MMF_LAKEHOUSE": str(lake_root)}
    proc = subprocess.run(
        [sys.executable, "-m", "training.cli", "ingest", "--source", str(src)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"skipped {good}: already ingested" in proc.stdout
    assert f"refused {broken}: {broken}: cannot be read" in proc.stderr


# -- commits of whole files of about batch_rows rows -------------------------------------------


def _folder(tmp_path: Path, sizes: list[int]) -> Path:
    """A folder of parquet files of ``sizes`` hourly rows each (one series per file)."""
    src = tmp_path / "raw"
    src.mkdir()
    for i, n in enumerate(sizes):
        ts = pd.date_range("2024-01-01", periods=n, freq="h")
        frame = pd.DataFrame({C.SERIES_ID: f"S{i}", C.TS: ts, C.Y: np.arange(n, dtype=float)})
        frame.to_parquet(src / f"f{i:02d}.parquet", index=False)
    return src


def _commits(lake: Lakehouse) -> list[list[str]]:
    """Each bronze commit's files, oldest first (from its add actions' rows)."""
    rows = lake.read(BRONZE, columns=["_source_file"])
    per_version = []
    for v in range(lake.version(BRONZE) + 1):
        before = set() if v == 0 else set(lake.read(BRONZE, version=v - 1)["_source_file"])
        per_version.append(sorted(set(lake.read(BRONZE, version=v)["_source_file"]) - before))
    assert sum(map(len, per_version)) == rows["_source_file"].nunique()
    return [[Path(f).name for f in files] for files in per_version]


def test_files_committed_in_groups_of_about_batch_rows(lake, tmp_path):
    src = _folder(tmp_path, [400, 400, 400, 2500, 300, 900, 100])
    rep = ingest(lake, src, strict=False, batch_rows=1000)
    # whole files; a group is committed when the next file would take it past 1000 rows
    # or it reaches them; the 2500-row file is a commit of its own
    assert _commits(lake) == [
        ["f00.parquet", "f01.parquet"],
        ["f02.parquet"],
        ["f03.parquet"],
        ["f04.parquet"],
        ["f05.parquet", "f06.parquet"],
    ]
    assert rep.bronze_version == lake.version(BRONZE) == 4
    assert rep.added == {
        str(src / f"f{i:02d}.parquet"): n for i, n in enumerate([400, 400, 400, 2500, 300, 900, 100])
    }
    bronze = lake.read(BRONZE)
    assert len(bronze) == 5000 and (bronze["_batch_id"] == rep.batch_id).all()
    assert bronze["_ingested_at"].nunique() == 1
    table = lake.table(BRONZE)
    for digest in bronze["_content_hash"].unique():  # each file's transaction, in its commit
        assert table.transaction_version(f"mmf-ingest-{digest}") == 1

    # one commit of the same files holds the same rows
    other = Lakehouse(str(tmp_path / "other"))
    ingest(other, src, strict=False)
    assert other.version(BRONZE) == 0
    cols = [C.SERIES_ID, C.TS, C.Y, "_source_file", "_content_hash"]
    pd.testing.assert_frame_equal(
        bronze[cols].sort_values(cols).reset_index(drop=True),
        other.read(BRONZE)[cols].sort_values(cols).reset_index(drop=True),
    )
    again = ingest(lake, src, strict=False, batch_rows=1000)
    assert again.added == {} and len(again.skipped) == 7 and lake.version(BRONZE) == 4


class _FailAtSecondCommit:
    def __init__(self) -> None:
        self.seen = 0

    def __call__(self, name: str, **info) -> None:
        if name == "before_ingest_commit":
            self.seen += 1
            if self.seen == 2:
                raise RuntimeError("stopped before the second commit")


def test_stopped_between_commits_then_the_rest_lands_once(lake, tmp_path, checkpoint_hook):
    src = _folder(tmp_path, [600, 600, 600])
    checkpoint_hook(_FailAtSecondCommit())
    with pytest.raises(RuntimeError, match="second commit"):
        ingest(lake, src, strict=False, batch_rows=1000)
    checkpoint_hook(None)
    assert sorted(lake.read(BRONZE)["_source_file"].unique()) == [str(src / "f00.parquet")]
    rep = ingest(lake, src, strict=False, batch_rows=1000)
    assert rep.skipped == [str(src / "f00.parquet")] and len(rep.added) == 2
    bronze = lake.read(BRONZE)
    assert len(bronze) == 1800 and not bronze.duplicated([C.SERIES_ID, C.TS]).any()


def test_strict_folder_checks_every_file_before_the_first_commit(lake, tmp_path):
    src = _folder(tmp_path, [1500, 200])
    _csv(src / "z_bad.csv", "series_id,ts\nA,2024-01-01 00:00\n")
    with pytest.raises(DataContractError, match="z_bad.csv"):
        ingest(lake, src, strict=True, batch_rows=1000)
    assert not lake.exists(BRONZE)
