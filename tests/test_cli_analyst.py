"""What an analyst sees from ``mmf``: step lines and progress bars, ``-v`` without
third-party noise, MLflow telemetry off, ``query``'s time travel, unknown ids and footers,
``nightly --source``, and a line of help for every option (issue 17, items 1, 2 and 7).
Everything runs on a real lakehouse and MLflow store."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import click
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from forecasting.config import load_config
from training.cli import _Progress, cli
from training.jobs.forecast import forecast
from training.jobs.score import score
from training.tables import Lakehouse

ROOT = Path(__file__).resolve().parents[1]
N_SERIES = 10
H = 24
CI_MARKERS = (
    "CI",
    "PYTEST_CURRENT_TEST",
    "GITHUB_ACTIONS",
    "GITLAB_CI",
    "CIRCLECI",
    "JENKINS_URL",
    "TRAVIS",
    "TF_BUILD",
    "BUILDKITE",
    "TEAMCITY_VERSION",
    "CODEBUILD_BUILD_ARN",
    "BITBUCKET_BUILD_NUMBER",
    "CLOUD_RUN_EXECUTION",
)
THIRD_PARTY = ("matplotlib", "urllib3", "PIL", "py4j", "findfont", "git.cmd", "alembic", "httpx")


def _env(uri: str, **extra: str) -> dict[str, str]:
    """The environment of an ``mmf`` subprocess: this worktree's code, the test's store,
    no CI or pytest markers unless given (they change what is shown)."""
    drop = (*CI_MARKERS, "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(PYTHONPATH=str(ROOT), MLFLOW_TRACKING_URI=uri, **extra)
    return env


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """generate -> ingest -> refine -> train -> forecast through the CLI, once."""
    tmp = tmp_path_factory.mktemp("analyst")
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
            }
        )
    )
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    runner = CliRunner(env={"MLFLOW_TRACKING_URI": uri})
    data = tmp / "meters.parquet"
    outs = {}
    for name, args in [
        (
            "generate",
            [
                "generate",
                "--series",
                str(N_SERIES),
                "--days",
                "14",
                "--seed",
                "1",
                "--clean",
                "--out",
                str(data),
            ],
        ),
        ("ingest", ["ingest", "--source", str(data), "--conf", str(conf)]),
        ("refine", ["refine", "--conf", str(conf)]),
        ("train", ["train", "--conf", str(conf)]),
        ("forecast", ["forecast", "--conf", str(conf)]),
    ]:
        res = runner.invoke(cli, args, catch_exceptions=False)
        assert res.exit_code == 0, res.output
        outs[name] = res
    yield {
        "conf": str(conf),
        "uri": uri,
        "data": data,
        "runner": runner,
        "outs": outs,
        "lake": Lakehouse.from_config(load_config(conf)),
        "config": load_config(conf),
    }
    mp.undo()


def _invoke(lake, *args):
    return lake["runner"].invoke(cli, [*args, "--conf", lake["conf"]], catch_exceptions=False)


# -- item 1: step lines, bars, logs, telemetry ------------------------------------------
def test_every_step_prints_its_start_when_not_on_a_terminal(lake):
    outs = lake["outs"]
    # CliRunner's stderr is not a terminal: one line per step, no bar
    assert outs["refine"].stderr.splitlines()[0].endswith(" refine")
    train_err = outs["train"].stderr
    for step in ("train", f"fit and backtest ({N_SERIES} series)", "MLflow run, registry and gold tables"):
        assert step in train_err, train_err
    assert "forecast" in outs["forecast"].stderr
    for err in (outs["refine"].stderr, train_err, outs["forecast"].stderr):
        assert "it/s" not in err and "s/it" not in err and "%|" not in err  # no tqdm bar
        assert all(len(line) < 120 for line in err.splitlines())
    # the step lines are on stderr: stdout keeps the summary only
    assert "fit and backtest" not in outs["train"].stdout


def test_nightly_source_option_ingests_that_source_and_prints_each_step(lake):
    res = _invoke(lake, "nightly", "--source", str(lake["data"]))
    assert res.exit_code == 0, res.output
    assert "skipped: 1 file(s) already ingested" in res.stdout  # not "no nightly.source configured"
    steps = [line.split(" ", 1)[1] for line in res.stderr.splitlines() if line[:2].isdigit()]
    assert steps == ["ingest", "refine", "forecast"], res.stderr  # train skipped before it starts
    help_text = lake["runner"].invoke(cli, ["nightly", "--help"]).output
    assert "overrides nightly.source" in help_text


def _run_on_pty(args, env, timeout=180):
    """``python -m training.cli ARGS`` with stderr on a pseudo-terminal; (rc, stderr text)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120-column terminal
    proc = subprocess.Popen(
        [sys.executable, "-m", "training.cli", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=follower,
    )
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(timeout=30)
    os.close(leader)
    return proc.returncode, b"".join(chunks).decode(errors="replace")


def test_a_terminal_gets_a_live_bar_with_done_total_and_eta_but_not_in_ci(lake):
    args = ["forecast", "--force", "--conf", lake["conf"]]
    rc, err = _run_on_pty(args, _env(lake["uri"]))
    assert rc == 0, err
    assert f"{N_SERIES}/{N_SERIES}" in err and "<" in err and "series/s" in err, (
        err
    )  # tqdm: done/total [elapsed<eta, rate]
    rc, err = _run_on_pty(args, _env(lake["uri"], CI="true"))
    assert rc == 0, err
    assert "forecast" in err and f"{N_SERIES}/{N_SERIES}" not in err, err


def test_progress_renders_one_start_line_then_a_bar(capsys):
    p = _Progress(bars=True)
    p("refine", 0, 0)
    for done in range(1, 5):
        p("refine", done, 4)
    p("global_nn epochs", 3, 3)
    p.close()
    err = capsys.readouterr().err
    assert err.count("refine\n") == 1 and "4/4" in err and "3/3" in err and "epoch" in err
    assert not p.bars


def test_jobs_report_progress_per_series(lake):
    seen = []
    forecast(lake["lake"], lake["config"], force=True, progress=lambda *a: seen.append(a))
    assert seen[0] == ("forecast", 0, 0) and seen[-1] == ("forecast", N_SERIES, N_SERIES)
    done = [d for s, d, t in seen[1:]]
    assert done == sorted(done) and all(t == N_SERIES for _, _, t in seen[1:])
    fc = lake["lake"].read("gold/forecasts")
    assert len(fc) == N_SERIES * H  # the chunked predict writes every row once

    src = Path(lake["conf"]).parent / "score_in.parquet"
    ids = sorted(fc["series_id"].unique())[:3]
    pd.DataFrame({"series_id": ids, "horizon": 6}).to_parquet(src)
    seen.clear()
    rep = score(lake["lake"], lake["config"], str(src), progress=lambda *a: seen.append(a))
    assert rep.n_rows == 3 * 6 and seen[0] == ("score", 0, 0) and seen[-1] == ("score", 3, 3)


def test_global_model_fits_and_epochs_report_progress():
    pytest.importorskip("torch")
    from forecasting.generator import generate
    from training.global_models import train_global_models

    frame = generate(n_series=3, days=14, freq="h", seed=2, clean=True).readings[["series_id", "ts", "y"]]
    nn = {"epochs": 3, "hidden": 8, "windows_per_series": 8, "input_size": 48, "batch_size": 32}
    config = load_config(
        horizon=H,
        freq="h",
        models=["global_nn"],
        model_params={"global_nn": nn},
        **{"backtest.windows": 1, "deep.num_processes": 1},
    )
    seen = []
    report = train_global_models(frame, config, progress=lambda *a: seen.append(a))
    assert report.runs["global_nn"].error == ""
    fits = [a for a in seen if a[0] == "global_nn fits"]
    assert fits[0] == ("global_nn fits", 0, 2) and fits[-1] == ("global_nn fits", 2, 2)
    epochs = [a for a in seen if a[0] == "global_nn epochs"]
    assert epochs == [("global_nn epochs", e, 3) for e in (1, 2, 3)] * 2  # window 0, then the full history


def test_verbose_shows_mmf_logs_without_third_party_debug(lake):
    out = subprocess.run(
        [sys.executable, "-m", "training.cli", "-v", "train", "--conf", lake["conf"]],
        cwd=ROOT,
        env=_env(lake["uri"]),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    logs = [line for line in out.stderr.splitlines() if line.startswith(("DEBUG", "INFO", "WARNING"))]
    assert any(line.startswith("INFO registry.promotion: gate") for line in logs), out.stderr
    assert all(
        line.split()[1].split(".")[0].rstrip(":") in ("mmf", "forecasting", "training", "registry")
        for line in logs
        if not line.startswith("WARNING")
    ), logs
    assert not any(word in out.stderr for word in THIRD_PARTY), out.stderr[:3000]

    quiet = subprocess.run(
        [sys.executable, "-m", "training.cli", "candidates"],
        cwd=ROOT,
        env=_env(lake["uri"]),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert quiet.returncode == 0 and "DEBUG" not in quiet.stderr and "INFO" not in quiet.stderr


TELEMETRY = """
import os, sys
from mlflow.telemetry.client import get_telemetry_client
from mlflow.telemetry.utils import is_telemetry_disabled
before = get_telemetry_client() is not None
from click.testing import CliRunner
from training.cli import cli
CliRunner().invoke(cli, ["candidates"], catch_exceptions=False)
print(before, get_telemetry_client() is not None, is_telemetry_disabled(), os.environ.get("MLFLOW_DISABLE_TELEMETRY"))
"""


def test_mlflow_telemetry_is_off_unless_the_user_turns_it_on(tmp_path):
    def run(**extra):
        env = _env(f"sqlite:///{tmp_path / 'm.db'}", **extra)
        out = subprocess.run(
            [sys.executable, "-c", TELEMETRY], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    # MLflow would send telemetry from this environment (its client exists at import) ...
    before, after, disabled, switch = run()
    assert before == "True" and after == "False" and disabled == "True" and switch == "true"
    # ... the user's own choice wins either way
    assert run(MLFLOW_DISABLE_TELEMETRY="false")[1:3] == ["True", "False"]
    assert run(DO_NOT_TRACK="true")[1:] == ["False", "True", "None"]


# -- item 2: query ----------------------------------------------------------------------
def _footer(res) -> str:
    return res.stderr.strip().splitlines()[-1]


def test_query_footer_says_how_many_rows_the_limit_cut(lake):
    res = _invoke(lake, "query", "gold/forecasts", "--series-id", "MTR-00001", "--limit", "5")
    assert res.exit_code == 0, res.output
    assert len(res.stdout.strip().splitlines()) == 1 + 5
    version = lake["lake"].version("gold/forecasts")
    assert _footer(res) == f"(5 of {H} rows; version {version})"
    whole = _invoke(lake, "query", "gold/forecasts", "--series-id", "MTR-00001", "--limit", "48")
    assert _footer(whole) == f"({H} rows; version {version})"


def test_unknown_series_id_is_a_clear_error_naming_the_closest_ids(lake):
    res = _invoke(lake, "query", "gold/forecasts", "--series-id", "MTR-001", "--limit", "48")
    assert res.exit_code == 2
    assert "series 'MTR-001' is not in gold/forecasts" in res.output
    assert "closest: MTR-00001," in res.output  # the natural first, not the largest string
    far = _invoke(lake, "query", "silver/readings", "--series-id", "nope")
    assert far.exit_code == 2 and "ids look like MTR-00001" in far.output
    portfolio = _invoke(lake, "query", "gold/portfolio", "--series-id", "MTR-00001")
    assert portfolio.exit_code == 2 and "gold/portfolio has no series_id column" in portfolio.output


def test_as_of_takes_dates_and_naive_times_as_utc_and_prints_the_version_used(lake):
    lk = lake["lake"]
    # a second gold/forecasts version, so that an as-of time picks between two
    assert _invoke(lake, "forecast", "--force").exit_code == 0
    history = sorted(lk.history("gold/forecasts"), key=lambda h: h["version"])
    first, last = history[0], history[-1]
    assert last["version"] > first["version"]
    at_first = pd.Timestamp(first["timestamp"], unit="ms")  # naive: taken as UTC
    for text in (
        at_first.isoformat(),
        at_first.isoformat() + "Z",
        at_first.tz_localize("UTC").tz_convert("Europe/Berlin").isoformat(),
    ):
        res = _invoke(lake, "query", "gold/forecasts", "--as-of", text, "--limit", "1")
        assert res.exit_code == 0, res.output
        assert _footer(res).endswith(f"version {first['version']})"), (text, res.output)
    tomorrow = (pd.Timestamp.now(tz="UTC") + pd.Timedelta("1D")).date().isoformat()
    res = _invoke(lake, "query", "gold/forecasts", "--as-of", tomorrow, "--limit", "1")
    assert res.exit_code == 0 and _footer(res).endswith(f"version {last['version']})")

    before = _invoke(lake, "query", "gold/forecasts", "--as-of", "2001-01-01")
    assert before.exit_code == 2
    assert "2001-01-01T00:00:00+00:00 is before gold/forecasts's first commit (version 0 at" in before.output
    bad = _invoke(lake, "query", "gold/forecasts", "--as-of", "yesterday-ish")
    assert bad.exit_code == 2 and "is not an ISO 8601 date or timestamp" in bad.output


# -- item 7: help -----------------------------------------------------------------------
def _commands(group: click.Group, path=("mmf",)):
    for name, cmd in group.commands.items():
        yield (*path, name), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*path, name))


def test_every_option_has_help_and_every_argument_is_explained():
    missing = []
    for path, cmd in [(("mmf",), cli), *_commands(cli)]:
        for param in cmd.params:
            if isinstance(param, click.Option) and not (param.help or "").strip():
                missing.append(f"{' '.join(path)} {param.opts[0]}")
            if isinstance(param, click.Argument) and param.human_readable_name not in (cmd.help or ""):
                missing.append(
                    f"{' '.join(path)} {param.human_readable_name} (not named in the command's help)"
                )
        if not cmd.hidden and not (cmd.help or "").strip():
            missing.append(f"{' '.join(path)} (no help)")
    assert not missing, missing


def test_help_says_what_sql_engine_candidates_and_promote_mean():
    runner = CliRunner()
    sql_help = runner.invoke(cli, ["sql", "--help"]).output
    assert "DuckDB" in sql_help and "Spark SQL" in sql_help and "per-series" not in sql_help
    top = runner.invoke(cli, ["--help"]).output
    assert "candidates" in top and "not the MLflow Registry" in top
    assert "\n  models " not in top  # the old name is a hidden alias
    assert runner.invoke(cli, ["models"]).output == runner.invoke(cli, ["candidates"]).output
    assert "seasonal_naive" in runner.invoke(cli, ["candidates"]).output
    promote_help = runner.invoke(cli, ["promote", "--help"]).output
    assert "MLflow model version VERSION" in promote_help
    for cmd in (["query"], ["train"], ["forecast"], ["generate"]):
        text = runner.invoke(cli, [*cmd, "--help"]).output
        for opt in ("--series-id", "--horizon", "--seed"):
            if opt in text:
                line = next(x for x in text.splitlines() if x.strip().startswith(opt))
                assert len(line.split(None, 2)) == 3, line  # the option, its type, its help
