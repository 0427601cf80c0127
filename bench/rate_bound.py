"""Rate-limit efficiency: N jobs behind a simulator key limited to R req/s, fast generation.

The bound is (one submit + one poll per job) / R. Reports the makespan of the whole
`run_async` call and of its API phase (the engine) against the bound, the share of requests
answered 429, polls per job and polls after a task was terminal. The simulator runs in its own
process (profile `fast`: tasks finish 0.07-0.25 s after submit).

    .venv/bin/python bench/rate_bound.py [--jobs 500] [--rate 25]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from _support import Phases, Stopwatch, emit, note, simulator, write_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--rate", type=float, default=25.0)
    parser.add_argument("--first-poll", type=float, default=0.4)
    parser.add_argument("--poll-interval", type=float, default=0.3)
    args = parser.parse_args()
    jobs, rate = args.jobs, args.rate

    with simulator("fast", rate=rate, burst=max(1, int(rate))) as sim:
        from omni_batch.batch import RunOptions, run_async
        from omni_batch.running.options import Policy

        policy = Policy(
            first_poll=args.first_poll, poll_interval=args.poll_interval, jitter=0.1,
            retry_initial=0.05, retry_max=0.3,
        )  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            path = write_manifest(Path(tmp), jobs)
            options = RunOptions(
                out=Path(tmp) / "out", base_url=sim.base_url, api_key=sim.key, rate=rate,
                max_in_flight=50, policy=policy,
            )  # fmt: skip
            phases = Phases()
            with Stopwatch() as watch:
                phases.mark("begin")
                report = asyncio.run(run_async(path, options, on_start=phases.on_start))
                phases.mark("end")
            completed = int((report["status"] == "completed").sum())
        stats = sim.stats()
    bound = 2 * jobs / rate
    split = phases.split()
    engine = split.get("engine_wall_s", watch.wall)
    result = {
        "jobs": jobs,
        "rate": rate,
        "completed": completed,
        "makespan_s": round(watch.wall, 2),
        "engine_s": round(engine, 2),
        "bound_s": round(bound, 2),
        "ratio": round(watch.wall / bound, 3),
        "engine_ratio": round(engine / bound, 3),
        "requests": stats["requests"],
        "status_429": stats["status_429"],
        "share_429": round(stats["status_429"] / max(1, stats["requests"]), 4),
        "polls_per_job": round(stats["polls"] / jobs, 3),
        "polls_after_terminal": stats["polls_after_terminal"],
        "submits": stats["submits"],
        **split,
    }
    ok = result["ratio"] <= 1.15 and result["share_429"] < 0.01
    note(f"target: <= 1.15x the bound with < 1% 429s -> {'ok' if ok else 'MISSED'}")
    emit(result)


if __name__ == "__main__":
    main()
