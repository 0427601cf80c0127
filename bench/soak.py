"""The long chaos soak: N jobs (default 1,000) under the simulator's full `chaos` profile,
then the same checks as tests/test_chaos_soak.py, printed as one JSON line.

    .venv/bin/python bench/soak.py [--jobs 1000] [--reconcile/--no-reconcile] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import yaml

from omni_batch.policy import FAST
from omni_batch.runner import RunOptions, run_async
from omni_batch.simulator import SimConfig, start_simulator


async def soak(jobs: int, reconcile: bool, seed: int, rate: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "soak.yaml"
        doc = {
            "name": "soak",
            "vars": {"n": list(range(jobs))},
            "prompts": [{"id": "s-{n}", "prompt": "soak {n}"}],
        }
        manifest.write_text(yaml.safe_dump(doc), encoding="utf-8")
        out = Path(tmp) / "out"
        config = SimConfig.from_profile("chaos", seed=seed, rate=rate * 1.5)
        async with start_simulator(config) as sim:
            options = RunOptions(
                out=out, base_url=sim.base_url, api_key=sim.key, rate=rate, max_in_flight=50,
                policy=FAST.scaled(max_wait=120), reconcile=reconcile, report_every=3600,
            )  # fmt: skip
            start = time.perf_counter()
            rows = await run_async(manifest, options)
            wall = time.perf_counter() - start
            stats = sim.stats()
        done = rows[rows.status == "completed"]
        files_agree = all(
            (out / p).stat().st_size == b for p, b in zip(done.video_path, done.bytes, strict=True)
        )
        on_disk = {p.name for p in (out / "videos").iterdir()} == {
            Path(p).name for p in done.video_path
        }
        failed = rows[rows.status == "failed"]
        flagged = rows[rows.possible_duplicate]
        extra = stats["submits"] - jobs
        checks = {
            "every_job_settled": set(rows.status) <= {"completed", "failed"},
            "every_failure_has_a_reason": bool(failed.error_type.notna().all()),
            "journal_report_files_agree": files_agree and on_disk,
            "no_unflagged_duplicate": extra <= int((flagged.attempts - 1).sum()),
            "key_never_sent_to_cdn": stats["downloads_with_auth"] == 0,
        }
    return {
        "jobs": jobs, "reconcile": reconcile, "wall_s": round(wall, 1),
        "completed": len(done), "failed": len(failed),
        "failures": failed.groupby("error_type").size().to_dict(),
        "submits": stats["submits"], "extra_submits": extra, "flagged": len(flagged),
        "requests": stats["requests"], "status_429": stats["status_429"],
        "status_5xx": stats["status_5xx"], "dropped": stats["dropped"],
        "ambiguous_submits": stats["ambiguous_submits"], "checks": checks,
        "ok": all(checks.values()),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--reconcile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=80.0)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(soak(args.jobs, args.reconcile, args.seed, args.rate))))


if __name__ == "__main__":
    main()
