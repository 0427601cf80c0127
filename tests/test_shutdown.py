"""Shutdown never hangs (issue #13, item 6).

SIGTERM, SIGINT or SIGHUP while submits, polls and downloads are in flight end the run within
10 s with exit code 130; a second signal leaves at once; a full disk ends it with a one-line
error (exit 2). Each time the journal is consistent (every task the API created is in it by
task id, or its job is still `submitting` for the next run to reconcile), the folder is free,
and the next run finishes every job with no second submit.

Every run here is the real CLI in a subprocess against the simulator on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import (
    journal_rows,
    shots_manifest,
    sim,
    start_run,
    state_events,
    wait_for_events,
)

WITHIN_S = 10.0  # the promise: a signal ends the run within this long
OVERDUE = "still stopping"  # what the last-resort deadline says when it has to act
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
SEED = 13  # the simulator seed these tests were written against


def stop(proc: subprocess.Popen, sig: int) -> tuple[float, str]:
    """Send ``sig``; wait at most WITHIN_S for the process to end. (seconds taken, stderr)"""
    proc.send_signal(sig)
    return wait_end(proc, f"after {signal.Signals(sig).name}")


def wait_end(proc: subprocess.Popen, after: str) -> tuple[float, str]:
    began = time.monotonic()
    try:
        _, stderr = proc.communicate(timeout=WITHIN_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate()
        pytest.fail(f"still running {WITHIN_S:g} s {after}; stderr: {stderr[-2000:]}")
    return time.monotonic() - began, stderr


def folder_is_free(out: Path) -> bool:
    with (out / ".lock").open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


def journal_is_intact(out: Path) -> bool:
    # the SQLite file itself, after a kill or a full disk: its integrity, not the journal's rows
    with contextlib.closing(sqlite3.connect(out / "journal.sqlite")) as db:
        return db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def job_rows(out: Path) -> list[tuple[str, str, str | None, str | None]]:
    """(job_id, state, task_id, business_id) of every job, after checking the file's integrity."""
    assert journal_is_intact(out)
    return journal_rows(out, "job_id", "state", "task_id", "business_id")


def assert_consistent(out: Path, server) -> None:
    """Every task the simulator created is in the journal under its job's business id, with
    its task id, or that job is still `submitting` (the next run looks it up)."""
    by_business_id = {bid: (job, state, task) for job, state, task, bid in job_rows(out) if bid}
    for task in list(server.state.tasks.values()):
        assert task.cbid in by_business_id, f"task {task.id}: its business id is not journaled"
        job, state, task_id = by_business_id[task.cbid]
        assert task_id == task.id or state == "submitting", (job, state, task_id, task.id)
    assert folder_is_free(out)


def finish(manifest: Path, out: Path, server, jobs: int) -> None:
    """A plain rerun completes every job, and the simulator got one submit per job."""
    rerun = start_run(manifest, out, server, "--max-in-flight", "20")
    _, stderr = rerun.communicate(timeout=120)
    stats = server.stats()
    assert rerun.returncode == 0, stderr[-2000:]
    states = {state for _, state, _, _ in job_rows(out)}
    assert states == {"completed"}
    assert stats["submits"] == jobs and stats["max_submits_per_body"] == 1, stats


# A moment of a run, as the event that marks it: a submit just sent (its answer takes 0.5 s), a
# video just started downloading (~0.8 s), or any step while status calls are under way.
MOMENTS = ("submitting", "downloading", None)


def interrupt(shots: Path, out: Path, server, sig: int, moment: str | None, rng) -> str:
    """Start a run, send ``sig`` at ``moment`` (plus a seeded random 0-0.3 s), wait for the
    end; returns stderr after checking the exit code and the journal."""
    seen = state_events(out, moment)
    proc = start_run(shots, out, server, "--max-in-flight", "6")
    wait_for_events(out, seen + 1, moment)
    time.sleep(rng.uniform(0.0, 0.3))
    _, stderr = stop(proc, sig)
    name = f"{signal.Signals(sig).name} at {moment or 'a poll'}"
    assert proc.returncode == 130, (name, stderr[-2000:])
    assert "Traceback" not in stderr and OVERDUE not in stderr, (name, stderr[-2000:])
    assert_consistent(out, server)
    return stderr


def test_signals_at_random_moments_end_the_run_within_10_s_and_a_rerun_finishes_every_job_once(
    tmp_path,
):
    # CPython 3.11 lost the cancel of the poll dispatcher (asyncio.wait_for) in most tries that
    # caught a submit in flight, and the run hung holding its folder: each signal at each moment
    rng = random.Random(613)
    tries = [(sig, moment) for sig in STOP_SIGNALS for moment in MOMENTS]
    rng.shuffle(tries)
    jobs = 40
    shots, out = shots_manifest(tmp_path, jobs), tmp_path / "out"
    knobs = {"latency": 0.1, "submit_answer_delay": 0.4, "download_rate": 30_000}
    with sim(seed=SEED, gen_min=1.0, gen_max=2.5, **knobs) as server:
        for sig, moment in tries:
            interrupt(shots, out, server, sig, moment, rng)
        assert state_events(out, "completed") < jobs  # every signal landed mid-run
        finish(shots, out, server, jobs)


def test_a_submit_the_api_is_slow_to_answer_does_not_hold_the_stop(tmp_path):
    # the task exists at once; its answer would come 15 s later
    shots, out = shots_manifest(tmp_path, 1), tmp_path / "out"
    with sim(seed=SEED, submit_answer_delay=15.0) as server:
        proc = start_run(shots, out, server)
        wait_for_events(out, 1, "submitting")
        time.sleep(0.3)
        _, stderr = stop(proc, signal.SIGTERM)
        assert proc.returncode == 130, stderr[-2000:]
        assert OVERDUE not in stderr and "Traceback" not in stderr
        assert {state for _, state, _, _ in job_rows(out)} == {"submitting"}
        assert_consistent(out, server)
        assert server.stats()["submits"] == 1
        finish(shots, out, server, 1)  # looked up by its business id and adopted, not resent
    events = (out / "events.jsonl").read_text(encoding="utf-8")
    assert events.count('"adopted": true') == 1


@pytest.mark.parametrize(
    ("first", "second"),
    [(signal.SIGTERM, signal.SIGHUP), (signal.SIGINT, signal.SIGTERM)],
    ids=["TERM-then-HUP", "INT-then-TERM"],
)
def test_a_second_signal_leaves_at_once_while_the_first_is_still_stopping(tmp_path, first, second):
    shots, out = shots_manifest(tmp_path, 1), tmp_path / "out"
    with sim(seed=SEED, submit_answer_delay=30.0) as server:
        proc = start_run(shots, out, server)
        wait_for_events(out, 1, "submitting")
        proc.send_signal(first)
        time.sleep(1.0)
        assert proc.poll() is None  # still waiting for the submit's answer
        took, stderr = stop(proc, second)
        assert proc.returncode == 130, stderr[-2000:]
        assert took < 1.5, took
        assert "Traceback" not in stderr
        assert_consistent(out, server)  # the job is `submitting`: the next run looks it up


def wait_until_full(proc: subprocess.Popen, out: Path, limit: int) -> None:
    """Wait for the process to end: at most WITHIN_S after a file in ``out`` came within two
    journal frames (2 x 4120 bytes) of ``limit``, when writes start to fail."""
    filled = None
    deadline = time.monotonic() + 60
    while proc.poll() is None:
        now = time.monotonic()
        if filled is None and any(size >= limit - 8240 for size in file_sizes(out)):
            filled = now
        if now > (deadline if filled is None else filled + WITHIN_S):
            proc.kill()
            pytest.fail(f"still running {now - (filled or now):.1f} s after the disk filled")
        time.sleep(0.02)


def file_sizes(out: Path) -> list[int]:
    sizes = []
    for folder in (out, out / "videos"):
        with contextlib.suppress(OSError), os.scandir(folder) as entries:
            sizes += [e.stat().st_size for e in entries if e.is_file()]
    return sizes


def test_a_full_disk_mid_run_ends_it_with_a_one_line_error_and_the_journal_intact(tmp_path):
    # RLIMIT_FSIZE in the child: once the journal's WAL (or any file) reaches the limit, every
    # write fails with EFBIG while submits, polls and downloads are in flight
    rng = random.Random(1313)
    jobs = 30
    shots = shots_manifest(tmp_path, jobs)
    for attempt in range(3):
        out = tmp_path / f"out{attempt}"
        with sim(seed=SEED, latency=0.05, gen_min=0.3, gen_max=1.0, download_rate=60_000) as server:
            limit = rng.randrange(200_000, 500_000)
            proc = start_run(
                shots, out, server, "--max-in-flight", "12", "--poll-interval", "0.1",
                file_size_limit=limit,
            )  # fmt: skip
            wait_until_full(proc, out, limit)
            _, stderr = proc.communicate()
            lines = stderr.strip().splitlines()
            assert proc.returncode == 2, (limit, stderr[-2000:])
            assert "Traceback" not in stderr and "never retrieved" not in stderr, stderr[-2000:]
            assert "cannot write" in lines[-1], lines[-1]  # the full disk ended it
            assert state_events(out, "completed") < jobs  # it ended mid-run
            assert_consistent(out, server)
            if attempt == 0:
                finish(shots, out, server, jobs)


# -- the engine's own waits, in-process ---------------------------------------------------------


@pytest.mark.parametrize("turns", [0, 1, 2, 3])
def test_the_poll_dispatcher_ends_when_cancelled_as_a_poll_is_scheduled(tmp_path, turns):
    # the race that hung shutdown on CPython 3.11: a poll is scheduled (waking the dispatcher)
    # and the dispatcher is cancelled before it runs again; `turns` loop turns apart
    from omni_batch.journal import open_journal
    from omni_batch.running.accounts import AccountRun
    from omni_batch.running.api import ToapisClient
    from omni_batch.running.budgets import Account, Rates
    from omni_batch.running.engine import Engine, Flight
    from omni_batch.running.options import FAST
    from omni_batch.store import LocalStore

    async def main() -> bool:
        journal = open_journal(tmp_path)
        try:
            async with aiohttp.ClientSession() as session:
                client = ToapisClient(session, "http://127.0.0.1:9", "sk-test")
                account = AccountRun("a", Account("a", Rates()), [client], 4)
                engine = Engine(journal, [account], session, LocalStore(tmp_path), FAST)
                flight = Flight("job", "task", deadline=time.monotonic() + 60)
                engine.schedule(flight, 30)  # due later: the dispatcher sleeps until then
                dispatcher = asyncio.create_task(engine.dispatcher())
                for _ in range(3):
                    await asyncio.sleep(0)
                engine.schedule(flight, 30)  # a poll worker schedules the next poll...
                for _ in range(turns):
                    await asyncio.sleep(0)
                dispatcher.cancel()  # ...as shutdown cancels the dispatcher
                await asyncio.wait([dispatcher], timeout=2)
                ended = dispatcher.done()
                dispatcher.cancel()
                await asyncio.wait([dispatcher], timeout=1)
                engine.prober.shutdown()
                return ended
        finally:
            journal.close()

    assert asyncio.run(main()), "the dispatcher swallowed its cancel"


def test_shutdown_cancels_again_a_task_that_swallowed_a_cancel():
    from omni_batch.running.engine import cancel_and_wait

    async def stubborn() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # as 3.11's wait_for could
            await asyncio.sleep(30)
        await asyncio.sleep(30)

    async def main() -> tuple[int, bool]:
        task = asyncio.create_task(stubborn())
        await asyncio.sleep(0)
        left = await cancel_and_wait([task], within=2)
        return left, task.cancelled()

    assert asyncio.run(main()) == (0, True)


STUCK = """
import asyncio, sys, time
from omni_batch import batch as runner

runner.STOP_DEADLINE_S = float(sys.argv[1])


async def main():
    stop = asyncio.Event()
    with runner._interrupts(stop):
        print("running", flush=True)
        await stop.wait()
        print("stopping", flush=True)
        time.sleep(30)  # a shutdown stuck where the event loop cannot run


asyncio.run(main())
"""


def stuck_run(deadline: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", STUCK, str(deadline)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "running\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout.readline() == "stopping\n"
    return proc


def test_a_stop_that_hangs_anyway_is_ended_at_the_deadline_with_130():
    proc = stuck_run(deadline=1.0)
    took, stderr = wait_end(proc, "after SIGTERM")
    assert proc.returncode == 130 and OVERDUE in stderr
    assert took < 3


def test_a_second_signal_leaves_even_while_the_loop_is_blocked():
    proc = stuck_run(deadline=30.0)
    took, stderr = stop(proc, signal.SIGINT)
    assert proc.returncode == 130 and OVERDUE not in stderr
    assert took < 1.5
