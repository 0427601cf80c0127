"""omni-batch against the obvious alternative (`sequential.py`) on the same jobs.

Time base: the simulator's `default` profile (queued 0.1-0.3 s, generation 0.5-2 s) stands for
the real API at 60x speed (6-18 s queued, 30-120 s generating). Both contenders use it:
the sequential loop polls every 8 s / 60; omni-batch runs with the documented `Policy()`
timings / 60 (first poll 5 s, every 10 s) and its default 10 req/s x 60. Each contender gets a
fresh simulator with the same seed, so task n takes the same time for both.

    .venv/bin/python bench/alternative.py [--jobs 50] [--scale 60]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from _support import Phases, Stopwatch, emit, scaled_policy, simulator, write_manifest
from sequential import POLL_EVERY_S, run_sequential


def run_omni(jobs: int, scale: float) -> dict:
    with simulator("default") as sim, tempfile.TemporaryDirectory() as tmp:
        from omni_batch.batch import RunOptions, run_async

        path = write_manifest(Path(tmp), jobs)
        options = RunOptions(
            out=Path(tmp) / "out", base_url=sim.base_url, api_key=sim.key, rate=10.0 * scale,
            max_in_flight=50, policy=scaled_policy(scale),
        )  # fmt: skip
        phases = Phases()
        with Stopwatch() as watch:
            phases.mark("begin")
            report = asyncio.run(run_async(path, options, on_start=phases.on_start))
            phases.mark("end")
        stats = sim.stats()
    return {
        "makespan_s": round(watch.wall, 2),
        "engine_s": phases.split().get("engine_wall_s"),
        "completed": int((report["status"] == "completed").sum()),
        "polls_per_job": round(stats["polls"] / jobs, 2),
        "status_429": stats["status_429"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--scale", type=float, default=60.0)
    args = parser.parse_args()
    with simulator("default") as sim, tempfile.TemporaryDirectory() as tmp:
        seq = run_sequential(sim.base_url, sim.key, args.jobs, POLL_EVERY_S / args.scale, Path(tmp))
    omni = run_omni(args.jobs, args.scale)
    emit(
        {
            "jobs": args.jobs,
            "scale": args.scale,
            "sequential_makespan_s": seq["makespan_s"],
            "sequential_polls_per_job": seq["polls_per_job"],
            "sequential_completed": seq["completed"],
            "omni_makespan_s": omni["makespan_s"],
            "omni_engine_s": omni["engine_s"],
            "omni_polls_per_job": omni["polls_per_job"],
            "omni_completed": omni["completed"],
            "omni_status_429": omni["status_429"],
            "speedup": round(seq["makespan_s"] / omni["makespan_s"], 1),
            # in the real API's time: seconds x scale
            "sequential_real_min": round(seq["makespan_s"] * args.scale / 60, 1),
            "omni_real_min": round(omni["makespan_s"] * args.scale / 60, 1),
        }
    )


if __name__ == "__main__":
    main()
