"""Runner overhead: N jobs, no rate limit, instant generation, the simulator in its own process.

Reports the runner's CPU and wall seconds per 1,000 jobs over `run_async` (manifest load,
journal, engine, downloads, reports), split into setup / engine / finish, and this process's
peak RSS; `floor.py` is the same HTTP work with nothing else.

    .venv/bin/python bench/overhead.py [--jobs 5000] [--in-flight 50] [--pyinstrument FILE]

Policy: first_poll=0, poll_interval=0.05 (a task is done when created, so one poll finds it);
RunOptions(rate=math.inf): no client-side limit (a 429 would still teach one).
For a profile of every thread, run this script under py-spy (see `profile_runner.py`).
"""

from __future__ import annotations

import argparse
import asyncio
import math
from pathlib import Path

from _support import (
    INSTANT,
    Phases,
    Stopwatch,
    emit,
    note,
    peak_rss_mb,
    rss_mb,
    scratch,
    simulator,
    write_manifest,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--in-flight", type=int, default=50)
    parser.add_argument("--pyinstrument", type=Path, default=None, help="write a text profile")
    parser.add_argument(
        "--no-verify", action="store_true", help="RunOptions(verify=False): no decode, no posters"
    )
    parser.add_argument(
        "--report-every", type=float, default=30.0, help="seconds between report refreshes"
    )
    parser.add_argument("--keep", type=Path, default=None, help="output folder to keep")
    parser.add_argument("--disk", action="store_true", help="write to the disk, not /dev/shm")
    args = parser.parse_args()

    with simulator("fast", **INSTANT) as sim:
        rss_start = rss_mb()
        try:
            from omni_batch.batch import RunOptions, run_async
            from omni_batch.running.options import Policy
        except ImportError:  # a checkout from before the stage packages (bench/before_after.py)
            from omni_batch.policy import Policy  # type: ignore[no-redef]
            from omni_batch.runner import RunOptions, run_async  # type: ignore[no-redef]

        rss_imported = rss_mb()
        sim_before = sim.usage()
        # a fixed 50 ms cadence (plan_polls=False): the poll planner's 5 s per-task floor is
        # for real generation times, and would make this a measure of waiting, not of CPU
        policy = Policy(
            first_poll=0.0, poll_interval=0.05, jitter=0.1, retry_initial=0.05, retry_max=0.3,
            plan_polls=False,
        )  # fmt: skip
        with scratch(not args.disk) as tmp:
            path = write_manifest(Path(tmp), args.jobs)
            options = RunOptions(
                out=args.keep or Path(tmp) / "out", base_url=sim.base_url, api_key=sim.key,
                rate=math.inf, max_in_flight=args.in_flight, policy=policy,
                verify=not args.no_verify, report_every=args.report_every,
            )  # fmt: skip
            profiler = None
            if args.pyinstrument:
                from pyinstrument import Profiler

                profiler = Profiler(async_mode="disabled", interval=0.001)
                profiler.start()
            phases = Phases()
            with Stopwatch() as watch:
                phases.mark("begin")
                report = asyncio.run(run_async(path, options, on_start=phases.on_start))
                phases.mark("end")
            if profiler is not None:
                profiler.stop()
                args.pyinstrument.write_text(profiler.output_text(unicode=True, show_all=False))
                note(f"profile written to {args.pyinstrument}")
            completed = int((report["status"] == "completed").sum())
            polls = int(report["polls"].sum())
        stats = sim.stats()
        sim_after = sim.usage()
    per_k = 1000 / args.jobs
    emit(
        {
            "jobs": args.jobs,
            "in_flight": args.in_flight,
            "verify": not args.no_verify,
            "completed": completed,
            "wall_s": round(watch.wall, 2),
            "cpu_s": round(watch.cpu, 2),
            "user_s": round(watch.user, 2),
            "sys_s": round(watch.system, 2),
            "wall_s_per_1k": round(watch.wall * per_k, 3),
            "cpu_s_per_1k": round(watch.cpu * per_k, 3),
            "jobs_per_s": round(args.jobs / watch.wall, 1),
            **phases.split(),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "rss_before_import_mb": round(rss_start, 1),
            "rss_after_import_mb": round(rss_imported, 1),
            "polls_per_job": round(polls / max(1, args.jobs), 3),
            "requests": stats["requests"],
            "status_429": stats["status_429"],
            "downloads": stats["downloads"],
            "sim_cpu_s": round(sim_after["cpu_s"] - sim_before["cpu_s"], 2),
        }
    )


if __name__ == "__main__":
    main()
