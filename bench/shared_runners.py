"""Several runners on one shared run (issue #18), side by side in one run: 1, 2 and 4 runner
processes (`omni-batch run --journal postgresql://... --store s3://...`) on the same jobs
against one simulator that refuses more than ``--rate`` submits a second per account (with a
burst of ``--burst``: the rate is checked by the most submits it accepted in any second), then 3
runners with one killed (SIGKILL) mid-run. Starts its own PostgreSQL (Debian's postgresql) and
moto S3 server on loopback, as the tests do (tests/servers.py).

For each: the makespan from the first submit to the last completed video (the journal's
clock; process start-up not counted: it is printed apart), jobs/s, the most submits the
simulator saw in any second, 429s, submits per job, and the ratio of the makespan to the
single-budget bound: (jobs - 1) / rate for the submits, plus the slowest task's generation
(the simulator's gen_max) and one poll and download (1 s).

    .venv/bin/python bench/shared_runners.py [--jobs 300] [--rate 10] [--runners 1,2,4]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import postgres_server, s3_server  # noqa: E402

GEN_MIN, GEN_MAX = 1.0, 3.0


def manifest(folder: Path, jobs: int) -> Path:
    path = folder / "shots.yaml"
    values = ",".join(str(i) for i in range(jobs))
    path.write_text(
        f"vars: {{n: [{values}]}}\nprompts:\n  - {{id: 'shot-{{n}}', prompt: 'shot {{n}}'}}\n",
        encoding="utf-8",
    )
    return path


def start(
    shots: Path, out: Path, base_url: str, key: str, url: str, store: str, env: dict[str, str],
    name: str, rate: float,
) -> subprocess.Popen[bytes]:  # fmt: skip
    command = [sys.executable, "-m", "omni_batch", "run", str(shots), "--out", str(out)]
    command += ["--base-url", base_url, "--yes", "--no-progress", "--reconcile"]
    command += ["--journal", url, "--store", store, "--runner", name, "--dead-after", "3"]
    command += ["--submit-rate", str(rate), "--poll-interval", "0.25"]
    return subprocess.Popen(
        command,
        env={**os.environ, **env, "TOAPIS_API_KEY": key},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def submitted_by(url: str, runner: str) -> int:
    import psycopg

    try:
        with psycopg.connect(url) as db:
            row = db.execute(
                "SELECT count(DISTINCT job_id) FROM omni_batch.events WHERE runner = %s "
                "AND fields ->> 'state' = 'submitting'",
                (runner,),
            ).fetchone()
    except psycopg.Error:  # before the runners made the tables
        return 0
    return int(row[0]) if row else 0


def timeline(url: str) -> tuple[float, float, int]:
    """(first submit, last completion, jobs flagged possible_duplicate) on the journal's clock."""
    import psycopg

    with psycopg.connect(url) as db:
        row = db.execute(
            "SELECT min(t) FILTER (WHERE fields ->> 'state' = 'submitting'), "
            "max(t) FILTER (WHERE fields ->> 'state' = 'completed') FROM omni_batch.events "
            "WHERE event = 'state'"
        ).fetchone()
        flagged = db.execute(
            "SELECT count(*) FROM omni_batch.jobs WHERE possible_duplicate"
        ).fetchone()
    assert row is not None and flagged is not None
    return float(row[0]), float(row[1]), int(flagged[0])


def one(
    runners: int, jobs: int, rate: float, pg: Any, s3: Any, kill: bool = False, burst: int = 10
) -> dict[str, Any]:
    from omni_batch.results import status
    from omni_batch.simulator import SimConfig, serve_in_thread

    url = pg.create_database()
    bucket = s3.create_bucket()
    config = SimConfig.from_profile(
        "fast", seed=11, gen_min=GEN_MIN, gen_max=GEN_MAX, submit_rate=rate, submit_burst=burst
    )
    with tempfile.TemporaryDirectory() as tmp, serve_in_thread(config) as sim:
        shots = manifest(Path(tmp), jobs)
        began = time.monotonic()
        procs = [
            start(
                shots,
                Path(tmp) / f"out{n}",
                sim.base_url,
                sim.key,
                url,
                f"s3://{bucket}/b",
                s3.env,
                f"r{n}",
                rate,
            )
            for n in range(runners)
        ]
        if kill:  # once r0 has its share under way (the simulator's stats hold its loop)
            while submitted_by(url, "r0") < jobs * 0.4 / runners:
                time.sleep(0.25)
            procs[0].send_signal(signal.SIGKILL)
        codes = []
        for proc in procs:
            _, err = proc.communicate(timeout=600)
            codes.append(proc.returncode)
            if proc.returncode not in (0, -signal.SIGKILL):
                sys.stderr.write(err.decode()[-2000:])
        wall = time.monotonic() - began
        stats = sim.stats()
    first, last, flagged = timeline(url)
    makespan = last - first
    bound = (jobs - 1) / rate + GEN_MAX + 1.0
    account = next(iter(stats["accounts"].values()))["async_submit"]
    return {
        "runners": runners,
        "burst": burst,
        "killed": 1 if kill else 0,
        "jobs": jobs,
        "completed": status(url, "shots")["completed"],
        "makespan_s": round(makespan, 2),
        "bound_s": round(bound, 2),
        "ratio": round(makespan / bound, 3),
        "jobs_per_s": round(jobs / makespan, 2),
        "max_submits_in_1s": account["max_per_1s"],
        "submits": stats["submits"],
        "flagged": flagged,
        "429s": stats["status_429"],
        "wall_s": round(wall, 1),
        "exit_codes": codes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--runners", default="1,2,4")
    parser.add_argument("--no-kill", action="store_true", help="skip the 3-runner kill case")
    parser.add_argument(
        "--burst",
        type=int,
        default=10,
        help="submits the simulator lets an idle account send at once (1: none; the published "
        "default tier allows 50 at 5/s)",
    )
    args = parser.parse_args()
    rows = []
    with postgres_server() as pg, s3_server() as s3:
        for n in (int(x) for x in args.runners.split(",")):
            rows.append(one(n, args.jobs, args.rate, pg, s3, burst=args.burst))
        if not args.no_kill:
            rows.append(one(3, args.jobs, args.rate, pg, s3, kill=True, burst=args.burst))
    columns = (
        "runners burst killed completed makespan_s bound_s ratio jobs/s max_submits/1s submits"
    )
    names = [*columns.split(), "flagged", "429s", "wall_s"]
    print("| " + " | ".join(names) + " |")
    print("|---" * len(names) + "|")
    for r in rows:
        print(
            f"| {r['runners']} | {r['burst']} | {r['killed']} | {r['completed']}/{r['jobs']} "
            f"| {r['makespan_s']} | {r['bound_s']} | {r['ratio']} | {r['jobs_per_s']} "
            f"| {r['max_submits_in_1s']} "
            f"| {r['submits']} | {r['flagged']} | {r['429s']} | {r['wall_s']} |"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
