"""The submit path, where the money is: one POST per job unless the earlier one provably
never landed, reconciling by client_business_id, and the journal written around every POST.

A mixin of Engine (it shares the engine's journal, queues and counters); kept apart because
these rules are the ones a reviewer must be able to read in one sitting.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field

from omni_batch import crash
from omni_batch.client import Submitted, TaskState
from omni_batch.errors import (
    Ambiguous,
    ApiChanged,
    ApiError,
    AuthError,
    BadResponse,
    OmniBatchError,
    QuotaError,
    RequestRejected,
    ServerError,
    TransportError,
    UnrecognisedAnswer,
)
from omni_batch.journal import JobRow
from omni_batch.policy import retried

PAGE = 64  # pending jobs read from the journal at a time


class Stopping(Exception):
    """Raised inside a submit when the run is stopping and nothing more may be sent."""


@dataclass
class LookupProof:
    """What this run has seen of the client_business_id lookup. Its 404 ("no such task") is
    believed only once it has found a task this run created (``proven``)."""

    proven: bool = False
    broken: bool = False  # it failed to find new tasks: ambiguous submits are resent flagged
    lag: float = 0.0  # the longest it was seen to lag behind a create
    failures: int = 0
    probing: bool = False
    checked_journal: bool = False
    journal_check: asyncio.Lock = field(default_factory=asyncio.Lock)


class Submitting:
    """Submit workers and the rules of one job's submit; see the module docstring."""

    async def _unless_halted(self, waiting: Awaitable[None]) -> None:
        """Wait for a submit permit, but give up the moment submissions close (Ctrl-C, 402)."""
        waiter = asyncio.ensure_future(waiting)
        halted = asyncio.ensure_future(self.halt.wait())
        try:
            await asyncio.wait({waiter, halted}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            waiter.cancel()  # cancelled (shutdown): leave no orphan waiting in the limiter
            raise
        finally:
            halted.cancel()
        if not waiter.done():
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
        if self.halt.is_set():
            raise Stopping()
        waiter.result()

    async def _submit_call(
        self, row: JobRow, business_id: str | None, flagged: bool, moved: list[bool]
    ) -> Submitted:
        """Send the POST, again only while every earlier try provably created nothing (no
        connection, 429, a 503 "limiter unavailable"). Every POST is counted in `attempts`
        and committed as `submitting` before it leaves."""

        def send() -> Awaitable[Submitted]:
            self.journal.mark_submitting(row.job_id, business_id, flagged)
            if not moved[0]:
                moved[0] = True
                self._moved(row.state, "submitting")
            crash.point("before_post")
            return self.client.submit(row.body, business_id)

        return await retried(
            self.policy.submit_retrying, lambda: self._pressured(send, submit=True)
        )

    # -- reconciling by client_business_id -------------------------------------------------------
    async def _lookup(self, business_id: str) -> TaskState | None:
        """The task a submit with ``business_id`` created, None on a 404; raises otherwise.
        An answer that echoes another business id is no answer about ours: the lookup is
        marked broken (never trusted again this run) and this raises."""
        try:
            found = await self._status_call(business_id)
        except RequestRejected as exc:
            if exc.status == 404:
                return None
            raise
        if found.business_id is not None and found.business_id != business_id:
            if not self.proof.broken:
                self.proof.broken = True
                self.log(
                    f"a client_business_id lookup for {business_id} answered a task of "
                    f"another id ({found.business_id}): lookups are not trusted this run; "
                    "ambiguous submits are resent flagged possible_duplicate"
                )
            raise BadResponse("the lookup answered another task", status=200)
        return found

    def _grace(self) -> float:
        return max(self.policy.lookup_grace, 3 * self.proof.lag)

    async def _sleep_unless_halted(self, seconds: float) -> bool:
        """Sleep, but wake when submissions close; True when the sleep ran its course. (No
        ``asyncio.wait_for``: on Python 3.11 it can swallow a cancel.)"""
        if seconds > 0 and not self.halt.is_set():
            waiter = asyncio.ensure_future(self.halt.wait())
            try:
                await asyncio.wait({waiter}, timeout=seconds)
            finally:
                waiter.cancel()
        return not self.halt.is_set()

    async def _reconcile(
        self, business_id: str | None, sent_at: float
    ) -> tuple[TaskState | None, bool]:
        """Did a submit carrying ``business_id`` land? Returns (its state or None, whether we
        know). A found task is always believed (and proves the lookup). A 404 may only mean
        the lookup lags behind the create: it is asked again once the grace period since the
        POST is over, and even then believed only if this run has seen the lookup find a task
        it created. Anything else — no lookup, an unproven or broken one, an error — is
        "unknown": the caller resends flagged, or leaves the job for the next run."""
        if not (self.reconcile and business_id):
            return None, False
        for check in range(2):
            try:
                found = await self._lookup(business_id)
            except AuthError:
                raise
            except OmniBatchError:
                return None, False
            if found is not None:
                owner = self.journal.task_owner(found.task_id) if found.task_id else None
                if self.proof.broken or owner is not None:
                    return None, False  # another job's task, or a lookup shown not to work
                self.proof.proven = True  # the lookup found a task this run created
                return found, True
            if self.proof.broken:
                return None, False
            wait = sent_at + self._grace() - time.monotonic()
            if check == 0 and wait > 0:
                if not await self._sleep_unless_halted(wait):
                    return None, False
                continue
            break
        return None, self.proof.proven

    def _prove_lookup(self, task_id: str, business_id: str | None, sent_at: float) -> None:
        """After a submit that got its task id: until the lookup is proven (or shown not to
        work), look the new task up by its client_business_id in the background."""
        proof = self.proof
        if not (self.reconcile and business_id) or proof.proven or proof.broken or proof.probing:
            return
        proof.probing = True
        task = asyncio.create_task(self._probe(task_id, business_id, sent_at))
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def _probe(self, task_id: str, business_id: str, sent_at: float) -> None:
        proof = self.proof
        try:
            for fraction in (0.0, 0.25, 0.5, 1.0):
                wait = sent_at + fraction * self.policy.lookup_grace - time.monotonic()
                if not await self._sleep_unless_halted(wait):
                    return
                try:
                    found = await self._lookup(business_id)
                except OmniBatchError:
                    return  # no verdict: a later submit probes again
                if found is None:
                    continue
                if found.task_id is None:
                    return  # no task id to compare: no verdict
                if found.task_id != task_id:
                    proof.broken = True
                    self.log(
                        f"a client_business_id lookup answered another task ({found.task_id}, "
                        f"not {task_id}): ambiguous submits will be resent flagged "
                        "possible_duplicate"
                    )
                    return
                proof.proven = True
                proof.lag = max(proof.lag, time.monotonic() - sent_at) if fraction else proof.lag
                return
            proof.failures += 1
            if proof.failures >= 2:
                proof.broken = True
                self.log(
                    "the API did not find new tasks by their client_business_id within "
                    f"{self.policy.lookup_grace:g} s: ambiguous submits will be resent flagged "
                    "possible_duplicate"
                )
        finally:
            proof.probing = False

    async def _prove_from_journal(self) -> None:
        """Before settling jobs a crash left mid-submit: prove the lookup on a task an earlier
        run of this folder created (one status call), so its 404s can be believed."""
        async with self.proof.journal_check:
            if self.proof.proven or self.proof.checked_journal or not self.reconcile:
                return
            self.proof.checked_journal = True
            known = self.journal.known_task()
            if known is None:
                return
            task_id, business_id = known
            try:
                found = await self._lookup(business_id)
            except AuthError:
                raise
            except OmniBatchError:
                return
            if found is not None and found.task_id in (None, task_id):
                self.proof.proven = True

    # -- submitting -------------------------------------------------------------------------------
    def _close_submissions(self, reason: OmniBatchError | None = None) -> None:
        """No new submit leaves; tasks in flight are still polled and downloaded. ``reason``
        (402, a changed API) is raised when the run ends."""
        if reason is not None and self.quota_hit is None:
            self.quota_hit = reason
            what = "402 insufficient quota" if isinstance(reason, QuotaError) else str(reason)
            self.log(f"{what}: no new submissions; finishing {self.active} in flight")
        self.halt.set()

    async def feeder(self) -> None:
        """Reads pending jobs in pages and hands them to the submit workers."""
        after = -1
        try:
            while not self.halt.is_set() and not (self.spend and self.spend.stopped):
                page = self.journal.pending_page(after, PAGE)
                if not page:
                    break
                for row in page:
                    if self.halt.is_set():
                        return
                    await self.submits.put((row, False))
                    after = row.seq
        finally:
            self.feeding = False
            self._check_idle()

    async def submit_worker(self) -> None:
        while True:
            row, ambiguous = await self.submits.get()
            self.claimed += 1
            try:
                if self.stopping or (self.halt.is_set() and not ambiguous):
                    continue  # still pending (or still `submitting`) in the journal
                spend = self.spend  # budget.max_cost: stop before a submit could cross it
                if not ambiguous and spend is not None and not spend.allows(row.job_id, row.body):
                    if self.quota_hit is None:  # submits already allowed still go
                        self.quota_hit = spend.over_budget()
                        self.log(f"{self.quota_hit}; finishing {self.active} in flight")
                    continue  # still pending
                async with self.capacity:
                    await self.capacity.wait_for(lambda: self.active < self.cap or self.stopping)
                    if self.stopping:
                        continue
                    self.active += 1
                if self.key_proven.is_set():
                    await self._critical_submit(row, ambiguous)
                else:
                    async with self.probe:
                        await self._critical_submit(row, ambiguous)
            except Exception as exc:  # AuthError, or a bug: end the run rather than hang
                self._fail_fatal(exc)
            finally:
                if self.spend is not None:
                    self.spend.settled(row.job_id)
                self.claimed -= 1
                self.submits.task_done()
                self._check_idle()

    async def _critical_submit(self, row: JobRow, ambiguous: bool) -> None:
        # once a POST may leave, the job must be recorded whatever happens: the submit runs as
        # its own task, which shutdown awaits even when this worker is cancelled
        task = asyncio.create_task(self.submit_job(row, ambiguous))
        self.critical.add(task)
        task.add_done_callback(self.critical.discard)
        await asyncio.shield(task)

    def new_business_id(self, row: JobRow) -> str | None:
        """A client_business_id unique to this submit generation of the job (it is journaled
        before the POST, so a crash keeps it); None when reconciling is off."""
        if not self.reconcile:
            return None
        return f"ob-{self.run_key}{secrets.token_hex(3)}-{row.job_id}"[:120]

    async def submit_job(self, row: JobRow, ambiguous: bool) -> None:
        """Submit one job (or settle one a crash left mid-submit); always leaves it recorded.

        A POST is sent again unflagged only when every earlier one provably created nothing:
        no connection, a 429, a 503 "limiter unavailable", or a proven client_business_id
        lookup that still answers 404 after its grace period. Any other failure after the body
        may have left (any other 5xx, a timeout, a lost answer) is settled by that lookup, or
        sent again at most ``Policy.ambiguous_resends`` times flagged ``possible_duplicate``.
        A 2xx without a task id we recognise is never sent again: the job fails as
        ``unrecognised_answer``, flagged. The same business id is reused by every resend, so
        an earlier POST that lands late turns the resend into a 409 whose task is adopted.
        """
        flagged = row.possible_duplicate
        business_id = row.business_id or self.new_business_id(row)
        maybe_sent = False  # some earlier POST of this job may have created a task
        moved = [row.state == "submitting"]
        if ambiguous and row.business_id is None and row.attempts > 0:
            # sent without a business id (a run without --reconcile): nothing can look it up
            flagged, maybe_sent = True, True
        elif ambiguous:  # a crash left it between "submitting" and an answer
            await self._prove_from_journal()
            found, known = await self._reconcile(business_id, time.monotonic())
            if found:
                return await self._adopt(row, found, business_id)
            flagged, maybe_sent = flagged or not known, not known
        resends = tries = 0
        while True:
            sent_at = time.monotonic()
            try:
                submitted = await self._submit_call(row, business_id, flagged, moved)
                crash.point("after_post")
            except UnrecognisedAnswer as exc:
                return await self._unrecognised(row, exc)
            except (Ambiguous, ServerError) as exc:
                if exc.created_nothing:  # a 503 "limiter unavailable" on every retry
                    return await self._give_up_submit(row, exc, maybe_sent, flagged)
                # the task may exist (and be billed): look it up, or send again flagged
                found, known = await self._reconcile(business_id, sent_at)
                if found:
                    return await self._adopt(row, found, business_id)
                flagged, maybe_sent = flagged or not known, not known
                tries += 1
                resends += not known
                if (
                    self.halt.is_set()
                    or tries > self.policy.retries
                    or resends > self.policy.ambiguous_resends
                ):
                    return await self._give_up_submit(row, exc, maybe_sent, flagged)
                how = "flagged possible_duplicate" if not known else "it did not land"
                self.log(f"{row.job_id}: submit outcome unknown ({exc}); sending again, {how}")
                continue
            except RequestRejected as exc:
                if exc.status == 409 and business_id:  # our id is taken: an earlier POST landed
                    found, _ = await self._reconcile(business_id, 0.0)
                    if found:
                        return await self._adopt(row, found, business_id)
                    if exc.task_id and (named := await self._named_task(exc.task_id)):
                        return await self._adopt(row, named, business_id)
                    # a task exists that we cannot name: never "created nothing"
                    return await self._give_up_submit(row, exc, True, True)
                return await self._give_up_submit(row, exc, maybe_sent, flagged)
            except Stopping:
                return await self._unsent(row, "stopped before sending", maybe_sent, moved[0])
            except AuthError:
                await self._unsent(row, "authentication failed", maybe_sent, moved[0])
                raise
            except QuotaError as exc:
                self._close_submissions(exc)
                return await self._unsent(row, "quota exhausted", maybe_sent, moved[0])
            except (ApiError, TransportError) as exc:
                return await self._give_up_submit(row, exc, maybe_sent, flagged)
            self.unrecognised_streak = 0
            self.journal.mark_running(row.job_id, submitted.task_id, submitted.request_id)
            if self.spend is not None:
                self.spend.billed(row.job_id, row.body)
            crash.point("after_task_id")
            self._moved("submitting", "running")
            self._prove_lookup(submitted.task_id, business_id, sent_at)
            flight = self._flight(row, submitted.task_id)
            self.schedule(flight, self.policy.first_poll)
            return None

    async def _unrecognised(self, row: JobRow, exc: UnrecognisedAnswer) -> None:
        """A 2xx without a task id we recognise: the task may exist and be billed. Never sent
        again; the job fails flagged with the answer kept; several in a row stop submitting."""
        self.unrecognised_streak += 1
        self.journal.mark_failed(
            row.job_id,
            error_type="unrecognised_answer",
            message=f"possibly billed, not sent again: {exc.message}",
            http_status=exc.status,
            request_id=exc.request_id,
            possible_duplicate=True,
        )
        self._moved("submitting", "failed")
        if self.unrecognised_streak >= self.policy.unrecognised_in_a_row:
            self._close_submissions(
                ApiChanged(
                    f"the API's submit answers changed shape: {self.unrecognised_streak} in a "
                    f"row had no task id omni-batch recognises (last: {exc.raw[:200]}); "
                    "submitting stopped, those jobs are failed as unrecognised_answer and "
                    "flagged possible_duplicate"
                )
            )
        await self._release()

    async def _adopt(self, row: JobRow, found: TaskState, business_id: str) -> None:
        """An earlier POST did land: take its task, and use the lookup's answer as its first
        poll (it may already be finished, and a finished task is never polled again)."""
        task_id = found.task_id or business_id
        self.journal.mark_running(row.job_id, task_id, found.request_id, adopted=True)
        if self.spend is not None:
            self.spend.billed(row.job_id, row.body)
        self._moved("submitting", "running")
        self.log(f"{row.job_id}: an earlier submit did land (task {task_id}); adopted it")
        await self.on_state(self._flight(row, task_id), found)

    async def _named_task(self, task_id: str) -> TaskState | None:
        """The task a 409 named, if a status call shows it exists and no other job holds it."""
        if self.journal.task_owner(task_id) is not None:
            return None
        try:
            state = await self._status_call(task_id)
        except AuthError:
            raise
        except OmniBatchError:
            return None
        if state.task_id not in (None, task_id):
            return None
        return dataclasses.replace(state, task_id=task_id)

    async def _unsent(self, row: JobRow, reason: str, maybe_sent: bool, moved: bool) -> None:
        """The last POST was refused or never left. If an earlier one may have landed, the
        job stays `submitting` so the next run settles it; else it is simply pending."""
        if not maybe_sent and moved:
            self.journal.mark_pending(row.job_id, reason)
            self._moved("submitting", "pending")
        await self._release()

    async def _give_up_submit(
        self, row: JobRow, exc: OmniBatchError, maybe_sent: bool, flagged: bool
    ) -> None:
        if maybe_sent and self.halt.is_set():  # the next run settles it
            return await self._unsent(row, "stopping", maybe_sent, True)
        self.journal.mark_failed(
            row.job_id,
            error_type=getattr(exc, "error_type", None) or type(exc).__name__,
            message=getattr(exc, "message", str(exc)),
            http_status=getattr(exc, "status", None),
            request_id=getattr(exc, "request_id", None),
            possible_duplicate=flagged,
        )
        self._moved("submitting", "failed")
        await self._release()
