"""Rate budgets (issue #14): makespan ÷ the bound the budgets allow, and the share of 429s,
against servers that limit in different ways. The simulator runs in its own process.

Every scenario runs with omni-batch's default in-flight cap (2,000). Scenarios (``--only NAME``…):
  published    the default tier's published limits exactly (profile `published-fast`: submit
               5/s burst 50, query 50/s, X-RateLimit-* on every answer, generation 20-40 s),
               omni-batch with its default options (tier `default`)
  burst1       no headers, no burst allowance: submit 20/s and query 50/s, each a bucket of 1;
               omni-batch told the same rates (--submit-rate 20 --query-rate 50); fast tasks
  concurrency  a key that may run 8 tasks at once, whose 429 reads like a rate 429
               (concurrency_says=false); tasks take 1-2 s; omni-batch --max-in-flight 50
  many         10,000 jobs at submit 100/s, query 400/s (scaled-up published limits, headers on,
               instant generation, --no-verify): no starvation at size

The bound: the i-th task (in creation order) cannot be created before i ÷ submit rate (no
burst: omni-batch never bursts), nor end before its own generation time after that; with a
concurrency cap K, a task also waits for one of K slots. bound = the greedy schedule's end,
from the simulator's own task timings. Ratio = the engine's wall time (submit of the first to
the last download) ÷ bound; `run_s` adds planning and the reports.

    .venv/bin/python bench/budgets.py [--only published burst1 ...] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import tempfile
from pathlib import Path
from typing import Any

from _support import Phases, Stopwatch, emit, note, simulator, write_manifest


def greedy_bound(durations: list[float], rate: float, slots: int | None = None) -> float:
    """The end of the best schedule: task i created at the earliest i/rate when a slot is free."""
    free: list[float] = [0.0] * (slots or len(durations) or 1)
    heapq.heapify(free)
    end = 0.0
    for i, took in enumerate(durations):
        start = max(i / rate, heapq.heappop(free))
        heapq.heappush(free, start + took)
        end = max(end, start + took)
    return end


SCENARIOS: dict[str, dict[str, Any]] = {
    "published": {
        "profile": "published-fast",
        "knobs": {"latency": 0.05},
        "jobs": 300,
        "options": {},
        "policy": "documented",
        "submit_rate": 5.0,
    },
    "burst1": {
        "profile": "fast",
        "knobs": {"submit_rate": 20, "query_rate": 50, "gen_min": 0.5, "gen_max": 1.0},
        "jobs": 400,
        "options": {"submit_rate": 20.0, "query_rate": 50.0},
        "policy": "fast",
        "submit_rate": 20.0,
    },
    "concurrency": {
        "profile": "fast",
        "knobs": {
            "max_active": 8,
            "concurrency_says": False,
            "submit_rate": 20,
            "query_rate": 100,
            "gen_min": 1.0,
            "gen_max": 2.0,
        },
        "jobs": 120,
        "options": {"submit_rate": 20.0, "query_rate": 100.0},
        "policy": "fast",
        "submit_rate": 20.0,
        "slots": 8,
    },
    "many": {
        "profile": "fast",
        "knobs": {
            "submit_rate": 100,
            "submit_burst": 50,
            "query_rate": 400,
            "query_burst": 50,
            "rate_headers": "all",
            "queue_min": 0,
            "queue_max": 0,
            "gen_min": 0,
            "gen_max": 0,
        },
        "jobs": 10_000,
        "options": {"submit_rate": 100.0, "query_rate": 400.0, "verify": False},
        "policy": "instant",
        "submit_rate": 100.0,
    },
}
QUICK_JOBS = {"published": 60, "burst1": 100, "concurrency": 40, "many": 1000}


def _policy(kind: str) -> Any:
    from omni_batch.running.options import FAST, Policy

    if kind == "documented":
        return Policy()
    if kind == "instant":
        return FAST.scaled(first_poll=0.0, poll_interval=0.05, max_wait=600)
    return FAST.scaled(max_wait=600)


def run_scenario(name: str, jobs: int) -> dict[str, Any]:
    spec = SCENARIOS[name]
    with simulator(spec["profile"], **spec["knobs"]) as sim:
        from omni_batch.batch import RunOptions, run_async

        with tempfile.TemporaryDirectory() as tmp:
            path = write_manifest(Path(tmp), jobs)
            options = RunOptions(
                out=Path(tmp) / "out",
                base_url=sim.base_url,
                api_key=sim.key,
                policy=_policy(spec["policy"]),
                **spec["options"],
            )
            phases = Phases()
            with Stopwatch() as watch:
                phases.mark("begin")
                report = asyncio.run(run_async(path, options, on_start=phases.on_start))
                phases.mark("end")
            completed = int((report["status"] == "completed").sum())
        stats = sim.stats()
        tasks = sim.tasks()
    ordered = sorted(tasks.values(), key=lambda t: t["created"])
    took = [t["done"] - t["created"] for t in ordered]
    bound = greedy_bound(took, spec["submit_rate"], spec.get("slots"))
    engine = phases.split().get("engine_wall_s", watch.wall)
    requests = max(1, stats["requests"])
    account = next(iter(stats.get("accounts", {}).values()), {})
    per_category = {
        category: {
            "accepted": numbers.get("accepted"),
            "limited": numbers.get("limited"),
            "max_per_1s": numbers.get("max_per_1s"),
        }
        for category, numbers in account.items()
        if isinstance(numbers, dict) and "accepted" in numbers
    }
    result = {
        "scenario": name,
        "jobs": jobs,
        "completed": completed,
        "engine_s": round(engine, 2),
        "run_s": round(watch.wall, 2),
        "bound_s": round(bound, 2),
        "ratio": round(engine / bound, 3) if bound else None,
        "requests": stats["requests"],
        "status_429": stats["status_429"],
        "share_429": round(stats["status_429"] / requests, 4),
        "polls_per_job": round(stats["polls"] / max(1, jobs), 2),
        "peak_active": account.get("peak_active"),
        "per_category": per_category,
    }
    note(
        f"{name}: {completed}/{jobs} completed, engine {engine:.1f} s vs bound {bound:.1f} s "
        f"(x{result['ratio']}), 429s {stats['status_429']} of {stats['requests']} requests "
        f"({100 * result['share_429']:.2f}%)"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--jobs", type=int, help="override every scenario's job count")
    args = parser.parse_args()
    results = []
    for name in args.only:
        jobs = args.jobs or (QUICK_JOBS[name] if args.quick else SCENARIOS[name]["jobs"])
        results.append(run_scenario(name, jobs))
    flat = {
        f"{r['scenario']}_{key}": r[key]
        for r in results
        for key in ("ratio", "share_429", "engine_s", "bound_s", "polls_per_job", "completed")
    }
    emit({**flat, "scenarios": results})


if __name__ == "__main__":
    main()
