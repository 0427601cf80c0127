"""A journal in PostgreSQL, shared by several runner processes on several machines (issue #18).

``PostgresJournal(url, run=NAME)`` keeps one named run in the tables of the ``omni_batch``
schema (created when missing, under an advisory lock, so runners may start together): ``runs``
(one row per run, its meta), ``jobs`` (the SQLite journal's columns), ``events`` (the transition
log, in place of events.jsonl) and ``reviews``. One database holds several runs.

Every transition is one committed statement (the UPDATE and its event row) before the method
returns: ``submitting`` is durable before the POST and the task id the moment it arrives, as
on one machine. Each is conditional on the state it leaves, and a job's submit on the runner
that owns it (the one that marked it `submitting`), so two runners never both send a job: the
loser gets ``JobTaken`` and must leave the job alone. A runner restarted with the same
``runner`` id settles its own crash-left submits; those of a runner known dead are taken over
explicitly (``take_over``), never by reading them. Credentials in the URL never appear in a
message or a repr.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.types.json import Jsonb

from omni_batch import crash
from omni_batch.errors import JobTaken, OutputError, StateError, UsageError
from omni_batch.journal.base import (
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

SCHEMA = "omni_batch"
SCHEMA_VERSION = 1
PAGE = 1000  # rows a query iterator fetches at a time (keyset paging: nothing held whole)
_DDL_LOCK = 0x6F6D6E69  # pg_advisory_xact_lock key around the DDL ("omni")

_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {SCHEMA};
CREATE TABLE IF NOT EXISTS {SCHEMA}.runs (
    run TEXT PRIMARY KEY,
    meta JSONB NOT NULL DEFAULT '{{}}'
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.jobs (
    run TEXT NOT NULL REFERENCES {SCHEMA}.runs (run) ON DELETE CASCADE,
    job_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    active BOOLEAN NOT NULL DEFAULT true,
    body_hash TEXT NOT NULL,
    prompt_id TEXT NOT NULL, model TEXT NOT NULL, prompt TEXT NOT NULL,
    aspect_ratio TEXT NOT NULL, duration INTEGER NOT NULL, resolution TEXT NOT NULL,
    repeat INTEGER NOT NULL,
    tags TEXT NOT NULL, vars TEXT NOT NULL,  -- JSON objects, as written (the report's text)
    source TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    task_id TEXT, business_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    polls INTEGER NOT NULL DEFAULT 0,
    possible_duplicate BOOLEAN NOT NULL DEFAULT false,
    http_status INTEGER, error_type TEXT, error_message TEXT, request_id TEXT,
    video_url TEXT, expires_at DOUBLE PRECISION, video_path TEXT, bytes BIGINT,
    submitted_at DOUBLE PRECISION, completed_at DOUBLE PRECISION, updated_at DOUBLE PRECISION,
    verified BOOLEAN, verify_message TEXT, video_width INTEGER, video_height INTEGER,
    video_duration_s DOUBLE PRECISION,
    task_ids TEXT,  -- every task id the job ever had, oldest first, separated by spaces
    task_status TEXT,  -- what the API last said of task_id: 'failed', 'gone' (404) or NULL
    account TEXT,  -- the name of the account whose key sent its submit (never a key)
    runner TEXT,  -- the runner that moved it to submitting last: the owner of its submit
    gen INTEGER NOT NULL DEFAULT 0,  -- how often it was reopened: its workflow's generation
    parked_by TEXT,  -- a runner that holds it for a later run (its account not configured there)
    PRIMARY KEY (run, job_id)
);
ALTER TABLE {SCHEMA}.jobs ADD COLUMN IF NOT EXISTS gen INTEGER NOT NULL DEFAULT 0;
ALTER TABLE {SCHEMA}.jobs ADD COLUMN IF NOT EXISTS parked_by TEXT;
CREATE INDEX IF NOT EXISTS jobs_seq ON {SCHEMA}.jobs (run, seq, job_id);
CREATE INDEX IF NOT EXISTS jobs_task ON {SCHEMA}.jobs (run, task_id) WHERE task_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS {SCHEMA}.events (
    n BIGSERIAL PRIMARY KEY,  -- the order transitions were committed in, over every runner
    run TEXT NOT NULL,
    t DOUBLE PRECISION NOT NULL,
    event TEXT NOT NULL,
    job_id TEXT,
    runner TEXT,
    fields JSONB NOT NULL DEFAULT '{{}}'
);
CREATE INDEX IF NOT EXISTS events_run ON {SCHEMA}.events (run, n);
CREATE TABLE IF NOT EXISTS {SCHEMA}.reviews (
    run TEXT NOT NULL,
    job_id TEXT NOT NULL,
    pick TEXT,
    score INTEGER,
    note TEXT NOT NULL DEFAULT '',
    reviewed_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (run, job_id)
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS {SCHEMA}.runners (
    runner TEXT PRIMARY KEY,  -- a runner process (its DBOS executor id)
    seen DOUBLE PRECISION NOT NULL  -- its last heartbeat, on the database's clock
);
-- how long its silence may last before it is dead (its --dead-after): once past, its beats
-- are refused, so a runner taken for dead never takes its lease back
ALTER TABLE {SCHEMA}.runners ADD COLUMN IF NOT EXISTS lease DOUBLE PRECISION NOT NULL DEFAULT 15;
"""

_JOB_COLUMNS = (
    "job_id, seq, body_hash, prompt_id, model, prompt, aspect_ratio, duration, resolution, "
    "repeat, tags, vars, source"
)
_ROW = (
    "SELECT job_id, seq, state, model, prompt, aspect_ratio, duration, resolution, task_id, "
    "business_id, attempts, polls, possible_duplicate, video_url, expires_at, submitted_at, "
    "error_type, body_hash, account, runner FROM omni_batch.jobs"
)
RETIRED_KEPT = "(state != 'pending' OR task_ids IS NOT NULL)"  # as SQLite's
_SUBMIT_OWNED = "(runner = %(me)s OR runner IS NULL)"  # NULL: never sent by any runner


def redacted(url: str) -> str:
    """``url`` without its user name and password (what messages and reprs show)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    except ValueError:
        return "postgresql://<unparsable url>"


def said(exc: BaseException, url: str) -> str:
    """The first line of what psycopg said, without the URL's credentials."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    with contextlib.suppress(ValueError):
        parts = urlsplit(url)
        for secret in (url, parts.password, parts.username):
            if secret:
                text = text.replace(secret, "***")
    return text


class PostgresJournal:
    """The ``Journal`` of run ``run`` in the PostgreSQL database at ``url`` (one connection).

    Several may be open on one run at once (one per runner). ``runner`` names this one in the
    jobs it submits and in the event rows: pass a stable id (as DBOS's executor id) so a
    restart settles the submits its crash left (default: a random id, for this process)."""

    def __init__(self, url: str, run: str = "default", *, runner: str | None = None):
        if not run:
            raise UsageError("a shared run needs a name")
        self.where = f"{redacted(url)} (run {run!r})"
        self.run = run
        self._url = url  # for reconnected(); never shown (``where`` is the redacted form)
        self.runner = runner or uuid.uuid4().hex[:12]
        self.recovered: str | None = None  # nothing is ever rebuilt here
        self.left_manifest = 0
        self.left_in_flight = 0
        self.left_submitting = 0
        # body hash of each pending job handed out: its submit must still be of that body
        self._bodies: dict[str, str] = {}
        self._slice_sql = ""
        self._slice_params: dict[str, Any] = {}
        self._slice_left: int | None = None
        try:
            self.db = psycopg.connect(url, autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise StateError(
                f"{self.where}: cannot connect to the journal's database: {self._said(exc, url)}"
            ) from None
        try:
            self._prepare()
        except BaseException:
            self.db.close()
            raise

    def __repr__(self) -> str:
        return f"PostgresJournal({self.where}, runner {self.runner!r})"

    _said = staticmethod(said)

    def _prepare(self) -> None:
        """The schema (once, whoever comes first) and this run's row with its meta."""
        meta = {
            "schema": str(SCHEMA_VERSION),
            # a per-run key makes client_business_ids unique across runs
            "run_key": secrets.token_hex(4),
            "created_at": str(time.time()),
        }
        with self._writing(), self.db.transaction():
            # DDL on tables in use would wait for (and stall) the runners writing them: only
            # when the schema is not all there yet (its last table), one runner at a time
            made = self.db.execute(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = 'omni_batch' "
                "AND table_name = 'runners' AND column_name = 'lease'"
            ).fetchone()
            if made is None:
                self.db.execute("SELECT pg_advisory_xact_lock(%s)", (_DDL_LOCK,))
                self.db.execute(_DDL)  # several statements: no parameters
            # the first runner's meta wins; later ones keep it (their run_key is thrown away)
            self.db.execute(
                "INSERT INTO omni_batch.runs (run, meta) VALUES (%s, %s) "
                "ON CONFLICT (run) DO NOTHING",
                (self.run, Jsonb(meta)),
            )

    def close(self) -> None:
        self.db.close()

    def commit(self) -> None:
        """Nothing waits: every transition is committed before its method returns."""

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A failed database call (connection lost, server down) is a clear error."""
        try:
            yield
        except psycopg.Error as exc:
            raise OutputError(
                f"{self.where}: cannot use the journal: {self._said(exc, '')}"
            ) from None

    def _one(self, sql: str, params: Any = None) -> Any:
        with self._writing():
            return self.db.execute(sql, params).fetchone()

    def _all(self, sql: str, params: Any = None) -> list[Any]:
        with self._writing():
            return self.db.execute(sql, params).fetchall()

    # -- meta and the event log ----------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        row = self._one("SELECT meta ->> %s FROM omni_batch.runs WHERE run = %s", (key, self.run))
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._writing():
            self.db.execute(
                "UPDATE omni_batch.runs SET meta = meta || jsonb_build_object(%s::text, %s::text) "
                "WHERE run = %s",
                (key, value, self.run),
            )

    def event(self, kind: str, **fields: Any) -> None:
        job_id = fields.pop("job_id", None)
        with self._writing():
            self.db.execute(
                "INSERT INTO omni_batch.events (run, t, event, job_id, runner, fields) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (self.run, round(time.time(), 3), kind, job_id, self.runner, _fields(fields)),
            )

    def events(self, after: int = 0, limit: int = PAGE) -> list[dict[str, Any]]:
        """The run's event rows after counter ``after``, oldest first (as events.jsonl's
        lines: ``n``, ``t``, ``event``, ``job_id`` and the event's fields)."""
        rows = self._all(
            "SELECT n, t, event, job_id, fields FROM omni_batch.events WHERE run = %s AND n > %s "
            "ORDER BY n LIMIT %s",
            (self.run, after, limit),
        )
        out = []
        for n, t, kind, job_id, fields in rows:
            record = {"n": n, "t": t, "event": kind}
            if job_id is not None:
                record["job_id"] = job_id
            out.append({**record, **fields})
        return out

    # -- loading the manifest ------------------------------------------------------------------
    def sync(self, jobs: Iterable[Job], batch: int = 2000) -> int:
        """Add the manifest's jobs; refuse if a known job id now means a different body (a job
        sent keeps its own). Streams the jobs through a temporary table in batches (memory
        stays flat); one transaction under a per-run lock, so runners syncing together agree.
        Returns the number of jobs in the manifest."""
        total = 0
        with self._writing(), self.db.transaction():
            db = self.db
            db.execute(
                "CREATE TEMP TABLE IF NOT EXISTS incoming (job_id TEXT PRIMARY KEY, seq BIGINT, "
                "body_hash TEXT, prompt_id TEXT, model TEXT, prompt TEXT, aspect_ratio TEXT, "
                "duration INTEGER, resolution TEXT, repeat INTEGER, tags TEXT, vars TEXT, "
                "source TEXT) ON COMMIT DELETE ROWS"
            )
            db.execute("TRUNCATE incoming")
            with db.cursor().copy(f"COPY incoming ({_JOB_COLUMNS}) FROM STDIN") as copy:
                for seq, job in enumerate(jobs):
                    copy.write_row(
                        (
                            job.job_id, seq, body_hash(job.body), job.prompt_id, job.model,
                            job.prompt, job.aspect_ratio, job.duration, job.resolution,
                            job.repeat, json.dumps(dict(job.tags), ensure_ascii=False),
                            json.dumps(dict(job.vars), ensure_ascii=False), job.source,
                        )
                    )  # fmt: skip
                    total += 1
            # one sync of a run at a time: the second runner finds the first's rows
            db.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"sync:{self.run}",))
            p = {"run": self.run}
            # pending jobs take the manifest's current body; anything sent keeps its own
            # (a changed one is found below, and the whole sync rolled back)
            db.execute(
                f"INSERT INTO omni_batch.jobs (run, {_JOB_COLUMNS}) "
                f"SELECT %(run)s, {_JOB_COLUMNS} FROM incoming "
                "ON CONFLICT (run, job_id) DO UPDATE SET active = true, seq = excluded.seq, "
                "body_hash = excluded.body_hash, prompt = excluded.prompt, "
                "model = excluded.model, aspect_ratio = excluded.aspect_ratio, "
                "duration = excluded.duration, resolution = excluded.resolution, "
                "tags = excluded.tags, vars = excluded.vars, source = excluded.source, "
                "prompt_id = excluded.prompt_id, repeat = excluded.repeat "
                "WHERE (jobs.state = 'pending' OR jobs.body_hash = excluded.body_hash) AND "
                "(jobs.active, jobs.seq, jobs.body_hash, jobs.source, jobs.tags, jobs.vars) "
                "IS DISTINCT FROM (true, excluded.seq, excluded.body_hash, excluded.source, "
                "excluded.tags, excluded.vars)",
                p,
            )
            changed = db.execute(
                "SELECT i.job_id, i.source, j.state FROM incoming i JOIN omni_batch.jobs j "
                "ON j.run = %(run)s AND j.job_id = i.job_id WHERE i.body_hash != j.body_hash "
                "AND j.state != 'pending' ORDER BY i.seq LIMIT 1",
                p,
            ).fetchone()
            if changed:
                raise StateError(
                    f"{self.where}: job {changed[0]!r} ({changed[1]}) was already {changed[2]} "
                    "with other parameters; the manifest changed since this run was started. "
                    "Use a new run name, or restore the manifest"
                )
            # jobs that left the manifest stay as retired (active = false): see SqliteJournal
            left = db.execute(
                "WITH gone AS (UPDATE omni_batch.jobs j SET active = false WHERE run = %(run)s "
                "AND active AND NOT EXISTS (SELECT 1 FROM incoming i WHERE i.job_id = j.job_id) "
                "RETURNING state, task_ids) "
                f"SELECT count(*) FILTER (WHERE {RETIRED_KEPT}), "
                "count(*) FILTER (WHERE state IN ('running', 'downloading')), "
                "count(*) FILTER (WHERE state = 'submitting') FROM gone",
                p,
            ).fetchone()
            crash.point("in_commit")  # the sync is made, not yet committed
        assert left is not None
        self.left_manifest, self.left_in_flight, self.left_submitting = left
        return total

    def set_slice(
        self,
        only: dict[str, list[str]] | None = None,
        limit: int | None = None,
        var_names: Iterable[str] = (),
        tag_names: Iterable[str] = (),
    ) -> None:
        """As SqliteJournal.set_slice, on the vars/tags JSON columns (in the query)."""
        var_names, tag_names = set(var_names), set(tag_names)
        clauses: list[str] = []
        params: dict[str, Any] = {}
        for i, (name, values) in enumerate((only or {}).items()):
            params[f"v{i}"] = [str(v) for v in values]
            if name in ("aspect_ratio", "duration"):
                clauses.append(f"CAST({name} AS TEXT) = ANY(%(v{i})s)")
                continue
            params[f"n{i}"] = name
            either = [
                f"{column}::jsonb ->> %(n{i})s = ANY(%(v{i})s)"
                for column, names in (("vars", var_names), ("tags", tag_names))
                if name in names or not (var_names or tag_names)
            ]
            clauses.append(f"({' OR '.join(either) or 'false'})")
        self._slice_sql = "".join(f" AND {c}" for c in clauses)
        self._slice_params = params
        self._slice_left = limit

    def limit_slice(self, limit: int) -> None:
        if self._slice_left is None or limit < self._slice_left:
            self._slice_left = limit

    def reopen(self, retry_failed: bool) -> tuple[int, int]:
        """As SqliteJournal.reopen: failed jobs whose task may hold a paid video are polled
        again; with ``retry_failed``, active ones without a live task go back to pending."""
        queued = 0
        if retry_failed:
            queued = self._bulk(
                "UPDATE omni_batch.jobs SET state = 'pending', task_id = NULL, business_id = NULL,"
                " gen = gen + 1,"
                " task_status = NULL, http_status = NULL, error_type = NULL, "
                "error_message = NULL, request_id = NULL, video_url = NULL, expires_at = NULL, "
                "updated_at = %(now)s WHERE run = %(run)s AND active AND state = 'failed' "
                "AND (task_id IS NULL OR task_status IS NOT NULL) "
                # a 2xx without a task id we knew may hold a paid task: never resent
                "AND error_type IS DISTINCT FROM 'unrecognised_answer'",
                {"state": "pending", "reason": "retry-failed", "requeued": True},
            )
        polled = self._bulk(
            "UPDATE omni_batch.jobs SET state = 'running', error_type = NULL, "
            "error_message = NULL, http_status = NULL, updated_at = %(now)s, gen = gen + 1 "
            "WHERE run = %(run)s AND state = 'failed' AND task_id IS NOT NULL "
            "AND task_status IS DISTINCT FROM 'failed'",  # retired ones too
            {"state": "running", "reason": "polled again"},
        )
        return polled, queued

    def _bulk(self, update: str, event: dict[str, Any], **params: Any) -> int:
        """One UPDATE of many jobs and its event rows, in one statement. Returns how many."""
        with self._writing():
            cur = self.db.execute(
                f"WITH moved AS ({update} RETURNING job_id) "
                "INSERT INTO omni_batch.events (run, t, event, job_id, runner, fields) "
                "SELECT %(run)s, %(now)s, 'state', job_id, %(me)s, %(fields)s FROM moved",
                {
                    "run": self.run, "now": time.time(), "me": self.runner,
                    "fields": _fields(event), **params,
                },
            )  # fmt: skip
            return cur.rowcount

    def completed_videos(self) -> Iterator[tuple[str, str, int]]:
        for r in self._paged(
            "job_id, seq, video_path, bytes",
            "active AND state = 'completed' AND video_path IS NOT NULL",
        ):
            yield r[0], r[2], r[3]

    def requeue(self, job_ids: Iterable[str], reason: str) -> int:
        """Completed jobs whose video the store lost go back to downloading."""
        ids = list(dict.fromkeys(job_ids))
        done = 0
        for start in range(0, len(ids), PAGE):
            done += self._bulk(
                "UPDATE omni_batch.jobs SET state = 'downloading', updated_at = %(now)s, "
                "gen = gen + 1 WHERE run = %(run)s AND job_id = ANY(%(ids)s) "
                "AND state = 'completed'",
                {"state": "downloading", "reason": reason},
                ids=ids[start : start + PAGE],
            )
        return done

    def adopt_videos(self, found: Iterable[tuple[str, str, int]]) -> int:
        """Never rebuilt from an event log: nothing to adopt."""
        return 0

    # -- queries -------------------------------------------------------------------------------
    def _paged(
        self,
        columns: str,
        where: str,
        params: dict[str, Any] | None = None,
        limit: int | None = None,
    ) -> Iterator[tuple[Any, ...]]:
        """Rows of this run matching ``where`` in (seq, job_id) order, fetched a page at a time
        (keyset: writes in between are fine); ``columns`` start with ``job_id, seq``."""
        assert columns.startswith("job_id, seq")
        after: tuple[int, str] = (-(1 << 62), "")
        left = limit
        while left is None or left > 0:
            size = PAGE if left is None else min(PAGE, left)
            rows = self._all(
                f"SELECT {columns} FROM omni_batch.jobs WHERE run = %(run)s AND ({where}) "
                "AND (seq, job_id) > (%(a_seq)s, %(a_id)s) ORDER BY seq, job_id LIMIT %(size)s",
                {
                    **(params or {}), "run": self.run, "a_seq": after[0], "a_id": after[1],
                    "size": size,
                },
            )  # fmt: skip
            yield from rows
            if len(rows) < size:
                return
            after = (rows[-1][1], rows[-1][0])
            if left is not None:
                left -= len(rows)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(STATES, 0)
        for state, n in self._all(
            "SELECT state, count(*) FROM omni_batch.jobs WHERE run = %s AND (active "
            "OR (state IN ('running', 'downloading') AND task_id IS NOT NULL)) GROUP BY state",
            (self.run,),
        ):
            out[state] = n
        return out

    def pending_page(self, after_seq: int, limit: int) -> list[JobRow]:
        """The next pending jobs in manifest order (with the slice and its limit)."""
        if self._slice_left is not None:
            limit = min(limit, self._slice_left)
            if limit <= 0:
                return []
        rows = self._all(
            f"{_ROW} WHERE run = %(run)s AND active AND state = 'pending' "
            f"AND seq > %(after)s{self._slice_sql} ORDER BY seq LIMIT %(limit)s",
            {**self._slice_params, "run": self.run, "after": after_seq, "limit": limit},
        )
        if self._slice_left is not None:
            self._slice_left -= len(rows)
        for r in rows:
            self._bodies[r[0]] = r[17]
        return [_row(r) for r in rows]

    def _pending_limit(self) -> str:
        return "" if self._slice_left is None else f" LIMIT {max(self._slice_left, 0)}"

    def pending_variants(self) -> Iterator[tuple[str, str, int]]:
        limit = None if self._slice_left is None else max(self._slice_left, 0)
        for r in self._paged(
            "job_id, seq, model, resolution, duration",
            f"active AND state = 'pending'{self._slice_sql}",
            self._slice_params,
            limit,
        ):
            yield r[2], r[3], r[4]

    def pending_groups(self) -> Iterator[tuple[str, str, int, int]]:
        yield from self._all(
            "SELECT model, resolution, duration, count(*) FROM (SELECT model, resolution, "
            "duration FROM omni_batch.jobs WHERE run = %(run)s AND active AND state = 'pending'"
            f"{self._slice_sql} ORDER BY seq{self._pending_limit()}) p "
            "GROUP BY model, resolution, duration ORDER BY model, resolution, duration",
            {**self._slice_params, "run": self.run},
        )

    def billed_variants(self) -> Iterator[tuple[str, str, str, str, int]]:
        for r in self._paged(
            "job_id, seq, state, model, resolution, duration",
            "task_id IS NOT NULL AND task_status IS DISTINCT FROM 'failed'",
        ):
            yield r[0], r[2], r[3], r[4], r[5]

    def pending_count(self) -> int:
        row = self._one(
            "SELECT count(*) FROM omni_batch.jobs WHERE run = %s AND active AND state = 'pending'",
            (self.run,),
        )
        return int(row[0])

    def in_flight(self) -> Iterator[JobRow]:
        """As SqliteJournal.in_flight, over every runner's jobs. A `submitting` job of another
        runner (alive, perhaps mid-POST) cannot be settled here: JobTaken, unless taken over."""
        for r in self._paged(
            _ROW.removeprefix("SELECT ").removesuffix(" FROM omni_batch.jobs"),
            "(active AND state IN ('submitting', 'running', 'downloading')) OR (NOT active "
            "AND state IN ('running', 'downloading') AND task_id IS NOT NULL)",
        ):
            yield _row(r)

    def take_over(self, runner: str) -> int:
        """Make this runner the owner of the jobs ``runner`` (known dead: its heartbeat
        stopped) left `submitting`, to settle them; several runners taking over one dead
        runner's jobs are harmless (each job goes to one). Returns how many it took."""
        return self._bulk(
            "UPDATE omni_batch.jobs SET runner = %(me)s, updated_at = %(now)s "
            "WHERE run = %(run)s AND state = 'submitting' AND runner = %(dead)s",
            {"state": "submitting", "reason": "taken over", "from_runner": runner},
            dead=runner,
        )

    def orphan(self, runner: str) -> int:
        """The jobs ``runner`` (known dead: its heartbeat stopped) left `submitting`, in every
        run, belong to no runner now: whichever runner takes up their workflow settles them
        (reconcile or flag, as after a crash). Several reapers at once are harmless."""
        with self._writing():
            self.db.execute(
                "UPDATE omni_batch.jobs SET parked_by = NULL WHERE parked_by = %s", (runner,)
            )
            return self.db.execute(
                "UPDATE omni_batch.jobs SET runner = NULL WHERE state = 'submitting' "
                "AND runner = %s",
                (runner,),
            ).rowcount

    def park(self, job_id: str, parked: bool) -> None:
        """Mark (or clear) ``job_id`` as held by this runner for a later run: no runner waits
        for it to be settled (see ``unsettled_page``)."""
        with self._writing():
            self.db.execute(
                "UPDATE omni_batch.jobs SET parked_by = %s WHERE run = %s AND job_id = %s "
                "AND parked_by IS DISTINCT FROM %s",
                (
                    self.runner if parked else None,
                    self.run,
                    job_id,
                    self.runner if parked else None,
                ),
            )

    def job(self, job_id: str) -> JobRow | None:
        """One job as it is now (a pending one is handed out, as by ``pending_page``: its
        submit must still be of this body)."""
        r = self._one(f"{_ROW} WHERE run = %s AND job_id = %s", (self.run, job_id))
        if r is None:
            return None
        if r[2] == "pending":
            self._bodies[r[0]] = r[17]
        return _row(r)

    def unsettled_page(
        self, after_seq: int, limit: int, unparked: bool = False
    ) -> list[tuple[str, int, int]]:
        """(job id, seq, generation) of the jobs a run still has to settle: pending ones (in
        the slice) and those in flight, in manifest order after ``after_seq``; ``unparked``:
        only those no runner holds for a later run."""
        rows = self._all(
            "SELECT job_id, seq, gen FROM omni_batch.jobs WHERE run = %(run)s AND seq > %(after)s"
            + (" AND parked_by IS NULL" if unparked else "")
            + " AND ((active AND state = 'pending'"
            f"{self._slice_sql}) OR (active AND state IN ('submitting', 'running', "
            "'downloading')) OR (NOT active AND state IN ('running', 'downloading') AND "
            "task_id IS NOT NULL)) ORDER BY seq LIMIT %(limit)s",
            {**self._slice_params, "run": self.run, "after": after_seq, "limit": limit},
        )
        return [(str(r[0]), int(r[1]), int(r[2])) for r in rows]

    def salt(self) -> bytes:
        """A random salt of this database, made once: the accounts' fingerprints that name
        their shared rate budgets (every run and runner on one account shares its budget)."""
        with self._writing():
            self.db.execute(
                "INSERT INTO omni_batch.settings VALUES ('salt', %s) ON CONFLICT DO NOTHING",
                (secrets.token_hex(16),),
            )
            row = self.db.execute(
                "SELECT value FROM omni_batch.settings WHERE name = 'salt'"
            ).fetchone()
        assert row is not None  # inserted just now, or before
        return bytes.fromhex(row[0])

    # -- runners' heartbeats -------------------------------------------------------------------
    def reconnected(self) -> PostgresJournal:
        """The same run and runner on a connection of its own (for another thread)."""
        return PostgresJournal(self._url, self.run, runner=self.runner)

    def join(self, lease: float) -> None:
        """This runner starts: alive now (the database's clock: machines' clocks are never
        compared), dead once silent for ``lease`` seconds."""
        with self._writing():
            self.db.execute(
                "INSERT INTO omni_batch.runners (runner, seen, lease) "
                "VALUES (%s, extract(epoch from clock_timestamp()), %s) "
                "ON CONFLICT (runner) DO UPDATE SET seen = excluded.seen, lease = excluded.lease",
                (self.runner, lease),
            )

    def beat(self) -> bool:
        """This runner is still alive: False when its lease is lost — it was silent past its
        lease, left, or was taken for dead (its row gone) — which no later beat takes back."""
        with self._writing():
            done = self.db.execute(
                "UPDATE omni_batch.runners SET seen = extract(epoch from clock_timestamp()) "
                "WHERE runner = %s AND seen >= extract(epoch from clock_timestamp()) - lease",
                (self.runner,),
            )
            return done.rowcount == 1

    def dead_runners(self) -> list[str]:
        """Runners silent past their lease (or that left: ``leave``)."""
        rows = self._all(
            "SELECT runner FROM omni_batch.runners WHERE runner <> %s "
            "AND seen < extract(epoch from clock_timestamp()) - lease ORDER BY runner",
            (self.runner,),
        )
        return [str(r[0]) for r in rows]

    def forget_runner(self, runner: str) -> None:
        with self._writing():
            self.db.execute("DELETE FROM omni_batch.runners WHERE runner = %s", (runner,))

    def leave(self) -> None:
        """This runner stops: its row looks long dead, so others take its work up at once."""
        with self._writing():
            self.db.execute(
                "UPDATE omni_batch.runners SET seen = 0 WHERE runner = %s", (self.runner,)
            )

    def task_owner(self, task_id: str) -> str | None:
        row = self._one(
            "SELECT job_id FROM omni_batch.jobs WHERE run = %s AND task_id = %s LIMIT 1",
            (self.run, task_id),
        )
        return row[0] if row else None

    def known_task(self, accounts: list[str | None]) -> tuple[str, str] | None:
        named = [a for a in accounts if a is not None]
        row = self._one(
            "SELECT task_id, business_id FROM omni_batch.jobs WHERE run = %s "
            "AND task_id IS NOT NULL AND business_id IS NOT NULL "
            "AND (account = ANY(%s) OR (%s AND account IS NULL)) "
            "ORDER BY submitted_at DESC NULLS LAST LIMIT 1",
            (self.run, named, None in accounts),
        )
        return (row[0], row[1]) if row else None

    def known_jobs(self, job_ids: Iterable[str]) -> list[str]:
        ids = list(job_ids)
        known: set[str] = set()
        for start in range(0, len(ids), PAGE):
            known.update(
                r[0]
                for r in self._all(
                    "SELECT job_id FROM omni_batch.jobs WHERE run = %s AND job_id = ANY(%s)",
                    (self.run, ids[start : start + PAGE]),
                )
            )
        return [j for j in ids if j in known]

    # -- transitions: one statement each (the UPDATE and its event row), conditional --------------
    def _move(
        self,
        job_id: str,
        state: str,
        sets: str,
        source: str,
        event: dict[str, Any],
        **params: Any,
    ) -> None:
        """Move ``job_id`` to ``state`` (``sets``: the other columns' assignments) if it is as
        ``source`` (a condition) says, with its event row, committed before returning. A job
        this journal does not hold is left alone (as an UPDATE of no row); one not as expected
        was moved by another runner: JobTaken."""
        p = {
            "run": self.run, "job": job_id, "state": state, "now": time.time(),
            "me": self.runner,
            "fields": _fields({"state": state, **event}), **params,
        }  # fmt: skip
        with self._writing():
            moved = self.db.execute(
                "WITH moved AS (UPDATE omni_batch.jobs SET state = %(state)s, "
                f"updated_at = %(now)s{sets} WHERE run = %(run)s AND job_id = %(job)s "
                f"AND ({source}) RETURNING job_id) "
                "INSERT INTO omni_batch.events (run, t, event, job_id, runner, fields) "
                "SELECT %(run)s, %(now)s, 'state', job_id, %(me)s, %(fields)s FROM moved",
                p,
            ).rowcount
            if moved:
                return
            found = self.db.execute(
                "SELECT state, runner FROM omni_batch.jobs WHERE run = %s AND job_id = %s",
                (self.run, job_id),
            ).fetchone()
        if found is None:
            return
        now, owner = found
        by = f" by runner {owner}" if owner and now == "submitting" else ""
        raise JobTaken(
            f"{self.where}: job {job_id!r} is {now}{by}, not what runner {self.runner} read: "
            f"another runner moved it first; not marked {state}"
        )

    def mark_submitting(
        self,
        job_id: str,
        business_id: str | None,
        possible_duplicate: bool,
        account: str | None = None,
    ) -> None:
        """Committed before the POST, and only from `pending` (with the body this runner was
        handed) or from `submitting` owned by this runner (a retry, a resume, a take-over): of
        two runners taking one job, exactly one gets here; the other gets JobTaken."""
        body = self._bodies.get(job_id)
        self._move(
            job_id, "submitting",
            ", attempts = attempts + 1, business_id = %(bid)s, "
            "possible_duplicate = possible_duplicate OR %(dup)s, account = %(acct)s, "
            "runner = %(me)s",
            "(state = 'pending' AND (%(body)s::text IS NULL OR body_hash = %(body)s)) "
            f"OR (state = 'submitting' AND {_SUBMIT_OWNED})",
            {"business_id": business_id, "account": account,
             "possible_duplicate": possible_duplicate or None, "body": body},
            bid=business_id, dup=possible_duplicate, acct=account, body=body,
        )  # fmt: skip

    def mark_running(
        self, job_id: str, task_id: str, request_id: str | None, adopted: bool = False
    ) -> None:
        """Committed the moment the task id is known; only from `submitting` owned by this
        runner. The id joins ``task_ids``."""
        self._move(
            job_id, "running",
            ", task_id = %(task)s, request_id = %(rid)s, submitted_at = %(now)s, "
            "task_ids = coalesce(task_ids || ' ', '') || %(task)s, task_status = NULL",
            f"state = 'submitting' AND {_SUBMIT_OWNED}",
            {"task_id": task_id, "request_id": request_id, "adopted": adopted or None},
            task=task_id, rid=request_id,
        )  # fmt: skip
        self._settled(job_id)

    def keep_task(self, job_id: str, task_id: str, request_id: str | None) -> None:
        """A task this runner's POST created for a job another runner settled or took (its
        mark_running was JobTaken): it may be billed, so its id joins ``task_ids`` (once) and
        the job is flagged ``possible_duplicate``; nothing else changes, whatever the job's
        state. One statement, unconditional on the state (the UPDATE and its `stray_task`
        event row), committed before returning."""
        p = {
            "run": self.run, "job": job_id, "task": task_id, "now": time.time(),
            "me": self.runner, "fields": _fields({"task_id": task_id, "request_id": request_id}),
        }  # fmt: skip
        with self._writing():
            self.db.execute(
                "WITH kept AS (UPDATE omni_batch.jobs SET task_ids = CASE WHEN "
                "strpos(' ' || coalesce(task_ids, '') || ' ', ' ' || %(task)s || ' ') > 0 "
                "THEN task_ids ELSE coalesce(task_ids || ' ', '') || %(task)s END, "
                "possible_duplicate = true WHERE run = %(run)s AND job_id = %(job)s "
                "RETURNING job_id) "
                "INSERT INTO omni_batch.events (run, t, event, job_id, runner, fields) "
                "SELECT %(run)s, %(now)s, 'stray_task', job_id, %(me)s, %(fields)s FROM kept",
                p,
            )

    def _settled(self, job_id: str) -> None:
        self._bodies.pop(job_id, None)

    def mark_pending(self, job_id: str, reason: str) -> None:
        """The submit was refused with nothing created (401/402): from `submitting` only."""
        self._move(
            job_id, "pending", "", f"state = 'submitting' AND {_SUBMIT_OWNED}", {"reason": reason}
        )
        self._settled(job_id)

    def mark_downloading(
        self,
        job_id: str,
        video_url: str,
        expires_at: float | None,
        completed_at: float | None,
        polls: int,
    ) -> None:
        self._move(
            job_id, "downloading",
            ", video_url = %(url)s, expires_at = %(exp)s, completed_at = %(done)s, "
            "polls = %(polls)s",
            "state IN ('running', 'downloading')",
            {"video_url": video_url, "expires_at": expires_at, "polls": polls},
            url=video_url, exp=expires_at, done=completed_at or time.time(), polls=polls,
        )  # fmt: skip

    def mark_completed(
        self, job_id: str, video_path: str, size: int, check: VideoCheck | None = None
    ) -> None:
        """The video is in the store; committed at once (nothing is deferred here)."""
        sets = ", video_path = %(path)s, bytes = %(size)s"
        _, event = completed_change(video_path, size, check)
        params: dict[str, Any] = {"path": video_path, "size": size}
        if check is not None:
            sets += (
                ", verified = %(ok)s, verify_message = %(vm)s, video_width = %(w)s, "
                "video_height = %(h)s, video_duration_s = %(d)s"
            )
            params.update(
                ok=check.ok, vm=check.message, w=check.width, h=check.height, d=check.duration_s
            )
        self._move(
            job_id, "completed", sets, "state IN ('running', 'downloading')", event, **params
        )

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
        """As SqliteJournal.mark_failed; from `submitting` (owned as for mark_running),
        `running` or `downloading`."""
        self._move(
            job_id, "failed",
            ", error_type = %(et)s, error_message = %(msg)s, http_status = %(hs)s, "
            "task_status = %(task)s, possible_duplicate = possible_duplicate OR %(dup)s, "
            "request_id = coalesce(%(rid)s, request_id), polls = coalesce(%(polls)s, polls)",
            f"(state = 'submitting' AND {_SUBMIT_OWNED}) OR state IN ('running', 'downloading')",
            failed_change(
                error_type=error_type, message=message, http_status=http_status,
                request_id=request_id, polls=polls, possible_duplicate=possible_duplicate,
                task=task,
            )[1],
            et=error_type, msg=message[:1000], hs=http_status, task=task, dup=possible_duplicate,
            rid=request_id or None, polls=polls,
        )  # fmt: skip
        self._settled(job_id)

    # -- reviews -------------------------------------------------------------------------------
    def reviews(self) -> dict[str, Review]:
        return {
            r[0]: Review(*r)
            for r in self._all(
                "SELECT job_id, pick, score, note, reviewed_at FROM omni_batch.reviews "
                "WHERE run = %s",
                (self.run,),
            )
        }

    def reviews_of(self, job_ids: Iterable[str]) -> dict[str, Review]:
        ids = list(job_ids)
        found = {
            r[0]: Review(*r)
            for r in self._all(
                "SELECT job_id, pick, score, note, reviewed_at FROM omni_batch.reviews "
                "WHERE run = %s AND job_id = ANY(%s)",
                (self.run, ids),
            )
        }
        return {j: found[j] for j in ids if j in found}

    def set_review(
        self, job_id: str, *, pick: Any = KEEP, score: Any = KEEP, note: Any = KEEP
    ) -> Review:
        """As SqliteJournal.set_review: the review and its event row in one transaction (the
        row locked, so two reviewers changing different fields both keep theirs)."""
        wrong = check_review(pick, score, note)
        if wrong:
            raise UsageError(f"{job_id}: {wrong[0]}")
        with self._writing(), self.db.transaction():
            if not self.db.execute(
                "SELECT 1 FROM omni_batch.jobs WHERE run = %s AND job_id = %s FOR SHARE",
                (self.run, job_id),
            ).fetchone():
                raise UsageError(f"{self.where}: no job {job_id!r} in this run")
            old_row = self.db.execute(
                "SELECT job_id, pick, score, note, reviewed_at FROM omni_batch.reviews "
                "WHERE run = %s AND job_id = %s FOR UPDATE",
                (self.run, job_id),
            ).fetchone()
            old = Review(*old_row) if old_row else Review(job_id)
            new = Review(
                job_id,
                old.pick if pick is KEEP else pick,
                old.score if score is KEEP else score,
                old.note if note is KEEP else note[:NOTE_MAX],
                round(time.time(), 3),
            )
            self.db.execute(
                "INSERT INTO omni_batch.reviews VALUES (%s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (run, job_id) DO UPDATE SET pick = excluded.pick, "
                "score = excluded.score, note = excluded.note, reviewed_at = excluded.reviewed_at",
                (self.run, new.job_id, new.pick, new.score, new.note, new.reviewed_at),
            )
            review = {"pick": new.pick, "score": new.score, "note": new.note}
            self.db.execute(
                "INSERT INTO omni_batch.events (run, t, event, job_id, runner, fields) "
                "VALUES (%s, %s, 'review', %s, %s, %s)",
                (self.run, new.reviewed_at, job_id, self.runner,
                 _fields({"review": review, "reviewed_at": new.reviewed_at})),
            )  # fmt: skip
        return new


def _fields(fields: dict[str, Any]) -> Jsonb:
    return Jsonb({k: v for k, v in fields.items() if v is not None})


def _row(r: Sequence[Any]) -> JobRow:
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


def _is_a_journal(journal: PostgresJournal) -> Journal:
    return journal  # type-checked: PostgresJournal satisfies the Journal protocol
