"""``mmf sql``'s current views (issue 17, item 3): ``gold.current_forecasts``,
``gold.current_selection``, ``gold.current_portfolio`` and ``gold.current_backtest_forecasts`` hold the champion's current rows
whatever older runs and versions the tables keep, and follow the registry's champion
alias; ``SHOW TABLES`` and ``information_schema`` show no helper names; a bad statement
is one error line with exit code 2. A real lakehouse, DuckDB and MLflow store."""

from __future__ import annotations

import io
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from forecasting.config import load_config
from registry.aliases import champion_info
from training.cli import cli
from training.jobs.sql import SQLError, champion_of, run_sql
from training.tables import Lakehouse

ROOT = Path(__file__).resolve().parents[1]
N_SERIES = 6
H = 24


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """Two model versions on the same silver, both forecast at the same cutoff (version 2
    last); the champion alias then moved back to version 1 without forecasting again."""
    tmp = tmp_path_factory.mktemp("sqlviews")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    conf = tmp / "conf.yaml"
    conf.write_text(
        yaml.safe_dump(
            {
                "lakehouse": str(tmp / "lake"),
                "horizon": H,
                "models": ["seasonal_naive"],
                "workers": 1,
                "cleaning": {"min_length": 48},
                "backtest": {"windows": 1},
            }
        )
    )
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    runner = CliRunner(env={"MLFLOW_TRACKING_URI": uri})
    data = tmp / "meters.parquet"

    def mmf(*args):
        res = runner.invoke(cli, [*args], catch_exceptions=False)
        assert res.exit_code == 0, res.output
        return res

    gen = ["generate", "--series", str(N_SERIES), "--days", "14", "--seed", "3", "--clean"]
    mmf(*gen, "--out", str(data))
    for step in (["ingest", "--source", str(data)], ["refine"], ["train"], ["forecast"]):
        mmf(*step, "--conf", str(conf))
    config = load_config(conf)
    first = _frames(Lakehouse.from_config(config), champion_of(config))
    for step in (["train", "--models", "seasonal_naive,weekly_naive"], ["promote", "2"], ["forecast"]):
        mmf(*step, "--conf", str(conf))
    second = _frames(Lakehouse.from_config(config), champion_of(config))
    mmf("promote", "1", "--conf", str(conf))
    yield {
        "conf": str(conf),
        "uri": uri,
        "runner": runner,
        "config": config,
        "lake": Lakehouse.from_config(config),
        "first": first,
        "second": second,
    }
    mp.undo()


def _frames(lake: Lakehouse, champion) -> dict[str, pd.DataFrame]:
    return {
        name: run_sql(lake, f"SELECT * FROM gold.current_{name}", champion=champion)
        for name in ("forecasts", "selection", "portfolio", "backtest_forecasts")
    }


def test_current_views_hold_one_version_and_run_while_the_tables_hold_every_one(lake):
    lk, config = lake["lake"], lake["config"]
    # the tables keep both runs and both versions' forecasts of the same cutoff
    sel = lk.read("gold/selection")
    fc = lk.read("gold/forecasts")
    assert sel["run_id"].nunique() == 2 and len(sel) == 2 * N_SERIES
    assert sorted(fc["model_version"].unique()) == ["1", "2"] and fc["cutoff"].nunique() == 1
    assert champion_info(config)["version"] == "1"  # moved back by `mmf promote 1`
    for stage, version in (("first", "1"), ("second", "2")):
        cur = lake[stage]
        f, s, p = cur["forecasts"], cur["selection"], cur["portfolio"]
        # forecasts: the next horizon of every series, once, from the champion
        assert len(f) == N_SERIES * H and not f.duplicated(["series_id", "ts"]).any()
        assert set(f["model_version"]) == {version} and f["cutoff"].nunique() == 1
        # selection: one row per series, of the champion's run
        assert len(s) == N_SERIES and s["series_id"].is_unique
        assert set(s["run_id"]) == set(f["run_id"])
        # portfolio: the champion's totals, which sum current_forecasts
        assert set(p["model_version"]) == {version}
        total = p[p["level"] == "total"].set_index("day")["yhat"].sort_index()
        by_day = f.assign(day=f["ts"].dt.date).groupby("day")["yhat"].sum().sort_index()
        assert total.to_numpy() == pytest.approx(by_day.to_numpy())
        # backtest forecasts: the chosen model's window of each series in the champion's run
        b = cur["backtest_forecasts"]
        assert set(b["run_id"]) == set(s["run_id"]) and len(b) == N_SERIES * H
        assert not b.duplicated(["series_id", "model", "window", "lead"]).any()
        chosen = b.merge(s[["series_id", "model"]], on=["series_id", "model"])
        assert len(chosen) == len(b) and b["y"].notna().all() and b["yhat"].notna().all()
    assert set(lake["first"]["selection"]["run_id"]) != set(lake["second"]["selection"]["run_id"])


def test_current_views_follow_the_champion_alias_through_the_cli(lake):
    """After `mmf promote 1` (no new forecast): version 1's rows of the same cutoff, its
    run's selection and its portfolio; the README's example counts each series once."""

    def sql(statement):
        res = lake["runner"].invoke(cli, ["sql", statement, "--format", "csv", "--conf", lake["conf"]])
        assert res.exit_code == 0, res.output
        return pd.read_csv(io.StringIO(res.stdout))

    versions = sql("SELECT DISTINCT model_version FROM gold.current_forecasts")
    assert versions["model_version"].tolist() == [1]
    n = sql("SELECT count(*) AS n, count(DISTINCT series_id) AS s FROM gold.current_forecasts")
    assert n.to_dict("records") == [{"n": N_SERIES * H, "s": N_SERIES}]
    runs = sql("SELECT DISTINCT run_id FROM gold.current_selection")
    assert runs["run_id"].tolist() == lake["first"]["selection"]["run_id"].unique().tolist()
    counts = sql("SELECT model, count(*) AS n FROM gold.current_selection GROUP BY 1")  # README
    assert counts["n"].sum() == N_SERIES
    assert sql("SELECT DISTINCT model_version FROM gold.current_portfolio")["model_version"].tolist() == [1]


def test_without_a_champion_the_newest_rows_stand_in(lake):
    lk = lake["lake"]
    f = run_sql(lk, "SELECT * FROM gold.current_forecasts")  # no config: the version written last
    assert set(f["model_version"]) == {"2"} and not f.duplicated(["series_id", "ts"]).any()
    s = run_sql(lk, "SELECT DISTINCT run_id FROM gold.current_selection")
    assert s["run_id"].tolist() == lake["second"]["selection"]["run_id"].unique().tolist()
    p = run_sql(lk, "SELECT DISTINCT model_version FROM gold.current_portfolio")
    assert p["model_version"].tolist() == ["2"]
    # a store that was never made is not created by a read
    missing = lake["config"].replace(**{"mlflow.tracking_uri": f"sqlite:///{lk.root}/none/m.db"})
    assert champion_of(missing) is None and not Path(f"{lk.root}/none/m.db").exists()


def test_listings_show_the_lakehouse_names_only(lake):
    lk = lake["lake"]
    shown = run_sql(lk, "SHOW TABLES")["name"].tolist()
    assert {"gold.forecasts", "silver.readings", "gold.current_forecasts", "gold.current_selection"} <= set(
        shown
    )
    assert "gold.current_portfolio" in shown and len(shown) == len(lk.existing()) + 4
    listed = run_sql(lk, "SELECT table_schema || '.' || table_name AS name FROM information_schema.tables")
    assert sorted(listed["name"]) == sorted(shown)
    every = run_sql(lk, "SHOW ALL TABLES")
    assert not every["name"].str.startswith("_").any() and set(every["schema"]) <= {
        "bronze",
        "silver",
        "gold",
    }
    assert "python_arrow_scan" not in " ".join(run_sql(lk, "DESCRIBE gold.current_forecasts")["column_name"])


BAD = {
    "SELECT nope FROM gold.forecasts": 'Referenced column "nope" not found',
    "SELECT * FROM gold.forecast": 'Table with name forecast does not exist! Did you mean "forecasts"?',
    "SELECT * FORM gold.forecasts": 'Parser Error: syntax error at or near "gold"',
}


def test_a_bad_statement_is_one_line_and_exit_code_2(lake):
    for statement, says in BAD.items():
        with pytest.raises(SQLError) as err:
            run_sql(lake["lake"], statement)
        assert "\n" not in str(err.value) and says in str(err.value), str(err.value)
    # the command line (its own process, as a user runs it): one line on stderr, exit code 2
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": lake["uri"]}
    proc = subprocess.run(
        [sys.executable, "-m", "training.cli", "sql", "SELECT nope FROM gold.current_forecasts"]
        + ["--conf", lake["conf"]],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == "", proc
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: mmf sql: Binder Error: "), (
        proc.stderr
    )
    assert 'Referenced column "nope" not found' in proc.stderr


def test_the_readmes_sql_examples_run(lake):
    """Every `mmf sql "..."` line of the README runs and returns rows."""
    lines = (ROOT / "README.md").read_text().splitlines()
    statements = [shlex.split(x.split("#")[0])[2] for x in lines if x.startswith('mmf sql "')]
    assert len(statements) >= 4 and any("gold.current_selection" in s for s in statements)
    for statement in statements:
        out = run_sql(lake["lake"], statement, config=lake["config"])
        assert len(out) > 0, statement
