"""Bad input: one nightly over a folder of good and bad files and series. The run must
finish; every refused file and every quarantined series gets its reason; every good
series is still forecast; silver and gold schemas do not move.

Decisions tested here (see forecasting/cleaning.py and training/jobs/ingest.py):

* readings later than now + 1 day quarantine the series as ``future_timestamps``;
* a series over ``cleaning.max_points_per_series`` is quarantined as ``too_large``
  (configurable), and is cleaned and trained normally under the limit;
* ``±inf`` readings count as missing (filled like gaps), and duplicated timestamps keep
  the reading that came last;
* columns outside the contract follow ``ingest.extra_columns`` (ignore | refuse | add).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from reliability_support import TABLES, mlflow_template, new_lake

from forecasting.generator import generate

H = 24
GOOD = [f"MTR-{i:05d}" for i in range(1, 9)]
KEPT = ["INF-1", "DUP-1", "TZ-1", "MIXTZ-1", "EXTRA-1"]  # odd but usable: forecast
QUARANTINED = {
    "NAN-1": "all_missing",
    "ONE-1": "too_short",
    "SHORT-1": "too_short",
    "ZERO-1": "constant",
    "FLAT-1": "constant",
    "NEG-1": "negative_values",
    "IRREG-1": "irregular",
    "FUTURE-1": "future_timestamps",
    "BIG-1": "too_large",
}
REFUSED = {  # file -> what its reason must say
    "empty.csv": "the file is empty",
    "header_only.csv": "header but no rows",
    "missing_y.csv": "missing column(s) y",
    "text_y.csv": "column y has non-numeric value 'abc'",
    "bad_ts.csv": "column ts has a value that is not a timestamp",
    "epoch_ts.parquet": "column ts holds numbers",
    "latin1.csv": "not UTF-8",
}
LIMIT = 10_000  # cleaning.max_points_per_series here; BIG-1 has 33,600 rows


def _iso(ts: pd.Series, offset: str) -> list[str]:
    """Naive UTC instants written in another UTC offset (``+09:00``) or ``Z``."""
    if offset == "Z":
        return [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in ts]
    local = (
        pd.to_datetime(ts)
        .dt.tz_localize("UTC")
        .dt.tz_convert(f"Etc/GMT{'-' if offset[0] == '+' else '+'}{int(offset[1:3])}")
    )
    return [t.strftime("%Y-%m-%dT%H:%M:%S") + offset for t in local]


def build_source(folder) -> dict[str, pd.DataFrame]:
    """Write the good and bad files; return the readings each odd series should end with."""
    folder.mkdir()
    base = generate(n_series=13, days=14, freq="h", seed=5, clean=True).readings
    base["ts"] = base["ts"].astype("datetime64[us]")
    by_id = {sid: g.reset_index(drop=True) for sid, g in base.groupby("series_id")}
    # timezone-aware Parquet (UTC+9): ingest converts to naive UTC
    tokyo = generate(n_series=8, days=14, freq="h", seed=5, clean=True, tz="Asia/Tokyo").readings
    tokyo.to_parquet(folder / "good.parquet", index=False)

    def like(src: str, sid: str) -> pd.DataFrame:
        return by_id[src].assign(series_id=sid)[["series_id", "ts", "y"]]

    expected: dict[str, pd.DataFrame] = {}
    inf = like("MTR-00009", "INF-1")
    inf.loc[[50, 120], "y"] = np.inf
    inf.loc[200, "y"] = -np.inf
    expected["INF-1"] = inf
    dup = like("MTR-00010", "DUP-1")
    extra = dup.iloc[[30, 31, 32]].assign(y=lambda d: d["y"] * 1.3)  # conflicting, later rows
    expected["DUP-1"] = pd.concat([dup.drop(index=[30, 31, 32]), extra]).sort_values("ts")
    dup = pd.concat([dup, extra], ignore_index=True)
    tz1 = like("MTR-00011", "TZ-1")
    expected["TZ-1"] = tz1.copy()
    tz1["ts"] = _iso(tz1["ts"], "+01:00")
    mixed = like("MTR-00012", "MIXTZ-1")
    expected["MIXTZ-1"] = mixed.copy()
    half = len(mixed) // 2
    mixed["ts"] = _iso(mixed["ts"].iloc[:half], "Z") + _iso(mixed["ts"].iloc[half:], "+02:00")

    n = len(by_id["MTR-00001"])
    y1 = by_id["MTR-00001"]["y"].to_numpy()
    ts1 = by_id["MTR-00001"]["ts"]
    irregular = ts1.copy()
    irregular.iloc[::5] += pd.Timedelta("17min")  # 20% off the hourly grid
    now = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("h")
    bad = [
        pd.DataFrame({"series_id": "NAN-1", "ts": ts1, "y": np.nan}),
        pd.DataFrame({"series_id": "ONE-1", "ts": ts1.iloc[:1], "y": 1.0}),
        # 10 readings: under cold_start.min_length (a day of steps), so too short even for a
        # cold-start forecast (tests/test_cold_start.py has the meters between the two)
        pd.DataFrame({"series_id": "SHORT-1", "ts": ts1.iloc[:10], "y": y1[:10]}),
        pd.DataFrame({"series_id": "ZERO-1", "ts": ts1, "y": 0.0}),
        pd.DataFrame({"series_id": "FLAT-1", "ts": ts1, "y": 5.0}),
        pd.DataFrame({"series_id": "NEG-1", "ts": ts1, "y": np.where(np.arange(n) < n // 10, -y1, y1)}),
        pd.DataFrame({"series_id": "IRREG-1", "ts": irregular, "y": y1}),
        pd.DataFrame(
            {
                "series_id": "FUTURE-1",
                "ts": pd.date_range(now - pd.Timedelta("10D"), periods=n, freq="h"),
                "y": y1,
            }
        ),
    ]
    frames = [inf, dup]
    for f in bad:
        frames.append(f.assign(ts=f["ts"].dt.strftime("%Y-%m-%dT%H:%M:%S")))
    frames += [tz1, mixed]
    pd.concat(frames, ignore_index=True).to_csv(folder / "series.csv", index=False)

    big_ts = pd.date_range(end=ts1.iloc[-1], periods=100 * n, freq="h")
    pd.DataFrame({"series_id": "BIG-1", "ts": big_ts, "y": np.tile(y1, 100)}).to_parquet(
        folder / "big.parquet"
    )
    extra_col = like("MTR-00013", "EXTRA-1").assign(note="checked", meter_type=3)
    expected["EXTRA-1"] = extra_col[["series_id", "ts", "y"]]
    extra_col.to_csv(folder / "extra.csv", index=False)

    (folder / "empty.csv").write_bytes(b"")
    (folder / "header_only.csv").write_text("series_id,ts,y\n")
    (folder / "missing_y.csv").write_text("series_id,ts\nM,2024-01-01T00:00:00\n")
    (folder / "text_y.csv").write_text(
        "series_id,ts,y\nM,2024-01-01T00:00:00,1.5\nM,2024-01-01T01:00:00,abc\n"
    )
    (folder / "bad_ts.csv").write_text("series_id,ts,y\nM,2024-01-01T00:00:00,1.5\nM,not a time,2.0\n")
    pq.write_table(
        pa.table({"series_id": ["M", "M"], "ts": [1704067200, 1704070800], "y": [1.0, 2.0]}),
        folder / "epoch_ts.parquet",
    )
    (folder / "latin1.csv").write_bytes(
        "series_id,ts,y,site\nM,2024-01-01T00:00:00,1.0,Caf\u00e9\n".encode("latin-1")
    )
    return expected


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One nightly, in this process, over the bad-input folder."""
    from forecasting.config import load_config
    from training.jobs.nightly import nightly
    from training.tables import Lakehouse

    tmp = tmp_path_factory.mktemp("bad_input")
    expected = build_source(tmp / "raw")
    lake_dir = new_lake(tmp / "lake", mlflow_template(tmp / "template"))
    cfg = load_config(
        lakehouse=str(lake_dir),
        horizon=H,
        models=["seasonal_naive"],
        workers=1,
        **{
            "cleaning.min_length": 96,
            "cleaning.max_points_per_series": LIMIT,
            "mlflow.tracking_uri": f"sqlite:///{lake_dir / 'mlflow.db'}",
            "mlflow.sample_plots": 0,
            "nightly.source": str(tmp / "raw"),
        },
    )
    lake = Lakehouse.from_config(cfg)
    report = nightly(lake, cfg)
    return cfg, lake, report, expected, tmp


def test_the_run_finishes_and_every_good_series_is_forecast(run):
    cfg, lake, report, _, _ = run
    assert not report.failed
    assert all(
        report.steps[s].startswith("done") for s in ("ingest", "refine", "train", "forecast", "aggregate")
    )
    fc = lake.read("gold/forecasts")
    per_series = fc.groupby("series_id").size()
    assert sorted(per_series.index) == sorted(GOOD + KEPT)
    assert (per_series == H).all()
    assert np.isfinite(fc[["yhat", "yhat_lower_95", "yhat_upper_95"]].to_numpy()).all()
    sel = lake.read("gold/selection").set_index("series_id")
    assert (sel.loc[GOOD + KEPT, "status"] == "ok").all()


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_each_refused_file_has_its_reason_and_left_no_row(run, name):
    _, lake, report, _, tmp = run
    path = str(tmp / "raw" / name)
    assert path in report.ingest.refused
    reason = report.ingest.refused[path]
    assert REFUSED[name] in reason and name in reason
    assert reason in report.steps["ingest"]  # nightly surfaces it
    assert path not in set(lake.read("bronze/readings", columns=["_source_file"])["_source_file"])


@pytest.mark.parametrize("sid", sorted(QUARANTINED))
def test_each_bad_series_is_quarantined_with_its_reason(run, sid):
    _, lake, _, _, _ = run
    q = lake.read("silver/quarantine").set_index("series_id")
    assert q.loc[sid, "reason"] == QUARANTINED[sid]
    assert len(q.loc[sid, "detail"]) > 0
    sel = lake.read("gold/selection").set_index("series_id")
    assert sel.loc[sid, "status"] == "quarantined" and sel.loc[sid, "reason"].startswith(QUARANTINED[sid])
    assert sid not in set(lake.read("silver/readings", columns=["series_id"])["series_id"])


def test_details_name_the_limits(run):
    _, lake, _, _, _ = run
    q = lake.read("silver/quarantine").set_index("series_id")["detail"]
    assert f"max_points_per_series={LIMIT}" in q["BIG-1"] and "33600 rows" in q["BIG-1"]
    assert "later than now + 1 day" in q["FUTURE-1"]
    assert "off the h grid" in q["IRREG-1"]
    assert len(q) == len(QUARANTINED)  # nothing good was quarantined


@pytest.mark.parametrize("sid", KEPT)
def test_odd_but_usable_series_land_in_silver_as_meant(run, sid):
    """±inf is a gap (filled, flagged); the later duplicate wins; offsets and Z are UTC;
    extra columns are ignored (the default)."""
    _, lake, _, expected, _ = run
    got = (
        lake.read("silver/readings", filters=[("series_id", "=", sid)])
        .sort_values("ts")
        .reset_index(drop=True)
    )
    want = expected[sid].sort_values("ts").reset_index(drop=True)
    assert got["ts"].tolist() == want["ts"].tolist()
    finite = np.isfinite(want["y"].to_numpy())
    np.testing.assert_allclose(got["y"].to_numpy()[finite], want["y"].to_numpy()[finite])
    assert np.isfinite(got["y"]).all()
    assert got["is_filled"].tolist() == (~finite).tolist()


def test_timezone_aware_parquet_is_stored_as_utc(run):
    _, lake, _, _, _ = run
    utc = generate(n_series=8, days=14, freq="h", seed=5, clean=True).readings
    got = lake.read("silver/readings", filters=[("series_id", "=", "MTR-00001")]).sort_values("ts")
    assert got["ts"].tolist() == utc.loc[utc["series_id"] == "MTR-00001", "ts"].tolist()


def test_ignored_columns_are_reported_and_schemas_do_not_move(run):
    _, lake, report, _, tmp = run
    path = str(tmp / "raw" / "extra.csv")
    assert report.ingest.ignored_columns == {path: ["note", "meter_type"]}
    assert "ignored column(s) note, meter_type" in report.steps["ingest"]
    for name in (t for t in TABLES if t != "gold/gate"):  # gold/gate: from the second version on
        got = lake.arrow(name).schema
        assert [(f.name, f.type) for f in got] == [(f.name, f.type) for f in lake.schema(name)], name


def test_unknown_series_at_scoring_are_named_or_skipped(run):
    from mlflow.exceptions import MlflowException

    from registry import pyfunc
    from registry.connection import set_uris

    cfg = run[0]
    set_uris(cfg)
    model = pyfunc.load_champion(cfg)
    ask = pd.DataFrame({"series_id": ["MTR-00001", "NOPE-1", "NAN-1"], "horizon": [3, 3, 3]})
    with pytest.raises(MlflowException, match=r"2 unknown series id\(s\): NAN-1, NOPE-1"):
        model.predict(ask)
    out = model.predict(ask, params={"unknown": "skip"})
    assert set(out["series_id"]) == {"MTR-00001"} and len(out) == 3


def test_a_refused_file_leaves_every_table_untouched(run, tmp_path):
    cfg, lake, _, _, _ = run
    from registry.connection import configure, set_uris
    from training.jobs.nightly import nightly

    before = {t: (lake.version(t), len(lake.read(t))) for t in lake.existing()}
    n_runs = len(set_uris(cfg).search_runs([configure(cfg).get_experiment_by_name("mmf").experiment_id]))
    src = tmp_path / "new"
    src.mkdir()
    (src / "later.csv").write_text("series_id,ts,y\nMTR-00001,2024-01-15T00:00:00,abc\n")
    report = nightly(lake, cfg.replace(**{"nightly.source": str(src)}))
    assert "1 file(s) refused" in report.steps["ingest"] and "later.csv" in report.steps["ingest"]
    assert all(report.steps[s].startswith("skipped") for s in ("refine", "train", "forecast", "aggregate"))
    assert {t: (lake.version(t), len(lake.read(t))) for t in lake.existing()} == before
    assert (
        len(set_uris(cfg).search_runs([configure(cfg).get_experiment_by_name("mmf").experiment_id])) == n_runs
    )


def test_a_series_100x_larger_is_processed_under_the_limit(run):
    """The same BIG-1 rows with the default limit: cleaned and trained, not crashed."""
    from forecasting.cleaning import clean_series
    from forecasting.pipeline import process_series

    cfg, lake, _, _, _ = run
    big = lake.read("bronze/readings", filters=[("series_id", "=", "BIG-1")])
    assert len(big) == 33_600
    default = cfg.replace(**{"cleaning.max_points_per_series": 500_000, "freq": "h"})
    silver = clean_series(big, default)
    assert silver["_reason"].isna().all() and len(silver) == 33_600
    result = process_series(silver.drop(columns=["_reason", "_detail", "_n_duplicates"]), default)
    assert result["status"].iloc[0] == "ok", result["reason"].iloc[0]


# -- ingest.extra_columns ------------------------------------------------------------------
def _extra_file(folder):
    folder.mkdir()
    data = generate(n_series=3, days=14, freq="h", seed=2, clean=True).readings
    data.assign(note="x", meter_type=np.where(data.index % 2, 7, np.nan)).to_csv(
        folder / "extra.csv", index=False
    )
    return folder


def test_extra_columns_refuse_names_them_and_writes_nothing(tmp_path):
    from training.jobs.ingest import ingest
    from training.tables import Lakehouse

    lake = Lakehouse(str(tmp_path / "lake"))
    report = ingest(lake, _extra_file(tmp_path / "raw"), strict=False, extra_columns="refuse")
    [(path, reason)] = report.refused.items()
    assert "column(s) note, meter_type outside the contract" in reason and path.endswith("extra.csv")
    assert not lake.exists("bronze/readings")


def test_extra_columns_add_reach_bronze_only(tmp_path):
    """``add``: new nullable string columns in bronze; a later file without them still
    lands; silver and gold keep their contract schemas."""
    from forecasting.config import load_config
    from training.jobs.nightly import nightly
    from training.tables import Lakehouse

    lake_dir = new_lake(tmp_path / "lake", mlflow_template(tmp_path / "template"))
    cfg = load_config(
        lakehouse=str(lake_dir),
        horizon=H,
        models=["seasonal_naive"],
        workers=1,
        **{
            "cleaning.min_length": 96,
            "mlflow.tracking_uri": f"sqlite:///{lake_dir / 'mlflow.db'}",
            "mlflow.sample_plots": 0,
            "ingest.extra_columns": "add",
            "nightly.source": str(_extra_file(tmp_path / "raw")),
        },
    )
    lake = Lakehouse.from_config(cfg)
    report = nightly(lake, cfg)
    assert (
        report.ingest.added_columns and "added column(s) note, meter_type to bronze" in report.steps["ingest"]
    )
    plain = tmp_path / "plain"
    plain.mkdir()
    generate(n_series=1, days=14, freq="h", seed=9, clean=True).readings.assign(series_id="P-1").to_parquet(
        plain / "p.parquet"
    )
    from training.jobs.ingest import ingest

    ingest(lake, plain, strict=False, extra_columns="add")
    bronze = lake.read("bronze/readings")
    assert lake.arrow("bronze/readings").schema.field("note").type == pa.string()
    assert set(bronze["note"].dropna()) == {"x"}
    assert set(bronze["meter_type"].dropna()) == {"7.0"}
    assert bronze.loc[bronze["series_id"] == "P-1", "note"].isna().all()
    for name in (
        "silver/readings",
        "silver/series",
        "silver/quarantine",
        "gold/forecasts",
        "gold/selection",
        "gold/backtest",
    ):
        assert [(f.name, f.type) for f in lake.arrow(name).schema] == [
            (f.name, f.type) for f in lake.schema(name)
        ], name
    assert len(lake.read("gold/forecasts")) == 3 * H
