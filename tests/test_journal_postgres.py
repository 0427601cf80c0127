"""The shared PostgreSQL journal's own promises (issue #18): several runners on one run never
both send a job, sync together, a killed runner's transaction leaves nothing half made, several
runs share a database, and credentials stay out of messages. The rules every journal keeps are
in test_journal_contract.py (run over PostgreSQL too)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from omni_batch.errors import JobTaken, StateError
from omni_batch.journal import Journal, open_journal
from omni_batch.journal.postgres import PostgresJournal, redacted
from omni_batch.planning.manifest import load_manifest
from tests.conftest import journal_story, shots_manifest, two_prompt_jobs

A, B = "a-16x9-6s-r1", "b-16x9-6s-r1"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def db(postgres: Any) -> str:
    return str(postgres.create_database("pgj"))


@pytest.fixture
def runners(db: str) -> Iterator[Callable[..., PostgresJournal]]:
    """``runners(n)``: n journals on one run of one database, each its own connection."""
    opened: list[PostgresJournal] = []

    def make(n: int, run: str = "shared") -> list[PostgresJournal]:
        made = [PostgresJournal(db, run=run, runner=f"r{i}") for i in range(n)]
        opened.extend(made)
        return made

    yield make  # type: ignore[misc]
    for journal in opened:
        journal.close()


def together(*calls: Callable[[], Any]) -> list[Any]:
    """Run ``calls`` in threads released at once; each result, or the exception it raised."""
    gate = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)

    def run(i: int, call: Callable[[], Any]) -> None:
        gate.wait()
        try:
            results[i] = call()
        except Exception as exc:  # the test looks at it
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_open_journal_takes_a_postgresql_url_and_it_is_a_journal(db, tmp_path):
    journal = open_journal(db, run="demo")
    try:
        assert isinstance(journal, PostgresJournal) and isinstance(journal, Journal)
        assert journal.run == "demo" and journal.meta("run_key")
    finally:
        journal.close()


def test_runners_starting_together_make_the_schema_once(db):
    opened = together(*[partial(PostgresJournal, db, run="start") for _ in range(4)])
    try:
        assert all(isinstance(j, PostgresJournal) for j in opened), opened
        assert len({j.meta("run_key") for j in opened}) == 1
    finally:
        for j in opened:
            if isinstance(j, PostgresJournal):
                j.close()


def test_two_runners_racing_to_submit_one_job_exactly_one_wins(runners, tmp_path):
    jobs = list(load_manifest(shots_manifest(tmp_path, 30)).jobs())
    one, two = runners(2)
    one.sync(jobs)
    pages = [one.pending_page(-1, 100), two.pending_page(-1, 100)]  # both read every job
    assert [r.job_id for r in pages[0]] == [r.job_id for r in pages[1]]
    for row in pages[0]:
        results = together(
            *[partial(r.mark_submitting, row.job_id, f"ob-{row.job_id}", False) for r in (one, two)]
        )
        lost = [r for r in results if isinstance(r, JobTaken)]
        assert len(lost) == 1 and results.count(None) == 1, results
        assert "another runner moved it first" in str(lost[0])
    submitted = list(one.in_flight())
    assert len(submitted) == 30 and all(r.attempts == 1 for r in submitted)
    # the winner goes on (a retry of its own POST too); the loser cannot touch the job, though
    # it reads it in flight
    job = submitted[0].job_id
    winner, loser = (one, two) if _owner(one, job) == one.runner else (two, one)
    winner.mark_submitting(job, f"ob-{job}", False, "main")  # its own retry
    for move in (
        lambda: loser.mark_running(job, "task-x", None),
        lambda: loser.mark_submitting(job, f"ob-{job}", True),
        lambda: loser.mark_failed(job, error_type="x", message="y"),
        lambda: loser.mark_pending(job, "402"),
    ):
        with pytest.raises(JobTaken, match=f"is submitting by runner {winner.runner}"):
            move()
    winner.mark_running(job, "task-1", None)
    assert one.task_owner("task-1") == job


def _owner(journal: PostgresJournal, job_id: str) -> str:
    row = journal.db.execute(
        "SELECT runner FROM omni_batch.jobs WHERE run = %s AND job_id = %s", (journal.run, job_id)
    ).fetchone()
    assert row is not None
    return str(row[0])


def test_a_crash_left_submit_is_settled_by_its_restarted_runner_or_one_taking_over(
    runners, db, tmp_path
):
    dead, two, three = runners(3)
    dead.sync(two_prompt_jobs(tmp_path))
    dead.mark_submitting(A, "ob-a", False)  # ... and the runner dies before the POST's answer
    dead.mark_submitting(B, "ob-b", False)
    dead.close()
    assert {r.state for r in three.in_flight()} == {"submitting"}  # read, not taken
    with pytest.raises(JobTaken, match="by runner r0"):
        three.mark_running(A, "task-a", None, adopted=True)
    restarted = PostgresJournal(db, run="shared", runner="r0")  # the same runner id
    try:
        restarted.mark_running(B, "task-b", None, adopted=True)
    finally:
        restarted.close()
    # r0 known dead: two runners reaping it at once, each job goes to one
    taken = together(lambda: two.take_over("r0"), lambda: three.take_over("r0"))
    assert sorted(taken) == [0, 1]
    owner, other = (two, three) if taken[0] else (three, two)
    owner.mark_submitting(A, "ob-a", True)  # not found by its business id: sent flagged
    with pytest.raises(JobTaken):
        other.mark_running(A, "task-x", None, adopted=True)
    assert [e.get("reason") for e in owner.events() if e.get("reason")] == ["taken over"]


def test_a_task_sent_by_a_runner_paused_past_dead_after_is_kept_with_the_job_it_lost(
    runners, db, tmp_path
):
    from omni_batch.journal import open_reader

    a, b = runners(2)
    a.sync(two_prompt_jobs(tmp_path))
    a.mark_submitting(A, "ob-a", False)  # ... its POST goes out, and runner a stalls
    assert b.orphan(a.runner) == 1  # a looked dead: its submit belongs to no runner now
    b.mark_submitting(A, "ob-a", True)  # b settles it: not found, sent flagged
    b.mark_running(A, "task-b", "rid-b")
    b.mark_downloading(A, "https://cdn/a.mp4", 2e9, None, polls=1)
    b.mark_completed(A, f"videos/{A}.mp4", 1234)
    with pytest.raises(JobTaken, match="is completed"):  # a wakes with its POST's answer
        a.mark_running(A, "task-a", "rid-a")
    a.keep_task(A, "task-a", "rid-a")
    a.keep_task(A, "task-a", "rid-a")  # once
    columns = ("job_id", "state", "task_id", "task_ids", "possible_duplicate", "video_path")
    with open_reader(db, "shared") as reader:
        found = [r for chunk in reader.rows(columns, 10) for r in chunk]
    assert found[0] == (A, "completed", "task-b", "task-b task-a", 1, f"videos/{A}.mp4")
    assert a.task_owner("task-b") == A and a.task_owner("task-a") is None
    stray = [e for e in b.events() if e["event"] == "stray_task"]
    assert [(e["job_id"], e["task_id"], e["request_id"]) for e in stray] == [
        (A, "task-a", "rid-a"), (A, "task-a", "rid-a")
    ]  # fmt: skip
    assert [e["event"] for e in b.events()][-1] == "stray_task"  # after b's completed


def test_a_runner_taken_for_dead_never_takes_its_lease_back(runners):
    """Each runner is judged by its own lease (its --dead-after), and one silent past it, or
    reaped, has every later beat refused: a paused runner whose heartbeat wakes first must not
    look alive again while another runner holds its jobs."""
    a, b = runners(2)
    a.join(0.5)
    b.join(30)
    assert a.beat() and b.beat()
    assert b.dead_runners() == [] and a.dead_runners() == []
    time.sleep(0.8)
    assert b.dead_runners() == [a.runner]  # a's lease, not b's own
    assert a.dead_runners() == []  # b's 30 s run on
    assert not a.beat()  # silent past its lease: refused, and stays refused
    a.join(0.5)  # a new start of the same runner id is a new lease ...
    assert a.beat()
    b.forget_runner(a.runner)  # ... until a reaper hands its work back
    assert not a.beat()
    b.leave()
    assert not b.beat() and a.dead_runners() == [b.runner]  # left: its work taken up at once


def test_a_body_changed_after_the_page_was_read_is_not_sent(runners, tmp_path):
    one, two = runners(2)
    one.sync(two_prompt_jobs(tmp_path))
    assert one.pending_page(-1, 1)[0].job_id == A
    two.sync(two_prompt_jobs(tmp_path, "alpha shot, changed"))  # still pending: takes it
    with pytest.raises(JobTaken):
        one.mark_submitting(A, "ob-a", False)
    again = one.pending_page(-1, 1)[0]
    assert again.body["prompt"] == "alpha shot, changed"
    one.mark_submitting(A, "ob-a", False)  # the body it now holds


def test_two_runners_syncing_at_once_agree(runners, tmp_path):
    jobs = list(load_manifest(shots_manifest(tmp_path, 3000)).jobs())
    runs = runners(3)
    results = together(*[partial(r.sync, jobs, batch=500) for r in runs])
    assert results == [3000, 3000, 3000]
    assert {j.meta("run_key") for j in runs} == {runs[0].meta("run_key")}  # one run, one key
    assert runs[1].counts()["pending"] == 3000
    page = runs[2].pending_page(2990, 100)
    assert [r.seq for r in page] == list(range(2991, 3000))
    assert len(list(runs[0].pending_variants())) == 3000  # paged: all of them, once


def test_several_runs_share_a_database_without_meeting(runners, tmp_path):
    (first,), (second,) = runners(1, run="first"), runners(1, run="second")
    first.sync(two_prompt_jobs(tmp_path))
    second.sync(two_prompt_jobs(tmp_path)[:1])
    first.mark_submitting(A, "ob-a", False)
    first.mark_running(A, "task-a", None)
    assert second.counts()["pending"] == 1 and first.counts()["running"] == 1
    assert second.task_owner("task-a") is None
    assert first.meta("run_key") != second.meta("run_key")
    second.mark_submitting(A, "ob-a2", False)  # its own job of the same id


def test_every_transition_is_an_event_row_in_order(runners, tmp_path):
    (journal,) = runners(1)
    journal.sync(two_prompt_jobs(tmp_path))
    journal.mark_submitting(A, None, True)
    journal.mark_running(A, "task-1", "rid-1")
    journal.mark_downloading(A, "https://cdn/x.mp4", 2e9, None, polls=2)
    journal.mark_completed(A, "videos/a.mp4", 1234)
    journal.set_review(A, pick="picked")
    events = journal.events()
    assert [(e["event"], e.get("state")) for e in events] == [
        ("state", "submitting"), ("state", "running"), ("state", "downloading"),
        ("state", "completed"), ("review", None),
    ]  # fmt: skip
    assert events[1]["task_id"] == "task-1" and events[3]["bytes"] == 1234
    assert [e["n"] for e in events] == sorted(e["n"] for e in events)


CHILD = """
import sys, time
from omni_batch.journal.postgres import PostgresJournal
from tests.conftest import shots_manifest
from omni_batch.planning.manifest import load_manifest
from pathlib import Path
journal = PostgresJournal(sys.argv[1], run="shared", runner="child")
if sys.argv[2] == "sync":
    jobs = load_manifest(shots_manifest(Path(sys.argv[3]), 5)).jobs()
    journal.sync(jobs)  # dies in its commit
else:
    with journal.db.transaction():  # a transition caught mid-transaction
        journal.mark_running("a-16x9-6s-r1", "task-lost", None)
        print("ready", flush=True)
        time.sleep(60)
"""


def _child(db: str, how: str, folder: Path, crash: str = "") -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMNI_BATCH_CRASH_AT": crash}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHILD), db, how, str(folder)],
        stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip


def test_a_runner_killed_mid_transaction_leaves_the_previous_state(runners, db, tmp_path):
    (journal,) = runners(1)
    journal.sync(two_prompt_jobs(tmp_path))
    journal.mark_submitting(A, "ob-a", False)
    journal.db.execute(
        "UPDATE omni_batch.jobs SET runner = 'child' WHERE job_id = %s", (A,)
    )  # the child's own submit, as if it had sent it
    child = _child(db, "transition", tmp_path)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    child.kill()  # kill -9
    child.wait(10)
    (again,) = runners(1)
    row = {r.job_id: r for r in again.in_flight()}[A]
    assert (row.state, row.task_id) == ("submitting", None)
    assert again.task_owner("task-lost") is None
    # the dead connection's row lock is gone: the job can be taken over and settled at once
    started = time.monotonic()
    assert again.take_over("child") == 1
    again.mark_running(A, "task-a", None, adopted=True)
    assert time.monotonic() - started < 5
    # a sync killed in its commit leaves the manifest as it was
    crashed = _child(db, "sync", tmp_path, crash="in_commit:1")
    assert crashed.wait(30) == -9
    assert again.known_jobs(["shot-0", B]) == [B] and again.counts()["pending"] == 1
    assert [e.get("state") for e in again.events()][-1] == "running"


def test_credentials_never_appear_in_a_message_or_repr(postgres, db):
    secret = "s3cr3t-pass-word"
    with_password = db.replace("postgres@", f"postgres:{secret}@")  # trust auth: accepted
    journal = open_journal(with_password, run="r")
    try:
        assert secret not in repr(journal) and secret not in journal.where
        assert "postgres:" not in journal.where
    finally:
        journal.close()
    closed = f"postgresql://operator:{secret}@127.0.0.1:1/nowhere"
    with pytest.raises(StateError) as caught:
        open_journal(closed, run="r")
    assert secret not in str(caught.value) and "operator" not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert redacted(closed) == "postgresql://127.0.0.1:1/nowhere"


def test_the_reports_read_a_shared_run_as_they_read_a_folder(runners, db, tmp_path):
    from omni_batch.journal import open_reader
    from omni_batch.outputs.report import _RAW, _TIMES

    folder = tmp_path / "out"
    sqlite = open_journal(folder)
    (shared,) = runners(1, run="story")
    for journal in (sqlite, shared):
        journal_story(journal, tmp_path)
        journal.set_meta("name", "story")
    sqlite.close()
    columns = [c for c in _RAW if c not in (*_TIMES, "updated_at")]
    read: list[Any] = []
    for target, run in ((folder, None), (db, "story")):
        with open_reader(target, run) as reader:
            facts = reader.facts(_RAW, fractional=_TIMES)
            read.append(
                (
                    reader.meta("name"), reader.counts(), facts.rows,
                    {c: facts.present[c] for c in columns},
                    [row for chunk in reader.rows(columns, 2) for row in chunk],
                    [row for chunk in reader.rows(columns, 4, gallery=True) for row in chunk],
                )
            )  # fmt: skip
    assert read[0] == read[1]
    assert read[1][1]["retired"] == 1 and read[1][4][-1][0] == "shot-2-16x9-6s-r1"


def test_a_reader_of_a_run_that_is_not_there_says_so(runners, db):
    from omni_batch.journal import open_reader

    runners(1, run="there")
    with pytest.raises(StateError, match="no such run"), open_reader(db, "elsewhere"):
        pass
