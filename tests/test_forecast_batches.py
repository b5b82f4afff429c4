"""``mmf forecast`` batch by batch (issue 12): a delivery over many small bucket ranges
equals a one-batch delivery, and one killed between two batch commits, started again,
ends with the same gold/forecasts (no duplicates) and the same gold/portfolio; on real
Delta tables and a real MLflow store."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from forecasting import contract as C
from forecasting.generator import generate, write
from training.jobs import forecast as forecast_job
from training.jobs.ingest import ingest
from training.jobs.refine import refine
from training.jobs.train import train
from training.tables import GOLD_FORECASTS, GOLD_PORTFOLIO, SILVER_READINGS, Lakehouse

KEYS = [C.SERIES_ID, C.TS, "cutoff", "model_version"]


class Killed(BaseException):
    """Stands for SIGKILL: nothing after the checkpoint runs."""


class KillAtBatch:
    """A checkpoint hook that stops the process at the ``n``-th ``mid_forecast``."""

    def __init__(self, n: int) -> None:
        self.n, self.seen = n, 0

    def __call__(self, name: str, **info) -> None:
        if name == "mid_forecast":
            self.seen += 1
            if self.seen == self.n:
                raise Killed(info)


@pytest.fixture
def refit_lake(tmp_path, config):
    """12 hourly meters: a champion trained on 14 days, then 3 more days in silver, so
    the forecast refits every series on the newer silver version."""
    gen = generate(n_series=12, days=17, freq="h", seed=5, clean=True)
    day = (gen.readings[C.TS] - gen.readings[C.TS].min()) // pd.Timedelta("1D")
    cfg = config.replace(workers=1, horizon=24)
    lake = Lakehouse.from_config(cfg)
    for name, part in (("a", day < 14), ("b", day >= 14)):
        src = tmp_path / f"{name}.parquet"
        write(dataclasses.replace(gen, readings=gen.readings[part].reset_index(drop=True)), src)
        ingest(lake, src)
        refine(lake, cfg)
        if name == "a":
            train(lake, cfg)
    return lake, cfg


def _sorted(frame: pd.DataFrame, keys) -> pd.DataFrame:
    return frame.drop(columns=["created_at"]).sort_values(keys).reset_index(drop=True)


def _snapshot(lake: Lakehouse):
    fc = lake.read(GOLD_FORECASTS)
    assert not fc.duplicated(KEYS).any()
    return fc, lake.read(GOLD_PORTFOLIO)


def test_batches_equal_one_batch_and_a_killed_delivery_resumes(refit_lake, checkpoint_hook):
    lake, cfg = refit_lake
    small = cfg.replace(batch_rows=1000)
    ranges = lake.batches(SILVER_READINGS, lake.version(SILVER_READINGS), 1000)
    assert len(ranges) >= 4

    # killed after its second batch commit, then started again: it resumes
    checkpoint_hook(KillAtBatch(2))
    with pytest.raises(Killed):
        forecast_job.forecast(lake, small)
    checkpoint_hook(None)
    partial = lake.read(GOLD_FORECASTS)
    assert 0 < partial[C.SERIES_ID].nunique() < 12
    assert lake.txn_version(GOLD_FORECASTS, forecast_job.APP_FORECAST) is None  # not delivered yet
    before = lake.version(GOLD_FORECASTS)
    rep = forecast_job.forecast(lake, small)
    assert not rep.skipped and not rep.missing
    assert rep.n_series == 12 and rep.n_rows == 12 * 24 and rep.fits == {C.REFIT: 12}
    # only the batches not done were committed again
    written = lake.version(GOLD_FORECASTS) - before
    assert 1 <= written <= len(ranges) - 2
    forecast_job.aggregate(lake, small, rep.model_version, delivery=rep.delivery)
    resumed, resumed_portfolio = _snapshot(lake)
    assert resumed["created_at"].nunique() == 1  # one delivery, as if written at once
    assert lake.txn_version(GOLD_FORECASTS, forecast_job.APP_FORECAST) == rep.delivery
    assert forecast_job.forecast(lake, small).skipped

    # the same delivery in one batch replaces the rows: the same forecasts
    one = forecast_job.forecast(lake, cfg, force=True)
    assert one.n_rows == rep.n_rows and one.versions == rep.versions
    forecast_job.aggregate(lake, cfg, one.model_version, delivery=one.delivery)
    whole, whole_portfolio = _snapshot(lake)
    pd.testing.assert_frame_equal(_sorted(resumed, KEYS), _sorted(whole, KEYS))
    pkeys = ["level", "key", "day"]
    pd.testing.assert_frame_equal(_sorted(resumed_portfolio, pkeys), _sorted(whole_portfolio, pkeys))

    # and many batches again (forced): still the same rows, each once
    again = forecast_job.forecast(lake, small, force=True)
    assert again.n_rows == rep.n_rows and again.fits == rep.fits
    forecast_job.aggregate(lake, small, again.model_version, delivery=again.delivery)
    batched, batched_portfolio = _snapshot(lake)
    pd.testing.assert_frame_equal(_sorted(batched, KEYS), _sorted(whole, KEYS))
    pd.testing.assert_frame_equal(_sorted(batched_portfolio, pkeys), _sorted(whole_portfolio, pkeys))


def test_score_reads_a_bucketed_table_in_batches_of_whole_series(refit_lake):
    from training.jobs.score import input_batches

    lake, _ = refit_lake
    parts = list(input_batches(lake, "silver/readings", 1000))
    assert len(parts) >= 4
    ids = [set(p[C.SERIES_ID]) for p in parts]
    assert sum(len(s) for s in ids) == len(set().union(*ids)) == 12  # whole series, each once
    keys = [C.SERIES_ID, C.TS]
    whole = lake.read("silver/readings").sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(pd.concat(parts).sort_values(keys).reset_index(drop=True), whole)
