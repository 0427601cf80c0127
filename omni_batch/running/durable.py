"""A run shared by several runner processes on several machines (issue #18).

Each job is one durable DBOS workflow (DBOS Transact over the run's PostgreSQL database), whose id
names the run, the job and its generation (how often the job was reopened). Its steps call the
single-machine engine's stage code in this process: the submit step hands the job to the
``Submitter`` (the same money rules: `submitting` committed before the POST, the task id the
moment it arrives, a crash-left submit reconciled by its client_business_id or resent flagged
``possible_duplicate``), the finish step waits while the engine polls the task, downloads the
video into the store (create-only puts) and records it. The journal's conditional transitions
decide every race; DBOS only hands each job to one runner, and hands it again when that runner
dies.

What DBOS does not do, this module does (docs/design/several-machines.md):
- liveness: each runner beats a row in ``omni_batch.runners``; a runner silent for its
  ``dead_after`` seconds (or one that left) has its `submitting` jobs orphaned (any runner may
  settle them) and its pending workflows handed back to the queue
  (``DBOS._recover_pending_workflows``, private: dbos is pinned below 4). The row is a lease:
  once past, the runner's beats are refused for good and it sends nothing more (``fenced``);
- the rate at the POST: the account budgets' shared slots (running/shared_pace.py) pace every
  runner's requests together; the queue's limiter only admits workflows at about that rate;
- the in-flight cap over all runners: the queue's ``global_concurrency``.

A workflow ends only when its job is settled (completed or failed). A job the engine leaves for
a later run (a stop, a refused account, the spend limit) keeps its workflow pending: it is
cancelled with the runner, and whichever runner is alive (or starts next) takes it up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dbos import DBOS, DBOSConfig, SetWorkflowID

from omni_batch._version import __version__
from omni_batch.errors import OmniBatchError, StateError

if TYPE_CHECKING:
    from dbos._queue import QueueRateLimit

    from omni_batch.journal.postgres import PostgresJournal
    from omni_batch.running.engine import Engine

APP = "omni-batch"  # DBOS's application name: queues and workflows belong to it
SETTLED = ("completed", "failed")
WITH_TASK = ("running", "downloading")
ENQUEUE_PAGE = 500
RESUBMIT_AFTER_S = 1.0  # a submit refused with nothing created (429s): tried again after this


@dataclass(frozen=True)
class Liveness:
    """How runners tell each other they are alive: a beat every ``beat`` s; one silent for
    ``dead_after`` s is dead and its work is taken up (far above any pause of a live runner:
    a stale runner's POST may already have left, and only reconcile-or-flag covers that)."""

    beat: float = 1.0
    dead_after: float = 15.0


def default_runner() -> str:
    """A runner id unique to this process: the host's name and the process id."""
    return f"{socket.gethostname()}-{os.getpid()}"


_RUNS: dict[str, SharedRun] = {}  # run name -> this process's runner of it (one per process)


async def _guarded(run: str, job_id: str, step: Callable[[SharedRun], Awaitable[str]]) -> str:
    """A step's body, which never ends its workflow with an error: an error (the journal's
    database gone, a bug) ends this runner's run and leaves the workflow pending for whoever
    takes it up; a workflow of a run this process does not run (DBOS hands a restarted runner
    its own pending workflows, whatever their run) waits here until this runner leaves."""
    runner = _RUNS.get(run)
    if runner is None:
        await asyncio.get_running_loop().create_future()  # until cancelled at the end
    assert runner is not None
    try:
        return await step(runner)
    except Exception as exc:
        runner.engine.fail_fatal(exc)
        return await runner.park(job_id)


@DBOS.step(name="omni_batch.submit")
async def _submit_step(run: str, job_id: str, business_id: str) -> str:
    return await _guarded(run, job_id, lambda runner: runner.submit(job_id, business_id))


@DBOS.step(name="omni_batch.finish")
async def _finish_step(run: str, job_id: str) -> str:
    return await _guarded(run, job_id, lambda runner: runner.finish(job_id))


@DBOS.workflow(name="omni_batch.job")
async def job_workflow(run: str, job_id: str) -> str:
    """One job: submit (or reconcile), then poll, download, verify and record. Returns the
    job's settled state. Its workflow id is the client_business_id its submits carry."""
    business_id = DBOS.workflow_id
    assert business_id is not None
    state = await _submit_step(run, job_id, business_id)
    if state in WITH_TASK:
        state = await _finish_step(run, job_id)
    return state


def workflow_id(run_key: str, job_id: str, gen: int) -> str:
    """A job's workflow id for its generation ``gen`` (how often it was reopened), which is
    also the client_business_id of its submits: unique per run (``run_key``, kept in the
    run's meta) and generation, and at most 120 characters of the job id's safe ones."""
    wid = f"ob-{run_key}-{gen}-{job_id}"
    if len(wid) > 120:  # long job ids: a digest keeps different jobs apart
        digest = hashlib.blake2b(job_id.encode(), digest_size=8).hexdigest()
        wid = f"{wid[:100]}-{digest}"
    return wid


class SharedRun:
    """This process's part in a shared run: DBOS launched with this runner's id, the run's
    queue, the workflows' way into the engine, and the heartbeat, the lease and the reaper."""

    def __init__(
        self,
        engine: Engine,
        journal: PostgresJournal,
        url: str,
        *,
        max_in_flight: int,
        admit_rate: float | None,
        liveness: Liveness = Liveness(),
    ):
        self.engine, self.journal, self.url = engine, journal, url
        self.run, self.runner = journal.run, journal.runner
        self.run_key = journal.meta("run_key") or "run"
        self.queue_name = f"{APP}/{self.run}"
        self.max_in_flight = max_in_flight
        self.admit_rate = admit_rate  # workflow starts per second, all runners (None: any)
        self.liveness = liveness
        self.parked: set[str] = set()  # jobs left for a later run or another runner
        self.steps: set[asyncio.Task[Any]] = set()  # workflow steps under way here
        self.queue: Any = None
        self.beating: threading.Thread | None = None
        self.stopped = threading.Event()
        self.beaten_at = _clock()  # the last heartbeat the database took
        self.lost = False  # a beat was refused: others may hold this runner's jobs for good
        engine.fence = self.fenced  # no POST leaves a runner that may have been replaced

    # -- DBOS ------------------------------------------------------------------------------------
    async def launch(self) -> None:
        """DBOS for this process, from the running loop (so the workflows run on it, beside
        the engine), listening to this run's queue only. Blocks for its start (~0.5 s: the
        system tables' migrations)."""
        if _RUNS:
            raise StateError("one shared run per process")
        config: DBOSConfig = {
            "name": APP,
            "system_database_url": self.url,
            "executor_id": self.runner,
            # runners of one release share the work (a runner takes up only its own version's)
            "application_version": __version__,
            "log_level": "ERROR",  # its warnings (queue contention, cancelled steps) are ours
            "sys_db_pool_size": 4,
            # a paused runner (SIGSTOP, a suspended machine) inside one of DBOS's transactions
            # would hold its locks, and every other runner's dequeues and recoveries with them,
            # for the server's default 60 s: the server ends such a session sooner
            "sys_db_idle_transaction_timeout_sec": max(5.0, self.liveness.dead_after / 2),
        }
        _RUNS[self.run] = self
        try:
            sent = _clock()
            self.journal.join(self.liveness.dead_after)
            self.beaten_at = sent
            # its own thread and connection: a busy event loop (a launch, a long journal call)
            # never silences it; a paused process, a lost database do
            self.beating = threading.Thread(
                target=self._beat,
                args=(self.journal.reconnected(),),
                name="omni-batch-heartbeat",
                daemon=True,
            )
            self.beating.start()
            DBOS(config=config)
            DBOS.listen_queues([self.queue_name])  # another run's workflows are not ours
            DBOS.launch()
            limiter: QueueRateLimit | None = None
            if self.admit_rate is not None and math.isfinite(self.admit_rate):
                limiter = {"limit": max(1, math.ceil(self.admit_rate)), "period": 1.0}
            self.queue = await DBOS.register_queue_async(
                self.queue_name,
                global_concurrency=self.max_in_flight,
                limiter=limiter,
                polling_interval_sec=0.1,
                on_conflict="always_update",
            )
        except Exception as exc:
            await self.close()
            if isinstance(exc, OmniBatchError):
                raise
            raise StateError(
                f"cannot start the shared run on {self.journal.where}: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from None

    async def close(self) -> None:
        _RUNS.pop(self.run, None)
        self.stopped.set()
        if self.beating is not None:
            await asyncio.to_thread(self.beating.join, 5)
        with contextlib.suppress(Exception):
            await asyncio.to_thread(DBOS.destroy, workflow_completion_timeout_sec=0)

    # -- liveness --------------------------------------------------------------------------------
    def _beat(self, journal: PostgresJournal) -> None:
        """The heartbeat, for as long as this runner lives (polling and downloading included,
        after submissions closed): others take its work up only once it is silent."""
        try:
            while not self.stopped.wait(self.liveness.beat):
                sent = _clock()  # a pause after the database took it must not look fresh
                try:
                    alive = journal.beat()
                except OmniBatchError:
                    continue  # the lease runs out: no POST leaves until a beat is taken again
                if not alive:  # silent too long, taken for dead: it never comes back
                    self.lost = True
                    return
                self.beaten_at = sent
        finally:
            with contextlib.suppress(Exception):
                journal.close()

    def fenced(self) -> str | None:
        """Why no POST may leave now (None: it may): this runner's last heartbeat is so old
        (a pause, a suspended machine, a lost database) that the others may have taken its
        jobs up; a POST now could pay for a job twice. The clock counts a suspend."""
        silent = _clock() - self.beaten_at
        if silent < self.liveness.dead_after / 2 and not self.lost:
            return None
        return (
            f"runner {self.runner} was silent for {silent:.0f} s (--dead-after "
            f"{self.liveness.dead_after:g}): the other runners may have taken its jobs up; it "
            "stops without sending more"
        )

    async def reap(self) -> list[str]:
        """Runners silent too long: their `submitting` jobs orphaned (any runner settles them
        now), their pending workflows back on the queue. Racing reapers are harmless: DBOS
        hands back only workflows still owned by the dead runner."""
        dead = self.journal.dead_runners()
        for runner in dead:
            orphaned = self.journal.orphan(runner)
            handles = await asyncio.to_thread(DBOS._recover_pending_workflows, [runner])
            self.journal.forget_runner(runner)
            if orphaned or handles:
                self.engine.log(
                    f"runner {runner} left or stopped answering: its {len(handles)} unfinished "
                    "job(s) are taken up here or by another runner"
                )
        return dead

    # -- the workflows' steps --------------------------------------------------------------------
    async def park(self, job_id: str) -> str:
        """Left as it is for a later run or another runner: the workflow stays pending (this
        waits until the runner stops, which cancels it; then whoever takes it up goes on)."""
        self.parked.add(job_id)
        with contextlib.suppress(OmniBatchError):
            self.journal.park(job_id, True)
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            self.parked.discard(job_id)
        raise AssertionError("unreachable")  # pragma: no cover

    def _leaving(self) -> bool:
        engine = self.engine
        spend = engine.spend
        return engine.halt.is_set() or engine.stopping or bool(spend and spend.stopped)

    async def submit(self, job_id: str, business_id: str) -> str:
        """The submit step: nothing sent for a job that has a task; a job `submitting` (its
        runner died mid-submit, or this step runs again after a crash) is settled by the money
        rules (reconcile, or resend flagged); a pending one is submitted. Returns the job's
        state after it."""
        engine = self.engine
        with self._step(job_id):
            while True:
                row = self.journal.job(job_id)
                if row is None:
                    return "failed"  # not in this run (cannot be: its workflow made it)
                if row.state in SETTLED or row.state in WITH_TASK:
                    return row.state
                if job_id in engine.job_account:  # handled here already (another workflow)
                    await engine.watch(job_id)
                    continue
                if self._leaving():
                    return await self.park(job_id)
                engine.watch(job_id)
                submitter = engine.submitter
                submitter.business_ids[job_id] = business_id  # the workflow's own id
                try:
                    await submitter.submit_now(row, ambiguous=row.state == "submitting")
                finally:
                    submitter.business_ids.pop(job_id, None)
                after = self.journal.job(job_id)
                if after is None:
                    return "failed"
                if after.state in SETTLED or after.state in WITH_TASK:
                    return after.state
                if after.state == "pending" and after.attempts > row.attempts:
                    if self._leaving():
                        return await self.park(job_id)
                    # refused with nothing created (429 on every try): again after a pause
                    await asyncio.sleep(RESUBMIT_AFTER_S)
                    continue
                # left as it was (a stop, its account refused or not configured here, the
                # spend limit), or `submitting` for a later run to settle
                return await self.park(job_id)

    async def finish(self, job_id: str) -> str:
        """The finish step: poll the task, download, verify and record, by the engine (which
        holds it already when this runner submitted it). Returns the settled state."""
        engine = self.engine
        with self._step(job_id):
            row = self.journal.job(job_id)
            if row is None:
                return "failed"
            if row.state in SETTLED:
                return row.state
            done = engine.watch(job_id)
            held = job_id in engine.job_account
            if row.state not in WITH_TASK or (
                not held and (self._leaving() or not await engine.take_up(row))
            ):
                engine.watched.pop(job_id, None)
                return await self.park(job_id)
            await done
            row = self.journal.job(job_id)
            if row is not None and row.state in SETTLED:
                return row.state
            # let go of unsettled (a stop, its account refused): for a later run or runner
            return await self.park(job_id)

    @contextlib.contextmanager
    def _step(self, job_id: str) -> Iterator[None]:
        """A step under way here: cancelled when the runner stops (its workflow stays
        pending for whoever takes it up)."""
        task = asyncio.current_task()
        assert task is not None
        self.steps.add(task)
        try:
            self.journal.park(job_id, False)  # taken up: no longer held elsewhere
            yield
        finally:
            self.steps.discard(task)

    # -- feeding the queue -----------------------------------------------------------------------
    async def enqueue_all(self) -> int:
        """A workflow for every job the run still has to settle (one per job and generation:
        a workflow another runner enqueued is not enqueued again), and every workflow of the
        run that ended without settling its job (an error, a cancel) resumed."""
        after, made = -1, 0
        while page := self.journal.unsettled_page(after, ENQUEUE_PAGE):
            for job_id, _, gen in page:
                with SetWorkflowID(workflow_id(self.run_key, job_id, gen)):
                    await self.queue.enqueue_async(job_workflow, self.run, job_id)
                made += 1
            after = page[-1][1]
        ended = await DBOS.list_workflows_async(
            queue_name=self.queue_name,
            status=["ERROR", "CANCELLED", "MAX_RECOVERY_ATTEMPTS_EXCEEDED"],
            load_input=False,
            load_output=False,
        )
        for status in ended:  # its steps read the journal first: a settled job ends at once
            await DBOS.resume_workflow_async(status.workflow_id)
        return made

    def _waiting_elsewhere(self) -> bool:
        """Whether the run holds a job to settle that no runner parked (someone will)."""
        return bool(self.journal.unsettled_page(-1, 1, unparked=True))

    async def feed(self) -> None:
        """The engine's feed in a shared run: enqueue, then reap and keep the progress line
        the whole run's, until the run has nothing left to settle that is not parked (or
        submissions close here)."""
        await self.reap()  # before enqueueing: a dead runner's workflows are taken up first
        await self.enqueue_all()
        while not self._leaving():
            if self.lost:  # its jobs are someone else's now
                raise StateError(self.fenced() or "")
            await self.reap()
            self.engine.stats.counts = self.journal.counts()  # every runner's progress
            if not self._waiting_elsewhere():
                return
            await asyncio.sleep(self.liveness.beat)

    async def stop(self, within: float) -> None:
        """The runner ends: the steps still waiting here are cancelled (their workflows stay
        pending). With nothing held, its row goes (no one is told it left); with jobs parked
        or under way, its row says it left, so the others take them up at once."""
        steps = list(self.steps)
        held = bool(steps or self.parked)
        for task in steps:
            task.cancel()
        if steps:
            await asyncio.wait(steps, timeout=within)
        with contextlib.suppress(OmniBatchError):
            if held:
                self.journal.leave()
            else:
                self.journal.forget_runner(self.runner)


def _clock() -> float:
    """Seconds on a clock that counts a suspended machine (Linux's boot time), else the
    monotonic one."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()
