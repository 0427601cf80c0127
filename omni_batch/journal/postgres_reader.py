"""Reading a shared PostgreSQL journal without writing it: the reports' snapshot of one run
(``PostgresReader``, the ``JournalReader`` that ``ReadOnlyJournal`` is for SQLite).

One REPEATABLE READ, READ ONLY transaction: a consistent snapshot while runners write. The rows
read as the SQLite reader's do (flags as 0/1, tags and vars as their JSON text).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any

import psycopg

from omni_batch.errors import StateError
from omni_batch.journal.base import RETIRED, ColumnFacts, JournalReader
from omni_batch.journal.postgres import redacted

_JOB_COLUMNS = frozenset((
    "job_id", "seq", "active", "body_hash", "prompt_id", "model", "prompt", "aspect_ratio",
    "duration", "resolution", "repeat", "tags", "vars", "source", "state", "task_id",
    "business_id", "attempts", "polls", "possible_duplicate", "http_status", "error_type",
    "error_message", "request_id", "video_url", "expires_at", "video_path", "bytes",
    "submitted_at", "completed_at", "updated_at", "verified", "verify_message", "video_width",
    "video_height", "video_duration_s", "task_ids", "task_status", "account",
))  # fmt: skip
_FLAGS = frozenset({"active", "possible_duplicate", "verified"})  # SQLite's 0/1
_REVIEW_COLUMNS = frozenset({"pick", "score", "note", "reviewed_at"})
_TAIL = 1 << 40  # a retired row's place: after every row of the manifest (seq < 2**40)
_FROM = "omni_batch.jobs j LEFT JOIN omni_batch.reviews r ON r.run = j.run AND r.job_id = j.job_id"
_ACTIVE = "j.active"
_RETIRED = "NOT j.active AND (j.state != 'pending' OR j.task_ids IS NOT NULL)"  # RETIRED_KEPT


class PostgresReader:
    """One read snapshot of run ``run`` at ``url`` (a context manager). Errors are
    StateErrors naming the database without its credentials."""

    def __init__(self, url: str, run: str = "default"):
        self.url, self.run = url, run
        self.where = f"{redacted(url)} (run {run!r})"
        self._db: psycopg.Connection[Any] | None = None

    def __repr__(self) -> str:
        return f"PostgresReader({self.where})"

    def __enter__(self) -> PostgresReader:
        try:
            self._db = psycopg.connect(self.url, connect_timeout=10)
        except psycopg.Error:
            raise StateError(f"{self.where}: cannot connect to the journal's database") from None
        try:
            with self._reading():
                self._db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                found = self._db.execute(
                    "SELECT 1 FROM omni_batch.runs WHERE run = %s", (self.run,)
                ).fetchone()
            if not found:
                with self._reading():
                    runs = [
                        str(r[0])
                        for r in self._db.execute(
                            "SELECT run FROM omni_batch.runs ORDER BY run LIMIT 21"
                        ).fetchall()
                    ]
                there = ", ".join(runs[:20]) + (", ..." if len(runs) > 20 else "")
                raise StateError(
                    f"{self.where}: no such run in this database (its runs: {there or 'none'}; "
                    "a run is named after its manifest's name, or --run NAME)"
                )
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
    def db(self) -> psycopg.Connection[Any]:
        assert self._db is not None, "use PostgresReader as a context manager"
        return self._db

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        try:
            yield
        except psycopg.errors.UndefinedTable:
            raise StateError(f"{self.where}: no omni-batch journal in this database") from None
        except psycopg.Error as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise StateError(f"{self.where}: cannot read the journal: {first}") from None

    @staticmethod
    def _expr(column: str) -> str:
        """Column → SQL; a column no journal has reads NULL."""
        if column in _FLAGS:
            return f"j.{column}::int"
        if column in _JOB_COLUMNS:
            return f"j.{column}"
        if column in _REVIEW_COLUMNS:
            return f"r.{column}"
        return "NULL"

    # -- what the reports read ------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        with self._reading():
            row = self.db.execute(
                "SELECT meta ->> %s FROM omni_batch.runs WHERE run = %s", (key, self.run)
            ).fetchone()
        return row[0] if row else None

    def facts(self, columns: Sequence[str], fractional: Iterable[str] = ()) -> ColumnFacts:
        """As ReadOnlyJournal.facts."""
        fractional = set(fractional)

        def sample(column: str) -> str:
            sql = self._expr(column)
            if column in fractional:
                fraction = f"CASE WHEN {sql} != trunc({sql}) THEN {sql} END"
                return f"coalesce(max({fraction}), max({sql}))"
            return f"max({sql})"

        wanted = [
            "count(*)",
            *(f"count({self._expr(c)})" for c in columns),
            *(sample(c) for c in columns),
        ]
        with self._reading():
            row = self.db.execute(
                f"SELECT {', '.join(wanted)} FROM {_FROM} WHERE j.run = %s "
                f"AND (({_ACTIVE}) OR ({_RETIRED}))",
                (self.run,),
            ).fetchone()
        assert row is not None
        n = len(columns)
        present, values = row[1 : 1 + n], row[1 + n :]
        present_of = dict(zip(columns, present, strict=True))
        return ColumnFacts(row[0], present_of, dict(zip(columns, values, strict=True)))

    def rows(
        self, columns: Sequence[str], chunk: int, *, gallery: bool = False
    ) -> Iterator[list[tuple[Any, ...]]]:
        """As ReadOnlyJournal.rows: the manifest's jobs in its order, then the retired ones
        (``gallery``: prompts where their first job is, jobs by repeat). Through a server-side
        cursor, ``chunk`` rows at a time; at least one chunk, maybe empty."""
        selected = ", ".join(self._expr(c) for c in columns)
        place = f"(NOT j.active)::int::bigint * {_TAIL} + j.seq"
        if gallery:
            order = (
                f"min({place}) OVER (PARTITION BY j.prompt_id), j.repeat IS NULL, j.repeat, {place}"
            )
            queries = [(f"({_ACTIVE}) OR ({_RETIRED})", order)]
        else:
            queries = [(_ACTIVE, "j.seq"), (_RETIRED, "j.seq")]
        first = True
        for i, (where, order) in enumerate(queries):
            cursor = self.db.cursor(name=f"omni_batch_report_{i}")
            try:
                with self._reading():
                    cursor.execute(
                        f"SELECT {selected} FROM {_FROM} WHERE j.run = %s "
                        f"AND ({where}) ORDER BY {order}",
                        (self.run,),
                    )
                while True:
                    with self._reading():
                        rows = cursor.fetchmany(chunk)
                    if not rows and not first:
                        break
                    first = False
                    yield rows
                    if not rows:
                        break
            finally:
                with contextlib.suppress(psycopg.Error):
                    cursor.close()

    def counts(self) -> dict[str, int]:
        """As ReadOnlyJournal.counts: per state of the manifest's jobs, and ``retired``."""
        with self._reading():
            rows = self.db.execute(
                "SELECT state, count(*) FROM omni_batch.jobs j WHERE run = %s AND active "
                "GROUP BY state",
                (self.run,),
            ).fetchall()
            retired = self.db.execute(
                f"SELECT count(*) FROM omni_batch.jobs j WHERE run = %s AND {_RETIRED}",
                (self.run,),
            ).fetchone()
        assert retired is not None
        out = {state: n for state, n in rows}
        out[RETIRED] = retired[0]
        return out


def _is_a_reader(reader: PostgresReader) -> JournalReader:
    return reader  # type-checked: PostgresReader satisfies the JournalReader protocol
