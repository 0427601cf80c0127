"""The long chaos soak: N jobs (default 1,000) under the simulator's full `chaos` profile plus
5xx answers sent after the task was created, the runner killed with SIGKILL `--kills` times at
random moments (default 20) and started again on the same folder, then run to the end. Prints
one JSON line with the money checks:

- unflagged duplicates: jobs the simulator made more than one task for, not flagged
  `possible_duplicate` (must be 0);
- lost jobs: jobs not settled (completed or failed) at the end (must be 0);
- abandoned paid results: tasks the simulator finished successfully, whose id the journal
  holds, whose job has no saved video (must be 0);
- the key never sent to the video host.

    .venv/bin/python bench/soak.py [--jobs 1000] [--kills 20] [--reconcile/--no-reconcile]
        [--seed 1] [--rate 80]

The simulator runs in this process (it outlives every kill); each runner is a child process
(`--worker`), so a kill -9 is a real one. Without `--reconcile`, tasks cannot be told apart by
business id, so duplicates are checked in aggregate (extra tasks <= flagged resends).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
KNOBS = {"p_5xx_after_create": 0.03, "p_429": 0.005}


def worker(args: argparse.Namespace) -> int:
    """One runner: the library's run_async with the simulator's timings, against --base-url."""
    from omni_batch.batch import RunOptions, run_async
    from omni_batch.errors import OmniBatchError
    from omni_batch.running.options import FAST

    options = RunOptions(
        out=Path(args.out), base_url=args.base_url, api_key=os.environ["TOAPIS_API_KEY"],
        rate=args.rate, max_in_flight=50, policy=FAST.scaled(max_wait=120),
        reconcile=args.reconcile, report_every=3600, verify=False,
    )  # fmt: skip
    try:
        asyncio.run(run_async(args.manifest, options))
    except OmniBatchError as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    return 0


def _spawn(args: argparse.Namespace, manifest: Path, out: Path, sim) -> subprocess.Popen:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--manifest", str(manifest)]
    cmd += ["--out", str(out), "--base-url", sim.base_url, "--rate", str(args.rate)]
    cmd += ["--reconcile" if args.reconcile else "--no-reconcile"]
    env = {**os.environ, "TOAPIS_API_KEY": sim.key, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _job_of(cbid: str | None) -> str | None:
    # ob-<8 hex run key><6 hex generation>-<job id> (see Submitter.new_business_id)
    return cbid[18:] if cbid and cbid.startswith("ob-") else None


def soak(args: argparse.Namespace) -> dict:
    from omni_batch.simulator import SimConfig, serve_in_thread

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "soak.yaml"
        doc = {
            "name": "soak",
            "vars": {"n": list(range(args.jobs))},
            "prompts": [{"id": "s-{n}", "prompt": "soak {n}"}],
        }
        manifest.write_text(yaml.safe_dump(doc), encoding="utf-8")
        out = Path(tmp) / "out"
        config = SimConfig.from_profile("chaos", seed=args.seed, rate=args.rate * 1.5, **KNOBS)
        start = time.perf_counter()
        kills = runs = 0
        codes: list[int] = []
        with serve_in_thread(config) as sim:
            # killed runs: each lives a random 1-4 s, then SIGKILL (unless it ended by itself)
            while kills < args.kills:
                proc = _spawn(args, manifest, out, sim)
                runs += 1
                try:
                    code = proc.wait(timeout=rng.uniform(1.0, 4.0))
                    codes.append(code)
                    break  # it finished everything before its kill
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    kills += 1
            # then plain runs to the end, as a user would: the last one must find nothing to do
            for _ in range(3):
                proc = _spawn(args, manifest, out, sim)
                runs += 1
                _, err = proc.communicate(timeout=900)
                codes.append(proc.returncode)
                if proc.returncode not in (0, 1) or not (out / "report.csv").exists():
                    print(err, file=sys.stderr)
                    break
            wall = time.perf_counter() - start
            stats = sim.stats()
            tasks = list(sim.state.tasks.values())
            now = sim.state.clock()
        rows = pd.read_csv(out / "report.csv")
        by_job = Counter(_job_of(t.cbid) for t in tasks)
        flagged = rows[rows.possible_duplicate.astype(bool)]
        if args.reconcile:
            dup_jobs = {j for j, n in by_job.items() if j is not None and n > 1}
            unflagged = len(dup_jobs - set(flagged.job_id))
        else:
            extra = stats["duplicate_bodies"]  # tasks beyond the first for one job's body
            unflagged = max(0, extra - int((flagged.attempts - 1).sum()))
        known = {}
        for job_id, status, ids in zip(
            rows.job_id,
            rows.status,
            rows.get("task_ids", rows.task_id),
            strict=True,
        ):
            for task_id in str(ids).replace(",", " ").split():
                known[task_id] = (job_id, status)
        abandoned = [
            t.id
            for t in tasks
            if t.completed(now) and t.id in known and known[t.id][1] != "completed"
        ]
        done = rows[rows.status == "completed"]
        files_agree = all(
            (out / p).stat().st_size == b for p, b in zip(done.video_path, done.bytes, strict=True)
        )
        lost = int((~rows.status.isin(["completed", "failed"])).sum())
    failed = rows[rows.status == "failed"]
    checks = {
        "no_unflagged_duplicate": unflagged == 0,
        "no_lost_job": lost == 0 and len(rows) == args.jobs,
        "no_abandoned_paid_result": not abandoned,
        "every_failure_has_a_reason": bool(failed.error_type.notna().all()),
        "journal_report_files_agree": files_agree,
        "key_never_sent_to_cdn": stats["downloads_with_auth"] == 0,
    }
    return {
        "jobs": args.jobs, "kills": kills, "runs": runs, "exit_codes": codes,
        "reconcile": args.reconcile, "wall_s": round(wall, 1),
        "completed": len(done), "failed": len(failed),
        "failures": failed.groupby("error_type").size().to_dict(),
        "tasks_created": stats["submits"], "unflagged_duplicates": unflagged,
        "flagged": len(flagged), "lost_jobs": lost, "abandoned_paid_results": len(abandoned),
        "status_5xx": stats["status_5xx"], "5xx_after_create": stats["5xx_after_create"],
        "dropped": stats["dropped"], "ambiguous_submits": stats["ambiguous_submits"],
        "checks": checks, "ok": all(checks.values()),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--reconcile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rate", type=float, default=80.0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        sys.exit(worker(args))
    print(json.dumps(soak(args)))


if __name__ == "__main__":
    main()
