"""The run's single source of truth: a SQLite (WAL) journal of every job and its transitions.

Every transition is committed before the run goes on, except ``completed``: that one rides along
with the next commit, or is committed within DEFER_S. So a crash (kill -9 included) leaves every
job in a state resume knows how to finish: no task id is lost, and a job whose `completed` was
lost is `downloading` with its whole video already in place, which resume records without a
download or a status call (Engine.resume). Every transition is appended to ``events.jsonl``
once it is committed, with the counter ``n`` that makes it replayable: a journal that is
missing, empty, unreadable or behind its events (a lost ``-wal``) is rebuilt from them
(omni_batch.journal.replay) before anything runs; a folder that shows an earlier run but has neither
is refused rather than run, and paid for, again. ``submitting`` and ``running`` (the task id)
are made durable (the -wal fsync'ed) before the run goes on; the other transitions only need
to survive a process crash (synchronous=NORMAL): a power loss costs a poll at most.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from omni_batch import crash
from omni_batch.errors import OutputError, StateError, UsageError
from omni_batch.journal import replay
from omni_batch.journal.base import (
    DEFER_S,
    KEEP,
    NOTE_MAX,
    STATES,
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

SCHEMA_VERSION = 1
ADOPT_META = "adopt_videos"  # set by a rebuild until the store's videos are adopted
_EVENT_JSON = json.JSONEncoder(ensure_ascii=False)  # one encoder: json.dumps makes one a call
DEFER_MAX = 256  # ... or this many of them
CACHE_KIB = 512  # SQLite page cache of the journal's connection, and of its temp tables
_DAMAGED = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB: the file holds no journal we can read

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    active INTEGER NOT NULL DEFAULT 1,
    body_hash TEXT NOT NULL,
    prompt_id TEXT NOT NULL, model TEXT NOT NULL, prompt TEXT NOT NULL,
    aspect_ratio TEXT NOT NULL, duration INTEGER NOT NULL, resolution TEXT NOT NULL,
    repeat INTEGER NOT NULL, tags TEXT NOT NULL, vars TEXT NOT NULL, source TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    task_id TEXT, business_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    polls INTEGER NOT NULL DEFAULT 0,
    possible_duplicate INTEGER NOT NULL DEFAULT 0,
    http_status INTEGER, error_type TEXT, error_message TEXT, request_id TEXT,
    video_url TEXT, expires_at REAL, video_path TEXT, bytes INTEGER,
    submitted_at REAL, completed_at REAL, updated_at REAL,
    verified INTEGER, verify_message TEXT, video_width INTEGER, video_height INTEGER,
    video_duration_s REAL,
    task_ids TEXT,  -- every task id the job ever had, oldest first, separated by spaces
    task_status TEXT,  -- what the API last said of task_id: 'failed', 'gone' (404) or NULL
    ev INTEGER NOT NULL DEFAULT 0,  -- the counter `n` of the last transition (event line) held
    account TEXT  -- the name of the account whose key sent its submit (never a key)
);
-- by seq alone: an index holding the state cost every transition ~9 µs (40% of its UPDATE);
-- pending jobs are found by walking seq forward from the last page, so the walk is linear
CREATE INDEX IF NOT EXISTS jobs_seq ON jobs (seq);
DROP INDEX IF EXISTS jobs_state;
-- a reviewer's verdict on a job (omni-batch review / pick): written by set_review only,
-- each change also an events.jsonl line ("event": "review"), so a rebuilt journal keeps it
CREATE TABLE IF NOT EXISTS reviews (
    job_id TEXT PRIMARY KEY,
    pick TEXT,  -- 'picked', 'rejected' or NULL
    score INTEGER,  -- 1..5 or NULL
    note TEXT NOT NULL DEFAULT '',
    reviewed_at REAL NOT NULL
);
"""

_ADDED_COLUMNS = (
    ("verified", "INTEGER"), ("verify_message", "TEXT"), ("video_width", "INTEGER"),
    ("video_height", "INTEGER"), ("video_duration_s", "REAL"), ("task_ids", "TEXT"),
    ("task_status", "TEXT"), ("ev", "INTEGER NOT NULL DEFAULT 0"), ("account", "TEXT"),
)  # fmt: skip

# a job that left the manifest is kept (in the report, as `retired`) when anything happened to
# it: sent, or given a task; one never sent is simply dropped
RETIRED_KEPT = "(state != 'pending' OR task_ids IS NOT NULL)"

_JOB_COLUMNS = (
    "job_id, seq, body_hash, prompt_id, model, prompt, aspect_ratio, duration, resolution, "
    "repeat, tags, vars, source"
)


def lock_folder(folder: Path) -> IO[str]:
    """One run per output folder: two runners on one journal would submit jobs twice."""
    handle = (folder / ".lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise StateError(
            f"{folder}: another omni-batch run is using this folder; wait for it to finish "
            "(`omni-batch status` works alongside it)"
        ) from None
    return handle


def _set_aside(path: Path, label: str) -> str:
    """Move a damaged journal's files out of the way (``label`` "": remove them). A -shm file
    is only a cache and an empty -wal holds nothing: those go. Returns the kept file's name."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    kept = ""
    for suffix in ("", "-wal", "-shm"):
        part = path.with_name(path.name + suffix)
        try:
            if not label or suffix == "-shm" or (suffix and part.stat().st_size == 0):
                part.unlink(missing_ok=True)
            elif suffix or label != "orphan":
                target = part.with_name(f"{part.name}.{label}-{stamp}")
                part.rename(target)
                kept = kept or target.name
        except FileNotFoundError:
            continue
    return kept


class SqliteJournal:
    """SQLite journal in ``folder/journal.sqlite``; one writer (this process) at a time."""

    FILE = "journal.sqlite"

    def __init__(self, folder: Path, events: bool = True):
        self.folder = folder
        self._rebuilt: tuple[str, int, int, int, int, str] | None = None
        self.recovered: str | None = None  # what opening had to repair, said once in the log
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._lock = lock_folder(folder)
        except OSError as exc:
            raise OutputError(
                f"{folder}: cannot create the output folder or journal: {exc}"
            ) from None
        try:
            self.db = self._open()
            self._events = (
                (folder / replay.EVENTS).open("a", encoding="utf-8", buffering=1)
                if events
                else None
            )
        except OSError as exc:
            self._lock.close()
            raise OutputError(f"{folder}: cannot open the journal or events.jsonl: {exc}") from None
        except BaseException:
            self._lock.close()
            raise
        self._waiting: list[str] = []  # event lines of transitions made, not yet committed
        self._waiting_since = 0.0
        self._wal: int | None = None  # the -wal file, for _sync
        # body hashes of the jobs handed out to be sent (a page, a queue: bounded), for the
        # `submitting` event: a rebuilt journal refuses a changed manifest as this one does
        self._bodies: dict[str, str] = {}
        # the slice of the manifest this run submits (--only, --limit): see set_slice
        self._slice_sql = ""
        self._slice_params: tuple[Any, ...] = ()
        self._slice_left: int | None = None  # new submits still allowed this run (None: any)
        self.left_manifest = 0  # jobs that left the manifest at this sync (kept as retired)
        self.left_in_flight = 0  # ... of them with a task to finish (running, downloading)
        self.left_submitting = 0  # ... of them left mid-submit (not settled: see in_flight)
        top = self.db.execute("SELECT max(ev) FROM jobs").fetchone()[0] or 0
        self._n = max(top, self._replayed) + 1  # the next transition's counter

    def close(self) -> None:
        try:
            self.commit()
            if self._events is not None:  # a next run replays from here only if this run's
                self._events.flush()  # last commits go missing (see _catch_up)
                size = os.fstat(self._events.fileno()).st_size
                with self._writing():
                    self.db.execute(
                        "INSERT OR REPLACE INTO meta VALUES ('events_size', ?)", (str(size),)
                    )
        finally:
            if self._events:
                self._events.close()
            if self._wal is not None:
                os.close(self._wal)
            self.db.close()
            self._lock.close()  # releases the folder for the next run

    # -- opening: a journal that is gone, unreadable or behind is rebuilt from events.jsonl ----
    def _connect(self, path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, timeout=10)
        try:
            # where WAL is not to be had (a filesystem without shared memory), every commit
            # is fsync'ed instead
            self._wal_mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
            sync = "NORMAL" if self._wal_mode else "FULL"
            db.execute(f"PRAGMA synchronous={sync}")  # money transitions: _sync
            # small page caches (the default 2 MB each, filled as the journal grows, was memory
            # per job up to ~4,000 jobs): the run touches the pages of its in-flight jobs and
            # its next pending page; sync's temporary table is written and read once in order
            db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            db.execute(f"PRAGMA temp.cache_size = -{CACHE_KIB}")
            db.executescript(_SCHEMA)
            self._add_new_columns(db)
            self._meta_defaults(db)
            db.execute("SELECT max(ev) FROM jobs").fetchone()  # reads every row once
        except BaseException:
            db.close()
            raise
        return db

    def _open(self) -> sqlite3.Connection:
        """The journal, made whole first if it is gone, unreadable or behind (see _recover)."""
        path = self.folder / self.FILE
        self._replayed = 0  # the highest counter a replay saw
        try:
            how = "empty" if path.stat().st_size == 0 else None
        except FileNotFoundError:
            how = "missing"
        made = how is not None  # the journal opened below is a new one
        if made:  # a -wal without its database is not a journal: never let SQLite apply it
            _set_aside(path, "orphan")
        damage = None
        try:
            db = self._connect(path)
        except sqlite3.DatabaseError as exc:
            if (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF not in _DAMAGED:
                raise StateError(f"{path}: not a usable journal: {exc}") from None
            damage, how = str(exc), f"unreadable ({exc})"
        try:
            if damage is None and db.execute("SELECT 1 FROM jobs LIMIT 1").fetchone():
                self._catch_up(db)
                return db
            return self._recover(None if damage else db, how or "without jobs", made)
        except BaseException:
            if damage is None:
                db.close()
            raise

    def _recover(self, db: sqlite3.Connection | None, how: str, made: bool) -> sqlite3.Connection:
        """A journal without jobs (``db``; None: unreadable, ``how`` says why): a new folder, or
        one whose journal is gone, to rebuild from events.jsonl or else refuse to run."""
        path = self.folder / self.FILE
        damage = db is None
        if not replay.has_transitions(self.folder):
            seen = replay.evidence(self.folder)
            if db is not None and not seen:
                return db  # a new folder
            if db is not None and made:  # the journal just made: leave the folder as found
                _set_aside(path, "")
            raise StateError(
                f"{path}: the journal is {how} and events.jsonl holds no transitions to rebuild "
                f"it from, though {', '.join(seen) or 'the folder'} shows an earlier run; "
                "running it as new could pay for every job again: restore journal.sqlite or "
                "use a new --out folder"
            )
        kept = ""
        if db is None:
            kept = f"; the unreadable file is kept as {_set_aside(path, 'corrupt')}"
            try:
                db = self._connect(path)
            except sqlite3.Error as exc:
                raise StateError(f"{path}: cannot make a new journal: {exc}") from None
        try:
            done = self._replay(db, 0, fresh=True)
        except BaseException:
            if damage:
                db.close()
            raise
        jobs, tasks, completed = db.execute(
            "SELECT count(*), count(task_id), count(*) FILTER (WHERE state = 'completed') FROM jobs"
        ).fetchone()
        self._rebuilt = (how, done.applied, jobs, tasks, completed, kept)
        self.recovered = self._rebuilt_message(0)
        return db

    def _rebuilt_message(self, adopted: int) -> str:
        how, applied, jobs, tasks, completed, kept = self._rebuilt or ("", 0, 0, 0, 0, "")
        also = f", {adopted} of them from videos in place" if adopted else ""
        return (
            f"{self.FILE} was {how}: rebuilt from events.jsonl ({applied} transitions: "
            f"{jobs} jobs, {tasks} with a task id, {completed + adopted} completed{also}){kept}"
        )

    def adopt_videos(self, found: Iterable[tuple[str, str, int]]) -> int:
        """After a rebuild from events.jsonl (by this or any earlier opening that did not
        adopt): the videos in the store (``found``: job id, link, bytes) of jobs the events
        never saw finish are recorded as completed, never bought again. Returns how many."""
        if self.meta(ADOPT_META) is None:
            return 0
        with self._writing(), self.db:
            adopted = replay.adopt_videos(self.db, found)
            self.db.execute("DELETE FROM meta WHERE key = ?", (ADOPT_META,))
        if self._rebuilt is not None:
            self.recovered = self._rebuilt_message(adopted)
        return adopted

    def _catch_up(self, db: sqlite3.Connection) -> None:
        """Replay the event lines a crashed run wrote after the last clean close that the
        journal lacks (its last commits lost with a deleted or uncopied -wal file)."""
        try:
            size = (self.folder / replay.EVENTS).stat().st_size
        except OSError:
            return
        row = db.execute("SELECT value FROM meta WHERE key = 'events_size'").fetchone()
        offset = int(row[0]) if row and row[0].isdigit() else 0
        if size <= offset:
            return
        done = self._replay(db, offset, fresh=False)
        if done.applied:
            self.recovered = (
                f"{self.FILE} was behind events.jsonl (its last commits lost, e.g. with its "
                f"-wal file): {done.applied} transitions replayed"
            )

    def _replay(self, db: sqlite3.Connection, offset: int, *, fresh: bool) -> replay.Replayed:
        above = db.execute("SELECT max(ev) FROM jobs").fetchone()[0] or 0
        size = (self.folder / replay.EVENTS).stat().st_size
        try:
            db.execute("BEGIN")
            done = replay.replay(db, self.folder, offset, fresh=fresh, above=above)
            if fresh:  # the store's videos are adopted by adopt_videos, on the run's behalf
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, '1')", (ADOPT_META,))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('events_size', ?)", (str(size),))
            db.execute("COMMIT")  # made durable by the first _sync, before any POST
        except sqlite3.Error as exc:
            raise StateError(
                f"{self.folder / self.FILE}: cannot rebuild the journal from events.jsonl: {exc}"
            ) from None
        self._replayed = done.top
        return done

    def _add_new_columns(self, db: sqlite3.Connection) -> None:
        """A folder run by an older version gains the columns added since."""
        have = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
        for name, kind in _ADDED_COLUMNS:
            if name not in have:
                db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")

    # -- meta ---------------------------------------------------------------------------------
    @staticmethod
    def _meta_defaults(db: sqlite3.Connection) -> None:
        with db:
            db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            # a per-folder key makes client_business_ids unique across output folders
            db.execute("INSERT OR IGNORE INTO meta VALUES ('run_key', ?)", (secrets.token_hex(4),))
            db.execute("INSERT OR IGNORE INTO meta VALUES ('created_at', ?)", (str(time.time()),))

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))
        if key in replay.KEPT_META:  # a journal rebuilt from events.jsonl must know it too
            self.event("meta", key=key, value=value)

    # -- events -------------------------------------------------------------------------------
    def event(self, kind: str, **fields: Any) -> None:
        if self._events is not None:
            self._write_events([self._event_line(kind, fields)])

    @staticmethod
    def _event_line(kind: str, fields: dict[str, Any]) -> str:
        # a transition's `t` is the time its row was stamped with (a rebuilt journal's
        # submitted_at and completed_at come from it): never a second clock reading
        t = fields.get("t")
        record = {"t": round(time.time() if t is None else t, 3), "event": kind}
        record.update({k: v for k, v in fields.items() if v is not None and k != "t"})
        return _EVENT_JSON.encode(record) + "\n"

    def _write_events(self, lines: list[str]) -> None:
        assert self._events is not None
        try:
            self._events.write("".join(lines))
        except OSError as exc:
            raise OutputError(f"{self.folder}: cannot write events.jsonl: {exc.strerror}") from None

    # -- reviews ------------------------------------------------------------------------------
    def reviews(self) -> dict[str, Review]:
        """Every job's saved review, by job id."""
        return {
            r[0]: Review(*r)
            for r in self.db.execute("SELECT job_id, pick, score, note, reviewed_at FROM reviews")
        }

    def set_review(
        self, job_id: str, *, pick: Any = KEEP, score: Any = KEEP, note: Any = KEEP
    ) -> Review:
        """Change a job's review (fields left at KEEP stay as they are), committed at once and
        written to events.jsonl; returns the review now saved. An unknown job id or a value out
        of range is a UsageError (nothing saved)."""
        wrong = check_review(pick, score, note)
        if wrong:
            raise UsageError(f"{job_id}: {wrong[0]}")
        if not self.db.execute("SELECT 1 FROM jobs WHERE job_id = ?", (job_id,)).fetchone():
            raise UsageError(f"{self.folder}: no job {job_id!r} in this output folder")
        old = self.reviews_of([job_id]).get(job_id, Review(job_id))
        new = Review(
            job_id,
            old.pick if pick is KEEP else pick,
            old.score if score is KEEP else score,
            old.note if note is KEEP else note[:NOTE_MAX],
            round(time.time(), 3),
        )
        self.commit()  # transitions waiting go first: the review line comes after theirs
        with self._writing():
            self.db.execute(
                "INSERT OR REPLACE INTO reviews VALUES (?, ?, ?, ?, ?)",
                (new.job_id, new.pick, new.score, new.note, new.reviewed_at),
            )
        review = {"pick": new.pick, "score": new.score, "note": new.note}
        self.event("review", job_id=job_id, review=review, reviewed_at=new.reviewed_at)
        return new

    def reviews_of(self, job_ids: Iterable[str]) -> dict[str, Review]:
        """The saved reviews of these jobs (those with none are left out)."""
        out = {}
        for job_id in job_ids:
            row = self.db.execute(
                "SELECT job_id, pick, score, note, reviewed_at FROM reviews WHERE job_id = ?",
                (job_id,),
            ).fetchone()
            if row:
                out[job_id] = Review(*row)
        return out

    def known_jobs(self, job_ids: Iterable[str]) -> list[str]:
        """Which of these job ids the journal holds."""
        return [
            j
            for j in job_ids
            if self.db.execute("SELECT 1 FROM jobs WHERE job_id = ?", (j,)).fetchone()
        ]

    # -- loading the manifest -----------------------------------------------------------------
    def sync(self, jobs: Iterable[Job], batch: int = 2000) -> int:
        """Add the manifest's jobs; refuse if a known job id now means a different body.

        Works through a temporary table so memory stays flat for any number of jobs.
        Returns the number of jobs in the manifest.
        """
        db = self.db
        db.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS incoming AS SELECT {_JOB_COLUMNS} FROM jobs WHERE 0"
        )
        db.execute("DELETE FROM incoming")
        total = 0
        rows: list[tuple] = []
        with db:
            for seq, job in enumerate(jobs):
                rows.append(
                    (
                        job.job_id, seq, body_hash(job.body), job.prompt_id, job.model, job.prompt,
                        job.aspect_ratio, job.duration, job.resolution, job.repeat,
                        json.dumps(dict(job.tags), ensure_ascii=False),
                        json.dumps(dict(job.vars), ensure_ascii=False), job.source,
                    )
                )  # fmt: skip
                if len(rows) >= batch:
                    db.executemany(
                        f"INSERT INTO incoming ({_JOB_COLUMNS}) VALUES ({','.join('?' * 13)})", rows
                    )
                    total += len(rows)
                    rows.clear()
            if rows:
                db.executemany(
                    f"INSERT INTO incoming ({_JOB_COLUMNS}) VALUES ({','.join('?' * 13)})", rows
                )
                total += len(rows)
        changed = db.execute(
            "SELECT i.job_id, i.source, j.state FROM incoming i JOIN jobs j USING (job_id) "
            "WHERE i.body_hash != j.body_hash AND j.state != 'pending' "
            "AND j.body_hash != '' ORDER BY i.seq LIMIT 5"  # '': rebuilt, its body unknown
        ).fetchall()
        if changed:
            first = changed[0]
            raise StateError(
                f"{self.folder}: job {first[0]!r} ({first[1]}) was already {first[2]} with other "
                f"parameters; the manifest changed since this folder was run. Use a new --out "
                f"folder, or restore the manifest"
            )
        # jobs that leave the manifest now (their ids changed, e.g. a prompt edited) stay in
        # the journal as retired (active = 0): never submitted again, kept in the report when
        # anything happened to them; a task of theirs in flight is still finished (in_flight)
        left = db.execute(
            f"SELECT count(*), count(*) FILTER (WHERE state IN ('running', 'downloading')), "
            f"count(*) FILTER (WHERE state = 'submitting') FROM jobs "
            f"WHERE active = 1 AND {RETIRED_KEPT} AND job_id NOT IN (SELECT job_id FROM incoming)"
        ).fetchone()
        self.left_manifest, self.left_in_flight, self.left_submitting = left
        with db:
            db.execute("UPDATE jobs SET active = 0")
            # pending jobs simply take the manifest's current body; anything sent keeps its own
            db.execute(
                f"INSERT INTO jobs ({_JOB_COLUMNS}) SELECT {_JOB_COLUMNS} FROM incoming WHERE 1 "
                "ON CONFLICT (job_id) DO UPDATE SET active = 1, seq = excluded.seq, "
                "body_hash = excluded.body_hash, prompt = excluded.prompt, model = excluded.model, "
                "aspect_ratio = excluded.aspect_ratio, duration = excluded.duration, "
                "resolution = excluded.resolution, tags = excluded.tags, vars = excluded.vars, "
                "source = excluded.source, prompt_id = excluded.prompt_id, repeat = excluded.repeat"
            )
            db.execute("DELETE FROM incoming")
        return total

    # -- queries ------------------------------------------------------------------------------
    _ROW = (
        "SELECT job_id, seq, state, model, prompt, aspect_ratio, duration, resolution, task_id, "
        "business_id, attempts, polls, possible_duplicate, video_url, expires_at, submitted_at, "
        "error_type, body_hash, account FROM jobs"
    )

    @staticmethod
    def _row(r: tuple) -> JobRow:
        body = {
            "model": r[3],
            "prompt": r[4],
            "aspect_ratio": r[5],
            "duration": r[6],
            "resolution": r[7],
        }
        return JobRow(
            job_id=r[0], seq=r[1], state=r[2], body=body, task_id=r[8], business_id=r[9],
            attempts=r[10], polls=r[11], possible_duplicate=bool(r[12]), video_url=r[13],
            expires_at=r[14], submitted_at=r[15], error_type=r[16], account=r[18],
        )  # fmt: skip

    def set_slice(
        self,
        only: dict[str, list[str]] | None = None,
        limit: int | None = None,
        var_names: Iterable[str] = (),
        tag_names: Iterable[str] = (),
    ) -> None:
        """Make pending_page hand out only the jobs that match ``only`` (NAME → values: a
        template variable, a tag, aspect_ratio or duration; every NAME must match, any of its
        values), and at most ``limit`` of them this run. Done in the query, on the vars/tags
        JSON columns: nothing is held in memory."""
        var_names, tag_names = set(var_names), set(tag_names)
        clauses: list[str] = []
        params: list[Any] = []
        for name, values in (only or {}).items():
            marks = ",".join("?" * len(values))
            if name in ("aspect_ratio", "duration"):
                clauses.append(f"CAST({name} AS TEXT) IN ({marks})")
                params += values
                continue
            path = '$."' + name.replace('"', '""') + '"'  # names are identifiers anyway
            either = []
            for column, names in (("vars", var_names), ("tags", tag_names)):
                if name in names or not (var_names or tag_names):
                    either.append(f"json_extract({column}, ?) IN ({marks})")
                    params += [path, *values]
            clauses.append(f"({' OR '.join(either) or '0'})")
        self._slice_sql = "".join(f" AND {c}" for c in clauses)
        self._slice_params = tuple(params)
        self._slice_left = limit

    def pending_page(self, after_seq: int, limit: int) -> list[JobRow]:
        """The next pending jobs in manifest order: the engine reads work in pages. With a
        slice (set_slice), only its jobs, and no more than its limit over the whole run."""
        if self._slice_left is not None:
            limit = min(limit, self._slice_left)
            if limit <= 0:
                return []
        rows = self.db.execute(
            f"{self._ROW} WHERE active = 1 AND state = 'pending' AND seq > ?{self._slice_sql} "
            "ORDER BY seq LIMIT ?",
            (after_seq, *self._slice_params, limit),
        ).fetchall()
        if self._slice_left is not None:
            self._slice_left -= len(rows)
        self._bodies.update((r[0], r[17]) for r in rows)
        return [self._row(r) for r in rows]

    def pending_variants(self) -> Iterator[tuple[str, str, int]]:
        """(model, resolution, duration) of the jobs this run may still submit, in the order
        pending_page hands them out (its slice and limit): what preflight prices (issue #15)."""
        limit = -1 if self._slice_left is None else max(self._slice_left, 0)
        yield from self.db.execute(
            "SELECT model, resolution, duration FROM jobs WHERE active = 1 AND state = "
            f"'pending'{self._slice_sql} ORDER BY seq LIMIT ?",
            (*self._slice_params, limit),
        )

    def pending_groups(self) -> Iterator[tuple[str, str, int, int]]:
        """pending_variants counted: (model, resolution, duration, jobs)."""
        limit = -1 if self._slice_left is None else max(self._slice_left, 0)
        yield from self.db.execute(
            "SELECT model, resolution, duration, count(*) FROM (SELECT model, resolution, "
            f"duration FROM jobs WHERE active = 1 AND state = 'pending'{self._slice_sql} "
            "ORDER BY seq LIMIT ?) GROUP BY model, resolution, duration",
            (*self._slice_params, limit),
        )

    def limit_slice(self, limit: int) -> None:
        """Submit at most ``limit`` more jobs this run (``--allow-partial``: what the balance
        pays for); a lower limit already set stays."""
        if self._slice_left is None or limit < self._slice_left:
            self._slice_left = limit

    def billed_variants(self) -> Iterator[tuple[str, str, str, str, int]]:
        """(job_id, state, model, resolution, duration) of every job holding a task the API
        did not say failed (a failed generation is refunded): what it has been billed for."""
        yield from self.db.execute(
            "SELECT job_id, state, model, resolution, duration FROM jobs "
            "WHERE task_id IS NOT NULL AND task_status IS NOT 'failed'"
        )

    def pending_count(self) -> int:
        """Jobs of the manifest still pending (after a sliced run: left for a later one)."""
        return self.db.execute(
            "SELECT count(*) FROM jobs WHERE active = 1 AND state = 'pending'"
        ).fetchone()[0]

    def in_flight(self) -> Iterator[JobRow]:
        """Jobs a previous run left with the API (or mid-submit), for resume. A task of a job
        that has since left the manifest (retired) is still polled and its video fetched: a
        paid video is never abandoned. A retired job left mid-submit is not settled (that
        could send it again): it stays `submitting` until its entry is back in the manifest."""
        cur = self.db.execute(
            f"{self._ROW} WHERE (active = 1 AND state IN ('submitting', 'running', 'downloading'))"
            " OR (active = 0 AND state IN ('running', 'downloading') AND task_id IS NOT NULL) "
            "ORDER BY seq"
        )
        for r in cur:
            if r[2] == "submitting":
                self._bodies[r[0]] = r[17]
            yield self._row(r)

    def task_owner(self, task_id: str) -> str | None:
        """The job that holds ``task_id`` as its task, if any (a lookup answering with another
        job's task must not be adopted)."""
        row = self.db.execute("SELECT job_id FROM jobs WHERE task_id = ? LIMIT 1", (task_id,))
        found = row.fetchone()
        return found[0] if found else None

    def known_task(self, accounts: list[str | None]) -> tuple[str, str] | None:
        """(task id, client_business_id) of the job of one of ``accounts`` (journaled names;
        None: no account recorded) most recently given a task through a submit that carried a
        business id: what proves the lookup on that account before its crash-left jobs are
        settled (lookups are per account: only its own key finds its tasks)."""
        named = [a for a in accounts if a is not None]
        where = f"account IN ({','.join('?' * len(named))})" if named else "0"
        if None in accounts:
            where = f"({where} OR account IS NULL)"
        row = self.db.execute(
            "SELECT task_id, business_id FROM jobs WHERE task_id IS NOT NULL "
            f"AND business_id IS NOT NULL AND {where} ORDER BY submitted_at DESC LIMIT 1",
            named,
        ).fetchone()
        return (row[0], row[1]) if row else None

    def counts(self) -> dict[str, int]:
        """Jobs per state: the manifest's, and retired ones still in flight (being finished)."""
        out = dict.fromkeys(STATES, 0)
        for state, n in self.db.execute(
            "SELECT state, count(*) FROM jobs WHERE active = 1 "
            "OR (state IN ('running', 'downloading') AND task_id IS NOT NULL) GROUP BY state"
        ):
            out[state] = n
        return out

    def reopen(self, retry_failed: bool) -> tuple[int, int]:
        """Before a run. A failed job with a task that may hold a paid video (timed out, link
        expired, download failed, completed without a link, any 4xx on a status call) goes
        back to polling that same task; only a task the API said failed (refunded) is left. With
        ``retry_failed``, jobs that never got a task, or whose task failed or is gone (404), go
        back to pending, to be sent as new tasks; their task ids stay in ``task_ids`` and a
        ``possible_duplicate`` flag stays. Jobs no longer in the manifest (retired) are polled
        again too (a paid video is never abandoned), never sent again. Returns (re-polled,
        re-queued)."""
        queued = 0
        with self._writing():
            if retry_failed:
                n_queued = self._n
                self._n += 1
                queued = self.db.execute(
                    "UPDATE jobs SET state = 'pending', task_id = NULL, business_id = NULL, "
                    "task_status = NULL, http_status = NULL, error_type = NULL, "
                    "error_message = NULL, request_id = NULL, video_url = NULL, "
                    "expires_at = NULL, updated_at = ?, ev = ? WHERE active = 1 "
                    "AND state = 'failed' AND (task_id IS NULL OR task_status IS NOT NULL) "
                    # a 2xx without a task id we knew may hold a paid task: never resent
                    "AND error_type IS NOT 'unrecognised_answer'",
                    (time.time(), n_queued),
                ).rowcount
                if queued:
                    self._events_for(
                        n_queued, state="pending", reason="retry-failed", requeued=True
                    )
            n_polled = self._n
            self._n += 1
            polled = self.db.execute(
                "UPDATE jobs SET state = 'running', error_type = NULL, error_message = NULL, "
                "http_status = NULL, updated_at = ?, ev = ? WHERE state = 'failed' "
                "AND task_id IS NOT NULL AND task_status IS NOT 'failed'",  # retired ones too
                (time.time(), n_polled),
            ).rowcount
            if polled:
                self._events_for(n_polled, state="running", reason="polled again")
        return polled, queued

    def _events_for(self, n: int, **event: Any) -> None:
        """The event lines of a transition made to many jobs at once (counter ``n``)."""
        if self._events is None:
            return
        lines = []
        for (job_id,) in self.db.execute("SELECT job_id FROM jobs WHERE ev = ?", (n,)):
            lines.append(self._event_line("state", {"n": n, "job_id": job_id, **event}))
            if len(lines) >= 1000:
                self._write_events(lines)
                lines = []
        if lines:
            self._write_events(lines)

    def completed_videos(self) -> Iterator[tuple[str, str, int]]:
        """(job id, video path, bytes) of every active completed job with a video: what the
        caller checks against the video store (running.download.requeue_lost_videos)."""
        yield from self.db.execute(
            "SELECT job_id, video_path, bytes FROM jobs "
            "WHERE active = 1 AND state = 'completed' AND video_path IS NOT NULL"
        )

    def requeue(self, job_ids: Iterable[str], reason: str) -> int:
        """Completed jobs whose video the store lost go back to downloading, so resume fetches
        them again (after a status call for a fresh link when the old one expired)."""
        wanted = list(dict.fromkeys(job_ids))
        lost = [
            (job_id,)
            for job_id in wanted
            if self.db.execute(
                "SELECT 1 FROM jobs WHERE job_id = ? AND state = 'completed'", (job_id,)
            ).fetchone()
        ]  # only a completed job goes back (an unknown id, or one in another state, is left)
        if not lost:
            return 0
        n = self._n
        self._n += 1
        with self._writing(), self.db:
            self.db.executemany(
                "UPDATE jobs SET state = 'downloading', updated_at = ?, ev = ? WHERE job_id = ?",
                [(time.time(), n, job_id) for (job_id,) in lost],
            )
        for (job_id,) in lost:
            self.event("state", n=n, job_id=job_id, state="downloading", reason=reason)
        return len(lost)

    # -- transitions (a commit, or one deferred: see the module docstring; then one event) -----
    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A failed journal write (full disk, removed folder) is a clear error, not a traceback."""
        try:
            yield
        except sqlite3.Error as exc:
            if not self.db.in_transaction:  # rolled back: the waiting transitions never were
                self._waiting = []
            path = self.folder / self.FILE
            raise OutputError(f"{path}: cannot write the journal: {exc}") from None

    def commit(self) -> None:
        """Commit the transitions still waiting (see DEFER_S); a no-op when there are none."""
        if self.db.in_transaction:
            with self._writing():
                self.db.commit()
        self._committed()

    def _committed(self) -> None:
        """After a commit: the committed transitions' event lines are true now; write them."""
        if self._waiting:
            lines, self._waiting = self._waiting, []
            if self._events is not None:
                self._write_events(lines)

    def _transition(
        self,
        sql: str,
        params: tuple | dict[str, Any],
        event: dict[str, Any],
        deferred: bool = False,
        durable: bool = False,
        kind: str = "state",
    ) -> None:
        """One UPDATE, committed (with any waiting before it) unless ``deferred``, and fsync'ed
        when ``durable``; its event line is written once it is committed, after theirs."""
        with self._writing():
            db = self.db
            # nothing waits and nothing will: one autocommitted statement, no BEGIN and COMMIT
            autocommit = not (deferred or db.in_transaction)
            if not (autocommit or db.in_transaction):
                db.execute("BEGIN")
            db.execute(sql, params)
            self._waiting.append(self._event_line(kind, event))
            if not autocommit:
                crash.point("in_commit")  # the UPDATE is made, not yet committed
                now = time.monotonic()
                if len(self._waiting) == 1:
                    self._waiting_since = now
                if (
                    deferred
                    and len(self._waiting) < DEFER_MAX
                    and now - self._waiting_since < DEFER_S
                ):
                    return
                db.commit()
        if durable:
            self._sync()
        self._committed()

    def _sync(self) -> None:
        """Make every commit so far survive a power loss: fdatasync the -wal file.

        Ours rather than synchronous=FULL: that can only change outside a transaction, and a
        durable transition usually commits waiting `completed` ones with it (and FULL would
        sync the commits that need no sync too)."""
        if not self._wal_mode:
            return
        try:
            if self._wal is None:
                self._wal = os.open(self.folder / f"{self.FILE}-wal", os.O_RDONLY)
                folder = os.open(self.folder, os.O_RDONLY)  # and the files' names, once
                try:
                    os.fsync(folder)
                finally:
                    os.close(folder)
            os.fdatasync(self._wal)
        except OSError as exc:
            path = self.folder / self.FILE
            raise OutputError(f"{path}: cannot write the journal: {exc.strerror}") from None

    def _update(
        self,
        job_id: str,
        state: str,
        event: dict[str, Any] | None = None,
        *,
        deferred: bool = False,
        durable: bool = False,
        at: float | None = None,
        **fields: Any,
    ) -> None:
        """``at``: the moment the transition happened (default now): the row's updated_at and
        its event's `t` alike."""
        n = self._n
        self._n = n + 1
        fields["state"] = state
        fields["updated_at"] = now = time.time() if at is None else at
        fields["ev"] = n
        sets = ", ".join(f"{k} = ?" for k in fields)
        self._transition(
            f"UPDATE jobs SET {sets} WHERE job_id = ?",
            (*fields.values(), job_id),
            {"t": now, "n": n, "job_id": job_id, "state": state, **(event or {})},
            deferred,
            durable,
        )

    def mark_submitting(
        self,
        job_id: str,
        business_id: str | None,
        possible_duplicate: bool,
        account: str | None = None,
    ) -> None:
        """Committed and fsync'ed before the POST (with any transitions waiting): a crash or a
        power loss after this point leaves an ambiguous job, never a pending one. ``account``:
        the name of the account whose key sends it (its task is polled with that account)."""
        n = self._n
        self._n = n + 1
        self._transition(
            "UPDATE jobs SET state = 'submitting', attempts = attempts + 1, business_id = ?, "
            "possible_duplicate = max(possible_duplicate, ?), account = ?, updated_at = ?, "
            "ev = ? WHERE job_id = ?",
            (business_id, int(possible_duplicate), account, time.time(), n, job_id),
            {
                "n": n,
                "job_id": job_id,
                "state": "submitting",
                "business_id": business_id,
                "account": account,
                "possible_duplicate": possible_duplicate or None,
                "body": self._bodies.pop(job_id, None),  # its first POST's line has it
            },
            durable=True,
        )

    def mark_running(
        self, job_id: str, task_id: str, request_id: str | None, adopted: bool = False
    ) -> None:
        """Committed and fsync'ed the moment the task id is known, before anything else happens
        to it; the id joins ``task_ids``, the job's every task id."""
        n = self._n
        self._n = n + 1
        now = time.time()
        self._transition(
            "UPDATE jobs SET state = 'running', task_id = ?, request_id = ?, submitted_at = ?, "
            "task_ids = coalesce(task_ids || ' ', '') || ?, task_status = NULL, "
            "updated_at = ?, ev = ? WHERE job_id = ?",
            (task_id, request_id, now, task_id, now, n, job_id),
            {
                "t": now,
                "n": n,
                "job_id": job_id,
                "state": "running",
                "task_id": task_id,
                "request_id": request_id,
                "adopted": adopted or None,
            },
            durable=True,
        )

    def keep_task(self, job_id: str, task_id: str, request_id: str | None) -> None:
        """A task this process's POST created for a job another runner settled or took: it may
        be billed, so its id joins ``task_ids`` (once) and the job is flagged
        ``possible_duplicate``; nothing else changes, whatever the job's state. Committed and
        fsync'ed, with a ``stray_task`` event line that a rebuild applies too. (One writer per
        folder never meets another runner; kept for the protocol.)"""
        n = self._n
        self._n = n + 1
        self._transition(
            f"UPDATE jobs SET {replay.KEEP_TASK}, ev = :n WHERE job_id = :job_id",
            {"task_id": task_id, "n": n, "job_id": job_id},
            {"n": n, "job_id": job_id, "task_id": task_id, "request_id": request_id},
            durable=True,
            kind="stray_task",
        )

    def mark_pending(self, job_id: str, reason: str) -> None:
        """The submit was answered with a refusal that created nothing (401/402): not sent."""
        self._update(job_id, "pending", {"reason": reason})

    def mark_downloading(
        self,
        job_id: str,
        video_url: str,
        expires_at: float | None,
        completed_at: float | None,
        polls: int,
    ) -> None:
        completed = completed_at or time.time()  # a rebuilt journal's completed_at: the event's t
        self._update(
            job_id, "downloading",
            {"video_url": video_url, "expires_at": expires_at, "polls": polls},
            at=completed, video_url=video_url, expires_at=expires_at, completed_at=completed,
            polls=polls,
        )  # fmt: skip

    def mark_completed(
        self, job_id: str, video_path: str, size: int, check: VideoCheck | None = None
    ) -> None:
        """The video is on disk; ``check`` is what probing it found (None: not probed)."""
        fields, event = completed_change(video_path, size, check)
        self._update(job_id, "completed", event, deferred=True, **fields)

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
        """``task``: what the API said of the job's task: "failed" (a failed generation,
        refunded: nothing to fetch) or "gone" (404); None when the failure was ours or the task
        may still hold a paid video, which the next run then polls again (reopen)."""
        fields, event = failed_change(
            error_type=error_type, message=message, http_status=http_status,
            request_id=request_id, polls=polls, possible_duplicate=possible_duplicate, task=task,
        )  # fmt: skip
        self._update(job_id, "failed", event, **fields)


def _is_a_journal(journal: SqliteJournal) -> Journal:
    return journal  # type-checked: SqliteJournal satisfies the Journal protocol
