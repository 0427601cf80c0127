"""journal stage: the run's single source of truth, behind the ``Journal`` protocol.

``open_journal(folder)`` opens the folder's SQLite journal (the one writer, under the folder's
lock), ``open_journal("postgresql://...", run=NAME)`` a run's shared PostgreSQL journal (several
runners at once; psycopg imported only then); ``open_reader(folder)`` a read-only snapshot of
it for the reports; ``MemoryJournal`` keeps a run in memory (the engine's unit tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, overload

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

if TYPE_CHECKING:
    from omni_batch.journal.postgres import PostgresJournal
    from omni_batch.journal.postgres_reader import PostgresReader

JOURNAL_FILE = SqliteJournal.FILE  # the journal's file in an output folder
SHARED_SCHEMES = ("postgresql://", "postgres://")  # a journal target naming a database


def is_shared(target: str | Path) -> bool:
    """Whether ``target`` names a shared (PostgreSQL) journal rather than an output folder."""
    return isinstance(target, str) and target.lower().startswith(SHARED_SCHEMES)


@overload
def open_journal(
    target: Path, events: bool = True, run: str | None = None, runner: str | None = None
) -> SqliteJournal: ...
@overload
def open_journal(
    target: str, events: bool = True, run: str | None = None, runner: str | None = None
) -> SqliteJournal | PostgresJournal: ...
def open_journal(
    target: str | Path, events: bool = True, run: str | None = None, runner: str | None = None
) -> SqliteJournal | PostgresJournal:
    """The output folder's journal (made, rebuilt or caught up as needed), its lock held until
    ``close()``: one writer per folder. A ``postgresql://`` URL opens run ``run`` (default
    "default") of that database's shared journal instead: any number of runners at once, each
    named by ``runner`` (see PostgresJournal)."""
    if is_shared(target):
        from omni_batch.journal.postgres import PostgresJournal

        return PostgresJournal(str(target), run=run or "default", runner=runner)
    return SqliteJournal(Path(target), events=events)


def journal_in(folder: str | Path) -> bool:
    """Whether ``folder`` holds a journal, or the events.jsonl that rebuilds one."""
    folder = Path(folder)
    return (folder / JOURNAL_FILE).is_file() or (folder / replay.EVENTS).is_file()


@overload
def open_reader(target: Path, run: str | None = None) -> ReadOnlyJournal: ...
@overload
def open_reader(target: str, run: str | None = None) -> ReadOnlyJournal | PostgresReader: ...
def open_reader(target: str | Path, run: str | None = None) -> ReadOnlyJournal | PostgresReader:
    """A read-only snapshot of the folder's journal, as a context manager (works during a run);
    of run ``run`` of a shared journal for a ``postgresql://`` URL."""
    if is_shared(target):
        from omni_batch.journal.postgres_reader import PostgresReader

        return PostgresReader(str(target), run=run or "default")
    return ReadOnlyJournal(target)


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
    "is_shared",
    "journal_in",
    "lock_folder",
    "open_journal",
    "open_reader",
    "started_counter",
]
