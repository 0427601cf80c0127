"""The submit path, where the money is: one POST per job unless the earlier one provably
never landed, reconciling by client_business_id, and the journal written around every POST.

``Submitter`` holds these rules. The engine composes one and hands it what it needs, each
declared in its constructor: the journal, the accounts, the policy, the counters, the halt
event, and ``SubmitHost`` — what it asks of the run around it (in-flight slots, calls under
the accounts' budgets, the poller). Kept apart because these rules are the ones a reviewer must
be able to read in one sitting.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar

from omni_batch import crash
from omni_batch.errors import (
    Ambiguous,
    ApiChanged,
    ApiError,
    ApiUnreachable,
    AuthError,
    BadResponse,
    JobTaken,
    NotSent,
    OmniBatchError,
    QuotaError,
    RateLimited,
    RequestRejected,
    ServerError,
    StateError,
    TransportError,
    UnrecognisedAnswer,
)
from omni_batch.journal import JobRow, Journal
from omni_batch.running.accounts import AccountRun, choose
from omni_batch.running.api import Submitted, TaskState
from omni_batch.running.options import Policy, retried
from omni_batch.running.stats import RunStats

if TYPE_CHECKING:
    from omni_batch.running.api import ToapisClient
    from omni_batch.running.money import Spend

PAGE = 64  # pending jobs read from the journal at a time
T = TypeVar("T")


class Stopping(Exception):
    """Raised inside a submit when the run is stopping and nothing more may be sent."""


class AccountRefused(Exception):
    """A submit refused for its account (401 key refused, 402 out of quota): the account is
    retired (for submits at least). ``again``: the job went back to pending (the refused POST
    created nothing and no earlier one may have), so another account may send it."""

    def __init__(self, error: AuthError | QuotaError, again: bool):
        super().__init__(str(error))
        self.error, self.again = error, again


@dataclass
class LookupProof:
    """What this run has seen of the client_business_id lookup on one account (tasks and
    business ids are per account: a lookup proven with account A's key says nothing of a 404
    to account B's). Its 404 ("no such task") is believed only once it has found, on that
    account, a task this run created (``proven``). ``broken`` is set on every account's."""

    proven: bool = False
    broken: bool = False  # it failed to find new tasks: ambiguous submits are resent flagged
    lag: float = 0.0  # the longest it was seen to lag behind a create
    failures: int = 0
    probing: bool = False
    checked_journal: bool = False
    journal_check: asyncio.Lock = field(default_factory=asyncio.Lock)


async def unless_halted(waiting: Awaitable[None], halt: asyncio.Event) -> None:
    """Wait for a submit permit, but give up the moment submissions close (Ctrl-C, 402)."""
    waiter = asyncio.ensure_future(waiting)
    halted = asyncio.ensure_future(halt.wait())
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
    if halt.is_set():
        raise Stopping()
    waiter.result()


class SubmitHost(Protocol):
    """What the submitter asks of the run around it (the Engine): the in-flight slots it
    claims and gives back, the API under the accounts' budgets, what to do with an account
    that refused, and the poller a job's task is handed to."""

    @property
    def stopping(self) -> bool: ...  # Ctrl-C or a fatal error: nothing new at all
    @property
    def active(self) -> int: ...  # jobs claimed and not yet terminal, all accounts
    @property
    def max_in_flight(self) -> int: ...
    @property
    def capacity(self) -> asyncio.Condition: ...  # notified whenever a slot frees
    @property
    def queued(self) -> set[str]: ...  # jobs that chose an account and wait for its budget
    @property
    def job_account(self) -> dict[str, AccountRun]: ...  # each claimed job's account

    def log(self, message: str) -> None: ...
    def account_named(self, name: str | None) -> AccountRun | None: ...
    def claim(self, job_id: str, account: AccountRun) -> None: ...
    async def release(self, job_id: str | None = None) -> None: ...
    def check_idle(self) -> None: ...
    def fail_fatal(self, exc: BaseException) -> None: ...
    def fenced(self) -> str | None: ...  # why no POST may leave now (a shared run's lease)
    def unreachable(self, exc: NotSent) -> ApiUnreachable: ...
    async def retire(self, account: AccountRun, exc: AuthError) -> None: ...
    async def out_of_quota(self, account: AccountRun, exc: QuotaError) -> None: ...
    async def pressured(
        self,
        call: Callable[[ToapisClient], Awaitable[T]],
        *,
        submit: bool = False,
        acct: AccountRun | None = None,
    ) -> T: ...
    async def status_call(self, task_id: str, acct: AccountRun | None = None) -> TaskState: ...
    def start_polling(self, row: JobRow, task_id: str) -> None:
        """A task was just created for ``row``: poll it (its first poll planned)."""
        ...

    async def first_answer(self, row: JobRow, task_id: str, state: TaskState) -> None:
        """An earlier POST's task was adopted: ``state`` is its first poll's answer."""
        ...


class Submitter:
    """Submit workers and the rules of one job's submit; see the module docstring."""

    def __init__(
        self,
        host: SubmitHost,
        journal: Journal,
        accounts: list[AccountRun],
        policy: Policy,
        stats: RunStats,
        halt: asyncio.Event,
        *,
        reconcile: bool,
        run_key: str,
        queue_size: int,
    ):
        self.host, self.journal, self.accounts = host, journal, accounts
        self.policy, self.stats, self.reconcile, self.run_key = policy, stats, reconcile, run_key
        self.halt = halt  # no new submit may leave (Ctrl-C, 402, a fatal error)
        self.spend: Spend | None = None  # budget.max_cost (issue #15): the runner sets it
        self.quota_hit: OmniBatchError | None = None  # why submitting stopped (402, ...)
        self.submits: asyncio.Queue[tuple[JobRow, bool]] = asyncio.Queue(maxsize=queue_size)
        self.feeding = True
        self.claimed = 0  # submissions taken off the queue and not yet settled
        self.critical: set[asyncio.Task[None]] = set()  # submits that must finish, even on stop
        # what each account has seen of the client_business_id lookup: a 404 is believed only
        # when the lookup was proven on the same account (tasks and ids are per account)
        self.proofs = {acct: LookupProof() for acct in accounts}
        self.probes: set[asyncio.Task[None]] = set()  # lookup probes; cancelled at the end
        self.unrecognised_streak = 0  # submit answers in a row without a task id
        # the business id a job's submits must carry (a shared run's workflow id) when reconciling
        self.business_ids: dict[str, str] = {}

    @property
    def idle(self) -> bool:
        """Nothing left to feed and no submit taken or waiting."""
        return not self.feeding and self.claimed == 0 and self.submits.empty()

    async def _submit_call(
        self,
        row: JobRow,
        business_id: str | None,
        flagged: bool,
        moved: list[bool],
        acct: AccountRun,
    ) -> Submitted:
        """Send the POST with a key of ``acct``, again only while every earlier try provably
        created nothing (no connection, 429, a 503 "limiter unavailable"). Every POST is
        counted in `attempts` and committed as `submitting`, with its account, before it
        leaves."""

        def send(client: ToapisClient) -> Awaitable[Submitted]:
            self.journal.mark_submitting(row.job_id, business_id, flagged, acct.identity.recorded)
            if row.job_id in self.host.queued:  # through its budget: no longer waiting on it
                self.host.queued.discard(row.job_id)
                acct.waiting -= 1
            if not moved[0]:
                moved[0] = True
                self.stats.move(row.state, "submitting")
            crash.point("before_post")
            if (why := self.host.fenced()) is not None:  # another runner may have the job now
                self.host.fail_fatal(StateError(why))
                raise Stopping()
            return client.submit(row.body, business_id)

        return await retried(
            self.policy.submit_retrying, lambda: self.host.pressured(send, submit=True, acct=acct)
        )

    # -- reconciling by client_business_id -------------------------------------------------------
    def _proof(self, acct: AccountRun) -> LookupProof:
        proof = self.proofs.get(acct)
        if proof is None:  # an account made after the engine (tests): proven on its own
            proof = self.proofs[acct] = LookupProof()
        return proof

    def _lookup_broken(self, why: str) -> None:
        """The lookup misbehaved: it is trusted on no account for the rest of the run."""
        if not any(p.broken for p in self.proofs.values()):
            self.host.log(why)
        for proof in self.proofs.values():
            proof.broken = True

    async def _lookup(self, business_id: str, acct: AccountRun) -> TaskState | None:
        """The task a submit with ``business_id`` created, None on a 404; raises otherwise.
        An answer that echoes another business id is no answer about ours: the lookup is
        marked broken (never trusted again this run) and this raises."""
        try:
            found = await self.host.status_call(business_id, acct)
        except RequestRejected as exc:
            if exc.status == 404:
                return None
            raise
        if found.business_id is not None and found.business_id != business_id:
            self._lookup_broken(
                f"a client_business_id lookup for {business_id} answered a task of "
                f"another id ({found.business_id}): lookups are not trusted this run; "
                "ambiguous submits are resent flagged possible_duplicate"
            )
            raise BadResponse("the lookup answered another task", status=200)
        return found

    def _grace(self, acct: AccountRun) -> float:
        return max(self.policy.lookup_grace, 3 * self._proof(acct).lag)

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
        self, business_id: str | None, sent_at: float, acct: AccountRun
    ) -> tuple[TaskState | None, bool]:
        """Did a submit carrying ``business_id`` land? Returns (its state or None, whether we
        know). A found task is always believed (and proves the lookup). A 404 may only mean
        the lookup lags behind the create: it is asked again once the grace period since the
        POST is over, and even then believed only if this run has seen the lookup find a task
        it created. Anything else — no lookup, an unproven or broken one, an error — is
        "unknown": the caller resends flagged, or leaves the job for the next run."""
        if not (self.reconcile and business_id):
            return None, False
        proof = self._proof(acct)
        for check in range(2):
            try:
                found = await self._lookup(business_id, acct)
            except AuthError:
                raise
            except OmniBatchError:
                return None, False
            if found is not None:
                owner = self.journal.task_owner(found.task_id) if found.task_id else None
                if proof.broken or owner is not None:
                    return None, False  # another job's task, or a lookup shown not to work
                proof.proven = True  # the lookup found a task this run created
                return found, True
            if proof.broken:
                return None, False
            wait = sent_at + self._grace(acct) - time.monotonic()
            if check == 0 and wait > 0:
                if not await self._sleep_unless_halted(wait):
                    return None, False
                continue
            break
        return None, proof.proven  # proven on this very account, or not believed

    def _prove_lookup(
        self, task_id: str, business_id: str | None, sent_at: float, acct: AccountRun
    ) -> None:
        """After a submit that got its task id: until the lookup is proven (or shown not to
        work), look the new task up by its client_business_id in the background."""
        proof = self._proof(acct)
        if not (self.reconcile and business_id) or proof.proven or proof.broken or proof.probing:
            return
        proof.probing = True
        task = asyncio.create_task(self._probe(task_id, business_id, sent_at, acct))
        self.probes.add(task)
        task.add_done_callback(self.probes.discard)

    async def _probe(
        self, task_id: str, business_id: str, sent_at: float, acct: AccountRun
    ) -> None:
        proof = self._proof(acct)
        try:
            for fraction in (0.0, 0.25, 0.5, 1.0):
                wait = sent_at + fraction * self.policy.lookup_grace - time.monotonic()
                if not await self._sleep_unless_halted(wait):
                    return
                if acct.retired:
                    return
                try:
                    found = await self._lookup(business_id, acct)
                except AuthError as exc:
                    await self.host.retire(acct, exc)
                    return
                except OmniBatchError:
                    return  # no verdict: a later submit probes again
                if found is None:
                    continue
                if found.task_id is None:
                    return  # no task id to compare: no verdict
                if found.task_id != task_id:
                    self._lookup_broken(
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
                self._lookup_broken(
                    "the API did not find new tasks by their client_business_id within "
                    f"{self.policy.lookup_grace:g} s: ambiguous submits will be resent flagged "
                    "possible_duplicate"
                )
        finally:
            proof.probing = False

    async def _prove_from_journal(self, acct: AccountRun) -> None:
        """Before settling jobs a crash left mid-submit with ``acct``: prove the lookup on that
        account, on a task an earlier run of this folder created with it (one status call), so
        its 404s can be believed."""
        proof = self._proof(acct)
        async with proof.journal_check:
            if proof.proven or proof.checked_journal or not self.reconcile or acct.retired:
                return
            proof.checked_journal = True
            names: list[str | None] = list(acct.identity.aliases)
            if acct is self.accounts[0]:
                names.append(None)  # a job of an older journal, without its account
            known = self.journal.known_task(names)
            if known is None:
                return
            task_id, business_id = known
            try:
                found = await self._lookup(business_id, acct)
            except AuthError:
                raise
            except OmniBatchError:
                return
            if found is not None and found.task_id in (None, task_id):
                proof.proven = True

    # -- submitting -------------------------------------------------------------------------------
    def close_submissions(self, reason: OmniBatchError | None = None) -> None:
        """No new submit leaves; tasks in flight are still polled and downloaded. ``reason``
        (402, a changed API) is raised when the run ends."""
        if reason is not None and self.quota_hit is None:
            self.quota_hit = reason
            what = "402 insufficient quota" if isinstance(reason, QuotaError) else str(reason)
            self.host.log(f"{what}: no new submissions; finishing {self.host.active} in flight")
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
            self.host.check_idle()

    def _pick(self, fixed: AccountRun | None) -> AccountRun | None:
        """The account a submit may go to now: ``fixed`` (a job left mid-submit is settled
        with its own account) when it has room, else the live account whose submit budget
        frees soonest among those with room (accounts.choose)."""
        if fixed is not None:
            return fixed if not fixed.retired and fixed.active < fixed.cap else None
        if self.host.active >= self.host.max_in_flight:
            return None
        return choose(self.accounts)

    async def submit_worker(self) -> None:
        while True:
            row, ambiguous = await self.submits.get()
            try:
                await self.submit_now(row, ambiguous)
            finally:
                self.submits.task_done()

    async def submit_now(self, row: JobRow, ambiguous: bool) -> None:
        """One job's submit (``ambiguous``: settle one a crash left `submitting`), as a submit
        worker does it: waits for room, chooses the account, sends under its budget. A runner
        sharing its run (running/durable.py) calls it from each job's workflow."""
        self.claimed += 1
        try:
            await self._submit_one(row, ambiguous)
        except JobTaken as exc:  # a shared run: another runner holds the job; leave it
            self.host.log(str(exc))
            if row.job_id in self.host.job_account:
                await self.host.release(row.job_id)
        except Exception as exc:  # a bug (or a full disk): end the run rather than hang
            self.host.fail_fatal(exc)
        finally:
            if self.spend is not None:
                self.spend.settled(row.job_id)
            self.claimed -= 1
            self.host.check_idle()

    async def _submit_one(self, row: JobRow, ambiguous: bool) -> None:
        """One job from the queue: choose its account, submit; when its account refused it
        (401/402) and it went back to pending, another account sends it."""
        spend = self.spend  # budget.max_cost: stop before a submit could cross it
        if not ambiguous and spend is not None and not spend.allows(row.job_id, row.body):
            if self.quota_hit is None:  # submits already allowed still go
                self.quota_hit = spend.over_budget()
                self.host.log(f"{self.quota_hit}; finishing {self.host.active} in flight")
            return  # still pending
        while True:
            if self.host.stopping or (self.halt.is_set() and not ambiguous):
                return  # still pending (or still `submitting`) in the journal
            fixed = self.host.account_named(row.account) if ambiguous else None
            if ambiguous and fixed is None:
                return  # its account is no longer configured: left for a later run

            def ready(fixed: AccountRun | None = fixed) -> bool:
                if self.host.stopping or (fixed is None and self.halt.is_set()):
                    return True
                return (fixed is not None and fixed.retired) or self._pick(fixed) is not None

            async with self.host.capacity:
                await self.host.capacity.wait_for(ready)
                if self.host.stopping or (fixed is None and self.halt.is_set()):
                    return
                acct = self._pick(fixed)
                if acct is None:  # its account was retired meanwhile: left as it is
                    return
                self.host.claim(row.job_id, acct)
                self.host.queued.add(row.job_id)
                acct.waiting += 1
            try:
                if acct.key_proven.is_set():
                    await self._critical_submit(row, ambiguous, acct)
                else:
                    async with acct.probe:
                        await self._critical_submit(row, ambiguous, acct)
                return
            except AccountRefused as refused:
                if isinstance(refused.error, AuthError):
                    await self.host.retire(acct, refused.error)
                else:
                    await self.host.out_of_quota(acct, refused.error)
                if not refused.again:
                    return
                # nothing was created: a new submit (new business id) through another account
                row = dataclasses.replace(row, state="pending", business_id=None, account=None)
                ambiguous = False
            except AuthError as exc:  # a lookup while settling: the job stays as it is
                await self.host.retire(acct, exc)
                if row.job_id in self.host.job_account:
                    await self.host.release(row.job_id)
                return
            finally:
                if row.job_id in self.host.queued:
                    self.host.queued.discard(row.job_id)
                    acct.waiting -= 1

    async def _critical_submit(self, row: JobRow, ambiguous: bool, acct: AccountRun) -> None:
        # once a POST may leave, the job must be recorded whatever happens: the submit runs as
        # its own task, which shutdown awaits even when this worker is cancelled
        task = asyncio.create_task(self.submit_job(row, ambiguous, acct))
        self.critical.add(task)
        task.add_done_callback(self.critical.discard)
        await asyncio.shield(task)

    def new_business_id(self, row: JobRow) -> str | None:
        """A client_business_id unique to this submit generation of the job (it is journaled
        before the POST, so a crash keeps it); None when reconciling is off."""
        if not self.reconcile:
            return None
        if named := self.business_ids.get(row.job_id):
            return named
        return f"ob-{self.run_key}{secrets.token_hex(3)}-{row.job_id}"[:120]

    async def submit_job(self, row: JobRow, ambiguous: bool, acct: AccountRun) -> None:
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
            await self._prove_from_journal(acct)
            found, known = await self._reconcile(business_id, time.monotonic(), acct)
            if found:
                return await self._adopt(row, found, business_id)
            flagged, maybe_sent = flagged or not known, not known
        resends = tries = 0
        while True:
            sent_at = time.monotonic()
            try:
                submitted = await self._submit_call(row, business_id, flagged, moved, acct)
                crash.point("after_post")
            except UnrecognisedAnswer as exc:
                return await self._unrecognised(row, exc)
            except (Ambiguous, ServerError) as exc:
                if exc.created_nothing:  # a 503 "limiter unavailable" on every retry
                    return await self._give_up_submit(row, exc, maybe_sent, flagged)
                # the task may exist (and be billed): look it up, or send again flagged
                found, known = await self._reconcile(business_id, sent_at, acct)
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
                self.host.log(f"{row.job_id}: submit outcome unknown ({exc}); sending again, {how}")
                continue
            except RequestRejected as exc:
                if exc.status == 409 and business_id:  # our id is taken: an earlier POST landed
                    found, _ = await self._reconcile(business_id, 0.0, acct)
                    if found:
                        return await self._adopt(row, found, business_id)
                    if exc.task_id and (named := await self._named_task(exc.task_id, acct)):
                        return await self._adopt(row, named, business_id)
                    # a task exists that we cannot name: never "created nothing"
                    return await self._give_up_submit(row, exc, True, True)
                return await self._give_up_submit(row, exc, maybe_sent, flagged)
            except Stopping:
                return await self._unsent(row, "stopped before sending", maybe_sent, moved[0])
            except AuthError as exc:  # this account's key: the worker retires the account
                await self._unsent(row, "authentication failed", maybe_sent, moved[0])
                raise AccountRefused(exc, again=not maybe_sent) from None
            except QuotaError as exc:  # this account's balance: no more submits with it
                await self._unsent(row, "quota exhausted", maybe_sent, moved[0])
                raise AccountRefused(exc, again=not maybe_sent) from None
            except NotSent as exc:  # no connection after a few quick tries: the run stops
                await self._unsent(row, "API unreachable", maybe_sent, moved[0])
                self.host.fail_fatal(self.host.unreachable(exc))
                return None
            except RateLimited:  # 429 on every try: nothing was created; pending for later
                return await self._unsent(row, "429 on every try", maybe_sent, moved[0])
            except (ApiError, TransportError) as exc:
                return await self._give_up_submit(row, exc, maybe_sent, flagged)
            self.unrecognised_streak = 0
            try:
                self.journal.mark_running(row.job_id, submitted.task_id, submitted.request_id)
            except JobTaken:
                # a shared run: another runner settled or took the job while this POST was
                # out (this runner paused past --dead-after); the task it made may be billed,
                # so its id is kept with the job, flagged. Logged first: the id survives in
                # the log even if keeping it fails
                self.host.log(
                    f"{row.job_id}: another runner took this job while its submit was out; "
                    f"task {submitted.task_id} it created is kept in task_ids, flagged "
                    "possible_duplicate"
                )
                self.journal.keep_task(row.job_id, submitted.task_id, submitted.request_id)
                raise  # submit_now leaves the job to its owner
            if self.spend is not None:
                self.spend.billed(row.job_id, row.body)
            crash.point("after_task_id")
            acct.submitted += 1
            self.stats.move("submitting", "running")
            self._prove_lookup(submitted.task_id, business_id, sent_at, acct)
            self.host.start_polling(row, submitted.task_id)
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
        self.stats.move("submitting", "failed")
        if self.unrecognised_streak >= self.policy.unrecognised_in_a_row:
            self.close_submissions(
                ApiChanged(
                    f"the API's submit answers changed shape: {self.unrecognised_streak} in a "
                    f"row had no task id omni-batch recognises (last: {exc.raw[:200]}); "
                    "submitting stopped, those jobs are failed as unrecognised_answer and "
                    "flagged possible_duplicate"
                )
            )
        await self.host.release(row.job_id)

    async def _adopt(self, row: JobRow, found: TaskState, business_id: str | None) -> None:
        """An earlier POST did land: take its task, and use the lookup's answer as its first
        poll (it may already be finished, and a finished task is never polled again)."""
        task_id = found.task_id or business_id
        # a task is only ever found by our business id (or named with its task id)
        assert task_id is not None
        self.journal.mark_running(row.job_id, task_id, found.request_id, adopted=True)
        if self.spend is not None:
            self.spend.billed(row.job_id, row.body)
        self.stats.move("submitting", "running")
        self.host.log(f"{row.job_id}: an earlier submit did land (task {task_id}); adopted it")
        await self.host.first_answer(row, task_id, found)

    async def _named_task(self, task_id: str, acct: AccountRun) -> TaskState | None:
        """The task a 409 named, if a status call shows it exists and no other job holds it."""
        if self.journal.task_owner(task_id) is not None:
            return None
        try:
            state = await self.host.status_call(task_id, acct)
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
            self.stats.move("submitting", "pending")
        await self.host.release(row.job_id)

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
        self.stats.move("submitting", "failed")
        await self.host.release(row.job_id)
