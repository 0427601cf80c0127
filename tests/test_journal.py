"""The SQLite journal's own promises: what reaches the file and when (deferred `completed`,
fsync'ed money transitions), reopening, rebuilding from events.jsonl, older files. The rules
every journal keeps are in test_journal_contract.py."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import pytest

from omni_batch.errors import StateError
from omni_batch.journal import STATES, SqliteJournal
from omni_batch.outputs.report import build_report, neutralise
from omni_batch.running.download import requeue_lost_videos
from omni_batch.store import LocalStore
from tests.conftest import two_prompt_jobs


def test_state_survives_reopening_and_in_flight_jobs_are_found_for_resume(tmp_path):
    folder = tmp_path / "out"
    journal = SqliteJournal(folder)
    journal.sync(two_prompt_jobs(tmp_path))
    journal.mark_submitting("a-16x9-6s-r1", "ob-x-a", False)
    journal.mark_submitting("b-16x9-6s-r1", None, False)
    journal.mark_running("b-16x9-6s-r1", "task-b", None)
    journal.close()
    again = SqliteJournal(folder)
    found = {r.job_id: r for r in again.in_flight()}
    assert (
        found["a-16x9-6s-r1"].state == "submitting"
        and found["a-16x9-6s-r1"].business_id == "ob-x-a"
    )
    assert found["b-16x9-6s-r1"].task_id == "task-b"
    assert again.pending_page(-1, 10) == []


def test_every_transition_is_an_event_and_the_report_reads_the_journal(tmp_path):
    folder = tmp_path / "out"
    journal = SqliteJournal(folder)
    journal.sync(two_prompt_jobs(tmp_path))
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
    journal = SqliteJournal(folder)
    journal.sync(two_prompt_jobs(tmp_path))
    a, b = "a-16x9-6s-r1", "b-16x9-6s-r1"
    journal.mark_submitting(a, None, False)
    journal.mark_running(a, "task-a", None)
    journal.mark_downloading(a, "http://127.0.0.1:1/a.mp4", None, None, 1)
    journal.mark_completed(a, "videos/a.mp4", 10)
    # the SQLite file itself: what another connection sees committed, row by row
    reader = sqlite3.connect(folder / SqliteJournal.FILE)

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
    SqliteJournal(folder).close()
    # the SQLite file itself, made as versions before it made it
    with sqlite3.connect(folder / SqliteJournal.FILE) as db:
        db.execute("DROP INDEX jobs_seq")
        db.execute("CREATE INDEX jobs_state ON jobs (state, seq)")
    db.close()
    journal = SqliteJournal(folder)
    names = {r[0] for r in journal.db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "jobs_state" not in names and "jobs_seq" in names
    journal.sync(two_prompt_jobs(tmp_path))
    plan = journal.db.execute(
        "EXPLAIN QUERY PLAN SELECT job_id FROM jobs "
        "WHERE active = 1 AND state = 'pending' AND seq > ? ORDER BY seq LIMIT 64",
        (-1,),
    ).fetchall()
    assert "jobs_seq" in str(plan)  # pending pages walk seq, no sort and no full scan
    assert [r.job_id for r in journal.pending_page(-1, 10)] == ["a-16x9-6s-r1", "b-16x9-6s-r1"]
    journal.close()


A, B = "a-16x9-6s-r1", "b-16x9-6s-r1"
_COMPARED = (
    "job_id, seq, active, body_hash, state, task_id, task_ids, task_status, business_id, "
    "attempts, polls, possible_duplicate, http_status, error_type, error_message, request_id, "
    "video_url, expires_at, video_path, bytes, verified, verify_message, video_width, "
    "video_height, video_duration_s, ev, submitted_at, completed_at"
)


class At:
    """A timestamp equal to another within the 10 ms an event line's time may differ by."""

    def __init__(self, t: float | None):
        self.t = t

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, At) or None in (self.t, other.t):
            return isinstance(other, At) and self.t is other.t is None
        return abs(self.t - other.t) <= 0.01

    def __repr__(self) -> str:
        return f"At({self.t})"


def rows(folder: Path) -> list[tuple]:
    # the SQLite file itself, every stored column: a rebuilt file must equal the original
    with sqlite3.connect(folder / SqliteJournal.FILE) as db:
        found = db.execute(f"SELECT {_COMPARED} FROM jobs ORDER BY job_id").fetchall()
    db.close()
    return [(*r[:-2], At(r[-2]), At(r[-1])) for r in found]


def every_kind_of_transition(tmp_path: Path, folder: Path) -> None:
    """a: sent flagged, failed, sent again, completed, its video lost; b: failed with its task
    (polled again), then completed and verified."""
    from omni_batch.running.verify import Probe

    journal = SqliteJournal(folder)
    journal.sync(two_prompt_jobs(tmp_path))
    journal.mark_submitting(A, "ob-1-a", True)
    journal.mark_pending(A, "stopped before sending")
    journal.mark_submitting(A, "ob-1-a", True)
    journal.mark_running(A, "task-a1", "rid-1")
    journal.mark_failed(A, error_type="generation_failed", message="no", polls=3, task="failed")
    journal.mark_submitting(B, "ob-1-b", False)
    journal.mark_running(B, "task-b", None)
    journal.mark_downloading(B, "http://cdn/b.mp4", 2e9, None, polls=2)
    journal.mark_failed(B, error_type="download_failed", message="cut", http_status=200)
    journal.close()
    journal = SqliteJournal(folder)
    assert journal.reopen(retry_failed=True) == (1, 1)  # b polled again, a sent again
    journal.mark_submitting(A, "ob-2-a", False)
    journal.mark_running(A, "task-a2", "rid-2", adopted=True)
    journal.mark_downloading(A, "http://cdn/a.mp4", None, None, polls=1)
    journal.mark_completed(A, f"videos/{A}.mp4", 7)
    journal.mark_downloading(B, "http://cdn/b2.mp4", 3e9, None, polls=4)
    journal.mark_completed(B, f"videos/{B}.mp4", 9, Probe(True, 1280, 720, 6.0))
    journal.close()
    journal = SqliteJournal(folder)
    assert requeue_lost_videos(journal, LocalStore(folder)) == 2  # neither file exists
    journal.close()


def test_task_ids_are_kept_and_a_possible_duplicate_stays_flagged_when_sent_again(tmp_path):
    folder = tmp_path / "out"
    every_kind_of_transition(tmp_path, folder)
    found = build_report(folder).set_index("job_id")  # what the journal's reader gives
    assert found.task_ids[A] == "task-a1 task-a2" and found.task_id[A] == "task-a2"
    assert found.possible_duplicate[A] and found.attempts[A] == 3  # still flagged; three POSTs
    assert found.task_ids[B] == "task-b" and found.status[B] == "running"  # its video lost


@pytest.mark.parametrize("how", ["deleted", "emptied", "random bytes"])
def test_a_lost_journal_is_rebuilt_from_its_events_exactly(tmp_path, how):
    folder = tmp_path / "out"
    every_kind_of_transition(tmp_path, folder)
    lost = rows(folder)
    journal = folder / SqliteJournal.FILE
    if how == "deleted":
        journal.unlink()
    else:
        journal.write_bytes(b"" if how == "emptied" else bytes(range(256)) * 64)
    rebuilt = SqliteJournal(folder)
    assert rebuilt.recovered and "rebuilt from events.jsonl" in rebuilt.recovered
    assert rows(folder) != lost  # bodies and order come from the manifest...
    rebuilt.sync(two_prompt_jobs(tmp_path))
    assert rows(folder) == lost  # ...and then nothing differs
    rebuilt.mark_submitting(B, None, False)  # the counter goes on from the events'
    assert rebuilt.db.execute("SELECT ev FROM jobs WHERE job_id = ?", (B,)).fetchone()[0] > max(
        r[25] for r in lost
    )
    rebuilt.close()


def stray_tasks(tmp_path: Path, folder: Path) -> None:
    """a: completed, then a stray task kept (twice); b: a stray task kept while submitting,
    then its own task, completed."""
    journal = SqliteJournal(folder)
    journal.sync(two_prompt_jobs(tmp_path))
    journal.mark_submitting(A, "ob-a", False)
    journal.mark_running(A, "task-a", "rid-a")
    journal.mark_downloading(A, "http://cdn/a.mp4", 2e9, None, polls=1)
    journal.mark_completed(A, f"videos/{A}.mp4", 7)  # deferred: committed with the next
    journal.keep_task(A, "task-stray", "rid-stray")
    journal.keep_task(A, "task-stray", "rid-stray")
    journal.mark_submitting(B, "ob-b", False)
    journal.keep_task(B, "task-b-stray", None)
    journal.mark_running(B, "task-b", None)
    journal.mark_downloading(B, "http://cdn/b.mp4", 2e9, None, polls=1)
    journal.mark_completed(B, f"videos/{B}.mp4", 9)
    journal.close()


def test_stray_tasks_are_event_lines_a_rebuilt_or_caught_up_journal_keeps(tmp_path):
    folder = tmp_path / "out"
    stray_tasks(tmp_path, folder)
    kept = rows(folder)
    found = build_report(folder).set_index("job_id")
    assert found.task_ids[A] == "task-a task-stray" and found.task_id[A] == "task-a"
    assert found.task_ids[B] == "task-b-stray task-b" and found.task_id[B] == "task-b"
    assert found.possible_duplicate.all() and set(found.status) == {"completed"}
    lines = [json.loads(x) for x in (folder / "events.jsonl").read_text().splitlines()]
    stray = [e for e in lines if e["event"] == "stray_task"]
    assert [(e["job_id"], e["task_id"], e.get("request_id")) for e in stray] == [
        (A, "task-stray", "rid-stray"), (A, "task-stray", "rid-stray"), (B, "task-b-stray", None)
    ]  # fmt: skip
    assert [e["n"] for e in lines if "n" in e] == sorted(e["n"] for e in lines if "n" in e)
    (folder / SqliteJournal.FILE).unlink()
    rebuilt = SqliteJournal(folder)
    assert rebuilt.recovered and "rebuilt from events.jsonl" in rebuilt.recovered
    rebuilt.sync(two_prompt_jobs(tmp_path))
    rebuilt.close()
    assert rows(folder) == kept
    # a journal that lost its last commits (the stray tasks among them) catches up
    behind = tmp_path / "behind"
    journal = SqliteJournal(behind)
    journal.sync(two_prompt_jobs(tmp_path))
    journal.close()
    early = (behind / SqliteJournal.FILE).read_bytes()
    stray_tasks(tmp_path, behind)
    final = rows(behind)
    (behind / SqliteJournal.FILE).write_bytes(early)
    caught_up = SqliteJournal(behind)
    assert caught_up.recovered and "behind events.jsonl" in caught_up.recovered
    caught_up.close()
    assert rows(behind) == final and final[0][:-3] == kept[0][:-3]


def test_a_journal_behind_its_events_catches_up_and_one_ahead_is_never_moved_back(tmp_path):
    folder = tmp_path / "out"
    journal = SqliteJournal(folder)
    journal.sync(two_prompt_jobs(tmp_path))
    journal.close()
    behind = (folder / SqliteJournal.FILE).read_bytes()  # as a lost -wal would leave it
    every_kind_of_transition(tmp_path, folder)
    final = rows(folder)
    (folder / SqliteJournal.FILE).write_bytes(behind)
    caught_up = SqliteJournal(folder)
    assert caught_up.recovered and "behind events.jsonl" in caught_up.recovered
    assert rows(folder) == final
    caught_up.close()
    # events lacking the journal's last transition (a kill between its commit and its line)
    events = folder / "events.jsonl"
    lines = events.read_text(encoding="utf-8").splitlines(keepends=True)
    events.write_text("".join(lines[:5]), encoding="utf-8")
    # the SQLite file itself, with its record of how much of events.jsonl it holds removed
    with sqlite3.connect(folder / SqliteJournal.FILE) as db:
        db.execute("DELETE FROM meta WHERE key = 'events_size'")  # replay it all
    db.close()
    again = SqliteJournal(folder)
    assert again.recovered is None and rows(folder) == final
    again.close()


def test_events_without_counters_from_an_older_version_still_rebuild_a_lost_journal(tmp_path):
    folder = tmp_path / "out"
    journal = SqliteJournal(folder)
    journal.sync(two_prompt_jobs(tmp_path))
    journal.mark_submitting(A, "ob-a", False)
    journal.mark_running(A, "task-a", "rid")
    journal.close()
    events = folder / "events.jsonl"
    old = [
        {k: v for k, v in json.loads(line).items() if k not in ("n", "body", "business_id")}
        for line in events.read_text(encoding="utf-8").splitlines()
    ]
    events.write_text("".join(json.dumps(r) + "\n" for r in old) + '{"cut short', "utf-8")
    (folder / SqliteJournal.FILE).unlink()
    rebuilt = SqliteJournal(folder)
    rebuilt.sync(two_prompt_jobs(tmp_path, "a changed prompt"))  # its body unknown: not refused
    row = next(r for r in rebuilt.in_flight() if r.job_id == A)
    assert (row.state, row.task_id, row.attempts) == ("running", "task-a", 1)
    rebuilt.close()


def test_a_rebuilt_journal_still_refuses_a_changed_two_prompt_jobs(tmp_path):
    folder = tmp_path / "out"
    journal = SqliteJournal(folder)
    journal.sync(two_prompt_jobs(tmp_path))
    row = journal.pending_page(-1, 1)[0]  # as the engine takes a job to send
    journal.mark_submitting(row.job_id, None, False)
    journal.close()
    (folder / SqliteJournal.FILE).unlink()
    rebuilt = SqliteJournal(folder)
    with pytest.raises(StateError, match="was already submitting with other parameters"):
        rebuilt.sync(two_prompt_jobs(tmp_path, "alpha shot, changed"))
    rebuilt.close()


def test_the_task_id_and_the_submitting_mark_are_on_disk_before_the_journal_returns(
    tmp_path, monkeypatch
):
    """`submitting` (before the POST) and `running` (the task id) fdatasync the -wal, so a
    power loss cannot take them back; the other transitions need not, and do not."""
    synced: list[str] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    folder = tmp_path / "out"
    journal = SqliteJournal(folder)
    journal.sync(two_prompt_jobs(tmp_path))
    calls = []
    for step in (
        lambda: journal.mark_submitting(A, None, False),
        lambda: journal.mark_running(A, "task-a", None),
        lambda: journal.mark_downloading(A, "http://cdn/a.mp4", None, None, 1),
        lambda: journal.mark_completed(A, "videos/a.mp4", 5),
        lambda: journal.mark_submitting(B, None, False),  # commits `completed` with it
        lambda: journal.mark_running(B, "task-b", None),
        lambda: journal.mark_failed(B, error_type="x", message="y"),
    ):
        before = len(synced)
        step()
        calls.append(len(synced) - before)
    journal.close()
    assert calls == [1, 1, 0, 0, 1, 1, 0]
    assert set(synced) == {str((folder / "journal.sqlite-wal").resolve())}


def test_a_video_in_place_whose_lines_were_lost_with_the_journal_is_kept_not_bought_again(
    tmp_path,
):
    folder = tmp_path / "out"
    journal = SqliteJournal(folder)
    journal.sync(two_prompt_jobs(tmp_path))
    journal.mark_submitting(B, None, False)
    journal.close()
    (folder / "videos").mkdir()
    (folder / "videos" / f"{A}.mp4").write_bytes(b"x" * 100)  # A's lines are not in the events
    (folder / "videos" / ".b.mp4.part").write_bytes(b"x")  # a partial download is no video
    (folder / SqliteJournal.FILE).unlink()
    rebuilt = SqliteJournal(folder)
    rebuilt.sync(two_prompt_jobs(tmp_path))
    store = LocalStore(folder)
    found = [(v.name, store.link(v.name), v.size) for v in store.stored()]
    assert found == [(A, f"videos/{A}.mp4", 100)]
    assert rebuilt.adopt_videos(found) == 1
    assert rebuilt.recovered and "1 of them from videos in place" in rebuilt.recovered
    assert rebuilt.adopt_videos(found) == 0  # once per rebuild
    assert rebuilt.counts() == {**dict.fromkeys(STATES, 0), "completed": 1, "submitting": 1}
    assert [r.job_id for r in rebuilt.pending_page(-1, 10)] == []
    rebuilt.close()
    assert build_report(folder).set_index("job_id").loc[A, "bytes"] == 100


def test_the_report_reads_a_journal_of_an_older_version_without_the_new_columns(tmp_path):
    folder = tmp_path / "out"
    journal = SqliteJournal(folder)
    journal.sync(two_prompt_jobs(tmp_path))
    journal.close()
    # the SQLite file itself, made as versions before task_ids made it
    with sqlite3.connect(folder / SqliteJournal.FILE) as db:
        for column in ("task_ids", "task_status", "ev"):
            db.execute(f"ALTER TABLE jobs DROP COLUMN {column}")
    db.close()
    frame = build_report(folder)
    assert len(frame) == 2 and frame.task_ids.isna().all()
    SqliteJournal(folder).close()  # a run adds them back
    assert build_report(folder).task_ids.isna().all()


def test_hostile_event_lines_rebuild_what_they_can_and_touch_no_file_outside(tmp_path):
    folder = tmp_path / "out"
    journal = SqliteJournal(folder)
    journal.sync(two_prompt_jobs(tmp_path))
    journal.close()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    lines = [
        {"t": 1.0, "event": "state", "n": 2, "job_id": A, "state": "completed", "bytes": 1,
         "video_path": "../victim.txt"},
        {"t": [], "event": "state", "n": 10**30, "job_id": B, "state": "running", "task_id": 5},
        {"t": 1.0, "event": "state", "n": 3, "job_id": {"x": 1}, "state": "running"},
        {"t": 1.0, "event": "state", "n": 4, "job_id": B, "state": "exploded"},
        {"t": 1.0, "event": "state", "n": 5, "job_id": B, "state": "failed", "http_status": "x",
         "task": "maybe", "polls": True, "message": None},
    ]  # fmt: skip
    text = (
        "".join(json.dumps(r) + "\n" for r in lines) + "\x00\xff not json\n" + '{"event": "state"'
    )
    (folder / "events.jsonl").write_text(text, encoding="utf-8")
    (folder / SqliteJournal.FILE).unlink()
    rebuilt = SqliteJournal(folder)
    rebuilt.sync(two_prompt_jobs(tmp_path))
    assert requeue_lost_videos(rebuilt, LocalStore(folder)) == 1  # A's video is not in the store
    rebuilt.close()
    assert victim.read_text() == "keep me"
    found = {r[0]: r for r in rows(folder)}
    assert found[A][18] == f"videos/{A}.mp4"
    assert found[B][4:8] == ("failed", None, None, None) and found[B][12:14] == (None, "unknown")
