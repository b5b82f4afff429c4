"""The README works to the letter (issue 17): every command of its "Using it" section, and
the shell examples after it that a new user copies, run as written in a fresh folder,
through the real ``mmf`` entry point of this environment, in a subprocess each.

The commands are read from README.md itself (the fenced ``bash`` blocks of the section),
so a command the README changes is run as changed. Only these are substituted, each
checked to be in the README so that a change there fails here first:

* ``. .venv/bin/activate``: the test's environment is the activated one (its ``bin``
  first on ``PATH``, where ``mmf`` must be);
* the generator's size (``--series 200 --days 90``): a few series of three weeks, enough
  for every step (the default ``cleaning.min_length`` is two weeks of hours);
* the placeholders ``RUN_ID`` (the run ``mmf train`` printed) and ``TABLE``;
* ``mmf serve``'s ``[--host H] [--port P]`` (Serving): loopback and a free port; the
  server is started, asked, and stopped;
* Serving's ``mlflow models serve`` block: a free port for 5001 and ``--env-manager
  local`` (the default manager's virtualenv is tested with ``-m slow`` in
  tests/test_registry_mlflow.py); the ``curl`` runs as written against it.

Each command must exit 0 and print what the README says it does; the tables its comment
names after ``->`` must exist afterwards.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BIN = Path(sys.executable).parent  # the environment `. .venv/bin/activate` activates
ACTIVATE = ". .venv/bin/activate"
SIZE = ("--series 200 --days 90", "--series 5 --days 21")
HORIZON = 48  # conf/default.yaml's horizon: `--limit 48` is one series' forecast


# -- the README ----------------------------------------------------------------------------
def section(text: str, title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, f"README.md has no section '## {title}'"
    return match.group(1)


def bash_blocks(text: str) -> list[list[str]]:
    """The lines (comments kept) of every fenced bash block in ``text``."""
    return [
        [line for line in block.splitlines() if line.strip()]
        for block in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M)
    ]


def using_it() -> tuple[list[str], list[str]]:
    """The "Using it" section's commands: the walkthrough block, then the SQL examples."""
    blocks = bash_blocks(section(README.read_text(), "Using it"))
    assert len(blocks) >= 2, "README 'Using it' lost its walkthrough or its SQL examples"
    walk, *rest = blocks
    assert walk[0] == ACTIVATE, f"the walkthrough starts with {ACTIVATE!r}, got {walk[0]!r}"
    assert SIZE[0] in walk[1], f"the walkthrough starts by generating {SIZE[0]!r}: {walk[1]!r}"
    return walk[1:], [line for block in rest for line in block]


def serve_command() -> str:
    match = re.search(r"`(mmf serve \[--host H\] \[--port P\])`", section(README.read_text(), "Serving"))
    assert match, "README's Serving section no longer shows `mmf serve [--host H] [--port P]`"
    return match.group(1)


def comment(line: str) -> str:
    """The ``# ...`` comment of a command line, as bash reads it: a ``#`` that starts a
    word outside quotes (the comment itself may hold quotes and apostrophes)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[i + 1 :].strip()
    return ""


def tables_named(line: str) -> list[str]:
    """The ``layer/table`` names a command's comment says it writes (after ``->``)."""
    text = comment(line)
    if "->" not in text:
        return []
    written = re.split(r"\(", text.split("->", 1)[1])[0]  # a parenthesis is a remark
    return re.findall(r"\b(?:bronze|silver|gold)/\w+", written)


# -- running ------------------------------------------------------------------------------
@dataclass
class Ran:
    command: str
    returncode: int
    out: str
    seconds: float
    tables: list[str] = field(default_factory=list)

    def why(self) -> str:
        return f"`{self.command}` exited {self.returncode} after {self.seconds:.0f} s:\n{self.out[-3000:]}"


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MMF_", "MLFLOW_", "PYTEST_", "SPARK_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(REPO),  # this checkout's code, whichever checkout the environment installed
        CI="1",
        GIT_PYTHON_REFRESH="quiet",
        MLFLOW_ENABLE_ASYNC_LOGGING="false",
    )
    return env


def run(line: str, cwd: Path, timeout: float = 300) -> Ran:
    start = time.monotonic()
    done = subprocess.run(
        ["bash", "-c", line],
        cwd=cwd,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    return Ran(line, done.returncode, done.stdout, time.monotonic() - start)


def filled(line: str, run_id: str | None) -> str:
    line = line.replace(*SIZE)
    if re.search(r"\bRUN_ID\b", line):
        assert run_id, f"`{line}` needs the run id `mmf train` prints, and none was printed"
        line = re.sub(r"\bRUN_ID\b", run_id, line)
    return re.sub(r"\bTABLE\b", "gold/forecasts", line)


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory) -> dict:
    """The section's commands run one after the other in an empty folder."""
    assert shutil.which("mmf", path=str(BIN)), f"no `mmf` entry point in {BIN}: pip install -e ."
    home = tmp_path_factory.mktemp("readme")
    walk, examples = using_it()
    ran: list[Ran] = []
    run_id = None
    for line in walk + examples:
        done = run(filled(line, run_id), home)
        done.tables = tables_named(line)
        ran.append(done)
        found = re.search(r"MLflow run ([0-9a-f]{32})", done.out)
        run_id = found.group(1) if found else run_id
        if done.returncode != 0 and re.match(r"mmf (generate|ingest|refine|train)\b", line):
            break  # the later steps need this one
    return {"home": home, "ran": ran, "n_walk": len(walk)}


def by(walkthrough, pattern: str) -> Ran:
    hits = [r for r in walkthrough["ran"] if re.match(pattern, r.command)]
    assert hits, f"no README command matches {pattern!r} (ran: {[r.command for r in walkthrough['ran']]})"
    return hits[0]


# What each command prints (at least these words); every README command needs an entry,
# so a new one fails here until its output is checked.
EXPECTED: list[tuple[str, list[str]]] = [
    (r"mmf generate\b", [r"wrote [\d,]+ readings of 5 series to meters\.parquet"]),
    (r"mmf ingest\b", [r"ingested [\d,]+ rows from meters\.parquet", r"bronze/readings version 0"]),
    (r"mmf refine\b", [r"silver from bronze version 0: \d+ series"]),
    (
        r"mmf train\b",
        [
            r"MLflow run [0-9a-f]{32} on silver version 0",
            r"status: ok \d",
            r"model version 1: promoted to champion",
        ],
    ),
    (r"mmf forecast\b", [r"gold/forecasts version 0: \d+ rows for \d+ series"]),
    (
        r"mmf nightly\b",
        [r"ingest +skipped: 1 file\(s\) already ingested", r"train +skipped: already trained"],
    ),
    (r"mmf monitor\b", [r"live accuracy on silver version \d+|no monitoring run yet"]),
    (r"mmf query gold/forecasts --series-id MTR-00001", [rf"\({HORIZON} rows; version 0\)", r"MTR-00001"]),
    (r"mmf query silver/readings --version 0 --limit 5", [r"\(5 of [\d,]+ rows; version 0\)"]),
    (r"mmf sql \"SELECT model, count\(\*\) FROM gold\.current_selection", [r"model +count_star\(\)"]),
    (r"mmf candidates\b", [r"seasonal_naive +Repeats the last season", r"ets +Exponential smoothing"]),
    (r"mmf promote 1\b", [r"champion is now version 1"]),
    (r"mmf reproduce [0-9a-f]{32}", [r"match"]),
    (r"mmf doctor\b", [r"gold/forecasts: ok \(version \d+\)"]),
    (r"mmf repair gold/forecasts", [r"gold/forecasts: nothing to repair \(version \d+\)"]),
    (r"mmf sql \"SELECT \* FROM gold\.current_forecasts", [r"MTR-00001"]),
    (r"mmf sql \"SELECT status, model, count\(\*\) AS n FROM gold\.current_selection", [r"\bok\b"]),
    (r"mmf sql \"SELECT day, yhat FROM gold\.current_portfolio", [r"day +yhat"]),
    (
        r"mmf sql \"SELECT model, cutoff, ts, y, yhat FROM gold\.current_backtest_forecasts",
        [r"model +cutoff +ts +y +yhat", r"\n *\w+ +\d{4}-\d\d-\d\d"],
    ),
]


def test_every_using_it_command_runs_and_says_what_the_readme_says(walkthrough):
    home = walkthrough["home"]
    for done in walkthrough["ran"]:
        assert done.returncode == 0, done.why()
        patterns = [p for cmd, p in EXPECTED if re.match(cmd, done.command)]
        assert patterns, f"README command `{done.command}` has no expected output in EXPECTED: add it"
        for pattern in patterns[0]:
            assert re.search(pattern, done.out), (
                f"`{done.command}` did not print /{pattern}/:\n{done.out[-3000:]}"
            )
        for table in done.tables:
            assert (home / "lakehouse" / table / "_delta_log").is_dir(), f"`{done.command}`: no {table}"
    walk, examples = using_it()
    assert len(walkthrough["ran"]) == len(walk) + len(examples)


def test_the_readme_numbers_hold(walkthrough):
    """What the comments and the prose promise beyond exit codes: one forecast per step of
    the horizon, the current selection once per series, the portfolio's total by day."""
    trained = by(walkthrough, r"mmf train\b").out
    usable = sum(int(n) for n in re.findall(r"\b(?:ok|fallback) (\d+)", trained.split("chosen:")[0]))
    counts = by(walkthrough, r"mmf sql \"SELECT model, count\(\*\) FROM gold\.current_selection").out
    rows = [line.split() for line in counts.splitlines()[1:] if line.strip()]
    assert sum(int(r[-1]) for r in rows) == usable, counts  # once per series, each run's choice not summed
    current = by(walkthrough, r"mmf sql \"SELECT \* FROM gold\.current_forecasts").out
    assert sum(1 for line in current.splitlines() if line.lstrip().startswith("MTR-00001")) == HORIZON
    total = by(walkthrough, r"mmf sql \"SELECT day, yhat FROM gold\.current_portfolio").out
    assert len(total.splitlines()) >= 3, total  # a header and a row per forecast day (48 h: 2 or 3 days)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_mmf_serve_as_the_readme_shows_it(walkthrough):
    pytest.importorskip("fastapi")
    port = free_port()
    line = serve_command().replace("[--host H]", "--host 127.0.0.1").replace("[--port P]", f"--port {port}")
    server = subprocess.Popen(
        ["bash", "-c", f"exec {line}"],
        cwd=walkthrough["home"],
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:  # up, then the champion loaded (the first refresh)
            assert server.poll() is None, server.stdout.read()
            try:
                status, champion = http(f"{base}/models/champion")
            except OSError:
                status, champion = None, {}
            if status == 200:
                break
            assert time.monotonic() < deadline, f"mmf serve had no champion after 180 s: {champion}"
            time.sleep(0.5)
        assert str(champion["version"]) == "1", champion
        assert http(f"{base}/health")[0] == 200
        status, forecast = http(f"{base}/series/MTR-00001/forecast")
        assert status == 200, forecast
        status, predicted = http(f"{base}/predict", {"series": [{"series_id": "MTR-00001", "horizon": 3}]})
        assert status == 200, predicted
        points = predicted["forecasts"][0]["points"]
        assert len(points) == 3 and all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:00:00Z", p["ts"]) for p in points)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def test_mlflow_models_serve_as_the_readme_shows_it(walkthrough):
    """The Serving section's block: the server (with ``--env-manager local`` added: the
    default manager's fresh virtualenv takes minutes, tests/test_registry_mlflow.py runs it
    with -m slow) on a free port, then the ``curl`` as written."""
    (block,) = bash_blocks(section(README.read_text(), "Serving"))
    server_line, curl_line = block
    assert (
        "mlflow models serve -m models:/mmf-many-models@champion" in server_line and "-p 5001" in server_line
    )
    assert curl_line.startswith("curl ") and "127.0.0.1:5001/invocations" in curl_line
    port = str(free_port())
    server = subprocess.Popen(
        ["bash", "-c", server_line.replace("-p 5001", f"-p {port} --env-manager local")],
        cwd=walkthrough["home"],
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stdout.read()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "mlflow models serve did not answer /ping in 180 s"
                time.sleep(0.5)
        done = run(curl_line.replace("127.0.0.1:5001", f"127.0.0.1:{port}"), walkthrough["home"], timeout=120)
        assert done.returncode == 0, done.why()
        rows = json.loads(done.out)["predictions"]
        assert len(rows) == 3 and {r["series_id"] for r in rows} == {"MTR-00001"}
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:00:00Z", r["ts"]) for r in rows), rows
    finally:
        stop_group(server)


def stop_group(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (bash, mlflow, uvicorn), SIGKILL after 30 s."""
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    except ProcessLookupError:
        server.wait()
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
