"""Rebuilding the journal from ``events.jsonl``: every committed transition is an event line,
written once its commit is done, carrying ``n`` (the journal's transition counter) and what the
transition set. A job row's ``ev`` is the ``n`` of the last transition it holds, so a line is
applied only to a row that lacks it: a journal that was lost, or lost its last commits with its
``-wal`` file, is brought back to what the events say, and never moved backwards.

Streams the file a line at a time (flat memory for any number of jobs); one transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omni_batch import crash

EVENTS = "events.jsonl"
_N = b', "n": '  # where a state line's counter starts: the third key of every state line
# meta a rebuilt journal needs back from events.jsonl: where the run's videos are stored (a rebuilt
# journal that forgot it would look for them in the folder, find none and buy them again)
KEPT_META = ("store",)
_HISTORY = ("report.csv", "report.parquet", "failures.csv", "gallery.html")

_PLACEHOLDER = (
    "INSERT OR IGNORE INTO jobs (job_id, seq, active, body_hash, prompt_id, model, prompt, "
    "aspect_ratio, duration, resolution, repeat, tags, vars, source) VALUES "
    "(:job_id, -1, 0, '', '', '', '', '', 0, '', 0, '{}', '{}', 'events.jsonl')"
)  # a job the manifest may no longer hold: sync() fills in its body and activates it
_CLEARED = (
    "http_status = NULL, error_type = NULL, error_message = NULL, request_id = NULL, "
    "video_url = NULL, expires_at = NULL"
)
_SET = {
    "submitting": (
        "state = 'submitting', attempts = attempts + 1, "  # each line is applied once
        "business_id = :business_id, account = :account, "
        "possible_duplicate = max(possible_duplicate, :possible_duplicate), "
        "body_hash = CASE WHEN body_hash = '' THEN coalesce(:body, '') ELSE body_hash END"
    ),
    "running": (
        "state = 'running', task_id = :task_id, request_id = :request_id, submitted_at = :t, "
        "task_ids = coalesce(task_ids || ' ', '') || :task_id, "
        "task_status = NULL"
    ),
    "running again": (  # Journal.reopen: a failed job's task polled again
        "state = 'running', error_type = NULL, error_message = NULL, http_status = NULL"
    ),
    "pending": "state = 'pending'",
    "pending again": (  # Journal.reopen with retry_failed: sent again as a new task
        f"state = 'pending', task_id = NULL, business_id = NULL, task_status = NULL, {_CLEARED}"
    ),
    "downloading": (
        "state = 'downloading', video_url = :video_url, expires_at = :expires_at, "
        "completed_at = :t, polls = coalesce(:polls, polls)"
    ),
    "downloading again": "state = 'downloading'",  # a video lost on disk
    "completed": (
        "state = 'completed', video_path = :video_path, bytes = :bytes, "
        "verified = coalesce(:verified, verified), "
        "verify_message = CASE WHEN :verified IS NULL THEN verify_message "
        "ELSE coalesce(:verify, '') END, "
        "video_width = coalesce(:width, video_width), "
        "video_height = coalesce(:height, video_height), "
        "video_duration_s = coalesce(:duration_s, video_duration_s)"
    ),
    "failed": (
        "state = 'failed', error_type = :error_type, error_message = :message, "
        "http_status = :http_status, request_id = coalesce(:request_id, request_id), "
        "polls = coalesce(:polls, polls), task_status = :task, "
        "possible_duplicate = max(possible_duplicate, :possible_duplicate)"
    ),
}
# a stray task (Journal.keep_task): its id joins task_ids unless already there, the job is
# flagged; nothing else of the job changes (its state, its task, its video, updated_at)
KEEP_TASK = (
    "task_ids = CASE WHEN instr(' ' || coalesce(task_ids, '') || ' ', ' ' || :task_id || ' ') "
    "THEN task_ids ELSE coalesce(task_ids || ' ', '') || :task_id END, possible_duplicate = 1"
)
_STRAY = (  # applied whatever the row's counter: keeping an id twice keeps it once
    f"UPDATE jobs SET {KEEP_TASK}, ev = max(ev, coalesce(:n, ev)) WHERE job_id = :job_id"
)
_SQL = {
    (kind, ordered): f"UPDATE jobs SET {sets}, updated_at = :t, ev = coalesce(:n, ev) "
    + ("WHERE job_id = :job_id AND ev < :n" if ordered else "WHERE job_id = :job_id")
    for kind, sets in _SET.items()
    for ordered in (True, False)
}


def _text(value: Any, limit: int = 1000) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


def _int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 1 << 62:
        return value
    return None


def _num(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _flag(value: Any) -> int | None:
    return int(value) if isinstance(value, bool) else None


def _kind(record: dict[str, Any]) -> str | None:
    state = record.get("state")
    if state == "running" and not record.get("task_id"):
        return "running again"
    if state == "pending" and record.get("requeued"):
        return "pending again"
    if state == "downloading" and not record.get("video_url"):
        return "downloading again"
    return state if state in _SET else None


def _params(record: dict[str, Any], job_id: str) -> dict[str, Any]:
    """Every named parameter any statement uses, from the line (a wrong type reads as absent).
    The video's path is the store's for the job id, whatever the line says: a path from a file
    anyone can edit must never name a file the run would replace or delete."""
    task = record.get("task")
    return {
        "job_id": job_id,
        "n": _int(record.get("n")),
        "t": _num(record.get("t")),
        "business_id": _text(record.get("business_id")),
        "account": _text(record.get("account"), 64),
        "possible_duplicate": int(record.get("possible_duplicate") is True),
        "body": _text(record.get("body"), 64),
        "task_id": _text(record.get("task_id")),
        "request_id": _text(record.get("request_id")),
        "video_url": _text(record.get("video_url"), 10_000),
        "expires_at": _num(record.get("expires_at")),
        "polls": _int(record.get("polls")),
        "video_path": _video_path(record.get("video_path"), job_id),
        "bytes": _int(record.get("bytes")),
        "verified": _flag(record.get("verified")),
        "verify": _text(record.get("verify")),
        "width": _int(record.get("width")),
        "height": _int(record.get("height")),
        "duration_s": _num(record.get("duration_s")),
        "error_type": _text(record.get("error_type")) or "unknown",
        "message": _text(record.get("message")) or "",
        "http_status": _int(record.get("http_status")),
        "task": task if task in ("failed", "gone") else None,
    }


def _counter(line: bytes) -> int | None:
    """A state line's ``n`` without parsing the whole line (None: an older line without one)."""
    at = line.find(_N)
    if at < 0:
        return None
    start = at + len(_N)
    end = line.find(b",", start)
    try:
        return _int(int(line[start:end]))
    except ValueError:
        return None


def has_transitions(folder: Path) -> bool:
    """Whether events.jsonl records at least one state change."""
    try:
        with (folder / EVENTS).open("rb") as fh:
            return any(b'"event": "state"' in line for line in fh)
    except OSError:
        return False


def evidence(folder: Path) -> list[str]:
    """What in ``folder`` shows an earlier run: its report files, or videos."""
    found = [name for name in _HISTORY if (folder / name).exists()]
    videos = folder / "videos"
    if videos.is_dir() and any(p.suffix == ".mp4" for p in videos.iterdir()):
        found.insert(0, "videos/")
    return found


@dataclass(slots=True)
class Replayed:
    """What a replay did: lines read, transitions applied, the highest counter seen."""

    lines: int = 0
    applied: int = 0
    skipped: int = 0  # lines that were not JSON or not a transition we know
    top: int = 0
    reviews: int = 0  # review lines applied (omni-batch review / pick)


_PICKS = ("picked", "rejected")


def _video_path(given: object, job_id: str) -> str:
    """Where the line says the job's video is stored, if that is a store's link for this job
    (the folder's ``videos/JOB.mp4``, or an object URL ending so); else the folder's: the file
    is anyone's to edit, and a report must not link elsewhere on its say-so."""
    local = f"videos/{job_id}.mp4"  # LocalStore.link
    if (
        isinstance(given, str)
        and len(given) <= 2000
        and given.startswith(("https://", "http://"))
        and given.endswith(f"/{local}")
        and "\n" not in given
    ):
        return given
    return local


def kept_meta(folder: Path, key: str) -> str | None:
    """The last value events.jsonl holds for the kept meta ``key`` (KEPT_META): what a journal
    rebuilt from it will know, read before it is rebuilt. Streams the file."""
    found = None
    try:
        with (Path(folder) / EVENTS).open("rb") as handle:
            for line in handle:
                if b'"event": "meta"' in line:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(record, dict) and record.get("key") == key:
                        value = record.get("value")
                        found = value if isinstance(value, str) else found
    except OSError:
        return None
    return found


def _meta(db: sqlite3.Connection, line: bytes) -> None:
    """A kept meta line (KEPT_META) applied; anything else on such a line is skipped."""
    try:
        record = json.loads(line)
    except ValueError:
        return
    if not isinstance(record, dict) or record.get("event") != "meta":
        return
    key, value = record.get("key"), record.get("value")
    if key in KEPT_META and isinstance(value, str):
        db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))


def _review(db: sqlite3.Connection, line: bytes) -> int:
    """A review line (Journal.set_review) applied as it was saved; a line whose values are
    not what set_review writes is skipped (the file is anyone's to edit). Returns 1 if applied."""
    try:
        record = json.loads(line)
    except ValueError:
        return 0
    if not isinstance(record, dict) or record.get("event") != "review":
        return 0
    job_id, review, at = record.get("job_id"), record.get("review"), _num(record.get("reviewed_at"))
    if not (isinstance(job_id, str) and job_id and isinstance(review, dict) and at is not None):
        return 0
    pick, score, note = review.get("pick"), review.get("score"), review.get("note")
    if pick is not None and pick not in _PICKS:
        return 0
    if score is not None and (_int(score) is None or not 1 <= score <= 5):
        return 0
    if not isinstance(note, str):
        return 0
    db.execute(
        "INSERT OR REPLACE INTO reviews VALUES (?, ?, ?, ?, ?)",
        (job_id, pick, score, note[:2000], at),
    )
    return 1


def _stray(db: sqlite3.Connection, line: bytes) -> int | None:
    """A stray task line (Journal.keep_task) applied; one without a job id and a task id is
    skipped (the file is anyone's to edit). Returns its counter (0: none), None if skipped."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("event") != "stray_task":
        return None
    job_id, task_id = _text(record.get("job_id")), _text(record.get("task_id"))
    if job_id is None or task_id is None or " " in task_id:
        return None
    n = _int(record.get("n"))
    params = {"job_id": job_id, "task_id": task_id, "n": n}
    db.execute(_PLACEHOLDER, params)  # a job given a task is kept, in the manifest or not
    db.execute(_STRAY, params)
    return n or 0


def replay(
    db: sqlite3.Connection, folder: Path, offset: int, *, fresh: bool, above: int
) -> Replayed:
    """Apply the transitions of events.jsonl from byte ``offset`` that the journal lacks, in one
    transaction the caller commits. ``above``: the journal's highest counter; a line at or
    below it is already in. ``fresh``: the journal was rebuilt empty, so lines from versions
    that wrote no counter are applied too, in file order."""
    done = Replayed(top=above)
    try:
        handle = (folder / EVENTS).open("rb")
    except OSError:
        return done
    with handle:
        handle.seek(offset)
        for line in handle:
            done.lines += 1
            if b'"event": "review"' in line:
                done.reviews += _review(db, line)
                continue
            if b'"event": "meta"' in line:
                _meta(db, line)
                continue
            if b'"event": "stray_task"' in line:
                n = _counter(line)
                if (n is None and not fresh) or (n is not None and n <= above):
                    continue  # one the journal holds already
                kept = _stray(db, line)
                if kept is None:
                    done.skipped += 1
                else:
                    done.applied += 1
                    done.top = max(done.top, kept)
                continue
            if b'"event": "state"' not in line:
                continue
            n = _counter(line)
            if (n is None and not fresh) or (n is not None and n <= above):
                continue  # an older line (with the journal kept), or one already committed
            try:
                record = json.loads(line)
            except ValueError:
                done.skipped += 1  # e.g. a last line cut short by a crash
                continue
            job_id = record.get("job_id") if isinstance(record, dict) else None
            kind = _kind(record) if isinstance(job_id, str) and job_id else None
            if kind is None or not isinstance(job_id, str):
                done.skipped += 1
                continue
            params = _params(record, job_id)
            db.execute(_PLACEHOLDER, params)
            db.execute(_SQL[kind, params["n"] is not None], params)
            done.applied += 1
            done.top = max(done.top, params["n"] or 0)
            crash.point("mid_rebuild")
    return done


def adopt_videos(db: sqlite3.Connection, found: Iterable[tuple[str, str, int]]) -> int:
    """After a rebuild: a whole video in the store (``found``: job id, link, bytes) for a job
    the events never saw finish (lines lost with the journal) is recorded as completed: it was
    paid for and is kept, not bought again. Returns how many."""
    adopted = 0
    for job_id, link, size in found:
        params = {"job_id": job_id, "path": link, "bytes": size}
        db.execute(_PLACEHOLDER, params)
        adopted += db.execute(
            "UPDATE jobs SET state = 'completed', video_path = :path, bytes = :bytes "
            "WHERE job_id = :job_id AND state = 'pending'",
            params,
        ).rowcount
    return adopted
