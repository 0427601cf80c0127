"""journal stage: the run's single source of truth, behind the ``Journal`` protocol.

``open_journal(folder)`` opens the folder's SQLite journal (the one writer, under the folder's
lock); ``open_reader(folder)`` a read-only snapshot of it for the reports; ``MemoryJournal``
keeps a run in memory (the engine's unit tests).
"""

from __future__ import annotations

from pathlib import Path

from omni_batch.journal import replay
from omni_batch.journal.base import (
    DEFER_S,
    DONE,
    IN_FLIGHT,
    KEEP,
    NOTE_MAX,
    PICKS,
    RETIRED,
    STATES,
    WITH_TASK,
    ColumnFacts,
    JobRow,
    JobState,
    Journal,
    JournalReader,
    Review,
    StartedCount,
    body_hash,
    check_review,
)
from omni_batch.journal.memory import MemoryJournal
from omni_batch.journal.sqlite import SqliteJournal, lock_folder
from omni_batch.journal.sqlite_reader import ReadOnlyJournal, started_counter

JOURNAL_FILE = SqliteJournal.FILE  # the journal's file in an output folder


def open_journal(folder: str | Path, events: bool = True) -> SqliteJournal:
    """The output folder's journal (made, rebuilt or caught up as needed), its lock held until
    ``close()``: one writer per folder."""
    return SqliteJournal(Path(folder), events=events)


def journal_in(folder: str | Path) -> bool:
    """Whether ``folder`` holds a journal, or the events.jsonl that rebuilds one."""
    folder = Path(folder)
    return (folder / JOURNAL_FILE).is_file() or (folder / replay.EVENTS).is_file()


def open_reader(folder: str | Path) -> ReadOnlyJournal:
    """A read-only snapshot of the folder's journal, as a context manager (works during a run)."""
    return ReadOnlyJournal(folder)


__all__ = [
    "DEFER_S",
    "DONE",
    "IN_FLIGHT",
    "JOURNAL_FILE",
    "KEEP",
    "NOTE_MAX",
    "PICKS",
    "RETIRED",
    "STATES",
    "WITH_TASK",
    "ColumnFacts",
    "JobRow",
    "JobState",
    "Journal",
    "JournalReader",
    "MemoryJournal",
    "ReadOnlyJournal",
    "Review",
    "SqliteJournal",
    "StartedCount",
    "body_hash",
    "check_review",
    "journal_in",
    "lock_folder",
    "open_journal",
    "open_reader",
    "started_counter",
]
