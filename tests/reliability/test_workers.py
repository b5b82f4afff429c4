"""A local-engine worker killed with SIGKILL while it trains one series (the test's checkpoint hook,
``MMF_TEST_KILL_AT=worker:retrain_series:<id>``, kills it every time, so the retry dies
too): only that series fails, with the reason; every other series is trained and
forecast exactly as in the uninterrupted run. Above ``nightly.max_failed_share`` the
run is marked failed (exit 1 of `mmf nightly`) but what succeeded is still written.
"""

from __future__ import annotations

import pandas as pd
from reliability_support import mmf, new_lake, registry_state, table, write_conf

DOOMED = "MTR-00003"


def test_a_killed_worker_fails_only_its_series_and_the_threshold_fails_the_run(reference, tmp_path):
    lake = new_lake(tmp_path / "lake", reference.template)
    conf = write_conf(
        tmp_path / "conf.yaml", lake, reference.raw, workers=2, **{"nightly.max_failed_share": 0.05}
    )
    run = mmf("nightly", "--conf", str(conf), env={"MMF_TEST_KILL_AT": f"worker:retrain_series:{DOOMED}"})

    # marked failed, through the CLI: 1 of 10 series > 5%
    assert run.returncode == 1, run.stderr[-3000:]
    assert "run FAILED: 10% of series failed > nightly.max_failed_share=0.05" in run.stderr
    # the chunk was retried one by one, and the series died again
    assert "a worker died; retrying" in run.stderr
    assert f"series {DOOMED}: worker process died twice" in run.stderr

    sel = table(lake, "gold/selection").set_index("series_id")
    assert sel.loc[DOOMED, "status"] == "failed"
    assert "worker process died twice" in sel.loc[DOOMED, "reason"]
    assert (sel.drop(index=DOOMED)["status"] == "ok").all()

    # what succeeded was written, and equals the uninterrupted run
    ref = reference.tables
    for name in ("gold/forecasts", "gold/backtest"):
        want = ref[name][ref[name]["series_id"] != DOOMED].reset_index(drop=True)
        pd.testing.assert_frame_equal(table(lake, name), want, obj=name)
    for name in ("silver/readings", "silver/quarantine", "silver/series"):  # refine was not touched
        pd.testing.assert_frame_equal(table(lake, name), ref[name], obj=name)
    portfolio = table(lake, "gold/portfolio")
    total = portfolio.loc[portfolio["level"] == "total", "yhat"].sum()
    assert abs(total - table(lake, "gold/forecasts")["yhat"].sum()) < 1e-6
    state = registry_state(lake)
    assert state["aliases"] == {"challenger": "1", "champion": "1"}
    assert [v[3] for v in state["versions"]] == ["9"]  # the model holds the 9 trained series
