"""The obvious alternative: the loop the public ToAPIs quickstart shows, one job at a time.

Submit, then sleep and poll every 8 s until the task is final, download the video, next job.
Standard library only (urllib), as a quickstart script would be. Times are in the simulator's
time base: ``--scale 60`` polls every 8/60 s.

    .venv/bin/python bench/sequential.py --base-url URL --key KEY [--jobs 50] [--scale 60]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from _support import bodies, emit

GENERATIONS = "/v1/videos/generations"
POLL_EVERY_S = 8.0  # the quickstart's poll interval, in real seconds


def _call(url: str, key: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url,
        data=data,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST" if body is not None else "GET",
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


def video_url(answer: dict[str, Any]) -> str:
    result = answer.get("result")
    if isinstance(result, dict):
        return result["data"][0]["url"]
    return answer.get("url") or answer["video_url"]


def run_sequential(base_url: str, key: str, jobs: int, poll_every: float, folder: Path) -> dict:
    """Every job, one after another; returns the makespan and what it cost in requests."""
    polls = completed = failed = 0
    start = time.perf_counter()
    for n, body in enumerate(bodies(jobs)):
        task_id = _call(base_url + GENERATIONS, key, body)["id"]
        while True:
            time.sleep(poll_every)
            answer = _call(f"{base_url}{GENERATIONS}/{task_id}", key)
            polls += 1
            if answer["status"] in ("completed", "failed"):
                break
        if answer["status"] == "failed":
            failed += 1
            continue
        with urllib.request.urlopen(video_url(answer), timeout=60) as resp:
            (folder / f"{n}.mp4").write_bytes(resp.read())
        completed += 1
    makespan = time.perf_counter() - start
    return {
        "jobs": jobs,
        "completed": completed,
        "failed": failed,
        "makespan_s": round(makespan, 2),
        "polls_per_job": round(polls / max(1, jobs), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--scale", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        emit(
            run_sequential(args.base_url, args.key, args.jobs, POLL_EVERY_S / args.scale, Path(tmp))
        )


if __name__ == "__main__":
    main()
