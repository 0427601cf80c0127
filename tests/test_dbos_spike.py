"""What DBOS gives the several-machines runner and what it leaves to us, proved against a real
PostgreSQL (tests/servers.py) with the spike app (tests/dbos_spike_app.py). The findings and
timings are written up in docs/design/several-machines.md.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from dbos import DBOS

from tests import dbos_spike_app as app

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def db(postgres: Any) -> str:
    url = postgres.create_database("spike")
    app.create_tables(url)
    return str(url)


@pytest.fixture
def solo(db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """One launched DBOS in this process, configured in code from an empty cwd."""
    monkeypatch.chdir(tmp_path)
    app.configure(db, "solo")
    DBOS.launch()
    try:
        yield db
    finally:
        DBOS.destroy()


def test_dbos_launches_from_a_url_given_in_code_and_shuts_down(solo: str, tmp_path: Path) -> None:
    with app.SetWorkflowID("shot-1"):
        assert app.job_workflow("shot-1", 0.0) == "task-shot-1"
    assert [e[:2] for e in app.events(solo)] == [("shot-1", "submit"), ("shot-1", "record")]
    assert list(tmp_path.iterdir()) == []  # no dbos-config.yaml read, nothing written


def test_a_job_enqueued_twice_under_its_id_runs_once(solo: str) -> None:
    queue = app.register_queue(rate=10)
    first = app.enqueue(queue, "shot-1", "acct-a", 0.0)
    second = app.enqueue(queue, "shot-1", "acct-a", 0.0)
    assert first.get_result() == second.get_result() == "task-shot-1"
    assert second.workflow_id == "shot-1"
    assert len(app.events(solo, "submit")) == 1


def test_a_step_that_fails_is_not_retried(solo: str) -> None:
    with app.SetWorkflowID("shot-2"), pytest.raises(RuntimeError, match="upstream said no"):
        app.failing_workflow("shot-2")
    assert len(app.events(solo, "failing")) == 1
    assert DBOS.get_workflow_status("shot-2").status == "ERROR"  # type: ignore[union-attr]


def test_each_account_gets_its_own_rate_window(solo: str) -> None:
    """partition_limiter 5 per 1 s: per account, no 6 starts within one second (DBOS's own
    dequeue stamps); two accounts run side by side (10 starts in the first second)."""
    queue = app.register_queue(rate=5)
    handles = [app.enqueue(queue, f"r-{n}", f"acct-{n % 2}", 0.0) for n in range(20)]
    for handle in handles:
        handle.get_result()
    starts: dict[str, list[float]] = defaultdict(list)
    for status in DBOS.list_workflows(queue_name=app.QUEUE):
        assert status.dequeued_at is not None and status.queue_partition_key is not None
        starts[status.queue_partition_key].append(status.dequeued_at / 1000)
    first = min(min(times) for times in starts.values())
    for times in starts.values():
        times.sort()
        assert len(times) == 10
        assert all(
            later - earlier >= 0.999 for earlier, later in zip(times, times[5:], strict=False)
        )
    assert sum(at - first < 1.0 for times in starts.values() for at in times) == 10


def test_global_concurrency_caps_jobs_in_flight_over_all_accounts(solo: str) -> None:
    queue = DBOS.register_queue(
        "capped",
        global_concurrency=3,
        partition_limiter={"limit": 100, "period": 1.0},
        polling_interval_sec=0.05,
    )
    handles = []
    for n in range(9):
        with app.SetWorkflowID(f"c-{n}"), app.SetEnqueueOptions(queue_partition_key=f"a{n % 3}"):
            handles.append(queue.enqueue(app.job_workflow, f"c-{n}", 0.3))
    for handle in handles:
        handle.get_result()
    spans = defaultdict(list)
    for job, _, _, at in app.events(solo):
        spans[job].append(at)
    edges = sorted([(s[0], 1) for s in spans.values()] + [(s[1], -1) for s in spans.values()])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    assert peak == 3


# --- several processes ----------------------------------------------------------------------


def start_runner(db: str, executor: str, *args: str, env: dict[str, str] | None = None) -> Any:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.dbos_spike_app", db, executor, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    return process


def stop_runner(process: Any) -> str:
    if process.poll() is None:
        process.terminate()
    out, _ = process.communicate(timeout=30)
    return str(out)


def wait_until(check: Callable[[], bool], within: float) -> float | None:
    """Seconds until ``check()`` held, or None if it did not within ``within``."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        if check():
            return time.monotonic() - start
        time.sleep(0.05)
    return None


def test_a_dead_runners_jobs_wait_for_its_return_without_a_reaper(db: str) -> None:
    """DBOS alone recovers only its own executor id's work at launch: a runner killed with -9
    leaves its jobs PENDING; another runner does not take them."""
    a = start_runner(db, "runner-a", "--enqueue", "4", "--hold", "30")
    assert wait_until(lambda: len(app.events(db, "submit")) == 4, 20) is not None
    a.send_signal(signal.SIGKILL)
    a.wait()
    b = start_runner(db, "runner-b")
    try:
        assert wait_until(lambda: len(app.events(db)) > 4, 3.0) is None
    finally:
        stop_runner(b)


def test_a_reaper_hands_a_dead_runners_jobs_to_another_and_the_crashed_submit_reruns(
    db: str,
) -> None:
    """A runner dies (kill -9) right after job-3's POST, before DBOS records the step. A second
    runner, seeing its heartbeat stop, recovers its workflows: every job is recorded once;
    each submit in flight at the kill runs again (the duplicate our reconcile-or-flag must
    guard); submits already recorded do not."""
    crash = {app.CRASH_AFTER_POST: "job-3"}
    a = start_runner(db, "runner-a", "--enqueue", "6", "--hold", "1", "--reap", env=crash)
    assert wait_until(lambda: a.poll() is not None, 20) is not None
    died = time.monotonic()
    b = start_runner(db, "runner-b", "--reap", "--beat", "0.25", "--dead-after", "1.5")
    try:
        finished = wait_until(lambda: len(app.events(db, "record")) == 6, 30)
    finally:
        out = stop_runner(b)
    assert finished is not None, out
    assert "recovered" in out and "runner-a" in out
    records = [job for job, *_ in app.events(db, "record")]
    assert sorted(records) == [f"job-{n}" for n in range(6)]
    submits = defaultdict(list)
    for job, _, executor, _ in app.events(db, "submit"):
        submits[job].append(executor)
    assert submits["job-3"] == ["runner-a", "runner-b"]  # the POST went out twice
    assert all(len(by) <= 2 for by in submits.values())
    assert all(by[0] == "runner-a" for by in submits.values() if len(by) == 2)
    assert time.monotonic() - died < 15


def test_a_shared_pacer_spaces_the_submits_of_several_runners(db: str) -> None:
    """DBOS's limiter bounds workflow starts per window (10 in any second, stamped at dequeue),
    but the POSTs then drift by each runner's own lag. A row per account in PostgreSQL, taken
    by each submit step just before its POST, spaces the POSTs themselves 1/R apart."""
    from dbos import DBOSClient

    runners = [start_runner(db, f"runner-{n}", "--rate", "10", "--pace", "10") for n in range(2)]
    client = DBOSClient(system_database_url=db)
    try:
        for n in range(30):
            options = {"queue_name": app.QUEUE, "workflow_name": "job_workflow"}
            client.enqueue(
                {**options, "workflow_id": f"p-{n}", "queue_partition_key": "acct"},  # type: ignore[typeddict-item]
                f"p-{n}",
                0.0,
                "acct",
            )
        assert wait_until(lambda: len(app.events(db, "record")) == 30, 30) is not None
    finally:
        client.destroy()
        outs = [stop_runner(runner) for runner in runners]
    slots = sorted(at for *_, at in app.events(db, "slot"))
    assert len(slots) == 30, outs
    assert all(later - earlier >= 0.1 - 1e-6 for earlier, later in pairwise(slots))
    assert slots[-1] - slots[0] < 29 / 10 + 0.5  # and the budget is used, not wasted
    posts = sorted(at for *_, at in app.events(db, "submit"))
    assert all(post >= slot for post, slot in zip(posts, slots, strict=True))
