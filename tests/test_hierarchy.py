"""Hierarchies (issue 15 item 1, issue 17 item 4): the tree, reconciliation and its
intervals (pure), and the nightly's hierarchy step on real Delta tables and a real
MLflow store: gold/hierarchy coherent at every level to float tolerance, a meter with
no site and a meter whose site changed over time, batches, reruns, gold/portfolio's
intervals, and the Spark engine giving the same table."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hierarchicalforecast.methods import MinTrace
from mlflow.tracking import MlflowClient

from forecasting import contract as C
from forecasting import hierarchy as H
from forecasting import reconciliation as R
from forecasting.generator import generate, write
from training.jobs import hierarchy as hierarchy_job
from training.jobs.ingest import ingest
from training.jobs.nightly import nightly
from training.tables import GOLD_HIERARCHY, GOLD_PORTFOLIO, Lakehouse

LEVELS = ["total", "region", "site"]


# -- pure -----------------------------------------------------------------------------
def _attrs(rows):
    return pd.DataFrame(rows, columns=[C.SERIES_ID, "site", "region"])


def test_paths_leave_out_absent_attributes_through_hidden_nodes():
    attrs = _attrs(
        [
            ("a", "s1", "north"),
            ("b", "s1", "north"),
            ("c", None, "north"),  # no site: in total and north, not in the site level
            ("d", "s2", None),  # no region: left out of region and site
            ("e", "s3", "south"),
            ("f", "s3", "east"),  # a site in two regions: named region/site
        ]
    )
    p = H.paths(attrs, LEVELS).set_index(C.SERIES_ID)
    assert list(p.loc["c", LEVELS]) == ["all", "north", "north/(no site)"]
    assert p.loc["c", "hidden_site"] and not p.loc["c", "hidden_region"]
    assert p.loc["c", "reason"].startswith("no site: left out of the site level")
    assert list(p.loc["d", LEVELS]) == ["all", "all/(no region)", "all/(no region)/(no site)"]
    assert p.loc["d", "reason"].startswith("no region")
    assert (p.loc["e", "site"], p.loc["f", "site"]) == ("south/s3", "east/s3")
    assert p.loc["a", "reason"] == "" and p.loc["a", "site"] == "s1"

    members = p.reset_index().groupby([*LEVELS, *[f"hidden_{lv}" for lv in LEVELS]], as_index=False).size()
    tree = H.tree(members.rename(columns={"size": "n_series"}), LEVELS)
    nodes = tree.nodes
    assert list(nodes["level"]).count("total") == 1
    assert tree.S.shape == (len(nodes), int((nodes["level"] == "site").sum()))
    np.testing.assert_array_equal(tree.S[-tree.S.shape[1] :], np.eye(tree.S.shape[1]))  # bottom last
    assert tree.S[0].sum() == tree.S.shape[1]  # total sums every bottom node
    assert nodes.set_index("node").loc["north", "n_series"] == 3


def _hierarchy(rng, T=120, h=6):
    """2 regions x 3 sites; correlated bottom errors; base forecasts of every node."""
    S = np.vstack([np.ones((1, 6)), np.kron(np.eye(2), np.ones((1, 3))), np.eye(6)])
    common = rng.normal(size=(T, 1))
    bottom_err = 0.8 * common + 0.4 * rng.normal(size=(T, 6))
    y_b = 10 + rng.normal(size=(T, 6))
    actual = S @ y_b.T  # nodes x T
    fitted = actual - S @ bottom_err.T - 0.3 * rng.normal(size=(S.shape[0], T))
    yhat = S @ (10 + rng.normal(size=(6, h))) + rng.normal(size=(S.shape[0], h))
    return S, actual, fitted, yhat


@pytest.mark.parametrize("method", ["mint_shrink", "bottom_up"])
def test_reconciled_forecasts_and_intervals_are_coherent(method):
    S, actual, fitted, yhat = _hierarchy(np.random.default_rng(0))
    rec = R.reconcile(S, yhat, method, actual, fitted, [80, 95])
    assert rec["method"] == method
    mean = rec["mean"]
    np.testing.assert_allclose(mean, S @ mean[-6:], rtol=0, atol=1e-9)  # every node = sum of bottoms
    P = rec["P"]
    np.testing.assert_allclose(S @ P @ S, S, atol=1e-8)  # a projection: coherent input stays
    if method == "mint_shrink":  # the library's MinT, used as it documents it
        ref = MinTrace(method="mint_shrink").fit_predict(
            S=S, y_hat=yhat, y_insample=actual, y_hat_insample=fitted
        )["mean"]
        np.testing.assert_allclose(mean, ref, atol=1e-6)
    for lv in (80, 95):
        assert np.all(rec[f"lo-{lv}"] <= mean + 1e-12) and np.all(rec[f"hi-{lv}"] >= mean - 1e-12)
    assert np.all(rec["hi-95"] - rec["lo-95"] >= rec["hi-80"] - rec["lo-80"] - 1e-9)


def test_total_intervals_carry_the_correlation_across_series():
    """Positively correlated errors: the total's interval from the summed joint errors is
    wider than the square root of the summed variances (independence) would make it."""
    S, actual, fitted, yhat = _hierarchy(np.random.default_rng(1), T=400)
    rec = R.reconcile(S, yhat, "bottom_up", actual, fitted, [95])
    width_total = float(rec["hi-95"][0, 0] - rec["lo-95"][0, 0])
    widths_bottom = rec["hi-95"][-6:, 0] - rec["lo-95"][-6:, 0]
    independent = float(np.sqrt(np.sum(widths_bottom**2)))
    assert width_total > 1.5 * independent
    err_total = (actual - fitted)[-6:].sum(axis=0)  # the bottom errors summed step by step
    lo, hi = np.quantile(err_total, [0.025, 0.975])
    assert width_total == pytest.approx(max(hi, 0) - min(lo, 0), rel=1e-9)


def test_evaluate_scores_the_last_window_with_p_from_the_earlier_ones():
    rng = np.random.default_rng(2)
    S, actual, fitted, _ = _hierarchy(rng, T=18, h=6)
    to_windows = lambda a: a.reshape(a.shape[0], 3, 6).transpose(1, 0, 2)  # noqa: E731
    levels = np.array(["total", "region", "region", *["site"] * 6])
    visible = np.ones(9, bool)
    m = R.evaluate(S, levels, to_windows(fitted), to_windows(actual), np.ones(9), "bottom_up", [80], visible)
    assert set(m) >= {"mase_total_base", "mase_total_bottom_up", "coverage_80_site_bottom_up"}
    assert m["mase_site_base"] == pytest.approx(m["mase_site_bottom_up"])  # bottom-up keeps the bottom
    assert (
        R.evaluate(S, levels, to_windows(fitted)[:1], to_windows(actual)[:1], np.ones(9), "bottom_up", [80])
        == {}
    )


def test_distribute_scales_series_to_their_node_exactly():
    ts = pd.Timestamp("2024-01-01")
    base = pd.DataFrame(
        {
            C.SERIES_ID: ["a", "b", "c", "d"],
            "node": ["s1", "s1", "s2", "s2"],
            C.TS: [ts] * 4,
            "yhat": [1.0, 3.0, 0.0, 0.0],  # s2's series forecast nothing: equal split
            "yhat_lower_80": [0.5, 2.0, -1.0, -1.0],
            "yhat_upper_80": [2.0, 4.0, 1.0, 1.0],
        }
    )
    point = pd.Series(
        [8.0, 2.0], index=pd.MultiIndex.from_tuples([("s1", ts), ("s2", ts)], names=["node", C.TS])
    )
    out = H.distribute(point, base, ["yhat_lower_80", "yhat_upper_80"]).set_index(C.SERIES_ID)
    assert list(out["yhat"]) == [2.0, 6.0, 1.0, 1.0]
    assert list(out["yhat_base"]) == [1.0, 3.0, 0.0, 0.0]
    assert list(out["yhat_lower_80"]) == [1.0, 4.0, 0.0, 0.0]  # scaled, or shifted with the point
    assert out.groupby("node")["yhat"].sum().to_dict() == {"s1": 8.0, "s2": 2.0}


# -- the nightly's hierarchy step --------------------------------------------------------
@pytest.fixture(scope="module")
def night(tmp_path_factory):
    """12 hourly meters of the generator (sites and regions), one without a site and one
    whose site changed half-way through its history (its latest site is kept), through
    one nightly (hierarchy enabled); its own lakehouse and MLflow store."""
    import mlflow

    from forecasting.config import load_config

    tmp = tmp_path_factory.mktemp("hier")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        gen = generate(n_series=12, days=10, freq="h", seed=5, clean=True)
        r = gen.readings.copy()
        r.loc[r[C.SERIES_ID] == "MTR-00001", "site"] = None
        moved = (r[C.SERIES_ID] == "MTR-00002") & (r[C.TS] < r[C.TS].min() + pd.Timedelta("5D"))
        r.loc[moved, "site"] = "SITE-OLD"
        write(dataclasses.replace(gen, readings=r), tmp / "src.parquet")
        cfg = load_config(
            lakehouse=str(tmp / "lake"),
            horizon=24,
            models=["seasonal_naive"],
            workers=1,
            **{
                "cleaning.min_length": 48,
                "backtest.windows": 2,
                "mlflow.tracking_uri": uri,
                "hierarchy.enabled": True,
            },
        )
        lake = Lakehouse.from_config(cfg)
        ingest(lake, tmp / "src.parquet")
        rep = nightly(lake, cfg)
        yield lake, cfg, rep
        while mlflow.active_run():
            mlflow.end_run()


def _coherence(h: pd.DataFrame, lake: Lakehouse) -> None:
    """Every stored node = the sum of its series' rows (float tolerance)."""
    attrs = lake.read("silver/series", columns=[C.SERIES_ID, "site", "region"])
    paths = H.paths(attrs, LEVELS).rename(columns={C.SERIES_ID: "node"})
    series = h[h["level"] == "series"].merge(paths[["node", *LEVELS]], on="node")
    assert len(series) and series[C.TS].nunique() == 24
    for level in LEVELS:
        sums = series.groupby([level, C.TS])["yhat"].sum()
        nodes = h[h["level"] == level].set_index(["node", C.TS])["yhat"]
        joined = nodes.to_frame("node").join(sums.rename("sum").rename_axis(["node", C.TS]))
        assert len(joined) == len(nodes) and joined["sum"].notna().all()
        np.testing.assert_allclose(joined["node"], joined["sum"], rtol=1e-9, atol=1e-6)
    regions = h[h["level"] == "region"].groupby(C.TS)["yhat"].sum()
    total = h[h["level"] == "total"].set_index(C.TS)["yhat"]
    no_region = series[series["region"] == "all/(no region)"].groupby(C.TS)["yhat"].sum()
    np.testing.assert_allclose(total, regions.add(no_region, fill_value=0).reindex(total.index), rtol=1e-9)


def _sorted(h: pd.DataFrame) -> pd.DataFrame:
    keys = ["level", "node", C.TS]
    return h.drop(columns="created_at").sort_values(keys).reset_index(drop=True)


def _delivery(rep) -> hierarchy_job.Delivery:
    fc = rep.forecast
    return hierarchy_job.Delivery(fc.model_version, fc.run_id, fc.delivery, fc.silver_version, fc.horizon)


def test_nightly_writes_coherent_levels_and_reports_bad_attributes(night):
    lake, cfg, rep = night
    assert rep.steps["hierarchy"].startswith("done: "), rep.steps
    hr = rep.hierarchy
    assert hr.left_out == {"site": 1} and "1 series of the site level" in rep.steps["hierarchy"]
    assert list(hr.changed) == ["MTR-00002"] and "SITE-OLD" in hr.changed["MTR-00002"]
    h = lake.read(GOLD_HIERARCHY)
    assert set(h["level"]) == {"total", "region", "site", "series"}
    assert not h["node"].str.contains("(no ", regex=False).any()  # hidden nodes are not stored
    assert not h.duplicated(["level", "node", C.TS]).any()
    _coherence(h, lake)
    for lv in cfg.levels:
        assert (h[f"yhat_lower_{lv}"] <= h["yhat"] + 1e-9).all()
        assert (h[f"yhat_upper_{lv}"] >= h["yhat"] - 1e-9).all()
    reasons = h[h["level"] == "series"].drop_duplicates("node").set_index("node")["reason"]
    assert reasons["MTR-00001"].startswith("no site: left out of the site level")
    assert "site changed over time" in reasons["MTR-00002"] and "is used" in reasons["MTR-00002"]
    assert (reasons.drop(["MTR-00001", "MTR-00002"]) == "").all()
    assert set(h["method"]) == {"mint_shrink"} and set(h["delivery"]) == {rep.forecast.delivery}

    port = lake.read(GOLD_PORTFOLIO)
    assert set(port["level"]) == {"total", "region", "site"} and "unknown" not in set(port["key"])
    assert port[[f"yhat_{s}_{lv}" for lv in cfg.levels for s in ("lower", "upper")]].notna().all().all()
    assert (port["yhat_lower_95"] <= port["yhat_lower_80"]).all()
    assert (port["yhat"] <= port["yhat_upper_80"]).all()
    day_total = h[h["level"] == "total"].assign(day=lambda f: f[C.TS].dt.date).groupby("day")["yhat"].sum()
    total = port[port["level"] == "total"].set_index("day")["yhat"].sort_index()
    np.testing.assert_allclose(total, day_total)

    metrics = MlflowClient().get_run(rep.forecast.run_id).data.metrics
    wanted = {
        "hierarchy_mase_total_base",
        "hierarchy_mase_total_mint_shrink",
        "hierarchy_coverage_95_total_mint_shrink",
    }
    assert wanted <= set(metrics)


def test_a_rerun_skips_and_batches_give_the_same_table(night):
    lake, cfg, rep = night
    h = lake.read(GOLD_HIERARCHY)
    version = lake.version(GOLD_HIERARCHY)
    again = nightly(lake, cfg)
    assert again.steps["hierarchy"].startswith("skipped"), again.steps
    assert lake.version(GOLD_HIERARCHY) == version
    # small batches (several bucket ranges, one commit each) give the same table; a forced
    # rerun replaces the version's rows, never duplicates them
    small = cfg.replace(batch_rows=1000)
    report = hierarchy_job.HierarchyReport("1", 0, "")
    assert len(hierarchy_job.structure(lake, small, report, rep.forecast.silver_version)[1]) > 1
    hierarchy_job.hierarchy(lake, small, _delivery(rep), force=True)
    pd.testing.assert_frame_equal(
        _sorted(h), _sorted(lake.read(GOLD_HIERARCHY)), check_exact=False, rtol=1e-9
    )


def test_spark_engine_gives_the_same_hierarchy(night, spark):
    lake, cfg, rep = night
    h = lake.read(GOLD_HIERARCHY)
    hierarchy_job.hierarchy(lake, cfg.replace(engine="spark"), _delivery(rep), force=True)
    pd.testing.assert_frame_equal(
        _sorted(h), _sorted(lake.read(GOLD_HIERARCHY)), check_exact=False, rtol=1e-9
    )


@pytest.mark.spark
@pytest.mark.slow  # a JVM of its own (about a minute); the step on Spark is compared above
def test_mmf_nightly_on_spark_with_the_hierarchy_writes_the_local_tables(night, tmp_path, spark_nightly):
    """``mmf nightly --engine spark`` end to end in its own process, the hierarchy enabled:
    ingest, refine, train, forecast and the hierarchy step on Spark write the
    gold/hierarchy and gold/portfolio the local nightly wrote on the same readings,
    coherent at every level."""
    from pathlib import Path

    import yaml

    lake, cfg, rep = night
    source = Path(lake.root).parent / "src.parquet"
    conf = tmp_path / "conf.yaml"
    settings = {
        "horizon": 24,
        "models": ["seasonal_naive"],
        "workers": 1,
        "cleaning": {"min_length": 48},
        "backtest": {"windows": 2},
        "hierarchy": {"enabled": True},
        "nightly": {"source": str(source)},
    }
    conf.write_text(yaml.safe_dump(settings))
    proc = spark_nightly(conf, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "hierarchy  done" in proc.stdout and "train      done" in proc.stdout, proc.stdout
    on_spark = Lakehouse(str(tmp_path / "lake"))
    got = on_spark.read(GOLD_HIERARCHY)
    _coherence(got, on_spark)
    own = ["delivery", "run_id"]  # each nightly's own MLflow run and delivery count
    pd.testing.assert_frame_equal(
        _sorted(lake.read(GOLD_HIERARCHY)).drop(columns=own),
        _sorted(got).drop(columns=own),
        check_exact=False,
        rtol=1e-9,
    )
    keys = ["level", "key", "day"]
    portfolio = [
        t.read(GOLD_PORTFOLIO)
        .drop(columns=["created_at", "run_id"], errors="ignore")
        .sort_values(keys, ignore_index=True)
        for t in (lake, on_spark)
    ]
    pd.testing.assert_frame_equal(*portfolio, check_exact=False, rtol=1e-9)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("mmf").experiment_id])
    assert runs and {r.data.tags.get("mmf.engine") for r in runs} == {"spark"}
    assert any("hierarchy_mase_total_mint_shrink" in r.data.metrics for r in runs)


def _older_portfolio(tmp_path) -> tuple[Lakehouse, pd.DataFrame]:
    """A gold/portfolio written before its interval columns existed, and newer rows."""
    from deltalake import write_deltalake

    from forecasting.config import load_config

    lake = Lakehouse.from_config(load_config(lakehouse=str(tmp_path / "lake")))
    old = pd.DataFrame(
        {
            "level": ["total"],
            "key": ["all"],
            "day": [pd.Timestamp("2024-01-01").date()],
            "yhat": [1.0],
            "n_series": [1],
            "model_version": ["1"],
            "cutoff": [pd.Timestamp("2024-01-01")],
            "created_at": [pd.Timestamp("2024-01-01", tz="UTC")],
        }
    )
    table = pa.Table.from_pandas(old, schema=C.GOLD_PORTFOLIO, preserve_index=False)
    write_deltalake(lake.uri(GOLD_PORTFOLIO), table)
    return lake, old.assign(model_version="2", yhat_lower_80=0.5, yhat_upper_80=1.5, method="mint_shrink")


def test_an_older_portfolio_table_takes_the_interval_columns(tmp_path):
    lake, new = _older_portfolio(tmp_path)
    lake.write(GOLD_PORTFOLIO, new, mode="overwrite", predicate="model_version = '2'")
    got = lake.read(GOLD_PORTFOLIO).set_index("model_version").sort_index()
    assert list(got.index) == ["1", "2"] and got["yhat_lower_80"].isna().tolist() == [True, False]
    assert got.loc["2", "method"] == "mint_shrink"


@pytest.mark.slow  # the deltalake layer's evolution is tested by the default suite
def test_an_older_portfolio_table_takes_the_interval_columns_on_spark(tmp_path, spark):
    from training.tables.spark import SparkTables

    lake, new = _older_portfolio(tmp_path)
    SparkTables(lake).write(GOLD_PORTFOLIO, new, mode="overwrite", replace_where="model_version = '2'")
    got = lake.read(GOLD_PORTFOLIO).set_index("model_version").sort_index()
    assert list(got.index) == ["1", "2"] and got["yhat_lower_80"].isna().tolist() == [True, False]
    assert got.loc["2", "yhat_upper_80"] == 1.5


class Killed(BaseException):
    """Stands for SIGKILL: nothing after the checkpoint runs."""


class KillAtBatch:
    """A checkpoint hook that stops the process at the ``n``-th ``mid_hierarchy``."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0

    def __call__(self, name: str, **info) -> None:
        if name == "mid_hierarchy":
            self.seen += 1
            if self.seen == self.n:
                raise Killed(info)


def test_a_killed_step_resumes_from_its_batch_commits(night, checkpoint_hook):
    import shutil

    lake, cfg, rep = night
    small = cfg.replace(batch_rows=1000)
    want = lake.read(GOLD_HIERARCHY)  # the same with one batch or many (tested above)
    shutil.rmtree(lake.uri(GOLD_HIERARCHY))  # as if the step had never run on this delivery
    checkpoint_hook(KillAtBatch(2))
    with pytest.raises(Killed):
        hierarchy_job.hierarchy(lake, small, _delivery(rep))
    checkpoint_hook(None)
    before = len(lake.history(GOLD_HIERARCHY))  # the aggregate commit and two batches
    assert before == 3 and lake.txn_version(GOLD_HIERARCHY, hierarchy_job.APP_HIERARCHY) is None
    hierarchy_job.hierarchy(lake, small, _delivery(rep))
    commits = lake.history(GOLD_HIERARCHY)
    batches = int(commits[0]["mmf.batches"])
    assert len(commits) == 1 + batches  # the done batches were not written again
    assert lake.txn_version(GOLD_HIERARCHY, hierarchy_job.APP_HIERARCHY) == rep.forecast.delivery
    got = lake.read(GOLD_HIERARCHY)
    assert not got.duplicated(["level", "node", C.TS]).any()
    pd.testing.assert_frame_equal(_sorted(want), _sorted(got), check_exact=False, rtol=1e-9)
    assert got["created_at"].nunique() == 1  # the restart keeps the step's creation time
