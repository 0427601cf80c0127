"""Poll economy at realistic timings: status calls per job and detection delay, before and after.

The simulator runs the `realistic` profile with the generation spread of issue #14 (queued
U(5, 10) s, then generating U(30, 300) s, progress a linear percentage) and every time divided
by ``--scale`` (default 10: queued 0.5-1 s, generating 3-30 s; latency 0.15 s / 10; its rate
limit x 10), in its own process. omni-batch runs the documented `Policy()` with every timing
divided by the same scale, the poll planner's included (first poll 5 s, cadence 10 s, at least
5 s between two polls of a task, slack 10 s, prior 30-300 s: all / 10), at 10 req/s x scale.

"after" is this checkout; "before" is the same measurement run with another checkout's code
(``--before``, default /work/main: the fixed cadence, first poll 5 s then every 10 s, x1.5
while queued, ±20 % jitter), in a child process with that checkout first on PYTHONPATH (its own
simulator too). ``--before ''`` measures this checkout only.

Detection delay = when the runner noticed the completion (the `downloading` event in
events.jsonl) minus when the simulator finished the task; shown in simulator seconds and in the
real API's time (x scale).

    .venv/bin/python bench/poll_efficiency.py [--jobs 200] [--scale 10] [--before /work/main]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _support import Stopwatch, emit, note, scaled_policy, simulator, write_manifest

QUEUE_S = (5.0, 10.0)  # seconds queued, real API time
GEN_S = (30.0, 300.0)  # seconds generating: the "30 s - 5 min"


def realistic_knobs(scale: float) -> dict[str, float]:
    from omni_batch.simulator import PROFILES

    real = PROFILES["realistic"]
    return {
        "queue_min": QUEUE_S[0] / scale,
        "queue_max": QUEUE_S[1] / scale,
        "gen_min": GEN_S[0] / scale,
        "gen_max": GEN_S[1] / scale,
        "latency": real.latency / scale,
        "rate": (real.rate or 10.0) * scale,
        "download_rate": (real.download_rate or 5e6) * scale,
    }


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(jobs: int, scale: float, max_in_flight: int) -> dict[str, Any]:
    """One run of ``jobs`` jobs with the code on sys.path; its numbers."""
    with simulator("realistic", **realistic_knobs(scale)) as sim:
        from omni_batch.batch import RunOptions, run_async

        with tempfile.TemporaryDirectory() as tmp:
            path = write_manifest(Path(tmp), jobs)
            out = Path(tmp) / "out"
            policy = scaled_policy(scale)
            options = RunOptions(
                out=out, base_url=sim.base_url, api_key=sim.key, rate=10.0 * scale,
                max_in_flight=max_in_flight, policy=policy, verify=False,
            )  # fmt: skip
            with Stopwatch() as watch:
                report = asyncio.run(run_async(path, options))
            noticed: dict[str, float] = {}
            with (out / "events.jsonl").open() as fh:
                for line in fh:
                    event = json.loads(line)
                    if event.get("event") == "state" and event.get("state") == "downloading":
                        noticed.setdefault(event["job_id"], event["t"])
            task_of = dict(zip(report["job_id"], report["task_id"], strict=True))
            # the first max_in_flight jobs submitted are polled before any task has finished
            # (nothing learned yet); the rest after
            ordered = report.sort_values("submitted_at")["polls"].tolist()
            cold, warm = ordered[:max_in_flight], ordered[max_in_flight:]
            completed = int((report["status"] == "completed").sum())
        stats = sim.stats()
        tasks = sim.tasks()
    delays = [
        noticed[job] - tasks[task]["done"]
        for job, task in task_of.items()
        if job in noticed and task in tasks
    ]
    gen = [t["done"] - t["created"] for t in tasks.values()]
    per_task = sorted(t.get("polls", 0) for t in tasks.values())

    def real(value: float) -> float:
        return round(value * scale, 1)

    return {
        "jobs": jobs,
        "completed": completed,
        "makespan_s": round(watch.wall, 2),
        "polls_per_job": round(stats["polls"] / max(1, len(tasks)), 2),
        "polls_per_job_max": per_task[-1] if per_task else None,
        "polls_per_job_first_wave": round(statistics.fmean(cold), 2) if cold else None,
        "polls_per_job_later": round(statistics.fmean(warm), 2) if warm else None,
        "polls_after_terminal": stats["polls_after_terminal"],
        "status_429": stats["status_429"],
        "mean_task_real_s": real(statistics.fmean(gen)) if gen else None,
        "delay_p50_real_s": real(quantile(delays, 0.5)) if delays else None,
        "delay_p90_real_s": real(quantile(delays, 0.9)) if delays else None,
        "delay_max_real_s": real(max(delays)) if delays else None,
        "delay_min_real_s": real(min(delays)) if delays else None,
    }


def before(checkout: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The same measurement with ``checkout``'s code (a child process)."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    command = [
        sys.executable, __file__, "--child", "--jobs", str(args.jobs), "--scale", str(args.scale),
        "--max-in-flight", str(args.max_in_flight),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the run with {checkout} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--scale", type=float, default=10.0)
    parser.add_argument("--max-in-flight", type=int, default=50)
    parser.add_argument("--before", default="/work/main", help="checkout measured as 'before'")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return emit(measure(args.jobs, args.scale, args.max_in_flight))
    import omni_batch

    result: dict[str, Any] = {
        "jobs": args.jobs,
        "scale": args.scale,
        "generation_real_s": list(GEN_S),
        "queued_real_s": list(QUEUE_S),
    }
    checkout = Path(args.before) if args.before else None
    if checkout is not None and (checkout / "omni_batch").is_dir():
        note(f"before: {checkout} ...")
        result["before"] = before(checkout, args)
    note(f"after: {Path(omni_batch.__file__).parent.parent} ...")
    result["after"] = measure(args.jobs, args.scale, args.max_in_flight)
    for name in ("before", "after"):
        if name in result:
            r = result[name]
            note(
                f"{name:>6}: {r['polls_per_job']} status calls per job "
                f"(max {r['polls_per_job_max']}; first {args.max_in_flight} submitted "
                f"{r['polls_per_job_first_wave']}, later {r['polls_per_job_later']}); "
                f"detection delay p50 {r['delay_p50_real_s']} s, p90 {r['delay_p90_real_s']} s, "
                f"max {r['delay_max_real_s']} s (real-API seconds); makespan {r['makespan_s']} s"
            )
    emit(result)


if __name__ == "__main__":
    main()
