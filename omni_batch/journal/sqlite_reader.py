"""Reading a SQLite journal without writing it: the reports' snapshot (``ReadOnlyJournal``) and
how many of some jobs a folder already started (``started_counter``, for --only/--limit).

Opens ``journal.sqlite`` read-only, without the folder's lock: works while a run writes.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from omni_batch.errors import StateError
from omni_batch.journal.base import RETIRED, ColumnFacts, JournalReader, StartedCount
from omni_batch.journal.sqlite import SqliteJournal

READ_CACHE_KIB = 256  # SQLite page cache of a report's read of the journal
REVIEW_COLUMNS = ("pick", "score", "note", "reviewed_at")
_ACTIVE = "active = 1"
_TAIL = 1 << 40  # a retired row's place: after every row of the manifest (seq < 2**40)


class ReadOnlyJournal:
    """One read snapshot of ``folder``'s journal (a context manager): the report's rows, a
    slice at a time, its meta and its counts. Errors are StateErrors naming the file."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / SqliteJournal.FILE
        self._db: sqlite3.Connection | None = None
        self._sql: dict[str, str] = {}

    def __enter__(self) -> ReadOnlyJournal:
        self._db = self._connect()
        try:
            with self._reading():
                self._db.execute("BEGIN")  # one read snapshot, even while a run writes
                self._sql = self._columns(self._db)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "use ReadOnlyJournal as a context manager"
        return self._db

    def _connect(self) -> sqlite3.Connection:
        folder, path = self.folder, self.path
        if not path.is_file() and (folder / "events.jsonl").is_file():
            raise StateError(
                f"{folder}: no journal.sqlite here; the same `omni-batch run` command rebuilds "
                "it from events.jsonl"
            )
        if not path.is_file():
            raise StateError(
                f"{folder}: no journal.sqlite here; is this an omni-batch output folder?"
            )
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
            # the reports read the journal once, in order: a small page cache does (the default
            # 2 MB, and as much again for each sort of the gallery's order, grew with the journal)
            db.execute(f"PRAGMA cache_size = -{READ_CACHE_KIB}")
            db.execute(f"PRAGMA temp.cache_size = -{READ_CACHE_KIB}")
            return db
        except sqlite3.Error as exc:
            raise StateError(f"{path}: cannot open the journal: {exc}") from None

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: cannot read the journal: {exc}") from None

    @staticmethod
    def _columns(db: sqlite3.Connection) -> dict[str, str]:
        """Column → SQL; a column a journal of an older version does not have reads NULL."""
        have = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
        sql = {c: c for c in have}  # `active` is in every version
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'reviews'").fetchone():
            for c in REVIEW_COLUMNS:  # a journal older than reviews has none
                sql[c] = f"(SELECT r.{c} FROM reviews r WHERE r.job_id = jobs.job_id)"
        return sql

    def _expr(self, column: str) -> str:
        return self._sql.get(column, "NULL")

    def _retired(self) -> str:
        """The retired rows kept (an older journal has no task_ids)."""
        return f"active = 0 AND (state != 'pending' OR {self._expr('task_ids')} IS NOT NULL)"

    def _page_order(self) -> str:
        """ORDER BY for the gallery's order: prompt rows in report order (a prompt where its
        first job is), its jobs by repeat (missing last), then in report order."""
        place = f"(active = 0) * {_TAIL} + seq"
        first = f"min({place}) OVER (PARTITION BY {self._expr('prompt_id')})"
        repeat = self._expr("repeat")
        return f"{first}, {repeat} IS NULL, {repeat}, {place}"

    # -- what the reports read ------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        with self._reading():
            row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def facts(self, columns: Sequence[str], fractional: Iterable[str] = ()) -> ColumnFacts:
        """Of the report's rows: their number, each column's values, one value of each (of a
        ``fractional`` column, one with a fraction if any has one)."""
        fractional = set(fractional)

        def sample(column: str) -> str:
            sql = self._expr(column)
            if column in fractional:
                fraction = f"CASE WHEN {sql} != CAST({sql} AS INTEGER) THEN {sql} END"
                return f"coalesce(max({fraction}), max({sql}))"
            return f"max({sql})"

        wanted = [
            "count(*)",
            *(f"count({self._expr(c)})" for c in columns),
            *(sample(c) for c in columns),
        ]
        where = f"({_ACTIVE}) OR ({self._retired()})"
        with self._reading():
            row = self.db.execute(f"SELECT {', '.join(wanted)} FROM jobs WHERE {where}").fetchone()
        n = len(columns)
        present, values = row[1 : 1 + n], row[1 + n :]
        present_of = dict(zip(columns, present, strict=True))
        return ColumnFacts(row[0], present_of, dict(zip(columns, values, strict=True)))

    def rows(
        self, columns: Sequence[str], chunk: int, *, gallery: bool = False
    ) -> Iterator[list[tuple[Any, ...]]]:
        """The report's rows, ``chunk`` at a time: the manifest's jobs in its order, then the
        retired ones (``gallery``: in the gallery's order, see _page_order). At least one chunk,
        maybe empty; each chunk comes from one query (no chunk mixes the two)."""
        selected = ", ".join(self._expr(c) for c in columns)
        queries = [
            f"SELECT {selected} FROM jobs WHERE {w} ORDER BY seq"
            for w in (_ACTIVE, self._retired())
        ]
        if gallery:
            where = f"({_ACTIVE}) OR ({self._retired()})"
            queries = [f"SELECT {selected} FROM jobs WHERE {where} ORDER BY {self._page_order()}"]
        first = True
        for query in queries:
            with self._reading():
                cursor = self.db.execute(query)
            while True:
                with self._reading():
                    rows = cursor.fetchmany(chunk)
                if not rows and not first:
                    break
                first = False
                yield rows
                if not rows:
                    break

    def counts(self) -> dict[str, int]:
        """Jobs of the manifest per journal state, and ``retired``: jobs no longer in the
        manifest, kept in the report."""
        with self._reading():
            rows = self.db.execute(
                "SELECT state, count(*) FROM jobs WHERE active = 1 GROUP BY state"
            ).fetchall()
            retired = self.db.execute(f"SELECT count(*) FROM jobs WHERE {self._retired()}")
            rows.append((RETIRED, retired.fetchone()[0]))
        return {state: n for state, n in rows}


def _is_a_reader(reader: ReadOnlyJournal) -> JournalReader:
    return reader  # type-checked: ReadOnlyJournal satisfies the JournalReader protocol


@contextlib.contextmanager
def started_counter(folder: Path | None) -> Iterator[StartedCount | None]:
    """How many of some job ids ``folder``'s journal already has past pending; None when there
    is no journal to read (no folder, no file, or one that will not open: the run itself says
    what is wrong with it). An unreadable query counts none."""
    if folder is None or not (folder / SqliteJournal.FILE).is_file():
        yield None
        return
    try:
        db = sqlite3.connect(f"file:{folder / SqliteJournal.FILE}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error:
        yield None
        return

    def started(job_ids: list[str]) -> int:
        marks = ",".join("?" * len(job_ids))
        try:
            return int(
                db.execute(
                    f"SELECT count(*) FROM jobs WHERE state != 'pending' AND job_id IN ({marks})",
                    job_ids,
                ).fetchone()[0]
            )
        except sqlite3.Error:
            return 0

    try:
        yield started
    finally:
        db.close()
