"""The rules every journal keeps (SQLite and in memory alike), through the Journal protocol:
transitions, resume queries, slices, retired jobs, money queries, reviews, meta."""

from __future__ import annotations

from typing import Any

import pytest

from omni_batch.errors import StateError, UsageError
from omni_batch.journal import KEEP, STATES, JobState, Journal
from omni_batch.planning.manifest import load_manifest
from tests.conftest import two_prompt_jobs

A, B = "a-16x9-6s-r1", "b-16x9-6s-r1"


def sent(journal: Any, job_id: str, task_id: str, account: str | None = None) -> None:
    journal.mark_submitting(job_id, f"ob-{job_id}", False, account)
    journal.mark_running(job_id, task_id, f"rid-{task_id}")


def completed_a(journal: Any, tmp_path: Any) -> None:
    """The two-prompt jobs synced, job A sent, finished and its video stored (videos/A.mp4)."""
    journal.sync(two_prompt_jobs(tmp_path))
    sent(journal, A, "task-a")
    journal.mark_downloading(A, "http://cdn/a.mp4", 2e9, None, polls=1)
    journal.mark_completed(A, f"videos/{A}.mp4", 1234)


def by_id(rows: Any) -> dict[str, Any]:
    return {r.job_id: r for r in rows}


def test_both_implementations_are_journals(any_journal):
    assert isinstance(any_journal, Journal)
    assert list(STATES) == [s.value for s in JobState]
    assert any_journal.meta("run_key")  # a per-folder key for client_business_ids
    any_journal.set_meta("name", "demo")
    assert any_journal.meta("name") == "demo" and any_journal.meta("nothing") is None


def test_sync_is_idempotent_and_pages_come_in_manifest_order(any_journal, tmp_path):
    journal = any_journal
    jobs = two_prompt_jobs(tmp_path)
    assert journal.sync(jobs) == 2 and journal.sync(jobs) == 2
    page = journal.pending_page(-1, 10)
    assert [r.job_id for r in page] == [A, B]
    assert page[0].body == jobs[0].body and page[0].state == "pending"
    assert journal.pending_page(page[0].seq, 10)[0].job_id == B  # the next page starts after
    assert journal.counts() == {**dict.fromkeys(STATES, 0), "pending": 2}
    assert journal.known_jobs([A, "nope", B]) == [A, B]


def test_a_changed_body_is_refused_once_a_job_left_pending(any_journal, tmp_path):
    journal = any_journal
    journal.sync(two_prompt_jobs(tmp_path))
    sent(journal, A, "task-1")
    with pytest.raises(StateError, match=r"'a-16x9-6s-r1'.*running with other parameters"):
        journal.sync(two_prompt_jobs(tmp_path, "alpha shot, changed"))


def test_a_pending_job_simply_takes_the_new_body(any_journal, tmp_path):
    journal = any_journal
    journal.sync(two_prompt_jobs(tmp_path))
    journal.sync(two_prompt_jobs(tmp_path, "alpha shot, changed"))
    assert journal.pending_page(-1, 1)[0].body["prompt"] == "alpha shot, changed"


def test_a_job_goes_pending_submitting_running_downloading_completed(any_journal, tmp_path):
    journal = any_journal
    journal.sync(two_prompt_jobs(tmp_path))
    journal.mark_submitting(A, "ob-a", True, "main")
    row = by_id(journal.in_flight())[A]
    assert (row.state, row.business_id, row.attempts, row.account) == (
        "submitting",
        "ob-a",
        1,
        "main",
    )
    assert row.possible_duplicate and row.task_id is None
    assert [r.job_id for r in journal.pending_page(-1, 10)] == [B]  # never handed out twice
    journal.mark_running(A, "task-a", "rid-a")
    row = by_id(journal.in_flight())[A]
    assert (row.state, row.task_id) == ("running", "task-a") and row.submitted_at
    assert journal.task_owner("task-a") == A and journal.task_owner("task-x") is None
    journal.mark_downloading(A, "http://cdn/a.mp4", 2e9, None, polls=3)
    row = by_id(journal.in_flight())[A]
    assert (row.state, row.video_url, row.expires_at, row.polls) == (
        "downloading",
        "http://cdn/a.mp4",
        2e9,
        3,
    )
    journal.mark_completed(A, "videos/a.mp4", 1234)
    journal.commit()
    assert A not in by_id(journal.in_flight())  # done: never polled again
    assert journal.counts() == {**dict.fromkeys(STATES, 0), "pending": 1, "completed": 1}


def test_a_refusal_that_created_nothing_puts_the_job_back_to_pending(any_journal, tmp_path):
    journal = any_journal
    journal.sync(two_prompt_jobs(tmp_path))
    journal.mark_submitting(A, "ob-a", False)
    journal.mark_pending(A, "402: no balance")
    assert [r.job_id for r in journal.pending_page(-1, 10)] == [A, B]
    assert journal.pending_page(-1, 1)[0].attempts == 1  # the attempt is counted


def test_timeouts_are_polled_again_and_failures_only_requeued_when_asked(any_journal, tmp_path):
    journal = any_journal
    journal.sync(two_prompt_jobs(tmp_path))
    for job_id, kind, task in ((A, "wait_timeout", None), (B, "generation_failed", "failed")):
        sent(journal, job_id, f"task-{job_id}")
        journal.mark_failed(job_id, error_type=kind, message="x", task=task)
    assert journal.reopen(retry_failed=False) == (1, 0)
    assert journal.counts()["running"] == 1 and journal.counts()["failed"] == 1
    assert by_id(journal.in_flight())[A].task_id == f"task-{A}"  # the same task, polled again
    assert journal.reopen(retry_failed=True) == (0, 1)
    assert journal.counts()["pending"] == 1
    again = journal.pending_page(-1, 10)[0]
    assert again.job_id == B and again.task_id is None and again.error_type is None


def test_a_possible_duplicate_stays_flagged_through_failure_and_retry(any_journal, tmp_path):
    journal = any_journal
    journal.sync(two_prompt_jobs(tmp_path))
    journal.mark_submitting(A, "ob-1", True)
    journal.mark_failed(A, error_type="submit_ambiguous", message="timeout", http_status=None)
    assert journal.reopen(retry_failed=True) == (0, 1)
    row = journal.pending_page(-1, 1)[0]
    assert row.possible_duplicate and row.attempts == 1
    journal.mark_submitting(A, "ob-2", False)  # sent again, not flagged this time: stays
    assert by_id(journal.in_flight())[A].possible_duplicate


def test_an_unrecognised_answer_is_never_sent_again(any_journal, tmp_path):
    journal = any_journal
    journal.sync(two_prompt_jobs(tmp_path))
    journal.mark_submitting(A, "ob-1", False)
    journal.mark_failed(A, error_type="unrecognised_answer", message="2xx without a task id")
    assert journal.reopen(retry_failed=True) == (0, 0)
    assert [r.job_id for r in journal.pending_page(-1, 10)] == [B]


def test_money_queries_count_billed_tasks_and_what_is_left_to_submit(any_journal, tmp_path):
    journal = any_journal
    journal.sync(two_prompt_jobs(tmp_path))
    sent(journal, A, "task-a")
    assert [v[:2] for v in journal.billed_variants()] == [(A, "running")]
    assert list(journal.pending_groups()) == [("gemini_omni", "720P", 6, 1)]
    assert list(journal.pending_variants()) == [("gemini_omni", "720P", 6)]
    journal.mark_failed(A, error_type="generation_failed", message="x", task="failed")
    assert list(journal.billed_variants()) == []  # a failed generation is refunded


def test_known_task_is_the_latest_of_the_accounts_asked(any_journal, tmp_path):
    journal = any_journal
    journal.sync(two_prompt_jobs(tmp_path))
    sent(journal, A, "task-a", "one")
    assert journal.known_task(["one"]) == ("task-a", f"ob-{A}")
    assert journal.known_task(["two"]) is None  # lookups are per account
    sent(journal, B, "task-b", None)  # a job of an older journal, without its account
    assert journal.known_task([None]) == ("task-b", f"ob-{B}")
    assert journal.known_task(["one", None]) == ("task-b", f"ob-{B}")  # the latest


def sliced_jobs(tmp_path: Any) -> list[Any]:
    path = tmp_path / "slice.yaml"
    path.write_text(
        "vars: {product: [shoe, bag, hat]}\ndefaults: {aspect_ratio: ['16:9', '9:16']}\n"
        "prompts:\n  - {id: ad, prompt: 'a {product}', tags: {stage: draft}}\n"
        "  - {id: plain, prompt: 'plain', tags: {stage: final}}\n",
        encoding="utf-8",
    )
    return list(load_manifest(path).jobs())


@pytest.mark.parametrize(
    ("only", "limit", "expected"),
    [
        ({"product": ["shoe"]}, None, 2),
        ({"product": ["shoe", "bag"], "aspect_ratio": ["9:16"]}, None, 2),
        ({"stage": ["final"]}, None, 2),
        ({"duration": ["6"]}, 3, 3),
        (None, 5, 5),
    ],
)
def test_a_slice_hands_out_only_its_jobs_and_no_more_than_its_limit(
    any_journal, tmp_path, only, limit, expected
):
    journal = any_journal
    jobs = sliced_jobs(tmp_path)
    journal.sync(jobs)
    journal.set_slice(only, limit, var_names=["product"], tag_names=["stage"])
    assert len(list(journal.pending_variants())) == expected
    assert sum(g[3] for g in journal.pending_groups()) == expected
    got = []
    after = -1
    while page := journal.pending_page(after, 1):  # a page at a time, as the feeder reads
        got += page
        after = page[-1].seq
    assert len(got) == expected
    assert [r.seq for r in got] == sorted(r.seq for r in got)
    if limit is not None:  # the limit is over the whole run
        assert journal.pending_page(-1, 10) == []


def test_limit_slice_only_lowers_the_limit(any_journal, tmp_path):
    journal = any_journal
    journal.sync(sliced_jobs(tmp_path))
    journal.set_slice(None, 4)
    journal.limit_slice(6)
    assert len(list(journal.pending_variants())) == 4
    journal.limit_slice(1)
    assert len(journal.pending_page(-1, 10)) == 1 and journal.pending_page(-1, 10) == []


def test_a_job_that_left_the_manifest_is_retired_and_its_task_still_finished(any_journal, tmp_path):
    journal = any_journal
    journal.sync(two_prompt_jobs(tmp_path))
    sent(journal, A, "task-a")
    journal.sync(two_prompt_jobs(tmp_path)[1:])  # `a` left the manifest, `b` never sent
    assert (journal.left_manifest, journal.left_in_flight, journal.left_submitting) == (1, 1, 0)
    assert by_id(journal.in_flight())[A].task_id == "task-a"  # a paid video is never abandoned
    assert journal.counts()["running"] == 1 and journal.counts()["pending"] == 1
    assert [r.job_id for r in journal.pending_page(-1, 10)] == [B]
    journal.sync(two_prompt_jobs(tmp_path))  # back in the manifest: active again
    assert journal.left_manifest == 0


def test_a_retired_job_left_mid_submit_is_not_settled(any_journal, tmp_path):
    journal = any_journal
    journal.sync(two_prompt_jobs(tmp_path))
    journal.mark_submitting(A, "ob-a", False)
    journal.sync(two_prompt_jobs(tmp_path)[1:])
    assert journal.left_submitting == 1
    assert A not in by_id(journal.in_flight())  # resuming it could send it again


def test_reviews_are_saved_checked_and_kept_field_by_field(any_journal, tmp_path):
    journal = any_journal
    journal.sync(two_prompt_jobs(tmp_path))
    first = journal.set_review(A, pick="picked", score=4, note="nice")
    assert (first.pick, first.score, first.note) == ("picked", 4, "nice") and first.reviewed_at
    second = journal.set_review(A, score=5, note=KEEP)
    assert (second.pick, second.score, second.note) == ("picked", 5, "nice")
    assert journal.reviews_of([A, B]) == {A: second} and journal.reviews() == {A: second}
    with pytest.raises(UsageError, match="score"):
        journal.set_review(A, score=9)
    with pytest.raises(UsageError, match="no job 'nope'"):
        journal.set_review("nope", pick="picked")
    assert journal.reviews()[A] == second  # nothing saved by a refused change


def test_a_completed_video_the_store_lost_goes_back_to_downloading(any_journal, tmp_path):
    journal = any_journal
    completed_a(journal, tmp_path)
    journal.commit()
    assert list(journal.completed_videos()) == [(A, f"videos/{A}.mp4", 1234)]
    # only a completed job goes back, once: an unknown id or a pending job is left alone
    assert journal.requeue([A, A, B, "no-such-job"], "video lost on disk") == 1
    row = by_id(journal.in_flight())[A]
    assert (row.state, row.task_id, row.video_url) == ("downloading", "task-a", "http://cdn/a.mp4")
    assert list(journal.completed_videos()) == []
    assert journal.requeue([A], "again") == 0
    assert journal.counts() == {**dict.fromkeys(STATES, 0), "pending": 1, "downloading": 1}


def test_a_journal_that_was_never_rebuilt_adopts_nothing(any_journal, tmp_path):
    journal = any_journal
    journal.sync(two_prompt_jobs(tmp_path))

    def found():
        raise AssertionError("the store is not even listed")
        yield

    assert journal.adopt_videos(found()) == 0
    assert journal.counts() == {**dict.fromkeys(STATES, 0), "pending": 2}


_KEPT = ("state", "task_id", "task_ids", "possible_duplicate", "video_path", "bytes")


def reported(journal: Any, job_id: str) -> dict[str, Any]:
    """``_KEPT`` of one job as the report reads it: through the journal's reader (the one in
    memory has none: its row)."""
    from omni_batch.journal import MemoryJournal, SqliteJournal, open_reader
    from omni_batch.journal.postgres_reader import PostgresReader

    journal.commit()
    if isinstance(journal, MemoryJournal):
        row = journal.row(job_id)
        return {**{c: row[c] for c in _KEPT}, "task_ids": " ".join(row["task_ids"]) or None}
    reader = (
        open_reader(journal.folder)
        if isinstance(journal, SqliteJournal)
        else PostgresReader(journal.db.info.dsn, journal.run)
    )
    with reader:
        rows = [r for chunk in reader.rows(("job_id", *_KEPT), 100) for r in chunk]
    (found,) = [dict(zip(_KEPT, r[1:], strict=True)) for r in rows if r[0] == job_id]
    return {**found, "possible_duplicate": bool(found["possible_duplicate"])}


def test_a_stray_task_is_kept_once_and_flagged_and_nothing_else_changes(any_journal, tmp_path):
    journal = any_journal
    completed_a(journal, tmp_path)
    before = reported(journal, A)
    assert (before["task_ids"], before["possible_duplicate"]) == ("task-a", False)
    # another runner's POST for the job, answered after this one settled it
    journal.keep_task(A, "task-stray", "rid-stray")
    journal.keep_task(A, "task-stray", "rid-stray")  # twice: kept once
    after = reported(journal, A)
    assert after == {**before, "task_ids": "task-a task-stray", "possible_duplicate": True}
    assert journal.counts() == {**dict.fromkeys(STATES, 0), "pending": 1, "completed": 1}
    assert list(journal.completed_videos()) == [(A, f"videos/{A}.mp4", 1234)]
    assert journal.task_owner("task-a") == A  # the job's task is still its own
    # a job in flight keeps its task too; one the journal does not hold is left alone
    journal.mark_submitting(B, "ob-b", False)
    journal.keep_task(B, "task-b-stray", None)
    row = by_id(journal.in_flight())[B]
    assert (row.state, row.task_id, row.possible_duplicate) == ("submitting", None, True)
    assert reported(journal, B)["task_ids"] == "task-b-stray"
    journal.keep_task("no-such-job", "task-x", None)
    assert journal.known_jobs(["no-such-job"]) == []
