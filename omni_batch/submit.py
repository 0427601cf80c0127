"""The submit path, where the money is: one POST per job unless the earlier one provably
never landed, reconciling by client_business_id, and the journal written around every POST.

A mixin of Engine (it shares the engine's journal, queues and counters); kept apart because
these rules are the ones a reviewer must be able to read in one sitting.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable

from omni_batch import crash
from omni_batch.client import Submitted, TaskState
from omni_batch.errors import (
    Ambiguous,
    ApiError,
    AuthError,
    BadResponse,
    GatewayError,
    OmniBatchError,
    QuotaError,
    RequestRejected,
    TransportError,
)
from omni_batch.journal import JobRow
from omni_batch.policy import retried

PAGE = 64  # pending jobs read from the journal at a time


class Stopping(Exception):
    """Raised inside a submit when the run is stopping and nothing more may be sent."""


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

    async def _submit_call(self, row: JobRow, business_id: str | None) -> Submitted:
        return await retried(
            self.policy.submit_retrying,
            lambda: self._pressured(lambda: self.client.submit(row.body, business_id), submit=True),
        )

    async def _reconcile(self, business_id: str | None) -> tuple[TaskState | None, bool]:
        """Did a submit carrying ``business_id`` land? (its state or None, whether we know)."""
        if not (self.reconcile and business_id):
            return None, False
        try:
            state = await self._status_call(business_id)
        except AuthError:
            raise
        except RequestRejected as exc:
            return None, exc.status == 404
        except OmniBatchError:
            return None, False
        return state, True

    # -- submitting -------------------------------------------------------------------------------
    def _close_submissions(self, quota: QuotaError | None = None) -> None:
        if quota is not None and self.quota_hit is None:
            self.quota_hit = quota
            self.log(
                f"402 insufficient quota: no new submissions; finishing {self.active} in flight"
            )
        self.halt.set()

    async def feeder(self) -> None:
        """Reads pending jobs in pages and hands them to the submit workers."""
        after = -1
        try:
            while not self.halt.is_set():
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

        A POST is sent again only when the earlier one provably did not land (refused
        connection, 5xx other than 502/504, or a lookup of its business id said 404), else
        the job is flagged ``possible_duplicate``. With reconciling, the same business id is
        reused, so an earlier POST that lands late turns the resend into a 409 we adopt.
        """
        flagged = row.possible_duplicate
        business_id = row.business_id or self.new_business_id(row)
        maybe_sent = False
        if ambiguous:  # a crash left it between "submitting" and an answer
            found, known = await self._reconcile(business_id)
            if found:
                return await self._adopt(row, found, business_id)
            flagged, maybe_sent = flagged or not known, not known
        for round_ in range(self.policy.retries + 1):
            self.journal.mark_submitting(row.job_id, business_id, flagged)
            if round_ == 0:
                self._moved(row.state, "submitting")
            try:
                crash.point("before_post")
                submitted = await self._submit_call(row, business_id)
                crash.point("after_post")
            except (Ambiguous, BadResponse, GatewayError) as exc:
                # the task may exist (and be billed): look it up, or send again flagged
                found, known = await self._reconcile(business_id)
                if found:
                    return await self._adopt(row, found, business_id)
                flagged, maybe_sent = flagged or not known, not known
                if self.halt.is_set() or round_ == self.policy.retries:
                    return await self._give_up_submit(row, exc, maybe_sent)
                how = "flagged possible_duplicate" if flagged else "it did not land"
                self.log(f"{row.job_id}: submit outcome unknown ({exc}); sending again, {how}")
                continue
            except RequestRejected as exc:
                if exc.status == 409 and business_id:  # our id is taken: an earlier POST landed
                    found, _ = await self._reconcile(business_id)
                    if found:
                        return await self._adopt(row, found, business_id)
                return await self._give_up_submit(row, exc, maybe_sent)
            except Stopping:
                return await self._unsent(row, "stopped before sending", maybe_sent)
            except AuthError:
                await self._unsent(row, "authentication failed", maybe_sent)
                raise
            except QuotaError as exc:
                self._close_submissions(exc)
                return await self._unsent(row, "quota exhausted", maybe_sent)
            except (ApiError, TransportError) as exc:
                return await self._give_up_submit(row, exc, maybe_sent)
            self.journal.mark_running(row.job_id, submitted.task_id, submitted.request_id)
            crash.point("after_task_id")
            self._moved("submitting", "running")
            flight = self._flight(row, submitted.task_id)
            self.schedule(flight, self.policy.first_poll)
            return None

    async def _adopt(self, row: JobRow, found: TaskState, business_id: str) -> None:
        """An earlier POST did land: take its task, and use the lookup's answer as its first
        poll (it may already be finished, and a finished task is never polled again)."""
        task_id = found.task_id or business_id
        self.journal.mark_running(row.job_id, task_id, found.request_id, adopted=True)
        self._moved("submitting", "running")
        self.log(f"{row.job_id}: an earlier submit did land (task {task_id}); adopted it")
        await self.on_state(self._flight(row, task_id), found)

    async def _unsent(self, row: JobRow, reason: str, maybe_sent: bool) -> None:
        """The last POST was refused or never left. If an earlier one may have landed, the
        job stays `submitting` so the next run settles it; else it is simply pending."""
        if not maybe_sent:
            self.journal.mark_pending(row.job_id, reason)
            self._moved("submitting", "pending")
        await self._release()

    async def _give_up_submit(self, row: JobRow, exc: OmniBatchError, maybe_sent: bool) -> None:
        if maybe_sent and self.halt.is_set():
            return await self._unsent(row, "stopping", maybe_sent)  # the next run settles it
        self.journal.mark_failed(
            row.job_id,
            error_type=getattr(exc, "error_type", None) or type(exc).__name__,
            message=getattr(exc, "message", str(exc)),
            http_status=getattr(exc, "status", None),
            request_id=getattr(exc, "request_id", None),
        )
        self._moved("submitting", "failed")
        await self._release()
