"""The floor for `overhead.py`: a bare aiohttp script making the same HTTP calls per job
(submit, one status call, download to a file) at the same concurrency, with no journal, no
report, no retries. The simulator (instant generation, no rate limit) runs in its own process.

    .venv/bin/python bench/floor.py [--jobs 5000] [--in-flight 50]
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from _support import INSTANT, Stopwatch, bodies, emit, peak_rss_mb, scratch, simulator

GENERATIONS = "/v1/videos/generations"


def video_url(answer: dict[str, Any]) -> str:
    result = answer.get("result")
    if isinstance(result, dict):
        return result["data"][0]["url"]
    return answer.get("url") or answer["video_url"]


async def run(base_url: str, key: str, jobs: int, in_flight: int, folder: Path) -> int:
    auth = {"Authorization": f"Bearer {key}"}
    work = iter(enumerate(bodies(jobs)))
    done = 0
    # the same connection pool size as the runner's session for this in-flight cap
    connector = aiohttp.TCPConnector(limit=max(16, in_flight // 2 + 8))
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            nonlocal done
            for n, body in work:
                async with session.post(base_url + GENERATIONS, json=body, headers=auth) as resp:
                    task_id = (await resp.json())["id"]
                url = f"{base_url}{GENERATIONS}/{task_id}"
                async with session.get(url, headers=auth) as resp:
                    answer = await resp.json()
                assert answer["status"] == "completed", answer
                async with session.get(video_url(answer)) as resp:
                    with (folder / f"{n}.mp4").open("wb") as fh:
                        async for chunk in resp.content.iter_chunked(1 << 16):
                            fh.write(chunk)
                done += 1

        await asyncio.gather(*(worker() for _ in range(in_flight)))
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--in-flight", type=int, default=50)
    parser.add_argument("--disk", action="store_true", help="write to the disk, not /dev/shm")
    args = parser.parse_args()
    with simulator("fast", **INSTANT) as sim, scratch(not args.disk) as tmp:
        with Stopwatch() as watch:
            done = asyncio.run(run(sim.base_url, sim.key, args.jobs, args.in_flight, Path(tmp)))
        stats = sim.stats()
    per_k = 1000 / args.jobs
    emit(
        {
            "jobs": args.jobs,
            "in_flight": args.in_flight,
            "completed": done,
            "wall_s": round(watch.wall, 2),
            "cpu_s": round(watch.cpu, 2),
            "user_s": round(watch.user, 2),
            "sys_s": round(watch.system, 2),
            "wall_s_per_1k": round(watch.wall * per_k, 3),
            "cpu_s_per_1k": round(watch.cpu * per_k, 3),
            "jobs_per_s": round(args.jobs / watch.wall, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1),
            "requests": stats["requests"],
            "downloads": stats["downloads"],
        }
    )


if __name__ == "__main__":
    main()
