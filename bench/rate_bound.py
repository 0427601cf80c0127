"""Rate-limit efficiency: N jobs against a simulator key limited to R req/s.

The bound is (one submit + one poll per job) / R; reports makespan / bound, the share of
requests answered 429, polls per job and polls after a task was terminal.

    .venv/bin/python bench/rate_bound.py [--jobs 120] [--rate 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import yaml

from omni_batch.policy import Policy
from omni_batch.runner import RunOptions, run_async
from omni_batch.simulator import SimConfig, start_simulator


def manifest(folder: Path, jobs: int) -> Path:
    doc = {
        "name": "bound",
        "vars": {"n": list(range(jobs))},
        "prompts": [{"id": "shot-{n}", "prompt": "shot number {n}"}],
    }
    path = folder / "bound.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


async def measure(jobs: int, rate: float, first_poll: float) -> dict:
    config = SimConfig.from_profile("fast", rate=rate, burst=int(rate))
    with tempfile.TemporaryDirectory() as tmp:
        path = manifest(Path(tmp), jobs)
        async with start_simulator(config) as sim:
            policy = Policy(
                first_poll=first_poll, poll_interval=0.3, jitter=0.1, retry_initial=0.05
            )
            options = RunOptions(
                out=Path(tmp) / "out", base_url=sim.base_url, api_key=sim.key, rate=rate,
                max_in_flight=50, policy=policy, report_every=3600,
            )  # fmt: skip
            start = time.perf_counter()
            report = await run_async(path, options)
            makespan = time.perf_counter() - start
            stats = sim.stats()
    bound = 2 * jobs / rate
    return {
        "jobs": jobs,
        "rate": rate,
        "completed": int((report["status"] == "completed").sum()),
        "makespan_s": round(makespan, 2),
        "bound_s": round(bound, 2),
        "ratio": round(makespan / bound, 3),
        "requests": stats["requests"],
        "share_429": round(stats["status_429"] / max(1, stats["requests"]), 4),
        "polls_per_job": round(stats["polls"] / jobs, 2),
        "polls_after_terminal": stats["polls_after_terminal"],
        "submits": stats["submits"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=120)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--first-poll", type=float, default=0.4)
    args = parser.parse_args()
    result = asyncio.run(measure(args.jobs, args.rate, args.first_poll))
    print(json.dumps(result))
    ok = (
        result["ratio"] <= 1.25
        and result["share_429"] < 0.02
        and result["polls_after_terminal"] == 0
    )
    print(
        "target: <= 1.25x the bound, < 2% 429s, no polls after terminal -> "
        + ("ok" if ok else "MISSED")
    )


if __name__ == "__main__":
    main()
