"""Retrain only what changed (issue 16, item 3): the nightly's time and held-out accuracy
with ``retrain.policy: full`` against ``changed``.

    python -m benchmarks.retrain [--series 10000] [--days 60] [--nights 7] [--conf FILE] [--work DIR]
    python -m benchmarks.retrain --data EDRP.parquet --series 200 --days 60 [--nights 7] ...

Generated hourly meters (:func:`forecasting.generator.generate`, clean), or with
``--data`` real readings (the EDRP households: the first ``--series`` by number, the last
``--days`` whole days of the file; the horizon is one day of their steps). Per policy, on a
lakehouse of its own: the history up to ``nights + 1`` days before the end is ingested and
a first nightly trains every series (both policies alike; timed, not compared); then each
night one new day of readings lands in the source folder and the real nightly runs
(:func:`training.jobs.nightly.nightly`: ingest -> refine -> monitor -> train -> forecast),
timed as a whole and its training step on its own; the two policies' nights alternate
(full's night k, then changed's night k), each policy's progress written to
``WORK/progress.json`` after each of its nights, with a snapshot of its folder
(``WORK/snapshots/<policy>-<night>``: its Parquet files hard-linked, the rest copied)
from which ``--resume`` rolls back a night that was cut off. The night's Gold forecasts (the next
day of every series, from the current silver version) are then scored on the day that
follows, which no model has seen: MASE scaled by the series' in-sample daily seasonal
naive MAE up to the cutoff. Target (issue 16): ``changed`` takes at most 25% of
``full``'s nightly time, with held-out MASE at most 1% worse over the nights.
Results: benchmarks/results/retrain.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from benchmarks.common import first_ids, git_sha, save
from forecasting import contract as C
from forecasting.config import load_config
from forecasting.frequency import modal_step
from forecasting.generator import generate, write
from training.jobs.nightly import nightly
from training.tables import Lakehouse

POLICIES = ("full", "changed")
SNAPSHOTS = "snapshots"  # each policy's folder after its last recorded night (--resume)
H = 24  # one day of hours: the generated meters' horizon and season
DAY = pd.Timedelta(days=1)


@dataclasses.dataclass
class Source:
    """The readings the nights are cut from, and how a cut is written to the source folder."""

    readings: pd.DataFrame
    release: Callable[[pd.DataFrame, Path], None]  # (rows, path)
    season: int  # steps in a day: the horizon, and the lag of MASE's scale
    label: str


def generated_source(n_series: int, days: int) -> Source:
    """Clean generated hourly meters (seed 7), written with their site attributes."""
    gen = generate(n_series=n_series, days=days, freq="h", seed=7, clean=True)

    def release(rows: pd.DataFrame, path: Path) -> None:
        write(dataclasses.replace(gen, readings=rows.reset_index(drop=True)), path)

    return Source(gen.readings, release, H, f"{n_series} generated hourly meters x {days} days")


def data_source(path: Path, n_series: int | None, days: int) -> Source:
    """The first ``n_series`` series of ``path`` (by number for ids like ``H12``, the EDRP
    households), their last ``days`` whole days; written as ``series_id, ts, y``."""
    frame = pd.read_parquet(path, columns=[C.SERIES_ID, C.TS, C.Y])
    frame = frame[frame[C.SERIES_ID].isin(first_ids(frame[C.SERIES_ID].unique(), n_series))]
    step = modal_step(frame[C.TS].to_numpy())
    if step is None or DAY % step:
        raise SystemExit(
            f"--data {path}: a step of {step} does not divide a day; a day-ahead horizon needs one"
        )
    end = frame[C.TS].max().floor("D") + DAY  # the end of the last whole day
    if frame[C.TS].max() < end - step:
        end -= DAY
    frame = frame[(frame[C.TS] >= end - days * DAY) & (frame[C.TS] < end)].reset_index(drop=True)

    def release(rows: pd.DataFrame, path: Path) -> None:
        rows.reset_index(drop=True).to_parquet(path, index=False)

    every = pd.tseries.frequencies.to_offset(step).freqstr
    label = f"{frame[C.SERIES_ID].nunique()} series of {path.name} (every {every}) x {days} days"
    return Source(frame, release, int(DAY / step), label)


def scale_of(history: pd.DataFrame, season: int = H) -> pd.Series:
    """Per series, the in-sample daily seasonal naive MAE of its history."""

    def one(y: pd.Series) -> float:
        v = y.to_numpy(float)
        d = np.abs(v[season:] - v[:-season])
        d = d[~np.isnan(d)]
        return float(d.mean()) if len(d) and d.mean() > 0 else float("nan")

    return history.sort_values(C.TS).groupby(C.SERIES_ID)[C.Y].apply(one)


def score(lake: Lakehouse, truth: pd.DataFrame, cutoff: pd.Timestamp, season: int = H) -> dict:
    """The mean MASE of the newest delivery's forecasts on the day after ``cutoff``."""
    fc = lake.read("gold/forecasts", columns=[C.SERIES_ID, C.TS, "yhat", "silver_version"])
    fc = fc[fc["silver_version"] == lake.version("silver/readings")]
    day = truth[(truth[C.TS] > cutoff) & (truth[C.TS] <= cutoff + DAY)]
    both = fc.merge(day[[C.SERIES_ID, C.TS, C.Y]], on=[C.SERIES_ID, C.TS]).dropna(subset=[C.Y])
    mae = (both["yhat"] - both[C.Y]).abs().groupby(both[C.SERIES_ID]).mean()
    mase = (mae / scale_of(truth[truth[C.TS] <= cutoff], season).reindex(mae.index)).dropna()
    return {"mase": float(mase.mean()), "series": int(len(mase)), "points": int(len(both))}


def snapshot(work: Path, policy: str, night: int) -> Path:
    """``WORK/snapshots/<policy>-<night>``: the policy's folder after that night (0: the
    first nightly), replacing its older snapshot. Parquet files (nearly all the bytes:
    Delta's data files, raw days, staged parts) are written once and never changed, so
    they are hard-linked; every other file (Delta logs, the MLflow SQLite store, the
    lock) is copied."""
    folder = work / SNAPSHOTS
    dst, tmp = folder / f"{policy}-{night}", folder / f".{policy}-{night}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(work / policy, tmp, copy_function=_link_parquet)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    for old in folder.glob(f"{policy}-*"):
        if old != dst:
            shutil.rmtree(old)
    return dst


def roll_back(work: Path, policy: str, done: int) -> bool:
    """The policy's folder replaced by its snapshot after night ``done`` (``False``: no
    such snapshot)."""
    snap = work / SNAPSHOTS / f"{policy}-{done}"
    if not snap.is_dir():
        return False
    shutil.rmtree(work / policy)
    shutil.copytree(snap, work / policy, copy_function=_link_parquet)
    return True


def _link_parquet(src: str, dst: str) -> None:
    if src.endswith(".parquet"):
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


def released_days(raw: Path) -> list[int]:
    return sorted(int(f.stem.split("-")[1]) for f in raw.glob("day-*.parquet"))


def cut_off(raw: Path, done: int) -> bool:
    """Whether a policy's raw folder holds other days than its ``done`` recorded nights
    (a night released and cut off before it was recorded)."""
    return released_days(raw)[-1:] != ([done] if done else [])


def check_released(raw: Path, done: int, policy: str) -> None:
    """A resumed policy's raw folder holds exactly the days of its recorded nights."""
    if cut_off(raw, done):
        released = released_days(raw)
        raise SystemExit(
            f"--resume: {raw} holds days {released} but progress.json records {done} nights of "
            f"{policy!r}: a night was cut off and {SNAPSHOTS}/{policy}-{done} is missing; roll its "
            f"lakehouse back to night {done} (truncate its tables' Delta logs: a RESTORE keeps ingest's "
            "application transactions, so the day would be skipped) or start over"
        )


def run_policy(
    policy: str,
    src: Source,
    first_end: pd.Timestamp,
    nights: int,
    conf: dict,
    work: Path,
    done: int | None = None,
) -> Iterator[dict]:
    """The first nightly and ``nights`` more, one new day each, with ``policy``: yields
    ``{"first_s": ...}`` after the first, then each night's figures, so that the caller
    can alternate the policies night by night (one machine's drift weighs on both).
    ``done``: resume a stopped run whose lakehouse holds the first nightly and ``done``
    nights (nothing is yielded for those; ``0``: only the first nightly)."""
    root, raw = work / policy, work / policy / "raw"
    raw.mkdir(parents=True, exist_ok=done is not None)
    r = src.readings

    def release(name: str, rows: pd.DataFrame) -> None:
        src.release(rows, raw / f"{name}.parquet")

    cfg = load_config(**settings(conf, root, policy))
    lake = Lakehouse.from_config(cfg)
    if done is None:
        release("history", r[r[C.TS] <= first_end])
        clock = time.perf_counter()
        first = nightly(lake, cfg)
        assert not first.failed, first.failure
        yield {"first_s": time.perf_counter() - clock}
    for k in range((done or 0) + 1, nights + 1):
        end = first_end + pd.Timedelta(days=k)
        release(f"day-{k}", r[(r[C.TS] > end - pd.Timedelta(days=1)) & (r[C.TS] <= end)])
        clock = time.perf_counter()
        rep = nightly(lake, cfg)
        wall = time.perf_counter() - clock
        metrics = rep.train.metrics if rep.train is not None else {}
        night = {
            "night": k,
            "wall_s": wall,
            "train_s": sum((rep.train.timings if rep.train is not None else {}).values()),
            "steps_s": dict(rep.timings),  # ingest, refine, monitor, train, forecast, aggregate
            "failed": rep.failure,
            "n_refit": metrics.get("n_refit"),
            "n_carried": metrics.get("n_carried"),
            "n_drifted": metrics.get("n_drifted"),
            "git": git_sha(),
            **score(lake, r, end, src.season),
        }
        print(
            f"{policy} night {k}: {wall:.1f} s, MASE {night['mase']:.4f}, refit {night['n_refit']}",
            flush=True,
        )
        yield night


def settings(conf: dict, root: Path, policy: str) -> dict:
    """The run's settings (``conf``) for ``policy`` on the folder ``root`` (its lakehouse,
    source folder ``raw`` and MLflow store), flat as :func:`load_config` takes them."""
    return _flat(
        {
            **conf,
            "lakehouse": str(root / "lake"),
            "nightly": {"source": str(root / "raw")},
            "retrain": {**conf.get("retrain", {}), "policy": policy},
            "mlflow": {**conf.get("mlflow", {}), "tracking_uri": f"sqlite:///{root / 'mlflow.db'}"},
        }
    )


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in data.items():
        if isinstance(v, dict) and k not in ("model_params", "storage_options"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def run(
    n_series: int | None,
    days: int,
    nights: int,
    conf: dict,
    work: Path,
    resume: bool = False,
    data: Path | None = None,
) -> dict:
    """``resume``: go on with the run stopped in ``work`` (its ``progress.json``): the
    nights it recorded are kept (each policy's own count: one may be a night ahead), the
    next ones run on the current code (each night records the commit it ran on).
    ``data``: real readings instead of generated meters (:func:`data_source`)."""
    src = generated_source(n_series, days) if data is None else data_source(data, n_series, days)
    conf = {**conf, "horizon": conf.get("horizon", src.season)}
    end = src.readings[C.TS].max()
    first_end = end - pd.Timedelta(days=nights + 1)
    out = {
        "series": n_series,
        "days": days,
        "nights": nights,
        "conf": conf,
        **({"data": str(data)} if data is not None else {}),
        "source": src.label,
        "order": "alternated",
        "policies": {},
    }
    done: dict[str, int] | None = None
    if resume:
        out = json.loads((work / "progress.json").read_text())
        asked = {"series": n_series, "days": days, "nights": nights, "conf": conf, "data": data and str(data)}
        held = {k: out.get(k) for k in asked}
        if held != asked:
            raise SystemExit(f"--resume: {work} holds a run of {held}, not {asked}")
        done = {p: len(out["policies"][p]["nights"]) for p in POLICIES}
        for p in POLICIES:
            if cut_off(work / p / "raw", done[p]) and roll_back(work, p, done[p]):
                print(f"{p}: rolled back to its snapshot after night {done[p]}", flush=True)
            check_released(work / p / "raw", done[p], p)
        out.setdefault("resumed", []).append({"after_nights": done, "git": git_sha()})
    runs = {p: run_policy(p, src, first_end, nights, conf, work, done and done[p]) for p in POLICIES}
    if done is None:
        for policy, steps in runs.items():
            out["policies"][policy] = {**next(steps), "nights": []}
        _record(work, out, POLICIES, 0)
    for k in range(1, nights + 1):  # full's night k, then changed's night k
        for policy, steps in runs.items():
            if done is None or k > done[policy]:
                out["policies"][policy]["nights"].append(next(steps))
                _record(work, out, (policy,), k)
    out["summary"] = summary(out)
    return out


def _record(work: Path, out: dict, policies, night: int) -> None:
    """progress.json written (each policy's nights so far), then the policies' snapshots
    after ``night``: a night is recorded before it can be rolled back to."""
    (work / "progress.json").write_text(json.dumps(out, default=str))
    for policy in policies:
        snapshot(work, policy, night)


def summary(out: dict) -> dict:
    """Nightly time and held-out MASE over the nights, ``changed`` against ``full``."""
    full, changed = (pd.DataFrame(out["policies"][p]["nights"]) for p in POLICIES)
    return {
        "full_wall_s": float(full["wall_s"].sum()),
        "changed_wall_s": float(changed["wall_s"].sum()),
        "time_share": float(changed["wall_s"].sum() / full["wall_s"].sum()),
        "train_share": float(changed["train_s"].sum() / full["train_s"].sum()),
        "full_mase": float(full["mase"].mean()),
        "changed_mase": float(changed["mase"].mean()),
        "mase_change": float(changed["mase"].mean() / full["mase"].mean() - 1),
    }


def markdown(r: dict, command: str) -> str:
    s = r["summary"]
    lines = [
        "# retrain: nightly time and held-out MASE, `retrain.policy` full vs changed",
        "",
        f"Command: `{command}`",
        "",
        f"- {r.get('source') or str(r['series']) + ' generated hourly meters x ' + str(r['days']) + ' days'}; "
        f"{r['nights']} nights of one new day each "
        "after a first nightly (full for both); the policies' nights alternated (full's night k, then changed's); "
        "each night's forecasts scored on the next day (held out).",
        f"- nightly time over the nights: full {s['full_wall_s']:.1f} s, changed {s['changed_wall_s']:.1f} s "
        f"(**{s['time_share']:.0%}** of full; training step alone {s['train_share']:.0%}); target <= 25%.",
        f"- held-out MASE: full {s['full_mase']:.4f}, changed {s['changed_mase']:.4f} "
        f"(**{s['mase_change']:+.2%}**); target at most +1%.",
        *(
            f"- resumed on commit {x['git'][:7]} (`--resume`) after nights "
            + ", ".join(
                f"{n} of {p}" for p, n in x.get("after_nights", {"both": x.get("after_night")}).items()
            )
            + ": the nights before ran earlier, on the commit in their row"
            for x in r.get("resumed", [])
        ),
        "",
        "| policy | night | wall s | ingest s | refine s | monitor s | train s | forecast s | refit | carried "
        "| drifted | MASE | series | commit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for policy, res in r["policies"].items():
        for n in res["nights"]:
            steps = n.get("steps_s", {})
            step = " | ".join(f"{steps.get(k, float('nan')):.1f}" for k in ("ingest", "refine", "monitor"))
            lines.append(
                f"| {policy} | {n['night']} | {n['wall_s']:.1f} | {step} | {n['train_s']:.1f} | "
                f"{steps.get('forecast', float('nan')):.1f} | {n['n_refit']} | {n['n_carried']} | "
                f"{n['n_drifted']} | {n['mase']:.4f} | {n['series']} | {n.get('git', '?')[:7]} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--series", type=int, default=None, help="meters generated (10,000), or with --data its first N"
    )
    ap.add_argument("--data", type=Path, help="real readings (series_id, ts, y), e.g. the EDRP households")
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--nights", type=int, default=7)
    ap.add_argument("--conf", help="YAML settings applied to both policies (the defaults otherwise)")
    ap.add_argument("--work", help="folder for the lakehouses (a temporary one by default)")
    ap.add_argument("--out", default="retrain", help="results name: benchmarks/results/OUT.{json,md}")
    ap.add_argument(
        "--resume",
        action="store_true",
        help="go on with the stopped run in --work (its progress.json and lakehouses) from its next night",
    )
    args = ap.parse_args(argv)
    if args.resume and not args.work:
        ap.error("--resume needs --work: the folder of the run to go on with")
    if args.data and not args.data.is_file():
        ap.error(f"--data {args.data}: no such file (the EDRP households: ../shared/data/*.parquet)")
    conf = yaml.safe_load(Path(args.conf).read_text()) if args.conf else {}
    conf.setdefault("mlflow", {}).setdefault("sample_plots", 0)
    with tempfile.TemporaryDirectory(prefix="mmf-retrain-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        series = args.series or (None if args.data else 10_000)
        r = run(series, args.days, args.nights, conf, work, args.resume, args.data)
    command = "python -m benchmarks.retrain " + " ".join(
        argv if argv is not None else __import__("sys").argv[1:]
    )
    save(args.out, r, markdown(r, command.strip()), argv=argv, module="benchmarks.retrain")
    print(markdown(r, command.strip()))


if __name__ == "__main__":
    main()
