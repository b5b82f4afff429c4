"""The local engine against a bare process pool, alternated in one process.

    python -m benchmarks.engine_overhead [--series 1000] [--days 90] [--repeats 3]

The scaling benchmark runs the platform and the plain loop as separate cells, minutes
apart; on this shared 2-core VM the same cell varies by up to 25% from one run to the
next, which is larger than the overhead it is meant to show. This script isolates the
engine: the same silver-like frame (generated clean meters), the same
``process_series`` and config, run by ``LocalEngine.map_groups`` and by a
``multiprocessing`` fork pool (``pool.map``, chunks of 8, as in the scaling loop)
alternately, ``--repeats`` times each, so slow and fast spells of the machine hit both.
Reported: each run's wall time and the driver's own CPU time, and the ratio of the
engine's mean wall time to the loop's.

Results: benchmarks/results/engine_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import machine, save
from benchmarks.scaling import H, loop_config, loop_map


def _frame(n: int, days: int):
    from forecasting.generator import generate

    frame = generate(n_series=n, days=days, freq="h", seed=42, clean=True).readings
    frame = frame[["series_id", "ts", "y", "temperature"]].copy()
    frame["is_filled"] = False
    frame["is_outlier"] = False
    return frame


def run_engine(frame) -> tuple[float, float, int]:
    from forecasting import contract as C
    from forecasting.pipeline import process_series
    from training.engines.local import LocalEngine

    t, c = time.perf_counter(), time.process_time()
    out = LocalEngine().map_groups(frame, "series_id", process_series, C.TRAIN_RESULT, loop_config())
    return time.perf_counter() - t, time.process_time() - c, int(out["status"].isin(["ok", "fallback"]).sum())


def run_loop(frame) -> tuple[float, float, int]:
    from training.engines.local import iter_groups

    t, c = time.perf_counter(), time.process_time()
    out = loop_map([g for _, g in iter_groups(frame, "series_id")])
    return (
        time.perf_counter() - t,
        time.process_time() - c,
        sum(int(r["status"].iloc[0] in ("ok", "fallback")) for r in out),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=1000)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    frame = _frame(a.series, a.days)
    runs = []
    for i in range(a.repeats):
        for tool, fn in (
            (("engine", run_engine), ("loop", run_loop))
            if i % 2 == 0
            else (("loop", run_loop), ("engine", run_engine))
        ):
            wall, cpu, ok = fn(frame)
            runs.append(
                {
                    "repeat": i,
                    "tool": tool,
                    "wall_s": round(wall, 2),
                    "driver_cpu_s": round(cpu, 2),
                    "n_ok": ok,
                }
            )
            print(runs[-1], flush=True)
    mean = {t: float(np.mean([r["wall_s"] for r in runs if r["tool"] == t])) for t in ("engine", "loop")}
    ratio = mean["engine"] / mean["loop"]
    m = machine()
    lines = [
        "# Local engine vs a bare process pool (alternated)",
        "",
        f"Machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['cpu']}. {a.series:,} generated hourly meters x "
        f"{a.days} days, default models, one backtest window, horizon {H}. "
        f"Command: `python -m benchmarks.engine_overhead --series {a.series} --days {a.days} --repeats {a.repeats}`",
        "",
        "| repeat | tool | wall s | driver CPU s | series ok |",
        "|---|---|---|---|---|",
        *[
            f"| {r['repeat']} | {r['tool']} | {r['wall_s']:.2f} | {r['driver_cpu_s']:.2f} | {r['n_ok']:,} |"
            for r in runs
        ],
        "",
        f"Mean wall: engine {mean['engine']:.2f} s, loop {mean['loop']:.2f} s: engine / loop = **{ratio:.3f}**.",
        "",
    ]
    save(
        "engine_overhead",
        {"series": a.series, "days": a.days, "runs": runs, "mean_wall_s": mean, "ratio": ratio},
        "\n".join(lines),
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
