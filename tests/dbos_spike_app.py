"""A job as a DBOS workflow, small enough to read in one go: the spike behind
docs/design/several-machines.md. Used in-process by tests/test_dbos_spike.py and as a runner
process (``python -m tests.dbos_spike_app URL EXECUTOR_ID [--enqueue N] [--hold S]``).

Every step writes a row to ``spike_events`` (workflow, step, executor, time) in the same
database, so a test can count how often a "POST" happened and when, across processes.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from typing import Any

import psycopg
from dbos import DBOS, DBOSConfig, SetEnqueueOptions, SetWorkflowID

APP = "omni-batch-spike"
VERSION = "spike-1"  # one explicit version: runners of one release recover each other's work
QUEUE = "submits"
# the environment variable naming a job whose submit step dies after its "POST", before
# DBOS records the step (the crash the money rules must survive)
CRASH_AFTER_POST = "SPIKE_CRASH_AFTER_POST"
HEARTBEAT = "spike_runners"
PACER = "spike_budget"

_events_url: str = ""
_pace: float = 0.0  # submits per second per account when the shared pacer is on; 0: off


def events_url() -> str:
    return _events_url


def create_tables(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS spike_events (workflow text, step text, executor text,"
            " at double precision DEFAULT extract(epoch from clock_timestamp()))"
        )
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {HEARTBEAT} (executor text PRIMARY KEY,"
            " seen double precision NOT NULL)"
        )
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {PACER} (account text PRIMARY KEY,"
            " next_at double precision NOT NULL)"
        )


def take_slot(account: str, rate: float) -> tuple[float, float]:
    """The account's next submit slot, shared by every runner: one row per account holds the
    earliest time the next POST may go; taking a slot moves it on by 1/rate. Returns the slot
    (epoch seconds, database clock) and the seconds to wait for it."""
    gap = 1.0 / rate
    now = "extract(epoch from clock_timestamp())"
    with psycopg.connect(_events_url, autocommit=True) as conn:
        row = conn.execute(
            f"INSERT INTO {PACER} AS b VALUES (%s, {now} + %s) ON CONFLICT (account) DO UPDATE"
            f" SET next_at = greatest(b.next_at, {now}) + %s"
            f" RETURNING b.next_at - %s, b.next_at - %s - {now}",
            (account, gap, gap, gap, gap),
        ).fetchone()
    assert row is not None
    return float(row[0]), max(0.0, float(row[1]))


def event(workflow: str, step: str, at: float | None = None) -> None:
    with psycopg.connect(_events_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO spike_events (workflow, step, executor, at) VALUES (%s, %s, %s,"
            " coalesce(%s, extract(epoch from clock_timestamp())))",
            (workflow, step, DBOS.executor_id, at),
        )


def events(url: str, step: str | None = None) -> list[tuple[str, str, str, float]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT workflow, step, executor, at FROM spike_events"
            + (" WHERE step = %s" if step else "")
            + " ORDER BY at",
            (step,) if step else (),
        ).fetchall()
    return [(str(w), str(s), str(e), float(a)) for w, s, e, a in rows]


# --- the job ------------------------------------------------------------------------------


@DBOS.step()  # retries_allowed=False is DBOS's default: a failed submit is never re-sent
def submit_step(job_id: str, account: str) -> str:
    if _pace:
        slot, wait = take_slot(account, _pace)
        event(job_id, "slot", at=slot)
        time.sleep(wait)
    event(job_id, "submit")  # stands for the POST
    if os.environ.get(CRASH_AFTER_POST) == job_id:
        os.kill(os.getpid(), signal.SIGKILL)  # after the POST, before DBOS records the step
    return f"task-{job_id}"


@DBOS.step()
def poll_step(task_id: str, hold: float) -> str:
    time.sleep(hold)  # stands for polling until the task is done
    return f"https://cdn.example/{task_id}.mp4"


@DBOS.step()
def record_step(job_id: str, url: str) -> None:
    event(job_id, "record")


@DBOS.step()
def failing_step(job_id: str) -> None:
    event(job_id, "failing")
    raise RuntimeError("upstream said no")


@DBOS.workflow()
def job_workflow(job_id: str, hold: float, account: str = "") -> str:
    task_id = submit_step(job_id, account)
    url = poll_step(task_id, hold)
    record_step(job_id, url)
    return task_id


@DBOS.workflow()
def failing_workflow(job_id: str) -> None:
    failing_step(job_id)


# --- a runner -----------------------------------------------------------------------------


def configure(url: str, executor_id: str, **extra: Any) -> None:
    """DBOS with everything passed in code: no dbos-config.yaml is read from the cwd."""
    global _events_url
    _events_url = url
    config: DBOSConfig = {
        "name": APP,
        "system_database_url": url,
        "executor_id": executor_id,
        "application_version": VERSION,
        "log_level": "WARNING",
        "sys_db_pool_size": 5,
        **extra,  # type: ignore[typeddict-item]
    }
    DBOS(config=config)


def register_queue(rate: int, period: float = 1.0, in_flight: int | None = None) -> Any:
    """The submit queue: at most ``rate`` workflow starts per ``period`` per account
    (partition), and ``in_flight`` running at once over all runners."""
    return DBOS.register_queue(
        QUEUE,
        partition_limiter={"limit": rate, "period": period},
        global_concurrency=in_flight,
        polling_interval_sec=0.1,
        on_conflict="always_update",
    )


def enqueue(queue: Any, job_id: str, account: str, hold: float) -> Any:
    """One job: its workflow id is the job's business id (client_business_id)."""
    with SetWorkflowID(job_id), SetEnqueueOptions(queue_partition_key=account):
        return queue.enqueue(job_workflow, job_id, hold, account)


def heartbeat_and_reap(url: str, every: float, dead_after: float, stop: threading.Event) -> None:
    """The liveness DBOS leaves to us: beat every ``every`` s; a runner silent for
    ``dead_after`` s has its PENDING workflows handed back to the queues (idempotent: DBOS
    re-enqueues only rows still owned by that executor)."""
    me = DBOS.executor_id
    while not stop.is_set():
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                f"INSERT INTO {HEARTBEAT} VALUES (%s, extract(epoch from clock_timestamp()))"
                " ON CONFLICT (executor) DO UPDATE SET seen = excluded.seen",
                (me,),
            )
            dead = [
                str(row[0])
                for row in conn.execute(
                    f"SELECT executor FROM {HEARTBEAT} WHERE executor <> %s"
                    " AND seen < extract(epoch from clock_timestamp()) - %s",
                    (me, dead_after),
                )
            ]
        if dead:
            handles = DBOS._recover_pending_workflows(dead)
            print(f"recovered {len(handles)} from {','.join(dead)}", flush=True)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(f"DELETE FROM {HEARTBEAT} WHERE executor = ANY(%s)", (dead,))
        stop.wait(every)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("executor")
    parser.add_argument("--enqueue", type=int, default=0)
    parser.add_argument("--hold", type=float, default=0.0)
    parser.add_argument("--rate", type=int, default=100)
    parser.add_argument("--accounts", type=int, default=1)
    parser.add_argument("--pace", type=float, default=0.0, help="shared pacer: submits/s")
    parser.add_argument("--reap", action="store_true", help="heartbeat and recover dead runners")
    parser.add_argument("--beat", type=float, default=0.5)
    parser.add_argument("--dead-after", type=float, default=2.0)
    args = parser.parse_args(argv)
    configure(args.url, args.executor)
    global _pace
    _pace = args.pace
    DBOS.launch()
    queue = register_queue(args.rate)
    stop = threading.Event()
    if args.reap:
        threading.Thread(
            target=heartbeat_and_reap,
            args=(args.url, args.beat, args.dead_after, stop),
            daemon=True,
        ).start()
    for n in range(args.enqueue):
        enqueue(queue, f"job-{n}", f"acct-{n % args.accounts}", args.hold)
    print("ready", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.wait(0.2):
        pass
    DBOS.destroy()


if __name__ == "__main__":
    main(sys.argv[1:])
