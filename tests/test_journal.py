"""Journal transitions, resume queries and the refusal to run a changed manifest."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from omni_batch.errors import StateError
from omni_batch.journal import Journal
from omni_batch.manifest import load_manifest
from omni_batch.report import build_report, neutralise


def manifest(tmp_path: Path, prompt: str = "alpha shot") -> list:
    path = tmp_path / "m.yaml"
    path.write_text(
        f"prompts:\n  - {{id: a, prompt: '{prompt}'}}\n  - {{id: b, prompt: 'beta'}}\n",
        encoding="utf-8",
    )
    return list(load_manifest(path).jobs())


def test_sync_is_idempotent_and_pages_come_in_manifest_order(tmp_path):
    journal = Journal(tmp_path / "out")
    jobs = manifest(tmp_path)
    assert journal.sync(jobs) == 2 and journal.sync(jobs) == 2
    page = journal.pending_page(-1, 10)
    assert [r.job_id for r in page] == ["a-16x9-6s-r1", "b-16x9-6s-r1"]
    assert page[0].body == jobs[0].body
    assert journal.counts()["pending"] == 2


def test_a_changed_body_is_refused_once_a_job_left_pending(tmp_path):
    journal = Journal(tmp_path / "out")
    journal.sync(manifest(tmp_path))
    journal.mark_submitting("a-16x9-6s-r1", None, False)
    journal.mark_running("a-16x9-6s-r1", "task-1", "rid-1")
    with pytest.raises(StateError, match=r"'a-16x9-6s-r1'.*running with other parameters"):
        journal.sync(manifest(tmp_path, "alpha shot, changed"))


def test_a_pending_job_simply_takes_the_new_body(tmp_path):
    journal = Journal(tmp_path / "out")
    journal.sync(manifest(tmp_path))
    journal.sync(manifest(tmp_path, "alpha shot, changed"))
    assert journal.pending_page(-1, 1)[0].body["prompt"] == "alpha shot, changed"


def test_state_survives_reopening_and_in_flight_jobs_are_found_for_resume(tmp_path):
    folder = tmp_path / "out"
    journal = Journal(folder)
    journal.sync(manifest(tmp_path))
    journal.mark_submitting("a-16x9-6s-r1", "ob-x-a", False)
    journal.mark_submitting("b-16x9-6s-r1", None, False)
    journal.mark_running("b-16x9-6s-r1", "task-b", None)
    journal.close()
    again = Journal(folder)
    found = {r.job_id: r for r in again.in_flight()}
    assert (
        found["a-16x9-6s-r1"].state == "submitting"
        and found["a-16x9-6s-r1"].business_id == "ob-x-a"
    )
    assert found["b-16x9-6s-r1"].task_id == "task-b"
    assert again.pending_page(-1, 10) == []


def test_timeouts_are_polled_again_and_failures_only_requeued_when_asked(tmp_path):
    journal = Journal(tmp_path / "out")
    journal.sync(manifest(tmp_path))
    for job_id, kind, task in (
        ("a-16x9-6s-r1", "wait_timeout", None),
        ("b-16x9-6s-r1", "generation_failed", "failed"),
    ):
        journal.mark_submitting(job_id, None, False)
        journal.mark_running(job_id, f"task-{job_id}", None)
        journal.mark_failed(job_id, error_type=kind, message="x", task=task)
    assert journal.reopen(retry_failed=False) == (1, 0)
    assert journal.counts()["running"] == 1 and journal.counts()["failed"] == 1
    assert journal.reopen(retry_failed=True) == (0, 1)
    assert journal.counts()["pending"] == 1


def test_every_transition_is_an_event_and_the_report_reads_the_journal(tmp_path):
    folder = tmp_path / "out"
    journal = Journal(folder)
    journal.sync(manifest(tmp_path))
    journal.mark_submitting("a-16x9-6s-r1", None, True)
    journal.mark_running("a-16x9-6s-r1", "task-1", "rid-1")
    journal.mark_downloading("a-16x9-6s-r1", "https://cdn/x.mp4", 2e9, None, polls=2)
    journal.mark_completed("a-16x9-6s-r1", "videos/a-16x9-6s-r1.mp4", 1234)
    journal.close()
    states = [json.loads(x)["state"] for x in (folder / "events.jsonl").read_text().splitlines()]
    assert states == ["submitting", "running", "downloading", "completed"]
    frame = build_report(folder)
    row = frame.set_index("job_id").loc["a-16x9-6s-r1"]
    assert row.status == "completed" and row.task_id == "task-1" and row.bytes == 1234
    assert bool(row.possible_duplicate) and row.attempts == 1 and row.polls == 2
    assert frame.set_index("job_id").loc["b-16x9-6s-r1"].status == "pending"


def test_csv_cells_that_look_like_formulas_are_neutralised():
    import pandas as pd

    frame = pd.DataFrame(
        {"prompt": ["=HYPERLINK(1)", "+1", "-x", "@y", "fine"], "n": [1, 2, 3, 4, 5]}
    )
    assert list(neutralise(frame).prompt) == ["'=HYPERLINK(1)", "'+1", "'-x", "'@y", "fine"]
    assert frame.prompt[0] == "=HYPERLINK(1)"  # the original (Parquet) keeps raw text


def test_a_completed_transition_waits_for_the_next_commit_and_its_event_with_it(tmp_path):
    """`completed` is the one deferred transition: another reader (status, the report thread)
    sees it, and events.jsonl names it, only once it is committed; the next money transition
    (a submit) or commit() carries it, and nothing else is ever left uncommitted."""
    folder = tmp_path / "out"
    journal = Journal(folder)
    journal.sync(manifest(tmp_path))
    a, b = "a-16x9-6s-r1", "b-16x9-6s-r1"
    journal.mark_submitting(a, None, False)
    journal.mark_running(a, "task-a", None)
    journal.mark_downloading(a, "http://127.0.0.1:1/a.mp4", None, None, 1)
    journal.mark_completed(a, "videos/a.mp4", 10)
    reader = sqlite3.connect(folder / Journal.FILE)

    def seen() -> tuple[str, list[str]]:
        state = reader.execute("SELECT state FROM jobs WHERE job_id = ?", (a,)).fetchone()[0]
        lines = (folder / "events.jsonl").read_text(encoding="utf-8").splitlines()
        return state, [json.loads(x)["state"] for x in lines if '"job_id": "a-' in x]

    assert seen() == ("downloading", ["submitting", "running", "downloading"])
    journal.mark_submitting(b, None, False)  # committed before its POST, and `a` with it
    assert seen() == ("completed", ["submitting", "running", "downloading", "completed"])

    journal.mark_running(b, "task-b", None)
    journal.mark_downloading(b, "http://127.0.0.1:1/b.mp4", None, None, 1)
    journal.mark_completed(b, "videos/b.mp4", 10)
    assert reader.execute("SELECT state FROM jobs WHERE job_id = ?", (b,)).fetchone()[0] == (
        "downloading"
    )
    journal.close()  # commits what waits
    assert reader.execute("SELECT state FROM jobs WHERE job_id = ?", (b,)).fetchone()[0] == (
        "completed"
    )
    reader.close()


def test_an_older_journal_loses_the_state_index_every_transition_paid_for(tmp_path):
    folder = tmp_path / "out"
    Journal(folder).close()
    with sqlite3.connect(folder / Journal.FILE) as db:  # as versions before it made it
        db.execute("DROP INDEX jobs_seq")
        db.execute("CREATE INDEX jobs_state ON jobs (state, seq)")
    db.close()
    journal = Journal(folder)
    names = {r[0] for r in journal.db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "jobs_state" not in names and "jobs_seq" in names
    journal.sync(manifest(tmp_path))
    plan = journal.db.execute(
        "EXPLAIN QUERY PLAN SELECT job_id FROM jobs "
        "WHERE active = 1 AND state = 'pending' AND seq > ? ORDER BY seq LIMIT 64",
        (-1,),
    ).fetchall()
    assert "jobs_seq" in str(plan)  # pending pages walk seq, no sort and no full scan
    assert [r.job_id for r in journal.pending_page(-1, 10)] == ["a-16x9-6s-r1", "b-16x9-6s-r1"]
    journal.close()
