"""global_nn: the PyTorch network and its numpy twin, data-parallel training on two
processes (torch.multiprocessing locally, TorchDistributor on Spark), reproducibility,
SparkTrials tuning, and the many-models pyfunc round trip of a deep-model series
(served without torch).

Skipped only when torch is absent (the deep extra: pip install -e .[deep]); `make test`,
and so CI, installs it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch", reason="global_nn needs the deep extra (torch): pip install -e .[deep]")

from forecasting.config import load_config  # noqa: E402
from forecasting.generator import generate  # noqa: E402
from forecasting.models.global_models import nn as nn_mod  # noqa: E402
from forecasting.models.global_models.common import Spec  # noqa: E402
from training import deep  # noqa: E402

H = 12
META = {
    "input_size": 24,
    "horizon": H,
    "quantiles": [0.1, 0.5, 0.9],
    "season": 12,
    "context": 4 + H,
    "hidden": 16,
    "blocks": 2,
    "layers": 2,
    "use_temperature": True,
    "t_loc": 0.0,
    "t_scale": 1.0,
    "scale_tail": None,
    "freq": "h",
}
PARAMS = {"epochs": 4, "batch_size": 64, "lr": 3e-3}
NN = {"epochs": 3, "hidden": 16, "windows_per_series": 16, "input_size": 48, "batch_size": 32}


def samples(n=256, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None] + np.arange(24 + H)[None, :]
    s = np.sin(2 * np.pi * t / 12) + 0.1 * rng.normal(size=t.shape)
    ctx = np.concatenate([rng.normal(size=(n, 4)), rng.normal(size=(n, H))], axis=1)
    return {
        "x": s[:, :24].astype(np.float32),
        "ctx": ctx.astype(np.float32),
        "y": s[:, 24:].astype(np.float32),
    }


def test_numpy_inference_matches_the_torch_network():
    module = nn_mod.build_module(META)
    arrays = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    assert "blocks.1.back.weight" not in arrays  # the last block has no backcast
    s = samples(8)
    with torch.no_grad():
        expected = module(torch.from_numpy(s["x"]), torch.from_numpy(s["ctx"])).numpy()
    np.testing.assert_allclose(nn_mod.forward(META, arrays, s["x"], s["ctx"]), expected, atol=1e-5)


@pytest.fixture(scope="module")
def two_process_runs():
    """The same training, twice, each on 2 local processes (gloo, DistributedSampler)."""
    data = samples()
    return [deep.train(data, META, PARAMS, seed=7, num_processes=2, launcher="local") for _ in range(2)]


def test_two_process_training_lowers_the_loss_and_is_reproducible(two_process_runs):
    first, second = two_process_runs
    assert first.processes == 2 and first.launcher == "local" and first.device == "cpu"
    assert len(first.losses) == PARAMS["epochs"] and first.losses[-1] < first.losses[0]
    assert first.losses == second.losses
    assert set(first.arrays) == set(nn_mod.build_module(META).state_dict())
    for name in first.arrays:
        np.testing.assert_array_equal(first.arrays[name], second.arrays[name])


def test_one_process_trains_in_this_process_with_the_same_function():
    res = deep.train(samples(), META, PARAMS, seed=7, num_processes=1)
    assert res.processes == 1 and res.losses[-1] < res.losses[0]


@pytest.mark.spark
def test_torch_distributor_on_spark_gives_the_local_weights(spark, two_process_runs):
    res = deep.train(samples(), META, PARAMS, seed=7, num_processes=2, launcher="spark")
    assert res.launcher == "spark" and res.losses[-1] < res.losses[0]
    local = two_process_runs[0]
    assert res.losses == local.losses
    for name in local.arrays:  # the same train function, the same rendezvous: the same weights
        np.testing.assert_array_equal(res.arrays[name], local.arrays[name])


def readings(n_series=4, days=14):
    r = generate(n_series=n_series, days=days, freq="h", seed=3, clean=True).readings
    return r[["series_id", "ts", "y", "temperature"]].reset_index(drop=True)


@pytest.mark.slow  # ~1.5 min on 2 cores; the same orchestration runs with global_gbm in the default suite
@pytest.mark.spark
def test_spark_engine_tunes_with_spark_trials_and_trains_with_torch_distributor(spark):
    from training.global_models import train_global_models

    config = load_config(
        horizon=H,
        freq="h",
        models=["global_nn"],
        engine="spark",
        model_params={"global_nn": dict(NN)},
        **{
            "backtest.windows": 1,
            "tune.enabled": True,
            "tune.max_evals": 2,
            "tune.parallelism": 2,
            "deep.num_processes": 2,
            "spark.master": "local[2,2]",
        },
    )
    report = train_global_models(readings(), config, engine="spark")
    run = report.runs["global_nn"]
    assert run.error == "" and run.n_ok == 4
    assert run.trials_kind == "SparkTrials" and run.tune.evals == 2
    assert all(t["status"] == "ok" for t in run.tune.trials)
    assert [(f.label, f.launcher, f.processes) for f in run.fits] == [
        ("window 0", "spark", 2),
        ("full", "spark", 2),
    ]


def test_spec_quantiles_follow_the_levels():
    assert Spec(H, (80, 95), "h", (24, 168)).quantiles == (0.025, 0.1, 0.5, 0.9, 0.975)


def test_pyfunc_round_trip_of_deep_model_series_served_without_torch(tmp_path, config):
    import mlflow

    from registry import pyfunc
    from training.jobs.ingest import ingest
    from training.jobs.refine import refine
    from training.jobs.train import train
    from training.tables import Lakehouse

    src = tmp_path / "m.parquet"
    readings(n_series=3).to_parquet(src)
    c = config.replace(models=["global_nn"], horizon=H, model_params={"global_nn": dict(NN)})
    lake = Lakehouse.from_config(c)
    ingest(lake, str(src))
    refine(lake, c)
    rep = train(lake, c)
    res = rep.results
    assert rep.status_counts == {"ok": 3} and set(res["model"]) == {"global_nn"}
    states = [json.loads(m)["state"] for m in res["model_json"]]
    assert len({s["weights"] for s in states}) == 1  # one set of weights for every series
    assert all(len(s["last_y"]) == NN["input_size"] for s in states)
    run = mlflow.get_run(rep.run_id)
    assert "global.global_nn.train_s" in run.data.metrics
    losses = [m.value for m in mlflow.MlflowClient().get_metric_history(rep.run_id, "global.global_nn.loss")]
    assert len(losses) == NN["epochs"] and losses[-1] < losses[0]
    logged = mlflow.MlflowClient().search_logged_models(experiment_ids=[run.info.experiment_id])
    assert any(m.name == "global_nn_pytorch" for m in logged)  # the PyTorch flavour, secondary

    model = pyfunc.load_version(c, rep.model_version)
    sids = res["series_id"].tolist()
    inp = pd.DataFrame({"series_id": np.repeat(sids, 2 * H), "horizon": 2 * H, "temperature": 8.0})
    out = model.predict(inp)
    assert len(out) == 2 * H * len(sids) and (out["model"] == "global_nn").all()
    assert (out["yhat_lower_95"] <= out["yhat"]).all() and (out["yhat"] <= out["yhat_upper_95"]).all()

    # A scoring process without torch loads the weights from the pyfunc's own artifact.
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # any import of torch now fails
        import mlflow, numpy as np, pandas as pd
        mlflow.set_tracking_uri({c.mlflow_tracking_uri()!r}); mlflow.set_registry_uri({c.mlflow_tracking_uri()!r})
        m = mlflow.pyfunc.load_model("models:/{c.mlflow.registered_model}/{rep.model_version}")
        sids = {sids!r}
        out = m.predict(pd.DataFrame({{"series_id": np.repeat(sids, {2 * H}), "horizon": {2 * H}, "temperature": 8.0}}))
        print(out["yhat"].to_json(orient="values"))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    served = np.array(json.loads(done.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(served, out["yhat"].to_numpy(), rtol=1e-6)
