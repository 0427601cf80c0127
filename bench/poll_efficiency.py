"""Poll efficiency at the documented timings: polls per job and detection delay.

The simulator runs the `realistic` profile with every time divided by ``--scale`` (queued
5-10 s and generation 60-300 s become 0.08-0.17 s and 1-5 s; latency 0.15 s / 60; its rate
limit of 10 req/s x 60), in its own process; omni-batch runs the default `Policy()` timings / 60
(first poll 5 s, every 10 s, x1.5 while queued, ±20 % jitter) at 10 req/s x 60.

Detection delay = when the runner noticed the completion (the `downloading` event in
events.jsonl) minus when the simulator finished the task; shown in simulator seconds and in the
real API's time (x scale).

    .venv/bin/python bench/poll_efficiency.py [--jobs 200] [--scale 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
from pathlib import Path

from _support import Stopwatch, emit, scaled_policy, simulator, write_manifest


def realistic_knobs(scale: float) -> dict[str, float]:
    from omni_batch.simulator import PROFILES

    real = PROFILES["realistic"]
    return {
        "queue_min": real.queue_min / scale,
        "queue_max": real.queue_max / scale,
        "gen_min": real.gen_min / scale,
        "gen_max": real.gen_max / scale,
        "latency": real.latency / scale,
        "rate": (real.rate or 10.0) * scale,
        "download_rate": (real.download_rate or 5e6) * scale,
    }


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--scale", type=float, default=60.0)
    args = parser.parse_args()
    scale = args.scale
    with simulator("realistic", **realistic_knobs(scale)) as sim:
        from omni_batch.runner import RunOptions, run_async

        with tempfile.TemporaryDirectory() as tmp:
            path = write_manifest(Path(tmp), args.jobs)
            out = Path(tmp) / "out"
            policy = scaled_policy(scale)
            options = RunOptions(
                out=out, base_url=sim.base_url, api_key=sim.key, rate=10.0 * scale,
                max_in_flight=50, policy=policy,
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
            completed = int((report["status"] == "completed").sum())
        stats = sim.stats()
        tasks = sim.tasks()
    delays = [
        noticed[job] - tasks[task]["done"]
        for job, task in task_of.items()
        if job in noticed and task in tasks
    ]
    gen = [t["done"] - t["created"] for t in tasks.values()]
    result = {
        "jobs": args.jobs,
        "scale": scale,
        "completed": completed,
        "makespan_s": round(watch.wall, 2),
        "polls_per_job": round(stats["polls"] / max(1, len(tasks)), 2),
        "polls_after_terminal": stats["polls_after_terminal"],
        # submit -> finished, queue included (simulator seconds)
        "mean_task_s": round(statistics.fmean(gen), 3) if gen else None,
        "status_429": stats["status_429"],
        "delay_mean_s": round(statistics.fmean(delays), 4) if delays else None,
        "delay_p50_s": round(quantile(delays, 0.5), 4) if delays else None,
        "delay_p90_s": round(quantile(delays, 0.9), 4) if delays else None,
        "delay_max_s": round(max(delays), 4) if delays else None,
        "delay_min_s": round(min(delays), 4) if delays else None,
        "delay_mean_real_s": round(statistics.fmean(delays) * scale, 1) if delays else None,
        "delay_p90_real_s": round(quantile(delays, 0.9) * scale, 1) if delays else None,
        "mean_task_real_s": round(statistics.fmean(gen) * scale, 1) if gen else None,
        "poll_interval_real_s": policy.poll_interval * scale,
    }
    emit(result)


if __name__ == "__main__":
    main()
