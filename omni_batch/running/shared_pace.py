"""A request rate shared by every runner of one account through PostgreSQL (issue #18).

One row per key (an account's fingerprint and a category) in ``omni_batch.pace`` holds the
earliest time, on the database's clock, the next request may go. ``SharedSlots.take(rate)``
moves it on by 1/rate in one statement and sleeps until the slot it got, so slots are exactly
1/rate apart whichever runner took them; ``pause`` pushes the row for every runner (a 429 seen
by one holds them all). psycopg (the ``[shared]`` extra) is imported only when a connection is.

A slot is handed out at most ``AHEAD`` seconds before it is due: the row never runs far ahead
of the clock (however many runners ask at once), a runner that dies loses at most that much
(under-use, never over-use), and a pause from another runner is missed by at most the slots
already handed out then (rate × AHEAD of them); this runner's own pause voids its slots.
"""

from __future__ import annotations

import asyncio
import math
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from omni_batch.errors import OutputError, StateError, UsageError

if TYPE_CHECKING:
    import psycopg

TABLE = "omni_batch.pace"
AHEAD = 0.25  # seconds: how long before it is due a slot may be handed out
LATE = 0.5  # a slot whose taker wakes later than this share of a gap after it is given up
_AHEAD = Decimal(repr(AHEAD))
CONNECT_TIMEOUT = 10  # seconds

_NOW = "extract(epoch from clock_timestamp())"  # numeric seconds on the database clock: exact sums
_DDL = f"""
CREATE SCHEMA IF NOT EXISTS omni_batch;
CREATE TABLE IF NOT EXISTS {TABLE} (
    key TEXT PRIMARY KEY,  -- an account's fingerprint and a category (never a key)
    next_at NUMERIC NOT NULL  -- epoch seconds, database clock: the next slot's earliest time
);
"""
# Take the next slot if it is due within AHEAD (else no row comes back): (slot, seconds to it).
_TAKE = f"""
INSERT INTO {TABLE} AS p (key, next_at) VALUES (%(key)s, {_NOW} + %(gap)s)
ON CONFLICT (key) DO UPDATE SET next_at = greatest(p.next_at, {_NOW}) + %(gap)s
WHERE p.next_at <= {_NOW} + %(ahead)s
RETURNING p.next_at - %(gap)s, p.next_at - %(gap)s - {_NOW}
"""
_LATER = f"SELECT next_at - {_NOW} - %(ahead)s FROM {TABLE} WHERE key = %(key)s"
_PAUSE = f"""
INSERT INTO {TABLE} AS p (key, next_at) VALUES (%(key)s, {_NOW} + %(seconds)s)
ON CONFLICT (key) DO UPDATE SET next_at = greatest(p.next_at, {_NOW} + %(seconds)s)
"""


class SharedSlots:
    """The shared pacer row ``key`` in the PostgreSQL database at ``url``: one connection,
    opened on the running loop at first use (and again on another loop, or after it broke).

    ``key``: the account's fingerprint and the category, e.g. ``"3f2a…:submit"`` — never the
    run, so two runs on one account share the account's limit. Errors: ``StateError`` when the
    database cannot be reached, ``OutputError`` when it fails in use; neither ever holds the
    URL's credentials."""

    def __init__(self, url: str, key: str) -> None:
        try:
            from omni_batch.journal.postgres import redacted
        except ImportError:  # psycopg comes with the [shared] extra
            raise UsageError(
                "a rate shared by several runners needs psycopg: pip install 'omni-batch[shared]'"
            ) from None
        if not key:
            raise UsageError("a shared pace needs a key (the account's fingerprint)")
        self._url = url
        self.key = key
        self.where = f"{redacted(url)} (pace {key!r})"
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opening: asyncio.Lock | None = None
        self._taking: asyncio.Lock | None = None
        self._held_until = 0.0  # monotonic: this runner's own pauses
        self._unsent = 0.0  # monotonic end of a pause asked outside a loop, not yet in the row
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"SharedSlots({self.where})"

    # -- the public side ----------------------------------------------------------------------
    async def take(self, rate: float) -> float:
        """Wait until this caller's slot at ``rate`` requests/s (over every runner sharing the
        key) and return it (epoch seconds, database clock). Slots taken at the same rate are
        exactly 1/rate apart; each caller's rate spaces the slot after its own."""
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"a shared pace needs a positive finite rate, not {rate!r}")
        gap = Decimal(1) / Decimal(repr(float(rate)))
        while True:
            if (held := self._held_until - time.monotonic()) > 0:  # this runner's own pause
                await asyncio.sleep(held)
                continue
            taking = self._locks()[1]
            async with taking:  # one caller of this runner at the row at a time, first come first
                if self._unsent > time.monotonic():
                    await self._pause_row(self._unsent - time.monotonic())
                self._unsent = 0.0
                while True:
                    row = await self._query(_TAKE, {"key": self.key, "gap": gap, "ahead": _AHEAD})
                    if row is not None:
                        slot, wait = float(row[0]), float(row[1])
                        due = time.monotonic() + wait
                        break
                    later = await self._query(_LATER, {"key": self.key, "ahead": _AHEAD})
                    await asyncio.sleep(max(0.0, float(later[0])) if later else 0.0)
            await asyncio.sleep(max(0.0, wait))
            now = time.monotonic()
            if self._held_until <= now and now - due <= float(gap) * LATE:
                return slot
            # paused by this runner while waiting for it, or woken so late (a loaded machine)
            # that its request would crowd the next runner's: the slot is void, take a later one

    async def pause(self, seconds: float) -> None:
        """No slot for anyone sharing the key before ``seconds`` from now (a longer pause
        already in the row stays)."""
        self._hold(seconds)
        await self._pause_row(seconds)

    def pause_soon(self, seconds: float) -> None:
        """``pause`` from sync code: this runner holds at once, the row is updated by a task
        kept here (awaited by ``close``); outside a running loop, by the next ``take``."""
        self._hold(seconds)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._unsent = max(self._unsent, time.monotonic() + seconds)
            return
        task = loop.create_task(self._pause_row(seconds))
        self._tasks.add(task)
        task.add_done_callback(self._settled)

    async def close(self) -> None:
        """Finish pauses still being written, then close the connection (a later ``take``
        opens a new one)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            same_loop = self._loop is asyncio.get_running_loop()
        except RuntimeError:
            same_loop = False
        if same_loop:
            await conn.close()
        else:
            conn.pgconn.finish()  # its loop is gone: close the socket without it

    # -- inside -------------------------------------------------------------------------------
    def _hold(self, seconds: float) -> None:
        self._held_until = max(self._held_until, time.monotonic() + max(0.0, seconds))

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            # a row not pushed: this runner still holds; the others learn at their next 429,
            # and the next take here meets the same database error and raises it
            task.exception()

    async def _pause_row(self, seconds: float) -> None:
        if seconds > 0:
            await self._query(_PAUSE, {"key": self.key, "seconds": Decimal(repr(float(seconds)))})

    def _locks(self) -> tuple[asyncio.Lock, asyncio.Lock]:
        """(opening, taking) of the running loop; a connection of another loop is dropped."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._opening is None or self._taking is None:
            self._discard()
            self._loop, self._opening, self._taking = loop, asyncio.Lock(), asyncio.Lock()
        return self._opening, self._taking

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            conn.pgconn.finish()

    async def _connection(self) -> psycopg.AsyncConnection[Any]:
        import psycopg

        from omni_batch.journal.postgres import said

        async with self._locks()[0]:
            if self._conn is not None and not self._conn.closed:
                return self._conn
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT
                )
            except psycopg.Error as exc:
                raise StateError(
                    f"{self.where}: cannot connect to the shared pace's database: "
                    f"{said(exc, self._url)}"
                ) from None
            try:
                await _prepare(conn)
            except psycopg.Error as exc:
                await conn.close()
                raise OutputError(
                    f"{self.where}: cannot make the shared pace's table: {said(exc, self._url)}"
                ) from None
            except BaseException:
                await conn.close()
                raise
            self._conn = conn
            return conn

    async def _query(self, sql: str, params: dict[str, Any]) -> Any:
        """One statement's first row; a connection lost on the way is opened again once (a
        statement that ran before the loss costs a slot: under-use, never over-use)."""
        import psycopg

        from omni_batch.journal.postgres import said

        for attempt in (1, 2):
            conn = await self._connection()
            try:
                cursor = await conn.execute(sql, params)
                return await cursor.fetchone() if cursor.description else None
            except psycopg.OperationalError as exc:
                self._discard()
                if attempt == 2:
                    raise OutputError(
                        f"{self.where}: cannot use the shared pace: {said(exc, self._url)}"
                    ) from None
            except psycopg.Error as exc:
                self._discard()
                raise OutputError(
                    f"{self.where}: cannot use the shared pace: {said(exc, self._url)}"
                ) from None
            except asyncio.CancelledError:
                self._discard()  # cancelled mid-statement: the connection's state is unknown
                raise
        raise AssertionError("unreachable")


async def _prepare(conn: psycopg.AsyncConnection[Any]) -> None:
    """The table, once, whoever comes first: DDL under the journal's advisory lock, and only
    when the table is missing (DDL on a table in use would wait for its users)."""
    from omni_batch.journal.postgres import _DDL_LOCK

    made = await (await conn.execute("SELECT to_regclass(%s)", (TABLE,))).fetchone()
    if made is not None and made[0] is not None:
        return
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_DDL_LOCK,))
        await conn.execute(_DDL)  # several statements: no parameters
