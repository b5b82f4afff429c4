"""One more night of a finished ``benchmarks.retrain`` week, timed for each policy on a
copy of its lakehouse: what a nightly costs once the week's state has built up (issue
16's time target), without running the week again.

    python -m benchmarks.retrain_night --work DIR [--policies full,changed] [--repeat 1]
        [--scratch DIR] [--label NAME] [--out NAME]

``--work`` is the folder of a ``benchmarks.retrain`` run that recorded all its nights
(its ``progress.json``: series, days, nights and settings are taken from it). For each
run, in the order given (policies alternated, ``--repeat`` rounds), the policy's folder
is copied to ``--scratch`` (its MLflow store's artifact paths moved with it), the data's
last day (night ``nights + 1``: the same generated readings, ``seed=7``) lands in the
copy's source folder and the real nightly runs on it
(:func:`training.jobs.nightly.nightly`), timed as a whole, by step and by the training
step's parts. There is no day after it in the generated data, so nothing is scored:
held-out accuracy is ``benchmarks.retrain``'s. The week's folder is never written.

Each run records the commit it ran on; to compare two commits, run it from each
checkout (``PYTHONPATH`` the checkout) with the same ``--scratch`` and ``--label``s of
their own, alternating them, and merge the JSON files. Results:
benchmarks/results/OUT.{json,md} (``--out``; default ``retrain_night``; ``--results``: another
folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pandas as pd

from benchmarks.common import RESULTS, git_sha, save
from benchmarks.retrain import settings
from forecasting import contract as C
from forecasting.config import load_config
from forecasting.generator import generate, write
from training.jobs.nightly import nightly
from training.tables import Lakehouse

# the MLflow store's absolute paths (SQLite tables and columns) moved with a copy
MLFLOW_PATHS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("model_versions", "storage_location"),
    ("model_versions", "source"),
    ("logged_models", "artifact_location"),
)


def copy_policy(src: Path, dst: Path) -> None:
    """``src`` (a policy's folder: lake, raw, mlflow.db) copied to ``dst``, its MLflow
    store pointing at the copy's artifacts."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    db = sqlite3.connect(dst / "mlflow.db")
    try:
        held = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, col in MLFLOW_PATHS:
            if table in held:
                db.execute(f"UPDATE {table} SET {col} = replace({col}, ?, ?)", (str(src), str(dst)))
        db.commit()
    finally:
        db.close()


def one_night(week: dict, gen, work: Path, scratch: Path, policy: str, k: int = 1) -> dict:
    """Night ``nights + 1`` of ``policy`` on a copy of its folder (``k``: the round, in
    the copy's name: MLflow keeps one store per tracking URI in a process, and a store
    whose SQLite file was replaced under it can no longer write): its figures."""
    root = scratch / f"{policy}-{k}"
    copy_policy(work / policy, root)
    night = int(week["nights"]) + 1
    end = gen.readings[C.TS].max()
    r = gen.readings
    day = r[(r[C.TS] > end - pd.Timedelta(days=1)) & (r[C.TS] <= end)]
    write(
        dataclasses.replace(gen, readings=day.reset_index(drop=True)), root / "raw" / f"day-{night}.parquet"
    )
    cfg = load_config(**settings(week["conf"], root, policy))
    clock = time.perf_counter()
    rep = nightly(Lakehouse.from_config(cfg), cfg)
    wall = time.perf_counter() - clock
    metrics = rep.train.metrics if rep.train is not None else {}
    return {
        "policy": policy,
        "night": night,
        "wall_s": wall,
        "steps_s": dict(rep.timings),
        "train_parts_s": dict(rep.train.timings) if rep.train is not None else {},
        "failed": rep.failure,
        "n_refit": metrics.get("n_refit"),
        "n_carried": metrics.get("n_carried"),
        "git": git_sha(),
    }


def markdown(r: dict, command: str) -> str:
    lines = [
        "# retrain_night: one more night of the week at its size, `retrain.policy` full vs changed",
        "",
        f"Command: `{command}`",
        "",
        f"- {r['series']} generated hourly meters; night {r['nights'] + 1} (the data's last day) on copies of "
        f"the lakehouses after `benchmarks.retrain`'s {r['nights']} nights; runs in the order listed.",
        "",
        "| label | policy | wall s | ingest s | refine s | monitor s | train s | (engine s) | (MLflow s) "
        "| forecast s | refit | carried | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in r["runs"]:
        st, tp = run["steps_s"], run.get("train_parts_s", {})
        cells = [f"{st.get(k, float('nan')):.1f}" for k in ("ingest", "refine", "monitor", "train")]
        cells += [f"{tp.get(k, float('nan')):.1f}" for k in ("engine_s", "mlflow_s")]
        lines.append(
            f"| {run.get('label', '')} | {run['policy']} | {run['wall_s']:.1f} | {' | '.join(cells)} | "
            f"{st.get('forecast', float('nan')):.1f} | {run['n_refit']} | {run['n_carried']} | {run['git'][:7]} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="the folder of a finished benchmarks.retrain run")
    ap.add_argument("--policies", default="full,changed", help="comma-separated, in the order run")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of the policies")
    ap.add_argument("--scratch", help="where the copies go (WORK/night-copies by default)")
    ap.add_argument("--label", default="", help="a name for these runs in the results (e.g. the side)")
    ap.add_argument("--out", default="retrain_night", help="results name: RESULTS/OUT.{json,md}")
    ap.add_argument("--results", help="the results folder (benchmarks/results by default)")
    args = ap.parse_args(argv)
    work = Path(args.work)
    week = json.loads((work / "progress.json").read_text())
    done = {p: len(v["nights"]) for p, v in week["policies"].items()}
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    if any(done.get(p) != week["nights"] for p in policies):
        raise SystemExit(f"{work}: nights recorded {done}, not {week['nights']} for each of {policies}")
    scratch = Path(args.scratch) if args.scratch else work / "night-copies"
    gen = generate(n_series=week["series"], days=week["days"], freq="h", seed=7, clean=True)
    runs: list[dict] = []
    r = {"series": week["series"], "days": week["days"], "nights": week["nights"], "runs": runs}
    command = "python -m benchmarks.retrain_night " + " ".join(
        argv if argv is not None else __import__("sys").argv[1:]
    )
    folder = Path(args.results) if args.results else RESULTS
    for k in range(1, args.repeat + 1):
        for policy in policies:
            run = {"label": args.label, **one_night(week, gen, work, scratch, policy, k)}
            print(json.dumps(run, default=str), flush=True)
            runs.append(run)
            # saved after each run: a run cut off loses only itself
            save(
                args.out,
                r,
                markdown(r, command.strip()),
                folder,
                argv=argv,
                module="benchmarks.retrain_night",
            )
    print(markdown(r, command.strip()))


if __name__ == "__main__":
    main()
