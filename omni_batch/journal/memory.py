"""A journal held in memory: the same transitions and queries as the SQLite one, nothing on
disk. For the engine's unit tests (and anything else that wants a run without a folder).

It keeps a row per job, so it is for small batches; durability is moot (a transition is
"committed" the moment it is made), and there are no video files for it to look at.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omni_batch.errors import StateError, UsageError
from omni_batch.journal.base import (
    IN_FLIGHT,
    KEEP,
    NOTE_MAX,
    STATES,
    WITH_TASK,
    JobRow,
    Journal,
    Review,
    VideoCheck,
    body_hash,
    check_review,
    completed_change,
    failed_change,
)
from omni_batch.planning.jobs import Job


@dataclass
class _Row:
    """One job, as the SQLite journal's row holds it."""

    job_id: str
    seq: int
    body_hash: str
    prompt_id: str
    model: str
    prompt: str
    aspect_ratio: str
    duration: int
    resolution: str
    repeat: int
    tags: dict[str, str]
    vars: dict[str, str]
    source: str
    active: bool = True
    state: str = "pending"
    task_id: str | None = None
    business_id: str | None = None
    attempts: int = 0
    polls: int = 0
    possible_duplicate: bool = False
    http_status: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    request_id: str | None = None
    video_url: str | None = None
    expires_at: float | None = None
    video_path: str | None = None
    bytes: int | None = None
    submitted_at: float | None = None
    completed_at: float | None = None
    updated_at: float | None = None
    verified: bool | None = None
    verify_message: str | None = None
    video_width: int | None = None
    video_height: int | None = None
    video_duration_s: float | None = None
    task_ids: list[str] = field(default_factory=list)  # every task id it ever had
    task_status: str | None = None  # what the API last said of task_id: failed, gone, None
    account: str | None = None

    @classmethod
    def of(cls, job: Job, seq: int) -> _Row:
        return cls(
            job.job_id, seq, body_hash(job.body), job.prompt_id, job.model, job.prompt,
            job.aspect_ratio, job.duration, job.resolution, job.repeat, dict(job.tags),
            dict(job.vars), job.source,
        )  # fmt: skip

    def take_body(self, new: _Row) -> None:
        """sync: the manifest's current body and place (a job sent keeps its own: refused
        before this if it changed)."""
        self.active, self.seq, self.body_hash = True, new.seq, new.body_hash
        self.prompt_id, self.model, self.prompt = new.prompt_id, new.model, new.prompt
        self.aspect_ratio, self.duration, self.resolution = (
            new.aspect_ratio,
            new.duration,
            new.resolution,
        )
        self.repeat, self.tags, self.vars, self.source = new.repeat, new.tags, new.vars, new.source

    def job_row(self) -> JobRow:
        body = {
            "model": self.model,
            "prompt": self.prompt,
            "aspect_ratio": self.aspect_ratio,
            "duration": self.duration,
            "resolution": self.resolution,
        }
        return JobRow(
            job_id=self.job_id, seq=self.seq, state=self.state, body=body, task_id=self.task_id,
            business_id=self.business_id, attempts=self.attempts, polls=self.polls,
            possible_duplicate=self.possible_duplicate, video_url=self.video_url,
            expires_at=self.expires_at, submitted_at=self.submitted_at,
            error_type=self.error_type, account=self.account,
        )  # fmt: skip

    @property
    def kept(self) -> bool:
        """Kept when it leaves the manifest (retired): it was sent, or given a task."""
        return self.state != "pending" or bool(self.task_ids)


class MemoryJournal:
    """A ``Journal`` in memory; ``events`` holds what the SQLite one writes to events.jsonl."""

    def __init__(self, folder: str | Path = "<memory>"):
        self.folder = Path(folder)  # named in messages only
        self.recovered: str | None = None
        self.left_manifest = 0
        self.left_in_flight = 0
        self.left_submitting = 0
        self.events: list[dict[str, Any]] = []
        self.closed = False
        self._jobs: dict[str, _Row] = {}  # in the order they were first added
        self._meta: dict[str, str] = {
            "schema": "1",
            "run_key": secrets.token_hex(4),
            "created_at": str(time.time()),
        }
        self._reviews: dict[str, Review] = {}
        self._only: dict[str, list[str]] = {}
        self._var_names: set[str] = set()
        self._tag_names: set[str] = set()
        self._slice_left: int | None = None

    def close(self) -> None:
        self.closed = True

    def commit(self) -> None:
        """Nothing waits: every transition is in the moment it is made."""

    # -- meta and events ------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        return self._meta.get(key)

    def set_meta(self, key: str, value: str) -> None:
        self._meta[key] = value

    def event(self, kind: str, **fields: Any) -> None:
        record = {"t": round(time.time(), 3), "event": kind}
        record.update({k: v for k, v in fields.items() if v is not None})
        self.events.append(record)

    # -- loading the manifest -------------------------------------------------------------------
    def sync(self, jobs: Iterable[Job], batch: int = 2000) -> int:
        """As SqliteJournal.sync: add the manifest's jobs, refuse a sent job whose body changed,
        retire those that left it. Returns the number of jobs in the manifest."""
        incoming = {}
        for seq, job in enumerate(jobs):
            incoming[job.job_id] = _Row.of(job, seq)
        for new in incoming.values():
            old = self._jobs.get(new.job_id)
            if (
                old is not None
                and old.body_hash not in ("", new.body_hash)
                and old.state != "pending"
            ):
                raise StateError(
                    f"{self.folder}: job {new.job_id!r} ({new.source}) was already {old.state} "
                    "with other parameters; the manifest changed since this folder was run. Use "
                    "a new --out folder, or restore the manifest"
                )
        leaving = [
            r for r in self._jobs.values() if r.active and r.kept and r.job_id not in incoming
        ]
        self.left_manifest = len(leaving)
        self.left_in_flight = sum(r.state in WITH_TASK for r in leaving)
        self.left_submitting = sum(r.state == "submitting" for r in leaving)
        for row in self._jobs.values():
            row.active = False
        for new in incoming.values():
            old = self._jobs.get(new.job_id)
            if old is None:
                self._jobs[new.job_id] = new
            else:
                old.take_body(new)
        return len(incoming)

    def set_slice(
        self,
        only: dict[str, list[str]] | None = None,
        limit: int | None = None,
        var_names: Iterable[str] = (),
        tag_names: Iterable[str] = (),
    ) -> None:
        self._only = dict(only or {})
        self._var_names, self._tag_names = set(var_names), set(tag_names)
        self._slice_left = limit

    def _in_slice(self, row: _Row) -> bool:
        either = not (self._var_names or self._tag_names)  # names unknown: a var or a tag
        for name, values in self._only.items():
            if name in ("aspect_ratio", "duration"):
                if str(getattr(row, name)) not in values:
                    return False
                continue
            found = [
                m.get(name)
                for m, names in ((row.vars, self._var_names), (row.tags, self._tag_names))
                if either or name in names
            ]
            if not any(v is not None and v in values for v in found):
                return False
        return True

    def limit_slice(self, limit: int) -> None:
        if self._slice_left is None or limit < self._slice_left:
            self._slice_left = limit

    def _sliced_pending(self, after_seq: int = -1) -> list[_Row]:
        rows = [
            r
            for r in self._jobs.values()
            if r.active and r.state == "pending" and r.seq > after_seq and self._in_slice(r)
        ]
        rows.sort(key=lambda r: r.seq)
        if self._slice_left is not None:
            rows = rows[: max(self._slice_left, 0)]
        return rows

    def reopen(self, retry_failed: bool) -> tuple[int, int]:
        """As SqliteJournal.reopen: failed jobs whose task may hold a paid video are polled
        again; with ``retry_failed``, those without a live task go back to pending."""
        queued = polled = 0
        now = time.time()
        if retry_failed:
            for r in self._jobs.values():
                if (
                    r.active
                    and r.state == "failed"
                    and (r.task_id is None or r.task_status is not None)
                    and r.error_type != "unrecognised_answer"
                ):
                    r.state, r.task_id, r.business_id, r.task_status = "pending", None, None, None
                    r.http_status = r.error_type = r.error_message = r.request_id = None
                    r.video_url, r.expires_at, r.updated_at = None, None, now
                    queued += 1
                    self._event(r.job_id, "pending", reason="retry-failed", requeued=True)
        for r in self._jobs.values():
            if r.state == "failed" and r.task_id is not None and r.task_status != "failed":
                r.state, r.error_type, r.error_message, r.http_status = "running", None, None, None
                r.updated_at = now
                polled += 1
                self._event(r.job_id, "running", reason="polled again")
        return polled, queued

    def completed_videos(self) -> Iterator[tuple[str, str, int]]:
        for r in list(self._jobs.values()):
            if r.active and r.state == "completed" and r.video_path is not None:
                yield r.job_id, r.video_path, r.bytes or 0

    def adopt_videos(self, found: Iterable[tuple[str, str, int]]) -> int:
        """Never rebuilt from events: nothing to adopt."""
        return 0

    def requeue(self, job_ids: Iterable[str], reason: str) -> int:
        now, n = time.time(), 0
        for job_id in dict.fromkeys(job_ids):
            r = self._jobs.get(job_id)
            if r is None or r.state != "completed":
                continue  # only a completed job goes back
            r.state, r.updated_at = "downloading", now
            self._event(job_id, "downloading", reason=reason)
            n += 1
        return n

    # -- queries --------------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for r in self._jobs.values():
            if r.active or (r.state in WITH_TASK and r.task_id is not None):
                out[r.state] += 1
        return out

    def pending_page(self, after_seq: int, limit: int) -> list[JobRow]:
        if self._slice_left is not None:
            limit = min(limit, self._slice_left)
            if limit <= 0:
                return []
        rows = self._sliced_pending(after_seq)[:limit]
        if self._slice_left is not None:
            self._slice_left -= len(rows)
        return [r.job_row() for r in rows]

    def pending_variants(self) -> Iterator[tuple[str, str, int]]:
        for r in self._sliced_pending():
            yield r.model, r.resolution, r.duration

    def pending_groups(self) -> Iterator[tuple[str, str, int, int]]:
        groups = Counter(self.pending_variants())
        for (model, resolution, duration), n in sorted(groups.items()):
            yield model, resolution, duration, n

    def billed_variants(self) -> Iterator[tuple[str, str, str, str, int]]:
        for r in list(self._jobs.values()):
            if r.task_id is not None and r.task_status != "failed":
                yield r.job_id, r.state, r.model, r.resolution, r.duration

    def pending_count(self) -> int:
        return sum(r.active and r.state == "pending" for r in self._jobs.values())

    def in_flight(self) -> Iterator[JobRow]:
        rows = [
            r
            for r in self._jobs.values()
            if (r.active and r.state in IN_FLIGHT)
            or (not r.active and r.state in WITH_TASK and r.task_id is not None)
        ]
        for r in sorted(rows, key=lambda r: r.seq):
            yield r.job_row()

    def task_owner(self, task_id: str) -> str | None:
        return next((r.job_id for r in self._jobs.values() if r.task_id == task_id), None)

    def known_task(self, accounts: list[str | None]) -> tuple[str, str] | None:
        best: _Row | None = None
        for r in self._jobs.values():
            if r.task_id is None or r.business_id is None or r.account not in accounts:
                continue
            if best is None or (r.submitted_at or 0) > (best.submitted_at or 0):
                best = r
        if best is None or best.task_id is None or best.business_id is None:
            return None
        return best.task_id, best.business_id

    def known_jobs(self, job_ids: Iterable[str]) -> list[str]:
        return [j for j in job_ids if j in self._jobs]

    def row(self, job_id: str) -> dict[str, Any]:
        """Everything the journal holds of one job (tests look at it)."""
        return dict(vars(self._jobs[job_id]))

    # -- transitions ----------------------------------------------------------------------------
    def _event(self, job_id: str, state: str, **fields: Any) -> None:
        self.event("state", job_id=job_id, state=state, **fields)

    def _update(self, job_id: str, state: str, event: dict[str, Any], **fields: Any) -> None:
        row = self._jobs.get(job_id)
        if row is None:
            return  # as an UPDATE of no row
        for name, value in fields.items():
            setattr(row, name, value)
        row.state, row.updated_at = state, time.time()
        self._event(job_id, state, **event)

    def mark_submitting(
        self,
        job_id: str,
        business_id: str | None,
        possible_duplicate: bool,
        account: str | None = None,
    ) -> None:
        row = self._jobs.get(job_id)
        if row is None:
            return
        self._update(
            job_id, "submitting",
            {"business_id": business_id, "account": account,
             "possible_duplicate": possible_duplicate or None},
            attempts=row.attempts + 1, business_id=business_id, account=account,
            possible_duplicate=row.possible_duplicate or possible_duplicate,
        )  # fmt: skip

    def mark_running(
        self, job_id: str, task_id: str, request_id: str | None, adopted: bool = False
    ) -> None:
        row = self._jobs.get(job_id)
        if row is None:
            return
        self._update(
            job_id, "running",
            {"task_id": task_id, "request_id": request_id, "adopted": adopted or None},
            task_id=task_id, request_id=request_id, submitted_at=time.time(),
            task_ids=[*row.task_ids, task_id], task_status=None,
        )  # fmt: skip

    def keep_task(self, job_id: str, task_id: str, request_id: str | None) -> None:
        row = self._jobs.get(job_id)
        if row is None:
            return  # as an UPDATE of no row
        if task_id not in row.task_ids:
            row.task_ids = [*row.task_ids, task_id]
        row.possible_duplicate = True
        self.event("stray_task", job_id=job_id, task_id=task_id, request_id=request_id)

    def mark_pending(self, job_id: str, reason: str) -> None:
        self._update(job_id, "pending", {"reason": reason})

    def mark_downloading(
        self,
        job_id: str,
        video_url: str,
        expires_at: float | None,
        completed_at: float | None,
        polls: int,
    ) -> None:
        self._update(
            job_id, "downloading",
            {"video_url": video_url, "expires_at": expires_at, "polls": polls},
            video_url=video_url, expires_at=expires_at, completed_at=completed_at or time.time(),
            polls=polls,
        )  # fmt: skip

    def mark_completed(
        self, job_id: str, video_path: str, size: int, check: VideoCheck | None = None
    ) -> None:
        fields, event = completed_change(video_path, size, check)
        self._update(job_id, "completed", event, **fields)

    def mark_failed(
        self,
        job_id: str,
        *,
        error_type: str,
        message: str,
        http_status: int | None = None,
        request_id: str | None = None,
        polls: int | None = None,
        possible_duplicate: bool = False,
        task: str | None = None,
    ) -> None:
        fields, event = failed_change(
            error_type=error_type, message=message, http_status=http_status,
            request_id=request_id, polls=polls, possible_duplicate=possible_duplicate, task=task,
        )  # fmt: skip
        self._update(job_id, "failed", event, **fields)

    # -- reviews --------------------------------------------------------------------------------
    def reviews(self) -> dict[str, Review]:
        return dict(self._reviews)

    def reviews_of(self, job_ids: Iterable[str]) -> dict[str, Review]:
        return {j: self._reviews[j] for j in job_ids if j in self._reviews}

    def set_review(
        self, job_id: str, *, pick: Any = KEEP, score: Any = KEEP, note: Any = KEEP
    ) -> Review:
        wrong = check_review(pick, score, note)
        if wrong:
            raise UsageError(f"{job_id}: {wrong[0]}")
        if job_id not in self._jobs:
            raise UsageError(f"{self.folder}: no job {job_id!r} in this output folder")
        old = self._reviews.get(job_id, Review(job_id))
        new = Review(
            job_id,
            old.pick if pick is KEEP else pick,
            old.score if score is KEEP else score,
            old.note if note is KEEP else note[:NOTE_MAX],
            round(time.time(), 3),
        )
        self._reviews[job_id] = new
        review = {"pick": new.pick, "score": new.score, "note": new.note}
        self.event("review", job_id=job_id, review=review, reviewed_at=new.reviewed_at)
        return new


def _is_a_journal(journal: MemoryJournal) -> Journal:
    return journal  # type-checked: MemoryJournal satisfies the Journal protocol
