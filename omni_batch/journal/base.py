"""The journal's interface: the job states (the one list of them), the row the engine reads,
reviews, and ``Journal``, the protocol every journal (SQLite, in memory) satisfies.

``Journal`` is exactly what the run (engine, submitter, money, accounts, batch) and the review
tools ask of a journal; ``JournalReader`` is what the reports read, from a snapshot.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from omni_batch.planning.jobs import Job


class JobState(StrEnum):
    """A job's life (see architecture.md): pending → submitting → running → downloading →
    completed, or failed from any of them."""

    PENDING = "pending"
    SUBMITTING = "submitting"  # committed (and fsync'ed) before the POST
    RUNNING = "running"  # the task id, committed the moment it arrives
    DOWNLOADING = "downloading"
    COMPLETED = "completed"
    FAILED = "failed"


STATES: tuple[str, ...] = tuple(s.value for s in JobState)  # in the order of a job's life
IN_FLIGHT: tuple[str, ...] = ("submitting", "running", "downloading")  # sent, not yet settled
WITH_TASK: tuple[str, ...] = ("running", "downloading")  # a task to poll or a video to fetch
DONE: tuple[str, ...] = ("completed", "failed")
RETIRED = "retired"  # a job no longer in the manifest, kept (sent, or paid for): report status

# the longest a journal may hold a transition uncommitted (`completed`); the engine commits at
# least this often when nothing else does
DEFER_S = 1.0

PICKS = ("picked", "rejected")
NOTE_MAX = 2000  # characters a review note keeps
KEEP: Any = object()  # set_review: leave this field as it is


@dataclass(frozen=True, slots=True)
class Review:
    """A reviewer's verdict on one job."""

    job_id: str
    pick: str | None = None
    score: int | None = None
    note: str = ""
    reviewed_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id, "pick": self.pick, "score": self.score, "note": self.note,
            "reviewed_at": self.reviewed_at,
        }  # fmt: skip


def check_review(pick: Any = KEEP, score: Any = KEEP, note: Any = KEEP) -> list[str]:
    """What is wrong with review values (none: they can be saved)."""
    wrong = []
    if pick is not KEEP and pick is not None and pick not in PICKS:
        wrong.append(f"pick: {pick!r} is not one of picked, rejected or empty")
    if score not in (KEEP, None) and (type(score) is not int or not 1 <= score <= 5):
        wrong.append(f"score: {score!r} is not a whole number from 1 to 5")
    if note is not KEEP and not isinstance(note, str):
        wrong.append("note: must be text")
    return wrong


def body_hash(body: dict[str, Any]) -> str:
    """What a job id is bound to: a known id whose body changed once sent is refused."""
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, ensure_ascii=False).encode()
    ).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class JobRow:
    """What the engine needs of one journaled job."""

    job_id: str
    seq: int
    state: str
    body: dict[str, Any]
    task_id: str | None
    business_id: str | None
    attempts: int
    polls: int
    possible_duplicate: bool
    video_url: str | None
    expires_at: float | None
    submitted_at: float | None
    error_type: str | None
    account: str | None = None  # the account its submit went to (None: an older journal)


class VideoCheck(Protocol):
    """What probing a saved video found (running.verify.Probe)."""

    @property
    def ok(self) -> bool: ...
    @property
    def message(self) -> str: ...
    @property
    def width(self) -> int | None: ...
    @property
    def height(self) -> int | None: ...
    @property
    def duration_s(self) -> float | None: ...


@runtime_checkable
class Journal(Protocol):
    """The run's single source of truth: every job, its transitions, the run's meta and the
    reviews. One writer at a time. The money rules rest on two of its promises:
    ``mark_submitting`` is durable before it returns (the POST comes after), and so is
    ``mark_running`` (the task id), the moment the answer arrives."""

    recovered: str | None  # what opening had to repair, said once in the run's log
    left_manifest: int  # jobs that left the manifest at the last sync (kept as retired)
    left_in_flight: int  # ... of them with a task to finish
    left_submitting: int  # ... of them left mid-submit (not settled)

    def close(self) -> None: ...
    def commit(self) -> None: ...

    # meta and the event log
    def meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...
    def event(self, kind: str, **fields: Any) -> None: ...

    # loading the manifest and choosing this run's work
    def sync(self, jobs: Iterable[Job], batch: int = 2000) -> int: ...
    def set_slice(
        self,
        only: dict[str, list[str]] | None = None,
        limit: int | None = None,
        var_names: Iterable[str] = (),
        tag_names: Iterable[str] = (),
    ) -> None: ...
    def limit_slice(self, limit: int) -> None: ...
    def reopen(self, retry_failed: bool) -> tuple[int, int]: ...
    def completed_videos(self) -> Iterator[tuple[str, str, int]]: ...
    def requeue(self, job_ids: Iterable[str], reason: str) -> int: ...
    def adopt_videos(self, found: Iterable[tuple[str, str, int]]) -> int: ...

    # queries
    def counts(self) -> dict[str, int]: ...
    def pending_page(self, after_seq: int, limit: int) -> list[JobRow]: ...
    def pending_variants(self) -> Iterator[tuple[str, str, int]]: ...
    def pending_groups(self) -> Iterator[tuple[str, str, int, int]]: ...
    def billed_variants(self) -> Iterator[tuple[str, str, str, str, int]]: ...
    def in_flight(self) -> Iterator[JobRow]: ...
    def task_owner(self, task_id: str) -> str | None: ...
    def known_task(self, accounts: list[str | None]) -> tuple[str, str] | None: ...
    def known_jobs(self, job_ids: Iterable[str]) -> list[str]: ...

    # transitions
    def mark_submitting(
        self,
        job_id: str,
        business_id: str | None,
        possible_duplicate: bool,
        account: str | None = None,
    ) -> None: ...
    def mark_running(
        self, job_id: str, task_id: str, request_id: str | None, adopted: bool = False
    ) -> None: ...
    # a task this process's POST created for a job another runner settled or took (JobTaken
    # on mark_running): possibly billed, so its id joins task_ids (once) and the job is flagged
    # possible_duplicate, nothing else changed; committed, with a `stray_task` event
    def keep_task(self, job_id: str, task_id: str, request_id: str | None) -> None: ...
    def mark_pending(self, job_id: str, reason: str) -> None: ...
    def mark_downloading(
        self,
        job_id: str,
        video_url: str,
        expires_at: float | None,
        completed_at: float | None,
        polls: int,
    ) -> None: ...
    def mark_completed(
        self, job_id: str, video_path: str, size: int, check: VideoCheck | None = None
    ) -> None: ...
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
    ) -> None: ...

    # reviews
    def reviews(self) -> dict[str, Review]: ...
    def reviews_of(self, job_ids: Iterable[str]) -> dict[str, Review]: ...
    def set_review(
        self, job_id: str, *, pick: Any = KEEP, score: Any = KEEP, note: Any = KEEP
    ) -> Review: ...


@dataclass(frozen=True, slots=True)
class ColumnFacts:
    """Of the rows a report holds: how many, how many values each column has, and one value
    of each (a timestamp with a fraction when any has one): what fixes the table's dtypes."""

    rows: int
    present: dict[str, int]
    sample: dict[str, Any]


class JournalReader(Protocol):
    """A read-only snapshot of a journal, for the reports (works while a run writes).

    Columns are named as the journal's jobs are (``job_id``, ``state``, ``task_ids``, ``vars``,
    ``tags``, ``active``...) plus the review's (``pick``, ``score``, ``note``,
    ``reviewed_at``); a column an older journal lacks reads as None. The report's rows are the
    manifest's jobs in its order, then the retired ones kept (sent, or given a task)."""

    def meta(self, key: str) -> str | None: ...
    def counts(self) -> dict[str, int]: ...
    def facts(self, columns: Sequence[str], fractional: Iterable[str] = ()) -> ColumnFacts: ...
    def rows(
        self, columns: Sequence[str], chunk: int, *, gallery: bool = False
    ) -> Iterator[list[tuple[Any, ...]]]: ...


StartedCount = Callable[[list[str]], int]  # how many of these job ids left pending already


def completed_change(
    video_path: str, size: int, check: VideoCheck | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(columns, event line) of a `completed` transition: one copy for every journal."""
    columns: dict[str, Any] = {"video_path": video_path, "bytes": size}
    event: dict[str, Any] = {"bytes": size, "video_path": video_path}
    if check is not None:
        columns.update(
            verified=check.ok, verify_message=check.message, video_width=check.width,
            video_height=check.height, video_duration_s=check.duration_s,
        )  # fmt: skip
        event.update(
            verified=check.ok, verify=check.message or None, width=check.width,
            height=check.height, duration_s=check.duration_s,
        )  # fmt: skip
    return columns, event


def failed_change(
    *,
    error_type: str,
    message: str,
    http_status: int | None,
    request_id: str | None,
    polls: int | None,
    possible_duplicate: bool,
    task: str | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(columns, event line) of a `failed` transition: one copy for every journal. A request
    id or poll count that is None keeps the row's; ``possible_duplicate`` is sticky."""
    columns: dict[str, Any] = {
        "error_type": error_type, "error_message": message[:1000], "http_status": http_status,
        "task_status": task,
    }  # fmt: skip
    if possible_duplicate:  # sticky: never cleared here
        columns["possible_duplicate"] = True
    if request_id:
        columns["request_id"] = request_id
    if polls is not None:
        columns["polls"] = polls
    event = {
        "error_type": error_type, "http_status": http_status, "message": message[:1000],
        "request_id": request_id, "possible_duplicate": possible_duplicate or None,
        "polls": polls, "task": task,
    }  # fmt: skip
    return columns, event
